"""Where a queue's connections come from, whose transaction an operation runs in, and forks.

A queue runs each operation either in the caller's transaction (`join`: an ORM
Session, a `scoped_session` registry such as Flask-SQLAlchemy's `db.session`,
or a Core Connection) or in one of its own from the engine's pool (`Binding`).

Fork safety: a child process must never use a connection its parent opened (two
processes talking over one socket corrupt each other's sessions). Engines that
sa_pgtq creates forget their pool in a child (`dispose(close=False)`, SQLAlchemy's
documented pattern); on an engine the application passed in, a pooled connection
is checked against the pid that opened it before each use and replaced, never
closed, when it belongs to another process. The drivers close a connection on
garbage collection only in the process that opened it, so dropping one is safe.
"""

from __future__ import annotations

import importlib.util
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Protocol

from psycopg2.extensions import parse_dsn
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from .errors import InvalidInputError, InvalidSessionError

Bind = Engine | sessionmaker[Session] | URL | str
AsyncBind = AsyncEngine | async_sessionmaker[AsyncSession] | URL | str
#: What `session=` accepts: the caller's transaction.
Caller = Session | scoped_session[Session] | Connection
AsyncCaller = AsyncSession | async_scoped_session[AsyncSession] | AsyncConnection
#: Every kind of caller's transaction, sync or async.
_ANY_CALLER = (
    Session,
    scoped_session,
    Connection,
    AsyncSession,
    async_scoped_session,
    AsyncConnection,
)


def engine_from_url(url: str | URL) -> Engine:
    """An engine for a SQLAlchemy URL, a libpq URI or a libpq key=value DSN.

    Bare `postgresql://` URIs (what libpq and q4pg users have) get the psycopg2
    driver; a URL that names a driver keeps it. The engine is sa_pgtq's own, so
    it forgets its pool in a forked child.
    """
    parsed = dsn_to_url(url) if isinstance(url, str) and "://" not in url else make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    engine = create_engine(parsed)
    _own_engines.add(engine)
    return engine


def async_engine_from_url(url: str | URL) -> AsyncEngine:
    """An async engine for a URL or DSN: a bare `postgresql://` gets asyncpg (else psycopg)."""
    parsed = dsn_to_url(url) if isinstance(url, str) and "://" not in url else make_url(url)
    if parsed.drivername in ("postgres", "postgresql", "postgresql+psycopg2"):
        driver = "asyncpg" if importlib.util.find_spec("asyncpg") is not None else "psycopg"
        parsed = parsed.set(drivername=f"postgresql+{driver}")
    try:
        engine = create_async_engine(parsed)
    except (ArgumentError, ImportError) as exc:
        raise InvalidInputError(f"AsyncQueue needs an async driver: {exc}") from None
    _own_engines.add(engine.sync_engine)
    return engine


def dsn_to_url(dsn: str) -> URL:
    """A libpq key=value DSN ("host=... dbname=...") as a psycopg2 URL; libpq does the parsing."""
    params = dict(parse_dsn(dsn))
    port = params.pop("port", None)
    return URL.create(
        "postgresql+psycopg2",
        username=params.pop("user", None),
        password=params.pop("password", None),
        host=params.pop("host", None),
        port=int(port) if port else None,
        database=params.pop("dbname", None),
        query=params,
    )


