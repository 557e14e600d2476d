"""HTTP API of the ledger: sessions and the roster (see docs/protocol.md)."""

from __future__ import annotations

from typing import get_args

from aiohttp import web

from config import keys
from config.auth import Role, require_role
from config.errors import Invalid
from config.web import caller, json_response, read_body, read_json
from recorder import roster, sessions


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(f"query parameter {name} must be a whole number") from None
    if not low <= value <= high:
        raise Invalid(f"query parameter {name} must be between {low} and {high}")
    return value


async def me(request: web.Request) -> web.Response:
    who = caller(request)
    return json_response({"rep": who.rep, "name": who.name, "roles": sorted(who.roles)})


async def list_sessions(request: web.Request) -> web.Response:
    who = caller(request)
    state = request.query.get("state")
    if state is not None and state not in get_args(sessions.State):
        raise Invalid("query parameter state must be scheduled, live or ended")
    limit = _int_param(request, "limit", 100, 1, 500)
    found = await sessions.list_for(request.app[keys.DB], who, state=state, limit=limit)
    return json_response({"sessions": found})


async def create_session(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, action="scheduling a session")
    spec = await read_json(request, sessions.SessionSpec, limit=4 * 1024 * 1024)
    created = await sessions.create(request.app[keys.DB], spec, who.rep)
    return json_response({"session": created}, status=201)


async def get_session(request: web.Request) -> web.Response:
    who = caller(request)
    found = await sessions.get_for(request.app[keys.DB], request.match_info["session"], who)
    return json_response({"session": found})


async def change_state(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, Role.HOST, action="starting or ending a session")
    change = await read_json(request, sessions.StateChange)
    updated, event = await sessions.change_state(
        request.app[keys.DB], request.match_info["session"], change.state, who
    )
    if sink := request.app.get(keys.EVENT_SINK):
        await sink.committed(updated["id"], [event])
    return json_response({"session": updated, "event": event.wire()})


async def list_roster(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, action="reading the roster")
    page = await roster.list_page(
        request.app[keys.DB],
        delegation=request.query.get("delegation"),
        limit=_int_param(request, "limit", 100, 1, 1000),
        offset=_int_param(request, "offset", 0, 0, 10_000_000),
    )
    return json_response({"representatives": page})


async def import_roster(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, action="importing the roster")
    settings = request.app[keys.SETTINGS]
    skip_invalid = request.query.get("skip_invalid", "false").lower() in {"1", "true", "yes"}
    data = await read_body(request, limit=settings.max_upload_bytes)
    report = await roster.import_file(
        request.app[keys.DB],
        data,
        request.content_type if request.body_exists else "",
        skip_invalid=skip_invalid,
        max_rows=settings.roster_max_rows,
        actor=who.rep,
    )
    metrics = request.app[keys.METRICS]
    metrics.roster_rows.labels("imported").inc(report.imported)
    metrics.roster_rows.labels("rejected").inc(len(report.rejected))
    if not report.committed:
        raise Invalid(
            f"{len(report.rejected)} of {report.total_rows} rows are invalid, so nothing was imported; "
            "fix them, or import the valid rows with ?skip_invalid=true",
            details=report.as_dict(),
        )
    return json_response({"report": report.as_dict()})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/me", me)
    app.router.add_get("/api/sessions", list_sessions)
    app.router.add_post("/api/sessions", create_session)
    app.router.add_get("/api/sessions/{session}", get_session)
    app.router.add_post("/api/sessions/{session}/state", change_state)
    app.router.add_get("/api/roster", list_roster)
    app.router.add_post("/api/roster/import", import_roster)
