"""`sa-pgtq stats`: each queue's jobs by state, its longest wait, whether it is paused."""

from __future__ import annotations

import argparse
from typing import Any

from ..models import STATES
from ..monitor import COUNT_CAP, QueueStats
from . import output, target
from .exits import HELP_ENDING, OK


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    stats = commands.add_parser(
        "stats",
        parents=[target.database_options()],
        help="every queue of the table: jobs by state, oldest waiting age, paused",
        **HELP_ENDING,
        description="Every queue of the table: its jobs by state (≈: the planner's estimate\n"
        f"above {COUNT_CAP:,}), how long its longest-waiting due job has waited, and\n"
        "whether it is paused.",
    )
    stats.add_argument("--json", action="store_true", help="JSON for scripts")
    stats.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    monitor = target.monitor(args)
    queues = monitor.queues()
    if args.json:
        print(output.dumps({"table": monitor.table_name, "queues": [_json(q) for q in queues]}))
    elif not queues:
        print(f"no queues in {monitor.table_name}")
    else:
        headers = ["QUEUE", *(state.upper() for state in STATES), "OLDEST WAITING", "PAUSED"]
        rows = [
            [
                q.name,
                *(str(q.counts[state]) for state in STATES),
                output.age(q.oldest_waiting),
                "paused" if q.paused else "",
            ]
            for q in queues
        ]
        print(output.table(headers, rows, numeric=set(range(1, len(STATES) + 2))))
    return OK


def _json(stats: QueueStats) -> dict[str, Any]:
    waited = stats.oldest_waiting
    return {
        "name": stats.name,
        "counts": {state: count.value for state, count in stats.counts.items()},
        # The states counted by the planner's estimate rather than exactly.
        "estimated": [state for state, count in stats.counts.items() if count.estimated],
        "oldest_waiting_seconds": None if waited is None else waited.total_seconds(),
        "paused": stats.paused,
    }
