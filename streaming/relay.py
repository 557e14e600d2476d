"""A viewer's side of the fan-out: a track that hands the broadcast's units to aiortc's
`RTCRtpSender` as they are, and the two hooks that make the sender share them.

aiortc's sender packs anything that is not an `av.Frame` with its encoder's `pack()`, and
answers a PLI/FIR by flagging its own encoder. Both are private (`_RTCRtpSender__encoder`,
`_send_keyframe`); they are touched here only, in `share()`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiortc import RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streaming.broadcast import Unit

QUEUE_UNITS = {"video": 90, "audio": 150}  # about 3 s of each


class SharedPacker:
    """Stands in for a sender's encoder: the payloads were made once, by the broadcast."""

    def pack(self, unit: Unit) -> tuple[list[bytes], int]:
        return unit.payloads, unit.timestamp


class ViewerTrack(MediaStreamTrack):
    """One viewer's audio or video. Units offered before the sender reads (the viewer is not
    connected yet) are dropped, not kept; video starts at a keyframe, and starts over at
    the next one when the queue overflows."""

    def __init__(self, kind: str, request_keyframe: Callable[[], None]) -> None:
        super().__init__()
        self.kind = kind
        self._queue: asyncio.Queue[Unit] = asyncio.Queue(QUEUE_UNITS[kind])
        self._request_keyframe = request_keyframe
        self.started = False
        self._need_keyframe = kind == "video"
        self.first_unit_keyframe: bool | None = None
        self.delivered = 0
        self.dropped = 0
        self.full_since: float | None = None

    def offer(self, unit: Unit) -> None:
        if unit.kind != self.kind or not self.started or self.readyState != "live":
            return
        if self._need_keyframe:
            if not unit.keyframe:
                self.dropped += 1
                return
            self._need_keyframe = False
        try:
            self._queue.put_nowait(unit)
            self.full_since = None
        except asyncio.QueueFull:
            # Too slow to take what it is sent: drop the backlog, resume at a keyframe.
            self.dropped += self._queue.qsize() + 1
            while not self._queue.empty():
                self._queue.get_nowait()
            if self.full_since is None:
                self.full_since = time.monotonic()
            if self.kind == "video":
                self._need_keyframe = True
                self._request_keyframe()

    async def recv(self) -> Unit:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        if not self.started:
            self.started = True  # the sender reads: the viewer is connected
            if self.kind == "video":
                self._request_keyframe()
        unit = await self._queue.get()
        if self.first_unit_keyframe is None:
            self.first_unit_keyframe = unit.keyframe
        self.delivered += 1
        return unit


def share(sender: RTCRtpSender, request_keyframe: Callable[[], None]) -> None:
    """Make `sender` packetize nothing itself and route keyframe requests to the feed."""
    sender._RTCRtpSender__encoder = SharedPacker()  # type: ignore[attr-defined]
    sender._send_keyframe = request_keyframe  # type: ignore[method-assign]
