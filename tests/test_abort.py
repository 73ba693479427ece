"""`abort()`: a queued job is cancelled at once, a running one's handler is told within a
second (by NOTIFY, the heartbeat as the fallback); `cancel()`'s retention.

Sync tests run on each sync driver (`q`), async ones on each async driver (`async_url`).
"""

from __future__ import annotations

import asyncio
import contextlib
import select as io_select
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
from helpers import engine_for, fresh_tables, wait_for
from sqlalchemy import Column, Engine, Integer, MetaData, Table, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import sa_pgtq
from sa_pgtq import errors, schema

writes = Table("abort_writes", MetaData(), Column("n", Integer))
KEPT = timedelta(hours=1)
#: The longest an abort may take to reach a running handler by NOTIFY.
DELIVERY = 1.0


def job(engine: Engine, job_id: int) -> tuple[Any, ...] | None:
    """(state, attempts, finished, abort requested) of a job; None once deleted."""
    sql = text(
        "SELECT state, attempts, finished_at IS NOT NULL, abort_requested_at IS NOT NULL "
        "FROM sa_pgtq_jobs WHERE id = :id"
    )
    with engine.connect() as conn:
        row = conn.execute(sql, {"id": job_id}).first()
    return None if row is None else tuple(row)


def written(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(writes)).scalar_one())


@contextlib.contextmanager
def working(worker: sa_pgtq.Worker) -> Iterator[None]:
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        yield
    finally:
        worker.stop()
        thread.join(30)
        assert not thread.is_alive()


@pytest.fixture
def kq(clean: Engine) -> sa_pgtq.Queue:
    """A queue that keeps finished jobs, and an empty table for its handlers' writes."""
    fresh_tables(clean, writes)
    return sa_pgtq.Queue(clean, retention=KEPT)


# -- queued jobs, and what cannot be aborted -------------------------------------------


@pytest.mark.parametrize("retention", [None, KEPT])
def test_a_queued_job_is_cancelled_at_once_and_never_runs(
    clean: Engine, retention: timedelta | None
) -> None:
    q = sa_pgtq.Queue(clean, retention=retention)
    ran: list[int] = []

    @q.handler()
    def work(n: int) -> None:
        ran.append(n)

    aborted, other = work.push(1), work.push(2)
    assert q.abort(aborted) is True
    assert job(clean, aborted) == (None if retention is None else ("cancelled", 0, True, False))
    assert q.abort(aborted) is False, "finished"
    sa_pgtq.Worker(q, install_signal_handlers=False).run(burst=True)
    assert ran == [2]
    assert job(clean, other) == (None if retention is None else ("succeeded", 1, True, False))


def test_abort_is_false_for_an_absent_finished_or_other_queues_job(
    q: sa_pgtq.Queue, clean: Engine
) -> None:
    @q.handler()
    def work() -> None: ...

    assert q.abort(123456) is False
    elsewhere = sa_pgtq.Queue(clean, name="elsewhere")
    theirs = elsewhere.handler(name="work")(lambda: None).push()
    assert q.abort(theirs) is False
    assert job(clean, theirs) == ("queued", 0, False, False)
    for state in ("succeeded", "failed", "cancelled"):
        done = work.push()
        with clean.begin() as conn:
            sql = "UPDATE sa_pgtq_jobs SET state = :state WHERE id = :id"
            conn.execute(text(sql), {"state": state, "id": done})
        assert q.abort(done) is False, state
        assert job(clean, done) == (state, 0, False, False)


@pytest.mark.parametrize("bad", ["1", 1.0, True, None, 2**63])
def test_a_bad_id_is_refused_before_anything_is_written(q: sa_pgtq.Queue, bad: Any) -> None:
    queued = q.enqueue("t", 1)
    with pytest.raises(errors.InvalidInputError):
        q.abort(bad)
    assert [m.id for m in q.list("t")] == [queued]


