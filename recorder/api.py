"""HTTP API of the ledger: sessions, the roster, leaves of absence, session reports and
scoring (see docs/protocol.md)."""

from __future__ import annotations

from typing import Any, get_args

from aiohttp import web

from config import keys
from config.auth import Principal, Role, require_role
from config.errors import Invalid, Unsupported
from config.web import caller, json_response, read_body, read_json
from recorder import leaves, reminders, reports, roster, rules, scoring, sessions, sheets
from recorder.periods import Period, parse_period


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


def _period(request: web.Request, default: str) -> Period:
    return parse_period(request.query.get("period", default))


def _format(request: web.Request) -> str:
    fmt = request.query.get("format", "json")
    if fmt not in {"json", "csv", "xlsx"}:
        raise Invalid("query parameter format must be json, csv or xlsx")
    return fmt


def _download(body: bytes, fmt: str, name: str) -> web.Response:
    kind = sheets.XLSX if fmt == "xlsx" else sheets.CSV
    return web.Response(
        body=body,
        headers={"Content-Type": kind, "Content-Disposition": f'attachment; filename="{name}.{fmt}"'},
    )


def _filters(request: web.Request) -> tuple[str | None, str | None]:
    level = request.query.get("level") or None
    if level is not None and level not in roster.LEVELS.values():
        raise Invalid("query parameter level must be national, provincial, city, county or township")
    delegation = request.query.get("delegation") or None
    if delegation is not None and len(delegation) > 100:
        raise Invalid("query parameter delegation is longer than 100 characters")
    return level, delegation


async def _version(request: web.Request) -> rules.Version:
    raw = request.query.get("version")
    number = None if raw is None else _int_param(request, "version", 1, 1, 1_000_000)
    return await rules.get_version(request.app[keys.DB], number)


async def _scored(request: web.Request, who: Principal, period: Period) -> tuple[rules.Version, str]:
    version = await _version(request)
    at = await scoring.ensure_scored(
        request.app[keys.DB],
        version,
        period,
        max_age=request.app[keys.SETTINGS].scoring_refresh,
        actor=who.rep,
    )
    return version, at.isoformat()


async def list_leaves(request: web.Request) -> web.Response:
    require_role(caller(request), Role.HOST, action="reading leaves of absence")
    found = await leaves.list_for(request.app[keys.DB], request.match_info["session"])
    return json_response({"leaves": found})


async def put_leave(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, action="recording a leave of absence")
    body = await read_json(request, leaves.LeaveBody)
    leave = await leaves.record(
        request.app[keys.DB], request.match_info["session"], request.match_info["rep"], body.reason, who.rep
    )
    return json_response({"leave": leave})


async def delete_leave(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, action="withdrawing a leave of absence")
    removed = await leaves.withdraw(
        request.app[keys.DB], request.match_info["session"], request.match_info["rep"], who.rep
    )
    return json_response({"withdrawn": removed})


async def session_report(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, Role.HOST, action="reading a session report")
    fmt = _format(request)
    version = await _version(request)
    report = await reports.session_report(
        request.app[keys.DB], request.match_info["session"], version.rules, version.version
    )
    if fmt == "json":
        return json_response({"report": report})
    body = reports.to_xlsx(report) if fmt == "xlsx" else reports.to_csv(report)
    return _download(body, fmt, f"report-{report['session']['id']}")


async def get_rules(request: web.Request) -> web.Response:
    require_role(caller(request), action="reading the scoring rules")
    pool = request.app[keys.DB]
    versions = await rules.list_versions(pool)
    current = await _version(request)
    if request.query.get("format") == "toml":
        return web.Response(
            text=await rules.source_of(pool, current.version),
            content_type="application/toml",
            charset="utf-8",
        )
    return json_response({"current": current.as_dict(), "versions": versions})


async def post_rules(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, action="changing the scoring rules")
    if request.content_type not in {"application/toml", "text/plain"}:
        raise Unsupported("send the rules file as application/toml (or text/plain), UTF-8")
    body = await read_body(request, limit=rules.MAX_RULES_BYTES)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("the rules file is not UTF-8 text") from None
    version = await rules.add_version(
        request.app[keys.DB], text, note=request.query.get("note", ""), actor=who.rep
    )
    return json_response({"rules": version.as_dict()}, status=201)


