"""What a running handler can reach: the worker's Session, its own job, an abort request.

Handlers ask for it with functions rather than parameters, so no parameter
name is ever reserved:

    @q.handler()
    def ship(order_id):
        session = sa_pgtq.current_session()   # commits atomically with the job's completion
        session.get(Order, order_id).shipped = True

The session is opened on first use only; a handler that never asks costs no
extra transaction, and its completion is acknowledged in a batch. An async
handler of an `AsyncQueue` asks for `current_async_session()` instead: the
same transaction, through the `AsyncSession` that proxies it.
"""

from __future__ import annotations

import asyncio
import threading
from contextvars import ContextVar

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_session
from sqlalchemy.orm import Session

from .backend import Backend
from .errors import NoWorkerContextError, TaskTimeoutError
from .models import RUNNING, TASK, JobMixin
from .tasks import Task


class JobContext:
    """The running task plus its Session: opened on first use, or the caller's.

    A run with a time limit may be given up on while the handler still runs
    (`expire`); from then on nothing the handler does can commit. `finish` and
    `expire` decide, once, which of the two happened.
    """

    def __init__(self, backend: Backend, task: Task, session: Session | None = None) -> None:
        self.backend = backend
        self.task = task
        self.session = session
        self._async_session: AsyncSession | None = None  # the proxy of ours, kept referenced
        self._owns_session = session is None
        self._lock = threading.Lock()
        self._ended: str | None = None  # "finished" or "expired"

    def open_session(self) -> Session:
        if self.session is None:
            if self.expired:
                raise self.timeout_error()
            async_sessions = self.backend.binding.async_sessions
            if async_sessions is None:
                self.session = self.backend.binding.sessions()
            else:
                self._async_session = async_sessions()
                self.session = self._async_session.sync_session
            event.listen(self.session, "before_commit", self._refuse_if_expired)
        return self.session

    def close(self) -> None:
        if self.session is not None and self._owns_session:
            self.session.close()  # rolls back whatever was not committed
            self.session = self._async_session = None

    def finish(self) -> bool:
        """The handler returned or raised in time: its outcome is recorded (False: too late)."""
        return self._end("finished")

    def expire(self) -> bool:
        """The run is given up on (False: its outcome is being recorded right now)."""
        return self._end("expired")

    @property
    def expired(self) -> bool:
        return self._ended == "expired"

    def timeout_error(self) -> TaskTimeoutError:
        return TaskTimeoutError(
            f"task {self.task.id} ({self.task.name}) ran out of time; "
            "what it writes now is rolled back"
        )

    def _end(self, how: str) -> bool:
        with self._lock:
            if self._ended is None:
                self._ended = how
            return self._ended == how

    def _refuse_if_expired(self, session: Session) -> None:
        if self.expired:
            raise self.timeout_error()


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
    context = _context()
    if context.backend.binding.asynchronous:
        raise NoWorkerContextError(
            "the handlers of an AsyncQueue use `current_async_session()` (in an async def)"
        )
    return context.open_session()


def current_async_session() -> AsyncSession:
    """In an async handler of an `AsyncQueue`: the AsyncSession that commits with the job."""
    context = _context()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise NoWorkerContextError(
            "a plain def handler runs in a thread, outside the job's transaction: "
            "declare it `async def` to use current_async_session()"
        ) from None
    session = async_session(context.open_session())
    if session is None:
        raise NoWorkerContextError(
            "this task was popped on an AsyncConnection: use that connection, "
            "or pop it with an AsyncSession"
        )
    return session


def current_task() -> Task:
    """The running `Task` (id, name, args, kwargs, attempts)."""
    return _context().task


def abort_requested() -> bool:
    """Whether `abort()` was requested for the running job: a handler checks it and stops.

    It turns True within about a second of the request. An async handler of an
    `AsyncQueue` need not ask: its coroutine is cancelled (`asyncio.CancelledError`).
    Whatever the handler does then, the job ends as cancelled and its writes roll back.
    """
    return _context().task.abort.requested


def current_job() -> JobMixin:
    """The running job's row: loaded through `current_session()`, or in an `AsyncQueue`'s
    handler (which cannot wait for a load) a transient `Job` of what the claim returned.

    Its `run_at` is when the job was due: a periodic task's tick, until a retry moves it.
    """
    context = _context()
    model, task = context.backend.statements.model, context.task
    if context.backend.binding.asynchronous:
        claimed = {
            "id": task.id,
            "queue": context.backend.queue_name,
            "kind": TASK,
            "tag": task.name,
            "data": {"args": list(task.args), "kwargs": task.kwargs},
            "state": RUNNING,
            "priority": task.priority,
            "attempts": task.attempts,
            "run_at": task.run_at,
            "locked_by": task.token,
        }
        return model(**claimed)
    job = context.open_session().get(model, task.id)
    if job is None:
        raise NoWorkerContextError(f"job {context.task.id} is no longer in the queue table")
    return job


def activate(context: JobContext) -> object:
    return _current.set(context)


def deactivate(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
