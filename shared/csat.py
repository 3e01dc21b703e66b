"""Customer satisfaction (CSAT): the survey sent on resolve and the score it brings back.

On resolve the customer is asked through their own channel, if the workspace turned
surveys on for it: "reply 1-5" on channels with a conversation back (chat, SMS, social
DMs) and/or a signed single-use link to a page on agent_api (every channel). Channel
rules hold: no survey to an SMS number that opted out, none outside WhatsApp's 24-hour
window, none on public post comments. A score is recorded once (a conditional UPDATE);
a score of 2 or less opens a follow-up for supervisors.

Used by agent_api (resolve, the link page) and the router (a 1-5 reply to a pending
survey is the score, not a new message to route).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.channels.identities import InvalidIdentityError, normalize_phone
from shared.conversations import NoCustomerAddressError, send_to_customer
from shared.db.models import (
    AgentTeam,
    ContactIdentity,
    Conversation,
    CsatFollowUp,
    CsatSettingsRow,
    CsatSurvey,
    Message,
    utcnow,
)
from shared.events import (
    Channel,
    CsatFollowUpOpened,
    CsatRecorded,
    IdentityKind,
    MessageDirection,
    Topic,
    conversation_key,
)
from shared.outbox import record_event

log = structlog.get_logger(__name__)

REPLY_CHANNELS: Final = frozenset({Channel.WEBCHAT, Channel.SMS, Channel.SOCIAL})
FOLLOW_UP_AT_OR_BELOW: Final = 2
WHATSAPP_WINDOW: Final = timedelta(hours=24)
WHATSAPP_PREFIX: Final = "whatsapp:"
POST_COMMENT_PREFIX: Final = "post:"
_REPLY_SCORE = re.compile(r"^\s*([1-5])\s*[.!]?\s*$")
_LINK_KEY_LABEL = b"omniroute csat survey link v1"


class CsatSettings(BaseModel):
    """A workspace's survey settings (``PUT /v1/csat/settings``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Send a survey when a conversation is resolved.")
    channels: list[Channel] = Field(
        default_factory=lambda: list(Channel), description="Channels that get a survey."
    )
    reply: bool = Field(
        True, description="Accept a 1-5 reply on chat, SMS and social direct messages."
    )
    link: bool = Field(True, description="Include a signed link to the rating page.")
    question: str = Field(
        "How did we do? Rate this conversation from 1 (poor) to 5 (great).",
        min_length=1,
        max_length=500,
    )
    reply_instruction: str = Field("Reply with a number from 1 to 5.", min_length=1, max_length=200)
    link_instruction: str = Field(
        "Or rate here: {link}",
        min_length=1,
        max_length=200,
        description="Must contain `{link}`.",
    )
    thank_you: str = Field(
        "Thank you for your feedback!",
        max_length=500,
        description="Sent after a 1-5 reply; empty sends nothing.",
    )
    expires_hours: float = Field(72, gt=0, le=30 * 24, description="How long a survey is open.")
    link_base_url: str | None = Field(
        None,
        max_length=300,
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="agent_api's public URL for links (default: OMNI_AGENT_API_PUBLIC_URL).",
    )

    @field_validator("link_instruction")
    @classmethod
    def _has_link(cls, value: str) -> str:
        if "{link}" not in value or value.count("{") != 1 or value.count("}") != 1:
            raise ValueError("must contain `{link}` and no other braces")
        return value

    @field_validator("channels")
    @classmethod
    def _unique(cls, value: list[Channel]) -> list[Channel]:
        return sorted(set(value), key=list(Channel).index)


async def load_settings(session: AsyncSession, workspace_id: uuid.UUID) -> CsatSettings:
    row = await session.get(CsatSettingsRow, workspace_id)
    return CsatSettings.model_validate(row.document) if row is not None else CsatSettings()


# --- signed links -------------------------------------------------------------------


