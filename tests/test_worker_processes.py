"""Real worker processes started with the `sa-pgtq worker` CLI."""

from __future__ import annotations

import signal
from types import ModuleType

import pytest
from helpers import Spawn, assert_a_second_sigterm_exits_at_once, count, run_record_jobs, wait_for
from sqlalchemy import Engine, select


@pytest.mark.slow
def test_four_workers_run_each_of_thousands_of_jobs_exactly_once(
    workerapp: ModuleType, app: Engine, spawn: Spawn, db_url: str
) -> None:
    run_record_jobs(workerapp, app, spawn, db_url, 4000, 4, "--batch-size", "50")
    assert count(app, "SELECT count(*) FROM sa_pgtq_jobs") == 0


@pytest.mark.slow
def test_a_job_survives_its_worker_being_killed(
    workerapp: ModuleType, app: Engine, spawn: Spawn, db_url: str
) -> None:
    workerapp.slow.push(1, 3.0)
    doomed = spawn(db_url, "--lease", "1")
    wait_for(lambda: count(app, "SELECT count(*) FROM proc_started") == 1, 30)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    assert count(app, "SELECT count(*) FROM proc_effects") == 0
    assert count(app, "SELECT count(*) FROM sa_pgtq_jobs WHERE state = 'running'") == 1

    rescuer = spawn(db_url, "--lease", "1")
    wait_for(lambda: count(app, "SELECT count(*) FROM proc_effects") == 1, 30)
    rescuer.send_signal(signal.SIGTERM)
    assert rescuer.wait(20) == 0
    assert count(app, "SELECT count(*) FROM proc_effects") == 1, "completed exactly once"
    assert count(app, "SELECT count(DISTINCT pid) FROM proc_started") == 2
    assert count(app, "SELECT count(*) FROM sa_pgtq_jobs") == 0


@pytest.mark.slow
def test_sigterm_finishes_the_current_job_then_exits_zero(
    workerapp: ModuleType, app: Engine, spawn: Spawn, db_url: str
) -> None:
    workerapp.slow.push(2, 1.5)
    workerapp.slow.push(3, 0.1)
    worker = spawn(db_url)
    wait_for(lambda: count(app, "SELECT count(*) FROM proc_started") == 1, 30)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    with app.connect() as conn:
        assert conn.execute(select(workerapp.effects.c.n)).scalars().all() == [2]
    left = count(app, "SELECT count(*) FROM sa_pgtq_jobs WHERE state = 'queued' AND attempts = 0")
    assert left == 1, "the next job was not started and goes back untouched"
    assert count(app, "SELECT count(*) FROM sa_pgtq_jobs") == 1


@pytest.mark.slow
@pytest.mark.parametrize("hung_in", ["python", "a query"])
def test_a_second_sigterm_exits_at_once_leaving_the_task_to_its_lease(
    workerapp: ModuleType, app: Engine, spawn: Spawn, db_url: str, hung_in: str
) -> None:
    if hung_in == "python":
        workerapp.slow.push(4, 60.0)  # hung, as far as anyone can tell
    else:
        workerapp.stuck.push(4)
    worker = spawn(db_url, "--lease", "2")
    wait_for(lambda: count(app, "SELECT count(*) FROM proc_started") == 1, 30)
    assert_a_second_sigterm_exits_at_once(worker, app)
