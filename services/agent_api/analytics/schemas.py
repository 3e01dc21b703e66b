"""Bodies of the analytics endpoints."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class Window(BaseModel):
    start: datetime = Field(description="Inclusive start (`from`).")
    end: datetime = Field(description="Exclusive end (`to`).")


class HourOfWeekVolume(BaseModel):
    hour_of_week: int = Field(ge=0, le=167, description="0 = Monday 00:00 … 167 = Sunday 23:00.")
    weekday: int = Field(ge=0, le=6, description="0 = Monday.")
    hour: int = Field(ge=0, le=23)
    total: int
    by_channel: dict[str, int]


class VolumeReport(BaseModel):
    """New conversations in the window by hour of week (in ``timezone``) and channel."""

    window: Window
    timezone: str
    total: int
    by_channel: dict[str, int]
    hours: list[HourOfWeekVolume] = Field(description="All 168 hours of the week, in order.")


class DurationSummary(BaseModel):
    count: int
    mean_seconds: float | None
    p50_seconds: float | None
    p90_seconds: float | None
    p99_seconds: float | None


class TimingFigures(BaseModel):
    first_response: DurationSummary = Field(
        description="Created → first agent reply, of conversations answered."
    )
    resolution: DurationSummary = Field(description="Created → resolved, of resolved ones.")
    wait: DurationSummary = Field(description="Created → first assignment, of assigned ones.")


class TimingReport(TimingFigures):
    """Of conversations created in the window; percentiles interpolate linearly."""

    window: Window
    by_channel: dict[str, TimingFigures]


class SlaTierFigures(BaseModel):
    tier: int
    met: int
    breached: int
    pending: int = Field(description="No reply yet and the target not yet passed.")
    compliance: float | None = Field(description="met / (met + breached); null when neither.")


class SlaReport(BaseModel):
    """First-response targets of conversations created in the window, by current tier."""

    window: Window
    tiers: list[SlaTierFigures]
    met: int
    breached: int
    compliance: float | None


class HandoffReport(BaseModel):
    """Of conversations created in the window: touchpoints = distinct agents who owned it,
    transfers = changes of owner (assignments after the first)."""

    window: Window
    conversations: int
    transfers_total: int
    transfers_per_conversation: float | None
    touchpoints_per_conversation: float | None
    transfers_distribution: dict[str, int]
    touchpoints_distribution: dict[str, int]


class CsatGroup(BaseModel):
    key: str = Field(description="Agent id, team id, channel or tier.")
    name: str | None = Field(None, description="Agent or team name, when it has one.")
    count: int
    average: float | None
    distribution: dict[str, int]
    surveys_sent: int = Field(0, description="Surveys sent in the window.")
    surveys_answered: int = Field(0, description="Of the surveys sent in the window, answered.")
    surveys_open: int = Field(
        0, description="Of the surveys sent in the window, unanswered and not yet expired."
    )
    response_rate: float | None = Field(
        None, description="surveys_answered / surveys_sent; null when none was sent."
    )


class CsatReport(BaseModel):
    """Scores given in the window (1 = poor … 5 = great), and the response rate of the
    surveys sent in the window (answered whenever, up to now)."""

    count: int
    average: float | None
    distribution: dict[str, int] = Field(description='Keys "1" … "5", every key present.')
    window: Window
    by_agent: list[CsatGroup]
    by_team: list[CsatGroup]
    by_channel: list[CsatGroup]
    by_tier: list[CsatGroup]
    surveys_sent: int = Field(0, description="Surveys sent in the window.")
    surveys_answered: int = Field(0, description="Of the surveys sent in the window, answered.")
    surveys_open: int = Field(
        0, description="Of the surveys sent in the window, unanswered and not yet expired."
    )
    response_rate: float | None = Field(
        None, description="surveys_answered / surveys_sent; null when none was sent."
    )


class DaySentiment(BaseModel):
    date: str = Field(description="UTC date, YYYY-MM-DD.")
    messages: int
    average_sentiment: float = Field(description="Mean VADER compound score, -1 … 1.")


class KeywordCount(BaseModel):
    keyword: str
    messages: int = Field(description="Inbound messages that contain it.")


class ChannelSentiment(BaseModel):
    channel: str
    messages: int
    average_sentiment: float | None
    days: list[DaySentiment]
    top_keywords: list[KeywordCount]


class SentimentReport(BaseModel):
    """Customers' inbound messages in the window, per channel."""

    window: Window
    sampled: bool = Field(description="True when only the newest messages were analysed.")
    channels: list[ChannelSentiment]


class ForecastInputs(BaseModel):
    channel: str
    window: Window
    timezone: str
    target_share: float
    target_seconds: float
    handle_seconds: float
    handle_seconds_source: str = Field(description="observed, request or policy_default")
    handled_samples: int
    concurrency: int = Field(
        description="Conversations one agent handles at once; Erlang C servers ÷ concurrency."
    )


class ForecastHour(BaseModel):
    hour_of_week: int
    weekday: int
    hour: int
    observed_conversations: int
    arrivals_per_hour: float
    traffic_erlangs: float
    agents: int
    service_level: float
    average_speed_of_answer_seconds: float | None


class ForecastReport(BaseModel):
    """Agents needed per hour of week (Erlang C) from the volume observed in the window."""

    inputs: ForecastInputs
    hours: list[ForecastHour]
    peak_agents: int
