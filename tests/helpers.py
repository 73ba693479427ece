"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from sqlalchemy import Engine, Table, create_engine, func, select, text
from sqlalchemy.engine import make_url

import sa_pgtq
from sa_pgtq import errors
from sa_pgtq.embedded import EmbeddedServer

T = TypeVar("T")

DRIVERS = ("psycopg2", "psycopg")
#: The asyncio API's drivers: every async test runs on each.
ASYNC_DRIVERS = ("asyncpg", "psycopg")
#: Each driver's `connect_args` behind PgBouncer in transaction mode, as the README says:
#: no statement prepared in one transaction (or one Sync) and executed in another.
POOLER_CONNECT_ARGS: dict[str, dict[str, Any]] = {
    "psycopg2": {},
    "psycopg": {"prepare_threshold": None},
    "asyncpg": {"statement_cache_size": 0},
}

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


#: Pushes refused before anything is written: (the call, the error it raises).
BAD_CALLS = [
    ((object(),), errors.DataNotSerializableError),
    ((float("nan"),), errors.DataNotSerializableError),
    ((1, 2), errors.TaskArgumentsError),
    ({"nope": 1}, errors.TaskArgumentsError),
    (2, errors.TaskArgumentsError),  # neither a tuple nor a dict
]


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


def at_once(count: int, call: Callable[[int], T]) -> list[T]:
    """`call(0)` .. `call(count - 1)`, each in a thread, released together; their results."""
    barrier = threading.Barrier(count, timeout=10)
    results: list[T | None] = [None] * count
    failures: list[BaseException] = []

    def run(n: int) -> None:
        try:
            barrier.wait()
            results[n] = call(n)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if failures:
        raise failures[0]
    return results  # type: ignore[return-value]


def dequeue_concurrently(q: sa_pgtq.Queue, tag: str, consumers: int) -> list[Any]:
    """Everything `consumers` threads get from `with q.dequeue(tag)` until it runs dry."""
    seen: list[Any] = []
    lock = threading.Lock()

    def consume(_: int) -> None:
        while True:
            with q.dequeue(tag) as data:
                if data is None:
                    return
                with lock:
                    seen.append(data)

    at_once(consumers, consume)
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


# -- chaos (test_chaos.py, test_async_worker_processes.py) --------------------------

#: The chaos tests' jobs: enough, and slow enough, that kills and a restart land mid-run.
CHAOS_JOBS = 1200


def push_slow_jobs(engine: Engine, seconds: float) -> str:
    """CHAOS_JOBS `slow` jobs for the worker apps' queue; the URL they run on."""
    producer = sa_pgtq.Queue(engine, name="procs")

    @producer.handler(name="slow")
    def slow(n: int, seconds: float) -> None:
        raise AssertionError("runs in the worker processes only")

    slow.push_many([(n, seconds) for n in range(CHAOS_JOBS)])
    return engine.url.render_as_string(hide_password=False)


def kill_and_restart(
    server: EmbeddedServer, start: Callable[[], subprocess.Popen[bytes]], seed: int
) -> list[subprocess.Popen[bytes]]:
    """Three workers; for 8 s one is SIGKILLed and replaced every 0.4-1.2 s, and PostgreSQL
    is restarted once. Returns the workers left running."""
    rng = random.Random(seed)
    workers = [start() for _ in range(3)]
    began = time.monotonic()
    kills, restarted = 0, False
    while time.monotonic() - began < 8:
        time.sleep(rng.uniform(0.4, 1.2))
        victim = workers.pop(rng.randrange(len(workers)))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        kills += 1
        workers.append(start())
        if not restarted and time.monotonic() - began > 3:
            server.restart()
            restarted = True
    assert restarted and kills >= 5
    return workers


def assert_each_ran_once(engine: Engine) -> None:
    wait_for(lambda: count(engine, "SELECT count(*) FROM sa_pgtq_jobs") == 0, 120)
    assert count(engine, "SELECT count(DISTINCT n) FROM proc_effects") == CHAOS_JOBS, "none lost"
    assert count(engine, "SELECT count(*) FROM proc_effects") == CHAOS_JOBS, "no duplicate effect"
    assert count(engine, "SELECT count(*) FROM proc_started") >= CHAOS_JOBS


def stop_all(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        wait_ready(worker)  # a replacement may still be starting up
        worker.send_signal(signal.SIGTERM)
    assert [worker.wait(30) for worker in workers] == [0] * len(workers), "they ran on"


def assert_a_second_sigterm_exits_at_once(worker: subprocess.Popen[bytes], app: Engine) -> None:
    """With a task in hand: the first SIGTERM waits for it, the second exits, task left held."""
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert worker.poll() is None, "the first signal waits for the task in hand"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(1.5) == 128 + signal.SIGTERM
    assert count(app, "SELECT count(*) FROM sa_pgtq_jobs WHERE state = 'running'") == 1