class Binding:
    """A queue's database: an engine, the factory of its own sessions, and where to LISTEN.

    `listen_bind` is a direct connection for LISTEN when `bind` goes through a
    transaction pooler (PgBouncer), which cannot carry notifications.
    """

    def __init__(
        self,
        bind: Bind | AsyncBind,
        listen_bind: Engine | AsyncEngine | URL | str | None = None,
        *,
        asynchronous: bool = False,
    ) -> None:
        #: Used through the asyncio bridge: `engine` is an AsyncEngine's sync side.
        self.asynchronous = asynchronous
        self.async_sessions: async_sessionmaker[AsyncSession] | None = None
        if asynchronous:
            self.async_sessions = _async_sessions(bind)
            engine = self.async_sessions.kw["bind"].sync_engine
            self.sessions: sessionmaker[Session] = sessionmaker(engine)
        elif isinstance(bind, sessionmaker):
            engine = bind.kw.get("bind")
            if not isinstance(engine, Engine):
                raise InvalidInputError("a sessionmaker passed to Queue must be bound to an Engine")
            self.sessions = bind
        elif isinstance(bind, (Engine, URL, str)):
            engine = bind if isinstance(bind, Engine) else engine_from_url(bind)
            self.sessions = sessionmaker(engine)
        else:
            raise _not_a_bind(bind, "an Engine, a sessionmaker")
        self.engine: Engine = engine
        self.listen_engine: Engine = self.engine
        if isinstance(listen_bind, AsyncEngine) and asynchronous:
            self.listen_engine = listen_bind.sync_engine
        elif isinstance(listen_bind, Engine) and not asynchronous:
            self.listen_engine = listen_bind
        elif isinstance(listen_bind, (URL, str)):
            self.listen_engine = (
                async_engine_from_url(listen_bind).sync_engine
                if asynchronous
                else engine_from_url(listen_bind)
            )
        elif listen_bind is not None:
            raise _not_a_bind(listen_bind, "an AsyncEngine" if asynchronous else "an Engine")
        for engine in (self.engine, self.listen_engine):
            if engine.dialect.name != "postgresql":
                raise InvalidInputError(f"sa_pgtq needs PostgreSQL, not {engine.dialect.name}")
            if engine.dialect.is_async != asynchronous:
                raise InvalidSessionError(
                    "an async engine needs sa_pgtq.AsyncQueue"
                    if asynchronous is False
                    else "AsyncQueue needs an async engine (postgresql+asyncpg or +psycopg)"
                )
            _guard_against_forks(engine)

    def transaction(self) -> AbstractContextManager[Connection]:
        """A connection of our own in a transaction, committed at the end (rolled back on error)."""
        return self.engine.begin()

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection of our own in autocommit, for exactly one statement.

        One statement is atomic on its own; autocommit spares the BEGIN and COMMIT
        round trips.
        """
        with self.engine.connect() as conn, _driver_autocommit(conn):
            yield conn


def _async_sessions(bind: object) -> async_sessionmaker[AsyncSession]:
    if isinstance(bind, async_sessionmaker):
        if not isinstance(bind.kw.get("bind"), AsyncEngine):
            raise InvalidInputError(
                "an async_sessionmaker passed to AsyncQueue must be bound to an AsyncEngine"
            )
        return bind
    if isinstance(bind, AsyncEngine):
        return async_sessionmaker(bind)
    if isinstance(bind, (URL, str)):
        return async_sessionmaker(async_engine_from_url(bind))
    raise _not_a_bind(bind, "an AsyncEngine, an async_sessionmaker")


def _not_a_bind(bind: object, kinds: str) -> InvalidSessionError:
    asyncio_bind = isinstance(bind, (AsyncEngine, async_sessionmaker))
    hint = " (use sa_pgtq.AsyncQueue for those)" if asyncio_bind and "Async" not in kinds else ""
    return InvalidSessionError(
        f"bind must be {kinds}, a URL or a DSN string, not {type(bind).__name__}{hint}"
    )


class DedicatedConnection:
    """A connection of one service's own, outside the engine's pool, opened on first use.

    Detached from the pool, it takes no pool slot: a service that must keep working
    while handlers hold every pooled connection (the heartbeat, the listener) never
    waits for one. After an error it is dropped and reopened at the next use. In a
    forked child it is the parent's: dropped, never closed (a close would end the
    parent's session; the driver skips it on collection).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Connection | None = None
        self._pid = 0

    def open(self) -> Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self._conn = None
        conn = self.engine.connect()
        conn.detach()  # closed, not returned, when we are done
        self._conn, self._pid = conn, os.getpid()
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """The connection in a transaction, committed at the end; dropped on any error."""
        conn = self.open()
        try:
            with conn.begin():
                yield conn
        except BaseException:
            self.close()
            raise

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """The connection in autocommit: each statement takes effect at once, none stays open."""
        conn = self.open()
        try:
            with _driver_autocommit(conn):
                yield conn
                conn.commit()  # ends the transaction SQLAlchemy began; autocommit sends nothing
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            with suppress(Exception):  # already broken: nothing left to release
                dbapi: Any = conn.connection.dbapi_connection
                conn.close()
                # SQLAlchemy leaves a detached connection of an async driver without
                # `terminate` (psycopg's) open, to the garbage collector: close it here.
                if not getattr(dbapi, "closed", True):
                    dbapi.close()


