"""What a running handler can reach: the worker's Session and its own job.

Handlers ask for it with functions rather than parameters, so no parameter
name is ever reserved:

    @q.handler()
    def ship(order_id):
        session = sa_pgtq.current_session()   # commits atomically with the job's completion
        session.get(Order, order_id).shipped = True

The session is opened on first use only; a handler that never asks costs no
extra transaction, and its completion is acknowledged in a batch.
"""

from __future__ import annotations

from contextvars import ContextVar

from sqlalchemy.orm import Session

from .backend import Backend
from .errors import NoWorkerContextError
from .models import JobMixin
from .tasks import Task


class JobContext:
    """The running task plus its lazily opened Session."""

    def __init__(self, backend: Backend, task: Task) -> None:
        self.backend = backend
        self.task = task
        self.session: Session | None = None

    def open_session(self) -> Session:
        if self.session is None:
            self.session = self.backend.binding.sessions()
        return self.session

    def close(self) -> None:
        if self.session is not None:
            self.session.close()  # rolls back whatever was not committed
            self.session = None


_current: ContextVar[JobContext | None] = ContextVar("sa_pgtq_job", default=None)


def _context() -> JobContext:
    context = _current.get()
    if context is None:
        raise NoWorkerContextError(
            "no task is running here: this works inside a handler run by a worker"
        )
    return context


def current_session() -> Session:
    """The Session whose transaction commits together with the running job's completion."""
    return _context().open_session()


def current_task() -> Task:
    """The running `Task` (id, name, args, kwargs, attempts)."""
    return _context().task


def current_job() -> JobMixin:
    """The running job's row, loaded through `current_session()`."""
    context = _context()
    job = context.open_session().get(context.backend.statements.model, context.task.id)
    if job is None:
        raise NoWorkerContextError(f"job {context.task.id} is no longer in the queue table")
    return job


def activate(context: JobContext) -> object:
    return _current.set(context)


def deactivate(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
