"""The one encoder of a feed: it spends the bitrate it is given on every frame, and the test
pattern's burnt-in clock survives it (the HLS benchmark reads latency off the picture)."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from streaming.broadcast import NOMINAL_FPS, VIDEO_CLOCK, Broadcast, Unit, VideoEncoder
from streaming.clients import _PacketCounter
from streaming.hls import Part, Segment, Segmenter, mux_ts
from streaming.testsrc import CLOCK_CELL, draw_text, picture_clock


def test_the_encoder_spends_its_bitrate_and_the_clock_survives_it() -> None:
    source = av.open(f"testsrc2=size=640x360:rate={NOMINAL_FPS}", format="lavfi")
    frames = source.decode(video=0)
    encoder = VideoEncoder(bitrate=1_000_000, max_height=720)
    packets = []
    for n in range(60):
        frame = next(frames)
        draw_text(frame, f"10:20:{30 + n // 30:02d}.{(n % 30) // 3}", cell=CLOCK_CELL)
        frame.pts, frame.time_base = n * VIDEO_CLOCK // NOMINAL_FPS, Fraction(1, VIDEO_CLOCK)
        packets += [unit.packet for unit in encoder.encode(frame, n == 0)]
    source.close()
    # Two seconds at 1 Mbit/s: about 250 KB, not a keyframe and 23-byte skips.
    total = sum(p.size for p in packets)
    assert 150_000 < total < 400_000, total
    assert min(p.size for p in packets[1:]) > 500
    copies = []
    for p in packets:
        copy = av.Packet(bytes(p))
        copy.pts = copy.dts = p.pts
        copy.time_base = Fraction(1, VIDEO_CLOCK)
        copy.is_keyframe = bool(p.is_keyframe)
        copies.append(copy)
    with av.open(io.BytesIO(mux_ts(copies, [], (640, 360), None)), "r") as container:
        read = [picture_clock(f) for f in container.decode(video=0)]
    expected = [10 * 3600 + 20 * 60 + 30 + n // 30 + ((n % 30) // 3) / 10 for n in range(60)]
    assert sum(r == e for r, e in zip(read, expected, strict=True)) >= 55, read


async def test_a_keyframe_a_little_early_by_media_time_still_ends_the_segment() -> None:
    """The encoder's keyframes come on its own clock; under load one lands a frame or two
    early by the frames' timestamps. The segment ends there, not a whole interval later."""
    source = av.open(f"testsrc2=size=320x180:rate={NOMINAL_FPS}", format="lavfi")
    frames = source.decode(video=0)
    encoder = VideoEncoder(bitrate=300_000, max_height=180)
    keyframes = {0, 58, 118, 176}  # 1.93 s, 2.0 s and 1.93 s apart
    segments: list[Segment] = []

    async def keep(segment: Segment) -> None:
        segments.append(segment)

    async def ignore(part: Part) -> None:
        pass

    segmenter = Segmenter(
        "f", target=2.0, part_target=0.5, size=lambda: (320, 180), on_segment=keep, on_part=ignore
    )
    for n in range(200):
        frame = next(frames)
        frame.pts, frame.time_base = n * VIDEO_CLOCK // NOMINAL_FPS, Fraction(1, VIDEO_CLOCK)
        for unit in encoder.encode(frame, n in keyframes):
            segmenter.offer(unit)
    source.close()
    await segmenter.finish()
    durations = [round(s.duration, 2) for s in segments]
    assert durations[:3] == [1.93, 2.0, 1.93], durations


STAP_SPS_PPS = bytes([0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xCE])  # STAP-A: SPS, PPS
IDR_FIRST, IDR_LAST = bytes([0x7C, 0x85, 1]), bytes([0x7C, 0x45, 2])  # FU-A of an IDR slice
P_FIRST, P_LAST, P_WHOLE = bytes([0x5C, 0x81, 1]), bytes([0x5C, 0x41, 2]), bytes([0x41, 1])


async def feed(counter: _PacketCounter, packets: list[tuple[bytes, bool, bool]], seq: int = 0) -> None:
    """(payload, marker, lost) in sending order."""
    for n, (payload, marker, lost) in enumerate(packets):
        if not lost:
            packet = RtpPacket(
                payload_type=102, sequence_number=(seq + n) & 0xFFFF, marker=marker, payload=payload
            )
            await counter.handle(packet, 0)


async def test_the_benchmark_viewer_counts_only_frames_that_arrive_whole() -> None:
    h264 = {102: RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)}
    keyframe = [(STAP_SPS_PPS, False, False), (IDR_FIRST, False, False), (IDR_LAST, True, False)]
    counter = _PacketCounter(h264)
    await feed(
        counter,
        [
            *keyframe,
            (P_WHOLE, True, False),
            (P_FIRST, False, True),  # lost: this frame is not whole
            (P_LAST, True, False),
            (P_WHOLE, True, False),
        ],
        seq=65533,  # across the sequence number's wrap
    )
    assert counter.frames == 3 and counter.first_keyframe is True

    late = _PacketCounter(h264)  # joins in the middle of a frame, then gets P-frames only
    await feed(late, [(P_LAST, True, False), (P_WHOLE, True, False), *keyframe])
    assert late.frames == 2 and late.first_keyframe is False

    other = _PacketCounter({})  # a payload type it was not given (RTX, audio) counts nothing
    await feed(other, keyframe)
    assert other.frames == 0


def test_a_sink_that_fails_is_dropped_and_the_others_go_on(caplog: pytest.LogCaptureFixture) -> None:
    """Each viewer sends from the broadcast's own call: one that raises must not stop the
    feed's encoding for everyone (the video loop ends on an exception it does not catch)."""

    class Keeper:
        def __init__(self) -> None:
            self.units: list[Unit] = []

        def offer(self, unit: Unit) -> None:
            self.units.append(unit)

    class Broken:
        def offer(self, unit: Unit) -> None:
            raise ValueError("a viewer's socket went wrong")

    broadcast = Broadcast("f", bitrate=300_000, max_height=180, keyframe_interval=2.0, keyframe_debounce=0.5)
    before, broken, after = Keeper(), Broken(), Keeper()
    for sink in (before, broken, after):
        broadcast.add(sink)
    source = av.open(f"testsrc2=size=320x180:rate={NOMINAL_FPS}", format="lavfi")
    frames = source.decode(video=0)
    for n in range(10):
        frame = next(frames)
        frame.pts, frame.time_base = n * VIDEO_CLOCK // NOMINAL_FPS, Fraction(1, VIDEO_CLOCK)
        broadcast._offer(broadcast.video.encode(frame, n == 0))
    source.close()
    assert len(before.units) == len(after.units) == broadcast.units_out > 0
    assert broken not in broadcast.sinks
    assert "a sink failed" in caplog.text and "a viewer's socket went wrong" in caplog.text
