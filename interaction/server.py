"""The live channel (protocol v1, docs/protocol.md): Socket.IO with the msgpack parser.

Connect → `hello` → replay (events after `since`) or `snapshot` → live `events` batches.
Writes go to the ledger first; then this node's rooms are fed directly and the other
nodes are told through the bus. Rooms also catch up from the ledger on their own, so a
lost bus message or a Redis restart delays events but never loses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Annotated, Any

import asyncpg
import msgspec
import socketio
from aiohttp import web

from config import keys
from config.auth import AuthError, Role
from config.errors import TribuneError
from config.loop import STOP_SECONDS, stop_tasks
from config.web import UNAVAILABLE
from interaction import ballots, comments, polls, transport, words
from interaction.bus import Bus
from interaction.errors import InvalidMessage, NotPermitted, PollClosed, SlowDown
from interaction.fanout import Fanout
from interaction.presence import Presence
from interaction.ratelimit import TokenBucket
from interaction.rooms import Client, Room, Rooms, split_by_size
from interaction.tallies import Tallies
from recorder import attendance, sessions
from recorder import events as ledger_events
from recorder.errors import SessionNotFound

log = logging.getLogger("tribune.live")

Key = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class Since(msgspec.Struct, forbid_unknown_fields=True):
    epoch: Annotated[str, msgspec.Meta(max_length=64)]
    seq: Annotated[int, msgspec.Meta(ge=0)]


class AuthPayload(msgspec.Struct):
    token: Annotated[str, msgspec.Meta(max_length=8192)]
    session: Annotated[str, msgspec.Meta(max_length=64)]
    since: Since | None = None


class CommentSend(msgspec.Struct, forbid_unknown_fields=True):
    text: Annotated[str, msgspec.Meta(max_length=20_000)]
    key: Key


class Moderate(msgspec.Struct, forbid_unknown_fields=True):
    comment: Annotated[int, msgspec.Meta(ge=1)]
    action: comments.Action
    note: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class Resync(msgspec.Struct, forbid_unknown_fields=True):
    since: Since


class PollRef(msgspec.Struct, forbid_unknown_fields=True):
    poll: Annotated[int, msgspec.Meta(ge=1)]


class PollState(msgspec.Struct, forbid_unknown_fields=True):
    poll: Annotated[int, msgspec.Meta(ge=1)]
    state: Annotated[str, msgspec.Meta(max_length=16)]


class PollOnsite(msgspec.Struct, forbid_unknown_fields=True):
    poll: Annotated[int, msgspec.Meta(ge=1)]
    counts: dict[str, dict[str, Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]]]


def refuse(code: str, message: str) -> socketio.exceptions.ConnectionRefusedError:
    """The CONNECT_ERROR payload: `code` and `message` at the top (what Python clients see)
    and again under `data` (socket.io-client turns `message` into the Error and exposes
    only `data` beside it)."""
    exc = socketio.exceptions.ConnectionRefusedError(message)
    exc.error_args = {"code": code, "message": message, "data": {"code": code, "message": message}}
    return exc


def failure(exc: TribuneError) -> dict[str, Any]:
    return {"ok": False, "error": exc.payload()}


def sketch(value: Any, room: int = 500, depth: int = 8) -> str:
    """A repr of a client's payload cut to about `room` characters and `depth` levels, in
    time bounded by both (`repr` of a payload nested a thousand deep raises RecursionError)."""
    if isinstance(value, str | bytes):
        text = repr(value[:room])
    elif isinstance(value, dict | list | tuple):
        pairs = isinstance(value, dict)
        parts: list[str] = []
        used = 2
        for item in value.items() if isinstance(value, dict) else value:
            if used >= room or depth <= 0:
                parts.append("…")
                break
            left = room - used
            if pairs:
                parts.append(f"{sketch(item[0], left, depth - 1)}: {sketch(item[1], left, depth - 1)}")
            else:
                parts.append(sketch(item, left, depth - 1))
            used += len(parts[-1]) + 2
        ends = "{}" if pairs else "[]"
        text = ends[0] + ", ".join(parts) + ends[1]
    elif value is None or isinstance(value, int | float):
        text = repr(value)
    else:
        text = f"<{type(value).__name__}>"
    return text[:room]


class _Manager(socketio.AsyncManager):  # type: ignore[misc]
    """Calls back once a client is fully connected, i.e. after the CONNECT packet is queued,
    so the welcome always arrives after it."""

    def __init__(self, on_connected: Callable[[str], None]) -> None:
        super().__init__()
        self._on_connected = on_connected

    async def connect(self, sid: str, namespace: str) -> Any:
        result = await super().connect(sid, namespace)
        if namespace == "/":
            self._on_connected(sid)
        return result

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """The stock version copies and scans every Socket.IO room (one per client) on each
        disconnect: quadratic when thousands leave. Tribune keeps its own rooms, so a client
        is only in the namespace's room and its own: leave those, then tidy as it does."""
        rooms = self.rooms.get(namespace)
        if rooms is None:
            return
        for room in (None, sid):
            members = rooms.get(room)
            if members is not None and sid in members:
                self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            if sid in pending.get(namespace, ()):
                pending[namespace].remove(sid)
                if not pending[namespace]:
                    del pending[namespace]


