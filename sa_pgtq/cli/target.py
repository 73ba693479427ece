"""What a command works on: a Queue named as module:attribute, or a database URL and table."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

from psycopg2 import Error as DsnError
from sqlalchemy import Engine
from sqlalchemy.exc import ArgumentError

from ..aio import AsyncQueue
from ..binding import engine_from_url
from ..monitor import Monitor
from ..queue import Queue
from .exits import usage

#: `package.module:attribute.path`, as `sa-pgtq worker` takes a queue.
_QUEUE_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

Source = Engine | Queue | AsyncQueue


def database_options(*, queue_filter: bool = False) -> argparse.ArgumentParser:
    """The options that say where the queue table is (a parent of each database command).

    With `queue_filter`, `--queue` also takes a queue's name to list only its jobs.
    """
    options = argparse.ArgumentParser(add_help=False)
    where = options.add_argument_group("where the queue table is")
    where.add_argument(
        "--url", help="SQLAlchemy URL, libpq URL or key=value DSN (default: $DATABASE_URL)"
    )
    if queue_filter:
        where.add_argument(
            "--queue",
            metavar="NAME|MODULE:Q",
            help="only this queue's jobs: its name, or your Queue as module:attribute (then "
            "also its database and table; with --url the value is always a name)",
        )
    else:
        where.add_argument(
            "--queue",
            metavar="MODULE:Q",
            help="your Queue or AsyncQueue as module:attribute: its database and table",
        )
    where.add_argument("--table", help="the queue table (default: sa_pgtq_jobs)")
    return options


def load_queue(path: str) -> Queue | AsyncQueue:
    """Import `module:attribute` (the current directory is importable, as with `python -m`)."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        usage(f"expected module:attribute, got {path!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        target: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        usage(f"cannot load {path}: {exc}")
    if not isinstance(target, (Queue, AsyncQueue)):
        usage(f"{path} is a {type(target).__name__}, not a sa_pgtq.Queue or AsyncQueue")
    return target


def source(args: argparse.Namespace, *, queue_filter: bool = False) -> Source:
    """The Queue that `--queue module:q` names, else an engine on `--url` / $DATABASE_URL.

    With `queue_filter`, a `--queue` that is not module:attribute, or comes with
    `--url`, is a queue name (the caller filters on it) and the URL is used.
    """
    named = args.queue is not None and not (
        queue_filter and (args.url is not None or _QUEUE_PATH.fullmatch(args.queue) is None)
    )
    if named:
        if args.url is not None:
            usage("give --url or --queue module:attribute, not both")
        if args.table is not None:
            usage("--queue module:attribute brings its own table: leave out --table")
        return load_queue(args.queue)
    url = args.url or os.environ.get("DATABASE_URL")
    if not url:
        usage("no database: give --url, --queue module:attribute, or set DATABASE_URL")
    try:
        return engine_from_url(url)
    except (ArgumentError, ValueError, ImportError, DsnError) as exc:
        usage(f"bad database URL: {exc}")


def monitor(args: argparse.Namespace, bind: Source | None = None) -> Monitor:
    """A Monitor of the queue table the arguments name (`bind`: their `source`, if known)."""
    bind = source(args) if bind is None else bind
    return Monitor(bind, table_name=None if isinstance(bind, (Queue, AsyncQueue)) else args.table)
