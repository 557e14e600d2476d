"""Node settings: defaults, then a TOML file, then `TRIBUNE_*` environment variables.

Settings are immutable and validated as a whole before anything starts; an error names
the key (as written in the file or the environment) and says what it accepts.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ENV_PREFIX = "TRIBUNE_"
SECRET_FIELDS = frozenset({"jwt_secret", "turn_password", "hls_signing_key"})
URL_FIELDS = frozenset({"database_url", "redis_url"})


class SettingsError(ValueError):
    """A setting is unknown, malformed or out of range; the message names the key."""


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a node is configured with. Field names are the keys of the TOML file's
    flat form; a TOML table `[jwt] secret = …` is the same as `jwt_secret = …`."""

    node_id: str = field(default_factory=_default_node_id)
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""
    data_dir: Path = Path("data")
    log_level: str = "INFO"

    database_url: str = ""
    database_pool_min: int = 2
    database_pool_max: int = 20
    database_timeout: float = 5.0

    redis_url: str = ""
    redis_prefix: str = "tribune:"
    redis_timeout: float = 2.0

    health_interval: float = 1.0

    jwt_secret: str = ""
    jwt_public_key: Path | None = None
    jwt_audience: str = "tribune"
    jwt_issuer: str = ""
    jwt_leeway: float = 10.0

    allowed_origins: tuple[str, ...] = ()
    max_upload_bytes: int = 10 * 1024 * 1024
    roster_max_rows: int = 100_000

    comment_max_chars: int = 500
    comment_burst: int = 3
    comment_interval: float = 5.0
    tick_interval: float = 0.1
    presence_interval: float = 1.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    max_frame_bytes: int = 64 * 1024
    client_buffer_bytes: int = 1024 * 1024
    replay_limit: int = 2000

    tally_interval: float = 0.25
    vote_batch_max: int = 2000
    vote_linger: float = 0.05

    attendance_lease: float = 30.0
    attendance_grace: float = 60.0

    scoring_refresh: float = 300.0
    reminder_stream_maxlen: int = 10_000

    ice_servers: tuple[str, ...] = ()
    turn_username: str = ""
    turn_password: str = ""
    webrtc_host_addresses: tuple[str, ...] = ()
    webrtc_handshake_timeout: float = 10.0
    video_bitrate: int = 1_000_000
    video_max_height: int = 720
    keyframe_interval: float = 2.0
    keyframe_debounce: float = 0.5
    feed_lease: float = 10.0
    whep_max_viewers: int = 1000
    hls_segment_seconds: float = 2.0
    hls_part_seconds: float = 0.5
    hls_window: int = 6
    hls_ttl: float = 60.0
    hls_url_ttl: float = 14400.0
    hls_signing_key: str = ""
    recording_retention_days: float = 365.0
    upstream_allowlist: tuple[str, ...] = ()

    @property
    def embedded_database(self) -> bool:
        return not self.database_url

    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"

    def replace(self, **changes: Any) -> Settings:
        return _validated(dataclasses.replace(self, **changes))

    def masked(self) -> dict[str, str]:
        """Every setting as text, with secrets and URL passwords hidden."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS:
                text = "****" if value else ""
            elif f.name in URL_FIELDS:
                text = mask_url(value)
            elif isinstance(value, tuple):
                text = ",".join(value)
            else:
                text = "" if value is None else str(value)
            out[f.name] = text
        return out


def mask_url(url: str) -> str:
    """`redis://:pw@host:1/0` → `redis://:****@host:1/0`; URLs without a password unchanged."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:****@{host}"))


_FIELDS = {f.name: f for f in fields(Settings)}
_HINTS = typing.get_type_hints(Settings)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}".replace("-", "_")
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}_"))
        else:
            flat[name] = value
    return flat


_KIND_NAMES = {bool: "true or false", int: "whole number", float: "number", Path: "path", str: "string"}


