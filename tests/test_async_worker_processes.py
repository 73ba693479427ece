"""`sa-pgtq worker async_workerapp:q`: AsyncWorker processes started with the CLI.

The jobs are pushed by the sync app (workerapp.py, same queue and handler names), so
every test here also shows a Queue's tasks run by an AsyncQueue's workers.
"""

from __future__ import annotations

import functools
import signal
import subprocess
from types import ModuleType

import pytest
from helpers import (
    ASYNC_DRIVERS,
    Spawn,
    assert_a_second_sigterm_exits_at_once,
    assert_each_ran_once,
    async_url_for,
    count,
    kill_and_restart,
    push_slow_jobs,
    run_record_jobs,
    stop_all,
    wait_for,
)
from sqlalchemy import Engine, select

from sa_pgtq.embedded import EmbeddedServer

APP = "async_workerapp:q"


def started(app: Engine) -> int:
    return count(app, "SELECT count(*) FROM proc_started")


@pytest.mark.slow
def test_two_workers_run_each_of_a_thousand_jobs_exactly_once(
    workerapp: ModuleType, app: Engine, spawn: Spawn, async_url: str
) -> None:
    async_spawn = functools.partial(spawn, app=APP)
    run_record_jobs(workerapp, app, async_spawn, async_url, 1000, 2, "--concurrency", "10")
    assert count(app, "SELECT count(*) FROM sa_pgtq_jobs") == 0


@pytest.mark.slow
@pytest.mark.parametrize("concurrency", [1, 3])
def test_sigterm_finishes_the_tasks_in_hand_then_exits_zero(
    workerapp: ModuleType, app: Engine, spawn: Spawn, async_url: str, concurrency: int
) -> None:
    workerapp.slow.push_many([(n, 1.0) for n in range(concurrency)])
    workerapp.slow.push_many([(10, 0.1), (11, 0.1)])
    worker = spawn(async_url, "--concurrency", str(concurrency), app=APP)
    wait_for(lambda: started(app) == concurrency, 30)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    with app.connect() as conn:
        done = conn.execute(select(workerapp.effects.c.n).order_by("n")).scalars().all()
    assert done == list(range(concurrency)), "the tasks in hand finished, the others never began"
    left = count(app, "SELECT count(*) FROM sa_pgtq_jobs WHERE state = 'queued' AND attempts = 0")
    assert left == 2, "the unstarted jobs go back untouched"
    assert count(app, "SELECT count(*) FROM sa_pgtq_jobs") == 2


@pytest.mark.slow
def test_a_second_sigterm_exits_at_once_leaving_the_task_to_its_lease(
    workerapp: ModuleType, app: Engine, spawn: Spawn, async_url: str
) -> None:
    workerapp.slow.push(4, 60.0)  # hung, as far as anyone can tell
    worker = spawn(async_url, "--lease", "2", app=APP)
    wait_for(lambda: started(app) == 1, 30)
    assert_a_second_sigterm_exits_at_once(worker, app)


@pytest.mark.slow
@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_kills_and_a_database_restart_lose_no_job(
    own_server: EmbeddedServer, own_engine: Engine, spawn: Spawn, driver: str
) -> None:
    # Three workers of four tasks at a time: 1200 jobs of 50 ms last past the restart.
    url = async_url_for(push_slow_jobs(own_engine, 0.05), driver)

    def start() -> subprocess.Popen[bytes]:
        options = ("--lease", "2", "--batch-size", "20", "--concurrency", "4")
        return spawn(url, *options, app=APP)

    workers = kill_and_restart(own_server, start, seed=20261201)
    assert_each_ran_once(own_engine)
    stop_all(workers)
