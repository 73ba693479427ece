"""Helpers for an application's own tests: what it enqueued, and running its tasks inline.

    from sa_pgtq.testing import assert_enqueued, drain

    def test_checkout(session):                 # a Session in a transaction rolled back after
        checkout(session, order_id=7)           # pushes send_receipt(7) with session=session
        assert_enqueued(q, send_receipt, args=[7], session=session)
        assert drain(q, session=session) == 1   # ran it, in the session's transaction
        assert session.get(Receipt, 7) is not None

Both take the `session=` every queue operation takes, so they see (and write) what
the test's uncommitted transaction holds, which is how the usual "each test in a
transaction rolled back at its end" fixture works (SQLAlchemy's "Joining a Session
into an External Transaction", `join_transaction_mode="create_savepoint"`). Given an
`AsyncQueue` (and an AsyncSession or AsyncConnection) each returns an awaitable:
the very same code, run through SQLAlchemy's greenlet bridge like the rest of the
asyncio API.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar, overload

from . import bridge, gateway, validation
from .aio import AsyncHandler, AsyncQueue
from .binding import AsyncCaller, Caller, check_caller, sync_caller
from .errors import DrainLimitError, InvalidInputError, TaskArgumentsError
from .handlers import Handler
from .models import TASK, JobMixin
from .queue import Queue

T = TypeVar("T")

#: The most tasks one `drain` runs before it stops with `DrainLimitError`.
DRAIN_LIMIT = 1000
#: The most queued jobs an `assert_enqueued` failure lists.
LISTED = 20

AnyHandler = Handler[Any, Any] | AsyncHandler[Any, Any]


# -- assert_enqueued ---------------------------------------------------------------


class _Expected:
    """What `assert_enqueued` looks for, each value as it is stored (JSON) or None: any."""

    def __init__(
        self,
        queue: Queue,
        handler_or_tag: object,
        args: Sequence[Any] | None,
        kwargs: dict[str, Any] | None,
        data: Any,
    ) -> None:
        if isinstance(handler_or_tag, AsyncHandler):
            handler_or_tag = handler_or_tag.sync
        by_call = args is not None or kwargs is not None
        self.task_only = by_call or isinstance(handler_or_tag, Handler)
        if isinstance(handler_or_tag, Handler):
            owner = handler_or_tag.backend
            if (owner.queue_name, owner.table_name) != (queue.name, queue.table_name):
                raise InvalidInputError(
                    f"{handler_or_tag!r} is not a handler of {queue!r}: its jobs are never there"
                )
            self.tag = handler_or_tag.name
        else:
            self.tag = validation.check_name(handler_or_tag, "handler name or tag")
        if self.task_only and data is not None:
            raise InvalidInputError("data= is a message's; a task is matched by args= and kwargs=")
        if args is not None and not isinstance(args, (list, tuple)):
            raise TaskArgumentsError(f"args must be a list or a tuple, not {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TaskArgumentsError(f"kwargs must be a dict, not {type(kwargs).__name__}")
        self.args = None if args is None else _as_stored(list(args))
        self.kwargs = None if kwargs is None else _as_stored(kwargs)
        self.data = None if data is None else _as_stored(data)

    def matches(self, job: JobMixin) -> bool:
        if job.tag != self.tag:
            return False
        if job.kind != TASK:
            return not self.task_only and self.data in (None, job.data)
        call = job.data if isinstance(job.data, dict) else {}
        return (
            self.data is None
            and self.args in (None, call.get("args"))
            and self.kwargs in (None, call.get("kwargs", {}))
        )

    def __str__(self) -> str:
        what = f"task {self.tag!r}" if self.task_only else f"job {self.tag!r}"
        given = [
            f"{name}={value!r}"
            for name, value in (("args", self.args), ("kwargs", self.kwargs), ("data", self.data))
            if value is not None
        ]
        return f"{what} with {', '.join(given)}" if given else what


def _as_stored(value: Any) -> Any:
    """`value` as a job holds it once stored: through JSON (a tuple comes back a list)."""
    return validation.decode_data(validation.encode_data(value, "json", None))


def _find(queue: Queue, session: Caller | None, expected: _Expected) -> list[JobMixin]:
    queued = queue.backend.run(session, gateway.list_queued, queue.name)
    found = [job for job in queued if expected.matches(job)]
    if found:
        return found
    message = f"no queued job of queue {queue.name!r} matches {expected}; "
    if not queued:
        message += "the queue has no queued jobs"
        if session is None:
            message += (
                " (jobs pushed in a transaction not yet committed are seen only through it: "
                "pass session=)"
            )
        raise AssertionError(message)
    lines = [f"  {_described(job)}" for job in queued[:LISTED]]
    if len(queued) > LISTED:
        lines.append(f"  ... and {len(queued) - LISTED} more")
    raise AssertionError(message + f"its {len(queued)} queued jobs:\n" + "\n".join(lines))


def _described(job: JobMixin) -> str:
    """A queued job as a failure lists it: a task as the call it makes, a message as its data."""
    when = f"(run_at {job.run_at.replace(microsecond=0)})"
    if job.kind != TASK or not isinstance(job.data, dict):
        return f"#{job.id} message {job.tag!r}: {job.data!r} {when}"
    call = [repr(arg) for arg in job.data.get("args", [])]
    call += [f"{name}={value!r}" for name, value in job.data.get("kwargs", {}).items()]
    return f"#{job.id} task {job.tag}({', '.join(call)}) {when}"


@overload
def assert_enqueued(
    q: Queue,
    handler_or_tag: AnyHandler | str,
    *,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    data: Any = None,
    session: Caller | None = None,
) -> builtins.list[JobMixin]: ...


@overload
def assert_enqueued(
    q: AsyncQueue,
    handler_or_tag: AnyHandler | str,
    *,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    data: Any = None,
    session: AsyncCaller | None = None,
) -> Coroutine[Any, Any, builtins.list[JobMixin]]: ...


def assert_enqueued(
    q: Queue | AsyncQueue,
    handler_or_tag: AnyHandler | str,
    *,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    data: Any = None,
    session: Caller | AsyncCaller | None = None,
) -> builtins.list[JobMixin] | Coroutine[Any, Any, builtins.list[JobMixin]]:
    """Assert that queue `q` holds a queued job (due or scheduled) like this; return those that
    match, in dequeue order.

    `handler_or_tag` is a handler (its tasks), or a name: a handler's or a message tag.
    `args` and `kwargs` must equal a task's call as pushed, `data` a message's data
    (compared as stored: through JSON); None matches anything. Raises AssertionError,
    listing what the queue holds, when nothing matches. With an `AsyncQueue`: awaitable.
    """
    expected = _Expected(_sync_queue(q), handler_or_tag, args, kwargs, data)
    return _on(q, session, _find, expected)


# -- drain ---------------------------------------------------------------------------


def _drain(queue: Queue, session: Caller | None, limit: int, raise_errors: bool) -> int:
    ran = 0
    while (task := queue.pop(session)) is not None:
        if ran == limit:
            # Put it back untouched, where it was claimed: the caller's transaction or ours.
            queue.backend.run(session, gateway.release_tasks, task.token, [task.id])
            raise DrainLimitError(
                f"drain ran {limit} tasks of queue {queue.name!r} and more are still due "
                f"(the next: {task.name}); does a task push itself again? "
                "drain(..., limit=N) allows more"
            )
        outcome = queue.executor.run_popped(task)
        ran += 1
        if outcome.error is not None and raise_errors:
            raise outcome.error
    return ran


@overload
def drain(
    q: Queue,
    session: Caller | None = None,
    *,
    limit: int = DRAIN_LIMIT,
    raise_errors: bool = True,
) -> int: ...


@overload
def drain(
    q: AsyncQueue,
    session: AsyncCaller | None = None,
    *,
    limit: int = DRAIN_LIMIT,
    raise_errors: bool = True,
) -> Coroutine[Any, Any, int]: ...


def drain(
    q: Queue | AsyncQueue,
    session: Caller | AsyncCaller | None = None,
    *,
    limit: int = DRAIN_LIMIT,
    raise_errors: bool = True,
) -> int | Coroutine[Any, Any, int]:
    """Run `q`'s due tasks now, one by one, as a worker would; return how many ran.

    With `session`, each is claimed, run and recorded in the session's transaction
    (the handler's `current_session()` is that Session; its writes go in a savepoint
    of it), so a rolled-back test leaves nothing behind; without one, each commits
    on its own. Tasks that the runs push, and that are due, run too; tasks scheduled
    later do not. A failure is recorded as a worker records it (`attempts`,
    `last_error`, retried after a backoff, so not run again by this drain, or kept as
    `failed`); then, with `raise_errors` (the default), drain stops and raises the
    handler's exception; else it goes on, counting the failed run. Past `limit` runs
    with tasks still due it raises `DrainLimitError` (a task that pushes itself again
    would never end). A paused queue hands out nothing: 0. With an `AsyncQueue`:
    awaitable.
    """
    validation.check_count(limit, "limit")
    _sync_queue(q)
    return _on(q, session, _drain, limit, raise_errors)


# -- helpers -------------------------------------------------------------------------


def _sync_queue(q: object) -> Queue:
    """The `Queue` that does the work: `q`, or an `AsyncQueue`'s own."""
    if isinstance(q, AsyncQueue):
        return q.sync
    if not isinstance(q, Queue):
        raise InvalidInputError(f"expected a sa_pgtq.Queue or AsyncQueue, not {type(q).__name__}")
    return q


def _on(
    q: Queue | AsyncQueue,
    session: object,
    operation: Callable[..., T],
    *args: Any,
) -> T | Coroutine[Any, Any, T]:
    """`operation(queue, session, *args)` now for a `Queue`; for an `AsyncQueue`, awaitable:
    on its sync queue and the sync side of the caller's transaction, through the bridge."""
    if isinstance(q, AsyncQueue):
        return bridge.spawn(operation, q.sync, sync_caller(session), *args)
    check_caller(session)
    return operation(q, session, *args)
