"""The asyncio task layer in one process: AsyncQueue handlers, push, pop, AsyncWorker.

Every test runs on each async driver (the `async_url` fixture) inside its own
`asyncio.run`, where it makes its engine and disposes of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from helpers import BAD_CALLS
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

import sa_pgtq
from sa_pgtq import errors

effects = Table("async_effects", MetaData(), Column("n", Integer))

#: A handler of each kind an AsyncQueue takes: awaited on the loop, or run in a thread.
KINDS = ("async def", "def")


@contextlib.asynccontextmanager
async def queue_on(url: str, **options: Any) -> AsyncIterator[sa_pgtq.AsyncQueue]:
    """An AsyncQueue on a new engine (disposed of at the end), the effects table empty."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(effects.drop, checkfirst=True)
            await conn.run_sync(effects.create)
        yield sa_pgtq.AsyncQueue(engine, name="aio", **options)
    finally:
        await engine.dispose()


def handler_of(kind: str, body: Callable[..., Any]) -> Callable[..., Any]:
    """`body` as an `async def` or a plain def handler (the same name and signature)."""
    if kind == "def":
        return body

    @functools.wraps(body)  # its name, and its signature for checking pushes
    async def handler(*args: Any, **kwargs: Any) -> Any:
        return body(*args, **kwargs)

    return handler


async def burst(q: sa_pgtq.AsyncQueue, **options: Any) -> None:
    await sa_pgtq.AsyncWorker(q, install_signal_handlers=False, **options).run(burst=True)


async def burst_until(q: sa_pgtq.AsyncQueue, done: Callable[[], bool], seconds: float) -> None:
    """Burst runs until `done()` (tasks retried after a backoff are due later)."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"not done after {seconds}s"
        await burst(q, poll_interval=0.05)
        await asyncio.sleep(0.02)


async def effect_rows(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(effects.c.n).order_by(effects.c.n))).scalars())


async def jobs(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    """(state, attempts, last_error) of every job, in id order."""
    sql = "SELECT state, attempts, last_error FROM sa_pgtq_jobs ORDER BY id"
    async with engine.connect() as conn:
        return [tuple(row) for row in await conn.execute(text(sql))]


def write_effect(n: int) -> Awaitable[Any]:
    """In an async handler: a write that commits with the job's completion."""
    return sa_pgtq.current_async_session().execute(effects.insert().values(n=n))


# -- handlers and pushing ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_push_options_and_push_many_run_each_call_once(async_url: str, kind: str) -> None:
    ran: list[int] = []
    threads: set[bool] = set()

    def add(a: int, b: int) -> int:
        threads.add(threading.current_thread() is threading.main_thread())
        ran.append(a + b)
        return a + b

    async def main() -> None:
        async with queue_on(async_url) as q:
            h = q.handler()(handler_of(kind, add))
            called = h(2, 3)
            assert (await called if kind == "async def" else called) == 5, "a plain call runs now"
            ran.clear()
            threads.clear()

            await h.push(1, 2)
            assert len(await h.push_many([(2, 3), {"a": 4, "b": 5}])) == 2
            await h.options(priority=10).push(100, 0)
            await h.options(delay=0.5).push(1000, 0)
            await h.options(run_at=datetime.now(timezone.utc) + timedelta(seconds=0.5)).push(
                2000, 0
            )
            assert await h.push_many([]) == []
            await burst(q)
            assert ran == [100, 3, 5, 9], "by priority, then in order; the scheduled not yet"
            await asyncio.sleep(0.6)
            await burst(q)
            assert ran == [100, 3, 5, 9, 1000, 2000]
            assert await jobs(q.engine) == []
            # Plain defs run in threads, async defs on the loop: never blocking it.
            assert threads == {kind == "async def"}

    asyncio.run(main())


