"""What the job lifecycle costs, as ratios measured in the same run.

    python bench/lifecycle.py [--url URL] [--rounds 3] [--quick]

- worker drain on a queue with a retention (succeeded tasks kept with their result)
  against the same drain on a queue without one (deleted as they finish);
- that drain beside a million retained finished rows, against an empty table: the
  claims must not read finished rows;
- enqueue with a unique key against plain enqueue.

Each workload alternates its two sides for --rounds rounds and keeps each side's best.
"""

from __future__ import annotations

import time
from datetime import timedelta

from ratios import Workload, arguments, rate, report
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

import sa_pgtq
from sa_pgtq.embedded import database_url

#: Finished rows of the retained queue, written straight into the table.
FINISHED_ROWS = """
INSERT INTO sa_pgtq_jobs (queue, kind, tag, data, state, attempts, result, finished_at)
SELECT 'kept', 'task', 'noop', '{"args": [0], "kwargs": {}}', 'succeeded', 1, to_jsonb(n),
       now() - interval '1 minute'
FROM generate_series(1, :rows) AS n
"""


class Drain:
    """No-op tasks on one queue, and a burst worker that stops once `n` of them ran."""

    def __init__(self, q: sa_pgtq.Queue) -> None:
        self.q = q
        self.worker = sa_pgtq.Worker(q, install_signal_handlers=False)
        self.done, self.stop_after = 0, 0

        @q.handler(name="noop")
        def noop(i: int) -> int:
            self.done += 1
            if self.done >= self.stop_after:
                self.worker.stop()
            return i  # kept as the result where the queue has a retention

        self.noop = noop

    def push(self, n: int) -> None:
        for start in range(0, n, 1000):
            self.noop.push_many([(i,) for i in range(start, min(start + 1000, n))])

    def run(self, n: int) -> None:
        self.done, self.stop_after = 0, n
        self.worker.run(burst=True)
        assert self.done >= n, self.done


class Bench:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.plain = Drain(sa_pgtq.Queue(engine, name="plain"))
        self.kept = Drain(sa_pgtq.Queue(engine, name="kept", retention=timedelta(days=1)))
        self.plain.q.create_table()
        self.last = 0  # the last of the finished rows (fill_finished)

    def sql(self, statement: str, **params: object) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(statement), params)

    def keep_only_finished(self) -> None:
        """Leave the million finished rows; drop what a drain added or left."""
        self.sql(
            "DELETE FROM sa_pgtq_jobs WHERE id > :last OR state <> 'succeeded'", last=self.last
        )

    def fill_finished(self, rows: int) -> None:
        started = time.perf_counter()
        self.sql("TRUNCATE sa_pgtq_jobs")
        self.sql(FINISHED_ROWS, rows=rows)
        with self.engine.connect() as conn:
            self.last = int(conn.execute(text("SELECT max(id) FROM sa_pgtq_jobs")).scalar_one())
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE sa_pgtq_jobs"))
        print(f"({rows} finished rows written in {time.perf_counter() - started:.1f}s)")


def main() -> None:
    args = arguments(__doc__)
    scale = args.scale
    drain, single, finished = 20_000 // scale, 2000 // scale, 1_000_000 // scale

    with database_url(args.url) as uri:
        engine = create_engine(make_url(uri).set(drivername="postgresql+psycopg2"))
        b = Bench(engine)

        def fresh_push(d: Drain) -> None:
            b.sql("TRUNCATE sa_pgtq_jobs")
            d.push(drain)

        def beside_finished() -> None:
            b.keep_only_finished()
            b.kept.push(drain)

        def enqueue(unique: bool) -> None:
            for i in range(single):
                b.plain.q.enqueue("t", {"i": i}, unique_key=f"order-{i}" if unique else None)

        first: list[Workload] = [
            Workload(
                "drain with a retention",
                drain,
                0.8,
                "x the drain without one",
                (lambda: fresh_push(b.plain), lambda: b.plain.run(drain)),
                (lambda: fresh_push(b.kept), lambda: b.kept.run(drain)),
            ),
            Workload(
                "enqueue with a unique key",
                single,
                0.8,
                "x plain enqueue (both without a session)",
                (lambda: b.sql("TRUNCATE sa_pgtq_jobs"), lambda: enqueue(False)),
                (lambda: b.sql("TRUNCATE sa_pgtq_jobs"), lambda: enqueue(True)),
            ),
        ]
        empty_rate = (lambda: fresh_push(b.kept), lambda: b.kept.run(drain))
        beside = (beside_finished, lambda: b.kept.run(drain))

        print(f"{'workload':40s} {'ref/s':>10s} {'ours/s':>10s} {'ratio':>6s} {'target':>7s}")

        for w in first:
            report(
                w, [(rate(w.reference, w.jobs), rate(w.ours, w.jobs)) for _ in range(args.rounds)]
            )
        # The empty table first, then the million rows once, then the drains beside them.
        empties = [rate(empty_rate, drain) for _ in range(args.rounds)]
        b.fill_finished(finished)
        besides = [rate(beside, drain) for _ in range(args.rounds)]
        report(
            Workload(
                f"drain beside {finished} finished rows",
                drain,
                0.8,
                "x the drain on an empty table (both retained)",
                empty_rate,
                beside,
            ),
            list(zip(empties, besides, strict=True)),
        )
        engine.dispose()


if __name__ == "__main__":
    main()
