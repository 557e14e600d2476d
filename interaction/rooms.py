"""Room bookkeeping with no I/O: who is connected to which session on this node, and the
session's recent events in seq order, gap-free."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from config.auth import Principal

BUFFER_EVENTS = 2000
# One `events` frame stays well under what clients accept in one message (aiohttp's default
# is 4 MB); a client further behind gets several frames.
MAX_BATCH_BYTES = 512 * 1024


def encoded_size(event: dict[str, Any]) -> int:
    return len(msgpack.packb(event))


def split_by_size(
    events: list[dict[str, Any]], max_bytes: int = MAX_BATCH_BYTES
) -> list[list[dict[str, Any]]]:
    """Consecutive runs of events of about `max_bytes` each (a larger event goes alone)."""
    batches: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    total = 0
    for event in events:
        size = encoded_size(event)
        if current and total + size > max_bytes:
            batches.append(current)
            current, total = [], 0
        current.append(event)
        total += size
    if current:
        batches.append(current)
    return batches


@dataclass(eq=False, slots=True)
class Client:
    sid: str
    eio_sid: str
    who: Principal
    tier: str
    session_id: str
    staff: bool
    last_seq: int = 0  # the last seq this client has been sent
    ready: bool = False  # hello and replay or snapshot are out; live events may follow
    in_flight: int = 0  # packets of ours in Engine.IO's queue or writer, not yet written
    attends: bool = False  # a representative: their presence is attendance


Notice = tuple[str, Any, float]  # (event name, data, least seconds between two to a client)


def tally_notice(poll_id: int) -> tuple[str, int]:
    """What a live-results poll's tally notice is about (see `Room.notices`)."""
    return ("tally", poll_id)


@dataclass(eq=False, slots=True)
class Room:
    session_id: str
    epoch: str
    last_seq: int
    state: str = "scheduled"
    clients: dict[str, Client] = field(default_factory=dict)
    buffer: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=BUFFER_EVENTS))
    sizes: deque[int] = field(default_factory=lambda: deque(maxlen=BUFFER_EVENTS))  # encoded bytes
    staff: dict[str, Client] = field(default_factory=dict)  # moderators and hosts, by sid
    waiting_since: float | None = None  # when the oldest event not yet flushed arrived
    flushed_seq: int = -1  # every ready client has been sent up to here (-1: not known)
    behind_count: int = 0  # clients made ready below last_seq so far (a flush in progress checks it)
    open_polls: dict[int, bool] = field(default_factory=dict)  # poll id → live results
    # Messages to everyone in the room where only the latest counts (presence, a live tally),
    # by what they are about; the next fan-out pass takes each once it is due (`take_notices`).
    notices: dict[tuple[str, int], Notice] = field(default_factory=dict)
    notices_due: dict[tuple[str, int], float] = field(default_factory=dict)  # not before then
    attending: Counter[str] = field(default_factory=Counter)  # representative → connections here
    people: Counter[str] = field(default_factory=Counter)  # everyone connected here → connections
    polls_loaded: bool = False

    def accept(self, events: Iterable[dict[str, Any]]) -> tuple[int, int] | None:
        """Append events in seq order. Returns the missing range (first, last) when the
        events skip ahead, so the caller can fill it from the ledger; older ones are ignored."""
        for event in sorted(events, key=lambda e: int(e["seq"])):
            seq = int(event["seq"])
            if seq <= self.last_seq:
                continue
            if seq != self.last_seq + 1:
                return self.last_seq + 1, seq - 1
            self.buffer.append(event)
            self.sizes.append(encoded_size(event))
            if event["type"] == "session.state":
                self.state = str(event["data"]["state"])
            elif event["type"] == "poll.opened":
                poll = event["data"]["poll"]
                self.open_polls[int(poll["id"])] = bool(poll["live_results"])
            elif event["type"] == "poll.closed":
                self.open_polls.pop(int(event["data"]["poll"]), None)
                self.notices.pop(tally_notice(int(event["data"]["poll"])), None)  # closed: no more
                self.notices_due.pop(tally_notice(int(event["data"]["poll"])), None)
            self.last_seq = seq
            if self.waiting_since is None:
                self.waiting_since = time.monotonic()
        return None

    def after(self, seq: int, limit: int, max_bytes: int = MAX_BATCH_BYTES) -> list[dict[str, Any]] | None:
        """Events after `seq` from memory — at most `limit` of them and about `max_bytes`, at
        least one — or None when the buffer no longer reaches back."""
        if seq >= self.last_seq:
            return []
        if not self.buffer or int(self.buffer[0]["seq"]) > seq + 1:
            return None
        start = seq + 1 - int(self.buffer[0]["seq"])
        end, total = start, 0
        while end < len(self.buffer) and end - start < limit:
            total += self.sizes[end]
            if total > max_bytes and end > start:
                break
            end += 1
        return [self.buffer[i] for i in range(start, end)]

    def behind(self) -> None:
        """A client became ready below `last_seq`: the next flush must look at every client."""
        self.flushed_seq = -1
        self.behind_count += 1

    def take_notices(self, now: float) -> dict[tuple[str, int], Notice]:
        """The notices due at `now`, taken off the room (the others wait for their spacing)."""
        if not self.notices:
            return {}
        due = {about: n for about, n in self.notices.items() if self.notices_due.get(about, 0.0) <= now}
        for about in due:
            del self.notices[about]
        return due

    def notices_sent(self, sent: dict[tuple[str, int], Notice], at: float) -> None:
        """`sent` reached every client by `at`: the next of each kind waits its spacing from
        then (a tally of a poll that closed meanwhile has no next)."""
        for about, (_, _, spacing) in sent.items():
            if spacing and (about[0] != "tally" or about[1] in self.open_polls):
                self.notices_due[about] = at + spacing

    def attendees(self) -> list[str]:
        """Representatives connected here, whose attendance this node vouches for."""
        return sorted(self.attending)

    def online(self) -> int:
        """Distinct people connected to this room on this node."""
        return len(self.people)


