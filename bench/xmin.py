"""Drain rates with and without a long transaction that holds back the xmin horizon.

    python bench/xmin.py [--url URL] [--messages 50000] [--tasks 50000] [--rounds 2]
    python bench/xmin.py --explain      # where a claim's time goes, with xmin held

A report query or a forgotten BEGIN (here: a REPEATABLE READ transaction that
read something) keeps vacuum, and the index scans' own clean-up, from removing
the rows each claim leaves dead. Each round fills an emptied table and drains
it, once with such a transaction open from before the fill until the drain
ends and once without; the sides alternate and each keeps its best. Messages
go out one `dequeue_immediate` at a time, tasks through one burst Worker of
no-op handlers. Compare the ratios, never absolute figures across runs.
Goals (issue 9, item 11): messages >= 0.7x, tasks >= 0.8x the rate without.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from contextlib import nullcontext
from datetime import timedelta

from sustained import TAG, Bench, commit, held_xmin, human, psycopg2_engine

from sa_pgtq.embedded import database_url
from sa_pgtq.statements import statements_for

GOALS = {"messages": 0.7, "tasks": 0.8}


def measure(bench: Bench, kind: str, n: int, held: bool) -> float:
    fill: Callable[[int], float] = bench.enqueue if kind == "messages" else bench.push
    drain = bench.drain_messages if kind == "messages" else bench.drain_tasks
    bench.reset()
    with held_xmin(bench.engine) if held else nullcontext("-") as xmin:
        fill(n)
        rate = drain(n)
        sizes = bench.sizes()
    side = "held" if held else "free"
    print(
        f"  {kind:8s} {side}: {rate:8.0f}/s  (xmin held at {xmin}; afterwards "
        f"{sizes['dead']} dead tuples, table {human(sizes['total'])})",
        flush=True,
    )
    return rate


def explain(bench: Bench, sizes: dict[str, int]) -> None:
    """Half of each fill taken with xmin held, then the plans of the next claims."""
    statements = statements_for(bench.q.model)
    for kind, n in sizes.items():
        bench.reset()
        with held_xmin(bench.engine):
            if kind == "messages":
                bench.enqueue(n)
                for _ in range(n // 2):
                    bench.q.dequeue_immediate(TAG)
                plan = bench.explain(
                    statements.remove_next_message["priority"],
                    {"queue_name": bench.q.name, "tag": TAG},
                )
            else:
                bench.push(n)
                bench.drain_tasks(n, stop_after=n // 2)
                lease = timedelta(seconds=30)
                claim = {
                    "done_token": "",
                    "done_ids": [],
                    "done_results": [],
                    "queue_name": bench.q.name,
                    "limit": 100,
                    "token": "-",
                    "lease": lease,
                }
                plan = bench.explain(statements.claim_tasks[False], claim)
        print(f"{kind}: the next claim after {n // 2} of {n} taken, xmin held")
        for line in plan:
            print("   ", line)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", help="PostgreSQL URL (default: DATABASE_URL, else embedded)")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--explain", action="store_true", help="plans instead of rates")
    args = parser.parse_args()
    sizes = {"messages": args.messages, "tasks": args.tasks}

    with database_url(args.url) as uri:
        bench = Bench(psycopg2_engine(uri), "bench_xmin_jobs")
        print(f"commit {commit()}; rounds {args.rounds}; {sizes}; batches of 1000; concurrency 1")
        for line in bench.server():
            print(line)
        if args.explain:
            explain(bench, sizes)
        else:
            compare(bench, sizes, args.rounds)
        bench.engine.dispose()


def compare(bench: Bench, sizes: dict[str, int], rounds: int) -> None:
    best: dict[tuple[str, bool], float] = {}
    for round_ in range(1, rounds + 1):
        print(f"round {round_}")
        for kind, n in sizes.items():
            # Alternate which side goes first, so neither always runs on a warmer server.
            for held in (round_ % 2 == 0, round_ % 2 == 1):
                rate = measure(bench, kind, n, held)
                best[kind, held] = max(best.get((kind, held), 0.0), rate)
    print(f"{'workload':10s} {'free/s':>9s} {'held/s':>9s} {'ratio':>6s} {'goal':>5s}")
    for kind in sizes:
        free_rate, held_rate = best[kind, False], best[kind, True]
        ratio = held_rate / free_rate
        verdict = "ok" if ratio >= GOALS[kind] else "BELOW"
        figures = f"{free_rate:9.0f} {held_rate:9.0f} {ratio:6.2f} {GOALS[kind]:5.1f}"
        print(f"{kind:10s} {figures} {verdict}")


if __name__ == "__main__":
    main()
