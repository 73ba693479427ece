"""The `sa-pgtq` command: `sa-pgtq worker module:queue` and `sa-pgtq demo`."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from . import demo
from .aio import AsyncQueue, AsyncWorker
from .queue import Queue
from .worker import Worker


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sa-pgtq", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

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

    demo = commands.add_parser("demo", help="show jobs committing with the application's rows")
    demo.add_argument(
        "--url",
        default=os.environ.get("DATABASE_URL"),
        help="database URL (default: $DATABASE_URL, else an embedded throwaway PostgreSQL)",
    )
    return parser


def load_queue(path: str) -> Queue | AsyncQueue:
    """Import `module:attribute` (the current directory is importable, as with `python -m`)."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"sa-pgtq: expected module:attribute, got {path!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    target: object = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not isinstance(target, (Queue, AsyncQueue)):
        raise SystemExit(
            f"sa-pgtq: {path} is a {type(target).__name__}, not a sa_pgtq.Queue or AsyncQueue"
        )
    return target


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "worker":
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
        queue = load_queue(args.queue)
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
    return 0
