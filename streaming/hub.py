"""The video side of one node: the feeds it ingests (WHIP) and the viewers it serves (WHEP).

A feed is ingested on one node, its owner, registered in Redis under `{prefix}feed:{id}`
with a lease the owner renews; a WHEP request on another node is sent there with a 307.
Every node sweeps the ledger for feeds recorded live whose registration has lapsed (the
owner died) and ends them, so viewers' pages learn of it from the session's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidStateError, OperationError
from redis.asyncio import Redis

from config.keys import EventSink
from config.metrics import Metrics
from config.settings import Settings
from recorder import feeds as ledger
from streaming import hls, relay, rtc, upstream
from streaming.broadcast import Broadcast
from streaming.errors import BadOffer, FeedBusy, FeedNotLive, NodeFull, PublicOnHls

log = logging.getLogger("tribune.streaming")

_RENEW = """if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end"""
_RELEASE = """if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1]) else return 0 end"""
STALLED_SECONDS = 5.0


def new_resource_id() -> str:
    return secrets.token_urlsafe(16)


@dataclass(eq=False)
class Ingest:
    feed_id: str
    session_id: str
    resource: str
    pc: RTCPeerConnection
    broadcast: Broadcast
    claim: str  # the value of our Redis registration
    segmenter: hls.Segmenter | None = None
    output: hls.Output | None = None
    recording: hls.Recording | None = None
    delay: float = 0.0
    live: bool = False
    ended: bool = False
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # connected, or gone


@dataclass(eq=False)
class RelayRun:
    """A feed pulled from its upstream HLS URL by this node."""

    feed_id: str
    session_id: str
    claim: str
    relay: upstream.Relay
    output: hls.Output
    recording: hls.Recording
    task: asyncio.Task[None] | None = None
    stopped: bool = False


@dataclass(eq=False)
class Viewer:
    feed_id: str
    resource: str
    rep: str
    pc: RTCPeerConnection
    staff: bool = False
    tracks: list[relay.ViewerStream] = field(default_factory=list)
    created: float = field(default_factory=time.monotonic)
    closed: bool = False
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # connected, or gone


class Streaming:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.node = settings.node_id
        self.ingests: dict[str, Ingest] = {}  # by feed id
        self.viewers: dict[str, Viewer] = {}  # by resource id
        self._pool: asyncpg.Pool | None = None
        self._redis: Redis | None = None
        self._sink: EventSink | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self.bus: hls.SegmentBus | None = None
        self.recordings = settings.data_dir / "recordings"
        self.relays: dict[str, RelayRun] = {}  # by feed id
        self.resolve: upstream.Resolve = upstream.system_resolve

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "streaming is not started"
        return self._pool

    @property
    def redis(self) -> Redis:
        assert self._redis is not None, "streaming is not started"
        return self._redis

    async def start(self, pool: asyncpg.Pool, redis: Redis, sink: EventSink | None) -> None:
        self._pool, self._redis, self._sink = pool, redis, sink
        rtc.limit_host_addresses(self.settings.webrtc_host_addresses)
        s = self.settings
        self.bus = hls.SegmentBus(redis, s.redis_prefix, window=s.hls_window, ttl=s.hls_ttl)
        pruned = await asyncio.to_thread(hls.prune_recordings, self.recordings, s.recording_retention_days)
        if pruned:
            log.info("removed %d recordings older than %s days", pruned, s.recording_retention_days)
        for session_id, appended in await ledger.end_all_of(pool, self.node, "node_restarted"):
            await self.committed(session_id, appended)
        self._loops = [
            asyncio.create_task(self._renew_loop(), name="feed leases"),
            asyncio.create_task(self._sweep_loop(), name="feed sweeper"),
            asyncio.create_task(self._cut_loop(), name="kill switches"),
            asyncio.create_task(self._relay_loop(), name="upstream relays"),
        ]

    async def stop(self) -> None:
        for task in self._loops:
            task.cancel()
        for viewer in tuple(self.viewers.values()):
            await self.close_viewer(viewer)
        for ingest in tuple(self.ingests.values()):
            await self.end_ingest(ingest, "node_stopped")
        for run in tuple(self.relays.values()):
            await self.stop_relay(run, "node_stopped")
        if self.bus is not None:
            await self.bus.close()
        for task in tuple(self._tasks):
            task.cancel()
        for task in (*self._loops, *self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def committed(self, session_id: str, appended: Sequence[Any]) -> None:
        """Events written by the video side reach the live channel (pages switch at once)."""
        if self._sink is not None and appended:
            await self._sink.committed(session_id, appended)

    def _key(self, feed_id: str) -> str:
        return f"{self.settings.redis_prefix}feed:{feed_id}"

    def _lease_ms(self) -> int:
        return int(self.settings.feed_lease * 1000)

    async def owner(self, feed_id: str) -> dict[str, str] | None:
        raw = await self.redis.get(self._key(feed_id))
        if raw is None:
            return None
        value: dict[str, str] = json.loads(raw)
        return value

    # --- ingest (WHIP) -----------------------------------------------------------------------

    async def publish(self, feed: asyncpg.Record, offer: str) -> tuple[Ingest, str]:
        """Answer a publisher's offer; the feed is claimed for this node first, so a second
        publisher gets FeedBusy while the first is live."""
        feed_id = feed["id"]
        if feed_id in self.ingests:
            raise FeedBusy(f"feed {feed_id!r} is live from this node; one publisher per feed")
        resource = new_resource_id()
        claim = json.dumps({"node": self.node, "url": self.settings.base_url, "resource": resource})
        if not await self.redis.set(self._key(feed_id), claim, nx=True, px=self._lease_ms()):
            holder = await self.owner(feed_id)
            where = holder["node"] if holder else "another node"
            raise FeedBusy(f"feed {feed_id!r} is live from {where}; one publisher per feed")
        pc = RTCPeerConnection(rtc.configuration(self.settings))
        broadcast = Broadcast(
            feed_id,
            bitrate=self.settings.video_bitrate,
            max_height=self.settings.video_max_height,
            keyframe_interval=self.settings.keyframe_interval,
            keyframe_debounce=self.settings.keyframe_debounce,
            on_frame=self.metrics.feed_frames.labels(feed_id).inc,
            on_keyframe=lambda cause: self.metrics.keyframes.labels(cause).inc(),
        )
        ingest = Ingest(feed_id, feed["session_id"], resource, pc, broadcast, claim)
        ingest.delay = float(feed["delay_seconds"])
        self._package(ingest, cut=bool(feed["cut"]))
        self.ingests[feed_id] = ingest
        self.metrics.feeds_live.set(len(self.ingests))
        try:
            answer = await self._answer_publisher(ingest, offer)
        except BaseException:
            await self.end_ingest(ingest, "refused")
            raise
        self._spawn(self._handshake_deadline(ingest), f"whip {feed_id} handshake")
        return ingest, answer

    def _public_output(self, feed_id: str, *, delay: float, cut: bool) -> tuple[hls.Output, hls.Recording]:
        """What the public gets of a feed (delay, kill switch): parts and segments to the bus,
        segments to a new recording. Started."""
        recording = hls.Recording(self.recordings, feed_id)
        bus = self.bus
        target, part_target = self.settings.hls_segment_seconds, self.settings.hls_part_seconds

        async def emit(segment: hls.Segment) -> None:
            await recording.add(segment)
            if bus is not None:
                await bus.publish(segment, target)

        async def emit_part(part: hls.Part) -> None:
            if bus is not None:
                await bus.publish_part(part, target, part_target)

        output = hls.Output(feed_id, delay=delay, emit=emit, emit_part=emit_part)
        output.set_cut(cut)
        output.start()
        return output, recording

    def _package(self, ingest: Ingest, *, cut: bool) -> None:
        """HLS for everyone else: the one encoding cut into parts and segments, through the
        feed's public output."""
        output, recording = self._public_output(ingest.feed_id, delay=ingest.delay, cut=cut)

        def size() -> tuple[int, int]:
            context = ingest.broadcast.video.context
            return (context.width, context.height) if context is not None else (0, 0)

        segmenter = hls.Segmenter(
            ingest.feed_id,
            target=self.settings.hls_segment_seconds,
            part_target=self.settings.hls_part_seconds,
            size=size,
            on_segment=output.add,
            on_part=output.add_part,
        )
        ingest.broadcast.add(segmenter)
        ingest.broadcast.audio_listeners.add(segmenter.audio_frame)
        ingest.segmenter, ingest.output, ingest.recording = segmenter, output, recording

    async def _finish_packaging(self, ingest: Ingest) -> None:
        if ingest.segmenter is None or ingest.output is None:
            return
        try:
            await ingest.segmenter.finish()
            await ingest.output.close()
            if ingest.recording is not None:
                await ingest.recording.close()
            if self.bus is not None:
                await self.bus.end(ingest.feed_id)
        except Exception as exc:
            log.warning("feed %s: HLS not finished cleanly: %r", ingest.feed_id, exc)

    async def apply_cut(self, feed_id: str, cut: bool) -> None:
        """The kill switch on this node: the public output shows the slate (or the picture
        again), and viewers who are not staff leave WebRTC for the HLS output."""
        if (run := self.relays.get(feed_id)) is not None:
            run.output.set_cut(cut)
        ingest = self.ingests.get(feed_id)
        if ingest is None or ingest.output is None or ingest.output.cut == cut:
            return
        ingest.output.set_cut(cut)
        log.warning("feed %s: public output %s", feed_id, "cut to the slate" if cut else "restored")
        if cut:
            for viewer in [v for v in self.viewers.values() if v.feed_id == feed_id and not v.staff]:
                await self.close_viewer(viewer)

    # --- upstream relays ----------------------------------------------------------------------

    async def _relay_loop(self) -> None:
        """Relayed feeds are pulled while their session is live, each by the node that claims
        it first; the claim is renewed like a WHIP publisher's."""
        while True:
            await asyncio.sleep(1.0)
            try:
                rows = await self.pool.fetch(
                    """SELECT f.id, f.session_id, f.upstream_url, f.delay_seconds, f.cut
                         FROM feeds f JOIN sessions s ON s.id = f.session_id
                        WHERE f.source = 'hls_relay' AND s.state = 'live'"""
                )
                wanted = {row["id"]: row for row in rows}
                for feed_id, run in tuple(self.relays.items()):
                    if feed_id not in wanted:
                        await self.stop_relay(run, "session_ended")
                for feed_id, row in wanted.items():
                    if feed_id not in self.relays and feed_id not in self.ingests:
                        await self._start_relay(row)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("upstream relays not checked: %r", exc)

    async def _start_relay(self, row: asyncpg.Record) -> None:
        feed_id = row["id"]
        claim = json.dumps({"node": self.node, "url": self.settings.base_url, "resource": "relay"})
        if not await self.redis.set(self._key(feed_id), claim, nx=True, px=self._lease_ms()):
            return  # another node pulls it
        output, recording = self._public_output(
            feed_id, delay=float(row["delay_seconds"]), cut=bool(row["cut"])
        )

        async def on_state(state: str) -> None:
            if state == "live":
                await self.committed(*await ledger.mark_live(self.pool, feed_id, self.node))
            elif (stalled := await ledger.mark_stalled(self.pool, feed_id, self.node)) is not None:
                await self.committed(*stalled)

        policy = upstream.Policy.parse(self.settings.upstream_allowlist)
        pull = upstream.Relay(
            feed_id, row["upstream_url"], policy, emit=output.add, on_state=on_state, resolve=self.resolve
        )
        run = RelayRun(feed_id, row["session_id"], claim, pull, output, recording)
        run.task = asyncio.create_task(pull.run(), name=f"relay {feed_id}")
        self.relays[feed_id] = run
        log.info("feed %s: relaying %s", feed_id, row["upstream_url"])

    async def stop_relay(self, run: RelayRun, reason: str) -> None:
        """Stop pulling; the feed stays listed here until its output, claim and ledger entry
        are closed, as an ingest does (end_ingest)."""
        if run.stopped:
            return
        run.stopped = True
        if run.task is not None:
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run.task
        try:
            await run.output.close()
            await run.recording.close()
            if self.bus is not None:
                await self.bus.end(run.feed_id)
            await self.redis.eval(_RELEASE, 1, self._key(run.feed_id), run.claim)
            if ended := await ledger.mark_ended(self.pool, run.feed_id, self.node, reason):
                await self.committed(*ended)
        except Exception as exc:
            log.warning("feed %s: relay not stopped cleanly: %r", run.feed_id, exc)
        finally:
            self.relays.pop(run.feed_id, None)

    async def _cut_loop(self) -> None:
        """Picks up kill switches pressed on other nodes (the ledger holds the state)."""
        while True:
            await asyncio.sleep(0.5)
            if not self.ingests:
                continue
            try:
                rows = await self.pool.fetch(
                    "SELECT id, cut FROM feeds WHERE id = ANY($1)", list(self.ingests)
                )
            except Exception as exc:
                log.warning("kill switches not read: %r", exc)
                continue
            for row in rows:
                await self.apply_cut(row["id"], row["cut"])

    async def _answer_publisher(self, ingest: Ingest, offer: str) -> str:
        pc = ingest.pc

        @pc.on("track")
        def on_track(track: Any) -> None:
            ingest.broadcast.consume(track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected" and not ingest.live and not ingest.ended:
                ingest.live = True
                ingest.settled.set()
                self._spawn(self._went_live(ingest), f"whip {ingest.feed_id} live")
            elif pc.connectionState in ("failed", "closed"):
                self._spawn(self.end_ingest(ingest, "disconnected"), f"whip {ingest.feed_id} end")

        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        except (ValueError, OperationError, InvalidStateError) as exc:
            raise BadOffer(f"the offer cannot be answered: {exc}") from None
        kinds = {t.kind for t in pc.getTransceivers()}
        if "video" not in kinds:
            raise BadOffer("the offer sends no video; publish one video track (and optionally audio)")
        for transceiver in pc.getTransceivers():
            transceiver.direction = "recvonly"
        await pc.setLocalDescription(await pc.createAnswer())
        return str(pc.localDescription.sdp)

    async def _went_live(self, ingest: Ingest) -> None:
        session_id, appended = await ledger.mark_live(self.pool, ingest.feed_id, self.node)
        await self.committed(session_id, appended)
        log.info("feed %s is live", ingest.feed_id)
        self._spawn(self._watch_encoder(ingest), f"whip {ingest.feed_id} encoder")

    async def _watch_encoder(self, ingest: Ingest) -> None:
        await ingest.broadcast.ended.wait()
        await self.end_ingest(ingest, "publisher_stopped")

    async def _handshake_deadline(self, ingest: Ingest | Viewer) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ingest.settled.wait(), self.settings.webrtc_handshake_timeout)
        if ingest.pc.connectionState != "connected":
            if isinstance(ingest, Ingest):
                await self.end_ingest(ingest, "handshake_timeout")
            else:
                await self.close_viewer(ingest)

    async def end_ingest(self, ingest: Ingest, reason: str) -> None:
        """Stops the feed here: peers, viewers, its HLS output (the last segment, the end of
        the playlist and the recording), its registration and the ledger. The ingest stays
        listed (refusing viewers) until all of that is done."""
        if ingest.ended:
            return
        ingest.ended = True
        ingest.settled.set()
        try:
            await ingest.broadcast.stop()
            await ingest.pc.close()
            for viewer in [v for v in self.viewers.values() if v.feed_id == ingest.feed_id]:
                await self.close_viewer(viewer)
            await self._finish_packaging(ingest)
            try:
                await self.redis.eval(_RELEASE, 1, self._key(ingest.feed_id), ingest.claim)
                if ingest.live and (
                    ended := await ledger.mark_ended(self.pool, ingest.feed_id, self.node, reason)
                ):
                    await self.committed(*ended)
            except Exception as exc:  # the sweeper ends it once the lease lapses
                log.warning(
                    "feed %s: could not record its end now (%r); the sweeper will", ingest.feed_id, exc
                )
        finally:
            if self.ingests.get(ingest.feed_id) is ingest:
                del self.ingests[ingest.feed_id]
                self.metrics.feeds_live.set(len(self.ingests))
        log.info("feed %s ended: %s", ingest.feed_id, reason)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.feed_lease / 3)
            for ingest in tuple(self.ingests.values()):
                if not ingest.ended and await self._renew(ingest.feed_id, ingest.claim) is False:
                    await self.end_ingest(ingest, "registration_lost")
            for run in tuple(self.relays.values()):
                if not run.stopped and await self._renew(run.feed_id, run.claim) is False:
                    await self.stop_relay(run, "registration_lost")
            self._close_stalled()

    async def _renew(self, feed_id: str, claim: str) -> bool | None:
        """Extends our registration of the feed: False if it is no longer ours, None if Redis
        could not be asked (the next round tries again)."""
        try:
            kept = await self.redis.eval(_RENEW, 1, self._key(feed_id), claim, str(self._lease_ms()))
        except Exception as exc:
            log.warning("feed %s: lease not renewed: %r", feed_id, exc)
            return None
        if not kept:
            log.warning("feed %s: registration lost; ending it here", feed_id)
        return bool(kept)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.feed_lease)
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("feed sweep failed: %r", exc)

    async def sweep(self) -> None:
        """End feeds the ledger says are live whose owner no longer holds them."""
        rows = await self.pool.fetch("SELECT id, node FROM feeds WHERE state IN ('live', 'stalled')")
        for row in rows:
            if row["node"] == self.node and (row["id"] in self.ingests or row["id"] in self.relays):
                continue
            if await self.redis.exists(self._key(row["id"])):
                continue
            if ended := await ledger.mark_ended(self.pool, row["id"], row["node"], "owner_lost"):
                log.warning("feed %s: its node %s is gone; marked ended", row["id"], row["node"])
                await self.committed(*ended)

    # --- viewers (WHEP) ----------------------------------------------------------------------

    def live_here(self, feed_id: str) -> Ingest | None:
        ingest = self.ingests.get(feed_id)
        return ingest if ingest is not None and ingest.live and not ingest.ended else None

    async def view(
        self, feed_id: str, rep: str, offer: str, has_audio: bool, *, staff: bool = False
    ) -> tuple[Viewer, str]:
        ingest = self.live_here(feed_id)
        if ingest is None:
            raise FeedNotLive(f"feed {feed_id!r} is not live on this node")
        if not staff and (ingest.delay or (ingest.output is not None and ingest.output.cut)):
            raise PublicOnHls(
                f"feed {feed_id!r} reaches the public {'cut' if ingest.delay == 0 else 'delayed'}: "
                "play its HLS output (the hls URL of GET /api/feeds/{id})"
            )
        if len(self.viewers) >= self.settings.whep_max_viewers:
            raise NodeFull("this node serves as many viewers as it may; try again shortly")
        broadcast = ingest.broadcast
        pc = RTCPeerConnection(rtc.configuration(self.settings))
        viewer = Viewer(feed_id, new_resource_id(), rep, pc, staff=staff)
        self.viewers[viewer.resource] = viewer
        self.metrics.whep_viewers.set(len(self.viewers))
        try:
            for kind in ("video", "audio") if has_audio else ("video",):
                transceiver = pc.addTransceiver(kind, direction="sendonly")
                rtc.prefer_sent_codecs(transceiver)
                viewer.tracks.append(relay.ViewerStream(transceiver.sender, broadcast.request_keyframe))
            try:
                await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            except OperationError:
                raise BadOffer(
                    "the offer has no H.264 (packetization-mode=1) video or no Opus audio; "
                    "in a browser, call transceiver.setCodecPreferences() with the H.264 codecs"
                ) from None
            except (ValueError, InvalidStateError) as exc:
                raise BadOffer(f"the offer cannot be answered: {exc}") from None
            await pc.setLocalDescription(await pc.createAnswer())
        except BaseException:
            await self.close_viewer(viewer)
            raise

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected":
                viewer.settled.set()
            elif pc.connectionState in ("failed", "closed"):
                await self.close_viewer(viewer)

        for track in viewer.tracks:
            broadcast.add(track)
        self._spawn(self._handshake_deadline(viewer), f"whep {viewer.resource} handshake")
        return viewer, str(pc.localDescription.sdp)

    async def close_viewer(self, viewer: Viewer) -> None:
        if viewer.closed:
            return
        viewer.closed = True
        viewer.settled.set()
        self.viewers.pop(viewer.resource, None)
        self.metrics.whep_viewers.set(len(self.viewers))
        if (ingest := self.ingests.get(viewer.feed_id)) is not None:
            for track in viewer.tracks:
                ingest.broadcast.remove(track)
        for track in viewer.tracks:
            track.stop()
        await viewer.pc.close()

    def _close_stalled(self) -> None:
        now = time.monotonic()
        for viewer in tuple(self.viewers.values()):
            if any(t.full_since is not None and now - t.full_since > STALLED_SECONDS for t in viewer.tracks):
                log.info("viewer %s of feed %s is stalled; closing it", viewer.resource, viewer.feed_id)
                self._spawn(self.close_viewer(viewer), f"whep {viewer.resource} stalled")
