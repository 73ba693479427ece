"""session= takes every kind of caller's transaction: ORM Session (and subclasses),
scoped_session registries (Flask-SQLAlchemy's db.session), Core Connections."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest
from helpers import fresh_tables
from sqlalchemy import Column, Connection, Engine, Integer, MetaData, Table, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

import sa_pgtq
from sa_pgtq import errors

orders = Table("session_orders", MetaData(), Column("id", Integer, primary_key=True))


class AppSession(Session):
    """An application's own Session class, as SQLModel's is."""


@contextmanager
def orm_session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as s, s.begin():
        yield s


@contextmanager
def subclassed_session(engine: Engine) -> Iterator[Session]:
    with AppSession(engine) as s, s.begin():
        yield s


@contextmanager
def scoped(engine: Engine) -> Iterator[scoped_session[Session]]:
    registry = scoped_session(sessionmaker(engine))  # what Flask-SQLAlchemy's db.session is
    try:
        with registry.begin():
            yield registry
    finally:
        registry.remove()


@contextmanager
def core_connection(engine: Engine) -> Iterator[Connection]:
    with engine.begin() as conn:
        yield conn


Caller = Callable[[Engine], AbstractContextManager[Any]]
CALLERS = [orm_session, subclassed_session, scoped, core_connection]


def run_sql(caller: Any, sql: str) -> None:
    """The application's own write, in its own transaction object."""
    caller.execute(text(sql))


def counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        jobs = conn.execute(select(func.count()).select_from(sa_pgtq.Job)).scalar_one()
        rows = conn.execute(select(func.count()).select_from(orders)).scalar_one()
    return jobs, rows


@pytest.fixture
def app(clean: Engine) -> Engine:
    fresh_tables(clean, orders)
    return clean


@pytest.mark.parametrize("caller", CALLERS)
def test_jobs_commit_and_roll_back_with_the_callers_rows(
    q: sa_pgtq.Queue, app: Engine, caller: Caller
) -> None:
    @q.handler()
    def ship(order: int) -> None: ...

    with caller(app) as tx:
        run_sql(tx, "INSERT INTO session_orders VALUES (1)")
        q.enqueue("email", {"order": 1}, tx)  # positionally last, q4pg style
        q.enqueue_many("email", [2, 3], session=tx)
        ship.options(session=tx).push(1)
        assert counts(app) == (0, 0), "nothing is visible before the caller commits"
    assert counts(app) == (4, 1)

    with pytest.raises(RuntimeError), caller(app) as tx:
        run_sql(tx, "INSERT INTO session_orders VALUES (2)")
        q.enqueue("email", {"order": 2}, session=tx)
        ship.options(session=tx).push_many([(2,)])
        raise RuntimeError("the request failed")
    assert counts(app) == (4, 1), "rolled back together"


@pytest.mark.parametrize("caller", CALLERS)
def test_reads_and_cancel_run_in_the_callers_transaction(
    q: sa_pgtq.Queue, app: Engine, caller: Caller
) -> None:
    with caller(app) as tx:
        job_id = q.enqueue("t", "mine", session=tx)
        assert q.count("t", tx) == 1, "the caller sees its own uncommitted job"
        assert [job.id for job in q.list("t", session=tx)] == [job_id]
        assert q.failed(session=tx) == []
        assert q.cancel(job_id, session=tx) is True
        assert q.count("t", session=tx) == 0
    assert q.count("t") == 0


@pytest.mark.parametrize("caller", CALLERS)
def test_dequeue_in_the_callers_transaction(q: sa_pgtq.Queue, app: Engine, caller: Caller) -> None:
    q.enqueue_many("t", ["ok", "boom"])
    with caller(app) as tx:
        with q.dequeue("t", tx) as data:
            assert data == "ok"
            run_sql(tx, "INSERT INTO session_orders VALUES (1)")
        with pytest.raises(ZeroDivisionError), q.dequeue("t", session=tx) as data:
            assert data == "boom"
            run_sql(tx, "INSERT INTO session_orders VALUES (2)")  # undone by the savepoint
            raise ZeroDivisionError
        assert q.count("t") == 2, "others see nothing removed before the caller commits"
    assert counts(app) == (1, 1), "'ok' removed with its write; 'boom' kept without its write"
    (job,) = q.list("t")
    assert (job.data, job.attempts) == ("boom", 1)


@pytest.mark.parametrize("caller", CALLERS)
def test_immediate_dequeue_and_pop_in_the_callers_transaction(
    q: sa_pgtq.Queue, app: Engine, caller: Caller
) -> None:
    @q.handler()
    def noop() -> None: ...

    q.enqueue("t", "x")
    noop.push()
    with pytest.raises(RuntimeError), caller(app) as tx:
        assert q.dequeue_immediate("t", tx) == "x"
        task = q.pop(session=tx)
        assert task is not None and task.name == "noop"
        raise RuntimeError("rolled back")
    assert q.count("t") == 1 and q.pop() is not None, "both came back with the rollback"


@pytest.mark.parametrize(
    "not_a_session",
    [
        "a string",
        42,
        pytest.param(lambda engine: engine, id="an Engine"),
        pytest.param(lambda engine: sessionmaker(engine), id="a sessionmaker"),
        pytest.param(
            lambda engine: AsyncSession(create_async_engine("postgresql+psycopg://x@h/d")),
            id="an AsyncSession",
        ),
    ],
)
def test_anything_else_is_a_type_error_and_writes_nothing(
    q: sa_pgtq.Queue, app: Engine, not_a_session: Any
) -> None:
    bad = not_a_session(app) if callable(not_a_session) else not_a_session

    @q.handler()
    def noop() -> None: ...

    attempts: list[Callable[[], object]] = [
        lambda: q.enqueue("t", 1, bad),
        lambda: q.enqueue_many("t", [1, 2], session=bad),
        lambda: noop.options(session=bad).push(),
        lambda: q.count("t", bad),
        lambda: q.dequeue_immediate("t", bad),
        lambda: q.pop(bad),
    ]
    for attempt in attempts:
        with pytest.raises(errors.InvalidSessionError) as info:
            attempt()
        assert isinstance(info.value, TypeError)
        assert "Session, a scoped_session or a Connection" in str(info.value)
    with pytest.raises(TypeError), q.dequeue("t", bad):
        pass
    assert counts(app) == (0, 0)
