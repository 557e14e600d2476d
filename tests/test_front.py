"""The HTTP front (config/front.py): live HLS answered from memory exactly as aiohttp's
handlers answer it; everything else, and anything odd, handed over to aiohttp with no byte
lost or reordered."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest

from config.front import parse_head
from streaming import hls
from streaming.api import HLS_KEY, STREAMING
from tests.test_polls import SESSION, live_session
from tests.test_whip import make_feed

SEGMENT = os.urandom(180_000)
PART = os.urandom(40_000)


async def live_feed(client: Any, auth: Any, db: Any, *, public: bool = True) -> None:
    """A session with a feed whose HLS is on the bus: segment 7 and the first part of 8."""
    await live_session(client, auth, db)
    if public:
        await db.execute("UPDATE sessions SET audience = 'public' WHERE id = $1", SESSION)
    await make_feed(client, auth)
    bus = client.server.app[STREAMING].bus
    await bus.publish(hls.Segment("main", 7, 2.0, datetime.now(UTC), SEGMENT), 2.0)
    await bus.publish_part(hls.Part("main", 8, 0, 0.5, True, PART), 2.0, 0.5)


class Raw:
    """A keep-alive HTTP/1.1 connection written and read byte for byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, client: Any) -> Raw:
        return cls(*await asyncio.open_connection(client.host, client.port))

    def send(self, *paths: str, extra: str = "") -> None:
        self.writer.write(b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode() for p in paths))

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        async with asyncio.timeout(10):
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(head[0].split()[1])
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    async def closed(self) -> bool:
        async with asyncio.timeout(10):
            return await self.reader.read(1) == b""

    def close(self) -> None:
        self.writer.close()


def answered_by_front(client: Any) -> int:
    """How many connections the front holds now (a handed-over one is aiohttp's)."""
    return len(client.server.runner.server.connections)


def test_only_plain_gets_are_read_by_the_front() -> None:
    plain = parse_head(b"GET /hls/main/7.ts?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close")
    assert plain is not None and (plain.path, plain.query, plain.close) == ("/hls/main/7.ts", "x=1", True)
    assert parse_head(b"GET /hls/main/7.ts HTTP/1.1\r\nHost: a\r\nConnection: keep-alive") is not None
    twice = parse_head(
        b"GET /hls/main/7.ts HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection: keep-alive"
    )
    assert twice is not None and twice.close  # as aiohttp: any `close` closes
    many = b"GET /hls/main/7.ts HTTP/1.1\r\nHost: a" + b"\r\nx: 1" * 200
    for odd in (
        b"POST /hls/main/7.ts HTTP/1.1\r\nHost: a",
        b"GET /hls/main/7.ts HTTP/1.0\r\nHost: a",
        b"GET /hls/main/7.ts HTTP/1.1\r\nHost: a\r\nContent-Length: 3",
        b"GET /hls/main/7.ts HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked",
        b"GET /hls/main/7.ts HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket",
        b"GET /hls/main/7.ts HTTP/1.1\r\nHost: a\r\n folded",
        b"GET /hls/main/7.ts HTTP/1.1\r\nHo st: a",
        b"GET /hls/main/7.ts HTTP/1.1",
        b"GET /hls/main/7.ts HTTP/1.1\r\nHost: a\r\nHost: b",
        b"GET /hls/main/7.ts HTTP/1.1\r\nHost: \xe4",
        b"GET  /hls/main/7.ts HTTP/1.1",
        b"GET http://a/hls/main/7.ts HTTP/1.1",
        b"GET /hls/main/7.ts?a\x01b HTTP/1.1\r\nHost: a",
        b"GET /hls/main/7.ts?a\tb HTTP/1.1\r\nHost: a",
        b"GET /hls/main/7.ts HTTP/1.1\r\nHost: a\r\nProxy-Connection: close",
        many,
    ):
        assert parse_head(odd) is None, odd


async def test_the_front_answers_live_hls_as_aiohttp_does(client: Any, auth: Any, db: Any) -> None:
    await live_feed(client, auth, db)
    paths = ("/hls/main/index.m3u8", "/hls/main/7.ts", "/hls/main/8.0.ts")
    front = await Raw.open(client)
    front.send(*paths)  # pipelined: answered in order
    by_front = [await front.response() for _ in paths]
    assert answered_by_front(client) == 1

    # The same requests after one the front does not answer: aiohttp's handlers answer them.
    handed = await Raw.open(client)
    handed.send("/healthz", *paths)
    assert (await handed.response())[0] == 200
    by_aiohttp = [await handed.response() for _ in paths]
    assert answered_by_front(client) == 1

    for (status, headers, body), (status2, headers2, body2) in zip(by_front, by_aiohttp, strict=True):
        assert status == status2 == 200
        assert body == body2
        headers.pop("date"), headers2.pop("date")
        assert headers == headers2
    assert by_front[1][2] == SEGMENT and by_front[2][2] == PART
    assert (
        "\n/hls/main/7.ts\n" in by_front[0][2].decode()
        and by_front[0][1]["cache-control"] == "public, max-age=1"
    )
    assert by_front[1][1]["cache-control"] == "public, max-age=86400, immutable"
    assert by_front[1][1]["content-type"] == "video/mp2t"

    metrics = await (await client.get("/metrics")).text()
    served = [
        line
        for line in metrics.splitlines()
        if line.startswith("tribune_http_requests_total") and 'route="/hls/{feed}/{seq}.ts"' in line
    ]
    assert served and float(served[0].rsplit(" ", 1)[1]) == 2.0, served
    front.close()
    handed.close()


