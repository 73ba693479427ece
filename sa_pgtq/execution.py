"""Claiming tasks, running one, and recording what happened.

A claim marks tasks `running` under a lease (a deadline the worker keeps
pushing back) and stamps them with a fresh token. Every later write about a
task names that token, so a worker that lost its lease (it stalled, another
worker took the task over) can no longer complete or fail it.

A task whose abort was requested (`Task.abort`, set by the worker's services)
ends as cancelled whatever its handler did after the request: returned, raised,
or (an async handler) was cancelled. A task aborted before it started never runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session, scoped_session

from . import bridge, gateway, tracing, validation
from .backend import Backend
from .binding import join
from .context import JobContext, activate, deactivate
from .errors import (
    DataTooDeepError,
    InvalidDataError,
    LeaseLostError,
    TaskAbortedError,
    TaskArgumentsError,
    TaskResultError,
    UnknownHandlerError,
    WorkerLostError,
    describe_error,
)
from .handlers import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETRY_DELAY,
    MAX_RETRY_DELAY,
    Handler,
    HandlerRegistry,
)
from .leases import Heartbeat, Leases
from .models import FAILED, QUEUED
from .runner import Call, Runner
from .tasks import AbortSignal, Finished, Outcome, Task

log = logging.getLogger(__name__)

DEFAULT_LEASE = 30.0  # seconds a claim stays valid without a heartbeat
#: Seconds an async handler past its timeout is given to act on its cancellation.
CANCEL_GRACE = 1.0
_HOST = socket.gethostname()

#: Told of each run once it is recorded: the task, its outcome, the seconds it took.
RunObserver = Callable[[Task, Outcome, float], None]


def new_token() -> str:
    """A claim token that also tells operators which host and process holds the task."""
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Executor:
    """Claims a queue's tasks, runs their handlers and records the outcomes."""

    def __init__(self, backend: Backend, handlers: HandlerRegistry) -> None:
        self.backend = backend
        self.handlers = handlers
        self._local = threading.local()  # each thread's `Runner`, for runs with a time limit
        #: Told of every run (`sa_pgtq.metrics`); none: a run is not even timed.
        self.observers: list[RunObserver] = []

    def claim(
        self,
        limit: int,
        lease: float,
        caller: object = None,
        *,
        finished: Finished | None = None,
    ) -> list[Task]:
        """Claim up to `limit` due tasks, in dequeue order.

        The `finished` tasks of an earlier claim are acknowledged by the same statement: one
        round trip for both. A batch of nothing but malformed payloads (failed here, for
        good) is followed by another claim: an empty answer means nothing is due.
        """
        token = new_token()
        backend = self.backend
        while True:
            removed, claimed = backend.run(
                caller,
                gateway.claim_tasks,
                backend.queue_name,
                limit,
                token,
                lease,
                finished,
                retain=self.backend.keeps_finished,
            )
            if finished:
                _warn_if_lost(len(finished.ids) - removed)
                finished = None
            tasks = []
            calls = decode_calls([row.data for row in claimed])
            for row, call in zip(claimed, calls, strict=True):
                # A payload no handler can take never will: fail it for good, visibly.
                args, kwargs = ((), {}) if isinstance(call, Exception) else call
                task = Task(
                    row.id,
                    row.name,
                    args,
                    kwargs,
                    row.attempts,
                    row.priority,
                    row.run_at,
                    token,
                    self,
                    lease,
                    caller,
                    meta=row.meta,
                )
                if isinstance(call, Exception):
                    self.record_failure(task, call, final=True)
                else:
                    if row.aborted:
                        task.abort.request()  # it ends as cancelled without running
                    tasks.append(task)
            if tasks or not claimed:
                return tasks

    def run_claimed(self, task: Task, timeout: float | None = None) -> Outcome:
        """Run one claimed task's handler; record a failure, or commit its session with the ack.

        A success without a session is left to the caller to acknowledge (`needs_ack`),
        so that a worker can remove finished tasks in batches. A run longer than the
        handler's `timeout` (else the given default) fails with `TaskTimeoutError`;
        the handler's thread is left behind, and nothing it writes commits. On the
        event loop (`AsyncQueue`) an async handler is cancelled instead.
        """
        return self._instrumented(task, self._run_claimed, task, timeout)

    def _run_claimed(self, task: Task, timeout: float | None) -> Outcome:
        handler = self.handlers.get(task.name)
        limit = timeout if handler is None or handler.timeout is None else handler.timeout
        context = JobContext(self.backend, task)
        if limit is None or self.backend.binding.asynchronous:
            return self._attempt(handler, context, limit)
        # In the run's context (its span): the handler's own spans are the run's children.
        run = contextvars.copy_context().run
        runner, call = self._submit(lambda: run(self._attempt, handler, context))
        if call.done.wait(limit) or not context.expire():
            return call.result()  # in time, or its outcome was being recorded already
        self._local.runner = None
        runner.abandon()
        return self._failed(task, context.timeout_error())

    def run_popped(self, task: Task) -> Outcome:
        """Run a task taken with `Queue.pop()`: its lease is kept alive while it runs."""
        if task.caller is not None:
            return self._instrumented(task, self._run_in_caller, task)
        leases = Leases()
        leases.hold([task])
        heartbeat = Heartbeat(self.backend, leases, task.lease, own_connection=False)
        heartbeat.start()
        try:
            outcome = self.run_claimed(task)
        finally:
            heartbeat.stop()
        if outcome.needs_ack:
            self.acknowledge([Finished(task.token, [task.id], [outcome.stored])])
        return outcome

    def _instrumented(self, task: Task, run: Callable[..., Outcome], *args: Any) -> Outcome:
        """`run(*args)` (a run of `task`) in its span when traced, timed for the observers."""
        traced = tracing.tracer()
        if traced is None and not self.observers:
            return run(*args)
        started = time.perf_counter()
        if traced is None:
            outcome = run(*args)
        else:
            outcome = tracing.consume(traced, self.backend.queue_name, task, lambda: run(*args))
        seconds = time.perf_counter() - started
        for observe in self.observers:
            try:
                observe(task, outcome, seconds)
            except Exception:  # the run is recorded: a broken metric must not redo it
                log.exception("a run observer failed on task %s (%s)", task.id, task.name)
        return outcome

    def _attempt(
        self, handler: Handler[Any, Any] | None, context: JobContext, limit: float | None = None
    ) -> Outcome:
        task = context.task
        reset = activate(context)
        try:
            if task.abort.requested:  # while it waited in the worker's buffer
                raise _aborted(task)
            result = self._call(handler, context, limit)
            stored = self._stored(task, result)
            if not context.finish():
                return Outcome(succeeded=False, error=context.timeout_error())
            if task.abort.requested:
                context.close()  # its writes roll back
                return self._end_aborted(task)
            if context.session is None:
                return Outcome(succeeded=True, result=result, needs_ack=True, stored=stored)
            # The handler's writes and the job's completion commit together, or not at all.
            session = context.session
            if not self._acknowledge_on(
                session.connection(), Finished(task.token, [task.id], [stored])
            ):
                session.rollback()
                log.warning(
                    "task %s: lease lost while running; its writes were rolled back", task.id
                )
                return Outcome(succeeded=False, result=result, error=_lease_lost(task))
            session.commit()
            return Outcome(succeeded=True, result=result)
        except Exception as exc:
            context.close()  # the handler's uncommitted writes go first
            if not context.finish():  # too late: the timeout was recorded instead
                return Outcome(succeeded=False, error=context.timeout_error())
            return self._failed(task, exc)
        finally:
            deactivate(reset)
            context.close()

    def _failed(self, task: Task, exc: BaseException) -> Outcome:
        """A run that did not succeed: cancelled if its abort was requested, else a failure."""
        if task.abort.requested:
            return self._end_aborted(task)
        return Outcome(succeeded=False, error=exc, failure=self.record_failure(task, exc))

    def _end_aborted(self, task: Task) -> Outcome:
        """End an aborted task as cancelled (kept with a retention), never to be retried."""
        if self.backend.run(
            task.caller, gateway.end_aborted, task.id, task.token, keep=self.backend.keeps_finished
        ):
            log.warning("task %s (%s) was aborted on request: cancelled", task.id, task.name)
        else:
            log.warning("task %s (%s) was aborted, but its lease was lost", task.id, task.name)
        return Outcome(succeeded=False, error=_aborted(task))

    def _run_in_caller(self, task: Task) -> Outcome:
        """A task claimed in the caller's transaction: run and recorded in it, never committed.

        No heartbeat is needed: until the caller commits, the claim is the caller's
        row lock, which no other worker can take over.
        """
        joined = join(task.caller, self.backend.statements.model)
        caller = task.caller() if isinstance(task.caller, scoped_session) else task.caller
        # A Core caller's handler gets a Session on the caller's connection, inside its
        # transaction; a Session caller's handler gets that Session.
        owned = None if isinstance(caller, Session) else Session(bind=joined.connection)
        session = owned or caller
        assert isinstance(session, Session)
        context = JobContext(self.backend, task, session)
        block = joined.savepoint()  # the handler's writes, undone alone if it fails
        reset = activate(context)
        try:
            result = self._call(self.handlers.get(task.name), context)
            stored = self._stored(task, result)
            # The handler's writes fail here, as the handler's failure. Our own Session
            # commits only its savepoint within the caller's transaction.
            session.commit() if owned is not None else session.flush()
        except Exception as exc:
            if owned is not None:
                owned.close()
            block.rollback()
            return Outcome(succeeded=False, error=exc, failure=self.record_failure(task, exc))
        finally:
            deactivate(reset)
        if owned is not None:
            owned.close()
        block.commit()
        self._acknowledge_on(joined.connection, Finished(task.token, [task.id], [stored]))
        return Outcome(succeeded=True, result=result, stored=stored)

    def _stored(self, task: Task, result: Any) -> str | None:
        """The result as the JSON text to keep (None: no retention, or nothing returned)."""
        if result is None or not self.backend.keeps_finished:
            return None
        try:
            return validation.encode_data(result, "json", None)
        except InvalidDataError as exc:
            raise TaskResultError(
                f"task {task.id} ({task.name}) returned a result that cannot be kept as JSON: {exc}"
            ) from None

    def _submit(self, func: Callable[[], Outcome]) -> tuple[Runner, Call[Outcome]]:
        """`func` handed to this thread's runner (a new one if it is gone or has none)."""
        while True:
            runner: Runner | None = getattr(self._local, "runner", None)
            if runner is None:
                runner = self._local.runner = Runner(f"sa_pgtq-handler-{threading.get_ident()}")
            call = runner.submit(func)
            if call is not None:
                return runner, call
            self._local.runner = None  # it ended, idle

    def record_failure(self, task: Task, exc: BaseException, *, final: bool = False) -> str | None:
        """Queue the task again after a backoff, or keep it as `failed` once out of attempts;
        its state now, queued or failed (None: its lease was lost, it is another's).

        A result JSON cannot hold fails for good: it would be the same on every try.
        """
        handler = self.handlers.get(task.name)
        max_attempts = handler.max_attempts if handler else DEFAULT_MAX_ATTEMPTS
        base_delay = handler.retry_delay if handler else DEFAULT_RETRY_DELAY
        final = final or isinstance(exc, TaskResultError)
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
        held = self.backend.run(
            task.caller,
            gateway.retry_task,
            task.id,
            task.token,
            give_up=give_up,
            delay=delay,
            error=describe_error(exc),
        )
        if not held:
            return None
        return FAILED if give_up else QUEUED

    def acknowledge(self, finished: list[Finished]) -> None:
        """Acknowledge succeeded tasks (of one claim or several) in one transaction."""
        with self.backend.connection(None, atomic=len(finished) > 1) as conn:
            for done in finished:
                _warn_if_lost(len(done.ids) - self._acknowledge_on(conn, done))

    def _acknowledge_on(self, conn: Connection, done: Finished) -> int:
        """Acknowledge `done` on `conn` (removed, or kept with results); how many were held."""
        backend = self.backend
        return gateway.acknowledge_tasks(
            conn, backend.statements, backend.queue_name, done, retain=backend.keeps_finished
        )

    def release(self, token: str, ids: list[int]) -> None:
        """Put claimed tasks that never started back, untouched (a graceful shutdown)."""
        self.backend.run(None, gateway.release_tasks, token, ids)

    def _call(
        self, handler: Handler[Any, Any] | None, context: JobContext, limit: float | None = None
    ) -> Any:
        """Call the handler (under `limit` seconds: only on the event loop, see `run_claimed`)."""
        task = context.task
        if handler is None:
            raise UnknownHandlerError(
                f"no handler named {task.name!r} is registered on queue {self.backend.queue_name!r}"
            )
        if task.attempts > handler.max_attempts:
            raise WorkerLostError(
                f"gave up after {handler.max_attempts} attempts: the last one never finished"
            )
        if not self.backend.binding.asynchronous:
            if handler.is_async:  # pushed by an async app, run by a sync worker
                return asyncio.run(handler.func(*task.args, **task.kwargs))
            return handler.func(*task.args, **task.kwargs)
        # On the event loop: an async handler is awaited there, a plain one in a thread
        # (the loop never blocks; it sees an abort through `abort_requested()`).
        if handler.is_async:
            call = handler.func(*task.args, **task.kwargs)
        else:
            run = functools.partial(handler.func, *task.args, **task.kwargs)
            call = bridge.in_thread(run, name=f"sa_pgtq-handler-{task.id}")
        if limit is not None:
            return bridge.wait_for(_within(call, limit, context, abortable=handler.is_async))
        return bridge.wait_for(_abortable(call, context) if handler.is_async else call)


