"""Helpers for tests against the real PostgreSQL on this machine (never skipped)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

DSN = os.environ.get("WB_TEST_PG_DSN", "postgresql://root@127.0.0.1:5432/test")


async def connect() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is required at {DSN} and is not reachable: {exc!r}")


@pytest.fixture
async def pg() -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test database; fails (never skips) when the server is down."""
    conn = await connect()
    yield conn
    await conn.close()


@pytest.fixture
async def table(pg: asyncpg.Connection) -> AsyncIterator[str]:
    """A fresh heartbeat table name, dropped afterwards."""
    name = f"hb_{uuid.uuid4().hex[:12]}"
    await pg.execute(
        f"CREATE TABLE {name} (id uuid PRIMARY KEY, first_connected_at timestamptz, "
        "last_connected_at timestamptz, replica_id uuid, disconnected_at timestamptz, "
        "updated_at timestamptz NOT NULL, note text)"
    )
    yield name
    await pg.execute(f"DROP TABLE IF EXISTS {name}")
