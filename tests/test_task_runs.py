"""How a task runs: a popped task's lease, a task popped in the caller's transaction, timeouts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from helpers import fresh_tables, wait_for
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, select, text
from sqlalchemy.orm import Session

import sa_pgtq
from sa_pgtq import errors
from sa_pgtq.models import FAILED
from sa_pgtq.runner import Runner

metadata = MetaData()
writes = Table("run_writes", metadata, Column("n", Integer))
starts = Table("run_starts", metadata, Column("n", Integer), Column("by", String))


@pytest.fixture
def tq(clean: Engine) -> Iterator[sa_pgtq.Queue]:
    fresh_tables(clean, writes, starts)
    yield sa_pgtq.Queue(clean, name="runs")


def rows(engine: Engine, table: Table) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(*table.c))]


def job_state(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        sql = "SELECT state, attempts, last_error FROM sa_pgtq_jobs WHERE queue = 'runs'"
        return [tuple(r) for r in conn.execute(text(sql))]


def started(engine: Engine, n: int, by: str) -> None:
    with engine.begin() as conn:  # seen at once, whatever happens to the run
        conn.execute(starts.insert().values(n=n, by=by))


def test_a_popped_task_keeps_its_lease_while_it_runs(tq: sa_pgtq.Queue, clean: Engine) -> None:
    @tq.handler()
    def long(n: int) -> None:
        started(clean, n, "pop")
        time.sleep(2.5)  # past two leases of 1 s

    long.push(1)
    task = tq.pop(lease=1.0)
    assert task is not None
    runner = threading.Thread(target=task.run)
    runner.start()

    other = sa_pgtq.Queue(clean, name="runs")

    @other.handler(name="long")
    def long_elsewhere(n: int) -> None:
        started(clean, n, "worker")

    while runner.is_alive():  # a worker beside it rescues whatever lease expires
        sa_pgtq.Worker(other, lease=1.0, install_signal_handlers=False).run(burst=True)
        time.sleep(0.2)
    assert rows(clean, starts) == [(1, "pop")]
    assert job_state(clean) == []


def test_a_task_popped_in_the_callers_transaction_records_its_outcome_there(
    tq: sa_pgtq.Queue, clean: Engine
) -> None:
    @tq.handler(max_attempts=3)
    def work(n: int) -> None:
        sa_pgtq.current_session().execute(writes.insert().values(n=n))
        if n < 0:
            raise ValueError("negative")

    work.push(-1)
    with Session(clean) as s, s.begin():
        task = tq.pop(session=s)
        assert task is not None
        assert task.run() is False
    assert rows(clean, writes) == [], "the failed handler's write was undone"
    [(state, attempts, error)] = job_state(clean)
    assert (state, attempts) == ("queued", 1) and "ValueError: negative" in str(error)

    with clean.begin() as conn:
        conn.execute(text("DELETE FROM sa_pgtq_jobs"))
    work.push(7)
    with Session(clean) as s, s.begin():
        s.execute(writes.insert().values(n=70))
        task = tq.pop(session=s)
        assert task is not None and task.run() is True
    assert rows(clean, writes) == [(7,), (70,)]
    assert job_state(clean) == [], "removed when the caller committed"

    work.push(9)
    with clean.connect() as conn, conn.begin():  # a Core caller
        task = tq.pop(session=conn)
        assert task is not None and task.run() is True
    work.push(-9)
    with clean.connect() as conn, conn.begin():
        task = tq.pop(session=conn)
        assert task is not None and task.run() is False
    assert rows(clean, writes) == [(7,), (9,), (70,)]
    [(state, attempts, error)] = job_state(clean)
    assert (state, attempts) == ("queued", 1) and "ValueError: negative" in str(error)
    with clean.begin() as conn:
        conn.execute(text("DELETE FROM sa_pgtq_jobs"))

    work.push(8)
    with pytest.raises(RuntimeError), Session(clean) as s, s.begin():
        task = tq.pop(session=s)
        assert task is not None and task.run() is True
        raise RuntimeError("the caller rolls back")
    assert rows(clean, writes) == [(7,), (9,), (70,)]
    assert job_state(clean) == [("queued", 0, None)], "claim and outcome rolled back alike"


def test_a_run_past_its_timeout_fails_and_the_worker_runs_on(
    tq: sa_pgtq.Queue, clean: Engine
) -> None:
    finished_sleeping = threading.Event()

    @tq.handler(timeout=0.5, max_attempts=1)
    def hangs(n: int) -> None:
        sa_pgtq.current_session().execute(writes.insert().values(n=n))
        time.sleep(2.0)
        finished_sleeping.set()

    @tq.handler()
    def quick(n: int) -> None:
        started(clean, n, "quick")

    hangs.push(1)
    quick.options(delay=0.3).push(2)
    began = time.monotonic()
    sa_pgtq.Worker(tq, install_signal_handlers=False).run(burst=True)
    sa_pgtq.Worker(tq, install_signal_handlers=False).run(burst=True)
    assert time.monotonic() - began < 1.8 and not finished_sleeping.is_set()
    assert rows(clean, starts) == [(2, "quick")], "ran while the hung one still slept"
    [(state, attempts, error)] = job_state(clean)
    assert (state, attempts) == (FAILED, 1) and "TaskTimeoutError" in str(error)
    assert finished_sleeping.wait(5)
    time.sleep(0.2)
    assert rows(clean, writes) == [], "what it wrote never committed"


def test_a_workers_default_timeout_and_a_popped_tasks_timeout(
    tq: sa_pgtq.Queue, clean: Engine
) -> None:
    @tq.handler(max_attempts=5)
    def sleepy(seconds: float) -> None:
        time.sleep(seconds)

    sleepy.push(1.5)
    sa_pgtq.Worker(tq, timeout=0.3, install_signal_handlers=False).run(burst=True)
    [(state, attempts, error)] = job_state(clean)
    assert (state, attempts) == ("queued", 1) and "TaskTimeoutError" in str(error)

    @tq.handler(timeout=0.3)
    def sleepier(seconds: float) -> None:
        time.sleep(seconds)

    sleepier.push(1.5)
    task = tq.pop()
    assert task is not None and task.name == "sleepier"
    began = time.monotonic()
    assert task.run() is False
    assert time.monotonic() - began < 1.0
    with pytest.raises(errors.InvalidInputError):
        tq.handler(name="bad", timeout=0)
    with pytest.raises(errors.InvalidInputError):
        sa_pgtq.Worker(tq, timeout=-1)


def test_a_handler_runner_ends_when_idle_and_is_replaced() -> None:
    """Threads of finished workers must not leave their handler threads behind."""
    runner = Runner("idle-test", idle=0.1)
    call = runner.submit(lambda: 5)
    assert call is not None and call.result() == 5
    wait_for(lambda: "idle-test" not in [t.name for t in threading.enumerate()], 3)
    assert runner.submit(lambda: 1) is None, "its owner makes a new one"
    abandoned = Runner("abandoned-test")
    abandoned.abandon()
    assert abandoned.submit(lambda: 1) is None