async def _within(
    call: Coroutine[Any, Any, Any], limit: float, context: JobContext, *, abortable: bool
) -> Any:
    """Await `call` as a task of its own, cancelled after `limit` seconds (then
    TaskTimeoutError) and, if `abortable`, once the task's abort is requested (then
    TaskAbortedError). Its cancellation runs before its session is rolled back: a query
    of its own still in flight would otherwise break that connection, and the outcome.
    """
    running = asyncio.ensure_future(call)
    with _on_abort(context.task.abort, running.cancel) if abortable else nullcontext():
        done, _ = await asyncio.wait({running}, timeout=limit)
        if not done:
            running.cancel()
            await asyncio.wait({running}, timeout=CANCEL_GRACE)
            raise context.timeout_error()
    if running.cancelled() and context.task.abort.requested:
        raise _aborted(context.task)
    return running.result()


async def _abortable(call: Coroutine[Any, Any, Any], context: JobContext) -> Any:
    """Await `call` in this very task, cancelled where it waits once the task's abort is
    requested (then TaskAbortedError), and only then.

    No task of its own, unlike `_within`: a run costs no extra turn of the loop, the
    hot path of a worker of fast async handlers.
    """
    this = asyncio.current_task()
    assert this is not None
    inside, cancelled = True, False

    def cancel() -> None:
        nonlocal cancelled
        if inside:  # this task waits in the handler: that is where it is cancelled
            cancelled = this.cancel()

    try:
        with _on_abort(context.task.abort, cancel):
            return await call
    except asyncio.CancelledError:
        if not cancelled:
            raise
        raise _aborted(context.task) from None
    finally:
        inside = False
        uncancel = getattr(this, "uncancel", None)  # Python 3.11+: count our request undone
        if cancelled and uncancel is not None:
            uncancel()


