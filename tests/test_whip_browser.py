"""A real browser on both ends: headless Chromium publishes its fake camera over WHIP, and a
second page watches over WHEP until `getStats()` shows decoded frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from streaming.api import STREAMING
from tests.browser import CHROMIUM, FLAGS
from tests.test_polls import live_session
from tests.test_whip import bearer, make_feed, until

pytestmark = [pytest.mark.usefixtures("loopback_only"), pytest.mark.slow]

# Both scripts gather every candidate before sending the offer (no trickle ICE).
PUBLISH = """async ([key]) => {
  const stream = await navigator.mediaDevices.getUserMedia({video: {width: 640, height: 360}, audio: true});
  const pc = new RTCPeerConnection();
  for (const track of stream.getTracks()) pc.addTransceiver(track, {direction: 'sendonly'});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(ok => pc.iceGatheringState === 'complete' ? ok() :
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && ok()));
  const r = await fetch('/whip/main', {method: 'POST', body: pc.localDescription.sdp,
    headers: {'Content-Type': 'application/sdp', 'Authorization': 'Bearer ' + key}});
  if (r.status !== 201) throw new Error('WHIP ' + r.status + ' ' + await r.text());
  await pc.setRemoteDescription({type: 'answer', sdp: await r.text()});
  window.publisher = pc;
  return r.headers.get('Location');
}"""

WATCH = """async ([token]) => {
  const pc = new RTCPeerConnection();
  const video = pc.addTransceiver('video', {direction: 'recvonly'});
  const h264 = RTCRtpReceiver.getCapabilities('video').codecs.filter(
    c => c.mimeType === 'video/H264' && /packetization-mode=1/.test(c.sdpFmtpLine || ''));
  video.setCodecPreferences(h264);
  pc.addTransceiver('audio', {direction: 'recvonly'});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(ok => pc.iceGatheringState === 'complete' ? ok() :
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && ok()));
  const r = await fetch('/whep/main', {method: 'POST', body: pc.localDescription.sdp,
    headers: {'Content-Type': 'application/sdp', 'Authorization': 'Bearer ' + token}});
  if (r.status !== 201) throw new Error('WHEP ' + r.status + ' ' + await r.text());
  await pc.setRemoteDescription({type: 'answer', sdp: await r.text()});
  window.viewer = pc;
}"""

DECODED = """async () => {
  const stats = await window.viewer.getStats();
  for (const s of stats.values())
    if (s.type === 'inbound-rtp' && s.kind === 'video')
      return {frames: s.framesDecoded || 0, codec: stats.get(s.codecId)?.mimeType || ''};
  return {frames: 0, codec: ''};
}"""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(webrtc_host_addresses=("127.0.0.1",))


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
async def test_chromium_publishes_and_chromium_watches(
    client: Any, auth: Any, db: Any, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    await live_session(client, auth, db)
    key = await make_feed(client, auth)
    hub = client.server.app[STREAMING]
    base = str(client.make_url(""))
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            host = await (await browser.new_context()).new_page()
            await host.goto(f"{base}/healthz")
            location = await host.evaluate(PUBLISH, [key])
            assert location.startswith("/whip/main/")
            await until(lambda: hub.live_here("main") is not None, seconds=20)
            await until(lambda: hub.ingests["main"].broadcast.frames_in >= 15, seconds=20)

            watcher = await (await browser.new_context()).new_page()
            await watcher.goto(f"{base}/healthz")
            await watcher.evaluate(WATCH, [bearer(auth("R1"))])
            stats: dict[str, Any] = {}
            for _ in range(100):
                stats = await watcher.evaluate(DECODED)
                if stats["frames"] >= 30:
                    break
                await watcher.wait_for_timeout(200)
            assert stats["frames"] >= 30, stats
            assert stats["codec"] == "video/H264"
        finally:
            await browser.close()
    # The browser vanished without a word: ICE consent checks (every 5 s, given up after 6
    # misses) find both peers dead, and the node frees them and ends the feed.
    await until(lambda: not hub.viewers and not hub.ingests, seconds=50)
    assert await db.fetchval("SELECT state FROM feeds WHERE id = 'main'") == "ended"