def test_an_abort_outlives_a_lost_run_and_the_next_claim_cancels_it(
    kq: sa_pgtq.Queue, clean: Engine
) -> None:
    ran: list[int] = []

    @kq.handler()
    def work(n: int) -> None:
        ran.append(n)

    job_id = work.push(1)
    popped = kq.pop(lease=0.2)  # its worker dies before it is told
    assert popped is not None and kq.abort(job_id) is True
    time.sleep(0.3)
    with clean.begin() as conn:
        assert sa_pgtq.gateway.rescue_expired(conn, kq.backend.statements, kq.name) == 1
    sa_pgtq.Worker(kq, install_signal_handlers=False).run(burst=True)
    assert ran == [], "never run again"
    assert job(clean, job_id) == ("cancelled", 2, True, True)
    assert kq.requeue_failed() == 0


def test_requeue_clears_an_abort_request_of_a_failed_job(kq: sa_pgtq.Queue, clean: Engine) -> None:
    ran: list[int] = []

    @kq.handler()
    def work(n: int) -> None:
        ran.append(n)

    job_id = work.push(1)
    with clean.begin() as conn:  # failed while its abort was on its way
        conn.execute(
            text(
                "UPDATE sa_pgtq_jobs SET state = 'failed', abort_requested_at = now() "
                "WHERE id = :id"
            ),
            {"id": job_id},
        )
    assert kq.requeue_failed([job_id]) == 1
    sa_pgtq.Worker(kq, install_signal_handlers=False).run(burst=True)
    assert ran == [1] and kq.result(job_id, 10) is None


def test_abort_requested_outside_a_handler_raises() -> None:
    with pytest.raises(errors.NoWorkerContextError):
        sa_pgtq.abort_requested()


# -- running sync handlers -------------------------------------------------------------


def stubborn(q: sa_pgtq.Queue, engine: Engine) -> tuple[Any, threading.Event, list[float]]:
    """A handler that writes, then loops until it sees its abort; when it saw it."""
    started, seen = threading.Event(), []

    @q.handler()
    def loop() -> str:
        sa_pgtq.current_session().execute(writes.insert().values(n=1))
        started.set()
        deadline = time.monotonic() + 30
        while not sa_pgtq.abort_requested():
            assert time.monotonic() < deadline, "never told"
            time.sleep(0.05)
        seen.append(time.monotonic())
        return "returned all the same"

    return loop, started, seen


def test_a_running_sync_handler_is_told_by_notify_within_a_second(
    kq: sa_pgtq.Queue, clean: Engine
) -> None:
    loop, started, seen = stubborn(kq, clean)
    job_id = loop.push()
    # The heartbeat's fallback is 20 s away: what arrives within a second came by NOTIFY.
    with working(sa_pgtq.Worker(kq, lease=60, install_signal_handlers=False)):
        assert started.wait(10)
        asked = time.monotonic()
        assert kq.abort(job_id) is True
        assert kq.abort(job_id) is True, "still running: asked again"
        wait_for(lambda: job(clean, job_id) != ("running", 1, False, True), 5)
    assert seen[0] - asked < DELIVERY
    assert job(clean, job_id) == ("cancelled", 1, True, True), "not retried"
    assert written(clean) == 0, "its writes rolled back"


def test_without_a_retention_an_aborted_job_is_deleted(q: sa_pgtq.Queue, clean: Engine) -> None:
    fresh_tables(clean, writes)
    loop, started, seen = stubborn(q, clean)
    job_id = loop.push()
    with working(sa_pgtq.Worker(q, lease=60, install_signal_handlers=False)):
        assert started.wait(10)
        assert q.abort(job_id) is True
        wait_for(lambda: job(clean, job_id) is None, 5)
    assert seen and written(clean) == 0


