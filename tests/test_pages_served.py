"""How the node serves the pages: every page and its scripts, under a strict policy."""

from __future__ import annotations

from typing import Any

import pytest

from config.pages import SESSION_PAGES

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.security]


async def test_pages_are_served_under_a_strict_policy(client: Any) -> None:
    for path in [*(f"/{p}/inquiry-1" for p in SESSION_PAGES), "/admin", "/"]:
        r = await client.get(path)
        assert r.status == 200 and r.content_type == "text/html", path
        policy = r.headers["Content-Security-Policy"]
        assert "script-src 'self';" in policy and "unsafe" not in policy, policy
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        html = await r.text()
        assert "<script>" not in html and " style=" not in html, path  # nothing inline
    for asset in ("/static/js/watch.js", "/static/vendor/vendor.js", "/static/tribune.css", "/favicon.ico"):
        r = await client.get(asset)
        assert r.status == 200, asset
    r = await client.get("/static/js/../../../pyproject.toml")
    assert r.status in (403, 404)
