"""What the sustained-load benchmarks (bench/xmin.py, bench/soak.py) share.

A queue of no-op tasks and messages on its own table, timed fills and drains,
a transaction that holds back the xmin horizon, and the table's sizes as
PostgreSQL reports them.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noops import Noops
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

import sa_pgtq
from sa_pgtq import gateway, schema

TAG = "bench"
BATCH = 1000

SIZES = text(
    """
    SELECT pg_total_relation_size(c.oid) AS total,
           pg_relation_size(c.oid) AS heap,
           pg_indexes_size(c.oid) AS indexes,
           s.n_live_tup AS live,
           s.n_dead_tup AS dead,
           s.autovacuum_count AS autovacuums,
           s.autoanalyze_count AS autoanalyzes
      FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
     WHERE c.oid = to_regclass(:table)
    """
)
INDEX_SIZES = text(
    "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index "
    "WHERE indrelid = to_regclass(:table) ORDER BY 1"
)
SERVER = text(
    "SELECT version(), current_setting('autovacuum_naptime'), "
    "current_setting('autovacuum_vacuum_cost_delay'), current_setting('shared_buffers'), "
    "coalesce((SELECT reloptions::text FROM pg_class WHERE oid = to_regclass(:table)), '{}')"
)


def commit() -> str:
    """The commit measured (with '+changes' when the work tree differs from it)."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, check=False
        ).stdout.strip()

    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return sha + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


@dataclass
class Bench:
    """No-op tasks and messages on a table of the benchmark's own."""

    engine: Engine
    table: str
    version: int = schema.LATEST  # an older one builds the table as older code did
    q: sa_pgtq.Queue = field(init=False)
    noops: Noops = field(init=False)

    def __post_init__(self) -> None:
        self.q = sa_pgtq.Queue(self.engine, name="bench", table_name=self.table)
        with self.engine.begin() as conn:  # a fresh table: sizes start from nothing
            gateway.drop_table(conn, self.table)
            schema.upgrade(schema.operations(conn), to_version=self.version, table_name=self.table)

        self.noops = Noops(self.q, BATCH)

    def reset(self) -> None:
        table = self.engine.dialect.identifier_preparer.format_table(self.q.model.__table__)  # type: ignore[attr-defined]
        with self.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {table}"))

    def push(self, n: int) -> float:
        """Push `n` no-op tasks in batches; tasks per second."""
        started = time.perf_counter()
        self.noops.push(n)
        return n / (time.perf_counter() - started)

    def enqueue(self, n: int) -> float:
        started = time.perf_counter()
        for start in range(0, n, BATCH):
            self.q.enqueue_many(TAG, range(start, min(start + BATCH, n)))
        return n / (time.perf_counter() - started)

    def drain_tasks(self, n: int, *, stop_after: int | None = None) -> float:
        """One worker (`concurrency=1`) runs every due task (or `stop_after` of them), burst
        mode; tasks per second."""
        started = time.perf_counter()
        done = self.noops.drain(stop_after)
        elapsed = time.perf_counter() - started
        assert done == (stop_after or n), f"ran {done} of {stop_after or n} tasks"
        return done / elapsed

    def drain_messages(self, n: int) -> float:
        """`dequeue_immediate` until the tag is empty; messages per second."""
        got = 0
        started = time.perf_counter()
        while self.q.dequeue_immediate(TAG) is not None:
            got += 1
        elapsed = time.perf_counter() - started
        assert got == n, f"got {got} of {n} messages"
        return n / elapsed

    def explain(self, statement: Any, params: dict[str, Any]) -> list[str]:
        """EXPLAIN (ANALYZE, BUFFERS) of one of sa_pgtq's statements, rolled back."""
        with self.engine.connect() as conn:
            compiled = statement.compile(dialect=conn.dialect)
            rows = conn.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS) " + str(compiled), {**compiled.params, **params}
            )
            plan = [row[0] for row in rows]
            conn.rollback()
        return plan

    def sizes(self) -> dict[str, Any]:
        # Backends report their row counts to the statistics when they exit (otherwise up
        # to seconds later): close the pool's connections first.
        self.engine.dispose()
        time.sleep(0.5)
        with self.engine.connect() as conn:
            row = conn.execute(SIZES, {"table": self.table}).mappings().one()
            rows = conn.execute(INDEX_SIZES, {"table": self.table})
            indexes: dict[str, int] = {name: size for name, size in rows}
        return {**row, "index": indexes}

    def server(self) -> list[str]:
        """What the figures depend on: the server and the table's storage settings."""
        with self.engine.connect() as conn:
            version, naptime, delay, buffers, options = conn.execute(
                SERVER, {"table": self.table}
            ).one()
        return [
            version,
            f"autovacuum_naptime={naptime} autovacuum_vacuum_cost_delay={delay} "
            f"shared_buffers={buffers}",
            f"table {self.table} reloptions={options}",
        ]


@contextmanager
def held_xmin(engine: Engine) -> Iterator[str]:
    """A REPEATABLE READ transaction that read something and stays open: a report query
    or a forgotten BEGIN. Vacuum cannot remove what its snapshot might still see."""
    with engine.connect() as conn:
        conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        conn.execute(text("SELECT count(*) FROM pg_class")).scalar_one()
        xmin = conn.execute(
            text("SELECT backend_xmin FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        ).scalar_one()
        assert xmin is not None, "the transaction holds no snapshot"
        yield str(xmin)
        conn.rollback()


def psycopg2_engine(url: str) -> Engine:
    return create_engine(make_url(url).set(drivername="postgresql+psycopg2"))


def human(size: int) -> str:
    return f"{size / 2**20:.1f} MB"
