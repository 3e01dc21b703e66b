"""The analytics' window at the edge: times outside the accepted range are a 422 on
every report, the forecast included, never a 500 from date arithmetic."""

from __future__ import annotations

import httpx
import pytest

from devmode.seed import DEMO_AGENTS
from shared.db.models import AgentRole
from tests.unit.test_agent_api import assert_problem, sign_in

SUPERVISOR = next(a.email for a in DEMO_AGENTS if a.role is AgentRole.SUPERVISOR)
REPORTS = ("forecast", "volume", "response-times", "sla", "handoffs", "csat", "sentiment")


@pytest.mark.parametrize(
    "params",
    [
        {"from": "9999-12-30T00:00:00Z", "to": "9999-12-31T23:59:59Z"},
        {"from": "0001-01-01T00:00:00+14:00", "to": "0001-01-02T00:00:00Z"},
        {"from": "0001-01-01T00:00:00Z", "to": "0001-01-05T00:00:00Z", "timezone": "EST"},
        {"to": "0001-01-02T00:00:00Z"},  # the default start would be before year 1
        {"to": "1970-01-02T00:00:00Z"},  # the default start would be before the range
    ],
)
async def test_a_window_outside_the_accepted_range_is_a_422(
    api: httpx.AsyncClient, params: dict[str, str]
) -> None:
    auth = await sign_in(api, SUPERVISOR)
    for report in REPORTS:
        response = await api.get(f"/v1/analytics/{report}", params=params, headers=auth)
        assert_problem(response, 422)
        detail = response.json()["detail"]
        assert "between 1970-01-01T00:00:00Z and 9999-01-01T00:00:00Z" in detail, report


async def test_a_window_at_the_ends_of_the_range_is_answered(api: httpx.AsyncClient) -> None:
    auth = await sign_in(api, SUPERVISOR)
    for params in (
        {"from": "1970-01-01T00:00:00Z", "to": "1970-01-29T00:00:00Z", "timezone": "Etc/GMT+12"},
        {"from": "9998-12-04T00:00:00Z", "to": "9999-01-01T00:00:00Z", "timezone": "Etc/GMT-14"},
    ):
        response = await api.get("/v1/analytics/forecast", params=params, headers=auth)
        assert response.status_code == 200, response.text
        assert len(response.json()["hours"]) == 168
