"""The Alembic chain, create_table() and the model describe one and the same schema."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, MetaData, create_engine, text
from sqlalchemy.engine import make_url

import sa_pgtq
from sa_pgtq import gateway, schema
from sa_pgtq.models import JobMixin, job_model

ROOT = Path(__file__).resolve().parent.parent

SNAPSHOT = """
SELECT 'column', c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
       || CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relname = :t AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL SELECT 'index', indexdef FROM pg_indexes WHERE tablename = :t
UNION ALL SELECT 'constraint', conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE conrelid = to_regclass(:t)
UNION ALL SELECT 'trigger', pg_get_triggerdef(oid) FROM pg_trigger
 WHERE tgrelid = to_regclass(:t) AND NOT tgisinternal
UNION ALL SELECT 'function', pg_get_functiondef(oid) FROM pg_proc WHERE proname = :t || '_notify'
UNION ALL SELECT 'storage', unnest(reloptions) FROM pg_class WHERE oid = to_regclass(:t)
UNION ALL SELECT 'comment', obj_description(to_regclass(:t), 'pg_class')
 WHERE obj_description(to_regclass(:t), 'pg_class') IS NOT NULL
ORDER BY 1, 2
"""


def snapshot(conn: Connection, table: str = "sa_pgtq_jobs") -> list[tuple[str, str]]:
    """The queue table's catalog entries, and (from version 4) its side tables'."""
    rows = list(conn.execute(text(SNAPSHOT), {"t": table}))
    for side in (f"{table}_queues", f"{table}_ticks"):
        found = conn.execute(text(SNAPSHOT), {"t": side})
        rows += [(f"{side} {kind}", item) for kind, item in found]
    return sorted(rows)


OLD_ENQUEUE = text(
    "INSERT INTO sa_pgtq_jobs (queue, tag, data) "
    "VALUES ('default', :tag, to_jsonb(CAST(:data AS text)))"
)


def old_enqueue(engine: Engine, tag: str, data: str) -> None:
    """A message as older code enqueued it: today's statements name today's columns."""
    with engine.begin() as conn:
        conn.execute(OLD_ENQUEUE, {"tag": tag, "data": data})


@pytest.fixture
def new_database(db_url: str) -> Iterator[Callable[[], str]]:
    """Makes empty databases (dropped afterwards); returns their SQLAlchemy URLs."""
    admin = create_engine(db_url, isolation_level="AUTOCOMMIT")
    names: list[str] = []

    def make() -> str:
        names.append(f"sa_pgtq_schema_{uuid.uuid4().hex[:10]}")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{names[-1]}"'))
        return make_url(db_url).set(database=names[-1]).render_as_string(hide_password=False)

    yield make
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def alembic(url: str, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url={url}", *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
    )


def test_create_table_matches_the_migration_chain(new_database: Callable[[], str]) -> None:
    migrated_url, created_url = new_database(), new_database()
    alembic(migrated_url, "upgrade", "head")
    assert sa_pgtq.Queue(created_url).create_table() is True
    assert sa_pgtq.Queue(created_url).create_table() is False, "idempotent"
    with create_engine(migrated_url).connect() as m, create_engine(created_url).connect() as c:
        migrated = snapshot(m)
        assert migrated == snapshot(c)
    kinds = {kind.split()[-1] for kind, _ in migrated}
    assert kinds == {"column", "index", "constraint", "storage", "comment"}, "no trigger since v3"
    paused_at = "sa_pgtq_jobs_queues.paused_at timestamp with time zone"
    assert ("sa_pgtq_jobs_queues column", paused_at) in migrated


def test_migrations_go_down_and_up_again(new_database: Callable[[], str]) -> None:
    url = new_database()
    alembic(url, "upgrade", "sa_pgtq@head")
    engine = create_engine(url)
    sa_pgtq.Queue(engine).enqueue("t", "survives nothing")
    alembic(url, "downgrade", "base")
    with engine.connect() as conn:
        assert snapshot(conn) == []
    alembic(url, "upgrade", "head")
    q = sa_pgtq.Queue(engine)
    q.enqueue("t", 1)
    assert q.dequeue_immediate("t") == 1
    engine.dispose()


def storage(conn: Connection) -> dict[str, str]:
    """The queue table's storage parameters, as the catalog has them."""
    return dict(item.split("=", 1) for kind, item in snapshot(conn) if kind == "storage")