class Live:
    """The live channel of one node. Built with the app (its routes must exist before the
    app starts); started once PostgreSQL and Redis are up."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.settings = settings = app[keys.SETTINGS]
        self.metrics = app[keys.METRICS]
        origins: list[str] | str | None = list(settings.allowed_origins) or None
        if settings.allowed_origins == ("*",):
            origins = "*"
        self.sio = transport.Server(
            cors_allowed_origins=origins,
            max_http_buffer_size=settings.max_frame_bytes,
            write_limit=settings.client_buffer_bytes,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            client_manager=_Manager(self._connected),
            logger=False,
            engineio_logger=False,
        )
        self.sio.attach(app)
        self.rooms = Rooms()
        self.metrics.rooms.set_function(lambda: len(self.rooms.by_session))
        self.words = words.WordList()
        self.local_bucket: dict[str, tuple[float, float]] = {}
        self.fanout = Fanout(
            self.sio,
            self.rooms,
            tick=settings.tick_interval,
            replay=self._schedule_replay,
            on_drop=self.metrics.slow_client_drops.inc,
            on_deliver=self.metrics.deliveries.inc,
            on_flush=self._flushed,
        )
        self.polls: dict[int, polls.Poll] = {}  # definitions (fixed once open), by id
        self._poll_loads: dict[int, asyncio.Future[polls.Poll]] = {}
        self._joining: dict[str, set[str]] = {}  # session → representatives whose interval opens next
        self._pending: dict[str, tuple[Client, Since | None, dict[str, Any]]] = {}
        self._fills: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._register()

    def _flushed(self, delay: float | None, took: float, frames: int) -> None:
        if delay is not None:
            self.metrics.fanout_delay.observe(delay)
        self.metrics.fanout_flush.observe(took)
        self.metrics.fanout_frames.inc(frames)

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        app, settings = self.app, self.settings
        self.pool: asyncpg.Pool = app[keys.DB]
        redis = app[keys.REDIS]
        self.bus = Bus(
            app[keys.SERVICE_URLS].redis_url,
            redis,
            prefix=settings.redis_prefix,
            node_id=settings.node_id,
            interval=settings.health_interval,
            timeout=settings.redis_timeout,
            on_failure=lambda kind: self.metrics.bus_publish_failures.labels(kind).inc(),
        )
        self.bucket = TokenBucket(
            redis, settings.redis_prefix, capacity=settings.comment_burst, interval=settings.comment_interval
        )
        self.presence = Presence(redis, self.rooms, self.fanout, settings)
        self.ballots = ballots.BallotBox(
            self.pool,
            max_batch=settings.vote_batch_max,
            linger=settings.vote_linger,
            on_batch=self.metrics.vote_batch.observe,
        )
        self.tallies = Tallies(
            redis,
            self.pool,
            self.rooms,
            self.fanout,
            prefix=settings.redis_prefix,
            interval=settings.tally_interval,
            node_id=settings.node_id,
        )
        self.words = await words.load(self.pool)
        self.bus.on("ev", self._on_bus_events)
        self.bus.on("q", self._on_bus_queue)
        self.bus.on("words", self._on_bus_words)
        self.bus.on("nudge", self._on_bus_nudge)
        self.bus.on_resubscribed(self._catch_up)
        self.bus.on_resubscribed(self._refresh_queues)
        await self.bus.start()
        app[keys.HEALTH].extra["pubsub"] = self.bus.problem
        self.fanout.start()
        self.ballots.start()
        self._spawn(self.tallies.run())
        self._spawn(self._catch_up_loop())
        self._spawn(self._attendance_loop())
        self._spawn(self.presence.run(self._expire_tokens))
        self._spawn(self.sio.run_pings())

    async def disconnect_all(self, app: web.Application | None = None) -> None:
        """On shutdown, before aiohttp waits for open connections: tell every client, then
        close the sockets (they reconnect to another node and resume from their seq)."""
        for sid in list(self.rooms.by_sid):
            with contextlib.suppress(Exception):
                await self.sio.disconnect(sid)
        await asyncio.sleep(0.1)  # let the DISCONNECT packets go out
        self.fanout.abort_all()

    async def stop(self) -> None:
        self.app[keys.HEALTH].extra.pop("pubsub", None)
        await self.disconnect_all()
        await stop_tasks(
            list(self._tasks) + list(self._fills.values()), timeout=STOP_SECONDS, what="live channel"
        )
        await self.ballots.stop()
        await self.fanout.stop()
        await self.bus.stop()
        try:
            async with asyncio.timeout(self.settings.database_timeout * 2):
                await attendance.close_owned(self.pool, self.settings.node_id)
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:  # the leases expire instead
            log.warning("closing attendance at shutdown failed: %r", exc)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- connecting ------------------------------------------------------------------

    def _register(self) -> None:
        self.sio.on("connect", self.on_connect)
        self.sio.on("disconnect", self.on_disconnect)
        self.sio.on("comment.send", self._handler(self.comment_send))
        self.sio.on("moderate", self._handler(self.moderate))
        self.sio.on("resync", self._handler(self.resync))
        self.sio.on("vote.cast", self._handler(self.vote_cast))
        self.sio.on("poll.state", self._handler(self.poll_state))
        self.sio.on("poll.onsite", self._handler(self.poll_onsite))
        self.sio.on("poll.missing", self._handler(self.poll_missing))
        self.sio.on("poll.nudge", self._handler(self.poll_nudge))
        self.sio.on("*", self.on_unknown)

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        try:
            payload = msgspec.convert(auth, AuthPayload)
        except msgspec.ValidationError as exc:
            raise refuse("unauthorized", f"send auth = {{token, session, since}}: {exc}") from None
        try:
            who = self.app[keys.VERIFIER].verify(payload.token)
            session = await sessions.get_for(self.pool, payload.session, who)
        except AuthError as exc:
            raise refuse(exc.code, exc.message) from None
        except SessionNotFound as exc:
            raise refuse("not_found", exc.message) from None
        except UNAVAILABLE:
            raise refuse("unavailable", "the node cannot reach its database; try again shortly") from None
        client = Client(
            sid=sid,
            eio_sid=self.sio.manager.eio_sid_from_sid(sid, "/"),
            who=who,
            tier=session["your_tier"],
            session_id=session["id"],
            staff=who.has(Role.MODERATOR, Role.HOST, Role.ADMIN),
            attends=who.has(Role.REPRESENTATIVE),
        )
        self._pending[sid] = (client, payload.since, session)

    def _connected(self, sid: str) -> None:
        if (pending := self._pending.pop(sid, None)) is not None:
            self._spawn(self._welcome(*pending))

    async def _welcome(self, client: Client, since: Since | None, session: dict[str, Any]) -> None:
        sid = client.sid
        try:
            sock = self.sio.eio.sockets.get(client.eio_sid)
            if not self.sio.manager.is_connected(sid, "/") or sock is None or sock.closed or sock.closing:
                return  # gone while connecting (no disconnect event follows then): never join
            self.fanout.send(
                client,
                "hello",
                {
                    "node": self.settings.node_id,
                    "session": session["id"],
                    "you": {
                        "rep": client.who.rep,
                        "name": client.who.name,
                        "roles": sorted(client.who.roles),
                        "tier": client.tier,
                    },
                    "epoch": session["epoch"],
                    "seq": session["seq"],
                    "limits": {"comment_max_chars": self.settings.comment_max_chars},
                },
            )
            room = self.rooms.join(
                client, epoch=session["epoch"], last_seq=session["seq"], state=session["state"]
            )
            if since is not None and since.epoch == session["epoch"] and since.seq <= session["seq"]:
                client.last_seq = await self._send_replay(client, room, since.seq)
            else:
                snap = await comments.snapshot(self.pool, client.session_id)
                snap["polls"] = await polls.snapshot(
                    self.pool, client.session_id, client.who.rep, staff=client.staff
                )
                self.fanout.send(client, "snapshot", snap)
                client.last_seq = int(snap["seq"])
            if sid not in self.rooms.by_sid:
                return
            if not room.polls_loaded:
                room.polls_loaded = True
                for row in await self.pool.fetch(
                    "SELECT id, live_results FROM polls WHERE session_id = $1 AND state = 'open'",
                    room.session_id,
                ):
                    room.open_polls.setdefault(row["id"], row["live_results"])
            # Ready before the queue is read: an update racing the read arrives after the full
            # list and is applied to it; one before the read is in it. (Not if it left while
            # the polls were read.)
            client.ready = sid in self.rooms.by_sid
            room.behind()
            if client.attends and room.state == "live":
                self._attend_soon(room, client.who.rep)
            if client.staff:
                queue = await comments.pending(self.pool, client.session_id)
                self.fanout.send(client, "queue", {"full": True, "pending": queue})
            self.fanout.send(client, "presence", {"online": self.presence.online(room)})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("welcome of %s failed: %r; disconnecting it to retry", sid, exc)
            await self.sio.disconnect(sid)

    async def _send_replay(self, client: Client, room: Room, after: int) -> int:
        """Send everything after `after` up to now through the ordered queue path."""
        while True:
            batch = room.after(after, self.settings.replay_limit)
            if batch is None:
                rows = await ledger_events.read_after(
                    self.pool, client.session_id, after, self.settings.replay_limit
                )
                batch = [e.wire() for e in rows]
            if not batch:
                return after
            for part in split_by_size(batch):
                # One part at a time: a client that does not read gets dropped, not buffered.
                if not await self.fanout.writable(client) or not self.fanout.send(client, "events", part):
                    return after
                after = int(part[-1]["seq"])

    def _schedule_replay(self, client: Client) -> None:
        async def replay() -> None:
            room = self.rooms.get(client.session_id)
            if room is None:
                return
            try:
                client.last_seq = await self._send_replay(client, room, client.last_seq)
                client.ready = client.sid in self.rooms.by_sid
                room.behind()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # it resumes from its seq on reconnect
                log.warning("replay to %s failed: %r; disconnecting it", client.sid, exc)
                await self.sio.disconnect(client.sid)

        self._spawn(replay())

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        self._pending.pop(sid, None)
        client = self.rooms.leave(sid)
        if client is None:
            return
        room = self.rooms.get(client.session_id)
        if client.attends and (room is None or client.who.rep not in room.attending):
            try:
                await attendance.release(self.pool, client.session_id, [client.who.rep])
            except UNAVAILABLE as exc:  # the lease runs out on its own
                log.warning("releasing attendance of %s failed: %r", client.who.rep, exc)
        if room is None:
            await self.presence.forget(client.session_id)

    def _attend_soon(self, room: Room, rep: str) -> None:
        """Open (or continue) a joining representative's interval within a moment: joins
        arriving together — everyone at the start of a session — share one write."""
        joining = self._joining.setdefault(room.session_id, set())
        joining.add(rep)
        if len(joining) == 1:

            async def flush() -> None:
                await asyncio.sleep(JOIN_BATCH_SECONDS)
                reps = sorted(self._joining.pop(room.session_id, ()))
                current = self.rooms.get(room.session_id)
                if current is not None and current.state == "live":
                    await self._attend(current, [r for r in reps if r in current.attending])

            self._spawn(flush())

    async def _attend(self, room: Room, reps: list[str]) -> None:
        if not reps:
            return
        try:
            await attendance.touch(
                self.pool,
                room.session_id,
                reps,
                node=self.settings.node_id,
                lease=self.settings.attendance_lease,
                grace=self.settings.attendance_grace,
            )
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:  # renewed on the next round
            log.warning("attendance in %s not recorded this round: %r", room.session_id, exc)

    async def _attendance_loop(self) -> None:
        """Renew the leases of everyone connected here, a few times per lease, a slice each
        second so the writes are spread out; close intervals nobody renewed."""
        slices = max(1, int(self.settings.attendance_lease / 3))
        tick = 0
        while True:
            await asyncio.sleep(self.settings.attendance_lease / 3 / slices)
            tick += 1
            try:
                for room in list(self.rooms.by_session.values()):
                    if room.state == "live":
                        reps = room.attendees()
                        await self._attend(room, reps[tick % slices :: slices])
                if tick % slices == 0:
                    await attendance.sweep(self.pool, grace=self.settings.attendance_grace)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("attendance round failed")

    # --- client events ---------------------------------------------------------------

    def _handler(
        self, fn: Callable[[Client, Any], Awaitable[dict[str, Any]]]
    ) -> Callable[[str, Any], Awaitable[dict[str, Any]]]:
        async def handle(sid: str, data: Any = None) -> dict[str, Any]:
            client = self.rooms.by_sid.get(sid)
            try:
                if client is None:
                    raise NotPermitted("not joined yet: wait for hello")
                if client.who.expires_at + self.settings.jwt_leeway < time.time():
                    raise AuthError("the token has expired; reconnect with a fresh one")
                return {"ok": True, **await fn(client, data)}
            except TribuneError as exc:
                return failure(exc)
            except UNAVAILABLE as exc:
                log.warning("live event failed, dependency unreachable: %r", exc)
                return {"ok": False, "error": {"code": "unavailable", "message": "try again shortly"}}
            except msgspec.ValidationError as exc:
                return failure(InvalidMessage(f"invalid payload: {exc}"))
            except Exception:  # the client still gets an answer; the node logs the bug
                log.exception("live event from %s failed", sid)
                return {"ok": False, "error": {"code": "internal", "message": "internal error; it is logged"}}

        return handle

    async def on_unknown(self, event: str, sid: str, data: Any = None) -> dict[str, Any]:
        return failure(InvalidMessage(f"unknown event {str(event)[:40]!r}"))

    async def comment_send(self, client: Client, data: Any) -> dict[str, Any]:
        message = msgspec.convert(data, CommentSend)
        # Cheap refusals first, so a malformed attempt does not spend a rate-limit token.
        comments.check_tier(client.tier)
        comments.check_text(message.text, self.settings.comment_max_chars)
        # One round trip: the session's state and whether this key was already sent (a retry
        # returns the first result without spending a rate-limit token).
        head = await self.pool.fetchrow(
            """SELECT state, moderation,
                      EXISTS (SELECT 1 FROM comments
                               WHERE session_id = $1 AND rep_id = $2 AND client_key = $3) AS repeated
                 FROM sessions WHERE id = $1""",
            client.session_id,
            client.who.rep,
            message.key,
        )
        if head is None:
            raise SessionNotFound(f"session {client.session_id!r} no longer exists")
        info = comments.SessionInfo(client.session_id, head["state"], head["moderation"])
        if not head["repeated"]:
            wait = await self._rate_limit(client)
            if wait > 0:
                raise SlowDown(wait)
        outcome = await comments.send(
            self.pool,
            info,
            client.who,
            client.tier,
            text=message.text,
            key=message.key,
            words=self.words,
            max_chars=self.settings.comment_max_chars,
        )
        await self._publish(client.session_id, outcome)
        return outcome.ack

    async def _rate_limit(self, client: Client) -> float:
        key = f"{client.session_id}:{client.who.rep}"
        try:
            return await self.bucket.take(key)
        except UNAVAILABLE:
            # Redis is down: limit on this node alone rather than refuse every comment.
            now = time.monotonic()
            capacity, interval = self.settings.comment_burst, self.settings.comment_interval
            tokens, at = self.local_bucket.get(key, (float(capacity), now))
            tokens = min(capacity, tokens + (now - at) / interval)
            if tokens >= 1:
                self.local_bucket[key] = (tokens - 1, now)
                return 0.0
            self.local_bucket[key] = (tokens, now)
            return (1 - tokens) * interval

    async def moderate(self, client: Client, data: Any) -> dict[str, Any]:
        if not client.staff:
            await self._audit(client, "moderate.refused", data)
            raise NotPermitted("moderating comments needs the moderator, host or admin role")
        message = msgspec.convert(data, Moderate)
        outcome = await comments.moderate(
            self.pool,
            client.session_id,
            client.who,
            comment_id=message.comment,
            action=message.action,
            note=message.note,
        )
        await self._publish(client.session_id, outcome)
        return outcome.ack

    async def resync(self, client: Client, data: Any) -> dict[str, Any]:
        message = msgspec.convert(data, Resync)
        room = self.rooms.get(client.session_id)
        epoch = room.epoch if room else None
        if message.since.epoch != epoch:
            raise InvalidMessage("the session's epoch changed: reconnect with since = null for a snapshot")
        rows = await ledger_events.read_after(
            self.pool, client.session_id, message.since.seq, self.settings.replay_limit
        )
        return {"events": [e.wire() for e in rows], "more": len(rows) == self.settings.replay_limit}

    # --- polls -----------------------------------------------------------------------------

    async def poll(self, poll_id: int) -> polls.Poll:
        """A poll's definition from this node's cache (fixed once open), else the ledger —
        read once however many votes ask for it at the same moment."""
        cached = self.polls.get(poll_id)
        if cached is not None:
            return cached
        loading = self._poll_loads.get(poll_id)
        if loading is None:
            loading = asyncio.ensure_future(polls.load(self.pool, poll_id))
            self._poll_loads[poll_id] = loading
            loading.add_done_callback(lambda _: self._poll_loads.pop(poll_id, None))
        poll = await asyncio.shield(loading)
        if poll.state != "draft":
            self.polls[poll_id] = poll
        return poll

    async def vote_cast(self, client: Client, data: Any) -> dict[str, Any]:
        message = msgspec.convert(data, ballots.VoteCast)
        try:
            if not client.attends:
                raise NotPermitted("only representatives vote")
            poll = await self.poll(message.poll)
            cast = ballots.check(
                poll, message, rep=client.who.rep, session_id=client.session_id, tier=client.tier
            )
        except NotPermitted:
            await self._audit(client, "vote.refused", data)
            raise
        try:
            result = await self.ballots.cast(cast)
        except PollClosed:
            self.polls.pop(poll.id, None)  # read the state again next time
            raise
        if result.delta:
            self.tallies.add(poll.id, result.delta)
        return ballots.ack(result)

    def _require_host(self, client: Client, action: str) -> None:
        if not client.who.has(Role.HOST, Role.ADMIN):
            raise NotPermitted(f"{action} needs the host or admin role")

    async def _own_poll(self, client: Client, poll_id: int) -> polls.Poll:
        poll = await polls.load(self.pool, poll_id)
        if poll.session_id != client.session_id:
            raise NotPermitted(f"poll {poll_id} belongs to another session")
        return poll

    async def poll_state(self, client: Client, data: Any) -> dict[str, Any]:
        self._require_host(client, "opening, closing or publishing a poll")
        message = msgspec.convert(data, PollState)
        await self._own_poll(client, message.poll)
        done = await self.change_poll(message.poll, message.state, client.who)
        return {"poll": done.poll.view(), "results": done.results}

    async def change_poll(self, poll_id: int, to: str, who: Any) -> polls.Transition:
        """A poll's next state, told to every node; after close the live tallies are checked
        against the ledger's count."""
        if to == "open":
            await self.tallies.begin(poll_id)
        done = await polls.transition(self.pool, poll_id, to, who)
        self.polls[poll_id] = done.poll
        await self._publish(done.poll.session_id, comments.Outcome(ack={}, events=done.events))
        if to == "closed" and done.results is not None:
            self._spawn(self._check_tallies(done.poll, done.results))
        return done

    async def _check_tallies(self, poll: polls.Poll, results: dict[str, Any]) -> None:
        # Casts committed before the close reach the counters on their own node's next round:
        # compare once every node has had two, and this node's are known to be there.
        await asyncio.sleep(2 * self.settings.tally_interval)
        for _ in range(20):
            if not self.tallies.holds(poll.id):
                break
            await asyncio.sleep(self.settings.tally_interval)
        wrong = await self.tallies.check(poll, results)
        outcome = "skipped" if wrong is None else "disagreed" if wrong else "agreed"
        self.metrics.tally_checks.labels(outcome).inc()

    async def poll_onsite(self, client: Client, data: Any) -> dict[str, Any]:
        self._require_host(client, "entering on-site counts")
        message = msgspec.convert(data, PollOnsite)
        await self._own_poll(client, message.poll)
        await polls.set_onsite(self.pool, message.poll, polls.OnsiteCounts(message.counts), client.who)
        return {}

    async def poll_missing(self, client: Client, data: Any) -> dict[str, Any]:
        self._require_host(client, "seeing who has not voted")
        poll = await self._own_poll(client, msgspec.convert(data, PollRef).poll)
        return {"missing": await polls.missing_voters(self.pool, poll)}

    async def poll_nudge(self, client: Client, data: Any) -> dict[str, Any]:
        self._require_host(client, "reminding representatives to vote")
        poll = await self._own_poll(client, msgspec.convert(data, PollRef).poll)
        return {"nudged": await self.nudge(poll)}

    async def nudge(self, poll: polls.Poll) -> int:
        """Remind everyone present and eligible who has not voted (on whichever node)."""
        if poll.state != "open":
            raise PollClosed(f"poll {poll.id} is not open")
        reps = [m["rep"] for m in await polls.missing_voters(self.pool, poll)]
        if reps:
            self._nudge_local(poll.session_id, poll.id, poll.title, reps)
            await self.bus.publish("nudge", s=poll.session_id, p=poll.id, t=poll.title, r=reps)
        return len(reps)

    def _nudge_local(self, session_id: str, poll_id: int, title: str, reps: list[str]) -> None:
        room = self.rooms.get(session_id)
        if room is None:
            return
        wanted = set(reps)
        for c in list(room.clients.values()):
            if c.ready and c.who.rep in wanted:
                self.fanout.send(c, "nudge", {"poll": poll_id, "title": title})

    def _on_bus_nudge(self, message: dict[str, Any]) -> None:
        if message.get("n") != self.settings.node_id:
            self._nudge_local(str(message["s"]), int(message["p"]), str(message["t"]), list(message["r"]))

    async def _audit(self, client: Client, action: str, data: Any) -> None:
        """Record a refused attempt. The refusal stands if the row cannot be written; the
        failure is logged."""
        try:
            await self.pool.execute(
                "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, $2, $3, $4)",
                client.who.rep,
                action,
                client.session_id,
                {"data": sketch(data)},
            )
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            log.warning("%s by %s not audited: %r", action, client.who.rep, exc)
        except Exception:
            log.exception("%s by %s not audited", action, client.who.rep)

    # --- fan-out between nodes -------------------------------------------------------

    async def committed(self, session_id: str, events: Sequence[ledger_events.Event]) -> None:
        """EventSink: events another part of the node committed (e.g. a session's state)."""
        await self._publish(session_id, comments.Outcome(ack={}, events=[e.wire() for e in events]))

    async def _publish(self, session_id: str, outcome: comments.Outcome) -> None:
        if outcome.events:
            wire = outcome.events
            self._feed(session_id, wire)
            await self.bus.publish("ev", s=session_id, e=wire)
        if outcome.queue_added or outcome.queue_removed:
            self._queue_local(session_id, outcome.queue_added, outcome.queue_removed)
            await self.bus.publish("q", s=session_id, a=outcome.queue_added, r=outcome.queue_removed)

    def _feed(self, session_id: str, wire: list[dict[str, Any]]) -> None:
        for event in wire:
            if event["type"] in POLL_STATES and (cached := self.polls.get(int(_poll_id(event)))) is not None:
                cached.state = POLL_STATES[event["type"]]
        room = self.rooms.get(session_id)
        if room is None:
            return
        was = room.state
        if room.accept(wire) is not None:
            self._fill(room)
        if room.state == "live" and was != "live":
            self._spawn(self._attend(room, room.attendees()))

    def _fill(self, room: Room) -> None:
        """Fetch what the room missed from the ledger (one fetch per room at a time)."""
        if room.session_id in self._fills:
            return

        async def fill() -> None:
            try:
                while True:
                    rows = await ledger_events.read_after(self.pool, room.session_id, room.last_seq, 1000)
                    if not rows:
                        return
                    room.accept([e.wire() for e in rows])
            except UNAVAILABLE as exc:
                log.warning("catching up %s from the ledger failed: %r", room.session_id, exc)
            finally:
                self._fills.pop(room.session_id, None)

        self._fills[room.session_id] = asyncio.ensure_future(fill())

    def _on_bus_events(self, message: dict[str, Any]) -> None:
        if message.get("n") != self.settings.node_id:
            self._feed(str(message["s"]), list(message["e"]))

    def _on_bus_queue(self, message: dict[str, Any]) -> None:
        if message.get("n") != self.settings.node_id:
            self._queue_local(str(message["s"]), list(message.get("a", [])), list(message.get("r", [])))

    async def _on_bus_words(self, message: dict[str, Any]) -> None:
        self.words = await words.load(self.pool)

    def _queue_local(self, session_id: str, added: list[dict[str, Any]], removed: list[int]) -> None:
        room = self.rooms.get(session_id)
        if room is not None:
            self.fanout.to_staff(room, "queue", {"added": added, "removed": removed})

    async def _catch_up(self) -> None:
        """Compare every room with the ledger and fetch what is missing."""
        if not self.rooms.by_session:
            return
        try:
            heads = await self.pool.fetch(
                "SELECT id, last_seq FROM sessions WHERE id = ANY($1::text[])", list(self.rooms.by_session)
            )
        except UNAVAILABLE as exc:
            log.warning("catch-up poll failed: %r", exc)
            return
        for head in heads:
            room = self.rooms.get(head["id"])
            if room is not None and head["last_seq"] > room.last_seq:
                self._fill(room)

    async def _catch_up_loop(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.settings.health_interval))
            try:
                await self._catch_up()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop is what makes a lost doorbell harmless: keep it
                log.exception("catch-up poll failed")

    async def _refresh_queues(self) -> None:
        """After (re)subscribing, queue updates may have been missed: send staff the full list."""
        for room in list(self.rooms.by_session.values()):
            staff = [c for c in room.staff.values() if c.ready]
            if not staff:
                continue
            try:
                queue = await comments.pending(self.pool, room.session_id)
            except UNAVAILABLE as exc:
                log.warning("queue refresh for %s failed: %r", room.session_id, exc)
                continue
            for client in staff:
                self.fanout.send(client, "queue", {"full": True, "pending": queue})

    async def _expire_tokens(self) -> None:
        self.metrics.live_clients.set(len(self.rooms.by_sid))
        for client in self.rooms.expired(time.time() - self.settings.jwt_leeway):
            try:
                await self.sio.disconnect(client.sid)
            except Exception:
                log.exception("disconnecting %s (token expired) failed", client.sid)


JOIN_BATCH_SECONDS = 0.1

POLL_STATES = {"poll.opened": "open", "poll.closed": "closed", "poll.results": "published"}


def _poll_id(event: dict[str, Any]) -> int:
    poll = event["data"]["poll"]
    return int(poll["id"] if isinstance(poll, dict) else poll)


LIVE: web.AppKey[Live] = web.AppKey("live")


def attach(app: web.Application) -> Live:
    """Add the live channel to an app: Socket.IO routes now, start and stop with the app."""
    live = Live(app)
    app[LIVE] = live
    app[keys.EVENT_SINK] = live

    async def live_ctx(app: web.Application) -> AsyncIterator[None]:
        await live.start()
        try:
            yield
        finally:
            await live.stop()

    app.cleanup_ctx.append(live_ctx)
    app.on_shutdown.append(live.disconnect_all)
    return live
