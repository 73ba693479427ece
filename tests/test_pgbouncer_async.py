"""The asyncio API behind PgBouncer in transaction pooling mode, on asyncpg and psycopg 3.

Engines are configured as the README says: asyncpg with `statement_cache_size=0`,
psycopg 3 with `prepare_threshold=None`. Operations without a session run in
driver autocommit, where PgBouncer may hand each Sync of a client to a different
server connection; with those settings no statement outlives its Sync (asyncpg
parses its unnamed statement again in the execute round trip), so concurrency
through two server connections breaks nothing. LISTEN polls, as in the sync API.

No asyncio plugin: each test runs `asyncio.run(main())`, making and disposing of
its engine inside (an async connection belongs to one event loop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from helpers import ASYNC_DRIVERS, POOLER_CONNECT_ARGS, async_url_for
from pgbouncer import SERVER_CONNECTIONS, requires_pgbouncer
from sqlalchemy import Column, Engine, Integer, MetaData, Table, func, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

import sa_pgtq

pytestmark = requires_pgbouncer

effects = Table("bouncer_effects", MetaData(), Column("n", Integer))


@pytest.fixture(params=ASYNC_DRIVERS)
def bounced_url(request: pytest.FixtureRequest, bouncer_url: URL, bouncer_tables: Engine) -> str:
    """The test database through PgBouncer, for an async engine on each async driver."""
    with bouncer_tables.begin() as conn:
        effects.drop(conn, checkfirst=True)
        effects.create(conn)
    return bouncer_url.set(drivername=f"postgresql+{request.param}").render_as_string(False)


@asynccontextmanager
async def bounced_engine(url: str, **options: Any) -> AsyncIterator[AsyncEngine]:
    """An async engine on `url`, configured as the README says; disposed of at the end."""
    connect_args = POOLER_CONNECT_ARGS[make_url(url).get_driver_name()]
    engine = create_async_engine(url, connect_args=connect_args, **options)
    try:
        yield engine
    finally:
        await engine.dispose()


def run(url: str, body: Callable[[AsyncEngine], Awaitable[None]], **options: Any) -> None:
    """`asyncio.run` the test's body with an engine through PgBouncer of that loop."""

    async def main() -> None:
        async with bounced_engine(url, **options) as engine:
            await body(engine)

    asyncio.run(main())


