"""The routing policy document of a workspace: validated, versioned, hot-swappable.

Admins PUT it as JSON; every field has a safe default so an empty document is valid.
Validation errors name the offending field (pydantic's ``loc``).
"""

from __future__ import annotations

import re
from datetime import date, time
from typing import Annotated, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.events import Channel

Weekday = str
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpeningWindow(_Strict):
    """One opening window within a day, local time, ``"09:00"``-``"17:30"``."""

    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError("must be HH:MM (00:00-24:00)")
        return value

    @field_validator("start")
    @classmethod
    def _start_before_midnight(cls, value: str) -> str:
        if value == "24:00":
            raise ValueError("a window cannot start at 24:00; use 00:00 of the next day")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.start_time >= self.end_time and self.end != "24:00":
            raise ValueError("start must be before end")
        return self

    @property
    def start_time(self) -> time:
        return time.fromisoformat(self.start)

    @property
    def end_time(self) -> time:
        return time.max if self.end == "24:00" else time.fromisoformat(self.end)


class BusinessHours(_Strict):
    timezone: str = "UTC"
    weekly: dict[Weekday, list[OpeningWindow]] = Field(
        default_factory=lambda: {
            day: [OpeningWindow(start="09:00", end="17:00")] for day in WEEKDAYS[:5]
        },
        description="Opening windows per weekday (mon…sun); a missing day is closed.",
    )
    holidays: list[date] = Field(default_factory=list, description="Closed all day.")
    off_hours_message: str = Field(
        "Thanks for your message! We're closed right now; our hours are {hours}. "
        "We'll answer as soon as we open.",
        max_length=1000,
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("weekly")
    @classmethod
    def _weekdays(cls, value: dict[str, list[OpeningWindow]]) -> dict[str, list[OpeningWindow]]:
        unknown = sorted(set(value) - set(WEEKDAYS))
        if unknown:
            raise ValueError(f"unknown weekday(s) {unknown}; use {list(WEEKDAYS)}")
        return value

    def describe(self) -> str:
        parts = []
        for day in WEEKDAYS:
            windows = self.weekly.get(day, [])
            if windows:
                parts.append(f"{day.title()} " + ", ".join(f"{w.start}-{w.end}" for w in windows))
        return "; ".join(parts) + f" ({self.timezone})" if parts else "closed"


class SlaTarget(_Strict):
    """First-response target; the most specific matching target applies."""

    seconds: int = Field(gt=0, le=30 * 24 * 3600)
    tier: Annotated[int, Field(ge=1, le=3)] | None = None
    channel: Channel | None = None
    min_priority: int | None = None


class RuleCondition(_Strict):
    """All given conditions must hold (an empty condition always holds)."""

    keywords_any: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list
    )
    vip: bool | None = None
    min_priority: int | None = None
    channels: list[Channel] = Field(default_factory=list)
    sentiment_below: float | None = Field(
        None, ge=-1, le=1, description="VADER compound score of the message below this."
    )


class RuleAction(_Strict):
    tier: Annotated[int, Field(ge=1, le=3)] | None = None
    team: str | None = Field(None, min_length=1, max_length=100)
    priority: int | None = Field(None, ge=0, le=10)
    skills: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list)


class IntakeRule(_Strict):
    name: str = Field(min_length=1, max_length=100)
    when: RuleCondition
    then: RuleAction


class StickyOwner(_Strict):
    enabled: bool = True
    window_hours: float = Field(72, gt=0, le=24 * 365)


class QueueNotices(_Strict):
    enabled: bool = True
    min_interval_seconds: float = Field(60, ge=0)
    material_position_change: int = Field(2, ge=1)
    material_wait_change_ratio: float = Field(0.25, gt=0)
    message: str = Field(
        "You're number {position} in line. Estimated wait: about {wait_minutes} min.",
        max_length=500,
    )


class RoutingPolicy(_Strict):
    """Everything routing can be told per workspace."""

    channel_weights: dict[Channel, float] = Field(
        default_factory=lambda: {
            Channel.WEBCHAT: 1.0,
            Channel.SMS: 1.0,
            Channel.SOCIAL: 1.0,
            Channel.EMAIL: 0.5,
        },
        description="Capacity units one conversation on the channel uses.",
    )
    sticky_owner: StickyOwner = Field(default_factory=StickyOwner)
    sla_targets: list[SlaTarget] = Field(
        default_factory=lambda: [
            SlaTarget(seconds=300),
            SlaTarget(seconds=2 * 3600, channel=Channel.EMAIL),
        ]
    )
    intake_rules: list[IntakeRule] = Field(default_factory=list)
    offline_grace_seconds: float = Field(120, ge=0, le=24 * 3600)
    business_hours: BusinessHours | None = Field(
        None, description="Null means always open (SLA clocks never pause)."
    )
    queue_notices: QueueNotices = Field(default_factory=QueueNotices)
    handoff_message: str = Field("{agent_name} will help you from here.", max_length=500)
    escalation_message: str = Field(
        "We're bringing in a specialist (tier {tier}) to help you.", max_length=500
    )
    default_handle_seconds: float = Field(
        300, gt=0, description="Assumed handle time until enough history exists."
    )

    @field_validator("channel_weights")
    @classmethod
    def _positive_weights(cls, value: dict[Channel, float]) -> dict[Channel, float]:
        for channel, weight in value.items():
            if not 0 < weight <= 100:
                raise ValueError(f"weight of {channel.value} must be in (0, 100]")
        return value

    def weight(self, channel: Channel) -> float:
        return self.channel_weights.get(channel, 1.0)

    def sla_seconds(self, *, tier: int, channel: Channel, priority: int) -> int:
        """The most specific matching first-response target (default 300 s)."""
        best: tuple[int, int] | None = None
        for target in self.sla_targets:
            if target.tier is not None and target.tier != tier:
                continue
            if target.channel is not None and target.channel != channel:
                continue
            if target.min_priority is not None and priority < target.min_priority:
                continue
            specificity = sum(
                x is not None for x in (target.tier, target.channel, target.min_priority)
            )
            if best is None or specificity > best[0]:
                best = (specificity, target.seconds)
        return best[1] if best else 300


DEFAULT_POLICY = RoutingPolicy()