@contextmanager
def _on_abort(abort: AbortSignal, cancel: Callable[[], object]) -> Iterator[None]:
    """While the block runs, `cancel` is called on the event loop once the abort is requested."""
    loop = asyncio.get_running_loop()  # the request may come from another thread
    abort.watch(lambda: loop.call_soon_threadsafe(cancel))
    try:
        yield
    finally:
        abort.watch(None)


def _warn_if_lost(lost: int) -> None:
    if lost:
        log.warning("%d finished tasks had lost their lease and may run again", lost)


def decode_calls(texts: list[str]) -> list[tuple[tuple[Any, ...], dict[str, Any]] | Exception]:
    """The (args, kwargs) stored in tasks' data (JSON texts), or why one is malformed.

    A batch is decoded in one call, as one JSON array (one level deeper, checked as
    such); only a batch holding a payload too deep is decoded one by one, to tell which.
    """
    batch = f"[{','.join(texts)}]"
    try:
        validation.check_depth(batch, validation.MAX_DEPTH + 1)
    except DataTooDeepError:
        return [_call_of(_decoded(text)) for text in texts]
    return [_call_of(data) for data in json.loads(batch)]


def _decoded(text: str) -> Any:
    try:
        return validation.decode_data(text)
    except DataTooDeepError as exc:
        return exc


def _call_of(data: Any) -> tuple[tuple[Any, ...], dict[str, Any]] | Exception:
    if isinstance(data, Exception):
        return data
    if type(data) is not dict or type(args := data.get("args")) is not list:
        return TaskArgumentsError(f"malformed task payload: {data!r}")
    kwargs = data.get("kwargs", {})
    if type(kwargs) is not dict:
        return TaskArgumentsError(f"malformed task payload: {data!r}")
    return tuple(args), kwargs


def backoff(base: float, attempts: int) -> float:
    """Exponential backoff with jitter, so failing tasks do not retry in lockstep."""
    return min(MAX_RETRY_DELAY, base * 2.0 ** max(attempts - 1, 0)) * random.uniform(0.5, 1.0)


def _aborted(task: Task) -> TaskAbortedError:
    return TaskAbortedError(f"task {task.id} ({task.name}) was aborted on request")


def _lease_lost(task: Task) -> LeaseLostError:
    return LeaseLostError(f"task {task.id} was taken over by another worker before it finished")