EXPIRY_BUCKET_SECONDS = 60


class Rooms:
    def __init__(self) -> None:
        self.by_session: dict[str, Room] = {}
        self.by_sid: dict[str, Client] = {}
        # Clients by the minute their token expires, so finding the expired ones does not
        # look at every client.
        self._expiring: dict[int, set[str]] = {}

    def get(self, session_id: str) -> Room | None:
        return self.by_session.get(session_id)

    def join(self, client: Client, *, epoch: str, last_seq: int, state: str = "scheduled") -> Room:
        room = self.by_session.get(client.session_id)
        if room is None:
            room = Room(client.session_id, epoch, last_seq, state)
            self.by_session[client.session_id] = room
        room.clients[client.sid] = client
        if client.staff:
            room.staff[client.sid] = client
        self.by_sid[client.sid] = client
        self._expiring.setdefault(_bucket(client.who.expires_at), set()).add(client.sid)
        room.people[client.who.rep] += 1
        if client.attends:
            room.attending[client.who.rep] += 1
        return room

    def leave(self, sid: str) -> Client | None:
        client = self.by_sid.pop(sid, None)
        if client is None:
            return None
        client.ready = False  # a pass under way over the room's clients skips it from now on
        bucket = _bucket(client.who.expires_at)
        sids = self._expiring.get(bucket)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self._expiring[bucket]
        room = self.by_session.get(client.session_id)
        if room is not None:
            room.staff.pop(sid, None)
            if room.clients.pop(sid, None) is not None:
                _decrement(room.people, client.who.rep)
                if client.attends:
                    _decrement(room.attending, client.who.rep)
            if not room.clients:
                del self.by_session[client.session_id]
        return client

    def expired(self, now: float) -> list[Client]:
        """Clients whose token expired before `now`."""
        due = _bucket(now)
        found: list[Client] = []
        for bucket in [b for b in self._expiring if b <= due]:
            for sid in self._expiring[bucket]:
                client = self.by_sid.get(sid)
                if client is not None and client.who.expires_at < now:
                    found.append(client)
        return found


def _bucket(expires_at: float) -> int:
    return int(expires_at // EXPIRY_BUCKET_SECONDS)


def _decrement(counts: Counter[str], key: str) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]
