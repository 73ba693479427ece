"""Handing messages out: the transactional hold behind `dequeue`, `take`, and `listen`.

These are shaped by I/O (a transaction held open while the caller's block runs,
a loop that sleeps on LISTEN), so they live apart from the statements they run.
`Rules` carries the few places where q4pg's `QueueManager` hands messages out
differently from `Queue`.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, ParamSpec

from sqlalchemy import Connection, event
from sqlalchemy.exc import DBAPIError

from . import bridge, gateway, validation
from .backend import Backend
from .binding import Savepoint, join
from .errors import DataTooDeepError, describe_error
from .gateway import MessageRow
from .listener import Listener, idle_wait
from .models import MESSAGE
from .statements import Order

log = logging.getLogger(__name__)
P = ParamSpec("P")

#: Seconds `listen` waits before trying again after a database error.
RECONNECT_DELAY = 1.0


@dataclass(frozen=True)
class Rules:
    """How a queue hands out messages.

    `ignore_after` is `excepted_times_to_ignore`: a message that has failed that
    many times is no longer handed out (0: never ignore). `Queue` marks it
    `failed` at that failure; q4pg (`pass_over`) keeps it queued, and listed,
    until a dequeue reaches it and marks it `failed` instead of handing it out.
    q4pg also counts leaving a listen loop early (`break`, an exception, Ctrl-C)
    as a failure of the message in hand; `Queue` puts that message back untouched.
    `Queue` moves a failed message behind the others; q4pg, handing out in id
    order, keeps its schedule. q4pg polled, so a scheduled message came out a
    little after its time, never at it, and code (and q4pg's own tests) measured
    against that: `due_slack` seconds of that lateness are kept.
    """

    order: Order = "priority"
    ignore_after: int = 0
    pass_over: bool = False
    any_exit_is_failure: bool = False
    failure_to_tail: bool = True
    due_slack: float = 0.0

    def counts_as_failure(self, exc: BaseException) -> bool:
        # GeneratorExit (a listen loop left early) and KeyboardInterrupt are not the
        # message's fault, unless q4pg says they are.
        return self.any_exit_is_failure or isinstance(exc, Exception)

    def gives_up(self, attempts: int) -> bool:
        return not self.pass_over and 0 < self.ignore_after <= attempts

    def passes_over(self, row: MessageRow) -> bool:
        return self.pass_over and 0 < self.ignore_after <= row["attempts"]


@contextmanager
def hold(
    backend: Backend, tag: str, caller: object, rules: Rules, own: Connection | None = None
) -> Iterator[MessageRow | None]:
    """Remove the next due message and yield it while its transaction stays open.

    Leaving normally commits the removal (the caller's transaction: when the
    caller commits). A failure puts the message back, counted (for `Queue`,
    behind the others), in the same transaction; the caller's own writes inside
    the block are undone by a savepoint. Without a caller, the transaction is on
    `own` (a connection outside the pool, not in a transaction) or on a pooled one.
    """
    if caller is not None:
        joined = join(caller, backend.statements.model)
        with _held(joined.connection, backend, tag, rules, joined.savepoint) as row:
            yield row
        return
    # No ORM state is involved, so a plain Connection does (and costs less per call).
    connection = nullcontext(own) if own is not None else backend.binding.engine.connect()
    with connection as conn, _held(conn, backend, tag, rules, None) as row:
        yield row


def take(backend: Backend, tag: str, caller: object, rules: Rules) -> MessageRow | None:
    """Remove the next due message at once (not transactional for the caller)."""
    may_pass_over = rules.pass_over and rules.ignore_after > 0
    with backend.connection(caller, atomic=may_pass_over) as conn:
        return _remove_next(conn, backend, tag, rules)[0]


class Listening(Iterator[Any]):
    """What `listen` returns: an iterator, and a context manager that releases it.

    A message is held until the next one is asked for. Leaving a `for` loop over
    `q.listen(...)` itself releases it at once; an iterator kept in a variable
    holds it until closed (`with q.listen(...) as messages:` or `close()`), or
    until it is garbage-collected.
    """

    def __init__(self, items: Generator[Any, None, None]) -> None:
        self._items = items

    def __iter__(self) -> Listening:
        return self

    def __next__(self) -> Any:
        return next(self._items)

    def close(self) -> None:
        """Put the message in hand back and stop listening."""
        self._items.close()

    def throw(self, exc: BaseException) -> Any:
        """Fail the message in hand with `exc` (as an exception in the loop body would)."""
        return self._items.throw(exc)

    def __enter__(self) -> Listening:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _closable(items: Callable[P, Generator[Any, None, None]]) -> Callable[P, Listening]:
    @functools.wraps(items)
    def start(*args: P.args, **kwargs: P.kwargs) -> Listening:
        return Listening(items(*args, **kwargs))

    return start


@_closable
def listen(
    backend: Backend,
    tag: str,
    timeout: float | None,
    caller: object,
    rules: Callable[[], Rules],
    present: Callable[[MessageRow], Any],
    poll_interval: float,
) -> Generator[Any, None, None]:
    """Yield messages as they arrive, each held while the loop body runs; None when quiet.

    `rules` is asked before each message: q4pg lets the threshold change on the fly.
    On its own connections it survives what a worker survives (a restart, a
    dropped connection, a body that outlived `idle_in_transaction_session_timeout`):
    the message in hand goes back, counted as failed, and listening goes on.
    """
    quiet_since = time.monotonic()  # before connecting: a timeout counts from the call
    listener = Listener(
        backend.binding.listen_engine,
        backend.table_name,
        backend.queue_name,
        MESSAGE,
        tag,
        poll_interval,
    )
    # Messages are taken on the listening connection itself when it reaches the queue's
    # database directly: a wake-up goes straight to the DELETE, with no pool check-out.
    with listener:
        while True:
            in_body = False
            own = None if caller is not None else listener.connection_to(backend.binding.engine)
            try:
                current = rules()
                with hold(backend, tag, caller, current, own) as row:
                    if row is not None:
                        in_body = True
                        yield present(row)
                        in_body = False
                if row is not None:
                    quiet_since = time.monotonic()
                    continue
                due = backend.run(
                    caller, gateway.seconds_until_next_message, backend.queue_name, tag
                )
            except DBAPIError as exc:
                if in_body or caller is not None:
                    raise  # the loop body's own error, or the caller's transaction is gone
                log.warning("listen: database error (%s); retrying", exc)
                if own is not None:
                    listener.close()  # its transaction failed: reconnect rather than repair
                listener.wait(RECONNECT_DELAY)
                continue
            wait = idle_wait(None if due is None else due + current.due_slack, poll_interval)
            if timeout is not None:
                left = quiet_since + timeout - time.monotonic()
                if left <= 0:
                    yield None
                    quiet_since = time.monotonic()
                    continue
                wait = min(wait, left)
            listener.wait(wait)


@contextmanager
def _held(
    conn: Connection,
    backend: Backend,
    tag: str,
    rules: Rules,
    savepoint: Callable[[], Savepoint] | None,
) -> Iterator[MessageRow | None]:
    own = savepoint is None
    row, passed_over = _remove_next(conn, backend, tag, rules)
    if row is None:
        if own and not passed_over:
            conn.commit()  # release the snapshot before the caller's block runs
            yield None
            return
        # q4pg: what was passed over is marked failed only if the block ends normally.
        try:
            yield None
        except BaseException:
            if own:
                conn.rollback()
            raise
        if own:
            conn.commit()
        return
    # In the caller's transaction the block runs in a savepoint, so that a failure
    # undoes the block's writes but not the removal (taken outside it).
    block = None if savepoint is None else savepoint()
    try:
        yield row
    except BaseException as exc:
        if block is not None:
            block.rollback()
        if rules.counts_as_failure(exc):
            failure = Failure.of(row, describe_error(exc), rules)
            if not own:
                failure.restore(conn, backend)
                _recount_if_rolled_back(conn, backend, failure)
                raise
            try:
                failure.restore(conn, backend)
                conn.commit()
            except DBAPIError:
                # The connection died with the removal: the message is back untouched.
                failure.count_anew(backend)
        elif own:
            conn.rollback()  # the removal is undone: the message is back untouched
        else:
            gateway.restore_message(conn, backend.statements, row)
        raise
    if block is not None:
        block.commit()
    if own:
        try:
            conn.commit()
        except DBAPIError as exc:
            # The server ended the transaction (idle_in_transaction_session_timeout, a
            # restart): the message is back. Count it, or it comes back at the head
            # again and again, its side effects repeated each time.
            lost = f"the removal did not commit; the connection was lost: {exc}"
            Failure.of(row, lost, rules).count_anew(backend)
            raise


@dataclass(frozen=True)
class Failure:
    """A failed attempt at a message, as it is put back."""

    row: MessageRow
    error: str
    to_tail: bool
    give_up: bool

    @classmethod
    def of(cls, row: MessageRow, error: str, rules: Rules) -> Failure:
        return cls(row, error, rules.failure_to_tail, rules.gives_up(row["attempts"] + 1))

    def restore(self, conn: Connection, backend: Backend) -> None:
        gateway.restore_message(
            conn,
            backend.statements,
            self.row,
            error=self.error,
            to_tail=self.to_tail,
            give_up=self.give_up,
        )

    def count_anew(self, backend: Backend) -> None:
        """Count it on a connection of our own: its restore was lost with its transaction."""
        try:
            backend.run_atomic(
                None,
                gateway.count_lost_failure,
                self.row,
                error=self.error,
                to_tail=self.to_tail,
                give_up=self.give_up,
            )
        except Exception as exc:  # the database is away: the message is back, uncounted
            log.warning("message %s: could not count its failure (%s)", self.row["id"], exc)


class _Recount:
    """Failures restored in a caller's transaction, counted anew if it rolls back.

    The caller's rollback undoes the restore with the removal, so the message would
    be back at the head with its old count: a poison message would never reach
    the tail nor `excepted_times_to_ignore`. The events fire just before the
    rollback, so the count runs in a thread whose UPDATE waits for the rollback
    to release the row. Counting is idempotent (it needs the old count), so a
    savepoint rollback that did not undo the restore counts nothing.
    """

    def __init__(self, conn: Connection, backend: Backend) -> None:
        self._backend = backend
        self.pending: list[Failure] = []
        event.listen(conn, "commit", self._committed)
        event.listen(conn, "rollback", self._rolled_back)
        event.listen(conn, "rollback_savepoint", self._savepoint_rolled_back)

    def _committed(self, conn: Connection) -> None:
        self.pending.clear()

    def _rolled_back(self, conn: Connection) -> None:
        self._count(self.pending)
        self.pending = []

    def _savepoint_rolled_back(self, conn: Connection, name: str, context: object) -> None:
        self._count(list(self.pending))

    def _count(self, failures: list[Failure]) -> None:
        def count() -> None:
            for failure in failures:
                failure.count_anew(self._backend)

        if failures:
            bridge.run_aside(count, "sa_pgtq-recount", self._backend.binding.asynchronous)


_recounts: weakref.WeakKeyDictionary[Connection, _Recount] = weakref.WeakKeyDictionary()


def _recount_if_rolled_back(conn: Connection, backend: Backend, failure: Failure) -> None:
    recount = _recounts.get(conn)
    if recount is None:
        recount = _recounts[conn] = _Recount(conn, backend)
    recount.pending.append(failure)


def _remove_next(
    conn: Connection, backend: Backend, tag: str, rules: Rules
) -> tuple[MessageRow | None, bool]:
    """The next message to hand out, and whether messages were passed over to reach it."""
    passed_over = False
    while True:
        row = gateway.remove_next_message(
            conn, backend.statements, backend.queue_name, tag, rules.order
        )
        if row is None:
            return None, passed_over
        try:
            validation.check_depth(row["data"])
        except DataTooDeepError as exc:
            # No consumer can decode it (another producer wrote it with plain SQL): it
            # fails alone, visibly, and the next message is handed out instead.
            error = describe_error(exc)
            gateway.restore_message(conn, backend.statements, row, error=error, give_up=True)
        else:
            if not rules.passes_over(row):
                return row, passed_over
            gateway.restore_message(conn, backend.statements, row, give_up=True)
        passed_over = True
