"""AsyncQueue's message layer, on asyncpg and psycopg 3: the sync semantics, awaited.

No asyncio plugin: each test body runs in its own `asyncio.run`, on an engine made
and disposed of inside it (an async connection belongs to one event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import math
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest
from helpers import fresh_tables
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from tcpproxy import TcpProxy

import sa_pgtq
from sa_pgtq import errors
from sa_pgtq.models import FAILED

orders = Table("async_orders", MetaData(), Column("id", Integer, primary_key=True))

Body = Callable[[AsyncEngine], Awaitable[None]]


def run(async_url: str, body: Body) -> None:
    """`asyncio.run` the test's body with an engine of that loop, disposed of at the end."""

    async def main() -> None:
        engine = create_async_engine(async_url)
        try:
            await body(engine)
        finally:
            await engine.dispose()

    asyncio.run(main())


def sync_url(async_url: str) -> str:
    """The same database for a sync engine (psycopg2)."""
    url = make_url(async_url).set(drivername="postgresql+psycopg2")
    return url.render_as_string(hide_password=False)


async def rows(engine: AsyncEngine, table: Any = sa_pgtq.Job) -> int:
    """Rows of `table` that another connection sees: committed ones."""
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def takeable(engine: AsyncEngine) -> list[Any]:
    """Data of the waiting messages that no transaction holds: what a consumer can take now."""
    query = text("SELECT data FROM sa_pgtq_jobs ORDER BY id FOR UPDATE SKIP LOCKED")
    async with engine.begin() as conn:
        found = list((await conn.execute(query)).scalars())
        await conn.rollback()
    return found


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"gave up waiting after {seconds}s"
        await asyncio.sleep(0.05)


# -- the caller's transaction, in each shape the asyncio API takes ----------------------


@asynccontextmanager
async def async_session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with AsyncSession(engine) as s, s.begin():
        yield s