@pytest.mark.parametrize("commit", [True, False])
def test_options_session_pushes_commit_or_roll_back_with_the_caller(
    async_url: str, commit: bool
) -> None:
    async def main() -> None:
        async with queue_on(async_url) as q:

            @q.handler()
            async def record(n: int) -> None:
                await write_effect(n)

            engine = q.engine
            with contextlib.suppress(RuntimeError):
                async with AsyncSession(engine) as s, s.begin():
                    await s.execute(effects.insert().values(n=1))
                    await record.options(session=s, priority=3, delay=0).push(2)
                    await record.options(session=s).push_many([(3,), {"n": 4}])
                    assert len(await jobs(engine)) == 0, "not committed yet"
                    if not commit:
                        raise RuntimeError("the caller rolls back")
            async with engine.connect() as conn, conn.begin():  # a Core caller
                await record.options(session=conn).push(5)
                if not commit:
                    await conn.rollback()
            await burst(q)
            assert await effect_rows(engine) == ([1, 2, 3, 4, 5] if commit else [])
            assert await jobs(engine) == []

    asyncio.run(main())


@pytest.mark.parametrize(
    ("call", "error"),
    BAD_CALLS,
)
def test_bad_arguments_raise_before_anything_is_written(
    async_url: str, call: object, error: type[Exception]
) -> None:
    async def main() -> None:
        async with queue_on(async_url) as q:

            @q.handler()
            async def one(x: object) -> None: ...

            if isinstance(call, (tuple, dict)):
                args, kwargs = (call, {}) if isinstance(call, tuple) else ((), call)
                with pytest.raises(error):
                    await one.push(*args, **kwargs)
                async with AsyncSession(q.engine) as s, s.begin():
                    with pytest.raises(error):
                        await one.options(session=s).push(*args, **kwargs)
            with pytest.raises(error):
                await one.push_many([(1,), call])  # type: ignore[list-item]
            assert await jobs(q.engine) == [], "not even the good call was written"

    asyncio.run(main())


def test_bad_options_raise_before_anything_is_written(async_url: str) -> None:
    async def main() -> None:
        async with queue_on(async_url) as q:

            @q.handler()
            async def one(x: int) -> None: ...

            sync_engine = create_engine(make_url(async_url).set(drivername="postgresql+psycopg2"))
            try:
                with pytest.raises(errors.InvalidSessionError):
                    one.options(session=sync_engine.connect())  # type: ignore[arg-type]
            finally:
                sync_engine.dispose()
            for bad in ({"run_at": datetime.now()}, {"delay": "soon"}, {"priority": "high"}):
                with pytest.raises(errors.InvalidInputError):
                    one.options(**bad)  # type: ignore[arg-type]
            with pytest.raises(errors.DuplicateHandlerError):
                q.handler(name="one")(one.func)
            assert await jobs(q.engine) == []

    asyncio.run(main())


# -- pop and run -------------------------------------------------------------------


def test_pop_then_run(async_url: str) -> None:
    async def main() -> None:
        async with queue_on(async_url) as q:

            @q.handler(max_attempts=3)
            async def work(n: int) -> int:
                await write_effect(n)
                if n < 0:
                    raise ValueError("negative")
                return n

            job_id = await work.push(7)
            task = await q.pop()
            assert task is not None
            assert (task.id, task.name, task.args, task.kwargs, task.attempts) == (
                job_id,
                "work",
                (7,),
                {},
                1,
            )
            assert await q.pop() is None, "claimed"
            assert await task.run() is True
            assert await effect_rows(q.engine) == [7]
            assert await jobs(q.engine) == []

            await work.push(n=-1)
            task = await q.pop()
            assert task is not None and task.kwargs == {"n": -1}
            assert await task.run() is False
            assert await effect_rows(q.engine) == [7], "the failed run's write rolled back"
            [(state, attempts, error)] = await jobs(q.engine)
            assert (state, attempts) == ("queued", 1) and "ValueError: negative" in error

    asyncio.run(main())