def test_the_heartbeat_delivers_an_abort_whose_notify_was_lost(
    kq: sa_pgtq.Queue, clean: Engine
) -> None:
    loop, started, seen = stubborn(kq, clean)
    job_id = loop.push()
    lease = 1.5
    with working(sa_pgtq.Worker(kq, lease=lease, install_signal_handlers=False)):
        assert started.wait(10)
        asked = time.monotonic()
        with clean.begin() as conn:  # requested without a NOTIFY
            conn.execute(
                text("UPDATE sa_pgtq_jobs SET abort_requested_at = now() WHERE id = :id"),
                {"id": job_id},
            )
        wait_for(lambda: bool(seen), 5)
        wait_for(lambda: job(clean, job_id) == ("cancelled", 1, True, True), 5)
    assert seen[0] - asked < lease / 3 + 0.5


def test_a_popped_task_is_told_by_its_heartbeat(kq: sa_pgtq.Queue, clean: Engine) -> None:
    loop, started, seen = stubborn(kq, clean)
    job_id = loop.push()
    lease = 1.5
    task = kq.pop(lease=lease)
    assert task is not None
    outcome: list[bool] = []
    runner = threading.Thread(target=lambda: outcome.append(task.run()))
    runner.start()
    assert started.wait(10)
    asked = time.monotonic()
    assert kq.abort(job_id) is True
    runner.join(10)
    assert outcome == [False]
    assert seen[0] - asked < lease / 3 + 0.5
    assert job(clean, job_id) == ("cancelled", 1, True, True)
    assert written(clean) == 0


# -- cancel() and the FINISHED notification ----------------------------------------------


def finished_notifications(db_url: str) -> Any:
    """A psycopg2 connection LISTENing on sa_pgtq's channel."""
    raw: Any = engine_for(db_url, "psycopg2").raw_connection()
    raw.driver_connection.autocommit = True
    raw.cursor().execute(f"LISTEN {schema.CHANNEL}")
    return raw


def received(raw: Any, seconds: float = 5.0) -> list[str]:
    conn = raw.driver_connection
    io_select.select([conn], [], [], seconds)
    conn.poll()
    payloads = [n.payload for n in conn.notifies]
    conn.notifies.clear()
    return payloads


def test_cancel_with_a_retention_keeps_the_job_and_wakes_result_waiters(
    kq: sa_pgtq.Queue, clean: Engine, db_url: str
) -> None:
    listening = finished_notifications(db_url)
    try:
        job_id = kq.enqueue("t", 1)
        received(listening, 0.5)  # the enqueue's own
        assert kq.cancel(job_id) is True
        assert job(clean, job_id) == ("cancelled", 0, True, False)
        assert received(listening) == ['["sa_pgtq_jobs", "default", "finished", ""]']
        assert kq.cancel(job_id) is False
        assert kq.abort(job_id) is False
    finally:
        listening.close()


def test_aborting_a_queued_job_wakes_result_waiters(
    q: sa_pgtq.Queue, clean: Engine, db_url: str
) -> None:
    listening = finished_notifications(db_url)
    try:
        job_id = q.enqueue("t", 1)
        received(listening, 0.5)
        assert q.abort(job_id) is True
        assert job(clean, job_id) is None
        assert received(listening) == ['["sa_pgtq_jobs", "default", "finished", ""]']
    finally:
        listening.close()


# -- the asyncio API -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def async_queue(url: str, **options: Any) -> AsyncIterator[sa_pgtq.AsyncQueue]:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(writes.drop, checkfirst=True)
            await conn.run_sync(writes.create)
        yield sa_pgtq.AsyncQueue(engine, retention=KEPT, **options)
    finally:
        await engine.dispose()


async def async_job(engine: AsyncEngine, job_id: int) -> tuple[Any, ...] | None:
    sql = text(
        "SELECT state, attempts, finished_at IS NOT NULL, "
        "(SELECT count(*) FROM abort_writes) FROM sa_pgtq_jobs WHERE id = :id"
    )
    async with engine.connect() as conn:
        row = (await conn.execute(sql, {"id": job_id})).first()
    return None if row is None else tuple(row)


