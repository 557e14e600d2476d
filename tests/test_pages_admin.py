"""The admin page in headless Chromium: an administrator schedules a session, imports the
roster, makes a stream key, edits the sensitive words, downloads a report and reads the
ranking and the reminders — in Chinese and then in English."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from config.auth import Role
from recorder.feeds import digest
from tests.browser import needs_chromium, open_page

pytestmark = [pytest.mark.usefixtures("loopback_only"), pytest.mark.slow]

ROSTER = (
    "代表编号,姓名,层级,代表团\n"
    "R0001,王伟,市,东港区代表团\n"
    ",无编号,市,东港区代表团\n"  # row 3: no id
    "R0002,李娜,县,岚山区代表团\n"
).encode()


def expected_refusal(error: str) -> bool:
    """The 422s the test provokes: the roster with a bad row, the period that does not parse."""
    return "status of 422" in error and ("/api/roster/import?" in error or "period=next%20week" in error)


@needs_chromium
async def test_admin_page(client: Any, auth: Any, db: Any, browser: Any) -> None:
    from playwright.async_api import expect

    token = auth.admin["Authorization"].removeprefix("Bearer ")
    page = await open_page(browser, f"{client.make_url('/admin')}#token={token}")
    p = page.page
    await expect(p.locator("body[data-ready]")).to_be_attached()
    assert "token" not in p.url  # the token left the address bar
    await expect(p.locator("#session-rows")).to_contain_text("暂无会议")

    # Schedule a session through the form.
    await p.fill("#s-title", "关于优化营商环境工作情况的专题询问")
    await p.select_option("#s-kind", "special_inquiry")
    await p.fill("#s-announcement", "上午九点开始，请准时参加。")
    await p.fill("#s-start", "2026-12-01T09:00")
    await p.fill("#s-end", "2026-12-01T11:00")
    await p.select_option("#s-moderation", "post")
    await p.fill("#s-id", "inq-2026-12")
    await p.click("#s-submit")
    await expect(p.locator("#session-form-status")).to_contain_text("inq-2026-12")
    row = p.locator("#session-rows tr[data-session='inq-2026-12']")
    await expect(row).to_contain_text("关于优化营商环境工作情况的专题询问")
    await expect(row).to_contain_text("专题询问")
    await expect(row).to_contain_text("未开始")
    stored = await db.fetchrow("SELECT * FROM sessions WHERE id = 'inq-2026-12'")
    assert stored["kind"] == "special_inquiry"
    assert stored["announcement"] == "上午九点开始，请准时参加。"
    assert stored["scheduled_start"] == datetime(2026, 12, 1, 1, 0, tzinfo=UTC)  # 09:00 in Beijing
    assert stored["scheduled_end"] == datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    assert (stored["audience"], stored["default_tier"], stored["moderation"]) == ("roster", "voting", "post")

    # A form mistake is explained next to the form, and nothing is sent.
    await p.fill("#s-title", "倒过来的会议")
    await p.fill("#s-start", "2026-12-02T11:00")
    await p.fill("#s-end", "2026-12-02T09:00")
    await p.click("#s-submit")
    await expect(p.locator("#session-form-status")).to_have_text("结束时间必须晚于开始时间。")
    assert await p.evaluate("document.activeElement.id") == "s-end"
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1
    await page.shot("admin-sessions")

    # A roster with a bad row: nothing is written, and the row is named.
    roster = {"name": "名册.csv", "mimeType": "text/csv", "buffer": ROSTER}
    await p.set_input_files("#roster-file", files=[roster])
    await p.click("#roster-submit")
    await expect(p.locator("#roster-status")).to_contain_text("没有导入任何数据")
    rejected = p.locator("#roster-rejected-rows tr[data-row='3']")
    await expect(rejected).to_contain_text("id is empty")
    await expect(rejected.locator("td").first).to_have_text("3")
    assert await db.fetchval("SELECT count(*) FROM representatives") == 0
    await page.shot("admin-roster-refused")

    # With "skip invalid rows" the valid ones go in.
    await p.check("#roster-skip")
    await p.click("#roster-submit")
    await expect(p.locator("#roster-status")).to_contain_text("写入 2 行")
    await expect(p.locator("#roster-summary-rows")).to_contain_text("新增2")
    rows = await db.fetch("SELECT id, name, level FROM representatives ORDER BY id")
    assert [tuple(r) for r in rows] == [("R0001", "王伟", "city"), ("R0002", "李娜", "county")]

    # A feed for the session: its key is shown once, and it is the key the node checks.
    await p.select_option("#feed-session", "inq-2026-12")
    await p.fill("#feed-id", "main")
    await p.click("#feed-submit")
    await expect(p.locator("#key-box")).to_be_visible()
    key = await p.input_value("#key-value")
    assert key.startswith("tsk_")
    assert await p.input_value("#key-whip") == str(client.make_url("/whip/main"))
    await expect(p.locator("#key-box")).to_contain_text("只显示这一次")
    await expect(p.locator("#feed-rows tr[data-feed='main']")).to_contain_text("未推流")
    assert await db.fetchval("SELECT stream_key_hash FROM feeds WHERE id = 'main'") == digest(key)
    await page.shot("admin-feed-key")

    # Rotating takes a confirming second click and gives a new key.
    rotate = p.locator("#feed-rows tr[data-feed='main'] button")
    await rotate.click()
    await expect(rotate).to_have_text("确认更换密钥？")
    await rotate.click()
    await expect(p.locator("#feed-status")).to_contain_text("旧密钥立即失效")
    rotated = await p.input_value("#key-value")
    assert rotated.startswith("tsk_") and rotated != key
    assert await db.fetchval("SELECT stream_key_hash FROM feeds WHERE id = 'main'") == digest(rotated)

    # Sensitive words, one per line.
    await p.fill("#words-text", "敏感词\n  另一个词 \n\n敏感词\n")
    await p.click("#words-submit")
    await expect(p.locator("#words-status")).to_contain_text("新增 2 个")
    r = await client.get("/api/sensitive-words", headers=auth.admin)
    assert sorted((await r.json())["words"]) == sorted(["敏感词", "另一个词"])

    # The session report downloads under its name.
    await p.select_option("#export-session", "inq-2026-12")
    async with p.expect_download() as info:
        await p.click("#export-report")
    download = await info.value
    assert download.suggested_filename == "report-inq-2026-12.xlsx"
    await expect(p.locator("#export-status")).to_contain_text("report-inq-2026-12.xlsx")

    # The ranking of the year: both representatives, nobody with points yet.
    await p.click("#rank-submit")
    await expect(p.locator("#rank-rows tr")).to_have_count(2)
    await expect(p.locator("#top3")).to_contain_text("王伟")
    await expect(p.locator("#top3")).to_contain_text("李娜")
    await expect(p.locator("#rank-meta")).to_contain_text("共 2 位代表")
    await page.shot("admin-ranking")

    # A period that does not parse is explained by the node.
    await p.fill("#rank-period", "next week")
    await p.click("#rank-submit")
    await expect(p.locator("#rank-status")).to_have_attribute("data-kind", "error")

    # Reminders: both have no points this quarter; sending takes two clicks.
    await p.click("#remind-submit")
    await expect(p.locator("#remind-rows tr")).to_have_count(2)
    await expect(p.locator("#remind-rows")).to_contain_text("积分低于标准")
    await p.click("#remind-send")
    await p.click("#remind-send")
    await expect(p.locator("#remind-status")).to_contain_text("已发送 2 条提醒")
    await page.shot("admin-reminders")

    # The browser logs each refused request; those two were meant to be refused.
    assert [e for e in page.errors if not expected_refusal(e)] == []
    assert await page.missing_strings() == []

    # English: every string has a translation, dynamic parts included.
    await p.click("#lang")
    await expect(p.locator("h1")).to_have_text("Administration")
    await expect(row).to_contain_text("Not started")
    await expect(p.locator("#remind-rows")).to_contain_text("Few points")
    await expect(p.locator("#remind-status")).to_contain_text("Sent 2 reminders")
    assert await page.missing_strings() == []
    assert [e for e in page.errors if not expected_refusal(e)] == []
    await page.shot("admin-en")
    await page.context.close()


@needs_chromium
async def test_admin_page_needs_an_admin(client: Any, auth: Any, browser: Any) -> None:
    from playwright.async_api import expect

    page = await open_page(browser, str(client.make_url("/admin")))
    await expect(page.page.locator("#status")).to_have_text("缺少登录凭证：请从平台打开会议链接。")
    await expect(page.page.locator("#panels")).to_be_hidden()
    await page.context.close()

    host = auth("H001", Role.HOST)["Authorization"].removeprefix("Bearer ")
    page = await open_page(browser, f"{client.make_url('/admin')}#token={host}")
    await expect(page.page.locator("#status")).to_contain_text("仅限管理员")
    await expect(page.page.locator("#panels")).to_be_hidden()
    assert page.errors == []
    assert await page.missing_strings() == []
    await page.context.close()
