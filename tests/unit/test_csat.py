"""CSAT policy (pure): when and how a survey is sent, the signed link, reply scores."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from shared.csat import (
    CsatSettings,
    SurveyPlan,
    link_key,
    plan_survey,
    reply_score,
    sign_survey,
    survey_of_token,
    survey_text,
)
from shared.events import Channel

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
ON = CsatSettings(enabled=True)
BASE = "https://desk.example"


def plan(
    settings: CsatSettings = ON,
    channel: Channel = Channel.SMS,
    *,
    thread_key: str = "+15550001111",
    address: str | None = "+15550001111",
    base: str | None = BASE,
    opted_out: bool = False,
    last_inbound_at: datetime | None = NOW,
) -> SurveyPlan:
    return plan_survey(
        settings,
        channel,
        thread_key=thread_key,
        customer_address=address,
        link_base_url=base,
        opted_out=opted_out,
        last_inbound_at=last_inbound_at,
        now=NOW,
    )


def test_reply_and_link_where_the_channel_has_a_conversation_back() -> None:
    for channel in (Channel.SMS, Channel.WEBCHAT, Channel.SOCIAL):
        assert plan(channel=channel) == SurveyPlan(reply=True, link=True)
    assert plan(channel=Channel.EMAIL) == SurveyPlan(reply=False, link=True)


def test_email_without_a_link_base_cannot_be_asked() -> None:
    refused = plan(channel=Channel.EMAIL, base=None)
    assert refused.refusal is not None
    assert "no way to answer" in refused.refusal
    assert plan(channel=Channel.SMS, base=None) == SurveyPlan(reply=True, link=False)


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"settings": CsatSettings()}, "surveys are off"),
        ({"settings": CsatSettings(enabled=True, channels=[Channel.WEBCHAT])}, "no surveys on sms"),
        ({"opted_out": True}, "opted out"),
        (
            {
                "channel": Channel.SOCIAL,
                "address": "whatsapp:+15550001111",
                "last_inbound_at": NOW - timedelta(hours=25),
            },
            "24-hour",
        ),
        (
            {
                "channel": Channel.SOCIAL,
                "address": "whatsapp:+15550001111",
                "last_inbound_at": None,
            },
            "24-hour",
        ),
        ({"channel": Channel.SOCIAL, "thread_key": "post:123_456"}, "public post comment"),
    ],
)
def test_channel_rules_and_settings_refuse(kwargs: dict[str, object], why: str) -> None:
    refused = plan(**kwargs)  # type: ignore[arg-type]
    assert refused.refusal is not None
    assert why in refused.refusal
    assert not refused.reply
    assert not refused.link


def test_whatsapp_inside_its_window_is_asked() -> None:
    inside = plan(
        channel=Channel.SOCIAL,
        address="whatsapp:+15550001111",
        last_inbound_at=NOW - timedelta(hours=23),
    )
    assert inside == SurveyPlan(reply=True, link=True)


def test_the_survey_text_follows_the_plan() -> None:
    both = survey_text(ON, SurveyPlan(reply=True, link=True), f"{BASE}/v1/surveys/t")
    assert both == (
        "How did we do? Rate this conversation from 1 (poor) to 5 (great). "
        "Reply with a number from 1 to 5. Or rate here: https://desk.example/v1/surveys/t"
    )
    link_only = survey_text(ON, SurveyPlan(link=True), "L")
    assert link_only.endswith("Rate here: L")
    assert "Reply" not in link_only
    assert survey_text(ON, SurveyPlan(reply=True), None).endswith("from 1 to 5.")


def test_a_signed_token_names_its_survey_and_nothing_else() -> None:
    key = link_key("a-service-secret-of-some-length-000000")
    survey_id = uuid.uuid4()
    token = sign_survey(key, survey_id)
    assert len(token) <= 45
    assert survey_of_token(key, token) == survey_id
    assert survey_of_token(link_key("another-secret-000000000000000000000"), token) is None
    body, _, mac = token.partition(".")
    other = sign_survey(key, uuid.uuid4()).partition(".")[0]
    assert survey_of_token(key, f"{other}.{mac}") is None  # a MAC is for one survey
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    assert survey_of_token(key, f"{body}.{flipped}") is None
    # Base64's unused tail bits: another spelling of the same bytes is refused too.
    respelled = mac[:-1] + {"A": "B", "Q": "R", "g": "h", "w": "x"}[mac[-1]]
    assert survey_of_token(key, f"{body}.{respelled}") is None
    for junk in ("", ".", "abc", "abc.def", "!!.!!", token + "x" * 40):
        assert survey_of_token(key, junk) is None


@pytest.mark.parametrize(
    ("text", "score"),
    [("1", 1), (" 5 ", 5), ("4!", 4), ("3.", 3), ("\n2\n", 2)],
)
def test_a_lone_digit_one_to_five_is_a_score(text: str, score: int) -> None:
    assert reply_score(text) == score


@pytest.mark.parametrize("text", ["0", "6", "10", "5 stars but slow", "1234", "", "five", "-1"])
def test_anything_else_is_a_message(text: str) -> None:
    assert reply_score(text) is None


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="link"):
        CsatSettings(link_instruction="Rate us")
    with pytest.raises(ValidationError):
        CsatSettings(expires_hours=0)
    with pytest.raises(ValidationError):
        CsatSettings(link_base_url="javascript:alert(1)")
    with pytest.raises(ValidationError):
        CsatSettings.model_validate({"enabled": True, "colour": "red"})
    assert CsatSettings(channels=[Channel.SMS, Channel.SMS]).channels == [Channel.SMS]
