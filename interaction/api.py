"""HTTP API of the live channel: the sensitive-word list, comment exports, polls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
from aiohttp import web

from config import keys
from config.auth import Role, require_role
from config.errors import Forbidden, Invalid
from config.web import caller, json_response, read_json
from interaction import comments, export, polls, words
from interaction.errors import PollNotFound
from recorder import sessions, sheets

STAFF = (Role.MODERATOR, Role.HOST)


class WordsBody(msgspec.Struct, forbid_unknown_fields=True):
    words: Annotated[list[Annotated[str, msgspec.Meta(max_length=200)]], msgspec.Meta(max_length=20_000)]


async def get_words(request: web.Request) -> web.Response:
    require_role(caller(request), Role.MODERATOR, action="reading the sensitive-word list")
    current = await words.load(request.app[keys.DB])
    return json_response({"words": sorted(current.words)})


async def put_words(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, action="editing the sensitive-word list")
    body = await read_json(request, WordsBody, limit=1024 * 1024)
    change = await words.replace(request.app[keys.DB], body.words, who.rep)
    from interaction.server import LIVE

    if live := request.app.get(LIVE):
        live.words = await words.load(request.app[keys.DB])
        await live.bus.publish("words")
    current = await words.load(request.app[keys.DB])
    return json_response({**change, "words": sorted(current.words)})


async def export_comments(request: web.Request) -> web.StreamResponse:
    who = caller(request)
    require_role(who, Role.MODERATOR, Role.HOST, action="exporting comments")
    session = await sessions.get_for(request.app[keys.DB], request.match_info["session"], who)
    fmt = request.query.get("format", "xlsx")
    rows = await comments.export_rows(request.app[keys.DB], session["id"])
    cells = [export.comment_cells(r) for r in rows]
    return _table(fmt, f"comments-{session['id']}", "留言 Comments", export.COMMENT_HEADER, cells)


def _table(
    fmt: str, name: str, sheet: str, header: Sequence[str], rows: Sequence[Sequence[Any]]
) -> web.Response:
    if fmt == "csv":
        body, kind = sheets.to_csv(header, rows), export.CSV_TYPE
    elif fmt == "xlsx":
        body, kind = sheets.to_xlsx([(sheet, header, rows)]), export.XLSX_TYPE
    else:
        raise Invalid("format must be csv or xlsx")
    return web.Response(
        body=body,
        headers={"Content-Type": kind, "Content-Disposition": f'attachment; filename="{name}.{fmt}"'},
    )


def _live(request: web.Request) -> Any:
    from interaction.server import LIVE

    return request.app[LIVE]


def _poll_id(request: web.Request) -> int:
    raw = request.match_info["poll"]
    if not raw.isdigit() or len(raw) > 18:
        raise PollNotFound(f"no poll {raw[:20]!r}")
    return int(raw)


async def _visible_poll(request: web.Request) -> polls.Poll:
    """The poll, if the caller may attend its session; drafts only to staff."""
    who = caller(request)
    pool = request.app[keys.DB]
    poll = await polls.load(pool, _poll_id(request))
    await sessions.get_for(pool, poll.session_id, who)
    if poll.state == "draft" and not who.has(Role.ADMIN, *STAFF):
        raise PollNotFound(f"no poll {poll.id}")
    return poll


async def poll_templates(request: web.Request) -> web.Response:
    caller(request)
    return json_response({"templates": polls.TEMPLATES})


async def create_poll(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, Role.HOST, action="creating a poll")
    spec = await read_json(request, polls.PollSpec, limit=256 * 1024)
    session = await sessions.get_for(request.app[keys.DB], request.match_info["session"], who)
    poll = await polls.create(request.app[keys.DB], session["id"], spec, who)
    return json_response({"poll": poll.view()}, status=201)


async def list_polls(request: web.Request) -> web.Response:
    who = caller(request)
    session = await sessions.get_for(request.app[keys.DB], request.match_info["session"], who)
    found = await polls.list_for(request.app[keys.DB], session["id"], drafts=who.has(Role.ADMIN, *STAFF))
    return json_response({"polls": [p.view() for p in found]})


async def get_poll(request: web.Request) -> web.Response:
    return json_response({"poll": (await _visible_poll(request)).view()})


async def edit_poll(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, Role.HOST, action="editing a poll")
    spec = await read_json(request, polls.PollSpec, limit=256 * 1024)
    poll = await polls.edit(request.app[keys.DB], _poll_id(request), spec, who)
    return json_response({"poll": poll.view()})


class StateBody(msgspec.Struct, forbid_unknown_fields=True):
    state: Annotated[str, msgspec.Meta(max_length=16)]


async def change_poll_state(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, Role.HOST, action="opening, closing or publishing a poll")
    body = await read_json(request, StateBody)
    done = await _live(request).change_poll(_poll_id(request), body.state, who)
    return json_response({"poll": done.poll.view(), "results": done.results})


async def put_onsite(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, Role.HOST, action="entering on-site counts")
    body = await read_json(request, polls.OnsiteCounts)
    poll = await polls.set_onsite(request.app[keys.DB], _poll_id(request), body, who)
    return json_response({"results": await polls.compute_results(request.app[keys.DB], poll)})


async def poll_results(request: web.Request) -> web.Response:
    """Staff see results from the moment a poll opens; others once published (or live)."""
    who = caller(request)
    poll = await _visible_poll(request)
    staff = who.has(Role.ADMIN, *STAFF)
    if not (staff or poll.state == "published" or (poll.live_results and poll.state != "draft")):
        raise Forbidden("the results are not published yet")
    return json_response({"results": await polls.compute_results(request.app[keys.DB], poll)})


async def export_results(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, *STAFF, action="exporting poll results")
    poll = await _visible_poll(request)
    results = await polls.compute_results(request.app[keys.DB], poll)
    rows = polls.result_rows(results)
    return _table(
        request.query.get("format", "xlsx"), f"poll-{poll.id}", "测评结果 Results", polls.RESULT_HEADER, rows
    )


async def poll_votes(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, *STAFF, action="seeing who voted what")
    poll = await _visible_poll(request)
    return json_response({"votes": await polls.named_votes(request.app[keys.DB], poll)})


async def poll_missing(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, Role.HOST, action="seeing who has not voted")
    poll = await _visible_poll(request)
    return json_response({"missing": await polls.missing_voters(request.app[keys.DB], poll)})


async def poll_nudge(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, Role.HOST, action="reminding representatives to vote")
    poll = await _visible_poll(request)
    return json_response({"nudged": await _live(request).nudge(poll)})


async def projector(request: web.Request) -> web.Response:
    """The hall's projector: the session's most recently published results."""
    who = caller(request)
    session = await sessions.get_for(request.app[keys.DB], request.match_info["session"], who)
    return json_response({"results": await polls.projector(request.app[keys.DB], session["id"])})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/sensitive-words", get_words)
    app.router.add_put("/api/sensitive-words", put_words)
    app.router.add_get("/api/sessions/{session}/comments/export", export_comments)
    app.router.add_get("/api/poll-templates", poll_templates)
    app.router.add_post("/api/sessions/{session}/polls", create_poll)
    app.router.add_get("/api/sessions/{session}/polls", list_polls)
    app.router.add_get("/api/sessions/{session}/projector", projector)
    app.router.add_get("/api/polls/{poll}", get_poll)
    app.router.add_put("/api/polls/{poll}", edit_poll)
    app.router.add_post("/api/polls/{poll}/state", change_poll_state)
    app.router.add_put("/api/polls/{poll}/onsite", put_onsite)
    app.router.add_get("/api/polls/{poll}/results", poll_results)
    app.router.add_get("/api/polls/{poll}/results/export", export_results)
    app.router.add_get("/api/polls/{poll}/votes", poll_votes)
    app.router.add_get("/api/polls/{poll}/missing", poll_missing)
    app.router.add_post("/api/polls/{poll}/nudge", poll_nudge)
