"""A Queue used in a parent keeps working in fork()ed children, and in the parent after them.

Two processes on one socket corrupt each other's sessions; before the fix, a child
using the queue ended the parent's pooled connection ("server closed the
connection unexpectedly"). Children here are real fork() children
(multiprocessing's fork start method, as gunicorn, uWSGI and Celery prefork do).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from helpers import fresh_tables
from sqlalchemy import Column, Engine, Integer, MetaData, Table, func, select, text
from sqlalchemy.orm import Session

import sa_pgtq
from sa_pgtq.listener import Listener
from sa_pgtq.models import MESSAGE

pytestmark = pytest.mark.slow

effects = Table("fork_effects", MetaData(), Column("n", Integer), Column("pid", Integer))
fork = multiprocessing.get_context("fork")
LISTENERS = text(
    "SELECT pid FROM pg_stat_activity "
    "WHERE datname = current_database() AND application_name = 'sa_pgtq listener'"
)
MESSAGES = 300


@pytest.fixture
def app(clean: Engine) -> Engine:
    fresh_tables(clean, effects)
    return clean


@pytest.fixture(params=["the application's engine", "a URL: sa_pgtq's own engine"])
def q(request: pytest.FixtureRequest, app: Engine) -> Iterator[sa_pgtq.Queue]:
    if request.param == "the application's engine":
        yield sa_pgtq.Queue(app, poll_interval=0.5)
        return
    queue = sa_pgtq.Queue(app.url.render_as_string(hide_password=False), poll_interval=0.5)
    yield queue
    queue.engine.dispose()


def in_children(count: int, work: Callable[[], None]) -> list[int | None]:
    children = [fork.Process(target=work) for _ in range(count)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    return [child.exitcode for child in children]


def effects_by_pid(engine: Engine) -> tuple[list[int], set[int]]:
    with engine.connect() as conn:
        rows = conn.execute(select(effects.c.n, effects.c.pid)).all()
    return sorted(n for n, _ in rows), {pid for _, pid in rows}


def test_children_consume_exactly_once_and_the_parent_carries_on(
    q: sa_pgtq.Queue, app: Engine
) -> None:
    # The parent has used the queue: its pool holds connections when it forks.
    q.enqueue("warm-up", 0)
    with q.dequeue("warm-up") as data:
        assert data == 0
    q.enqueue_many("work", list(range(MESSAGES)))

    def consume() -> None:
        while True:
            with Session(app) as s, s.begin(), q.dequeue("work", s) as n:
                if n is None:
                    return
                s.execute(effects.insert().values(n=n, pid=os.getpid()))

    assert in_children(4, consume) == [0, 0, 0, 0]
    done, pids = effects_by_pid(app)
    assert done == list(range(MESSAGES)), "each message consumed exactly once"
    assert os.getpid() not in pids and len(pids) > 1, "by the children, side by side"

    # The parent's own pooled connections survived the children.
    q.enqueue("after", "still working")
    with q.dequeue("after") as data:
        assert data == "still working"
    assert q.count("work") == 0


def listener_pids(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(LISTENERS).scalars())


def test_a_listen_connection_used_in_a_child_stays_the_parents(
    q: sa_pgtq.Queue, app: Engine
) -> None:
    # A child that inherits a connected listener (a prefork server forking after the
    # app started listening) gets a LISTEN connection of its own, and its close leaves
    # the parent's open: with a 30 s poll, only NOTIFY can wake the parent quickly.
    backend = q.backend
    listener = Listener(backend.binding.listen_engine, backend.table_name, q.name, MESSAGE, "t", 30)
    with listener:
        parents = listener_pids(app)

        def use_in_child() -> None:
            listener.wait(0.2)
            listener.close()

        assert in_children(1, use_in_child) == [0]
        assert listener_pids(app) == parents, "the parent's LISTEN connection is still open"
        threading.Timer(0.3, q.enqueue, ("t", "for the parent")).start()
        started = time.monotonic()
        assert listener.wait(10)
        assert time.monotonic() - started < 3, "woken by NOTIFY on the parent's own connection"


def test_a_worker_in_a_child_runs_what_the_parent_pushed(q: sa_pgtq.Queue, app: Engine) -> None:
    @q.handler()
    def record(n: int) -> None:
        sa_pgtq.current_session().execute(effects.insert().values(n=n, pid=os.getpid()))

    record.push_many([(n,) for n in range(50)])

    def work() -> None:
        sa_pgtq.Worker(q, install_signal_handlers=False).run(burst=True)

    assert in_children(2, work) == [0, 0]
    done, _ = effects_by_pid(app)
    assert done == list(range(50))
    record.push(50)
    task = q.pop()
    assert task is not None and task.run()
    with app.connect() as conn:
        assert conn.execute(select(func.count()).select_from(effects)).scalar_one() == 51
