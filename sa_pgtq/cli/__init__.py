"""The `sa-pgtq` command: run workers and the demo; look at and act on queues and jobs."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence

from .. import demo
from ..aio import AsyncQueue, AsyncWorker
from ..worker import Worker
from . import dashboard, exits, jobs, queues, sql, stats
from .target import load_queue


def _parser() -> argparse.ArgumentParser:
    parser = exits.Parser(
        prog="sa-pgtq",
        description=__doc__,
        epilog=exits.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser("worker", help="run a queue's tasks until SIGTERM/SIGINT")
    worker.add_argument(
        "queue", help="where the Queue or AsyncQueue lives, as module:attribute (myapp.tasks:q)"
    )
    worker.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="tasks run at once (threads for a Queue, on one event loop for an AsyncQueue)",
    )
    worker.add_argument("--burst", action="store_true", help="exit once nothing is due")
    worker.add_argument("--batch-size", type=int, default=100, help="most tasks claimed at once")
    worker.add_argument("--lease", type=float, default=None, help="lease seconds (default 30)")
    worker.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds a task may run, for handlers without a timeout of their own",
    )
    worker.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port (needs sa_pgtq[prometheus])",
    )

    demo = commands.add_parser("demo", help="show jobs committing with the application's rows")
    demo.add_argument(
        "--url",
        default=os.environ.get("DATABASE_URL"),
        help="database URL (default: $DATABASE_URL, else an embedded throwaway PostgreSQL)",
    )
    for group in (stats, jobs, queues, sql, dashboard):
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "worker":
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
        queue = load_queue(args.queue)
        if args.metrics_port is not None:
            try:
                from .. import metrics

                metrics.serve(queue, args.metrics_port)
            except (ImportError, OSError, OverflowError) as exc:  # no extra, a port in use
                exits.usage(f"--metrics-port: {exc}")
        options = {
            "concurrency": args.concurrency,
            "batch_size": args.batch_size,
            "lease": args.lease,
            "timeout": args.timeout,
        }
        if isinstance(queue, AsyncQueue):
            asyncio.run(AsyncWorker(queue, **options).run(burst=args.burst))
        else:
            Worker(queue, **options).run(burst=args.burst)
    elif args.command == "demo":
        demo.run(args.url)
    else:
        return exits.guarded(args.run, args)
    return 0
