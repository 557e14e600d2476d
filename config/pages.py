"""The browser pages, served from the top-level `pages/` folder."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

PAGES_DIR = Path(__file__).resolve().parent.parent / "pages"


def _page(name: str) -> Callable[[web.Request], Awaitable[web.FileResponse]]:
    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGES_DIR / name, headers={"Cache-Control": "no-cache"})

    return handler


def add_routes(app: web.Application) -> None:
    session_page = _page("session.html")
    for role_path in ("watch", "moderate", "host"):
        app.router.add_get(f"/{role_path}/{{session}}", session_page)
    app.router.add_get("/", _page("index.html"))
    app.router.add_static("/static/", PAGES_DIR / "static", show_index=False, append_version=False)
