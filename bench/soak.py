"""Churn under a real autovacuum: a million tasks in rounds, the drain rate of each round.

    python bench/soak.py [--url URL] [--rounds 20] [--tasks 50000] [--schema-version 2]

Each round pushes --tasks no-op tasks (push_many, batches of 1000) and drains
them with one burst Worker, then reports the table: dead rows (the statistics'
count), heap, index and total sizes, and how often autovacuum ran. The server
is the embedded one (or --url) with its stock settings; only the queue table's
own storage parameters differ, as its schema version sets them. Takes a few
minutes. Goal (issue 9, item 12): the last round drains at >= 0.8x the first.
`--schema-version 1` builds the table as version 1 did, for comparison.
"""

from __future__ import annotations

import argparse

from sustained import Bench, commit, human, psycopg2_engine

from sa_pgtq import schema
from sa_pgtq.embedded import database_url

GOAL = 0.8


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", help="PostgreSQL URL (default: DATABASE_URL, else embedded)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=50_000, help="tasks per round")
    parser.add_argument("--schema-version", type=int, default=schema.LATEST)
    args = parser.parse_args()

    with database_url(args.url) as uri:
        bench = Bench(psycopg2_engine(uri), "bench_soak_jobs", args.schema_version)
        print(
            f"commit {commit()}; schema version {args.schema_version}; {args.rounds} rounds of "
            f"{args.tasks} tasks ({args.rounds * args.tasks} in all); batches of 1000; "
            "one worker, concurrency 1"
        )
        for line in bench.server():
            print(line)
        header = "round   push/s  drain/s   dead rows      heap   indexes     total  autovacuums"
        print(header)
        drains = []
        for round_ in range(1, args.rounds + 1):
            pushed = bench.push(args.tasks)
            drains.append(bench.drain_tasks(args.tasks))
            s = bench.sizes()
            print(
                f"{round_:5d} {pushed:8.0f} {drains[-1]:8.0f} {s['dead']:11d} "
                f"{human(s['heap']):>9s} {human(s['indexes']):>9s} {human(s['total']):>9s} "
                f"{s['autovacuums']:12d}",
                flush=True,
            )
        ratio = drains[-1] / drains[0]
        verdict = "ok" if ratio >= GOAL else "BELOW"
        print(f"last round's drain vs the first: {ratio:.2f} (goal {GOAL}) {verdict}")
        print("index sizes at the end:")
        for name, size in bench.sizes()["index"].items():
            print(f"  {name}: {human(size)}")
        bench.engine.dispose()


if __name__ == "__main__":
    main()