async def abort_until_cancelled(aq: sa_pgtq.AsyncQueue, job_id: int, asked: float) -> None:
    """Abort a running job, and wait (5 s at most) until it ended cancelled, its write undone."""
    assert await aq.abort(job_id) is True
    while await async_job(aq.engine, job_id) != ("cancelled", 1, True, 0):
        assert time.monotonic() - asked < 5
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def async_working(aq: sa_pgtq.AsyncQueue, **options: Any) -> AsyncIterator[None]:
    worker = sa_pgtq.AsyncWorker(aq, install_signal_handlers=False, **options)
    running = asyncio.ensure_future(worker.run())
    try:
        yield
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)


def test_async_abort_of_queued_absent_and_bad_ids(async_url: str) -> None:
    async def main() -> None:
        async with async_queue(async_url) as aq:
            queued = await aq.enqueue("t", 1)
            assert await aq.abort(queued) is True
            assert await async_job(aq.engine, queued) == ("cancelled", 0, True, 0)
            assert await aq.abort(queued) is False
            assert await aq.abort(123456) is False
            with pytest.raises(errors.InvalidInputError):
                await aq.abort("1")  # type: ignore[arg-type]

    asyncio.run(main())


@pytest.mark.parametrize("timeout", [None, 60.0])  # awaited in its slot, or as a task
def test_a_running_async_handler_is_cancelled_within_a_second(
    async_url: str, timeout: float | None
) -> None:
    async def main() -> float:
        async with async_queue(async_url) as aq:
            started, cancelled = asyncio.Event(), []

            @aq.handler(timeout=timeout)
            async def sleepy() -> None:
                await sa_pgtq.current_async_session().execute(writes.insert().values(n=1))
                started.set()
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    cancelled.append(time.monotonic())
                    raise

            job_id = await sleepy.push()
            async with async_working(aq, lease=60):  # the heartbeat is 20 s away
                await asyncio.wait_for(started.wait(), 10)
                asked = time.monotonic()
                await abort_until_cancelled(aq, job_id, asked)
            return cancelled[0] - asked

    assert asyncio.run(main()) < DELIVERY


def test_a_plain_def_handler_of_an_async_queue_sees_abort_requested(async_url: str) -> None:
    async def main() -> float:
        async with async_queue(async_url) as aq:
            started, seen = threading.Event(), []

            @aq.handler()
            def looping() -> None:
                started.set()
                while not sa_pgtq.abort_requested():
                    time.sleep(0.05)
                seen.append(time.monotonic())

            job_id = await looping.push()
            async with async_working(aq, lease=60):
                deadline = time.monotonic() + 10
                while not started.is_set():
                    assert time.monotonic() < deadline, "the handler never started"
                    await asyncio.sleep(0.02)
                asked = time.monotonic()
                await abort_until_cancelled(aq, job_id, asked)
            return seen[0] - asked

    assert asyncio.run(main()) < DELIVERY


def test_an_async_handler_that_swallows_the_cancellation_still_ends_cancelled(
    async_url: str,
) -> None:
    async def main() -> None:
        async with async_queue(async_url) as aq:
            started, ran = asyncio.Event(), []

            @aq.handler()
            async def stubborn() -> str:
                started.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(30)
                await asyncio.sleep(0.05)  # the slot's task is not left cancelled
                return "done anyway"

            @aq.handler()
            async def after() -> None:
                await asyncio.sleep(0.01)
                ran.append(1)

            job_id = await stubborn.push()
            async with async_working(aq, lease=60):
                await asyncio.wait_for(started.wait(), 10)
                assert await aq.abort(job_id) is True
                await after.push()
                for _ in range(100):
                    if ran:
                        break
                    await asyncio.sleep(0.05)
            assert ran == [1]
            assert await async_job(aq.engine, job_id) == ("cancelled", 1, True, 0)

    asyncio.run(main())
