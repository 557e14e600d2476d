"""Feeds whose source is an HLS URL (a court's own channel): pulled by one node, re-served
through the segment bus and recorded like any other feed.

Fetching a URL someone typed is a server-side request forgery risk, so every fetch is
checked before a connection is made:

- only `http`/`https`, no user info, and a host on `upstream_allowlist` (an exact name, a
  `*.suffix`, or an IP address or network);
- every address the name resolves to must be public — loopback, private, link-local
  (169.254.169.254, the cloud metadata service, among them), multicast, reserved and
  unspecified addresses are refused unless a network on the allowlist contains them — and
  the connection goes to exactly those addresses (no second lookup to rebind);
- redirects are not followed; bodies are capped (`MAX_PLAYLIST`, `MAX_SEGMENT`), and each
  fetch has a deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from config.errors import Invalid

log = logging.getLogger("tribune.streaming")

MAX_PLAYLIST = 1 << 20  # 1 MB
MAX_SEGMENT = 16 << 20  # 16 MB
PLAYLIST_TIMEOUT = 5.0
SEGMENT_TIMEOUT = 15.0

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str, int], Awaitable[list[str]]]


class UpstreamRefused(Invalid):
    """An upstream URL, or where it leads, that Tribune will not fetch."""


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class Policy:
    names: tuple[str, ...]  # exact host names, or "*.suffix"
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, entries: tuple[str, ...]) -> Policy:
        names, networks = [], []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                names.append(entry.strip().lower().rstrip("."))
        return cls(tuple(names), tuple(networks))

    def _named(self, host: str) -> bool:
        return any(host == n or (n.startswith("*.") and host.endswith(n[1:])) for n in self.names)

    def _in_networks(self, address: Address) -> bool:
        return any(address in network for network in self.networks)

    def check_url(self, url: str) -> tuple[str, int]:
        """The URL's host and port if it may be fetched at all (before any lookup)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise UpstreamRefused(f"upstream URLs are http or https, not {parts.scheme or 'nothing'!r}")
        if parts.username or parts.password:
            raise UpstreamRefused("upstream URLs carry no user name or password")
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise UpstreamRefused("the upstream URL has no host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise UpstreamRefused("the upstream URL's port is not a number") from None
        try:
            literal: Address | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            if not self._in_networks(literal):
                raise UpstreamRefused(f"{host} is not on upstream_allowlist; an admin adds it there")
        elif not self._named(host):
            raise UpstreamRefused(f"{host} is not on upstream_allowlist; an admin adds it there")
        return host, port

    def check_address(self, host: str, address: str) -> None:
        ip = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        special = (
            ip.is_loopback
            or ip.is_private
            or ip.is_link_local
            or ip.is_multicast
            or ip.is_reserved
            or ip.is_unspecified
            or not ip.is_global
        )
        if special and not self._in_networks(ip):
            raise UpstreamRefused(
                f"{host} resolves to {ip}, a loopback, private, link-local or reserved address; "
                "refused unless upstream_allowlist names that network"
            )

    async def addresses(self, url: str, resolve: Resolve) -> tuple[str, int, list[str]]:
        """Checks the URL and every address its host resolves to; returns them."""
        host, port = self.check_url(url)
        try:
            ipaddress.ip_address(host)
            found = [host]
        except ValueError:
            try:
                found = await resolve(host, port)
            except OSError as exc:
                raise UpstreamRefused(f"{host} does not resolve: {exc}") from None
        if not found:
            raise UpstreamRefused(f"{host} does not resolve")
        for address in found:
            self.check_address(host, address)
        return host, port, found


class _Pinned(AbstractResolver):
    """Connects to the addresses that were checked, whatever DNS says a moment later."""

    def __init__(self, host: str, addresses: list[str]) -> None:
        self.host = host
        self.addresses = addresses

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        if host != self.host:
            raise OSError(f"{host} was not checked")
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in self.addresses
        ]

    async def close(self) -> None:
        return None


