"""The browser pages, served from the top-level `pages/` folder, and the security headers
every response carries (a strict Content-Security-Policy on the pages)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from config import keys

PAGES_DIR = Path(__file__).resolve().parent.parent / "pages"
VENDOR_BUNDLE = PAGES_DIR / "static" / "vendor" / "vendor.js"

# Pages a signed-in person opens; the session id is in the path, the token in the fragment.
SESSION_PAGES = ("watch", "moderate", "host", "projector")


def content_security_policy(allowed_origins: tuple[str, ...]) -> str:
    """Scripts, styles and fonts from this node only, no inline code, no plugins, no framing.
    `connect-src` adds the configured origins: a WHEP 307 sends the browser to the node that
    ingests the feed."""
    others = " ".join(o for o in allowed_origins if o != "*")
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            "media-src 'self' blob:",
            "font-src 'self'",
            f"connect-src 'self' {others}".strip(),
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


def _page(name: str) -> Callable[[web.Request], Awaitable[web.FileResponse]]:
    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGES_DIR / name, headers={"Cache-Control": "no-cache"})

    return handler


async def _favicon(request: web.Request) -> web.FileResponse:
    return web.FileResponse(PAGES_DIR / "static" / "favicon.svg", headers={"Content-Type": "image/svg+xml"})


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if response.content_type == "text/html":
        policy = request.app[PAGE_POLICY]
        response.headers["Content-Security-Policy"] = policy
        response.headers["Permissions-Policy"] = "camera=(self), microphone=(self), display-capture=(self)"
        response.headers["X-Frame-Options"] = "DENY"


PAGE_POLICY: web.AppKey[str] = web.AppKey("page_policy")


def add_routes(app: web.Application) -> None:
    app[PAGE_POLICY] = content_security_policy(app[keys.SETTINGS].allowed_origins)
    app.on_response_prepare.append(_security_headers)
    for page in SESSION_PAGES:
        app.router.add_get(f"/{page}/{{session}}", _page(f"{page}.html"))
    app.router.add_get("/admin", _page("admin.html"))
    app.router.add_get("/", _page("index.html"))
    app.router.add_get("/favicon.ico", _favicon)
    app.router.add_static("/static/", PAGES_DIR / "static", show_index=False, append_version=False)
