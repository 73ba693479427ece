"""sa_pgtq against the raw-SQL floor, measured in the same run, printed as ratios.

    python bench/ratios.py [--url URL] [--rounds 3] [--quick]

The floor is the least SQL a PostgreSQL queue can issue (psycopg2, no ORM, no
NOTIFY): INSERT + COMMIT, COPY, and DELETE ... FOR UPDATE SKIP LOCKED. Each
workload alternates floor and sa_pgtq for --rounds rounds and keeps each side's
best, since a shared 2-core machine is noisy. Compare ratios, never absolute
figures across runs. Peers (PGQueuer, pq, procrastinate): bench/peers.sh.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg2
from noops import Noops
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

import sa_pgtq
from sa_pgtq.embedded import database_url

FLOOR_DDL = """
DROP TABLE IF EXISTS rawq;
CREATE TABLE rawq (id bigserial PRIMARY KEY, tag text NOT NULL, data jsonb NOT NULL,
  run_at timestamptz NOT NULL DEFAULT now(), attempts int NOT NULL DEFAULT 0);
CREATE INDEX rawq_fetch ON rawq (tag, run_at, id);
"""
FLOOR_CLAIM = (
    "DELETE FROM rawq WHERE id IN (SELECT id FROM rawq WHERE tag = 'b' AND run_at <= now() "
    "ORDER BY run_at, id FOR UPDATE SKIP LOCKED LIMIT %s) RETURNING data"
)


class Bench:
    def __init__(self, uri: str, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.raw = psycopg2.connect(uri)
        self.engine = create_engine(make_url(uri).set(drivername="postgresql+psycopg2"))
        self.q = sa_pgtq.Queue(self.engine, name="bench")
        self.q.create_table()
        with self.raw, self.raw.cursor() as cur:
            cur.execute(FLOOR_DDL)
        self.noops = Noops(self.q)

    def reset(self) -> None:
        with self.raw, self.raw.cursor() as cur:
            cur.execute("TRUNCATE rawq, sa_pgtq_jobs")

    # -- floor ---------------------------------------------------------------

    def floor_single(self, n: int) -> None:
        for i in range(n):
            with self.raw, self.raw.cursor() as cur:
                cur.execute(
                    "INSERT INTO rawq (tag, data) VALUES ('b', %s)", (json.dumps({"i": i}),)
                )

    def floor_autocommit(self, n: int) -> None:
        """The same INSERT in autocommit: one round trip, the least a job costs."""
        self.raw.autocommit = True
        try:
            with self.raw.cursor() as cur:
                for i in range(n):
                    cur.execute(
                        "INSERT INTO rawq (tag, data) VALUES ('b', %s)", (json.dumps({"i": i}),)
                    )
        finally:
            self.raw.autocommit = False

    def floor_single_in_session(self, n: int) -> None:
        """The floor's INSERT, in a SQLAlchemy Session the way an application runs it."""
        insert = text("INSERT INTO rawq (tag, data) VALUES ('b', :data)")
        for i in range(n):
            with Session(self.engine) as s, s.begin():
                s.execute(insert, {"data": json.dumps({"i": i})})

    def floor_bulk(self, n: int, batch: int = 1000) -> None:
        for start in range(0, n, batch):
            rows = "".join(f'b\t{{"i": {i}}}\n' for i in range(start, min(start + batch, n)))
            with self.raw, self.raw.cursor() as cur:
                cur.copy_expert("COPY rawq (tag, data) FROM STDIN", io.StringIO(rows))

    def floor_drain(self, per_tx: int) -> int:
        got = 0
        while True:
            with self.raw, self.raw.cursor() as cur:
                cur.execute(FLOOR_CLAIM, (per_tx,))
                rows = len(cur.fetchall())
            if not rows:
                return got
            got += rows

    # -- sa_pgtq -------------------------------------------------------------

    def ours_single(self, n: int) -> None:
        for i in range(n):
            with Session(self.engine) as s, s.begin():
                self.q.enqueue("b", {"i": i}, session=s)

    def ours_nosession(self, n: int) -> None:
        for i in range(n):
            self.q.enqueue("b", {"i": i})

    def ours_bulk(self, n: int, batch: int = 1000) -> None:
        for start in range(0, n, batch):
            with Session(self.engine) as s, s.begin():
                self.q.enqueue_many("b", [{"i": i} for i in range(start, min(start + batch, n))], s)

    def push_noops(self, n: int) -> None:
        self.noops.push(n)

    def ours_drain(self, n: int) -> None:
        done = self.noops.drain(stop_after=n)
        assert done >= n, done

    def ours_drain_tx(self) -> int:
        got = 0
        while True:
            with self.q.dequeue("b") as data:
                if data is None:
                    return got
                got += 1


@dataclass
class Workload:
    """One comparison: a reference side (the floor) and sa_pgtq, each prepared then timed."""

    name: str
    jobs: int
    target: float  # minimum ratio to the reference; 0 = none (context, or judged against peers)
    meaning: str
    reference: tuple[Callable[[], Any], Callable[[], Any]]  # (prepare, run)
    ours: tuple[Callable[[], Any], Callable[[], Any]]


