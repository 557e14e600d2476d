"""The WHEP benchmark's baseline: the naive aiortc relay, one encoder per viewer.

Each viewer gets `MediaRelay().subscribe(publisher_track)`; aiortc's sender encodes the
decoded frames itself, so every viewer costs a whole H.264 encode. No ledger, no keys: only
the media path is compared. Run by `tribune bench whep` as `python -m streaming.baseline`.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from streaming import rtc


@dataclass
class Relay:
    pcs: set[RTCPeerConnection] = field(default_factory=set)
    source: dict[str, MediaStreamTrack] = field(default_factory=dict)
    relay: MediaRelay = field(default_factory=MediaRelay)


STATE: web.AppKey[Relay] = web.AppKey("relay")


class Counted(MediaStreamTrack):
    """The publisher's video, counting its frames (what the publisher sent)."""

    kind = "video"
    frames = 0

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.source = source

    async def recv(self) -> Any:
        frame = await self.source.recv()
        Counted.frames += 1
        return frame


def _pc(app: web.Application) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    app[STATE].pcs.add(pc)

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            app[STATE].pcs.discard(pc)
            await pc.close()

    return pc


async def whip(request: web.Request) -> web.Response:
    pc = _pc(request.app)

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        request.app[STATE].source[track.kind] = Counted(track) if track.kind == "video" else track

    await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return web.Response(
        status=201, text=pc.localDescription.sdp, content_type=rtc.SDP_TYPE, headers={"Location": "/whip/x/1"}
    )


async def whep(request: web.Request) -> web.Response:
    source = request.app[STATE].source.get("video")
    if source is None:
        return web.Response(status=404, text="not live")
    pc = _pc(request.app)
    transceiver = pc.addTransceiver(request.app[STATE].relay.subscribe(source), direction="sendonly")
    rtc.prefer_sent_codecs(transceiver)
    await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return web.Response(
        status=201, text=pc.localDescription.sdp, content_type=rtc.SDP_TYPE, headers={"Location": "/whep/x/1"}
    )


async def status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(
        {"live": "video" in state.source, "peers": len(state.pcs), "frames": Counted.frames}
    )


async def _close_all(app: web.Application) -> None:
    for pc in tuple(app[STATE].pcs):
        with contextlib.suppress(Exception):
            await pc.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m streaming.baseline")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    rtc.limit_host_addresses(("127.0.0.1",))
    app = web.Application()
    app[STATE] = Relay()
    app.router.add_post("/whip/{feed}", whip)
    app.router.add_post("/whep/{feed}", whep)
    app.router.add_get("/status", status)
    app.on_shutdown.append(_close_all)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
