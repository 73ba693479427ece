"""pgtq's `PgTq` on sa_pgtq: pgtq users change one import.

    from sa_pgtq import pgtq          # was: import pgtq
    q = pgtq.PgTq("test_queue", "dbname=q user=postgres")

A `PgTq` is a `sa_pgtq.Queue` named after pgtq's queue, on sa_pgtq's table
(created when missing), so `sa_pgtq.worker.main_loop(q)` and `sa-pgtq worker`
run it. `handler(name=None, max_retries=None)` and `task.execute()` keep pgtq's
meaning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from .binding import Bind, Caller
from .handlers import DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_DELAY, Handler, P, R
from .queue import Queue
from .tasks import Task as BaseTask
from .validation import check_non_negative

__all__ = ["PgTq", "Task"]


class Task(BaseTask):
    """A popped task; `execute()` runs it as pgtq's did."""

    @property
    def key(self) -> int:
        """pgtq's name for the task's id."""
        return self.id

    def execute(self) -> Any:
        """Run the handler, record the outcome, and return its result.

        A failure is recorded (retried per the handler's `max_retries`, then kept as
        `failed`) and its exception raised again, as pgtq did.
        """
        outcome = self.runner.run_popped(self)
        if outcome.error is not None:
            raise outcome.error
        return outcome.result


class PgTq(Queue):
    """pgtq's task queue: `name` is the queue's name, `connection_string` a DSN or URL."""

    def __init__(self, name: str, connection_string: Bind, **options: Any) -> None:
        super().__init__(connection_string, name=name, **options)
        self.connection_string = connection_string
        self.create_table()

    def handler(
        self,
        name: str | None = None,
        max_retries: int | None = None,
        *,
        max_attempts: int | None = None,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        timeout: float | None = None,
    ) -> Callable[[Callable[P, R]], Handler[P, R]]:
        """pgtq's decorator: `max_retries` retries after the first try (None: sa_pgtq's default)."""
        if max_retries is not None:
            max_attempts = check_non_negative(max_retries, "max_retries") + 1
        if max_attempts is None:
            max_attempts = DEFAULT_MAX_ATTEMPTS
        return super().handler(
            name, max_attempts=max_attempts, retry_delay=retry_delay, timeout=timeout
        )

    def pop(self, session: Caller | None = None, *, lease: float | None = None) -> Task | None:
        task = super().pop(session, lease=lease)
        if task is None:
            return None
        return Task(**{f.name: getattr(task, f.name) for f in fields(task)})