def _coerce(name: str, raw: Any, where: str) -> Any:
    """Turn a TOML value or an environment string into the field's type; `where` names
    the key as the user wrote it."""
    hint = _HINTS[name]
    optional = False
    if isinstance(hint, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if optional and raw in ("", None):
        return None
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError
        if hint is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(str(raw).strip())
        if hint is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(str(raw).strip())
        if hint is Path:
            if not isinstance(raw, str):
                raise ValueError
            return Path(raw).expanduser()
        if typing.get_origin(hint) is tuple:
            if isinstance(raw, str):
                items = [part.strip() for part in raw.split(",")]
            elif isinstance(raw, list):
                items = [str(part).strip() for part in raw]
            else:
                raise ValueError
            return tuple(item for item in items if item)
        if hint is str:
            if not isinstance(raw, str | int | float) or isinstance(raw, bool):
                raise ValueError
            return str(raw)
    except ValueError:
        kind = _KIND_NAMES.get(hint, "list of strings")
        raise SettingsError(f"{where} must be a {kind}, got {raw!r}") from None
    raise SettingsError(f"{where}: unsupported setting type {hint}")  # pragma: no cover


_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR"}
_ORIGIN = re.compile(r"^https?://[^/\s]+$")


def _validated(s: Settings) -> Settings:
    def fail(key: str, message: str) -> None:
        raise SettingsError(f"{key}: {message}")

    if not 0 <= s.port <= 65535:
        fail("port", f"must be 0..65535, got {s.port}")
    if not s.node_id or len(s.node_id) > 64:
        fail("node_id", "must be 1..64 characters")
    if s.log_level.upper() not in _LOG_LEVELS:
        fail("log_level", f"must be one of {', '.join(sorted(_LOG_LEVELS))}")
    if s.database_url and urlsplit(s.database_url).scheme not in {"postgresql", "postgres"}:
        fail("database_url", "must start with postgresql:// (or be empty for embedded)")
    if s.redis_url and urlsplit(s.redis_url).scheme not in {"redis", "rediss", "unix"}:
        fail("redis_url", "must start with redis://, rediss:// or unix:// (or be empty)")
    if not 1 <= s.database_pool_min <= s.database_pool_max <= 500:
        fail("database_pool_max", "need 1 <= database_pool_min <= database_pool_max <= 500")
    for key in ("database_timeout", "redis_timeout", "health_interval"):
        if not 0 < getattr(s, key) <= 300:
            fail(key, "must be a number of seconds between 0 and 300")
    if s.jwt_leeway < 0 or s.jwt_leeway > 300:
        fail("jwt_leeway", "must be 0..300 seconds")
    if s.jwt_public_key is not None and not s.jwt_public_key.is_file():
        fail("jwt_public_key", f"file {s.jwt_public_key} does not exist")
    if s.jwt_secret and len(s.jwt_secret) < 32:
        fail("jwt_secret", "must be at least 32 characters (use a random string)")
    if not s.jwt_audience:
        fail("jwt_audience", "must not be empty")
    if not re.fullmatch(r"[A-Za-z0-9:_.-]{1,64}", s.redis_prefix):
        fail("redis_prefix", "must be 1..64 characters of letters, digits and :_.-")
    if s.public_url and not _ORIGIN.match(s.public_url.rstrip("/")):
        fail("public_url", "must be like https://tribune.example.org (no path)")
    for origin in s.allowed_origins:
        if origin != "*" and not _ORIGIN.match(origin):
            fail("allowed_origins", f"{origin!r} is not an origin like https://example.org")
    if not 1 <= s.comment_max_chars <= 5000:
        fail("comment_max_chars", "must be 1..5000")
    if s.comment_burst < 1 or not 0 < s.comment_interval <= 3600:
        fail("comment_burst", "need comment_burst >= 1 and 0 < comment_interval <= 3600")
    if not 0.005 <= s.tick_interval <= 1.0:
        fail("tick_interval", "must be 0.005..1.0 seconds")
    if not 0.1 <= s.presence_interval <= 60:
        fail("presence_interval", "must be 0.1..60 seconds")
    if not 1 <= s.ping_interval <= 300 or not 1 <= s.ping_timeout <= 300:
        fail("ping_interval", "need 1 <= ping_interval <= 300 and 1 <= ping_timeout <= 300 seconds")
    if not 1024 <= s.max_frame_bytes <= 16 * 1024 * 1024:
        fail("max_frame_bytes", "must be 1 KB..16 MB")
    if s.client_buffer_bytes < 64 * 1024:
        fail("client_buffer_bytes", "must be at least 64 KB")
    if not 1 <= s.attendance_lease <= 3600 or not 0 <= s.attendance_grace <= 3600:
        fail("attendance_lease", "need 1 <= attendance_lease <= 3600 and 0 <= attendance_grace <= 3600")
    if not 0.25 <= s.tally_interval <= 60:
        fail("tally_interval", "must be 0.25..60 seconds (live tallies go out at most 4 times a second)")
    if not 1 <= s.vote_batch_max <= 10_000:
        fail("vote_batch_max", "must be 1..10000 (1 writes each vote in its own transaction)")
    if not 0 <= s.vote_linger <= 0.2:
        fail("vote_linger", "must be 0..0.2 seconds")
    if not 0 <= s.scoring_refresh <= 86_400:
        fail("scoring_refresh", "must be 0..86400 seconds")
    if not 100 <= s.reminder_stream_maxlen <= 10_000_000:
        fail("reminder_stream_maxlen", "must be 100..10000000")
    for server in s.ice_servers:
        if not re.fullmatch(r"(stuns?|turns?):[^\s]+", server):
            fail("ice_servers", f"{server!r} is not a stun:/turn: URL like stun:stun.example.org:3478")
    for address in s.webrtc_host_addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            fail("webrtc_host_addresses", f"{address!r} is not an IP address")
    if not 1 <= s.webrtc_handshake_timeout <= 120:
        fail("webrtc_handshake_timeout", "must be 1..120 seconds")
    if not 100_000 <= s.video_bitrate <= 20_000_000:
        fail("video_bitrate", "must be 100000..20000000 bits per second")
    if not 144 <= s.video_max_height <= 2160:
        fail("video_max_height", "must be 144..2160 pixels")
    if not 0.5 <= s.keyframe_interval <= 30 or not 0.05 <= s.keyframe_debounce <= 10:
        fail("keyframe_interval", "need 0.5 <= keyframe_interval <= 30 and 0.05 <= keyframe_debounce <= 10")
    if not 2 <= s.feed_lease <= 600:
        fail("feed_lease", "must be 2..600 seconds")
    if not 1 <= s.whep_max_viewers <= 100_000:
        fail("whep_max_viewers", "must be 1..100000")
    if not 0.5 <= s.hls_segment_seconds <= 10:
        fail("hls_segment_seconds", "must be 0.5..10")
    if not 0.1 <= s.hls_part_seconds <= min(1.0, s.hls_segment_seconds / 2):
        fail("hls_part_seconds", "must be 0.1..1.0 and at most half of hls_segment_seconds")
    if not 3 <= s.hls_window <= 100:
        fail("hls_window", "must be 3..100")
    if not s.hls_segment_seconds * s.hls_window < s.hls_ttl <= 3600:
        fail("hls_ttl", "must outlast the playlist window (hls_segment_seconds × hls_window) and be ≤ 3600")
    if not 60 <= s.hls_url_ttl <= 7 * 86400:
        fail("hls_url_ttl", "must be 60..604800 seconds")
    if s.hls_signing_key and len(s.hls_signing_key) < 32:
        fail("hls_signing_key", "must be at least 32 characters (use a random string)")
    for entry in s.upstream_allowlist:
        if not entry.strip() or "/" in entry.strip().split("/")[0] or " " in entry.strip():
            fail("upstream_allowlist", f"{entry!r} is not a host name, *.suffix, IP address or network")
    if not 0 < s.recording_retention_days <= 36500:
        fail("recording_retention_days", "must be more than 0 and at most 36500 days")
    if not 10 <= s.replay_limit <= 100_000:
        fail("replay_limit", "must be 10..100000")
    if s.max_upload_bytes < 1024:
        fail("max_upload_bytes", "must be at least 1024")
    if s.roster_max_rows < 1:
        fail("roster_max_rows", "must be at least 1")
    return dataclasses.replace(s, log_level=s.log_level.upper())


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Defaults → TOML file → environment → keyword overrides (the CLI's flags)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            table = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"config file {config_file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {config_file} is not valid TOML: {exc}") from None
        for name, raw in _flatten(table).items():
            if name not in _FIELDS:
                raise SettingsError(f"{config_file}: unknown key {name!r}; see `tribune check-config --help`")
            values[name] = _coerce(name, raw, f"{config_file}: {name}")
    env = os.environ if environ is None else environ
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in _FIELDS:
            raise SettingsError(f"environment: unknown variable {key}; check its spelling")
        values[name] = _coerce(name, raw, key)
    for name, raw in overrides.items():
        if raw is not None:
            values[name] = raw
    return _validated(Settings(**values))


def describe_keys() -> list[tuple[str, str, str]]:
    """(key, environment variable, default) for every setting, for docs and --help."""
    defaults = Settings()
    rows = []
    for f in fields(Settings):
        default = defaults.masked()[f.name] if f.name != "node_id" else "<host>-<pid>"
        rows.append((f.name, ENV_PREFIX + f.name.upper(), default))
    return rows
