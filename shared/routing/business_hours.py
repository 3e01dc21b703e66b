"""Business hours as pure functions: open or closed, and SLA clocks that pause when closed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from shared.routing.policy import WEEKDAYS, BusinessHours

_SEARCH_DAYS = 400


def _window_intervals(hours: BusinessHours, start: datetime) -> Iterator[tuple[datetime, datetime]]:
    """Each day's windows as UTC intervals, sorted by opening, from the day before ``start``."""
    zone = ZoneInfo(hours.timezone)
    local_start = start.astimezone(zone)
    holidays = set(hours.holidays)
    for offset in range(-1, _SEARCH_DAYS):
        day = local_start.date() + timedelta(days=offset)
        if day in holidays:
            continue
        windows = sorted(hours.weekly.get(WEEKDAYS[day.weekday()], []), key=lambda w: w.start)
        for window in windows:
            opens = datetime.combine(day, window.start_time, tzinfo=zone)
            closes = (
                datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=zone)
                if window.end == "24:00"
                else datetime.combine(day, window.end_time, tzinfo=zone)
            )
            yield opens.astimezone(UTC), closes.astimezone(UTC)


def _open_intervals(hours: BusinessHours, start: datetime) -> Iterator[tuple[datetime, datetime]]:
    """Opening intervals (UTC) that end after ``start``, in order, for ~a year ahead.

    Windows may be listed in any order and may overlap; overlaps are merged so no
    open time is counted twice.
    """
    pending: tuple[datetime, datetime] | None = None
    for opens, closes in _window_intervals(hours, start):
        if pending is not None and opens < pending[1]:
            pending = (pending[0], max(pending[1], closes))
            continue
        if pending is not None and pending[1] > start:
            yield pending
        pending = (opens, closes)
    if pending is not None and pending[1] > start:
        yield pending


def is_open(hours: BusinessHours | None, at: datetime) -> bool:
    if hours is None:
        return True
    for opens, closes in _window_intervals(hours, at):
        if opens <= at < closes:
            return True
        if opens > at:
            return False
    return False


def add_business_seconds(hours: BusinessHours | None, start: datetime, seconds: float) -> datetime:
    """The moment ``seconds`` of open time have passed after ``start`` (clock paused when
    closed). Always open when ``hours`` is None."""
    if hours is None:
        return start + timedelta(seconds=seconds)
    remaining = timedelta(seconds=seconds)
    for opens, closes in _open_intervals(hours, start):
        begin = max(opens, start)
        available = closes - begin
        if available >= remaining:
            return begin + remaining
        remaining -= available
    raise ValueError("business hours have no opening within a year")
