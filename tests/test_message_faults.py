"""Messages under faults: a caller's rollback, a lost connection, an iterator left open."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from helpers import wait_for
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

import sa_pgtq


def attempts(engine: Engine) -> dict[str, tuple[int, str]]:
    """data -> (attempts, state) of every message of tag t."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT data #>> '{}', attempts, state FROM sa_pgtq_jobs"))
        return {data: (n, state) for data, n, state in rows}


@pytest.fixture
def impatient(clean: Engine) -> Iterator[Engine]:
    """The test database, where a transaction left idle for 0.3 s is ended by the server."""
    options = "-c idle_in_transaction_session_timeout=300"
    engine = create_engine(clean.url, connect_args={"options": options})
    yield engine
    engine.dispose()


def test_a_failure_counts_when_the_callers_session_rolls_back(
    q: sa_pgtq.Queue, clean: Engine
) -> None:
    q.excepted_times_to_ignore = 2
    q.enqueue_many("t", ["poison", "next"])
    with (
        pytest.raises(ValueError),
        Session(clean) as s,
        s.begin(),
        q.dequeue("t", session=s) as data,
    ):
        assert data == "poison"
        raise ValueError("fails, and the caller's transaction rolls back")
    wait_for(lambda: attempts(clean)["poison"] == (1, "queued"), 5)
    with q.dequeue("t") as data:
        assert data == "next", "the failed message went behind the others"

    with (  # a Core caller
        pytest.raises(ValueError),
        clean.connect() as conn,
        conn.begin(),
        q.dequeue("t", session=conn) as data,
    ):
        raise ValueError(data)
    wait_for(lambda: attempts(clean)["poison"] == (2, "failed"), 5)
    assert q.dequeue_immediate("t") is None, "ignored after two failures, kept as failed"


def test_a_failure_in_a_caller_session_that_commits_counts_once(
    q: sa_pgtq.Queue, clean: Engine
) -> None:
    q.enqueue("t", "flaky")
    with Session(clean) as s, s.begin(), pytest.raises(ValueError), q.dequeue("t", session=s):
        raise ValueError("caught by the caller, who commits")
    time.sleep(0.3)
    assert attempts(clean) == {"flaky": (1, "queued")}


def test_a_dequeue_block_outliving_idle_in_transaction_timeout_counts_as_failed(
    impatient: Engine, clean: Engine
) -> None:
    q = sa_pgtq.Queue(impatient)
    q.enqueue_many("t", ["slow", "next"])
    with pytest.raises(DBAPIError), q.dequeue("t") as data:
        assert data == "slow"
        time.sleep(0.6)
    assert attempts(clean)["slow"] == (1, "queued")
    assert q.dequeue_immediate("t") == "next", "the slow one went to the tail"

    with pytest.raises(KeyError), q.dequeue("t") as data:  # the user's error, not the driver's
        time.sleep(0.6)
        raise KeyError(data)
    assert attempts(clean)["slow"] == (2, "queued")


def test_listen_survives_losing_its_connections(impatient: Engine, clean: Engine) -> None:
    q = sa_pgtq.Queue(impatient, poll_interval=0.2)
    q.enqueue_many("t", ["slow", "a", "b"])
    seen = []
    with q.listen("t", timeout=2) as messages:
        for data in messages:
            if data is None:
                break
            seen.append(data)
            if data == "slow" and len(seen) == 1:
                time.sleep(0.6)  # the server ends this transaction
            if data == "a" and seen.count("a") == 1:
                with clean.connect() as admin:  # as a restart would, mid-body
                    admin.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                            " AND state LIKE 'idle in transaction%'"
                        )
                    )
    assert seen == ["slow", "a", "b", "slow", "a"]
    assert attempts(clean) == {}


def test_closing_a_listen_iterator_puts_its_message_back(q: sa_pgtq.Queue) -> None:
    q.enqueue("t", "held")
    messages = q.listen("t")
    assert next(messages) == "held"
    assert q.dequeue_immediate("t") is None, "held by the iterator"
    messages.close()
    with q.listen("t") as again:
        for data in again:
            assert data == "held"
            break
    assert q.dequeue_immediate("t") == "held", "back, untouched, once the with block ended"
