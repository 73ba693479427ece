"""`sa-pgtq jobs`: list jobs (newest first, a page at a time), show one, retry, cancel, abort."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .. import validation
from ..aio import AsyncQueue
from ..errors import exception_line
from ..models import STATES, JobMixin
from ..monitor import MAX_LIMIT, Monitor
from ..queue import Queue
from . import output, target
from .exits import HELP_ENDING, NOT_DONE, OK, say

#: Each action: its Monitor method, the word for it done, its help.
ACTIONS: dict[str, tuple[Callable[[Monitor, int], bool], str, str]] = {
    "retry": (Monitor.retry, "retried", "queue failed jobs again, with fresh attempts"),
    "cancel": (Monitor.cancel, "cancelled", "cancel waiting or failed jobs"),
    "abort": (
        Monitor.abort,
        "aborted",
        "cancel waiting jobs, and stop running ones (their workers are told at once)",
    ),
}


def job_id(text: str) -> int:
    try:
        value = validation.check_job_id(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a job id: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a job id: {text!r}")
    return value


def page_size(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_LIMIT}, got {text!r}")
    return int(text)


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    jobs = commands.add_parser(
        "jobs", help="list jobs, show one, retry, cancel or abort them", **HELP_ENDING
    )
    actions = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser(
        "list",
        parents=[target.database_options(queue_filter=True)],
        help="jobs newest first, a page at a time",
        **HELP_ENDING,
        description="Jobs newest first. The next page: --before the last id shown.",
    )
    listing.add_argument("--state", choices=STATES, help="only jobs in this state")
    listing.add_argument("--tag", help="only jobs with this tag (a task's handler name)")
    listing.add_argument("--limit", type=page_size, default=50, help="jobs per page (default 50)")
    listing.add_argument("--before", type=job_id, metavar="ID", help="only jobs older than ID")
    listing.add_argument("--json", action="store_true", help="JSON for scripts")
    listing.set_defaults(run=list_jobs)

    show = actions.add_parser(
        "show",
        parents=[target.database_options()],
        help="one job: data, attempts, error traceback, result, timestamps",
        **HELP_ENDING,
    )
    show.add_argument("id", type=job_id)
    show.add_argument("--json", action="store_true", help="JSON for scripts")
    show.set_defaults(run=show_job)

    for name, (_, _, summary) in ACTIONS.items():
        action = actions.add_parser(
            name, parents=[target.database_options()], help=summary, **HELP_ENDING
        )
        action.add_argument("ids", metavar="ID", type=job_id, nargs="+")
        action.set_defaults(run=act)


def list_jobs(args: argparse.Namespace) -> int:
    bind = target.source(args, queue_filter=True)
    queue = bind.name if isinstance(bind, (Queue, AsyncQueue)) else args.queue
    monitor = target.monitor(args, bind)
    filters = {"queue": queue, "state": args.state, "tag": args.tag}
    jobs = monitor.jobs(**filters, before=args.before, limit=args.limit)
    # A short page is the last; after a full one, a look one job further says.
    full = len(jobs) == args.limit
    more = jobs[-1].id if full and monitor.jobs(**filters, before=jobs[-1].id, limit=1) else None
    if args.json:
        print(output.dumps({"jobs": [output.job_json(job) for job in jobs], "next_before": more}))
        return OK
    if not jobs:
        print("no jobs")
        return OK
    headers = ["ID", "QUEUE", "KIND", "TAG", "STATE", "ATTEMPTS", "CREATED", "ERROR"]
    rows = [
        [
            str(job.id),
            job.queue,
            job.kind,
            job.tag,
            job.state,
            str(job.attempts),
            output.relative(job.created_at),
            _error_summary(job.last_error),
        ]
        for job in jobs
    ]
    print(output.table(headers, rows, numeric={0, 5, 6}))
    if more is not None:
        print(f"(more: --before {more})")
    return OK


def show_job(args: argparse.Namespace) -> int:
    job = target.monitor(args).job(args.id)
    if job is None:
        say(f"no job {args.id}")
        return NOT_DONE
    if args.json:
        print(output.dumps(output.job_json(job)))
    else:
        print(_describe(job))
    return OK


def act(args: argparse.Namespace) -> int:
    """One line per id; the status says whether the action applied to every one."""
    method, done, _ = ACTIONS[args.action]
    monitor = target.monitor(args)
    status = OK
    for job_id in args.ids:
        if method(monitor, job_id):
            print(f"{job_id}: {done}")
            continue
        status = NOT_DONE
        job = monitor.job(job_id)
        print(
            f"{job_id}: not found" if job is None else f"{job_id}: not {done} (it is {job.state})"
        )
    return status


def _error_summary(error: str | None, width: int = 60) -> str:
    """A traceback's last line (the exception), cut to fit a table."""
    last = exception_line(error).rstrip()
    return last if len(last) <= width else last[: width - 1] + "…"


def _describe(job: JobMixin) -> str:
    fields = output.job_json(job)
    lines = []
    for name in output.JOB_FIELDS:
        value = fields[name]
        if name in ("data", "result", "meta", "last_error"):
            continue
        if isinstance(value, datetime):
            value = f"{value.isoformat()}  ({output.relative(value)})"
        lines.append(f"{name.replace('_', ' '):<19}{'-' if value is None else value}")
    for name, title in (("data", "data"), ("result", "result"), ("meta", "meta")):
        if fields[name] is not None:
            lines += [title, _indent(output.dumps(fields[name]))]
    if job.last_error:
        lines += ["error", _indent(job.last_error.rstrip())]
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
