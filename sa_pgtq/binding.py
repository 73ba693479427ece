"""Where a queue's sessions come from, and whose transaction an operation runs in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg2.extensions import parse_dsn
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

Bind = Engine | sessionmaker[Session] | URL | str


def engine_from_url(url: str | URL) -> Engine:
    """An engine for a SQLAlchemy URL, a libpq URI or a libpq key=value DSN.

    Bare `postgresql://` URIs (what libpq and q4pg users have) get the psycopg2
    driver; a URL that names a driver keeps it.
    """
    parsed = dsn_to_url(url) if isinstance(url, str) and "://" not in url else make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return create_engine(parsed)


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

    def __init__(self, bind: Bind, listen_bind: Engine | URL | str | None = None) -> None:
        if isinstance(bind, sessionmaker):
            engine = bind.kw.get("bind")
            if not isinstance(engine, Engine):
                raise TypeError("a sessionmaker passed to Queue must be bound to an Engine")
            self.engine: Engine = engine
            self.sessions: sessionmaker[Session] = bind
        else:
            self.engine = bind if isinstance(bind, Engine) else engine_from_url(bind)
            self.sessions = sessionmaker(self.engine)
        self.listen_engine: Engine = (
            self.engine
            if listen_bind is None
            else listen_bind
            if isinstance(listen_bind, Engine)
            else engine_from_url(listen_bind)
        )
        for engine in (self.engine, self.listen_engine):
            if engine.dialect.name != "postgresql":
                raise ValueError(f"sa_pgtq needs PostgreSQL, not {engine.dialect.name}")

    @staticmethod
    def join(session: object) -> Session:
        """The caller's session, checked and flushed: its pending rows go first."""
        if not isinstance(session, Session):
            raise TypeError(
                f"session must be a sqlalchemy.orm.Session, got {type(session).__name__}"
            )
        session.flush()
        return session

    @contextmanager
    def transaction(self, session: Session | None) -> Iterator[Session | Connection]:
        """The caller's session (flushed, never committed here), or a connection, committed.

        Statements that return no ORM entities need no Session of our own, and a
        plain Connection costs less per call.
        """
        if session is not None:
            yield self.join(session)
            return
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def single_statement(self, session: Session | None) -> Iterator[Session | Connection]:
        """For exactly one statement: the caller's session, or an autocommit connection.

        One statement is atomic on its own; autocommit spares the BEGIN and COMMIT
        round trips. The DBAPI flag is set directly and restored before the
        connection goes back to the pool: SQLAlchemy's AUTOCOMMIT execution option
        would send a SET at every check-in instead.
        """
        if session is not None:
            yield self.join(session)
            return
        with self.engine.connect() as conn:
            dbapi: Any = conn.connection.dbapi_connection  # psycopg2 or psycopg 3
            dbapi.autocommit = True
            try:
                yield conn
            finally:
                if not dbapi.closed:
                    dbapi.autocommit = False

    @contextmanager
    def orm_transaction(self, session: Session | None) -> Iterator[Session]:
        """Like `transaction`, for statements that return ORM entities."""
        if session is not None:
            yield self.join(session)
            return
        # Jobs handed back to the caller must stay readable after this commit.
        with self.sessions(expire_on_commit=False) as own, own.begin():
            yield own