def indexes(conn: Connection) -> set[str]:
    return {item.split()[2] for kind, item in snapshot(conn) if kind == "index"}


def test_version_2_tunes_storage_and_goes_back_to_version_1(
    new_database: Callable[[], str],
) -> None:
    url, version_1_url = new_database(), new_database()
    alembic(version_1_url, "upgrade", "sa_pgtq_0001")
    alembic(url, "upgrade", "sa_pgtq_0001")
    engine, version_1 = create_engine(url), create_engine(version_1_url)
    old_enqueue(engine, "t", "kept through every step")
    with version_1.connect() as conn:
        assert storage(conn) == {}, "version 1 leaves stock settings"
        assert "ix_sa_pgtq_jobs_leases" in indexes(conn)
        v1 = snapshot(conn)

    alembic(url, "upgrade", "sa_pgtq_0002")
    with engine.connect() as conn:
        assert storage(conn) == sa_pgtq.schema.V2_STORAGE
        assert "ix_sa_pgtq_jobs_running" in indexes(conn)
        assert "ix_sa_pgtq_jobs_leases" not in indexes(conn)
        assert ("comment", "sa_pgtq schema version 2") in snapshot(conn)

    alembic(url, "downgrade", "sa_pgtq_0001")
    with engine.connect() as conn:
        assert snapshot(conn) == v1, "the settings are reset and the leases index is back"

    alembic(url, "upgrade", "sa_pgtq_0002")
    with engine.connect() as conn:
        assert storage(conn) == sa_pgtq.schema.V2_STORAGE
    alembic(url, "upgrade", "head")
    assert sa_pgtq.Queue(engine).dequeue_immediate("t") == "kept through every step"
    engine.dispose()
    version_1.dispose()


def triggers(conn: Connection) -> list[str]:
    return [item for kind, item in snapshot(conn) if kind in ("trigger", "function")]


def test_version_3_drops_the_notify_trigger_and_goes_back_to_version_2(
    new_database: Callable[[], str],
) -> None:
    url = new_database()
    alembic(url, "upgrade", "sa_pgtq_0002")
    engine = create_engine(url)
    q = sa_pgtq.Queue(engine, poll_interval=30)  # only a NOTIFY wakes a listener in time
    old_enqueue(engine, "t", "queued under version 2")
    with engine.connect() as conn:
        v2 = snapshot(conn)
        assert len(triggers(conn)) == 2, "version 2 notifies from a trigger and its function"

    alembic(url, "upgrade", "sa_pgtq_0003")
    with engine.connect() as conn:
        assert triggers(conn) == []
        assert ("comment", "sa_pgtq schema version 3") in snapshot(conn)
        v3 = snapshot(conn)
    alembic(url, "upgrade", "head")
    stream = q.listen("t", timeout=10)
    assert next(stream) == "queued under version 2"
    threading.Timer(0.2, q.enqueue, ("t", "woken by the INSERT's own NOTIFY")).start()
    started = time.monotonic()
    assert next(stream) == "woken by the INSERT's own NOTIFY"
    assert time.monotonic() - started < 5, "woken by NOTIFY, not by the 30 s poll"
    stream.close()

    alembic(url, "downgrade", "sa_pgtq_0003")
    with engine.connect() as conn:
        assert snapshot(conn) == v3
    alembic(url, "downgrade", "sa_pgtq_0002")
    with engine.connect() as conn:
        assert snapshot(conn) == v2, "the trigger and its function are back"
    engine.dispose()