def test_pop_in_the_callers_async_session(async_url: str) -> None:
    async def main() -> None:
        async with queue_on(async_url) as q:
            engine = q.engine

            @q.handler(max_attempts=3)
            async def work(n: int) -> None:
                await write_effect(n)
                if n < 0:
                    raise ValueError("negative")

            await work.push(7)
            async with AsyncSession(engine) as s, s.begin():
                await s.execute(effects.insert().values(n=70))
                task = await q.pop(session=s)
                assert task is not None and await task.run() is True
                assert await effect_rows(engine) == [], "all in the caller's transaction"
            assert await effect_rows(engine) == [7, 70]
            assert await jobs(engine) == [], "removed when the caller committed"

            await work.push(-1)
            async with AsyncSession(engine) as s, s.begin():
                task = await q.pop(session=s)
                assert task is not None and await task.run() is False
            assert await effect_rows(engine) == [7, 70], "the failed handler's write was undone"
            [(state, attempts, error)] = await jobs(engine)
            assert (state, attempts) == ("queued", 1) and "ValueError: negative" in error

            async with engine.begin() as conn:
                await conn.execute(text("DELETE FROM sa_pgtq_jobs"))
            await work.push(8)
            with pytest.raises(RuntimeError):
                async with AsyncSession(engine) as s, s.begin():
                    task = await q.pop(session=s)
                    assert task is not None and await task.run() is True
                    raise RuntimeError("the caller rolls back")
            assert await effect_rows(engine) == [7, 70]
            assert await jobs(engine) == [("queued", 0, None)], "claim and outcome rolled back"

    asyncio.run(main())


# -- the handler's context -------------------------------------------------------


def test_current_async_session_commits_with_the_job_and_rolls_back_with_a_failure(
    async_url: str,
) -> None:
    attempts: list[int] = []

    async def main() -> None:
        async with queue_on(async_url) as q:

            @q.handler(retry_delay=0.05)
            async def flaky(n: int) -> None:
                task = sa_pgtq.current_task()
                attempts.append(task.attempts)
                await write_effect(n)
                await write_effect(n + task.attempts)
                if task.attempts == 1:
                    raise RuntimeError("first attempt fails")

            await flaky.push(10)
            await burst(q)
            assert attempts == [1]
            assert await effect_rows(q.engine) == [], "the failed attempt's writes rolled back"
            [(state, tries, error)] = await jobs(q.engine)
            assert (state, tries) == ("queued", 1) and "first attempt fails" in error
            await burst_until(q, lambda: len(attempts) == 2, 10)
            assert attempts == [1, 2]
            assert await effect_rows(q.engine) == [10, 12], "the retry's, committed once"
            assert await jobs(q.engine) == []

    asyncio.run(main())


@pytest.mark.parametrize(
    ("kind", "ask"),
    [
        ("async def", sa_pgtq.current_session),
        ("def", sa_pgtq.current_session),
        ("def", sa_pgtq.current_async_session),  # a thread, outside the job's transaction
    ],
)
def test_the_wrong_context_function_is_a_clear_error(
    async_url: str, kind: str, ask: Callable[[], object]
) -> None:
    def asks() -> None:
        ask()

    async def main() -> None:
        async with queue_on(async_url) as q:
            handler = q.handler(max_attempts=1)(handler_of(kind, asks))
            await handler.push()
            await burst(q)
            [(state, _, error)] = await jobs(q.engine)
            assert state == "failed" and "NoWorkerContextError" in error

    asyncio.run(main())


def test_context_functions_outside_a_task_are_a_clear_error() -> None:
    async def main() -> None:
        with pytest.raises(errors.NoWorkerContextError):
            sa_pgtq.current_async_session()

    asyncio.run(main())
    with pytest.raises(errors.NoWorkerContextError):
        sa_pgtq.current_async_session()


