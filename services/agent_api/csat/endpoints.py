"""CSAT endpoints: settings (admins), low-score follow-ups (supervisors) and the public
rating page a survey link opens (no login: the signed link is the credential)."""

from __future__ import annotations

import html
import json
import uuid
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError

from services.agent_api.csat import service
from services.agent_api.csat.schemas import (
    CloseFollowUp,
    FollowUpOut,
    FollowUpPage,
    FollowUpStatus,
    SurveyAnswer,
    SurveyRecorded,
)
from services.agent_api.deps import (
    CurrentAgent,
    SessionDep,
    StateDep,
    require_admin,
    require_supervisor,
)
from services.agent_api.rest import problems
from shared.csat import CsatSettings, load_settings
from shared.outbox import commit_and_publish
from shared.problems import PROBLEM_RESPONSES, ProblemError

router = APIRouter(prefix="/v1/csat", tags=["csat"])
surveys = APIRouter(prefix="/v1/surveys", tags=["csat"])

Token = Annotated[str, Path(min_length=3, max_length=64, description="The signed link token.")]
FORM = "application/x-www-form-urlencoded"


@router.get("/settings", response_model=CsatSettings, responses=problems(401, 403))
async def get_settings(session: SessionDep, claims: CurrentAgent) -> CsatSettings:
    """The workspace's survey settings (defaults until an admin saves some)."""
    require_supervisor(claims)
    return await load_settings(session, claims.workspace_id)


@router.put("/settings", response_model=CsatSettings, responses=problems(401, 403, 422))
async def put_settings(
    body: CsatSettings, session: SessionDep, claims: CurrentAgent
) -> CsatSettings:
    """Replace the survey settings: on/off, channels, reply and/or link, texts, expiry."""
    require_admin(claims)
    saved = await service.save_settings(session, claims.workspace_id, body)
    await session.commit()
    return saved


@router.get("/follow-ups", response_model=FollowUpPage, responses=problems(400, 401, 403))
async def list_follow_ups(
    session: SessionDep,
    claims: CurrentAgent,
    status: FollowUpStatus = FollowUpStatus.OPEN,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> FollowUpPage:
    """Follow-ups of low scores (2 or less), newest first; open ones by default."""
    require_supervisor(claims)
    rows, next_cursor = await service.list_follow_ups(
        session, claims, status=status, cursor=cursor, limit=limit
    )
    return FollowUpPage(
        items=[FollowUpOut.model_validate(r) for r in rows], next_cursor=next_cursor
    )


@router.post(
    "/follow-ups/{follow_up_id}/close",
    response_model=FollowUpOut,
    responses=problems(401, 403, 404, 409, 422),
)
async def close_follow_up(
    follow_up_id: uuid.UUID,
    body: CloseFollowUp,
    session: SessionDep,
    claims: CurrentAgent,
    state: StateDep,
) -> FollowUpOut:
    """Close a follow-up with a note on what was done; supervisors are told."""
    require_supervisor(claims)
    follow_up = await service.close_follow_up(session, claims, follow_up_id, body.note)
    out = FollowUpOut.model_validate(follow_up)
    await commit_and_publish(session, state.bus, state.database.sessions)
    return out


@surveys.get(
    "/{token}",
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}}, **problems(404)},
)
async def survey_page(token: Token, session: SessionDep, state: StateDep) -> HTMLResponse:
    """The rating page a survey link opens: five buttons that post the score. Opening
    it records nothing (link previews must not vote)."""
    survey = await service.survey_by_token(session, state.settings, token)
    settings = await load_settings(session, survey.workspace_id)
    closed = service.survey_state(survey)
    if closed == "answered":
        return _page("Thank you!", "<p>Your rating is recorded.</p>")
    if closed == "expired":
        return _page("Survey closed", "<p>This survey has expired.</p>", status=410)
    buttons = "".join(
        f'<button type="submit" name="score" value="{n}">{n}</button>' for n in range(1, 6)
    )
    return _page(
        "How did we do?",
        f"<p>{html.escape(settings.question)}</p>"
        f'<form method="post">{buttons}</form><p>1 = poor, 5 = great</p>',
    )


_ANSWER_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": SurveyAnswer.model_json_schema()},
        FORM: {"schema": SurveyAnswer.model_json_schema()},
    },
}


@surveys.post(
    "/{token}",
    response_model=SurveyRecorded,
    responses={
        **problems(404, 409, 422, s409="Answered already."),
        410: {**PROBLEM_RESPONSES[404], "description": "The survey expired."},
        415: {**PROBLEM_RESPONSES[404], "description": "Neither JSON nor a form."},
    },
    openapi_extra={"requestBody": _ANSWER_BODY},
)
async def answer_survey(
    token: Token, request: Request, session: SessionDep, state: StateDep
) -> Response:
    """Record the score (once; a second answer is 409, an expired survey 410). JSON
    `{"score": n}` answers JSON; the rating page's form post answers a page."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await request.body()
    try:
        if content_type == FORM:
            fields = parse_qs(raw.decode("utf-8", errors="strict"), max_num_fields=5)
            answer = SurveyAnswer.model_validate(
                {k: v[0] for k, v in fields.items() if v}, strict=False
            )
        elif content_type == "application/json":
            answer = SurveyAnswer.model_validate_json(raw)
        else:
            raise ProblemError(415, "Send the score as JSON or as a form.")
    except (ValidationError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            detail = "; ".join(e["msg"] for e in exc.errors())
        else:
            detail = "the body is not valid"
        raise ProblemError(422, f"The score must be a whole number 1 to 5 ({detail}).") from exc
    try:
        survey = await service.answer_by_link(session, state.settings, token, answer.score)
    except ProblemError as exc:
        if content_type == FORM and exc.status in (409, 410):
            return _page("Thank you!" if exc.status == 409 else "Survey closed", exc.detail)
        raise
    recorded = SurveyRecorded(score=answer.score, recorded_at=survey.responded_at or survey.sent_at)
    await commit_and_publish(session, state.bus, state.database.sessions)
    if content_type == FORM:
        return _page("Thank you!", "<p>Your rating is recorded.</p>")
    return JSONResponse(json.loads(recorded.model_dump_json()))


def _page(title: str, body: str, *, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:30em;margin:2em auto;padding:0 1em}"
        "button{font-size:1.5em;width:2.5em;height:2.5em;margin:.2em}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>",
        status_code=status,
    )