def test_a_table_older_code_made_is_left_alone_and_dropped_whole(
    new_database: Callable[[], str],
) -> None:
    url = new_database()
    alembic(url, "upgrade", "sa_pgtq_0001")  # as create_table() made it before version 2
    engine = create_engine(url)
    assert sa_pgtq.Queue(engine).create_table() is False, "never upgraded behind Alembic's back"
    with engine.begin() as conn:
        assert storage(conn) == {}
        assert gateway.drop_table(conn, "sa_pgtq_jobs") is True
    with engine.connect() as conn:
        assert snapshot(conn) == []
    engine.dispose()


def test_the_model_matches_the_migrated_table(new_database: Callable[[], str]) -> None:
    url = new_database()
    alembic(url, "upgrade", "head")
    # Other tests declare more queue tables on sa_pgtq's Base; compare the default one
    # and its side tables.
    default_table_only = MetaData()
    for name in ("sa_pgtq_jobs", "sa_pgtq_jobs_queues", "sa_pgtq_jobs_ticks"):
        sa_pgtq.Job.metadata.tables[name].to_metadata(default_table_only)
    with create_engine(url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), default_table_only)
    assert diff == []


def test_a_custom_table_name_migrates_and_works(new_database: Callable[[], str]) -> None:
    url = new_database()
    alembic(url, "-x", "sa_pgtq_table=app_jobs", "upgrade", "head")
    q = sa_pgtq.Queue(url, table_name="app_jobs")
    assert q.create_table() is False, "the migration made it already"
    q.enqueue("t", "in app_jobs")
    assert next(iter(q.listen("t", timeout=2))) == "in app_jobs"
    with create_engine(url).connect() as conn:
        assert [k for k, _ in snapshot(conn, "app_jobs")].count("index") == 10


def test_host_autogenerate_ignores_the_queue_table(new_database: Callable[[], str]) -> None:
    from sqlalchemy import Column, Integer, MetaData, Table

    url = new_database()
    sa_pgtq.Queue(url).create_table()
    app_metadata = MetaData()
    Table("orders", app_metadata, Column("id", Integer, primary_key=True))
    with create_engine(url).connect() as conn:
        plain = compare_metadata(MigrationContext.configure(conn), app_metadata)
        hooked = compare_metadata(
            MigrationContext.configure(
                conn, opts={"include_object": sa_pgtq.schema.include_object}
            ),
            app_metadata,
        )
    assert ("remove_table", "sa_pgtq_jobs_ticks") in [
        (d[0], d[1].name) for d in plain if d[0] == "remove_table"
    ]
    assert [d[0] for d in hooked] == ["add_table"], "only the app's own table, never the queue's"


def test_a_mixin_model_on_the_apps_own_base(new_database: Callable[[], str]) -> None:
    from sqlalchemy.orm import DeclarativeBase

    class AppBase(DeclarativeBase):
        pass

    class AppJob(JobMixin, AppBase):
        __tablename__ = f"mixin_jobs_{uuid.uuid4().hex[:6]}"

    url = new_database()
    q = sa_pgtq.Queue(url, model=AppJob)
    q.create_table()
    q.enqueue("t", 1)
    job = q.dequeue_item_immediate("t")
    assert isinstance(job, AppJob)
    with create_engine(url).connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), AppBase.metadata) == []


def test_queue_manager_takes_q4pg_arguments(db_url: str) -> None:
    url = make_url(db_url)
    host = url.query.get("host") or url.host or "localhost"
    parts = {
        "host": host,
        "port": url.port,
        "dbname": url.database,
        "user": url.username,
        "password": url.password,
    }
    dsn = " ".join(f"{k}={v}" for k, v in parts.items() if v)
    qm = sa_pgtq.QueueManager(dsn=dsn, table_name="q4pg_jobs", data_type="jsonb", data_length=50)
    qm.create_table()
    qm.enqueue("t", {"k": "v"})
    with qm.dequeue("t") as data:
        assert data == {"k": "v"}
    with pytest.raises(sa_pgtq.errors.DataTooLongError):
        qm.enqueue("t", "x" * 51)
    assert job_model("q4pg_jobs").__tablename__ == "q4pg_jobs"


