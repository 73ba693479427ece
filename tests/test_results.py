"""Retention and results: finished tasks kept with their results, `job()`, `result()`, pruning."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from datetime import timedelta
from types import ModuleType
from typing import Any

import pytest
from helpers import Spawn, count
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

import sa_pgtq
from sa_pgtq import errors
from sa_pgtq.worker.pruner import Pruner

STATES = "SELECT state FROM sa_pgtq_jobs ORDER BY id"


def burst(q: sa_pgtq.Queue, **options: Any) -> None:
    sa_pgtq.Worker(q, install_signal_handlers=False, **options).run(burst=True)


@pytest.fixture
def kept(clean: Engine) -> sa_pgtq.Queue:
    return sa_pgtq.Queue(clean, retention=timedelta(hours=1))


def test_without_retention_finished_jobs_go_and_result_says_why(
    q: sa_pgtq.Queue, clean: Engine
) -> None:
    @q.handler()
    def add(a: int, b: int) -> int:
        return a + b

    job_id = add.push(2, 3)
    assert q.job(job_id).state == "queued"  # type: ignore[union-attr]
    burst(q)
    assert q.job(job_id) is None, "deleted as it finished, as always"
    with pytest.raises(errors.ResultsNotKeptError, match="retention"):
        q.result(job_id)
    assert count(clean, "SELECT count(*) FROM sa_pgtq_jobs") == 0


def test_a_succeeded_task_is_kept_with_its_result(kept: sa_pgtq.Queue, clean: Engine) -> None:
    @kept.handler()
    def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    @kept.handler()
    def nothing() -> None:
        pass

    @kept.handler()
    def writes(n: int) -> int:
        sa_pgtq.current_session().execute(text("SELECT 1"))  # completes with the session
        return n * 2

    ids = [add.push(2, 3), nothing.push(), writes.push(21)]
    burst(kept)
    jobs = [kept.job(job_id) for job_id in ids]
    assert [job.state for job in jobs] == ["succeeded"] * 3  # type: ignore[union-attr]
    assert all(job.finished_at is not None for job in jobs)  # type: ignore[union-attr]
    assert [kept.result(job_id, timeout=10) for job_id in ids] == [{"sum": 5}, None, 42]
    assert kept.job(ids[0]).locked_by is None  # type: ignore[union-attr]


def test_failed_and_unstorable_results_raise_job_failed(kept: sa_pgtq.Queue, clean: Engine) -> None:
    @kept.handler(max_attempts=1)
    def boom() -> None:
        raise ValueError("the card was declined")

    @kept.handler(max_attempts=5)
    def odd() -> object:
        return {1, 2}  # a set: not JSON

    failed, unstorable = boom.push(), odd.push()
    burst(kept)
    with pytest.raises(errors.JobFailedError, match="the card was declined") as raised:
        kept.result(failed, timeout=10)
    assert raised.value.state == "failed" and "ValueError" in (raised.value.last_error or "")
    assert kept.job(failed).finished_at is not None  # type: ignore[union-attr]
    with pytest.raises(errors.JobFailedError, match="cannot be kept as JSON"):
        kept.result(unstorable, timeout=10)
    assert kept.job(unstorable).attempts == 1, "not retried: it would fail the same way"  # type: ignore[union-attr]
    assert kept.requeue_failed([failed]) == 1
    assert kept.job(failed).finished_at is None  # type: ignore[union-attr]


def test_popped_tasks_keep_their_results_too(kept: sa_pgtq.Queue, clean: Engine) -> None:
    @kept.handler()
    def square(n: int) -> int:
        return n * n

    alone, in_session = square.push(3), square.push(4)
    task = kept.pop()
    assert task is not None and task.run()
    with Session(clean) as s, s.begin():
        task = kept.pop(s)
        assert task is not None and task.run()
    assert kept.result(alone, 10) == 9 and kept.result(in_session, 10) == 16


def test_result_times_out_and_refuses_bad_ids(kept: sa_pgtq.Queue, clean: Engine) -> None:
    @kept.handler()
    def later() -> None:
        pass

    job_id = later.options(delay=60).push()
    started = time.monotonic()
    with pytest.raises(errors.ResultTimeoutError) as raised:
        kept.result(job_id, timeout=0.3)
    assert isinstance(raised.value, TimeoutError)
    assert 0.3 <= time.monotonic() - started < 2
    with pytest.raises(errors.JobNotFoundError):
        kept.result(job_id + 1000)
    for bad_id, bad_timeout in [("1", None), (job_id, -1), (job_id, math.nan)]:
        with pytest.raises(errors.InvalidInputError):
            kept.result(bad_id, timeout=bad_timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize("retention", [0, -5, math.inf, "1 day", True, timedelta(0)])
def test_bad_retention_is_refused(clean: Engine, retention: Any) -> None:
    with pytest.raises(errors.InvalidInputError, match="retention"):
        sa_pgtq.Queue(clean, retention=retention)


def test_result_is_woken_by_the_completion_not_by_polling(clean: Engine) -> None:
    q = sa_pgtq.Queue(clean, retention=3600, poll_interval=30)

    @q.handler()
    def add(a: int, b: int) -> int:
        return a + b

    job_id = add.push(20, 22)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(q.result(job_id, timeout=20)))
    waiter.start()
    time.sleep(0.3)  # it is waiting
    burst(q)
    finished = time.monotonic()
    waiter.join(20)
    assert got == [42]
    assert time.monotonic() - finished < 1.5, "woken by NOTIFY, not by the 30 s poll"


@pytest.mark.slow
def test_a_worker_process_finishing_a_job_wakes_result(
    workerapp: ModuleType, app: Engine, spawn: Spawn, db_url: str
) -> None:
    job_id = workerapp.add.push(2, 3)
    woken: list[tuple[Any, float]] = []

    def wait() -> None:
        woken.append((workerapp.kept.result(job_id, timeout=60), time.time()))

    waiter = threading.Thread(target=wait)
    waiter.start()
    worker = spawn(db_url, "--burst", app="workerapp:kept")
    assert worker.wait(60) == 0
    waiter.join(60)
    job = workerapp.kept.job(job_id)
    assert woken and woken[0][0] == 5
    assert woken[0][1] - job.finished_at.timestamp() < 1.5, "woken by NOTIFY (poll: 30 s)"


def test_the_pruner_deletes_old_finished_jobs_in_batches_and_keeps_failed(
    clean: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = sa_pgtq.Queue(clean, retention=timedelta(seconds=1))

    @q.handler(max_attempts=1)
    def run(fail: bool) -> None:
        if fail:
            raise RuntimeError("kept as failed")

    run.push_many([(False,)] * 25 + [(True,)])
    burst(q)
    assert count(clean, "SELECT count(*) FROM sa_pgtq_jobs") == 26
    monkeypatch.setattr("sa_pgtq.worker.pruner.PRUNE_BATCH", 10)
    pruner = Pruner(q.backend)
    pruner.tick()
    assert count(clean, "SELECT count(*) FROM sa_pgtq_jobs") == 26, "not a second old yet"
    time.sleep(1.1)
    pruner.tick()  # three batches of at most 10
    assert [row for row in _states(clean)] == ["failed"]


def _states(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text(STATES)).scalars())


def test_a_running_worker_prunes(clean: Engine) -> None:
    q = sa_pgtq.Queue(clean, retention=0.5)

    @q.handler()
    def noop() -> None:
        pass

    noop.push_many([()] * 5)
    worker = sa_pgtq.Worker(q, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while count(clean, "SELECT count(*) FROM sa_pgtq_jobs") and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        worker.stop()
        thread.join(10)
    assert _states(clean) == []


def test_async_results(async_url: str) -> None:
    async def main() -> None:
        engine = create_async_engine(async_url)
        try:
            q = sa_pgtq.AsyncQueue(engine, retention=timedelta(minutes=5), poll_interval=30)

            @q.handler()
            async def add(a: int, b: int) -> int:
                return a + b

            @q.handler(max_attempts=1)
            async def boom() -> None:
                raise RuntimeError("async failure")

            @q.handler()
            def plain(n: int) -> list[int]:
                return [n]

            ok, bad, threaded = await add.push(1, 2), await boom.push(), await plain.push(7)
            waiting = asyncio.ensure_future(q.result(ok, timeout=20))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            await sa_pgtq.AsyncWorker(q, install_signal_handlers=False).run(burst=True)
            assert await asyncio.wait_for(waiting, 2) == 3, "woken by NOTIFY"
            assert await q.result(threaded, 10) == [7]
            with pytest.raises(errors.JobFailedError, match="async failure"):
                await q.result(bad, 10)
            job = await q.job(ok)
            assert job is not None and job.state == "succeeded" and job.result == 3
            with pytest.raises(errors.ResultTimeoutError):
                await q.result(await add.options(delay=60).push(0, 0), timeout=0.2)
            unkept = sa_pgtq.AsyncQueue(engine)
            with pytest.raises(errors.ResultsNotKeptError):
                await unkept.result(ok)
        finally:
            await engine.dispose()

    asyncio.run(main())
