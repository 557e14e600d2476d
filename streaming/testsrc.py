"""The test source: a moving picture with a burnt-in wall clock and a 440 Hz tone, paced in
real time, published through a real WHIP client (aiortc). The demo, the tests and the
benchmarks publish with it."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from fractions import Fraction

import aiohttp
import av
from aiortc.mediastreams import MediaStreamTrack

from streaming.broadcast import AUDIO_CLOCK, OPUS_FRAME, VIDEO_CLOCK
from streaming.clients import WhipPublisher

CLOCK_CELL = 10  # pixels per glyph cell: large enough to read back after compression

# 3×5 bitmaps of the clock's characters, one string of 15 cells each.
_GLYPHS = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001001001001",
    "8": "111101111101111",
    "9": "111101111001111",
    ":": "000010000010000",
    ".": "000000000000010",
}


def draw_text(frame: av.VideoFrame, text: str, *, x: int = 8, y: int = 8, cell: int = 6) -> None:
    """Burn `text` (digits, ':' and '.') into the luma plane: white blocks on a black box."""
    plane = frame.planes[0]
    stride = plane.line_size
    buf = bytearray(bytes(plane))
    width = min(len(text) * 4 * cell + cell, frame.width - x)
    for row in range(y, min(y + 7 * cell, frame.height)):
        buf[row * stride + x : row * stride + x + width] = b"\x10" * width
    for i, char in enumerate(text):
        glyph = _GLYPHS.get(char)
        if glyph is None:
            continue
        for n, on in enumerate(glyph):
            if on != "1":
                continue
            left = x + cell + (i * 4 + n % 3) * cell
            top = y + cell + (n // 3) * cell
            if left + cell > frame.width:
                continue
            for row in range(top, min(top + cell, frame.height)):
                buf[row * stride + left : row * stride + left + cell] = b"\xeb" * cell
    plane.update(bytes(buf))


def read_digits(
    frame: av.VideoFrame, positions: tuple[int, ...], *, x: int = 8, y: int = 8, cell: int = 6
) -> str | None:
    """Reads back the digits `draw_text` burnt in at `positions` (after encoding and
    decoding). Compression blurs small glyphs, so no cell is judged alone: each digit's
    3×5 pattern is matched against the luma at the cells' centres (bright where the digit
    has a cell, dark elsewhere), and the best digit must beat the next by a clear margin.
    None where a position cannot be read surely."""
    plane = frame.planes[0]
    stride, luma = plane.line_size, bytes(plane)
    digits = [(char, bits) for char, bits in _GLYPHS.items() if char.isdigit()]
    out = []
    for i in positions:
        values = []
        for n in range(15):
            left = x + cell + (i * 4 + n % 3) * cell + cell // 2
            top = y + cell + (n // 3) * cell + cell // 2
            if left >= frame.width or top >= frame.height:
                return None
            values.append(luma[top * stride + left])
        contrast = max(values) - min(values)
        middle = (max(values) + min(values)) / 2
        if contrast < 60:
            return None  # no glyph here (or washed out)
        scores = sorted(
            (sum((v - middle) * (1 if b == "1" else -1) for v, b in zip(values, bits, strict=True)), char)
            for char, bits in digits
        )
        (second, _), (best, char) = scores[-2], scores[-1]
        if best - second < 0.25 * contrast:  # the cells that tell them apart are not clear
            return None
        out.append(char)
    return "".join(out)


def picture_clock(frame: av.VideoFrame) -> float | None:
    """The wall clock `PatternVideo` burnt into a frame (HH:MM:SS.t), as seconds since local
    midnight; None when it cannot be read."""
    text = read_digits(frame, (0, 1, 3, 4, 6, 7, 9), cell=CLOCK_CELL)
    if text is None:
        return None
    hours, minutes, seconds = int(text[0:2]), int(text[2:4]), int(text[4:6]) + int(text[6]) / 10
    if hours > 23 or minutes > 59 or seconds >= 60:
        return None
    return hours * 3600 + minutes * 60 + seconds


class PatternVideo(MediaStreamTrack):
    kind = "video"

    def __init__(self, width: int = 640, height: int = 360, fps: int = 30) -> None:
        super().__init__()
        self.fps = fps
        self._source = av.open(f"testsrc2=size={width}x{height}:rate={fps}", format="lavfi")
        self._frames = self._source.decode(video=0)
        self._start: float | None = None
        self.sent = 0

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self.sent / self.fps - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = next(self._frames)
        draw_text(frame, datetime.now().strftime("%H:%M:%S.%f")[:10], cell=CLOCK_CELL)
        frame.pts = self.sent * VIDEO_CLOCK // self.fps
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        self.sent += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self._source.close()


class Tone(MediaStreamTrack):
    kind = "audio"

    def __init__(self, frequency: int = 440) -> None:
        super().__init__()
        self._source = av.open(
            f"sine=frequency={frequency}:sample_rate={AUDIO_CLOCK}:samples_per_frame={OPUS_FRAME}",
            format="lavfi",
        )
        self._frames = self._source.decode(audio=0)
        self._start: float | None = None
        self.sent = 0

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self.sent * OPUS_FRAME / AUDIO_CLOCK - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = next(self._frames)
        frame.pts = self.sent * OPUS_FRAME
        frame.time_base = Fraction(1, AUDIO_CLOCK)
        self.sent += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self._source.close()


async def publish_test_pattern(
    url: str, key: str, *, seconds: float | None = None, width: int = 640, height: int = 360, fps: int = 30
) -> int:
    """Publish until `seconds` pass (or forever); returns the number of video frames sent."""
    video = PatternVideo(width, height, fps)
    publisher = WhipPublisher(url, key, [video, Tone()])
    async with aiohttp.ClientSession() as http:
        await publisher.start(http)
        try:
            if seconds is None:
                await asyncio.Event().wait()
            else:
                await asyncio.sleep(seconds)
        finally:
            await publisher.stop(http)
    return video.sent