async def test_what_the_front_does_not_answer_aiohttp_does_in_order(client: Any, auth: Any, db: Any) -> None:
    await live_feed(client, auth, db)
    raw = await Raw.open(client)
    # A segment, then one that is not on the bus (a 404 is aiohttp's to say), then one that is.
    raw.send("/hls/main/7.ts", "/hls/main/99.ts", "/hls/main/7.ts")
    status, _, body = await raw.response()
    assert status == 200 and body == SEGMENT
    status, headers, body = await raw.response()
    assert status == 404 and headers["content-type"].startswith("application/json")
    assert b"no such segment" in body
    status, _, body = await raw.response()
    assert status == 200 and body == SEGMENT
    assert answered_by_front(client) == 0  # aiohttp keeps the connection it was handed
    raw.close()

    # A blocking reload's parameters, however they are escaped, are aiohttp's: it refuses
    # one too far ahead instead of the front sending the playlist at once.
    raw = await Raw.open(client)
    raw.send("/hls/main/index.m3u8?%5FHLS_msn=999")
    status, _, body = await raw.response()
    assert status == 400 and b"too far ahead" in body
    raw.close()

    # `Connection: close` is honoured.
    raw = await Raw.open(client)
    raw.send("/hls/main/7.ts", extra="Connection: close\r\n")
    status, headers, body = await raw.response()
    assert status == 200 and headers["connection"] == "close" and body == SEGMENT
    assert await raw.closed()

    # A request with a body is aiohttp's whole, even on a path the front answers.
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"GET /hls/main/7.ts HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    raw = Raw(reader, writer)
    status, _, body = await raw.response()
    assert status == 200 and body == SEGMENT
    assert (await raw.response())[0] == 200
    raw.close()

    # Lines ended by a bare LF: aiohttp refuses them at once; the connection does not hang.
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"GET /hls/main/7.ts HTTP/1.1\nHost: x\n\n")
    status, _, _ = await Raw(reader, writer).response()
    assert status == 400
    writer.close()

    # Garbage is refused by aiohttp, as before.
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"GET /hls/main/7.ts HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n")
    status, _, _ = await Raw(reader, writer).response()
    assert status == 400
    writer.close()


async def test_signed_urls_through_the_front(client: Any, auth: Any, db: Any) -> None:
    await live_feed(client, auth, db, public=False)
    key = client.server.app[HLS_KEY]
    good = hls.sign(key, "main", "/hls/main/7.ts", 600)
    other = urlsplit(hls.sign(key, "main", "/hls/main/6.ts", 600)).query
    raw = await Raw.open(client)
    raw.send(good)
    status, headers, body = await raw.response()
    assert status == 200 and body == SEGMENT and headers["cache-control"].startswith("private")
    assert answered_by_front(client) == 1
    raw.send(f"/hls/main/7.ts?{other}")  # another path's signature
    status, _, body = await raw.response()
    assert status == 403 and b"signature" in body
    # A name given twice counts by its first value, as aiohttp reads it: a bad pair first
    # is refused even with a good pair after it.
    raw.send(f"/hls/main/7.ts?exp=1&sig=00&{urlsplit(good).query}")
    assert (await raw.response())[0] == 403
    raw.close()


async def test_a_request_that_never_ends_is_closed(client: Any, auth: Any, db: Any, monkeypatch: Any) -> None:
    front = client.server.runner.server
    monkeypatch.setattr(front, "idle_seconds", 0.5)
    monkeypatch.setattr(front, "sweep_seconds", 0.2)
    await live_feed(client, auth, db)
    raw = await Raw.open(client)
    raw.writer.write(b"GET /hls/main/7.ts HTTP/1.1\r\nHost:")  # and nothing more
    assert await raw.closed()
    # Nor does trickling the head a byte at a time keep it open.
    raw = await Raw.open(client)
    for byte in b"GET /hls/main/7.ts HTTP/1.1\r\nHost: " + b"t" * 100:  # 10 s of trickle
        if raw.reader.at_eof():
            break
        raw.writer.write(bytes([byte]))
        await asyncio.sleep(0.1)
    else:
        pytest.fail("a head trickled a byte at a time kept its connection open")
    assert answered_by_front(client) == 0


@pytest.mark.parametrize("count", [400])
async def test_a_client_that_asks_and_does_not_read_is_not_served_past_its_window(
    client: Any, auth: Any, db: Any, count: int
) -> None:
    """Pipelined requests from a client that stops reading: the node stops reading them too
    (no unbounded buffering), and serves the rest once the client reads."""
    await live_feed(client, auth, db)
    raw = await Raw.open(client)
    raw.send(*["/hls/main/7.ts"] * count)
    await asyncio.sleep(1.0)
    connection = next(iter(client.server.runner.server.connections))
    assert connection.paused and connection.transport.get_write_buffer_size() < 3 * len(SEGMENT)
    for _ in range(count):
        status, _, body = await raw.response()
        assert status == 200 and body == SEGMENT
    raw.close()


async def test_a_segment_asked_for_at_once_is_read_from_redis_once(client: Any, auth: Any, db: Any) -> None:
    await live_feed(client, auth, db)
    bus = client.server.app[STREAMING].bus
    bus._media.clear()  # as on a node that did not publish it

    async def gets() -> int:
        stats = await bus.redis.info("commandstats")
        return int(stats.get("cmdstat_get", {}).get("calls", 0))

    before = await gets()
    got = await asyncio.gather(*(bus.media("main", "seg:7") for _ in range(50)))
    assert got == [SEGMENT] * 50
    assert await gets() - before <= 3  # one read (other clients of this Redis may read too)
