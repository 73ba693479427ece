"""Claiming tasks, running one, and recording what happened.

A claim marks tasks `running` under a lease (a deadline the worker keeps
pushing back) and stamps them with a fresh token. Every later write about a
task names that token, so a worker that lost its lease (it stalled, another
worker took the task over) can no longer complete or fail it.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from .codec import describe_error
from .context import JobContext, activate, deactivate
from .errors import TaskArgumentsError, UnknownHandlerError, WorkerLostError
from .models import FAILED, QUEUED
from .tasks import DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_DELAY, MAX_RETRY_DELAY, Task, decode_call

if TYPE_CHECKING:
    from .queue import Queue

log = logging.getLogger(__name__)

DEFAULT_LEASE = 30.0  # seconds a claim stays valid without a heartbeat
_HOST = socket.gethostname()


def new_token() -> str:
    """A claim token that also tells operators which host and process holds the task."""
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def claim(
    queue: Queue,
    limit: int,
    lease: float,
    session: Session | None = None,
    *,
    finished: tuple[str, list[int]] | None = None,
) -> list[Task]:
    """Claim up to `limit` due tasks of `queue`, in dequeue order.

    `finished` (a claim token and task ids) are removed in the same transaction.
    """
    token = new_token()
    params = {
        "queue_name": queue.name,
        "limit": limit,
        "token": token,
        "lease": timedelta(seconds=lease),
    }
    with queue.binding.transaction(session) as s:
        if finished is not None and finished[1]:
            _remove(s, queue, *finished)
        claimed = s.execute(queue.sql.claim_tasks, params).all()
    # RETURNING has no order of its own; run them in the order they were chosen.
    rows = sorted(claimed, key=lambda row: (-row.priority, row.run_at, row.id))
    tasks = []
    for row in rows:
        try:
            args, kwargs = decode_call(row.data)
        except TaskArgumentsError as exc:
            # A payload no handler can take never will: fail it for good, visibly.
            broken = Task(row.id, row.tag, (), {}, row.attempts, token, queue)
            record_failure(queue, broken, exc, final=True)
            continue
        tasks.append(Task(row.id, row.tag, args, kwargs, row.attempts, token, queue))
    return tasks


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    needs_ack: bool  # succeeded without a session: the caller removes it (in a batch)


def execute(queue: Queue, task: Task) -> Outcome:
    """Run one claimed task's handler; record a failure, or commit its session with the ack."""
    handler = queue.tasks.get(task.name)
    context = JobContext(queue, task)
    reset = activate(context)
    try:
        if handler is None:
            raise UnknownHandlerError(f"no handler named {task.name!r} is registered on {queue!r}")
        if task.attempts > handler.max_attempts:
            raise WorkerLostError(
                f"gave up after {handler.max_attempts} attempts: the last one never finished"
            )
        handler.func(*task.args, **task.kwargs)
        if context.session is None:
            return Outcome(succeeded=True, needs_ack=True)
        # The handler's writes and the job's removal commit together, or not at all.
        session = context.session
        params = {"ids": [task.id], "token": task.token}
        if session.execute(queue.sql.ack_tasks, params).first() is None:
            session.rollback()
            log.warning("task %s: lease lost while running; its writes were rolled back", task.id)
            return Outcome(succeeded=False, needs_ack=False)
        session.commit()
        return Outcome(succeeded=True, needs_ack=False)
    except Exception as exc:
        context.close()  # the handler's uncommitted writes go first
        record_failure(queue, task, exc)
        return Outcome(succeeded=False, needs_ack=False)
    finally:
        deactivate(reset)
        context.close()


def record_failure(queue: Queue, task: Task, exc: BaseException, *, final: bool = False) -> None:
    """Queue the task again after a backoff, or keep it as `failed` once out of attempts."""
    handler = queue.tasks.get(task.name)
    max_attempts = handler.max_attempts if handler else DEFAULT_MAX_ATTEMPTS
    base_delay = handler.retry_delay if handler else DEFAULT_RETRY_DELAY
    give_up = final or task.attempts >= max_attempts
    delay = 0.0 if give_up else backoff(base_delay, task.attempts)
    log.log(
        logging.ERROR if give_up else logging.WARNING,
        "task %s (%s) failed on attempt %s: %r; %s",
        task.id,
        task.name,
        task.attempts,
        exc,
        "giving up" if give_up else f"retrying in {delay:.1f}s",
    )
    with queue.binding.single_statement(None) as s:
        s.execute(
            queue.sql.retry_task,
            {
                "job_id": task.id,
                "token": task.token,
                "state": FAILED if give_up else QUEUED,
                "delay": timedelta(seconds=delay),
                "error": describe_error(exc),
            },
        )


def backoff(base: float, attempts: int) -> float:
    """Exponential backoff with jitter, so failing tasks do not retry in lockstep."""
    return min(MAX_RETRY_DELAY, base * 2.0 ** max(attempts - 1, 0)) * random.uniform(0.5, 1.0)


def acknowledge(queue: Queue, token: str, ids: list[int]) -> None:
    """Remove finished tasks of one claim, in one statement and transaction."""
    if ids:
        with queue.binding.single_statement(None) as s:
            _remove(s, queue, token, ids)


def _remove(s: Session | Connection, queue: Queue, token: str, ids: list[int]) -> None:
    removed = len(s.execute(queue.sql.ack_tasks, {"ids": ids, "token": token}).all())
    if removed < len(ids):
        log.warning("%d finished tasks had lost their lease and may run again", len(ids) - removed)
