"""Where each sync operation's time goes: sa_pgtq, SQLAlchemy, other Python, driver, server.

    python bench/breakdown.py [--url URL] [--driver psycopg2|psycopg] [-n 2000]
                            [--rounds 3] [--chunks 5] [--top 8] [--json]
                            [--ops enqueue,enqueue_session,enqueue_many,dequeue,worker,
                                   floor_autocommit,floor_session,floor_dequeue]

Without --url (nor DATABASE_URL / SA_PGTQ_TEST_URL) it starts a throwaway embedded
PostgreSQL with pg_stat_statements and WAL I/O timing switched on (a restart).

Method, per operation (after a warm-up, on an emptied table, `--rounds` times; 1 and 2
alternate in `--chunks` chunks so that the machine's ups and downs hit both alike; the
worker, whose start-up is part of its cost, runs one burst of `n` tasks per side):

1. Unprofiled: run it `n` times and time it: "wall", the truth to reconcile with.
   The server's own counters are read around these runs (see 4).
2. Profiled: run it `n` times more under cProfile, on this thread and on every
   thread started meanwhile (the worker's).
3. Each function's own time (tottime) goes to where its code lives: sa_pgtq's package,
   SQLAlchemy's, the DBAPI's (psycopg2; psycopg and psycopg_binary for psycopg 3) as
   "driver+wire+server" (its C methods `cursor.execute`, `connection.commit` block
   until the server answers), anything else (stdlib, this script) as "other Python".
   A built-in C function (isinstance, dict.get, the json encoder's C part) is charged
   to the category of the function that called it, edge by edge: `isinstance` called
   by SQLAlchemy is SQLAlchemy's cost. Time blocked in a lock or sleep (a thread
   joining the worker's threads, the worker's idle services) is "waiting", left out.
   Calls per operation (Python functions and built-ins, calls / n) do not depend on
   the machine's noise: compare those across commits before the timings.
4. The server's share of driver+wire+server: pg_stat_statements' planning + execution
   time of every statement of the unprofiled run (BEGIN and COMMIT included, as
   statements/op), plus the WAL write + fsync time of client backends and the WAL
   writer (pg_stat_io on PostgreSQL 18, pg_stat_wal before; `track_wal_io_timing`),
   the bulk of a COMMIT with synchronous_commit. What neither counts (parse/bind,
   sending rows, commit bookkeeping, NOTIFY queueing, the round trips themselves)
   stays in "driver+wire+rest". Without pg_stat_statements loaded (a --url server) the split
   is left out. A backend may hold its I/O statistics back for 10 s, so with WAL
   timing the pool is emptied around the unprofiled run (exiting backends flush).
5. cProfile inflates Python, not the time blocked in the driver's C calls: every
   profiled call costs some, and on 3.11 profiling also takes the interpreter off
   its fast path for all bytecode. So the driver's built-in (C) time is kept as
   recorded, and everything else (the Python categories, and the driver's own Python
   code: psycopg 3 has much) is scaled by one factor so that the sum is the
   unprofiled wall time: "cProf x" is how much cProfile inflated it. The raw
   profiled figures are printed too. Wall and profile come from two runs, so their
   noise lands in the scaled Python figures: trust medians, and the call counts.
   For the worker, its services' threads run alongside the producer: their work
   adds to the profile without adding to wall (it is scaled down with the rest).

Blind spots: SQLAlchemy's Cython-compiled parts (sqlalchemy/**/_*_cy.so) are invisible
to cProfile, so their time lands in the nearest profiled caller (e.g. `sorted()` over
a Result, charged to sa_pgtq, mostly pays SQLAlchemy's compiled row iteration); and
psycopg 3 waits at connect through the stdlib's `selectors` ("other Python").

Figures are per operation (enqueue_many: per batch of 1000, and per job), medians
over rounds. Compare within one run; absolute figures move with the machine's load.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import json
import os
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import CodeType
from typing import Any

import sqlalchemy
from noops import Noops
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

import sa_pgtq
from sa_pgtq.embedded import configured_url, embedded_server

TAG = "p"
BATCH = 1000
PY_CATEGORIES = ("sa_pgtq", "SQLAlchemy", "other Python")
DB = "driver+wire+server"
WAITING = "waiting"
CALLER = "caller"  # a built-in charged to whoever called it
DRIVERS = {"psycopg2": ("psycopg2",), "psycopg": ("psycopg", "psycopg_binary", "psycopg_c")}
WAITS = {
    "<method 'acquire' of '_thread.lock' objects>",
    "<method 'acquire' of '_thread.RLock' objects>",
    "<built-in method time.sleep>",
}
_OF_TYPE = re.compile(r"^<method '\w+' of '([\w.]+)' objects>$")
_BUILTIN = re.compile(r"^<built-in (?:method|function) ([\w.]+)>$")

# -- classifying functions -------------------------------------------------------------


def package_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(next(iter(spec.submodule_search_locations)), "")


class Classifier:
    """The category of a function, from where its code lives or (built-ins) its module."""

    def __init__(self, driver: str) -> None:
        self.driver_modules = DRIVERS[driver]
        self.dirs: list[tuple[str, str]] = [
            (os.path.join(os.path.dirname(sa_pgtq.__file__), ""), "sa_pgtq"),
            (os.path.join(os.path.dirname(sqlalchemy.__file__), ""), "SQLAlchemy"),
        ]
        for module in self.driver_modules:
            where = package_dir(module)
            if where:
                self.dirs.append((where, DB))

    def code(self, code: CodeType) -> str:
        return next(
            (cat for where, cat in self.dirs if code.co_filename.startswith(where)),
            "other Python",
        )

    def builtin(self, label: str) -> str:
        if label in WAITS:
            return WAITING
        found = _OF_TYPE.match(label) or _BUILTIN.match(label)
        module = found.group(1).split(".")[0] if found else ""
        if module in self.driver_modules:
            return DB
        return {"sqlalchemy": "SQLAlchemy", "sa_pgtq": "sa_pgtq"}.get(module, CALLER)

    def of(self, code: CodeType | str) -> str:
        return self.builtin(code) if isinstance(code, str) else self.code(code)


def label(code: CodeType | str) -> str:
    if isinstance(code, str):
        return code
    path = code.co_filename
    for marker in ("site-packages/", "/sa_pgtq/", "/bench/"):
        if marker in path:
            path = marker.strip("/") + "/" + path.split(marker, 1)[1]
            break
    return f"{path}:{code.co_firstlineno}({code.co_qualname})"


# -- profiling -----------------------------------------------------------------------


@dataclass
class Profile:
    """Seconds and calls per category, and per function (for --top), over one profiled run."""

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    builtin_seconds: dict[str, float] = field(default_factory=dict)
    functions: dict[str, tuple[str, float, int]] = field(default_factory=dict)

    def add(self, category: str, name: str, seconds: float, calls: int, builtin: bool) -> None:
        self.seconds[category] = self.seconds.get(category, 0.0) + seconds
        self.calls[category] = self.calls.get(category, 0) + calls
        if builtin:
            self.builtin_seconds[category] = self.builtin_seconds.get(category, 0.0) + seconds
        _, s, c = self.functions.get(name, (category, 0.0, 0))
        self.functions[name] = (category, s + seconds, c + calls)


@contextmanager
def profiled(into: list[Any]) -> Iterator[None]:
    """Profile this thread, and every thread started in the block, into `into`.

    Python 3.11's profiler follows one thread; `threading.setprofile` gives each new
    thread a hook whose first event starts a profiler of its own there.
    """

    def start_in_thread(frame: object, event: str, arg: object) -> None:
        profiler = cProfile.Profile()
        into.append(profiler)
        profiler.enable()

    main = cProfile.Profile()
    into.append(main)
    threading.setprofile(start_in_thread)  # type: ignore[arg-type]
    main.enable()
    try:
        yield
    finally:
        main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]


def attribute(profilers: list[Any], classify: Classifier) -> Profile:
    """Own time per category; a built-in's time goes to its callers' categories, per edge."""
    out = Profile()
    entries = [entry for p in profilers for entry in p.getstats()]
    charged: dict[str, tuple[float, int]] = {}  # built-in label -> (seconds, calls) via edges
    for entry in entries:
        caller = classify.of(entry.code)
        if caller == CALLER:
            caller = "other Python"  # a built-in calling back (sorted's key=...)
        for sub in entry.calls or ():
            if isinstance(sub.code, str) and classify.builtin(sub.code) == CALLER:
                out.add(caller, label(sub.code), sub.inlinetime, sub.callcount, True)
                s, c = charged.get(sub.code, (0.0, 0))
                charged[sub.code] = (s + sub.inlinetime, c + sub.callcount)
    for entry in entries:
        category = classify.of(entry.code)
        seconds, calls = entry.inlinetime, entry.callcount
        if category == CALLER:  # whatever no profiled caller accounts for
            s, c = charged.get(entry.code, (0.0, 0))
            category, seconds, calls = "other Python", seconds - s, calls - c
            if seconds <= 0 and calls <= 0:
                continue
        out.add(category, label(entry.code), seconds, calls, isinstance(entry.code, str))
    return out


# -- the server's own counters -------------------------------------------------------


@dataclass
class Counters:
    plan_exec_ms: float
    statements: int
    wal_ms: float | None


class ServerClock:
    """Reads pg_stat_statements (and the WAL I/O timings) for this database, if present."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Any = None
        with engine.connect() as conn:
            self.version = int(conn.scalar(text("SHOW server_version_num")) or 0)
            preload = str(conn.scalar(text("SHOW shared_preload_libraries")))
            self.statements = "pg_stat_statements" in preload
            if self.statements:
                try:
                    conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
                    conn.commit()
                except DBAPIError:
                    self.statements = False
            self.wal = conn.scalar(text("SHOW track_wal_io_timing")) == "on"

    def describe(self) -> str:
        if not self.statements:
            return "server split: n/a (pg_stat_statements is not loaded on this server)"
        wal = "WAL write+fsync time" if self.wal else "no WAL timing (track_wal_io_timing off)"
        return f"server split: pg_stat_statements (plan+exec), {wal}"

    def read(self, closing: bool) -> Counters | None:
        """The counters now, read on a connection of its own in autocommit (no BEGIN or
        COMMIT of ours counted). Flushing the WAL statistics empties the pool, and the
        next connection's set-up statements count too: at a window's opening, the
        statement counters are read after that reconnect; at its close, before."""
        if not self.statements:
            return None
        first = self._read_statements() if closing else None
        wal = self._read_wal() if self.wal else None
        plan_exec, count = first or self._read_statements()
        return Counters(plan_exec, count, wal)

    def _query(self, sql: str) -> tuple[Any, ...]:
        if self._conn is None:
            self._conn = self.engine.raw_connection()
            self._conn.detach()  # kept out of the pool, and of its disposal
            self._conn.dbapi_connection.autocommit = True  # psycopg2 and psycopg 3
        cursor = self._conn.cursor()
        cursor.execute(sql)
        row = cursor.fetchone()
        cursor.close()
        return tuple(row)

    def _read_statements(self) -> tuple[float, int]:
        plan_exec, count = self._query(
            "SELECT coalesce(sum(total_plan_time + total_exec_time), 0),"
            " coalesce(sum(calls), 0) FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND query NOT LIKE '%pg_stat%'"
        )
        return float(plan_exec), int(count)

    def _read_wal(self) -> float:
        """Close the pooled connections (a backend flushes its statistics when it exits;
        idle, it may hold them back for 10 s), then read, then reconnect one."""
        self.engine.dispose()
        others = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        deadline = time.monotonic() + 5.0
        while self._query(others)[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        (wal,) = self._query(
            "SELECT coalesce(sum(write_time + fsync_time), 0) FROM pg_stat_io"
            " WHERE object = 'wal' AND backend_type IN ('client backend', 'walwriter')"
            if self.version >= 180000
            else "SELECT wal_write_time + wal_sync_time FROM pg_stat_wal"
        )
        with self.engine.connect():
            pass  # the operation's connection, opened outside its timing
        return float(wal or 0.0)


@contextmanager
def database(url: str | None) -> Iterator[str]:
    """A given server as is; else an embedded one, restarted with pg_stat_statements loaded."""
    url = url or configured_url()
    if url:
        yield url
        return
    with embedded_server() as server:
        engine = create_engine(make_url(server.uri).set(drivername="postgresql+psycopg2"))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for setting in (
                "shared_preload_libraries = 'pg_stat_statements'",
                "pg_stat_statements.track_planning = on",
                "track_wal_io_timing = on",
            ):
                conn.execute(text(f"ALTER SYSTEM SET {setting}"))
        engine.dispose()
        server.restart()
        yield server.uri


# -- the operations ------------------------------------------------------------------


@dataclass
class Operation:
    name: str
    what: str
    jobs: int  # jobs per operation
    prepare: Callable[[int], None]  # load what `run(count)` consumes
    run: Callable[[int], None]  # the operation, `count` times
    chunked: bool = True  # False: its runs have a start-up cost, paid once per round


#: The floors of the side-by-side harness, split the same way: the least SQL a queue can
#: issue (a minimal table, no NOTIFY, the bare DBAPI), and its INSERT in a Session.
FLOOR_TABLE = (
    "CREATE TABLE IF NOT EXISTS rawq (id bigserial PRIMARY KEY, tag text NOT NULL, "
    "data jsonb NOT NULL, run_at timestamptz NOT NULL DEFAULT now(), "
    "attempts int NOT NULL DEFAULT 0); "
    "CREATE INDEX IF NOT EXISTS rawq_fetch ON rawq (tag, run_at, id)"
)
FLOOR_INSERT = "INSERT INTO rawq (tag, data) VALUES (%s, %s)"
FLOOR_TAKE = (
    "DELETE FROM rawq WHERE id IN (SELECT id FROM rawq WHERE tag = %s AND run_at <= now() "
    "ORDER BY run_at, id FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING data"
)


class Bench:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.q = sa_pgtq.Queue(engine, name="profile")
        self.q.create_table()
        with engine.begin() as conn:
            conn.exec_driver_sql(FLOOR_TABLE)
        self.noops = Noops(self.q)
        self.batch = [{"i": i} for i in range(BATCH)]

    def reset(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {self.q.table_name}, rawq"))

    @contextmanager
    def dbapi(self, *, autocommit: bool) -> Iterator[Any]:
        """A bare DBAPI connection from the pool (returned to it: the pool is emptied later)."""
        conn = self.engine.raw_connection()
        dbapi: Any = conn.dbapi_connection  # psycopg2 or psycopg 3
        dbapi.autocommit = autocommit
        try:
            yield dbapi
        finally:
            dbapi.autocommit = False
            conn.close()

    def floor_autocommit(self, count: int) -> None:
        with self.dbapi(autocommit=True) as dbapi:
            cursor = dbapi.cursor()
            for i in range(count):
                cursor.execute(FLOOR_INSERT, (TAG, json.dumps({"i": i})))

    def floor_session(self, count: int) -> None:
        insert = text("INSERT INTO rawq (tag, data) VALUES (:tag, :data)")
        for i in range(count):
            with Session(self.engine) as s, s.begin():
                s.execute(insert, {"tag": TAG, "data": json.dumps({"i": i})})

    def floor_fill(self, count: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO rawq (tag, data) "
                    "SELECT :tag, jsonb_build_object('i', n) FROM generate_series(1, :count) n"
                ),
                {"tag": TAG, "count": count},
            )

    def floor_dequeue(self, count: int) -> None:
        with self.dbapi(autocommit=False) as dbapi:
            for _ in range(count):
                with dbapi.cursor() as cursor:
                    cursor.execute(FLOOR_TAKE, (TAG,))
                    assert cursor.fetchall()
                dbapi.commit()

    def nothing(self, count: int) -> None:
        pass

    def enqueue(self, count: int) -> None:
        for i in range(count):
            self.q.enqueue(TAG, {"i": i})

    def enqueue_session(self, count: int) -> None:
        for i in range(count):
            with Session(self.engine) as s, s.begin():
                self.q.enqueue(TAG, {"i": i}, session=s)

    def enqueue_many(self, count: int) -> None:
        for _ in range(count):
            with Session(self.engine) as s, s.begin():
                self.q.enqueue_many(TAG, self.batch, session=s)

    def fill(self, count: int) -> None:
        self.enqueue_many(-(-count // BATCH))

    def dequeue(self, count: int) -> None:
        for _ in range(count):
            with self.q.dequeue(TAG) as data:
                assert data is not None

    def drain(self, count: int) -> None:
        done = self.noops.drain()
        assert done == count, (done, count)

    def operations(self) -> list[Operation]:
        return [
            Operation(
                "enqueue",
                "q.enqueue(tag, data): autocommit, one statement",
                1,
                self.nothing,
                self.enqueue,
            ),
            Operation(
                "enqueue_session",
                "with Session(engine) as s, s.begin(): q.enqueue(..., session=s) (whole block)",
                1,
                self.nothing,
                self.enqueue_session,
            ),
            Operation(
                "enqueue_many",
                f"q.enqueue_many(tag, {BATCH} dicts, session=s) in a Session block, per batch",
                BATCH,
                self.nothing,
                self.enqueue_many,
            ),
            Operation(
                "dequeue",
                "with q.dequeue(tag) as data: one transaction per job",
                1,
                self.fill,
                self.dequeue,
            ),
            Operation(
                "worker",
                "Worker(q).run(burst=True) over pushed no-op tasks, per task",
                1,
                self.noops.push,
                self.drain,
                chunked=False,
            ),
            Operation(
                "floor_autocommit",
                "the harness's floor: a bare DBAPI INSERT into a minimal table, autocommit",
                1,
                self.nothing,
                self.floor_autocommit,
            ),
            Operation(
                "floor_session",
                "that INSERT in with Session(engine) as s, s.begin(): s.execute(text(...))",
                1,
                self.nothing,
                self.floor_session,
            ),
            Operation(
                "floor_dequeue",
                "the floor's 1-job DELETE ... SKIP LOCKED RETURNING, one DBAPI transaction each",
                1,
                self.floor_fill,
                self.floor_dequeue,
            ),
        ]


def round_trip_us(engine: Engine, count: int = 300) -> float:
    """The median time of `SELECT 1` through the bare DBAPI cursor: one round trip's floor."""
    conn = engine.raw_connection()
    dbapi: Any = conn.dbapi_connection
    try:
        dbapi.autocommit = True  # psycopg2 and psycopg 3
        cursor = dbapi.cursor()
        times = []
        for _ in range(count):
            started = time.perf_counter()
            cursor.execute("SELECT 1")
            cursor.fetchall()
            times.append(time.perf_counter() - started)
        dbapi.autocommit = False
    finally:
        conn.close()
    return statistics.median(times) * 1e6


# -- measuring -----------------------------------------------------------------------


@dataclass
class Round:
    wall: float
    profile: Profile
    server: Counters | None  # deltas over the unprofiled run


def measure(
    bench: Bench,
    op: Operation,
    count: int,
    chunks: int,
    classify: Classifier,
    clock: ServerClock,
) -> Round:
    """`count` operations unprofiled and `count` profiled, alternating in `chunks` chunks.

    Alternating spreads the machine's ups and downs over both sides alike.
    """
    bench.reset()
    wall = 0.0
    profilers: list[Any] = []
    server: Counters | None = None
    for part in split(count, chunks):
        op.prepare(part)
        before = clock.read(closing=False)
        started = time.perf_counter()
        op.run(part)
        wall += time.perf_counter() - started
        after = clock.read(closing=True)
        if before is not None and after is not None:
            wal = None if before.wal_ms is None else (after.wal_ms or 0.0) - before.wal_ms
            server = Counters(
                (server.plan_exec_ms if server else 0.0) + after.plan_exec_ms - before.plan_exec_ms,
                (server.statements if server else 0) + after.statements - before.statements,
                None if wal is None else (server.wal_ms or 0.0 if server else 0.0) + wal,
            )
        op.prepare(part)
        with profiled(profilers):
            op.run(part)
    return Round(wall, attribute(profilers, classify), server)


def split(count: int, chunks: int) -> list[int]:
    base, extra = divmod(count, chunks)
    return [base + (i < extra) for i in range(chunks) if base + (i < extra)]


def summarize(op: Operation, count: int, rounds: list[Round], top: int) -> dict[str, Any]:
    """Per-operation µs: medians over rounds, raw and corrected for cProfile's overhead."""
    us = 1e6 / count
    categories = (*PY_CATEGORIES, DB)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    raw = {c: median([r.profile.seconds.get(c, 0.0) * us for r in rounds]) for c in categories}
    wall = median([r.wall * us for r in rounds])
    # The driver's C calls (blocked on the server) as recorded; the rest scaled to the wall.
    blocked = median([r.profile.builtin_seconds.get(DB, 0.0) * us for r in rounds])
    rest = sum(raw.values()) - blocked
    inflation = rest / (wall - blocked) if wall > blocked and rest > 0 else None
    fixed: dict[str, float | None] = {c: None for c in categories}
    if inflation is not None:
        fixed = {c: raw[c] / inflation for c in PY_CATEGORIES}
        fixed[DB] = blocked + (raw[DB] - blocked) / inflation
    result: dict[str, Any] = {
        "operation": op.name,
        "what": op.what,
        "count": count,
        "jobs_per_op": op.jobs,
        "rounds": len(rounds),
        "wall_us": wall,
        "profiled_us": median([sum(raw_round(r, categories)) * us for r in rounds]),
        "waiting_us": median([r.profile.seconds.get(WAITING, 0.0) * us for r in rounds]),
        "python_calls": median([sum(r.profile.calls.values()) / count for r in rounds]),
        "calls_by_category": {
            c: median([r.profile.calls.get(c, 0) / count for r in rounds]) for c in categories
        },
        "raw_us": raw,
        "corrected_us": fixed,
        "cprofile_inflation": inflation,
    }
    servers = [r.server for r in rounds if r.server is not None]
    if servers:
        result["server_statements"] = median([s.statements / count for s in servers])
        result["server_plan_exec_us"] = median([s.plan_exec_ms * 1000 / count for s in servers])
        wal = [s.wal_ms * 1000 / count for s in servers if s.wal_ms is not None]
        result["server_wal_us"] = median(wal) if wal else None
    if top:
        functions: dict[str, tuple[str, float, int]] = {}
        for r in rounds:
            for name, (cat, s, c) in r.profile.functions.items():
                _, s0, c0 = functions.get(name, (cat, 0.0, 0))
                functions[name] = (cat, s0 + s, c0 + c)
        hot = sorted(functions.items(), key=lambda item: -item[1][1])
        result["top"] = [
            {
                "function": name,
                "category": cat,
                "us": s * us / len(rounds),
                "calls": c / count / len(rounds),
            }
            for name, (cat, s, c) in hot
            if cat != WAITING
        ][:top]
    return result


def raw_round(r: Round, categories: tuple[str, ...]) -> list[float]:
    return [r.profile.seconds.get(c, 0.0) for c in categories]


# -- output --------------------------------------------------------------------------


def rows_for(result: dict[str, Any]) -> list[tuple[str, dict[str, Any], float]]:
    """The operation's row, and for a batch also its per-job row (name, result, divisor)."""
    rows = [(result["operation"], result, 1.0)]
    if result["jobs_per_op"] > 1:
        rows.append(("  per job", result, float(result["jobs_per_op"])))
    return rows


def print_tables(results: list[dict[str, Any]], header: str) -> None:
    print(header)
    print()
    print(
        "µs per operation, Python scaled to the unprofiled wall; drv+wire+srv split on the right:"
    )
    heads = ("wall", "sa_pgtq", "SQLA", "otherPy", "drv+wire+srv", "cProf x", "srv plan+ex")
    heads += ("srv WAL", "drv+wir+rest")
    print(f"{'operation':16s}" + "".join(f"{h:>13s}" for h in heads))
    for result in results:
        for name, r, div in rows_for(result):
            fixed = r["corrected_us"]
            plan = r.get("server_plan_exec_us")
            wal = r.get("server_wal_us")
            db = fixed[DB]
            rest = None if plan is None or db is None else db - plan - (wal or 0.0)
            inflation = r["cprofile_inflation"]
            cells = [r["wall_us"], *(fixed[c] for c in (*PY_CATEGORIES, DB))]
            cells += [None if inflation is None else inflation * div, plan, wal, rest]
            text_cells = [f"{'n/a':>13s}" if v is None else f"{v / div:13.1f}" for v in cells]
            print(f"{name:16s}" + "".join(text_cells))
    if any(r["cprofile_inflation"] is None for r in results):
        print("(n/a: the wall time was below the profiled driver time, too noisy to scale)")
    print()
    print("raw cProfile µs per operation, and counts per operation:")
    heads = ("sa_pgtq", "SQLA", "otherPy", "drv+wire+srv", "profiled", "wall", "calls")
    heads += ("SQLA calls", "server stmts")
    print(f"{'operation':16s}" + "".join(f"{h:>13s}" for h in heads))
    for result in results:
        for name, r, div in rows_for(result):
            raw = r["raw_us"]
            cells = [*(raw[c] for c in (*PY_CATEGORIES, DB)), r["profiled_us"], r["wall_us"]]
            counts = [r["python_calls"], r["calls_by_category"]["SQLAlchemy"]]
            stmts = r.get("server_statements")
            line = "".join(f"{v / div:13.1f}" for v in cells)
            line += "".join(f"{v / div:13.1f}" for v in counts)
            line += f"{'n/a':>13s}" if stmts is None else f"{stmts / div:13.3f}"
            print(f"{name:16s}{line}")
    for result in results:
        if result.get("top"):
            print()
            print(f"{result['operation']}: hottest functions (raw µs/op, calls/op)")
            for f in result["top"]:
                print(f"  {f['us']:9.1f} {f['calls']:9.2f}  {f['category']:18s} {f['function']}")
    waits = [r for r in results if r["waiting_us"] > 0.5]
    if waits:
        print()
        for r in waits:
            blocked = f"{r['waiting_us']:.1f} µs/op blocked (thread joins, idle services)"
            print(f"{r['operation']}: {blocked}, left out")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", help="PostgreSQL URL (default: DATABASE_URL, else embedded)")
    parser.add_argument("--driver", choices=sorted(DRIVERS), default="psycopg2")
    parser.add_argument("-n", type=int, default=2000, help="operations per run (batches: n/100)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=5, help="alternations per round")
    parser.add_argument("--ops", help="comma-separated operations (default: all)")
    parser.add_argument("--top", type=int, default=0, help="list the N hottest functions")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args()

    with database(args.url) as uri:
        engine = create_engine(make_url(uri).set(drivername=f"postgresql+{args.driver}"))
        bench = Bench(engine)
        classify = Classifier(args.driver)
        clock = ServerClock(engine)
        chosen = args.ops.split(",") if args.ops else None
        ops = [op for op in bench.operations() if chosen is None or op.name in chosen]
        results = []
        for op in ops:
            count = max(args.n // 100, 5) if op.jobs > 1 else args.n
            warm = max(count // 10, 2 if op.jobs > 1 else 100)
            bench.reset()
            op.prepare(warm)
            op.run(warm)
            rounds = [
                measure(bench, op, count, args.chunks if op.chunked else 1, classify, clock)
                for _ in range(args.rounds)
            ]
            results.append(summarize(op, count, rounds, args.top))
            if not args.json:
                print(f"  ({op.name} done)", file=sys.stderr, flush=True)
        round_trip = round_trip_us(engine)
        engine.dispose()
    meta = {
        "driver": args.driver,
        "python": sys.version.split()[0],
        "sqlalchemy": sqlalchemy.__version__,
        "server_version_num": clock.version,
        "server_split": clock.describe(),
        "round_trip_us": round_trip,
    }
    if args.json:
        print(json.dumps({"meta": meta, "operations": results}, indent=2))
        return
    header = (
        f"driver {args.driver}, Python {meta['python']}, SQLAlchemy {meta['sqlalchemy']}, "
        f"PostgreSQL {clock.version}; {clock.describe()}; medians of {args.rounds} rounds;\n"
        f"one bare round trip (SELECT 1 on the raw DBAPI cursor): {round_trip:.1f} µs"
    )
    print_tables(results, header)


if __name__ == "__main__":
    main()