async def fetch(policy: Policy, url: str, *, limit: int, timeout: float, resolve: Resolve) -> bytes:
    """GET `url` under the policy: checked addresses, no redirects, at most `limit` bytes."""
    host, _, addresses = await policy.addresses(url, resolve)
    connector = aiohttp.TCPConnector(resolver=_Pinned(host, addresses), use_dns_cache=False)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as http,
        http.get(url, allow_redirects=False) as r,
    ):
        if 300 <= r.status < 400:
            raise UpstreamRefused(
                f"{url} redirects to {r.headers.get('Location')!r}; redirects are not followed"
            )
        if r.status != 200:
            raise UpstreamRefused(f"{url} answered {r.status}")
        if (r.content_length or 0) > limit:
            raise UpstreamRefused(f"{url} is over {limit} bytes")
        data = await r.content.read(limit + 1)
        if len(data) > limit:
            raise UpstreamRefused(f"{url} is over {limit} bytes")
        return data


def media_segments(text: str, base: str) -> tuple[float, list[tuple[int, float, str]]]:
    """The target duration and (media sequence, duration, absolute URL) of each segment."""
    if not text.startswith("#EXTM3U"):
        raise UpstreamRefused("the upstream playlist is not an HLS playlist (#EXTM3U)")
    target, seq, duration, out = 6.0, 0, 0.0, []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#EXT-X-TARGETDURATION:"):
            target = float(line.split(":")[1])
        elif line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            seq = int(line.split(":")[1])
        elif line.startswith("#EXTINF:"):
            duration = float(line[8:].split(",")[0])
        elif line.startswith("#EXT-X-STREAM-INF"):
            raise UpstreamRefused("the upstream URL is a multivariant playlist; give one media playlist")
        elif line and not line.startswith("#"):
            out.append((seq, duration, urljoin(base, line)))
            seq += 1
    return target, out


class Relay:
    """Pulls one upstream media playlist and hands each new segment to `emit`. Marks the
    feed stalled when nothing new comes for three target durations, live when it does."""

    def __init__(
        self,
        feed_id: str,
        url: str,
        policy: Policy,
        *,
        emit: Callable[[Any], Awaitable[None]],
        on_state: Callable[[str], Awaitable[None]],
        resolve: Resolve = system_resolve,
    ) -> None:
        self.feed_id = feed_id
        self.url = url
        self.policy = policy
        self.emit = emit
        self.on_state = on_state
        self.resolve = resolve
        self.seq = 0
        self.last_upstream: int | None = None
        self.state = "idle"

    async def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            await self.on_state(state)

    async def run(self) -> None:
        from streaming.hls import Segment

        last_new = time.monotonic()
        target = 2.0
        while True:
            try:
                text = await fetch(
                    self.policy, self.url, limit=MAX_PLAYLIST, timeout=PLAYLIST_TIMEOUT, resolve=self.resolve
                )
                target, segments = media_segments(text.decode("utf-8", "replace"), self.url)
                fresh = [s for s in segments if self.last_upstream is None or s[0] > self.last_upstream]
                if self.last_upstream is None:
                    fresh = fresh[-2:]  # start near the live edge
                for upstream_seq, duration, url in fresh:
                    data = await fetch(
                        self.policy, url, limit=MAX_SEGMENT, timeout=SEGMENT_TIMEOUT, resolve=self.resolve
                    )
                    self.last_upstream = upstream_seq
                    await self.emit(Segment(self.feed_id, self.seq, duration, datetime.now(UTC), data))
                    self.seq += 1
                    last_new = time.monotonic()
                    await self._set("live")
            except asyncio.CancelledError:
                raise
            except (UpstreamRefused, aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
                log.warning(
                    "feed %s: upstream %s: %s", self.feed_id, self.url, str(exc) or type(exc).__name__
                )
            if time.monotonic() - last_new > 3 * target and self.state == "live":
                await self._set("stalled")
            await asyncio.sleep(max(0.5, min(target / 2, 3.0)))
