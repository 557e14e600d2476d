"""Headless Chromium (Debian's package) driven by Playwright, for the browser tests.

Pages get Chromium's fake camera and microphone, loopback ICE, and a record of every
console error and uncaught exception, which the tests assert is empty. Screenshots go to
`TRIBUNE_ARTIFACTS` (default `build/test-artifacts/`)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = next(
    (p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "") if p and Path(p).exists()),
    None,
)
FLAGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
_DEFAULT_ARTIFACTS = Path(__file__).resolve().parent.parent / "build" / "test-artifacts"
ARTIFACTS = Path(os.environ.get("TRIBUNE_ARTIFACTS", _DEFAULT_ARTIFACTS))

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")


@contextlib.asynccontextmanager
async def launch() -> AsyncIterator[Any]:
    """Headless Chromium for one test (the `browser` fixture of conftest.py)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


class Page:
    """A page in a context of its own (its own storage, so its own token and language),
    recording console errors and uncaught exceptions."""

    def __init__(self, page: Any, context: Any) -> None:
        self.page = page
        self.context = context
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)
        page.on("dialog", lambda d: self.errors.append(f"dialog: {d.message}"))

    def _console(self, msg: Any) -> None:
        if msg.type == "error":
            self.errors.append(f"console: {msg.text} ({msg.location.get('url', '')})")

    async def missing_strings(self) -> list[str]:
        return list(await self.page.evaluate("() => [...window.tribuneMissing]"))

    async def shot(self, name: str) -> None:
        await self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def open_page(
    browser: Any,
    url: str,
    *,
    width: int = 1280,
    height: int = 800,
    lang: str | None = None,
    mobile: bool = False,
) -> Page:
    context = await browser.new_context(
        viewport={"width": width, "height": height},
        is_mobile=mobile,
        has_touch=mobile,
        locale="zh-CN",
        timezone_id="Asia/Shanghai",  # where the representatives are: times typed have a known offset
    )
    if lang is not None:
        await context.add_init_script(f"localStorage.setItem('tribune.lang', {lang!r})")
    page = Page(await context.new_page(), context)
    await page.page.goto(url)
    return page
