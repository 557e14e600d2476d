"""HTTP API of the live channel: the sensitive-word list and comment exports."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from config import keys
from config.auth import Role, require_role
from config.errors import Invalid
from config.web import caller, json_response, read_json
from interaction import comments, export, words
from recorder import sessions


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
    if fmt == "csv":
        body, kind = export.to_csv(rows), "text/csv; charset=utf-8"
    elif fmt == "xlsx":
        body, kind = export.to_xlsx(rows), "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    else:
        raise Invalid("format must be csv or xlsx")
    name = f"comments-{session['id']}.{fmt}"
    return web.Response(
        body=body, headers={"Content-Type": kind, "Content-Disposition": f'attachment; filename="{name}"'}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/sensitive-words", get_words)
    app.router.add_put("/api/sensitive-words", put_words)
    app.router.add_get("/api/sessions/{session}/comments/export", export_comments)