# -- the worker ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_forty_sleeping_tasks_run_side_by_side(async_url: str, kind: str) -> None:
    ran: list[int] = []

    async def nap_async(n: int) -> None:
        await asyncio.sleep(0.5)
        ran.append(n)

    def nap_in_a_thread(n: int) -> None:
        time.sleep(0.5)  # a thread each: no pool caps the worker's concurrency
        ran.append(n)

    async def main() -> float:
        async with queue_on(async_url) as q:
            nap = q.handler(name="nap")(nap_async if kind == "async def" else nap_in_a_thread)
            await nap.push_many([(n,) for n in range(40)])
            began = time.monotonic()
            await burst(q, concurrency=40)
            took = time.monotonic() - began
            assert await jobs(q.engine) == []
            return took

    took = asyncio.run(main())
    assert sorted(ran) == list(range(40)), "each ran once"
    assert took < 1.5, f"40 half-second sleeps took {took:.2f}s at concurrency 40"


def test_failures_retry_with_backoff_then_stay_failed(async_url: str) -> None:
    calls: list[float] = []

    async def main() -> None:
        async with queue_on(async_url) as q:

            @q.handler(max_attempts=3, retry_delay=0.2)
            async def flaky() -> None:
                calls.append(time.monotonic())
                await write_effect(len(calls))
                raise ValueError(f"failure {len(calls)}")

            job_id = await flaky.push()
            await burst_until(q, lambda: len(calls) == 3, 20)
            # Equal jitter: the n-th retry waits between half and all of 0.2 * 2**(n-1) s.
            assert calls[1] - calls[0] >= 0.1 and calls[2] - calls[1] >= 0.2
            assert await effect_rows(q.engine) == [], "a failing handler's writes roll back"
            (job,) = await q.failed()
            assert (job.id, job.state, job.attempts) == (job_id, "failed", 3)
            assert job.last_error is not None and "ValueError: failure 3" in job.last_error
            await burst(q)
            assert len(calls) == 3, "a failed task is kept, not retried"

    asyncio.run(main())


@pytest.mark.parametrize("hung_in", ["asyncio.sleep", "a query"])
@pytest.mark.parametrize("limit", ["handler", "worker"])
def test_a_run_past_its_timeout_is_cancelled_and_fails(
    async_url: str, limit: str, hung_in: str
) -> None:
    seen: list[str] = []

    async def main() -> None:
        async with queue_on(async_url) as q:

            @q.handler(max_attempts=1, timeout=0.2 if limit == "handler" else None)
            async def hangs(n: int) -> None:
                await write_effect(n)
                try:
                    if hung_in == "a query":
                        await sa_pgtq.current_async_session().execute(text("SELECT pg_sleep(5)"))
                    else:
                        await asyncio.sleep(5)
                except asyncio.CancelledError:
                    seen.append("cancelled")
                    raise
                seen.append("finished")

            @q.handler()
            async def quick(n: int) -> None:
                await write_effect(n)

            await hangs.push(1)
            await quick.options(delay=0.1).push(2)
            began = time.monotonic()
            await burst(q, timeout=0.2 if limit == "worker" else None)
            await asyncio.sleep(0.15)
            await burst(q)
            assert time.monotonic() - began < 1.5
            assert seen == ["cancelled"], "the coroutine was cancelled, not left running"
            [(state, attempts, error)] = await jobs(q.engine)
            assert (state, attempts) == ("failed", 1) and "TaskTimeoutError" in error
            assert await effect_rows(q.engine) == [2], "what the timed-out run wrote rolled back"

    asyncio.run(main())


def test_plain_defs_past_their_timeout_cost_a_thread_not_a_slot(async_url: str) -> None:
    # More hung handlers than a default thread pool has threads (32 at most).
    hung, quick = 33, 40
    started: list[int] = []
    release = threading.Event()

    def hangs(n: int) -> None:
        started.append(n)
        release.wait(3)

    async def main() -> None:
        async with queue_on(async_url) as q:
            await q.handler(max_attempts=1, timeout=0.2)(hangs).push_many(
                [(n,) for n in range(hung)]
            )
            await q.handler()(started.append).push(quick)
            await burst(q, concurrency=hung)
            assert sorted(started) == [*range(hung), quick], "each began, the quick one too"
            failed = await jobs(q.engine)
            assert len(failed) == hung
            assert all(state == "failed" and "TaskTimeoutError" in e for state, _, e in failed)

    began = time.monotonic()
    try:
        asyncio.run(main())
        took = time.monotonic() - began
    finally:
        release.set()
    assert took < 2, "the hung threads kept neither the worker nor asyncio.run from returning"


