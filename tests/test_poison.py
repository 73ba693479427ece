"""What consumers meet that nobody planned for: error texts PostgreSQL cannot store."""

from __future__ import annotations

import os
from typing import Any

import pytest
from sqlalchemy import Engine, text

import sa_pgtq

# Exceptions whose text PostgreSQL's `text` cannot hold, and how last_error shows it.
UNSTORABLE = [
    pytest.param(lambda: OSError(os.fsdecode(b"bad\xff")), "bad\\udcff", id="lone-surrogate"),
    pytest.param(lambda: ValueError("a\x00b"), "a\\x00b", id="nul"),
]


def job_row(engine: Engine, job_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT state, attempts, last_error FROM sa_pgtq_jobs WHERE id = :id"),
            {"id": job_id},
        ).one()


def assert_recorded(engine: Engine, job_id: int, error: BaseException, shown: str) -> None:
    row = job_row(engine, job_id)
    assert row.attempts == 1, "the failure is counted"
    assert f"{type(error).__name__}: " in row.last_error and shown in row.last_error
    assert "Traceback (most recent call last)" in row.last_error


@pytest.mark.parametrize(("make_error", "shown"), UNSTORABLE)
def test_worker_records_an_unstorable_error_text(
    q: sa_pgtq.Queue, clean: Engine, make_error: Any, shown: str
) -> None:
    @q.handler(max_attempts=1)
    def breaks() -> None:
        raise make_error()

    job_id = breaks.push()
    sa_pgtq.Worker(q, install_signal_handlers=False).run(burst=True)  # does not die
    assert job_row(clean, job_id).state == "failed"
    assert_recorded(clean, job_id, make_error(), shown)


@pytest.mark.parametrize(("make_error", "shown"), UNSTORABLE)
def test_popped_task_records_an_unstorable_error_text(
    q: sa_pgtq.Queue, clean: Engine, make_error: Any, shown: str
) -> None:
    @q.handler(max_attempts=2)
    def breaks() -> None:
        raise make_error()

    job_id = breaks.push()
    task = q.pop()
    assert task is not None and task.run() is False
    assert job_row(clean, job_id).state == "queued"  # retried later, per its policy
    assert_recorded(clean, job_id, make_error(), shown)


@pytest.mark.parametrize(("make_error", "shown"), UNSTORABLE)
def test_dequeue_counts_an_unstorable_error_and_raises_the_users_exception(
    q: sa_pgtq.Queue, clean: Engine, make_error: Any, shown: str
) -> None:
    job_id = q.enqueue("t", 1)
    error = make_error()
    with pytest.raises(type(error)) as info, q.dequeue("t"):
        raise error
    assert info.value is error
    assert_recorded(clean, job_id, error, shown)


@pytest.mark.parametrize(("make_error", "shown"), UNSTORABLE)
def test_listen_counts_an_unstorable_error_and_raises_the_users_exception(
    q: sa_pgtq.Queue, clean: Engine, make_error: Any, shown: str
) -> None:
    job_id = q.enqueue("t", 1)
    stream = q.listen("t", timeout=1)
    assert next(stream) == 1
    error = make_error()
    with pytest.raises(type(error)) as info:
        stream.throw(error)  # what the loop body raised, thrown into the iterator
    assert info.value is error
    assert_recorded(clean, job_id, error, shown)