HOST_ENV = """
from alembic import context
from sqlalchemy import create_engine
import sa_pgtq

engine = create_engine(context.get_x_argument(as_dictionary=True)["url"])
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=None,
                      include_object=sa_pgtq.schema.include_object)
    context.run_migrations()
"""

HOST_REVISION = """
from alembic import op
import sqlalchemy as sa

revision = "host_0001"
down_revision = None
branch_labels = ("host",)
depends_on = None


def upgrade():
    op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("orders")
"""


def test_a_host_app_runs_the_branch_from_the_installed_package(
    new_database: Callable[[], str], tmp_path: Path
) -> None:
    (tmp_path / "migrations" / "versions").mkdir(parents=True)
    (tmp_path / "migrations" / "env.py").write_text(HOST_ENV)
    (tmp_path / "migrations" / "versions" / "host_0001.py").write_text(HOST_REVISION)
    (tmp_path / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\n"
        "version_locations = %(here)s/migrations/versions sa_pgtq.migrations:versions\n"
    )
    url = new_database()

    def host_alembic(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "alembic", "-x", f"url={url}", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout

    host_alembic("upgrade", "sa_pgtq@head")
    host_alembic("upgrade", "heads")
    assert {"host_0001 (head)", "sa_pgtq_0005 (head)"} <= set(
        line.split(" (effective")[0] for line in host_alembic("current").split("\n") if line
    )
    sa_pgtq.Queue(url).enqueue("t", "queued in the host's database")
    with create_engine(url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM orders")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM sa_pgtq_jobs")).scalar_one() == 1
    host_alembic("downgrade", "sa_pgtq@base")
    with create_engine(url).connect() as conn:
        assert snapshot(conn) == []


V1_JOBS = text(
    """
    INSERT INTO sa_pgtq_jobs (queue, kind, tag, data, state, attempts, lease_expires_at,
                              locked_by, last_error)
    VALUES ('default', 'task', 'add', '{"args": [1, 2], "kwargs": {}}', 'queued', 0,
            NULL, NULL, NULL),
           ('default', 'task', 'add', '{"args": [3, 4], "kwargs": {}}', 'running', 1,
            now() - interval '1 minute', 'a-worker-that-died', NULL),
           ('default', 'task', 'add', '{"args": [5, 6], "kwargs": {}}', 'failed', 5,
            NULL, NULL, 'RuntimeError: it failed under version 1'),
           ('default', 'message', 'email', '"hello"', 'queued', 0, NULL, NULL, NULL)
    """
)


def test_upgrades_keep_live_jobs_from_version_1_and_go_back(
    new_database: Callable[[], str],
) -> None:
    url = new_database()
    alembic(url, "upgrade", "sa_pgtq_0001")
    engine = create_engine(url)
    with engine.connect() as conn:
        v1 = snapshot(conn)
    with engine.begin() as conn:
        conn.execute(V1_JOBS)  # queued, running (its worker died), failed, and a message

    alembic(url, "upgrade", "head")
    with engine.connect() as conn:
        assert ("comment", f"sa_pgtq schema version {schema.LATEST}") in snapshot(conn)
    q = sa_pgtq.Queue(engine, retention=3600)

    @q.handler()
    def add(a: int, b: int) -> int:
        return a + b

    assert [job.state for job in q.failed()] == ["failed"]
    sa_pgtq.Worker(q, install_signal_handlers=False).run(burst=True)  # rescues the running one
    assert q.result(1, 10) == 3 and q.result(2, 10) == 7
    assert q.requeue_failed() == 1
    sa_pgtq.Worker(q, install_signal_handlers=False).run(burst=True)
    assert q.result(3, 10) == 11
    assert q.dequeue_immediate("email") == "hello"
    assert add.options(unique_key="k").push(0, 0) == add.options(unique_key="k").push(1, 1)

    alembic(url, "downgrade", "sa_pgtq_0001")
    with engine.connect() as conn:
        assert snapshot(conn) == v1
        left = conn.execute(text("SELECT state, data FROM sa_pgtq_jobs")).all()
    assert left == [("queued", {"args": [0, 0], "kwargs": {}})], "finished rows went with v4"
    engine.dispose()