@pytest.mark.parametrize(
    ("run", "kind"),
    [("task.run()", "async def"), ("AsyncWorker", "async def"), ("AsyncWorker", "def")],
)
def test_a_running_task_keeps_its_lease(async_url: str, run: str, kind: str) -> None:
    runs: list[str] = []

    async def long_on_the_loop() -> None:
        runs.append("first")
        await asyncio.sleep(1.2)  # past three leases of 0.4 s

    def long_in_a_thread() -> None:
        runs.append("first")
        time.sleep(1.2)

    async def main() -> None:
        async with queue_on(async_url) as q:
            long = long_on_the_loop if kind == "async def" else long_in_a_thread
            await q.handler(name="long")(long).push()
            if run == "task.run()":
                task = await q.pop(lease=0.4)
                assert task is not None
                running = asyncio.ensure_future(task.run())
            else:
                running = asyncio.ensure_future(burst(q, lease=0.4))
            while not runs:
                await asyncio.sleep(0.01)
            other = sa_pgtq.AsyncQueue(q.engine, name="aio")

            @other.handler(name="long")
            async def long_elsewhere() -> None:
                runs.append("second")

            while not running.done():  # a worker beside it rescues whatever lease expires
                await burst(other, lease=0.4)
                await asyncio.sleep(0.1)
            assert await running in (True, None)
            assert runs == ["first"], "renewed while it ran: never taken over"
            assert await jobs(q.engine) == []

    asyncio.run(main())


@pytest.mark.parametrize("caller", ["task", "thread"])
def test_stop_finishes_tasks_in_hand_and_puts_the_rest_back(async_url: str, caller: str) -> None:
    started: list[int] = []
    finished: list[int] = []

    async def main() -> None:
        async with queue_on(async_url) as q:

            @q.handler()
            async def step(n: int) -> None:
                started.append(n)
                await asyncio.sleep(0.4)
                await write_effect(n)
                finished.append(n)

            await step.push_many([(n,) for n in range(8)])
            worker = sa_pgtq.AsyncWorker(q, concurrency=2, install_signal_handlers=False)
            running = asyncio.ensure_future(worker.run())
            while len(started) < 2:
                await asyncio.sleep(0.01)
            if caller == "task":
                asyncio.get_running_loop().call_soon(worker.stop)
            else:
                await asyncio.to_thread(worker.stop)
            await asyncio.wait_for(running, 3)
            assert sorted(started) == sorted(finished) == [0, 1], "in hand: finished"
            assert await effect_rows(q.engine) == [0, 1]
            assert await jobs(q.engine) == [("queued", 0, None)] * 6, "the rest untouched"

    asyncio.run(main())


@pytest.mark.parametrize("direction", ["sync pushes, async runs", "async pushes, sync runs"])
def test_a_queue_and_an_async_queue_share_their_tasks(async_url: str, direction: str) -> None:
    sync_engine = create_engine(make_url(async_url).set(drivername="postgresql+psycopg2"))
    sync_q = sa_pgtq.Queue(sync_engine, name="aio")

    @sync_q.handler(name="shared")
    def shared_sync(n: int) -> None:
        sa_pgtq.current_session().execute(effects.insert().values(n=n))

    async def main() -> None:
        async with queue_on(async_url) as q:

            @q.handler(name="shared")
            async def shared(n: int) -> None:
                await write_effect(n + 100)

            if direction == "sync pushes, async runs":
                await asyncio.to_thread(shared_sync.push, 1)
                await burst(q)
                expected = [101]
            else:
                await shared.push(1)
                worker = sa_pgtq.Worker(sync_q, install_signal_handlers=False)
                await asyncio.to_thread(worker.run, True)
                expected = [1]
            assert await effect_rows(q.engine) == expected
            assert await jobs(q.engine) == []

    try:
        asyncio.run(main())
    finally:
        sync_engine.dispose()
