"""Business hours: open or closed in the workspace's zone, SLA clocks that pause when closed."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from shared.routing.business_hours import add_business_seconds, is_open
from shared.routing.policy import BusinessHours

BERLIN = ZoneInfo("Europe/Berlin")
MINUTE = 60.0
HOUR = 3600.0


def at(year: int, month: int, day: int, hour: int, minute: int = 0, zone: str = "") -> datetime:
    """A moment given in local wall time of ``zone`` (Berlin unless told), as UTC."""
    tz = ZoneInfo(zone) if zone else BERLIN
    return datetime(year, month, day, hour, minute, tzinfo=tz).astimezone(UTC)


def schedule(weekly: dict[str, list[tuple[str, str]]] | None = None, **extra: Any) -> BusinessHours:
    document: dict[str, Any] = {"timezone": "Europe/Berlin", **extra}
    if weekly is not None:
        document["weekly"] = {
            day: [{"start": start, "end": end} for start, end in windows]
            for day, windows in weekly.items()
        }
    return BusinessHours.model_validate(document)


OFFICE = schedule()  # mon-fri 09:00-17:00 Europe/Berlin


# --- is_open -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        pytest.param(at(2026, 3, 2, 9, 0), True, id="monday-opening-minute"),
        pytest.param(at(2026, 3, 2, 8, 59), False, id="monday-before-opening"),
        pytest.param(at(2026, 3, 4, 12, 30), True, id="wednesday-midday"),
        pytest.param(at(2026, 3, 6, 16, 59), True, id="friday-last-minute"),
        pytest.param(at(2026, 3, 6, 17, 0), False, id="friday-closing-is-closed"),
        pytest.param(at(2026, 3, 7, 12, 0), False, id="saturday"),
        pytest.param(at(2026, 3, 8, 12, 0), False, id="sunday"),
        pytest.param(at(2026, 3, 3, 3, 0), False, id="tuesday-night"),
    ],
)
def test_is_open_follows_the_weekly_schedule(moment: datetime, expected: bool) -> None:
    assert is_open(OFFICE, moment) is expected


def test_none_means_always_open() -> None:
    for moment in (at(2026, 3, 7, 3, 0), at(2026, 12, 25, 12, 0), datetime(2026, 1, 1, tzinfo=UTC)):
        assert is_open(None, moment)


def test_a_holiday_is_closed_all_day_and_the_next_day_opens_again() -> None:
    hours = schedule(holidays=[date(2026, 12, 24), date(2026, 12, 25)])

    assert not is_open(hours, at(2026, 12, 24, 10, 0))
    assert not is_open(hours, at(2026, 12, 25, 16, 0))
    assert is_open(hours, at(2026, 12, 23, 10, 0))
    assert is_open(hours, at(2026, 12, 28, 9, 0))


def test_holidays_are_local_dates_of_the_workspace_zone() -> None:
    auckland = BusinessHours.model_validate(
        {
            "timezone": "Pacific/Auckland",
            "weekly": {day: [{"start": "00:00", "end": "24:00"}] for day in ("wed", "thu")},
            "holidays": ["2026-01-01"],
        }
    )
    # 09:30 on New Year's Day in Auckland is still 31 December in UTC.
    new_years_morning = at(2026, 1, 1, 9, 30, zone="Pacific/Auckland")
    assert new_years_morning.date() == date(2025, 12, 31)

    assert not is_open(auckland, new_years_morning)
    assert is_open(auckland, at(2025, 12, 31, 23, 59, zone="Pacific/Auckland"))


def test_is_open_uses_local_time_across_the_march_dst_change() -> None:
    # Berlin moves from UTC+1 to UTC+2 on Sunday 2026-03-29.
    before = datetime(2026, 3, 27, 8, 30, tzinfo=UTC)  # Friday, 09:30 CET
    after = datetime(2026, 3, 30, 8, 30, tzinfo=UTC)  # Monday, 10:30 CEST

    assert is_open(OFFICE, before)
    assert is_open(OFFICE, after)
    # 07:30 UTC is 08:30 (closed) in winter but 09:30 (open) in summer.
    assert not is_open(OFFICE, datetime(2026, 3, 27, 7, 30, tzinfo=UTC))
    assert is_open(OFFICE, datetime(2026, 3, 30, 7, 30, tzinfo=UTC))
    # And closing: 15:30 UTC is 16:30 CET (open) but 17:30 CEST (closed).
    assert is_open(OFFICE, datetime(2026, 3, 27, 15, 30, tzinfo=UTC))
    assert not is_open(OFFICE, datetime(2026, 3, 30, 15, 30, tzinfo=UTC))


def test_is_open_uses_local_time_across_the_october_dst_change() -> None:
    # Berlin moves from UTC+2 back to UTC+1 on Sunday 2026-10-25.
    assert is_open(OFFICE, datetime(2026, 10, 23, 7, 30, tzinfo=UTC))  # 09:30 CEST
    assert not is_open(OFFICE, datetime(2026, 10, 26, 7, 30, tzinfo=UTC))  # 08:30 CET
    assert is_open(OFFICE, datetime(2026, 10, 26, 8, 0, tzinfo=UTC))  # 09:00 CET


def test_is_open_with_several_windows_a_day_in_any_order() -> None:
    hours = schedule({"mon": [("13:00", "17:00"), ("09:00", "12:00")]})

    assert is_open(hours, at(2026, 3, 2, 10, 0))
    assert not is_open(hours, at(2026, 3, 2, 12, 30))
    assert is_open(hours, at(2026, 3, 2, 13, 0))
    assert not is_open(hours, at(2026, 3, 2, 17, 0))
    assert not is_open(hours, at(2026, 3, 3, 10, 0))  # tuesday is missing: closed


def test_a_window_ending_at_24_00_is_open_until_midnight() -> None:
    hours = schedule({"sat": [("20:00", "24:00")]})

    assert is_open(hours, at(2026, 3, 7, 23, 59))
    assert is_open(hours, at(2026, 3, 7, 23, 59) + timedelta(seconds=59.999))
    assert not is_open(hours, at(2026, 3, 8, 0, 0))
    assert not is_open(hours, at(2026, 3, 7, 19, 59))


def test_a_day_without_windows_is_closed_and_an_empty_week_is_never_open() -> None:
    closed = schedule({})

    assert not is_open(closed, at(2026, 3, 2, 12, 0))
    with pytest.raises(ValueError, match="no opening within a year"):
        add_business_seconds(closed, at(2026, 3, 2, 12, 0), 60)


# --- add_business_seconds ----------------------------------------------------------


def test_none_means_the_clock_never_pauses() -> None:
    start = at(2026, 3, 7, 3, 0)

    assert add_business_seconds(None, start, 600) == start + timedelta(minutes=10)


def test_within_open_hours_the_clock_runs_normally() -> None:
    assert add_business_seconds(OFFICE, at(2026, 3, 2, 10, 0), 5 * MINUTE) == at(2026, 3, 2, 10, 5)
    assert add_business_seconds(OFFICE, at(2026, 3, 2, 16, 0), HOUR) == at(2026, 3, 2, 17, 0)


def test_the_clock_pauses_over_the_weekend() -> None:
    due = add_business_seconds(OFFICE, at(2026, 3, 6, 16, 55), 10 * MINUTE)

    assert due == at(2026, 3, 9, 9, 5)


def test_the_clock_pauses_over_the_weekend_of_the_march_dst_change() -> None:
    due = add_business_seconds(OFFICE, at(2026, 3, 27, 16, 55), 10 * MINUTE)

    assert due == at(2026, 3, 30, 9, 5)
    assert due == datetime(2026, 3, 30, 7, 5, tzinfo=UTC)  # now UTC+2


def test_the_clock_pauses_over_the_weekend_of_the_october_dst_change() -> None:
    due = add_business_seconds(OFFICE, at(2026, 10, 23, 16, 55), 10 * MINUTE)

    assert due == at(2026, 10, 26, 9, 5)
    assert due == datetime(2026, 10, 26, 8, 5, tzinfo=UTC)  # back to UTC+1


def test_a_window_across_a_dst_change_counts_real_elapsed_time() -> None:
    night = schedule({"sun": [("01:00", "05:00")]})

    # 29 March: 02:00 does not exist, the window is only three hours long.
    assert add_business_seconds(night, at(2026, 3, 29, 1, 0), 3 * HOUR) == at(2026, 3, 29, 5, 0)
    # 25 October: 02:00-03:00 happens twice, the window is five hours long.
    assert add_business_seconds(night, at(2026, 10, 25, 1, 0), 5 * HOUR) == at(2026, 10, 25, 5, 0)


def test_starting_before_opening_starts_the_clock_at_opening() -> None:
    assert add_business_seconds(OFFICE, at(2026, 3, 2, 7, 0), 30 * MINUTE) == at(2026, 3, 2, 9, 30)
    assert add_business_seconds(OFFICE, at(2026, 3, 7, 11, 0), HOUR) == at(2026, 3, 9, 10, 0)


def test_the_clock_skips_holidays() -> None:
    hours = schedule(holidays=[date(2026, 12, 24), date(2026, 12, 25)])

    # Wednesday 23 Dec 16:55 + 10 min: Thu/Fri are holidays, then the weekend.
    due = add_business_seconds(hours, at(2026, 12, 23, 16, 55), 10 * MINUTE)

    assert due == at(2026, 12, 28, 9, 5)


def test_a_long_target_spans_several_business_days() -> None:
    # 20 business hours from Thursday 09:00: Thu 8h, Fri 8h, Mon 4h.
    due = add_business_seconds(OFFICE, at(2026, 3, 5, 9, 0), 20 * HOUR)

    assert due == at(2026, 3, 9, 13, 0)


def test_the_clock_pauses_between_windows_of_the_same_day() -> None:
    hours = schedule({"mon": [("13:00", "17:00"), ("09:00", "12:00")]})

    assert add_business_seconds(hours, at(2026, 3, 2, 11, 50), 20 * MINUTE) == at(
        2026, 3, 2, 13, 10
    )
    assert add_business_seconds(hours, at(2026, 3, 2, 10, 0), 30 * MINUTE) == at(2026, 3, 2, 10, 30)
    assert add_business_seconds(hours, at(2026, 3, 2, 12, 15), 5 * MINUTE) == at(2026, 3, 2, 13, 5)
    # 16:55 + 10 min: five minutes left today, then next monday 09:05.
    assert add_business_seconds(hours, at(2026, 3, 2, 16, 55), 10 * MINUTE) == at(2026, 3, 9, 9, 5)


def test_overlapping_windows_do_not_count_time_twice() -> None:
    hours = schedule({"mon": [("09:00", "13:00"), ("12:00", "17:00")]})

    assert add_business_seconds(hours, at(2026, 3, 2, 12, 30), HOUR) == at(2026, 3, 2, 13, 30)
    assert add_business_seconds(hours, at(2026, 3, 2, 9, 0), 8 * HOUR) == at(2026, 3, 2, 17, 0)


def test_a_24_00_end_runs_on_into_the_next_day() -> None:
    hours = schedule({"sat": [("20:00", "24:00")], "sun": [("00:00", "02:00")]})

    assert add_business_seconds(hours, at(2026, 3, 7, 23, 0), 2 * HOUR) == at(2026, 3, 8, 1, 0)
    assert add_business_seconds(hours, at(2026, 3, 7, 22, 0), 2 * HOUR) == at(2026, 3, 8, 0, 0)
    # From sunday 02:00 the next opening is saturday 20:00.
    assert add_business_seconds(hours, at(2026, 3, 8, 1, 30), HOUR) == at(2026, 3, 14, 20, 30)


def test_round_the_clock_hours_never_pause() -> None:
    always = schedule(
        {day: [("00:00", "24:00")] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
    )
    start = at(2026, 3, 28, 22, 0)  # the night of the March DST change

    assert add_business_seconds(always, start, 6 * HOUR) == start + timedelta(hours=6)
    assert is_open(always, at(2026, 3, 29, 3, 0))


def test_a_start_given_in_another_zone_is_the_same_moment() -> None:
    start_utc = at(2026, 3, 6, 16, 55)
    start_ny = start_utc.astimezone(ZoneInfo("America/New_York"))

    assert add_business_seconds(OFFICE, start_ny, 10 * MINUTE) == at(2026, 3, 9, 9, 5)
    assert is_open(OFFICE, start_ny)
