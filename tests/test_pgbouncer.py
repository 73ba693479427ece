"""Behind PgBouncer in transaction pooling mode (Debian's pgbouncer, started by the test).

What works as usual: everything transactional (enqueue in the caller's session,
dequeue, the worker). What cannot: LISTEN, whose server connection is handed to
other clients between statements. sa_pgtq recognises the pooler, polls instead
and says so; `listen_bind=` gives LISTEN a direct connection. psycopg 3 needs
`prepare_threshold=None` (PgBouncer 1.18 cannot carry prepared statements).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from types import ModuleType

import pytest
from helpers import (
    DRIVERS,
    POOLER_CONNECT_ARGS,
    Spawn,
    dequeue_concurrently,
    next_within,
    run_record_jobs,
)
from pgbouncer import requires_pgbouncer
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

import sa_pgtq

pytestmark = requires_pgbouncer


@pytest.fixture(params=DRIVERS)
def bounced(
    request: pytest.FixtureRequest, bouncer_url: URL, bouncer_tables: Engine
) -> Iterator[Engine]:
    """An engine through PgBouncer, configured as the README says."""
    driver = request.param
    engine = create_engine(
        bouncer_url.set(drivername=f"postgresql+{driver}"),
        connect_args=POOLER_CONNECT_ARGS[driver],
    )
    yield engine
    engine.dispose()


def test_messages_commit_with_the_callers_rows_through_pgbouncer(bounced: Engine) -> None:
    q = sa_pgtq.Queue(bounced)
    with Session(bounced) as s, s.begin():
        s.execute(text("INSERT INTO bouncer_orders VALUES (1)"))
        q.enqueue("email", {"order": 1}, session=s)
    with Session(bounced) as s, s.begin():
        s.execute(text("INSERT INTO bouncer_orders VALUES (2)"))
        q.enqueue("email", {"order": 2}, session=s)
        s.rollback()
    q.enqueue_many("email", [{"order": n} for n in range(3, 10)])
    assert q.count("email") == 8
    assert q.cancel(q.list("email")[-1].id)

    with pytest.raises(RuntimeError), q.dequeue("email") as data:
        raise RuntimeError("smtp down")
    assert data == {"order": 1}
    first = q.list("email")[-1]  # a failure moves it behind the others
    assert (first.data, first.attempts) == ({"order": 1}, 1)
    with q.dequeue("email") as data:
        assert data == {"order": 3}
    with bounced.connect() as conn:
        assert conn.execute(text("SELECT array_agg(id) FROM bouncer_orders")).scalar() == [1]


def test_concurrent_dequeues_through_two_server_connections_hand_out_each_message_once(
    bounced: Engine,
) -> None:
    q = sa_pgtq.Queue(bounced)
    q.enqueue_many("t", list(range(200)))
    assert sorted(dequeue_concurrently(q, "t", 6)) == list(range(200))
    assert q.count("t") == 0


def test_listen_through_pgbouncer_polls_leaves_no_listen_behind_and_says_so(
    bounced: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    q = sa_pgtq.Queue(bounced, poll_interval=0.5)
    stream = q.listen("t", timeout=30)
    with caplog.at_level(logging.WARNING, logger="sa_pgtq"):
        threading.Timer(0.3, q.enqueue, ("t", "polled")).start()
        assert next_within(stream, 10) == "polled"
    stream.close()
    # Hold both server connections at once: neither was left listening.
    with bounced.connect() as one, bounced.connect() as two:
        for conn in (one, two):
            assert conn.execute(text("SELECT count(*) FROM pg_listening_channels()")).scalar() == 0
            conn.execute(text("SELECT pg_sleep(0.1)"))
    assert "connection pooler" in caplog.text and "listen_bind=" in caplog.text


def test_listen_bind_keeps_notify_wakeups_behind_pgbouncer(bounced: Engine, db_url: str) -> None:
    q = sa_pgtq.Queue(bounced, poll_interval=30, listen_bind=db_url)
    stream = q.listen("t", timeout=30)
    threading.Timer(0.3, q.enqueue, ("t", "woken")).start()
    started = time.monotonic()
    assert next_within(stream, 10) == "woken"
    assert time.monotonic() - started < 5, "woken by NOTIFY, not by the 30 s poll"
    stream.close()


@pytest.mark.slow
def test_workers_through_pgbouncer_run_each_job_exactly_once(
    workerapp: ModuleType, app: Engine, spawn: Spawn, bouncer_url: URL
) -> None:
    url = bouncer_url.render_as_string(hide_password=False)
    run_record_jobs(workerapp, app, spawn, url, 1000, 3, "--batch-size", "20")
