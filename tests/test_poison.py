"""What consumers meet that nobody planned for: error texts PostgreSQL cannot store,
payloads nested too deeply to decode (written by another producer with plain SQL),
notifications that sa_pgtq did not send."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, cast

import pytest
from helpers import wait_for
from sqlalchemy import Engine, text

import sa_pgtq
from sa_pgtq.gateway import LISTENER_NAME
from sa_pgtq.schema import CHANNEL

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
    stream = cast(Generator[Any, None, None], q.listen("t", timeout=1))
    assert next(stream) == 1
    error = make_error()
    with pytest.raises(type(error)) as info:
        stream.throw(error)  # what the loop body raised, thrown into the iterator
    assert info.value is error
    assert_recorded(clean, job_id, error, shown)


# What a producer that bypasses sa_pgtq can write: jsonb nested 5,000 deep.
INSERT_TOO_DEEP = text(
    "INSERT INTO sa_pgtq_jobs (queue, kind, tag, data) "
    "VALUES (:queue, :kind, :tag, (repeat('[', 5000) || repeat(']', 5000))::jsonb) RETURNING id"
)


def insert_too_deep(engine: Engine, queue: str, kind: str, tag: str) -> int:
    with engine.begin() as conn:
        params = {"queue": queue, "kind": kind, "tag": tag}
        return int(conn.execute(INSERT_TOO_DEEP, params).scalar_one())


def assert_failed_as_too_deep(q: sa_pgtq.Queue, job_id: int) -> None:
    (job,) = q.failed()
    assert (job.id, job.state) == (job_id, "failed")
    assert job.last_error is not None and "DataTooDeepError" in job.last_error
    assert "200 levels" in job.last_error


def by_dequeue(q: sa_pgtq.Queue) -> Iterator[Any]:
    while True:
        with q.dequeue("t") as data:
            yield data


def by_dequeue_immediate(q: sa_pgtq.Queue) -> Iterator[Any]:
    while True:
        yield q.dequeue_immediate("t")


def by_listen(q: sa_pgtq.Queue) -> Iterator[Any]:
    return q.listen("t", timeout=0.3)


@pytest.mark.parametrize("consume", [by_dequeue, by_dequeue_immediate, by_listen])
def test_a_message_too_deep_to_decode_fails_alone_and_the_tag_flows_on(
    q: sa_pgtq.Queue, clean: Engine, consume: Callable[[sa_pgtq.Queue], Iterator[Any]]
) -> None:
    q.enqueue("t", "before")
    poison = insert_too_deep(clean, q.name, "message", "t")
    q.enqueue("t", "after")
    stream = consume(q)
    assert [next(stream) for _ in range(3)] == ["before", "after", None]
    assert_failed_as_too_deep(q, poison)
    assert q.count("t") == 0


def test_a_task_too_deep_to_decode_fails_alone_and_the_rest_run(
    q: sa_pgtq.Queue, clean: Engine
) -> None:
    ran: list[int] = []

    @q.handler()
    def record(n: int) -> None:
        ran.append(n)

    record.push(1)
    poison = insert_too_deep(clean, q.name, "task", "record")
    record.push(2)
    sa_pgtq.Worker(q, install_signal_handlers=False).run(burst=True)
    assert ran == [1, 2]
    assert_failed_as_too_deep(q, poison)
    (job,) = q.failed()
    assert job.attempts == 1, "failed at its first claim, not crash-looping"


# Any role that can connect may NOTIFY sa_pgtq's channel with anything.
HOSTILE_NOTIFY = text(
    "SELECT pg_notify(:channel, repeat('[', 3999) || repeat(']', 3999)), "
    "pg_notify(:channel, 'not json'), pg_notify(:channel, '{\"a\": 1}')"
)


def listening(engine: Engine) -> bool:
    with engine.connect() as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"
        return bool(conn.execute(text(query), {"name": LISTENER_NAME}).scalar_one())


def notify_hostile_then(engine: Engine, then: Callable[[], object]) -> float:
    """Once a listener is up, send hostile payloads, then `then()`; when that was."""
    wait_for(lambda: listening(engine), 10)
    with engine.connect() as conn:
        conn.execute(HOSTILE_NOTIFY, {"channel": CHANNEL})
        conn.commit()
    then()
    return time.monotonic()


def test_hostile_notifications_do_not_stop_listen(clean: Engine) -> None:
    q = sa_pgtq.Queue(clean, poll_interval=30)  # only a NOTIFY can wake it in time
    stream = q.listen("t", timeout=20)
    got: list[Any] = []
    consumer = threading.Thread(target=lambda: got.append(next(stream)), daemon=True)
    consumer.start()
    sent = notify_hostile_then(clean, lambda: q.enqueue("t", "work"))
    consumer.join(10)
    assert got == ["work"], "listen kept waking up"
    assert time.monotonic() - sent < 3


def test_hostile_notifications_do_not_stop_a_worker(clean: Engine) -> None:
    q = sa_pgtq.Queue(clean, poll_interval=30)
    ran = threading.Event()

    @q.handler()
    def wake() -> None:
        ran.set()

    worker = sa_pgtq.Worker(q, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        sent = notify_hostile_then(clean, wake.push)
        assert ran.wait(10)
        assert time.monotonic() - sent < 3, "the worker was woken by the job's NOTIFY"
    finally:
        worker.stop()
        wake.push()  # its NOTIFY ends the worker's wait
        thread.join(10)
    assert not thread.is_alive()