async def rescore(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, action="rescoring")
    period = _period(request, "year")
    version = await _version(request)
    run = await scoring.rescore(request.app[keys.DB], version, period, actor=who.rep)
    return json_response({"run": run.as_dict()})


async def get_scores(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, action="reading the rankings")
    period = _period(request, "year")
    level, delegation = _filters(request)
    version, scored_at = await _scored(request, who, period)
    found = await scoring.rankings(
        request.app[keys.DB],
        version.version,
        period,
        level=level,
        delegation=delegation,
        limit=_int_param(request, "limit", 100, 1, 100_000),
        offset=_int_param(request, "offset", 0, 0, 10_000_000),
    )
    return json_response(
        {"period": period.as_dict(), "version": version.version, "scored_at": scored_at, **found}
    )


async def get_top(request: web.Request) -> web.Response:
    """The top three for the platform's home page: any signed-in caller may read it."""
    who = caller(request)
    period = _period(request, "year")
    level, delegation = _filters(request)
    version, _ = await _scored(request, who, period)
    found = await scoring.rankings(
        request.app[keys.DB], version.version, period, level=level, delegation=delegation, limit=3
    )
    top = [{k: r[k] for k in ("rank", "rep", "name", "delegation", "points")} for r in found["rankings"]]
    return json_response({"period": period.as_dict(), "version": version.version, "top": top})


async def _reminder_list(request: web.Request) -> tuple[rules.Version, Period, list[dict[str, Any]]]:
    who = caller(request)
    require_role(who, action="reading reminders")
    version = await _version(request)
    period = _period(request, version.rules.reminders.period)
    await scoring.ensure_scored(
        request.app[keys.DB],
        version,
        period,
        max_age=request.app[keys.SETTINGS].scoring_refresh,
        actor=who.rep,
    )
    return version, period, await scoring.reminders(request.app[keys.DB], version, period)


async def get_reminders(request: web.Request) -> web.Response:
    version, period, found = await _reminder_list(request)
    return json_response({"period": period.as_dict(), "version": version.version, "reminders": found})


async def send_reminders(request: web.Request) -> web.Response:
    version, period, found = await _reminder_list(request)
    settings = request.app[keys.SETTINGS]
    sent = await reminders.publish(
        request.app[keys.REDIS],
        settings.redis_prefix,
        found,
        period=period,
        version=version.version,
        maxlen=settings.reminder_stream_maxlen,
    )
    return json_response(
        {"period": period.as_dict(), "sent": sent, "stream": reminders.stream_key(settings.redis_prefix)}
    )


async def duty_record(request: web.Request) -> web.Response:
    who = caller(request)
    rep = request.match_info["rep"]
    if rep != who.rep:
        require_role(who, action="reading another representative's duty record")
    fmt = _format(request)
    period = _period(request, "year")
    version, _ = await _scored(request, who, period)
    found = await scoring.record(request.app[keys.DB], version, period, rep)
    if fmt == "json":
        return json_response({"record": found})
    body = reports.record_xlsx(found) if fmt == "xlsx" else reports.record_csv(found)
    return _download(body, fmt, f"record-{rep}-{period.label}")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/me", me)
    app.router.add_get("/api/sessions", list_sessions)
    app.router.add_post("/api/sessions", create_session)
    app.router.add_get("/api/sessions/{session}", get_session)
    app.router.add_post("/api/sessions/{session}/state", change_state)
    app.router.add_get("/api/roster", list_roster)
    app.router.add_post("/api/roster/import", import_roster)
    app.router.add_get("/api/sessions/{session}/leaves", list_leaves)
    app.router.add_put("/api/sessions/{session}/leaves/{rep}", put_leave)
    app.router.add_delete("/api/sessions/{session}/leaves/{rep}", delete_leave)
    app.router.add_get("/api/sessions/{session}/report", session_report)
    app.router.add_get("/api/scores/rules", get_rules)
    app.router.add_post("/api/scores/rules", post_rules)
    app.router.add_post("/api/scores/rescore", rescore)
    app.router.add_get("/api/scores", get_scores)
    app.router.add_get("/api/scores/top", get_top)
    app.router.add_get("/api/scores/reminders", get_reminders)
    app.router.add_post("/api/scores/reminders", send_reminders)
    app.router.add_get("/api/representatives/{rep}/record", duty_record)
