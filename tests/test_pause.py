"""Pausing a queue: stored in the database, honoured by every worker's next claim."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from helpers import wait_for
from sqlalchemy import Engine, event, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

import sa_pgtq


@pytest.fixture
def unpaused(clean: Engine) -> Engine:
    """The engine, no queue of the default table paused."""
    with clean.begin() as conn:
        conn.execute(text("TRUNCATE sa_pgtq_jobs_queues"))
    return clean


def test_pause_resume_and_is_paused(unpaused: Engine) -> None:
    q = sa_pgtq.Queue(unpaused)
    other = sa_pgtq.Queue(unpaused, name="other")

    @q.handler()
    def job() -> None: ...

    @other.handler(name="job")
    def other_job() -> None: ...

    assert q.is_paused() is False
    q.pause()
    q.pause()  # again: no error, still paused
    assert q.is_paused() is True and other.is_paused() is False
    job_id = job.push()  # pushing still works
    assert q.pop() is None, "a paused queue hands out nothing"
    other_job.push()
    popped = other.pop()
    assert popped is not None and popped.run(), "another queue of the table runs on"
    q.resume()
    q.resume()  # again: no error
    assert q.is_paused() is False
    task = q.pop()
    assert task is not None and task.id == job_id


def test_pause_in_the_callers_transaction(unpaused: Engine) -> None:
    q = sa_pgtq.Queue(unpaused)
    with Session(unpaused) as session:
        q.pause(session)
        assert q.is_paused(session) is True
        assert q.is_paused() is False, "not before the caller commits"
        session.rollback()
    assert q.is_paused() is False
    with Session(unpaused) as session, session.begin():
        q.pause(session)
    assert q.is_paused() is True


def test_async_pause_resume_and_is_paused(async_url: str) -> None:
    async def main() -> None:
        engine = create_async_engine(async_url)
        try:
            q = sa_pgtq.AsyncQueue(engine, name="aio_pause")

            @q.handler()
            async def job() -> None: ...

            await q.resume()  # leave no pause of an earlier run behind
            assert await q.is_paused() is False
            await q.pause()
            assert await q.is_paused() is True
            job_id = await job.push()
            assert await q.pop() is None
            await q.resume()
            assert await q.is_paused() is False
            task = await q.pop()
            assert task is not None and task.id == job_id
            assert await task.run()
        finally:
            await engine.dispose()

    asyncio.run(main())


# -- a running worker ---------------------------------------------------------------


class Runs:
    """When each pushed task ran (monotonic), as the handler records it."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}

    def record(self, n: int) -> None:
        self.at[n] = time.monotonic()


def test_a_running_worker_stops_claiming_at_once_and_resumes_within_a_second(
    unpaused: Engine,
) -> None:
    q = sa_pgtq.Queue(unpaused, name="paused_sync")
    runs = Runs()
    record = q.handler(name="record")(runs.record)
    worker = sa_pgtq.Worker(q, concurrency=2, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        record.push(0)
        wait_for(lambda: 0 in runs.at, 5)
        controller = sa_pgtq.Queue(unpaused, name="paused_sync")  # connections of its own
        controller.pause()
        record.push(1)
        time.sleep(2)
        assert 1 not in runs.at, "a paused queue's task ran"
        resumed = time.monotonic()
        controller.resume()
        wait_for(lambda: 1 in runs.at, 5)
        assert runs.at[1] - resumed < 1.0, "resume woke the idle worker at once"
    finally:
        worker.stop()
        thread.join(10)


def test_a_running_async_worker_stops_claiming_at_once_and_resumes_within_a_second(
    async_url: str,
) -> None:
    runs = Runs()

    async def main() -> None:
        engine = create_async_engine(async_url)
        try:
            q = sa_pgtq.AsyncQueue(engine, name="paused_async")
            record = q.handler(name="record")(runs.record)
            await q.resume()
            worker = sa_pgtq.AsyncWorker(q, concurrency=4, install_signal_handlers=False)
            running = asyncio.ensure_future(worker.run())
            await record.push(0)
            while 0 not in runs.at:
                await asyncio.sleep(0.02)
            controller = sa_pgtq.AsyncQueue(engine, name="paused_async")
            await controller.pause()
            await record.push(1)
            await asyncio.sleep(2)
            assert 1 not in runs.at, "a paused queue's task ran"
            resumed = time.monotonic()
            await controller.resume()
            while 1 not in runs.at and time.monotonic() - resumed < 5:
                await asyncio.sleep(0.02)
            assert runs.at[1] - resumed < 1.0, "resume woke the idle worker at once"
            worker.stop()
            await asyncio.wait_for(running, 10)
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_idle_workers_of_a_paused_queue_do_not_spin(unpaused: Engine) -> None:
    q = sa_pgtq.Queue(unpaused, name="paused_idle")

    @q.handler()
    def job() -> None: ...

    claims = 0

    def count_claims(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        nonlocal claims
        claims += "SKIP LOCKED" in statement

    q.pause()
    # Due now, and coming due one after another while it is paused: a worker that
    # counted them as due would wake and claim again and again.
    job.push()
    for n in range(1, 10):
        job.options(delay=n * 0.2).push()
    worker = sa_pgtq.Worker(q, concurrency=2, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        time.sleep(0.3)  # its start-up claims
        event.listen(unpaused, "before_cursor_execute", count_claims)
        try:
            time.sleep(2)
        finally:
            event.remove(unpaused, "before_cursor_execute", count_claims)
        assert claims <= 2, f"{claims} claims in 2 s while paused"
        q.resume()
        wait_for(lambda: _waiting(unpaused) == 0, 5)
    finally:
        worker.stop()
        thread.join(10)


def _waiting(engine: Engine) -> int:
    with engine.connect() as conn:
        sql = "SELECT count(*) FROM sa_pgtq_jobs WHERE queue = 'paused_idle'"
        return int(conn.execute(text(sql)).scalar_one())
