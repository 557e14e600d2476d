"""The connection pool to the ledger."""

from __future__ import annotations

import json
import logging

import asyncpg

from recorder.errors import LedgerUnavailable

log = logging.getLogger("tribune.db")


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset when a connection returns to the pool: the project keeps no session
    state on pooled connections (no SET, LISTEN, cursors or session advisory locks held past
    a call), and an open transaction is rolled back by the pool anyway. The default reset
    costs a round trip and a query on every release."""


async def create_pool(url: str, *, min_size: int, max_size: int, timeout: float) -> asyncpg.Pool:
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            command_timeout=timeout * 6,
            init=_init_connection,
            reset=_keep_session,
            server_settings={"application_name": "tribune"},
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise LedgerUnavailable(f"cannot connect to PostgreSQL: {exc}; check database_url") from exc
    return pool