@contextmanager
def _driver_autocommit(conn: Connection) -> Iterator[Connection]:
    """`conn` with the driver in autocommit, restored afterwards.

    The DBAPI flag is set directly, for the block only: SQLAlchemy's AUTOCOMMIT
    isolation level would send a SET at every check-in.
    """
    dbapi: Any = conn.connection.dbapi_connection  # psycopg2 or psycopg 3
    dbapi.autocommit = True
    try:
        yield conn
    finally:
        if not getattr(dbapi, "closed", False):  # asyncpg's adapter has no `closed`
            dbapi.autocommit = False


class Savepoint(Protocol):
    def commit(self) -> None: ...
    def rollback(self) -> None: ...


@dataclass(frozen=True)
class Joined:
    """The caller's transaction: the connection to run on, and how to open a savepoint in it."""

    connection: Connection
    savepoint: Callable[[], Savepoint]


def join(caller: object, model: type) -> Joined:
    """The caller's transaction, checked; a Session is flushed first, so its rows go first.

    `model` picks the Session's bind for the queue table, as a query on it would.
    """
    if isinstance(caller, scoped_session):
        caller = caller()
    if isinstance(caller, Session):
        caller.flush()
        return Joined(caller.connection(bind_arguments={"mapper": model}), caller.begin_nested)
    if isinstance(caller, Connection):
        return Joined(caller, caller.begin_nested)
    raise _not_a_session(caller)


def check_caller(caller: object) -> None:
    """Refuse, before anything runs, what `join` could not run an operation in."""
    if caller is not None and not isinstance(caller, (Session, scoped_session, Connection)):
        raise _not_a_session(caller)


def timeout_and_session(timeout: object, session: object) -> tuple[object, object]:
    """`listen`'s timeout and session, q4pg's `listen(tag, session)` (the session second) too.

    Any kind of session counts there, so that the wrong kind is refused as a session,
    not as a timeout.
    """
    return (None, timeout) if isinstance(timeout, _ANY_CALLER) else (timeout, session)


def sync_caller(caller: object) -> Caller | None:
    """The sync side of an asyncio caller's transaction, which `join` runs operations in.

    It is what `AsyncSession.run_sync` hands its function: used in a bridged
    greenlet, its statements are awaited on the event loop.
    """
    if caller is None:
        return None
    if isinstance(caller, async_scoped_session):
        caller = caller()
    if isinstance(caller, AsyncSession):
        return caller.sync_session
    if isinstance(caller, AsyncConnection):
        if caller.sync_connection is None:
            raise InvalidSessionError("the AsyncConnection is not connected yet (async with it)")
        return caller.sync_connection
    hint = " (use sa_pgtq.Queue for those)" if isinstance(caller, (Session, Connection)) else ""
    raise InvalidSessionError(
        "session must be an AsyncSession, an async_scoped_session or an AsyncConnection, "
        f"not {type(caller).__name__}{hint}"
    )


def _not_a_session(caller: object) -> InvalidSessionError:
    hint = " (the asyncio API takes those)" if "Async" in type(caller).__name__ else ""
    return InvalidSessionError(
        "session must be a sqlalchemy Session, a scoped_session or a Connection, "
        f"not {type(caller).__name__}{hint}"
    )


# -- fork safety -----------------------------------------------------------------------

_own_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_guarded: weakref.WeakSet[Engine] = weakref.WeakSet()
_PID = "sa_pgtq_pid"  # key in a pooled connection's info: the pid that opened it


def _forget_pools_after_fork() -> None:
    for engine in list(_own_engines):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _guard_against_forks(engine: Engine) -> None:
    """On an engine sa_pgtq did not create, refuse pooled connections of another process."""
    if engine in _own_engines or engine in _guarded:
        return
    _guarded.add(engine)
    event.listen(engine, "connect", _remember_pid)
    event.listen(engine, "checkout", _refuse_other_process)


def _remember_pid(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info[_PID] = os.getpid()


def _refuse_other_process(
    dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
) -> None:
    # A connection pooled before sa_pgtq saw the engine has no pid: it may be the
    # parent's, so it is replaced too (once; in its own process the driver closes it).
    if record.info.get(_PID) != os.getpid():
        record.dbapi_connection = proxy.dbapi_connection = None  # type: ignore[misc]
        raise DisconnectionError("pooled connection of another process; opening a new one")
