"""The pages in headless Chromium against a real node: the whole session end to end (the host
broadcasts its fake camera, a representative watches, comments, votes; the moderator
approves; the projector shows the results), an XSS corpus, both languages, a phone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from config.auth import Role
from config.settings import Settings
from streaming.api import STREAMING
from tests.browser import Page, needs_chromium, open_page
from tests.faults import FaultProxy
from tests.live import Viewer
from tests.test_polls import SESSION, live_session
from tests.test_whip import bearer, make_feed, until

pytestmark = [pytest.mark.usefixtures("loopback_only"), pytest.mark.slow, needs_chromium]

FRAMES_DECODED = """async () => {
  const player = window.tribune.page.player;
  if (!player) return 0;
  let frames = 0;
  for (const s of (await player.pc.getStats()).values())
    if (s.type === 'inbound-rtp' && s.kind === 'video') frames += s.framesDecoded || 0;
  return frames;
}"""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(webrtc_host_addresses=("127.0.0.1",), comment_burst=4)


def url(client: Any, page: str, token: dict[str, str], session: str = SESSION) -> str:
    path = "/admin" if page == "admin" else f"/{page}/{session}"
    return f"{client.make_url(path)}#token={bearer(token)}"


async def texts(page: Page, selector: str) -> list[str]:
    return list(await page.page.locator(selector).all_inner_texts())


async def wait_text(
    page: Page, selector: str, text: str, timeout: float = 15_000, state: str = "visible"
) -> None:
    await page.page.locator(selector, has_text=text).first.wait_for(timeout=timeout, state=state)


async def comment_texts(page: Page) -> list[str]:
    return list(await page.page.locator("#comment-list li .text, #pinned li .text").all_inner_texts())


async def test_a_session_end_to_end(client: Any, auth: Any, db: Any, browser: Any) -> None:
    await live_session(client, auth, db)
    await make_feed(client, auth)
    hub = client.server.app[STREAMING]
    pages: list[Page] = []

    # The host broadcasts Chromium's fake camera from the host page.
    host = await open_page(browser, url(client, "host", auth("H1", Role.HOST)))
    pages.append(host)
    await wait_text(host, "#feed option", "main", state="attached")
    await host.page.click("#publish")
    await wait_text(host, "#pub-status", "正在推流")
    await until(lambda: hub.live_here("main") is not None, seconds=20)
    await wait_text(host, "#bitrate", "kbps")

    # A representative's page plays it: frames are decoded. Its network can be cut (refused).
    link = await FaultProxy(("127.0.0.1", client.port)).start()
    watch_url = url(client, "watch", auth("R1", name="王伟")).replace(f":{client.port}/", f":{link.port}/")
    viewer = await open_page(browser, watch_url)
    pages.append(viewer)
    await wait_text(viewer, "#title", "专题询问")
    for _ in range(150):
        if await viewer.page.evaluate(FRAMES_DECODED) >= 20:
            break
        await viewer.page.wait_for_timeout(200)
    assert await viewer.page.evaluate(FRAMES_DECODED) >= 20
    assert await viewer.page.evaluate("document.getElementById('video').videoWidth") > 0
    await viewer.shot("e2e-1-viewer-video")

    # The viewer comments; it waits for review (pre-moderation).
    await viewer.page.fill("#comment-text", "请问营商环境投诉的办理时限是多少？")
    assert "还可输入" in await viewer.page.inner_text("#comment-left")
    await viewer.page.click("#comment-send")
    await wait_text(viewer, "#comment-status", "等待审核")

    # The moderator sees it pending and approves it with the keyboard.
    moderator = await open_page(browser, url(client, "moderate", auth("M1", Role.MODERATOR)))
    pages.append(moderator)
    await wait_text(moderator, "#queue li", "办理时限")
    assert await moderator.page.inner_text("#n-pending") == "1"
    await moderator.shot("e2e-2-moderator-queue")
    await moderator.page.keyboard.press("a")
    await wait_text(moderator, "#published li", "办理时限")
    await wait_text(viewer, "#comment-list li", "办理时限")
    assert await moderator.page.inner_text("#n-pending") == "0"

    # The host opens a satisfaction poll from the template; two representatives vote.
    await host.page.select_option("#template", "satisfaction_per_department")
    await host.page.fill("#poll-title", "对被询问部门的满意度测评")
    await host.page.fill("#poll-units", "市交通运输局\n市住房城乡建设局")
    await host.page.click("#poll-form button[type=submit]")
    await wait_text(host, "#poll-list article", "对被询问部门的满意度测评")
    await host.page.click("#poll-list article button.primary")  # open voting
    await wait_text(viewer, "#poll-list form.vote", "市交通运输局")

    second = await open_page(
        browser, url(client, "watch", auth("R2", name="李娜")), width=390, height=844, mobile=True
    )
    pages.append(second)
    await wait_text(second, "#poll-list form.vote", "市住房城乡建设局")
    for voter, picks in ((viewer, ("满意", "基本满意")), (second, ("满意", "不满意"))):
        form = voter.page.locator("#poll-list form.vote")
        for fieldset, label in zip(await form.locator("fieldset").all(), picks, strict=True):
            await fieldset.get_by_label(label, exact=True).check()
        if voter is viewer:  # the first presses Submit while its network is down
            await link.refuse()
            await wait_text(viewer, "#conn", "重新连接")
            await form.locator("button[type=submit]").click()
            await wait_text(viewer, ".vote-status", "正在提交")
            await viewer.page.wait_for_timeout(9_000)  # past the acknowledgement timeout: sent again
            await link.heal()
            await wait_text(viewer, ".vote-status", "您的投票已记录", timeout=30_000)
        else:
            await form.locator("button[type=submit]").click()
            await wait_text(voter, ".vote-status", "您的投票已记录")
    await viewer.shot("e2e-3-viewer-voted")
    # Counted once though sent twice: two ballots per unit, and two votes in its counts.
    ballots = await db.fetch("SELECT rep_id, count(*) AS n FROM ballots GROUP BY rep_id ORDER BY rep_id")
    assert [(b["rep_id"], b["n"]) for b in ballots] == [("R1", 2), ("R2", 2)]
    counts = await db.fetch("SELECT sum(count) AS n FROM anonymous_counts GROUP BY question_id")
    assert [c["n"] for c in counts] == [2, 2]

    # The host sees the live tally, closes and publishes.
    await wait_text(host, "#poll-list .tally", "2 票")
    assert "满意率 100.0%" in await host.page.inner_text("#poll-list .tally")
    await host.shot("e2e-4-host-tally")
    await host.page.click("#poll-list article button.primary")  # close
    await wait_text(host, "#poll-list article", "已截止")
    await host.page.click("#poll-list article button.primary")  # publish
    await wait_text(host, "#poll-list article", "已公布")

    # The projector and the viewers show the results with 满意率.
    projector = await open_page(browser, url(client, "projector", auth("P1", Role.MODERATOR)))
    pages.append(projector)
    await wait_text(projector, "#results", "满意率")
    shown = await projector.page.inner_text("#results")
    assert "市交通运输局" in shown and "满意率 100.0%" in shown and "满意率 50.0%" in shown
    assert "参与 2 /" in shown
    await projector.shot("e2e-5-projector")
    for voter in (viewer, second):
        await wait_text(voter, "#poll-list .results", "满意率 50.0%")
    await second.shot("e2e-6-phone-results")

    # The viewer's connection is cut; comments published meanwhile all arrive after it returns.
    await link.refuse()
    await wait_text(viewer, "#conn", "重新连接")
    for n in range(3):
        await second.page.fill("#comment-text", f"断线期间的留言 {n}")
        await second.page.click("#comment-send")
        await wait_text(second, "#comment-status", "等待审核")
        await wait_text(moderator, "#queue li", f"断线期间的留言 {n}")
        await moderator.page.keyboard.press("a")
        await wait_text(second, "#comment-list li", f"断线期间的留言 {n}")
    await link.heal()
    await wait_text(viewer, "#conn", "已连接", timeout=30_000)
    for n in range(3):
        await wait_text(viewer, "#comment-list li", f"断线期间的留言 {n}")
    assert sorted(await comment_texts(viewer)) == sorted(await comment_texts(second))
    published = await db.fetchval(
        "SELECT count(*) FROM comments WHERE session_id = $1 AND status = 'published'", SESSION
    )
    assert len(await comment_texts(viewer)) == published == 4
    await viewer.shot("e2e-7-viewer-after-reconnect")

    await link.stop()
    # The browser logs its failed reconnection attempts while the network was cut.
    viewer.errors = [e for e in viewer.errors if "ERR_CONNECTION_REFUSED" not in e]
    for p in pages:
        assert p.errors == [], p.errors
        assert await p.missing_strings() == []


XSS = [
    "<script>window.__xss = 1</script>",
    '<img src=x onerror="window.__xss = 2">',
    "<svg onload=window.__xss=3>",
    '"><iframe src="javascript:window.__xss=4"></iframe>',
    '<a href="javascript:window.__xss=5">点我</a>',
    "{{constructor.constructor('window.__xss=6')()}}",
    "<style>body{display:none}</style>&lt;b&gt;",
]


@pytest.mark.security
async def test_comments_with_markup_run_no_script(client: Any, auth: Any, db: Any, browser: Any) -> None:
    await live_session(client, auth, db)
    base = str(client.make_url(""))
    writers = [Viewer(base, bearer(auth(rep)), SESSION) for rep in ("R1", "R2", "R4")]
    moderator = Viewer(base, bearer(auth("M1", Role.MODERATOR)), SESSION)
    for v in (*writers, moderator):
        await v.connect()
    for n, text in enumerate(XSS):
        ack = await writers[n % len(writers)].call("comment.send", {"text": text, "key": f"x{n}"})
        assert ack["ok"], ack
        assert (await moderator.call("moderate", {"comment": ack["comment"]["id"], "action": "approve"}))[
            "ok"
        ]
        if n < 2:
            await moderator.call("moderate", {"comment": ack["comment"]["id"], "action": "pin"})

    pages = [
        await open_page(browser, url(client, "watch", auth("R1"))),
        await open_page(browser, url(client, "moderate", auth("M2", Role.MODERATOR))),
        await open_page(browser, url(client, "projector", auth("P1", Role.MODERATOR))),
    ]
    # A comment typed into the box after the page loaded takes the live path, not the snapshot.
    await pages[0].page.fill("#comment-text", '<img src=y onerror="window.__xss = 7">')
    await pages[0].page.click("#comment-send")
    await moderator.wait(
        lambda: any("src=y" in c["text"] for q in moderator.queue for c in q.get("added", []))
    )
    pending = next(c for q in moderator.queue for c in q.get("added", []) if "src=y" in c["text"])
    assert (await moderator.call("moderate", {"comment": pending["id"], "action": "approve"}))["ok"]
    await wait_text(pages[0], "#comment-list li", "src=y")

    shown = await comment_texts(pages[0])
    assert sorted(shown) == sorted([*XSS, '<img src=y onerror="window.__xss = 7">'])
    await wait_text(pages[2], "#pinned li", "<script>")
    assert sorted(await texts(pages[2], "#pinned li .text")) == sorted(XSS[:2])
    await wait_text(pages[1], "#published li", "constructor")
    for p in pages:
        assert await p.page.evaluate("window.__xss") is None
        assert await p.page.locator("main img, main script, main iframe, main svg, main style").count() == 0
        assert p.errors == [], p.errors
    await pages[0].shot("xss-viewer")
    for v in (*writers, moderator):
        await v.close()


@pytest.mark.parametrize("lang", ["zh-CN", "en"])
async def test_every_page_renders_in_both_languages(
    client: Any, auth: Any, db: Any, browser: Any, lang: str
) -> None:
    await live_session(client, auth, db)
    await make_feed(client, auth)
    host = auth("H1", Role.HOST)
    r = await client.post(
        f"/api/sessions/{SESSION}/polls",
        json={"template": "satisfaction_per_department", "title": "测评", "units": ["市交通运输局"]},
        headers=host,
    )
    assert r.status == 201
    poll = (await r.json())["poll"]["id"]
    assert (await client.post(f"/api/polls/{poll}/state", json={"state": "open"}, headers=host)).status == 200
    checks = {
        "watch": (auth("R1"), "#poll-list form.vote"),
        "moderate": (auth("M1", Role.MODERATOR), "#queue li"),
        "host": (host, "#poll-list article"),
        "projector": (auth("P1", Role.MODERATOR), "#results"),
        "admin": (auth.admin, "main"),
    }
    other = "English" if lang == "zh-CN" else "中文"
    for name, (token, ready) in checks.items():
        page = await open_page(browser, url(client, name, token), lang=lang)
        await page.page.locator(ready).first.wait_for()
        await page.page.wait_for_timeout(300)  # late renders (presence, tallies) land too
        assert await page.page.evaluate("document.documentElement.lang") == lang
        assert await page.page.inner_text("#lang") == other
        body = await page.page.inner_text("body")
        assert "⟦" not in body, (name, body)
        assert await page.missing_strings() == [], name
        assert page.errors == [], (name, page.errors)
        await page.shot(f"lang-{lang}-{name}")
        await page.context.close()


async def test_viewer_page_at_phone_width(client: Any, auth: Any, db: Any, browser: Any) -> None:
    await live_session(client, auth, db)
    page = await open_page(browser, url(client, "watch", auth("R1")), width=360, height=740, mobile=True)
    await wait_text(page, "#title", "专题询问")
    await page.page.locator("#comment-text").wait_for()
    width = await page.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, f"the page scrolls sideways: {width}px wide"
    for selector in ("#video", "#comment-text", "#comment-send"):
        box = await page.page.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360, (selector, box)
    send = await page.page.locator("#comment-send").bounding_box()
    assert send is not None and send["height"] >= 40  # a thumb can hit it
    await page.page.fill("#comment-text", "手机上发送的留言")
    await page.page.click("#comment-send")
    await wait_text(page, "#comment-status", "等待审核")
    await page.shot("phone-viewer")
    assert page.errors == []


async def test_moderation_and_host_tools(client: Any, auth: Any, db: Any, browser: Any) -> None:
    """What the scenario does not touch: a sensitive-word hit marked, filtering, adopting with
    a note, the export; the comment rate limit as the viewer sees it; the host's on-site
    counts, who has not voted and the nudge, and ending the session."""
    await live_session(client, auth, db)
    r = await client.put("/api/sensitive-words", json={"words": ["敏感词"]}, headers=auth.admin)
    assert r.status == 200
    viewer = await open_page(browser, url(client, "watch", auth("R1", name="王伟")))
    moderator = await open_page(browser, url(client, "moderate", auth("M1", Role.MODERATOR)))
    host = await open_page(browser, url(client, "host", auth("H1", Role.HOST)))
    await wait_text(viewer, "#title", "专题询问")

    # Four comments use the burst (four in these tests); the fifth is refused, the wait shown.
    for text in ("第一条：道路维修进度如何？", "第二条 含 敏 感-词 的留言", "第三条：停车难", "第四条"):
        await viewer.page.fill("#comment-text", text)
        await viewer.page.click("#comment-send")
        await wait_text(viewer, "#comment-status", "等待审核")
    await viewer.page.fill("#comment-text", "第五条")
    await viewer.page.click("#comment-send")
    await wait_text(viewer, "#comment-status", "秒后再试")
    assert await viewer.page.locator("#comment-send").is_disabled()

    # The hit is marked and can be filtered; adopting asks for a note.
    await wait_text(moderator, "#queue li.flagged", "敏感词")
    assert await moderator.page.inner_text("#n-flagged") == "1"
    await moderator.page.select_option("#filter", "flagged")
    assert len(await texts(moderator, "#queue li")) == 1
    await moderator.page.select_option("#filter", "clean")
    await wait_text(moderator, "#queue li", "道路维修")
    first = moderator.page.locator("#queue li", has_text="道路维修")
    await first.locator("button[data-action=adopt]").click()
    await moderator.page.fill("#adopt-note", "转交市交通运输局")
    await moderator.page.click("#adopt-form button[type=submit]")
    await wait_text(moderator, "#published li", "转交市交通运输局")
    await wait_text(viewer, "#comment-list li", "已采纳")
    row = await db.fetchrow("SELECT adopted, adopted_note FROM comments WHERE body LIKE '第一条%'")
    assert row["adopted"] is True and row["adopted_note"] == "转交市交通运输局"
    async with moderator.page.expect_download() as download:
        await moderator.page.click("#export-csv")
    saved = await (await download.value).path()
    exported = await asyncio.to_thread(Path(saved).read_text, encoding="utf-8-sig")
    assert "道路维修" in exported and "转交市交通运输局" in exported

    # The host: a poll, the on-site count, who has not voted, the nudge, the end.
    await host.page.select_option("#template", "satisfaction_per_department")
    await host.page.fill("#poll-title", "测评")
    await host.page.fill("#poll-units", "市交通运输局")
    await host.page.click("#poll-form button[type=submit]")
    await host.page.click("#poll-list article button.primary")  # open
    card = host.page.locator("#poll-list article").first
    await card.locator("summary", has_text="未投票").click()
    await card.locator("button", has_text="查看").click()
    await wait_text(host, "#poll-list .missing li", "R1")
    await card.locator("button", has_text="提醒投票").click()
    await wait_text(host, "#poll-list article", "已提醒 1 人")
    await wait_text(viewer, "#status", "主持人提醒您参加测评")
    await card.locator("summary", has_text="现场计票").click()
    inputs = card.locator(".onsite input")
    for n, value in enumerate(("40", "8", "2")):
        await inputs.nth(n).fill(value)
    await card.locator(".onsite button[type=submit]").click()
    await wait_text(host, "#poll-list article", "现场票数已保存")
    counts = await db.fetch("SELECT count FROM onsite_tallies ORDER BY option_id")
    assert [c["count"] for c in counts] == [40, 8, 2]
    await host.page.click("#end")
    await wait_text(host, "#state-status", "再次点击")
    await host.page.click("#end")
    await wait_text(host, "#state", "已结束")
    await wait_text(viewer, "#comment-closed", "会议已结束")
    await moderator.shot("tools-moderator")
    await host.shot("tools-host")
    for p in (moderator, host):
        assert p.errors == [], p.errors
