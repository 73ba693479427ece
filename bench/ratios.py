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
from typing import Any

import psycopg2
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

import sa_pgtq
from sa_pgtq.testing import database_url

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
        self.done = 0
        self.stop_after: int | None = None
        self.worker = sa_pgtq.Worker(self.q, install_signal_handlers=False)

        @self.q.handler(name="noop")
        def noop(i: int) -> None:
            self.done += 1
            if self.stop_after is not None and self.done >= self.stop_after:
                self.worker.stop()

        self.noop = noop

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

    def ours_bulk(self, n: int, batch: int = 1000) -> None:
        for start in range(0, n, batch):
            with Session(self.engine) as s, s.begin():
                self.q.enqueue_many("b", [{"i": i} for i in range(start, min(start + batch, n))], s)

    def push_noops(self, n: int, batch: int = 1000) -> None:
        for start in range(0, n, batch):
            self.noop.push_many([(i,) for i in range(start, min(start + batch, n))])

    def ours_drain(self, n: int) -> None:
        self.done, self.stop_after = 0, n
        self.worker.run(burst=True)
        assert self.done >= n, self.done

    def ours_drain_tx(self) -> int:
        got = 0
        while True:
            with self.q.dequeue("b") as data:
                if data is None:
                    return got
                got += 1


def timed(prepare: Callable[[], Any], run: Callable[[], Any], n: int) -> float:
    prepare()
    started = time.perf_counter()
    run()
    return n / (time.perf_counter() - started)


def best_of(
    rounds: int, floor: Callable[[], float], ours: Callable[[], float]
) -> tuple[float, float]:
    results: list[tuple[float, float]] = [(floor(), ours()) for _ in range(rounds)]
    return max(r[0] for r in results), max(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", help="PostgreSQL URL (default: DATABASE_URL, else embedded)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    sizes = {
        "single": 2000 // scale,
        "bulk": 50_000 // scale,
        "drain": 20_000 // scale,
        "drain_tx": 3000 // scale,
        "backlog": 200_000 // scale,
    }

    with database_url(args.url) as uri:
        b = Bench(uri, sizes)
        n, r = sizes, args.rounds
        rows: list[tuple[str, float, float, float, str]] = []

        def add(name: str, floor: float, ours: float, target: float, what: str) -> None:
            rows.append((name, floor, ours, target, what))

        f, o = best_of(
            r,
            lambda: timed(b.reset, lambda: b.floor_single(n["single"]), n["single"]),
            lambda: timed(b.reset, lambda: b.ours_single(n["single"]), n["single"]),
        )
        add("enqueue in a caller's Session", f, o, 0.9, "x floor INSERT+COMMIT")
        f, o = best_of(
            r,
            lambda: timed(b.reset, lambda: b.floor_bulk(n["bulk"]), n["bulk"]),
            lambda: timed(b.reset, lambda: b.ours_bulk(n["bulk"]), n["bulk"]),
        )
        add("enqueue_many (batches of 1000)", f, o, 0.0, "x floor COPY (target: 2x PGQueuer)")
        f, o = best_of(
            r,
            lambda: timed(
                lambda: (b.reset(), b.floor_bulk(n["drain"])),
                lambda: b.floor_drain(100),
                n["drain"],
            ),
            lambda: timed(
                lambda: (b.reset(), b.push_noops(n["drain"])),
                lambda: b.ours_drain(n["drain"]),
                n["drain"],
            ),
        )
        add("worker drain, no-op tasks", f, o, 0.0, "x floor batch-100 (target: 1.5x PGQueuer)")
        f, o = best_of(
            r,
            lambda: timed(
                lambda: (b.reset(), b.floor_bulk(n["drain_tx"])),
                lambda: b.floor_drain(1),
                n["drain_tx"],
            ),
            lambda: timed(
                lambda: (b.reset(), b.ours_bulk(n["drain_tx"])), b.ours_drain_tx, n["drain_tx"]
            ),
        )
        add("with q.dequeue(), 1 tx per job", f, o, 0.8, "x floor 1 tx/job")
        shallow, deep = best_of(
            1,
            lambda: timed(
                lambda: (b.reset(), b.push_noops(n["drain"])),
                lambda: b.ours_drain(n["drain"]),
                n["drain"],
            ),
            lambda: timed(
                lambda: (b.reset(), b.push_noops(n["backlog"])),
                lambda: b.ours_drain(n["drain"]),
                n["drain"],
            ),
        )
        add(
            f"drain at {n['backlog']} backlog vs {n['drain']}",
            shallow,
            deep,
            0.8,
            "x the shallow rate (no degradation with depth)",
        )

    print(f"{'workload':36s} {'floor/s':>10s} {'sa_pgtq/s':>10s} {'ratio':>6s} {'target':>7s}")
    for name, floor, ours, target, what in rows:
        ratio = ours / floor
        verdict = "" if not target else ("ok" if ratio >= target else "BELOW")
        target_text = f"{target:.1f}" if target else "-"
        figures = f"{floor:10.0f} {ours:10.0f} {ratio:6.2f} {target_text:>7s}"
        print(f"{name:36s} {figures} {verdict:5s} {what}")


if __name__ == "__main__":
    main()
