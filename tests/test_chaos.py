"""Chaos: workers SIGKILLed, connections terminated, a starved pool, PostgreSQL restarted.

Whatever happens mid-run, no job is lost and none runs twice.
"""

from __future__ import annotations

import random
import subprocess
import time

import pytest
from helpers import (
    Spawn,
    assert_each_ran_once,
    count,
    kill_and_restart,
    push_slow_jobs,
    stop_all,
    wait_ready,
)
from sqlalchemy import Engine, text

from sa_pgtq.embedded import EmbeddedServer

JOB_SECONDS = 0.02  # enough work that kills and the restart land mid-run


@pytest.mark.slow
def test_kills_and_a_database_restart_lose_no_job(
    own_server: EmbeddedServer, own_engine: Engine, spawn: Spawn
) -> None:
    url = push_slow_jobs(own_engine, JOB_SECONDS)

    def start() -> subprocess.Popen[bytes]:
        return spawn(url, "--lease", "2", "--batch-size", "20")

    workers = kill_and_restart(own_server, start, seed=20261122)
    assert_each_ran_once(own_engine)
    stop_all(workers)


@pytest.mark.slow
def test_terminated_connections_and_a_starved_pool_lose_no_job(
    own_engine: Engine, spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connection of the workers is cut, again and again, while their pools run dry."""
    url = push_slow_jobs(own_engine, JOB_SECONDS)
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
    with own_engine.connect() as admin:
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
    assert_each_ran_once(own_engine)
    assert count(own_engine, "SELECT count(*) FROM sa_pgtq_jobs WHERE state = 'failed'") == 0
    stop_all(workers)