def link_key(secret: str) -> bytes:
    """A key of its own for survey links, derived from the service secret."""
    return hmac.new(secret.encode(), _LINK_KEY_LABEL, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_survey(key: bytes, survey_id: uuid.UUID) -> str:
    """``<survey id>.<HMAC-SHA256, 128 bits>``, URL-safe and short enough for an SMS.
    Expiry and single use are the survey row's (``expires_at``, ``responded_at``)."""
    mac = hmac.new(key, survey_id.bytes, hashlib.sha256).digest()[:16]
    return f"{_b64(survey_id.bytes)}.{_b64(mac)}"


def survey_of_token(key: bytes, token: str) -> uuid.UUID | None:
    """The survey a token names, or None if it is not one we signed."""
    body, _, mac = token.partition(".")
    if not body or not mac or len(token) > 64:
        return None
    try:
        raw, given = _unb64(body), _unb64(mac)
        survey_id = uuid.UUID(bytes=raw)
    except (ValueError, binascii.Error):
        return None
    if _b64(raw) != body or _b64(given) != mac:
        return None  # one spelling per token (base64 tail bits must be zero)
    expected = hmac.new(key, raw, hashlib.sha256).digest()[:16]
    return survey_id if hmac.compare_digest(expected, given) else None


# --- the survey ---------------------------------------------------------------------


@dataclass(frozen=True)
class SurveyPlan:
    """How to ask (pure decision): by reply, by link, or not at all (``refusal``)."""

    reply: bool = False
    link: bool = False
    refusal: str | None = None


def plan_survey(
    settings: CsatSettings,
    channel: Channel,
    *,
    thread_key: str,
    customer_address: str | None,
    link_base_url: str | None,
    opted_out: bool,
    last_inbound_at: datetime | None,
    now: datetime,
) -> SurveyPlan:
    """Whether and how to ask this customer, by the workspace's settings and the
    channel's rules."""
    if not settings.enabled:
        return SurveyPlan(refusal="surveys are off")
    if channel not in settings.channels:
        return SurveyPlan(refusal=f"no surveys on {channel.value}")
    if channel is Channel.SOCIAL and thread_key.startswith(POST_COMMENT_PREFIX):
        return SurveyPlan(refusal="a public post comment cannot be answered privately")
    if opted_out:
        return SurveyPlan(refusal="the customer opted out of SMS")
    if channel is Channel.SOCIAL and (customer_address or "").startswith(WHATSAPP_PREFIX):
        if last_inbound_at is None or now - last_inbound_at > WHATSAPP_WINDOW:
            return SurveyPlan(refusal="outside WhatsApp's 24-hour customer-service window")
    reply = settings.reply and channel in REPLY_CHANNELS
    link = settings.link and link_base_url is not None
    if not reply and not link:
        return SurveyPlan(refusal="no way to answer on this channel (no reply, no link)")
    return SurveyPlan(reply=reply, link=link)


def survey_text(settings: CsatSettings, plan: SurveyPlan, link: str | None) -> str:
    parts = [settings.question]
    if plan.reply:
        parts.append(settings.reply_instruction)
    if plan.link and link is not None:
        instruction = settings.link_instruction
        if not plan.reply and instruction.startswith("Or "):  # the link is the only way
            instruction = instruction[3:4].upper() + instruction[4:]
        parts.append(instruction.replace("{link}", link))
    return " ".join(parts)


def reply_score(text: str) -> int | None:
    """A message that is only a digit 1-5 (e.g. ``4``, `` 5!``) is a score."""
    match = _REPLY_SCORE.match(text)
    return int(match.group(1)) if match else None


async def _opted_out(session: AsyncSession, conversation: Conversation) -> bool:
    if conversation.channel != Channel.SMS.value or not conversation.customer_address:
        return False
    try:
        number = normalize_phone(conversation.customer_address)
    except InvalidIdentityError:
        number = conversation.customer_address.strip()
    found = await session.scalar(
        select(ContactIdentity.id).where(
            ContactIdentity.workspace_id == conversation.workspace_id,
            ContactIdentity.kind == IdentityKind.PHONE.value,
            ContactIdentity.address == number,
            ContactIdentity.opted_out_at.is_not(None),
        )
    )
    return found is not None


async def _last_inbound_at(session: AsyncSession, conversation: Conversation) -> datetime | None:
    last: datetime | None = await session.scalar(
        select(Message.created_at)
        .where(
            Message.workspace_id == conversation.workspace_id,
            Message.conversation_id == conversation.id,
            Message.direction == MessageDirection.INBOUND.value,
        )
        .order_by(Message.created_at.desc())
        .limit(1)
    )
    return last


async def _team_of(session: AsyncSession, conversation: Conversation) -> uuid.UUID | None:
    """The conversation's team, else the owner's team when they belong to exactly one."""
    if conversation.team_id is not None or conversation.assignee_agent_id is None:
        return conversation.team_id
    teams = list(
        await session.scalars(
            select(AgentTeam.team_id).where(
                AgentTeam.workspace_id == conversation.workspace_id,
                AgentTeam.agent_id == conversation.assignee_agent_id,
            )
        )
    )
    return teams[0] if len(teams) == 1 else None


@dataclass(frozen=True)
class SurveyOutcome:
    survey: CsatSurvey | None
    refusal: str | None = None


async def send_survey(
    session: AsyncSession,
    conversation: Conversation,
    *,
    link_key_bytes: bytes,
    default_link_base_url: str | None,
    source: str,
) -> SurveyOutcome:
    """Ask the customer of a just-resolved conversation, in the caller's transaction."""
    settings = await load_settings(session, conversation.workspace_id)
    now = utcnow()
    channel = Channel(conversation.channel)
    base = settings.link_base_url or default_link_base_url
    plan = plan_survey(
        settings,
        channel,
        thread_key=conversation.thread_key,
        customer_address=conversation.customer_address,
        link_base_url=base,
        opted_out=await _opted_out(session, conversation),
        last_inbound_at=_aware(await _last_inbound_at(session, conversation)),
        now=now,
    )
    if plan.refusal is not None:
        log.info("no csat survey", conversation=str(conversation.id), reason=plan.refusal)
        return SurveyOutcome(None, plan.refusal)
    # A newer survey replaces any still open on this conversation.
    await session.execute(
        update(CsatSurvey)
        .where(
            CsatSurvey.workspace_id == conversation.workspace_id,
            CsatSurvey.conversation_id == conversation.id,
            CsatSurvey.responded_at.is_(None),
            CsatSurvey.expires_at > now,
        )
        .values(expires_at=now)
    )
    survey = CsatSurvey(
        id=uuid.uuid4(),
        workspace_id=conversation.workspace_id,
        conversation_id=conversation.id,
        channel=conversation.channel,
        thread_key=conversation.thread_key,
        tier=conversation.tier,
        agent_id=conversation.assignee_agent_id,
        team_id=await _team_of(session, conversation),
        accepts_reply=plan.reply,
        sent_at=now,
        expires_at=now + timedelta(hours=settings.expires_hours),
    )
    link = (
        f"{base.rstrip('/')}/v1/surveys/{sign_survey(link_key_bytes, survey.id)}"
        if plan.link and base is not None
        else None
    )
    try:  # raised before anything is stored
        message = await send_to_customer(
            session, conversation, survey_text(settings, plan, link), source=source
        )
    except NoCustomerAddressError as exc:
        log.info("no csat survey", conversation=str(conversation.id), reason=type(exc).__name__)
        return SurveyOutcome(None, "no address to reach the customer on this channel")
    survey.message_id = message.id
    session.add(survey)
    await session.flush()
    return SurveyOutcome(survey)


def _aware(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


async def pending_reply_survey(
    session: AsyncSession, workspace_id: uuid.UUID, channel: Channel, thread_key: str
) -> CsatSurvey | None:
    """The newest open survey of this thread that takes a 1-5 reply."""
    survey: CsatSurvey | None = await session.scalar(
        select(CsatSurvey)
        .where(
            CsatSurvey.workspace_id == workspace_id,
            CsatSurvey.channel == channel.value,
            CsatSurvey.thread_key == thread_key,
            CsatSurvey.accepts_reply.is_(True),
            CsatSurvey.responded_at.is_(None),
            CsatSurvey.expires_at > utcnow(),
        )
        .order_by(CsatSurvey.sent_at.desc())
        .limit(1)
    )
    return survey


class SurveyClosedError(Exception):
    """The survey was answered already, or it expired."""


async def record_score(
    session: AsyncSession,
    survey: CsatSurvey,
    score: int,
    *,
    via: str,
    source: str,
) -> CsatFollowUp | None:
    """Record ``score`` once (a conditional UPDATE, so two answers at once record one);
    a low score opens a follow-up. Raises SurveyClosedError if answered or expired."""
    if not 1 <= score <= 5:
        raise ValueError("a score is 1 to 5")
    now = utcnow()
    claimed = await session.scalar(
        update(CsatSurvey)
        .where(
            CsatSurvey.id == survey.id,
            CsatSurvey.workspace_id == survey.workspace_id,
            CsatSurvey.responded_at.is_(None),
            CsatSurvey.expires_at > now,
        )
        .values(score=score, answered_via=via, responded_at=now)
        .returning(CsatSurvey.id)
        .execution_options(synchronize_session=False)
    )
    if claimed is None:
        raise SurveyClosedError(str(survey.id))
    await session.refresh(survey)
    key = conversation_key(survey.workspace_id, survey.conversation_id)
    channel = Channel(survey.channel)
    record_event(
        session,
        CsatRecorded(
            workspace_id=survey.workspace_id,
            conversation_id=survey.conversation_id,
            survey_id=survey.id,
            score=score,
            answered_via=via,
            channel=channel,
            tier=survey.tier,
            agent_id=survey.agent_id,
            team_id=survey.team_id,
            recorded_at=now,
        ),
        topic=Topic.EVENTS,
        key=key,
        source=source,
        subject=str(survey.conversation_id),
    )
    if score > FOLLOW_UP_AT_OR_BELOW:
        return None
    follow_up = CsatFollowUp(
        id=uuid.uuid4(),
        workspace_id=survey.workspace_id,
        survey_id=survey.id,
        conversation_id=survey.conversation_id,
        agent_id=survey.agent_id,
        score=score,
        opened_at=now,
    )
    session.add(follow_up)
    record_event(
        session,
        CsatFollowUpOpened(
            workspace_id=survey.workspace_id,
            follow_up_id=follow_up.id,
            conversation_id=survey.conversation_id,
            survey_id=survey.id,
            score=score,
            channel=channel,
            agent_id=survey.agent_id,
            opened_at=now,
        ),
        topic=Topic.EVENTS,
        key=key,
        source=source,
        subject=str(survey.conversation_id),
    )
    await session.flush()
    return follow_up
