"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from sqlalchemy import Engine, Table, create_engine, func, select, text
from sqlalchemy.engine import make_url

import sa_pgtq

DRIVERS = ("psycopg2", "psycopg")
#: The asyncio API's drivers: every async test runs on each.
ASYNC_DRIVERS = ("asyncpg", "psycopg")

#: Starts `sa-pgtq worker workerapp:q` on a database URL (the `spawn` fixture).
Spawn = Callable[..., "subprocess.Popen[bytes]"]


def fresh_tables(engine: Engine, *tables: Table) -> None:
    """The application's own tables, empty (dropped if a previous test left them)."""
    with engine.begin() as conn:
        for table in tables:
            table.drop(conn, checkfirst=True)
            table.create(conn)


def engine_for(db_url: str, driver: str) -> Engine:
    return create_engine(make_url(db_url).set(drivername=f"postgresql+{driver}"))


def async_url_for(db_url: str, driver: str) -> str:
    """The test database's URL for an async engine on `driver`."""
    return make_url(db_url).set(drivername=f"postgresql+{driver}").render_as_string(False)


def wait_ready(proc: subprocess.Popen[bytes], seconds: float = 30) -> None:
    """Until the worker has installed its signal handlers (it logs "worker ready")."""
    path = Path(proc.log_path)  # type: ignore[attr-defined]
    wait_for(lambda: b"worker ready" in path.read_bytes(), seconds)


def count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting after {seconds}s")
        time.sleep(0.05)


def next_within(stream: Iterator[Any], seconds: float) -> Any:
    """next(stream), or fail after `seconds` instead of hanging the suite."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(next(stream)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"still blocked after {seconds}s"
    return result[0]


def dequeue_concurrently(q: sa_pgtq.Queue, tag: str, consumers: int) -> list[Any]:
    """Everything `consumers` threads get from `with q.dequeue(tag)` until it runs dry."""
    seen: list[Any] = []
    lock = threading.Lock()
    barrier = threading.Barrier(consumers)

    def consume() -> None:
        barrier.wait()
        while True:
            with q.dequeue(tag) as data:
                if data is None:
                    return
                with lock:
                    seen.append(data)

    threads = [threading.Thread(target=consume) for _ in range(consumers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return seen


def run_record_jobs(
    workerapp: ModuleType, app: Engine, spawn: Spawn, url: str, jobs: int, workers: int, *opts: str
) -> None:
    """Push `jobs` record jobs, drain them with `workers` burst workers, check exactly once."""
    workerapp.record.push_many([(i,) for i in range(jobs)])
    procs = [spawn(url, "--burst", *opts) for _ in range(workers)]
    for proc in procs:
        assert proc.wait(120) == 0
    with app.connect() as conn:
        done = conn.execute(
            select(func.count(), func.count(workerapp.effects.c.n.distinct()))
        ).one()
    assert tuple(done) == (jobs, jobs), "every job ran, and none twice"