def rate(side: tuple[Callable[[], Any], Callable[[], Any]], jobs: int) -> float:
    prepare, run = side
    prepare()
    started = time.perf_counter()
    run()
    return jobs / (time.perf_counter() - started)


def workloads(b: Bench, n: dict[str, int]) -> list[Workload]:
    def fresh(*fill: Callable[[], Any]) -> Callable[[], None]:
        """Empty both tables, then load what the timed part consumes."""

        def prepare() -> None:
            b.reset()
            for load in fill:
                load()

        return prepare

    return [
        Workload(
            "enqueue in a caller's Session",
            n["single"],
            0.0,
            "x floor INSERT+COMMIT",
            (fresh(), lambda: b.floor_single(n["single"])),
            (fresh(), lambda: b.ours_single(n["single"])),
        ),
        # What the Session alone costs, and sa_pgtq measured against that.
        Workload(
            "the floor's INSERT in a Session",
            n["single"],
            0.0,
            "x floor INSERT+COMMIT (SQLAlchemy's own cost)",
            (fresh(), lambda: b.floor_single(n["single"])),
            (fresh(), lambda: b.floor_single_in_session(n["single"])),
        ),
        Workload(
            "enqueue vs that Session INSERT",
            n["single"],
            0.9,
            "x the floor's INSERT in a Session",
            (fresh(), lambda: b.floor_single_in_session(n["single"])),
            (fresh(), lambda: b.ours_single(n["single"])),
        ),
        Workload(
            "enqueue without a session",
            n["single"],
            0.8,
            "x floor autocommit INSERT (and 1.3x PGQueuer: peers.sh)",
            (fresh(), lambda: b.floor_autocommit(n["single"])),
            (fresh(), lambda: b.ours_nosession(n["single"])),
        ),
        Workload(
            "enqueue_many (batches of 1000)",
            n["bulk"],
            0.7,
            "x floor COPY",
            (fresh(), lambda: b.floor_bulk(n["bulk"])),
            (fresh(), lambda: b.ours_bulk(n["bulk"])),
        ),
        Workload(
            "worker drain, no-op tasks",
            n["drain"],
            0.8,
            "x floor batch-100 (and 2x PGQueuer: peers.sh)",
            (fresh(lambda: b.floor_bulk(n["drain"])), lambda: b.floor_drain(100)),
            (fresh(lambda: b.push_noops(n["drain"])), lambda: b.ours_drain(n["drain"])),
        ),
        Workload(
            "with q.dequeue(), 1 tx per job",
            n["drain_tx"],
            0.85,
            "x floor 1 tx/job",
            (fresh(lambda: b.floor_bulk(n["drain_tx"])), lambda: b.floor_drain(1)),
            (fresh(lambda: b.ours_bulk(n["drain_tx"])), b.ours_drain_tx),
        ),
        # Here the reference is sa_pgtq itself at a shallow backlog.
        Workload(
            f"drain at {n['backlog']} backlog vs {n['drain']}",
            n["drain"],
            0.9,
            "x the shallow rate (no degradation with depth)",
            (fresh(lambda: b.push_noops(n["drain"])), lambda: b.ours_drain(n["drain"])),
            (fresh(lambda: b.push_noops(n["backlog"])), lambda: b.ours_drain(n["drain"])),
        ),
    ]


def arguments(doc: str | None) -> argparse.Namespace:
    """The benchmarks' command line: --url, --rounds, --quick (sizes / 10: `args.scale`)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--url", help="PostgreSQL URL (default: DATABASE_URL, else embedded)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    args.scale = 10 if args.quick else 1
    return args


def main() -> None:
    args = arguments(__doc__)
    scale = args.scale
    sizes = {"single": 2000, "bulk": 50_000, "drain": 20_000, "drain_tx": 3000, "backlog": 200_000}
    sizes = {name: size // scale for name, size in sizes.items()}

    print(f"{'workload':36s} {'ref/s':>10s} {'sa_pgtq/s':>10s} {'ratio':>6s} {'target':>7s}")
    with database_url(args.url) as uri:
        bench = Bench(uri, sizes)
        for w in workloads(bench, sizes):
            # Alternate the sides and keep each one's best: the machine is noisy.
            report(
                w, [(rate(w.reference, w.jobs), rate(w.ours, w.jobs)) for _ in range(args.rounds)]
            )


def report(w: Workload, runs: list[tuple[float, float]], width: int = 36) -> None:
    """One line: each side's best rate over the rounds, their ratio, and the verdict."""
    reference, ours = max(r[0] for r in runs), max(r[1] for r in runs)
    ratio = ours / reference
    verdict = "" if not w.target else ("ok" if ratio >= w.target else "BELOW")
    target = f"{w.target:.2g}" if w.target else "-"
    figures = f"{reference:10.0f} {ours:10.0f} {ratio:6.2f} {target:>7s}"
    print(f"{w.name:{width}s} {figures} {verdict:5s} {w.meaning}", flush=True)


if __name__ == "__main__":
    main()
