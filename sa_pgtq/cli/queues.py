"""`sa-pgtq pause NAME` and `sa-pgtq resume NAME`: workers stop or start claiming its tasks."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..monitor import Monitor
from . import target
from .exits import HELP_ENDING, OK

#: Each command: the Monitor method, what the queue is afterwards, and its help.
COMMANDS: dict[str, tuple[Callable[[Monitor, str], None], str, str]] = {
    "pause": (Monitor.pause, "paused", "workers stop claiming the queue's tasks"),
    "resume": (Monitor.resume, "resumed", "workers claim the queue's tasks again"),
}


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    for name, (_, _, summary) in COMMANDS.items():
        command = commands.add_parser(
            name,
            parents=[target.database_options()],
            help=summary,
            description=summary,
            **HELP_ENDING,
        )
        command.add_argument("name", metavar="NAME", help="the queue's name")
        command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Idempotent: pausing a paused queue (or resuming a running one) is done, status 0."""
    method, done, _ = COMMANDS[args.command]
    method(target.monitor(args), args.name)
    print(f"{args.name}: {done}")
    return OK