@asynccontextmanager
async def from_sessionmaker(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with async_sessionmaker(engine).begin() as s:
        yield s


@asynccontextmanager
async def scoped(engine: AsyncEngine) -> AsyncIterator[async_scoped_session[AsyncSession]]:
    registry = async_scoped_session(async_sessionmaker(engine), scopefunc=asyncio.current_task)
    try:
        async with registry.begin():
            yield registry
    finally:
        await registry.remove()


@asynccontextmanager
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with engine.begin() as conn:
        yield conn


Caller = Callable[[AsyncEngine], AbstractAsyncContextManager[Any]]
CALLERS = [async_session, from_sessionmaker, scoped, connection]


@pytest.fixture
def app(async_url: str) -> str:
    """`async_url`, with the application's own table empty."""
    engine = create_engine(sync_url(async_url))
    fresh_tables(engine, orders)
    engine.dispose()
    return async_url


# -- enqueue -----------------------------------------------------------------------------


@pytest.mark.parametrize("caller", CALLERS)
def test_enqueue_commits_and_rolls_back_with_the_callers_rows(app: str, caller: Caller) -> None:
    async def body(engine: AsyncEngine) -> None:
        q = sa_pgtq.AsyncQueue(engine)
        async with caller(engine) as tx:
            await tx.execute(orders.insert().values(id=1))
            await q.enqueue("email", {"order": 1}, tx)  # positionally last, q4pg style
            assert len(await q.enqueue_many("email", [2, 3], session=tx)) == 2
            assert await q.count("email", tx) == 3, "the caller sees its own jobs"
            assert (await rows(engine), await rows(engine, orders)) == (0, 0), "not yet"
        assert (await rows(engine), await rows(engine, orders)) == (3, 1)

        with pytest.raises(RuntimeError):
            async with caller(engine) as tx:
                await tx.execute(orders.insert().values(id=2))
                await q.enqueue("email", {"order": 2}, session=tx)
                await q.enqueue_many("email", [4], session=tx)
                raise RuntimeError("the request failed")
        assert (await rows(engine), await rows(engine, orders)) == (3, 1), "rolled back together"

    run(app, body)


@pytest.mark.parametrize("bind", ["AsyncEngine", "async_sessionmaker", "URL string"])
def test_made_from_any_bind_it_commits_at_once_without_a_session(async_url: str, bind: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        binds: dict[str, Any] = {
            "AsyncEngine": engine,
            "async_sessionmaker": async_sessionmaker(engine),
            "URL string": async_url,
        }
        q = sa_pgtq.AsyncQueue(binds[bind])
        try:
            assert isinstance(q.engine, AsyncEngine)
            assert q.engine.url.drivername == engine.url.drivername
            first = await q.enqueue("t", {"n": 1})
            assert await rows(engine) == 1, "committed before enqueue returned"
            assert await q.enqueue_many("t", [2, 3]) == [first + 1, first + 2]
            assert await rows(engine) == 3
            assert await q.enqueue_many("t", []) == []
            async with q.dequeue("t") as data:
                assert data == {"n": 1}
            assert await rows(engine) == 2
        finally:
            if bind == "URL string":
                await q.engine.dispose()  # the queue's own engine

    run(async_url, body)


# -- dequeue -----------------------------------------------------------------------------


def test_dequeue_removes_on_success_and_a_failure_goes_behind_counted(async_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        q = sa_pgtq.AsyncQueue(engine)
        first, second = await q.enqueue_many("t", ["first", "second"])
        with pytest.raises(ZeroDivisionError, match="the handler failed"):
            async with q.dequeue("t") as data:
                assert data == "first"
                raise ZeroDivisionError("the handler failed")
        jobs = await q.list("t")
        assert [(j.id, j.attempts) for j in jobs] == [(second, 0), (first, 1)]
        assert jobs[1].last_error is not None
        assert "Traceback" in jobs[1].last_error and "ZeroDivisionError" in jobs[1].last_error
        async with q.dequeue("t") as data:
            assert data == "second"
        assert [j.id for j in await q.list("t")] == [first]

    run(async_url, body)


def test_dequeue_item_the_immediate_forms_and_empty_tags(async_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        q = sa_pgtq.AsyncQueue(engine)
        await sa_pgtq.AsyncQueue(engine, name="other").enqueue("t", "not ours")
        item_id = await q.enqueue("t", [1, 2], priority=3)
        await q.enqueue_many("t", ["a", "b"])
        async with q.dequeue_item("t") as job:
            assert isinstance(job, sa_pgtq.Job)
            assert (job.id, job.tag, job.data, job.priority) == (item_id, "t", [1, 2], 3)
        assert await q.dequeue_immediate("t") == "a"
        job = await q.dequeue_item_immediate("t")
        assert isinstance(job, sa_pgtq.Job) and (job.queue, job.data) == ("default", "b")
        for tag in ("t", "unknown"):  # empty (for this queue) and unknown tags are normal
            async with q.dequeue(tag) as data:
                assert data is None
            async with q.dequeue_item(tag) as nothing:
                assert nothing is None
            assert await q.dequeue_immediate(tag) is None
            assert await q.dequeue_item_immediate(tag) is None
            assert await q.count(tag) == 0 and await q.list(tag) == []
        assert await rows(engine) == 1, "the other queue's message"

    run(async_url, body)


def test_a_cancelled_consumer_puts_its_message_back_untouched(async_url: str) -> None:
    # Cancelled (as by an outer asyncio.wait_for): not the message's fault, like Ctrl-C.
    async def body(engine: AsyncEngine) -> None:
        q = sa_pgtq.AsyncQueue(engine)
        await q.enqueue("t", "x")
        holding = asyncio.Event()

        async def hang() -> None:
            async with q.dequeue("t") as data:
                holding.set()
                await asyncio.sleep(30, data)

        task = asyncio.ensure_future(hang())
        await holding.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await takeable(engine) == ["x"], "back at once"
        assert [(j.data, j.attempts) for j in await q.list("t")] == [("x", 0)]

    run(async_url, body)


@pytest.mark.parametrize("commits", [True, False], ids=["caller commits", "caller rolls back"])
@pytest.mark.parametrize("caller", CALLERS)
def test_dequeue_in_the_callers_transaction(app: str, caller: Caller, commits: bool) -> None:
    async def body(engine: AsyncEngine) -> None:
        q = sa_pgtq.AsyncQueue(engine)
        await q.enqueue_many("t", ["ok", "boom"])
        with contextlib.suppress(RuntimeError):
            async with caller(engine) as tx:
                async with q.dequeue("t", tx) as data:
                    assert data == "ok"
                    await tx.execute(orders.insert().values(id=1))
                with pytest.raises(ZeroDivisionError):
                    async with q.dequeue("t", session=tx) as data:
                        assert data == "boom"
                        await tx.execute(orders.insert().values(id=2))  # undone by a savepoint
                        raise ZeroDivisionError
                assert await q.count("t") == 2, "others see nothing removed before the commit"
                if not commits:
                    raise RuntimeError("the request failed")
        # "boom" failed: counted even when the caller rolled back (or it would never reach
        # the tail nor excepted_times_to_ignore); "ok" went with the caller's commit.
        left = [("boom", 1)] if commits else [("ok", 0), ("boom", 1)]

        async def counted() -> bool:
            return [(j.data, j.attempts) for j in await q.list("t")] == left

        await eventually(counted)
        assert await rows(engine, orders) == (1 if commits else 0)

    run(app, body)


def test_poison_messages_are_kept_as_failed_and_can_be_requeued(async_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        q = sa_pgtq.AsyncQueue(engine, excepted_times_to_ignore=2)
        job_id = await q.enqueue("t", "poison")
        for _ in range(2):
            with pytest.raises(ValueError):
                async with q.dequeue("t") as data:
                    assert data == "poison"
                    raise ValueError("cannot handle")
        async with q.dequeue("t") as data:
            assert data is None, "failed twice: no longer handed out"
        assert await q.count("t") == 0 and await rows(engine) == 1, "kept, not deleted"
        (failed,) = await q.failed("t")
        assert (failed.id, failed.state, failed.attempts) == (job_id, FAILED, 2)
        assert failed.last_error is not None and "cannot handle" in failed.last_error
        assert await q.failed("other") == []
        assert await q.requeue_failed([job_id + 1]) == 0
        assert await q.requeue_failed([job_id]) == 1
        assert [(j.id, j.attempts) for j in await q.list("t")] == [(job_id, 0)]
        assert await q.failed() == []
        assert await q.dequeue_immediate("t") == "poison"

    run(async_url, body)


def test_cancel_and_a_held_message_is_nobody_elses(async_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        q = sa_pgtq.AsyncQueue(engine)
        keep, drop = await q.enqueue_many("t", ["keep", "drop"])
        assert await q.cancel(drop) is True
        assert await q.cancel(drop) is False, "already gone"
        assert await q.cancel(10**12) is False
        assert await sa_pgtq.AsyncQueue(engine, name="other").cancel(keep) is False
        async with q.dequeue("t") as data:
            assert data == "keep"
            async with q.dequeue("t") as other:
                assert other is None, "a held message is skipped, not handed out twice"
            assert await q.cancel(keep) is False, "being worked on"
        assert await rows(engine) == 0

    run(async_url, body)


# -- listen ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["listen", "listen_item"])
def test_listen_yields_in_order_then_none_when_quiet(async_url: str, method: str) -> None:
    def present(item: Any) -> Any:  # the data, of listen_item's Job
        assert isinstance(item, sa_pgtq.Job) == (method == "listen_item")
        return item.data if method == "listen_item" else item

    async def body(engine: AsyncEngine) -> None:
        q = sa_pgtq.AsyncQueue(engine)
        await q.enqueue_many("t", [1, 2, 3])
        async with getattr(q, method)("t", timeout=0.3) as messages:
            assert [present(await anext(messages)) for _ in range(3)] == [1, 2, 3]
            started = time.monotonic()
            assert await anext(messages) is None
            assert 0.2 < time.monotonic() - started < 5
            assert await rows(engine) == 0, "asking for the next one removed the last"
            await q.enqueue("t", 4)
            assert present(await anext(messages)) == 4
            assert await anext(messages) is None, "and it keeps listening"

    run(async_url, body)


ENQUEUE_LATER = textwrap.dedent(
    """
    import asyncio, sys, time
    import sa_pgtq
    url, kind = sys.argv[1], sys.argv[2]
    time.sleep(1.0)
    if kind == "Queue":
        sa_pgtq.Queue(url).enqueue("wake-up", kind)
    else:
        async def main():
            q = sa_pgtq.AsyncQueue(url)
            await q.enqueue("wake-up", kind)
            await q.engine.dispose()
        asyncio.run(main())
    """
)


@pytest.mark.parametrize("producer", ["Queue", "AsyncQueue"])
def test_listen_is_woken_by_an_enqueue_in_another_process(async_url: str, producer: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        q = sa_pgtq.AsyncQueue(engine, poll_interval=30)  # only NOTIFY can be in time
        url = sync_url(async_url) if producer == "Queue" else async_url
        proc = subprocess.Popen([sys.executable, "-c", ENQUEUE_LATER, url, producer])
        try:
            async with q.listen_item("wake-up", timeout=25) as messages:
                waiting = asyncio.ensure_future(anext(messages))
                slept = time.monotonic()
                await asyncio.sleep(0.3)
                assert time.monotonic() - slept < 0.8, "the loop runs while listen waits"
                assert not waiting.done()
                job = await waiting
                received = datetime.now(timezone.utc)
        finally:
            await asyncio.to_thread(proc.wait, 30)
        assert job is not None and job.data == producer
        latency = (received - job.created_at).total_seconds()
        assert latency < 5, f"woken {latency:.1f}s after the enqueue: NOTIFY did not arrive"

    run(async_url, body)


@pytest.mark.parametrize("leave", ["break in async with", "aclose", "iterator collected", "athrow"])
def test_leaving_a_listen_loop_puts_the_message_back_and_athrow_fails_it(
    async_url: str, leave: str
) -> None:
    async def body(engine: AsyncEngine) -> None:
        q = sa_pgtq.AsyncQueue(engine)
        await q.enqueue_many("t", ["a", "b"])
        if leave == "break in async with":
            async with q.listen("t", timeout=1) as messages:
                async for data in messages:
                    assert data == "a"
                    break
        elif leave == "iterator collected":  # the event loop closes it soon after
            async for data in q.listen("t", timeout=1):
                assert data == "a"
                break
        else:
            messages = q.listen("t", timeout=1)
            assert await anext(messages) == "a"
            if leave == "athrow":  # what an exception in a sync listen loop's body does
                with pytest.raises(KeyError, match="bad a"):
                    await messages.athrow(KeyError("bad a"))
            await messages.aclose()

        async def released() -> bool:
            return await takeable(engine) == ["a", "b"]

        if leave == "iterator collected":
            await eventually(released)
        assert await released(), "back at once"
        jobs = [(j.data, j.attempts) for j in await q.list("t")]
        if leave == "athrow":
            assert jobs == [("b", 0), ("a", 1)], "counted, and behind the others"
            assert "bad a" in str((await q.list("t"))[1].last_error)
        else:
            assert jobs == [("a", 0), ("b", 0)], "untouched"

    run(async_url, body)


def test_listen_in_the_callers_session(async_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        q = sa_pgtq.AsyncQueue(engine)
        await q.enqueue_many("t", ["x", "y"])
        async with AsyncSession(engine) as s:
            async with q.listen("t", s) as messages:  # q4pg style
                assert await anext(messages) == "x"
                assert await anext(messages) == "y"
            assert await q.count("t") == 2, "not removed for others before the commit"
            await s.commit()
        assert [j.data for j in await q.list("t")] == ["y"], "the one in hand went back"

    run(async_url, body)


# -- a Queue and an AsyncQueue on one table are one queue -------------------------------


def test_a_sync_queue_and_an_async_queue_share_messages_both_ways(async_url: str) -> None:
    sync_q = sa_pgtq.Queue(sync_url(async_url), name="shared", poll_interval=30)

    async def body(engine: AsyncEngine) -> None:
        async_q = sa_pgtq.AsyncQueue(engine, name="shared", poll_interval=30)
        sync_q.enqueue("t", "from sync")
        assert await sa_pgtq.AsyncQueue(engine, name="other").count("t") == 0
        async with async_q.dequeue("t") as data:
            assert data == "from sync"
        await async_q.enqueue_many("t", ["from async", "second"])
        with pytest.raises(RuntimeError):
            async with async_q.dequeue("t") as data:
                raise RuntimeError(data)
        failed = [("second", 0), ("from async", 1)]
        assert [(j.data, j.attempts) for j in sync_q.list("t")] == failed
        with sync_q.dequeue("t") as data:
            assert data == "second"
        assert sync_q.dequeue_immediate("t") == "from async"

        # An async enqueue wakes a sync listener (polling every 30 s would be too late).
        received: list[Any] = []
        with sync_q.listen("t", timeout=20) as stream:
            waiting = threading.Thread(target=lambda: received.append(next(stream)))
            waiting.start()
            await asyncio.sleep(0.5)
            started = time.monotonic()
            await async_q.enqueue("t", "wake the sync listener")
            await asyncio.to_thread(waiting.join, 20)
            assert received == ["wake the sync listener"]
            assert time.monotonic() - started < 5
        assert await async_q.dequeue_immediate("t") == "wake the sync listener", "put back"
        # (A sync enqueue waking an async listener: test_listen_is_woken_by_an_enqueue_...)

    try:
        run(async_url, body)
    finally:
        sync_q.engine.dispose()


# -- bad input: an sa_pgtq error, nothing written ---------------------------------------


@dataclass
class World:
    q: sa_pgtq.AsyncQueue
    engine: AsyncEngine
    sync_url: str

    def queue(self, **options: Any) -> sa_pgtq.AsyncQueue:
        return sa_pgtq.AsyncQueue(self.engine, **options)

    def session(self) -> Session:
        return Session(create_engine(self.sync_url))  # connects only when used


TAG = (errors.InvalidTagError, ValueError)
NOT_JSON = (errors.DataNotSerializableError, TypeError)
SESSION = (errors.InvalidSessionError, TypeError)
BATCH = (errors.InvalidBatchError, TypeError)
INPUT = (errors.InvalidInputError, ValueError)
WRONG_TYPE = (errors.DataTypeError, TypeError)
TOO_LONG = (errors.DataTooLongError, ValueError)

BAD_INPUT: dict[str, tuple[Callable[[Any], object], tuple[type[Exception], type[Exception]]]] = {
    "empty tag": (lambda w: w.q.enqueue("", 1), TAG),
    "dequeue: empty tag": (lambda w: w.q.dequeue(""), TAG),
    "dequeue_item: NUL in tag": (lambda w: w.q.dequeue_item("t\x00"), TAG),
    "listen: empty tag": (lambda w: w.q.listen(""), TAG),
    "object()": (lambda w: w.q.enqueue("t", object()), NOT_JSON),
    "NaN": (lambda w: w.q.enqueue_many("t", [1, math.nan]), NOT_JSON),
    "int for text": (lambda w: w.queue(data_type="text").enqueue("t", 1), WRONG_TYPE),
    "too long": (lambda w: w.queue(data_length=5).enqueue("t", "x" * 9), TOO_LONG),
    "not a batch": (lambda w: w.q.enqueue_many("t", "abc"), BATCH),
    "delay": (lambda w: w.q.enqueue("t", 1, delay=1e15), INPUT),
    "enqueue: sync Session": (lambda w: w.q.enqueue("t", 1, w.session()), SESSION),
    "enqueue_many: a str": (lambda w: w.q.enqueue_many("t", [1], session="x"), SESSION),
    "dequeue: sync Session": (lambda w: w.q.dequeue("t", w.session()), SESSION),
    "listen: sync Session": (lambda w: w.q.listen("t", 1, w.session()), SESSION),
    "listen: sync Session, positionally": (lambda w: w.q.listen("t", w.session()), SESSION),
    "unconnected AsyncConnection": (lambda w: w.q.enqueue("t", 1, w.engine.connect()), SESSION),
    "Queue: AsyncSession": (
        lambda w: sa_pgtq.Queue(w.sync_url).enqueue("t", 1, AsyncSession(w.engine)),  # type: ignore[arg-type]
        SESSION,
    ),
    "Queue.listen_item: AsyncSession, positionally": (
        lambda w: sa_pgtq.Queue(w.sync_url).listen_item("t", AsyncSession(w.engine)),  # type: ignore[arg-type]
        SESSION,
    ),
    "timeout < 0": (lambda w: w.q.listen("t", timeout=-1), INPUT),
    "timeout str": (lambda w: w.q.listen_item("t", timeout="1"), INPUT),
    "timeout huge": (lambda w: w.q.listen("t", timeout=1e300), INPUT),
    "AsyncQueue(Engine)": (
        lambda w: sa_pgtq.AsyncQueue(create_engine(w.sync_url)),  # type: ignore[arg-type]
        SESSION,
    ),
    "Queue(AsyncEngine)": (lambda w: sa_pgtq.Queue(w.engine), SESSION),
    "unbound async_sessionmaker": (lambda w: sa_pgtq.AsyncQueue(async_sessionmaker()), INPUT),
    "job id str": (lambda w: w.q.cancel("1"), INPUT),
    "job id 2**63": (lambda w: w.q.cancel(2**63), INPUT),
    "requeue 2**70": (lambda w: w.q.requeue_failed([2**70]), INPUT),
}


async def use(result: object) -> None:
    """What a user does with what a call returned: await it, or enter it."""
    if inspect.isawaitable(result):
        await result
    elif isinstance(result, AbstractAsyncContextManager):
        async with result:
            pass


@pytest.mark.parametrize(("attempt", "raises"), list(BAD_INPUT.values()), ids=list(BAD_INPUT))
def test_bad_input_is_refused_before_anything_is_written(
    async_url: str,
    attempt: Callable[[World], object],
    raises: tuple[type[Exception], type[Exception]],
) -> None:
    error, builtin = raises  # the sa_pgtq class, and the builtin it also is

    async def body(engine: AsyncEngine) -> None:
        q = sa_pgtq.AsyncQueue(engine)
        await q.enqueue("t", "already there")
        with pytest.raises(error) as info:
            await use(attempt(World(q, engine, sync_url(async_url))))
        assert isinstance(info.value, builtin)
        assert await rows(engine) == 1, "nothing written"
        assert await q.dequeue_immediate("t") == "already there"

    run(async_url, body)


def test_a_silently_dead_listen_connection_is_cut_and_replaced(async_url: str) -> None:
    # As for the sync listener (test_listen.py): the LISTEN connection goes through a
    # proxy that then black-holes it, so only the ping's deadline can tell. asyncpg's
    # connection is aborted on its own loop, psycopg's socket shut down.
    async def main() -> None:
        engine = create_async_engine(async_url)
        with TcpProxy(async_url) as proxy:
            q = sa_pgtq.AsyncQueue(engine, poll_interval=2, listen_bind=proxy.url)

            async def arrives_in(data: str, seconds: float) -> float:
                later = asyncio.get_running_loop().call_later
                later(0.3, lambda: asyncio.ensure_future(q.enqueue("t", data)))
                started = time.monotonic()
                assert await asyncio.wait_for(messages.__anext__(), seconds) == data
                return time.monotonic() - started

            async with q.listen("t", timeout=60) as messages:
                await arrives_in("before", 10)
                assert proxy.connections == 1
                proxy.freeze()
                assert await arrives_in("during", 20) < 8, "the dead connection held listen up"
                await arrives_in("after", 10)
                assert proxy.connections == 2, "a new LISTEN connection"
                assert await arrives_in("woken", 10) < 1.5, "woken by NOTIFY, not the 2 s poll"
        await engine.dispose()

    asyncio.run(main())


def test_listening_closes_its_connection_rather_than_leaving_it_to_the_collector(
    async_url: str,
) -> None:
    # SQLAlchemy does not close a detached connection of psycopg's async driver (it has
    # no terminate); left to the garbage collector, psycopg warns (an error under -W error).
    async def main() -> None:
        engine = create_async_engine(async_url)
        q = sa_pgtq.AsyncQueue(engine)
        await q.enqueue("t", 1)
        async with q.listen("t", timeout=0.1) as messages:
            assert await messages.__anext__() == 1
        await engine.dispose()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        asyncio.run(main())
        gc.collect()
    assert [w for w in caught if "deleted while still open" in str(w.message)] == []