async def scalar(engine: AsyncEngine, sql: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar()


async def dequeue_all(q: sa_pgtq.AsyncQueue, tag: str) -> list[Any]:
    """What one consumer gets from `async with q.dequeue(tag)` until the tag runs dry."""
    seen = []
    while True:
        async with q.dequeue(tag) as data:
            if data is None:
                return seen
            seen.append(data)


def test_messages_commit_and_roll_back_with_the_callers_async_session(bounced_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        q = sa_pgtq.AsyncQueue(engine)
        async with AsyncSession(engine) as s, s.begin():
            await s.execute(text("INSERT INTO bouncer_orders VALUES (1)"))
            await q.enqueue("email", {"order": 1}, session=s)
        async with AsyncSession(engine) as s, s.begin():
            await s.execute(text("INSERT INTO bouncer_orders VALUES (2)"))
            await q.enqueue("email", {"order": 2}, session=s)
            await s.rollback()
        assert await q.count("email") == 1
        assert await scalar(engine, "SELECT array_agg(id) FROM bouncer_orders") == [1]
        async with q.dequeue("email") as data:
            assert data == {"order": 1}
        assert await q.count("email") == 0

    run(bounced_url, body)


ROUNDS = 25
CONCURRENCY = 20


def test_operations_without_a_session_20_at_a_time_through_two_server_connections(
    bounced_url: str,
) -> None:
    """Driver autocommit: each statement's Syncs may meet a different server connection."""
    assert SERVER_CONNECTIONS <= 3, "few server connections, so that clients share them"

    async def body(engine: AsyncEngine) -> None:
        q = sa_pgtq.AsyncQueue(engine)
        for r in range(ROUNDS):
            base = r * 1000
            await asyncio.gather(*(q.enqueue("t", base + i) for i in range(CONCURRENCY)))
            many = [base + 100 + 10 * i for i in range(CONCURRENCY)]
            await asyncio.gather(*(q.enqueue_many("t", [n, n + 1]) for n in many))
            counts = await asyncio.gather(*(q.count("t") for _ in range(CONCURRENCY)))
            assert counts == [3 * CONCURRENCY] * CONCURRENCY
            got = await asyncio.gather(*(dequeue_all(q, "t") for _ in range(CONCURRENCY)))
            expected = [base + i for i in range(CONCURRENCY)]
            expected += [n + k for n in many for k in (0, 1)]
            assert sorted(n for one in got for n in one) == sorted(expected)
        assert await q.count("t") == 0

    # A connection for each coroutine: their statements all meet in PgBouncer at once.
    run(bounced_url, body, pool_size=CONCURRENCY, max_overflow=0)


def test_concurrent_dequeues_through_two_server_connections_hand_out_each_message_once(
    bounced_url: str,
) -> None:
    async def body(engine: AsyncEngine) -> None:
        q = sa_pgtq.AsyncQueue(engine)
        await q.enqueue_many("t", list(range(200)))
        got = await asyncio.gather(*(dequeue_all(q, "t") for _ in range(6)))
        assert sorted(n for one in got for n in one) == list(range(200))
        assert all(got), "every consumer had its share"
        assert await q.count("t") == 0

    run(bounced_url, body)


def enqueue_soon(q: sa_pgtq.AsyncQueue, data: str) -> asyncio.Task[int]:
    async def later() -> int:
        await asyncio.sleep(0.3)
        return await q.enqueue("t", data)

    return asyncio.ensure_future(later())


def test_listen_through_pgbouncer_polls_leaves_no_listen_behind_and_says_so(
    bounced_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(engine: AsyncEngine) -> None:
        q = sa_pgtq.AsyncQueue(engine, poll_interval=0.5)
        with caplog.at_level(logging.WARNING, logger="sa_pgtq"):
            async with q.listen("t", timeout=30) as messages:
                enqueued = enqueue_soon(q, "polled")
                assert await asyncio.wait_for(anext(messages), 10) == "polled"
                await enqueued
        # Hold every server connection at once: none was left listening.
        async with engine.begin() as one, engine.begin() as two:
            for conn in (one, two):
                listening = "SELECT count(*) FROM pg_listening_channels()"
                assert (await conn.execute(text(listening))).scalar() == 0
                await conn.execute(text("SELECT pg_sleep(0.1)"))

    run(bounced_url, body)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("connection pooler" in m and "listen_bind=" in m for m in warnings), warnings


def test_listen_bind_keeps_notify_wakeups_behind_pgbouncer(bounced_url: str, db_url: str) -> None:
    direct = async_url_for(db_url, make_url(bounced_url).get_driver_name())

    async def body(engine: AsyncEngine) -> None:
        q = sa_pgtq.AsyncQueue(engine, poll_interval=30, listen_bind=direct)
        async with q.listen("t", timeout=30) as messages:
            started = time.monotonic()
            enqueued = enqueue_soon(q, "woken")
            assert await asyncio.wait_for(anext(messages), 10) == "woken"
            assert time.monotonic() - started < 5, "woken by NOTIFY, not by the 30 s poll"
            await enqueued

    run(bounced_url, body)


TASKS = 500


def test_async_worker_through_pgbouncer_runs_each_task_exactly_once(bounced_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        q = sa_pgtq.AsyncQueue(engine, name="bounced")

        @q.handler()
        async def record(n: int) -> None:
            await sa_pgtq.current_async_session().execute(effects.insert().values(n=n))

        await record.push_many([(n,) for n in range(TASKS)])
        worker = sa_pgtq.AsyncWorker(
            q, concurrency=10, poll_interval=0.1, install_signal_handlers=False
        )
        await asyncio.wait_for(worker.run(burst=True), 60)
        ran = select(func.count(), func.count(effects.c.n.distinct()))
        async with engine.connect() as conn:
            done = (await conn.execute(ran)).one()
        assert tuple(done) == (TASKS, TASKS), "every task ran, and none twice"
        assert await scalar(engine, "SELECT count(*) FROM sa_pgtq_jobs") == 0

    run(bounced_url, body)
