"""A worker under faults of its own process: a pool with no free slot, leases under load."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
from helpers import fresh_tables
from sqlalchemy import Column, Engine, Integer, MetaData, Table, create_engine, func, select

import sa_pgtq

metadata = MetaData()
runs = Table("fault_runs", metadata, Column("n", Integer), Column("worker", Integer))
started_runs = Table("fault_starts", metadata, Column("n", Integer), Column("worker", Integer))


@pytest.fixture
def small_pool(clean: Engine) -> Iterator[Engine]:
    """The test database behind a pool of `pool_size=1`, which gives up after 0.2 s."""
    fresh_tables(clean, runs)
    engine = create_engine(clean.url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    yield engine
    engine.dispose()


def ran(engine: Engine, table: Table = runs) -> tuple[int, int]:
    """(rows, distinct jobs) in `table`."""
    with engine.connect() as conn:
        row = conn.execute(select(func.count(), func.count(table.c.n.distinct()))).one()
    return row[0], row[1]


def test_pool_exhaustion_does_not_end_the_worker(small_pool: Engine, clean: Engine) -> None:
    q = sa_pgtq.Queue(small_pool, name="starved")

    @q.handler()
    def record(n: int) -> None:
        sa_pgtq.current_session().execute(runs.insert().values(n=n, worker=1))
        time.sleep(0.05)  # holds the only pooled connection while the others claim

    record.push_many([(n,) for n in range(20)])
    worker = sa_pgtq.Worker(q, concurrency=4, install_signal_handlers=False)
    worker.run(burst=True)  # returned: no producer thread died on the pool's TimeoutError
    sa_pgtq.Worker(q, install_signal_handlers=False).run(burst=True)  # what a loser left
    assert ran(clean) == (20, 20)


def test_heartbeat_survives_handlers_holding_every_pooled_connection(clean: Engine) -> None:
    """Two long tasks hold both pooled connections past their lease; nobody runs them twice."""
    fresh_tables(clean, runs, started_runs)
    busy = create_engine(clean.url, pool_size=2, max_overflow=0, pool_timeout=0.2)
    q = sa_pgtq.Queue(busy, name="busy")
    started = threading.Barrier(3)

    @q.handler()
    def hold(n: int) -> None:
        sa_pgtq.current_session().execute(runs.insert().values(n=n, worker=1))
        with clean.begin() as conn:  # a start is a start, even if the session rolls back
            conn.execute(started_runs.insert().values(n=n, worker=1))
        if n < 2:
            started.wait(10)
            time.sleep(3.5)  # over three leases of 1 s

    hold.push_many([(0,), (1,)])
    first = sa_pgtq.Worker(q, concurrency=2, lease=1.0, install_signal_handlers=False)
    thread = threading.Thread(target=first.run, kwargs={"burst": True})
    thread.start()
    started.wait(10)

    # A second worker (its own pool) would rescue and rerun tasks whose lease expired.
    other_engine = create_engine(clean.url)
    other = sa_pgtq.Queue(other_engine, name="busy")

    @other.handler(name="hold")
    def hold_elsewhere(n: int) -> None:
        with other_engine.begin() as conn:
            conn.execute(started_runs.insert().values(n=n, worker=2))

    second = sa_pgtq.Worker(other, lease=1.0, install_signal_handlers=False)
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        second.run(burst=True)
        time.sleep(0.2)
    thread.join(20)
    assert not thread.is_alive()
    assert ran(clean) == (2, 2), "both committed"
    assert ran(clean, started_runs) == (2, 2), "each started once: the heartbeat kept the leases"
    busy.dispose()
    other_engine.dispose()


def test_no_lost_lease_warning_in_a_fault_free_run(
    clean: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    q = sa_pgtq.Queue(clean, name="calm")

    @q.handler()
    def noop(n: int) -> None:
        pass

    noop.push_many([(n,) for n in range(4000)])
    # A short lease makes the heartbeat tick often, racing the batched acks.
    worker = sa_pgtq.Worker(q, concurrency=2, lease=0.15, install_signal_handlers=False)
    with caplog.at_level(logging.WARNING, logger="sa_pgtq"):
        worker.run(burst=True)
    assert [r.getMessage() for r in caplog.records if "lease" in r.getMessage()] == []
