"""`Queue`: the message layer (tags + JSON data) and the task layer's entry points.

Every operation takes `session=None`. With the caller's Session, scoped_session
or Connection it runs inside the caller's transaction (flushing, never
committing), so a job commits or rolls back with the application's own rows.
Without one, the queue uses a connection of its own from the engine's pool and
commits.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from . import consuming, gateway, tracing, validation
from .backend import Backend
from .binding import Bind, Binding, Caller, check_caller, timeout_and_session
from .consuming import Rules
from .errors import (
    InvalidInputError,
    JobFailedError,
    JobNotFoundError,
    ResultsNotKeptError,
    ResultTimeoutError,
    exception_line,
)
from .execution import DEFAULT_LEASE, Executor
from .gateway import MessageRow
from .handlers import DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_DELAY, Handler, HandlerRegistry, P, R
from .listener import Listener
from .models import (
    CANCELLED,
    DEFAULT_TABLE,
    FAILED,
    FINISHED,
    MESSAGE,
    SUCCEEDED,
    JobMixin,
    job_model,
)
from .schedules import ScheduleRegistry
from .statements import statements_for
from .tasks import Task

DEFAULT_POLL_INTERVAL = 5.0


class Queue:
    """A named queue on a queue table.

    `bind` is an Engine, a sessionmaker bound to one, or a URL / libpq DSN string.
    Several `Queue` objects (with different names) may share one table.
    `retention` (a timedelta or seconds) keeps finished tasks, with their results,
    for that long; None deletes them as they finish. Give it to every `Queue` of
    the queue, the producers' (for `result()`) as well as the workers'.
    (`AsyncQueue` passes a ready `Binding` of its async engine.)
    """

    def __init__(
        self,
        bind: Bind | Binding,
        *,
        name: str = "default",
        data_type: validation.DataType = "json",
        data_length: int | None = None,
        excepted_times_to_ignore: int = 0,
        model: type[JobMixin] | None = None,
        table_name: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        listen_bind: Engine | URL | str | None = None,
        retention: timedelta | float | None = None,
    ) -> None:
        validation.check_name(name, "queue name")
        kept_for = validation.check_retention(retention)
        validation.check_options(data_type, data_length, excepted_times_to_ignore)
        if model is not None and table_name is not None and model.__tablename__ != table_name:
            raise InvalidInputError("give model or table_name, not two different tables")
        self.name = name
        self.data_type: validation.DataType = data_type
        self.data_length = data_length
        #: A message that has failed this many times is kept as `failed` (0: never).
        self.excepted_times_to_ignore = excepted_times_to_ignore
        self.poll_interval = validation.check_timeout(poll_interval, "poll_interval") or 0.0
        self.model: type[JobMixin] = model or job_model(
            DEFAULT_TABLE if table_name is None else validation.check_table_name(table_name)
        )
        binding = bind if isinstance(bind, Binding) else Binding(bind, listen_bind)
        self.backend = Backend(binding, statements_for(self.model), name, kept_for)
        #: The task handlers registered on this queue, by name.
        self.handlers = HandlerRegistry(self.backend)
        #: The periodic tasks of this queue (see `periodic`), run by its workers.
        self.schedules = ScheduleRegistry(self.backend)
        self.executor = Executor(self.backend, self.handlers)

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} on {self.table_name!r}>"

    @property
    def table_name(self) -> str:
        return self.model.__tablename__

    @property
    def engine(self) -> Engine:
        return self.backend.binding.engine

    @property
    def retention(self) -> timedelta | None:
        return self.backend.retention

    # -- schema --------------------------------------------------------------

    def create_table(self) -> bool:
        """Create the queue table (exactly as the Alembic chain does) unless it exists."""
        with self.backend.binding.transaction() as conn:
            return gateway.create_table(conn, self.table_name)

    # -- enqueue -------------------------------------------------------------

    def enqueue(
        self,
        tag: str,
        data: Any,
        session: Caller | None = None,
        *,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        priority: int = 0,
        unique_key: str | None = None,
    ) -> int:
        """Add one message; returns its job id.

        With a `unique_key` held by a queued or running job of this queue, nothing is
        written and that job's id is returned.
        """
        params = validation.new_job_params(
            self.name, MESSAGE, tag, run_at, delay, priority, unique_key
        )
        encoded = validation.encode_data(data, self.data_type, self.data_length)
        return tracing.produce(
            "enqueue", params, lambda p: self.backend.run(session, gateway.insert_job, p, encoded)
        )

    def enqueue_many(
        self,
        tag: str,
        datas: Iterable[Any],
        session: Caller | None = None,
        *,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        priority: int = 0,
        unique_keys: Iterable[str | None] | None = None,
    ) -> list[int]:
        """Add many messages in one statement (a very large batch: several, in one transaction).

        Returns their ids in the order given. `unique_keys` gives each message a key
        (or None), as `enqueue`'s `unique_key`.
        """
        params = validation.new_job_params(self.name, MESSAGE, tag, run_at, delay, priority)
        values = validation.check_batch(datas, "datas")
        keys = validation.check_unique_keys(unique_keys, len(values))
        if not values:
            check_caller(session)
            return []
        arrays = validation.encode_batch(values, self.data_type, self.data_length)
        return tracing.produce(
            "enqueue", params, lambda p: self.backend.insert_jobs(session, p, arrays, keys)
        )

    # -- dequeue -------------------------------------------------------------

    @contextmanager
    def dequeue(self, tag: str, session: Caller | None = None) -> Iterator[Any]:
        """Lock the next message's row and yield its data (None when there is none).

        Leaving the block normally removes the message. An exception leaves it in
        the queue with `attempts + 1` and its traceback in `last_error`, moves it
        behind the others, and propagates.
        """
        with consuming.hold(
            self.backend, validation.check_name(tag), session, self._rules()
        ) as row:
            yield None if row is None else message_data(row)

    @contextmanager
    def dequeue_item(self, tag: str, session: Caller | None = None) -> Iterator[JobMixin | None]:
        """Like `dequeue`, yielding the whole `Job` row."""
        with consuming.hold(
            self.backend, validation.check_name(tag), session, self._rules()
        ) as row:
            yield None if row is None else self._job(row)

    def dequeue_immediate(self, tag: str, session: Caller | None = None) -> Any:
        """Remove the next message at once and return its data (None when there is none)."""
        row = consuming.take(self.backend, validation.check_name(tag), session, self._rules())
        return None if row is None else message_data(row)

    def dequeue_item_immediate(self, tag: str, session: Caller | None = None) -> JobMixin | None:
        """Remove the next message at once and return it as a `Job`."""
        row = consuming.take(self.backend, validation.check_name(tag), session, self._rules())
        return None if row is None else self._job(row)

    # -- listen --------------------------------------------------------------

    def listen(
        self, tag: str, timeout: float | Caller | None = None, session: Caller | None = None
    ) -> consuming.Listening:
        """Yield message data as it arrives, woken by NOTIFY (no busy polling).

        Each message is held in a transaction while the loop body runs and removed
        when the next one is asked for. Leaving the loop (break or exception)
        returns the current message untouched. Yields None after `timeout` quiet
        seconds, then keeps listening. A session passed second (q4pg's
        `listen(tag, session)`) is taken as `session`.
        """
        return self._listen(tag, timeout, session, message_data)

    def listen_item(
        self, tag: str, timeout: float | Caller | None = None, session: Caller | None = None
    ) -> consuming.Listening:
        """Like `listen`, yielding whole `Job` rows."""
        return self._listen(tag, timeout, session, self._job)

    def _listen(
        self, tag: str, timeout: object, session: object, present: Callable[[MessageRow], Any]
    ) -> consuming.Listening:
        timeout, session = timeout_and_session(timeout, session)
        seconds = validation.check_timeout(timeout)
        checked = validation.check_name(tag)  # now, not at the first next()
        check_caller(session)
        return consuming.listen(
            self.backend, checked, seconds, session, self._rules, present, self.poll_interval
        )

    # -- inspect and cancel --------------------------------------------------

    def list(self, tag: str, session: Caller | None = None) -> builtins.list[JobMixin]:
        """Waiting messages with this tag, in the order they would be dequeued."""
        return self.backend.run(
            session, gateway.list_messages, self.name, validation.check_name(tag)
        )

    def count(self, tag: str, session: Caller | None = None) -> int:
        """Messages with this tag that will still be handed out (failed ones excluded)."""
        return self.backend.run(
            session, gateway.count_messages, self.name, validation.check_name(tag)
        )

    def cancel(self, job_id: int, session: Caller | None = None) -> bool:
        """Cancel a waiting or failed job of this queue; False if absent or being worked on.

        With a retention it is kept as `cancelled` for that long, else deleted.
        """
        checked = validation.check_job_id(job_id)
        keep = self.backend.keeps_finished
        return self.backend.run(session, gateway.cancel_job, self.name, checked, keep=keep)

    def abort(self, job_id: int, session: Caller | None = None) -> bool:
        """Stop a job of this queue: a queued one is cancelled at once; a running one's
        worker is told (by NOTIFY, its heartbeat as the fallback) within about a second.

        An async handler is then cancelled (`asyncio.CancelledError`); a sync one sees
        `sa_pgtq.abort_requested()` turn True. The job ends as `cancelled` (kept with a
        retention), never retried, its handler's writes rolled back. False if the job
        is absent, another queue's, or finished.
        """
        checked = validation.check_job_id(job_id)
        keep = self.backend.keeps_finished
        return self.backend.run(session, gateway.abort_job, self.name, checked, keep=keep)

    def failed(
        self, tag: str | None = None, session: Caller | None = None
    ) -> builtins.list[JobMixin]:
        """Jobs (tasks or messages) kept as `failed`, oldest first; `tag` narrows by tag/handler."""
        checked = None if tag is None else validation.check_name(tag)
        return self.backend.run(session, gateway.list_failed, self.name, checked)

    def requeue_failed(
        self, job_ids: Iterable[int] | None = None, session: Caller | None = None
    ) -> int:
        """Queue failed jobs again with fresh attempts (all of this queue's, or just `job_ids`).

        Returns how many. A failed job freed its unique key: one whose key another job
        holds by now stays failed (and of failed jobs sharing a key, the oldest comes back).
        """
        ids = None
        if job_ids is not None:
            ids = [validation.check_job_id(i) for i in validation.check_batch(job_ids, "job_ids")]
        return self.backend.run_atomic(session, gateway.requeue_failed, self.name, ids)

    # -- job lifecycle -------------------------------------------------------

    def job(self, job_id: int, session: Caller | None = None) -> JobMixin | None:
        """The queue's job with this id, in any state (None: not in the queue, or pruned)."""
        checked = validation.check_job_id(job_id)
        return self.backend.run(session, gateway.get_job, self.name, checked)

    def result(self, job_id: int, timeout: float | None = None) -> Any:
        """The result of a task once it has succeeded, waiting up to `timeout` seconds.

        Raises `JobFailedError` if it failed or was cancelled, `ResultTimeoutError` (a
        `TimeoutError`) when `timeout` passes first, `JobNotFoundError` if the job is
        not in the queue. The wait is woken by the NOTIFY a job's completion sends,
        with polling every `poll_interval` as the fallback. Results are kept only on
        a queue with a `retention`.
        """
        checked = validation.check_job_id(job_id)
        seconds = validation.check_timeout(timeout)
        if self.retention is None:
            raise ResultsNotKeptError(
                f"queue {self.name!r} has no retention: finished jobs are deleted with their "
                "results. Give Queue(..., retention=timedelta(...)) to keep them"
            )
        deadline = None if seconds is None else time.monotonic() + seconds
        binding = self.backend.binding
        # Listening before the first look: a completion in between still wakes us.
        with Listener(
            binding.listen_engine, self.table_name, self.name, FINISHED, None, self.poll_interval
        ) as listener:
            while True:
                job = self.job(checked)
                if job is None:
                    raise JobNotFoundError(f"job {checked} is not in queue {self.name!r}")
                if job.state == SUCCEEDED:
                    return job.result
                if job.state in (FAILED, CANCELLED):
                    why = exception_line(job.last_error) or "no error recorded"
                    raise JobFailedError(
                        f"job {checked} {job.state}: {why}",
                        job_id=checked,
                        state=job.state,
                        last_error=job.last_error,
                    )
                left = self.poll_interval
                if deadline is not None:
                    left = min(left, deadline - time.monotonic())
                    if left <= 0:
                        raise ResultTimeoutError(
                            f"job {checked} has not finished after {seconds}s (it is {job.state})"
                        )
                listener.wait(left)

    # -- pausing -------------------------------------------------------------

    def pause(self, session: Caller | None = None) -> None:
        """Stop handing out this queue's tasks, to every worker and `pop()`, until `resume()`.

        Stored in the database, so it holds for every worker, those started later too;
        each one's next claim finds nothing. Tasks already claimed still run, and
        pushing still works. The message layer (`dequeue`, `listen`) is not paused.
        """
        self.backend.run(session, gateway.pause_queue, self.name)

    def resume(self, session: Caller | None = None) -> None:
        """Hand out this queue's tasks again; idle workers are woken to claim at once."""
        self.backend.run(session, gateway.resume_queue, self.name)

    def is_paused(self, session: Caller | None = None) -> bool:
        return self.backend.run(session, gateway.queue_paused, self.name)

    # -- task layer ----------------------------------------------------------

    def handler(
        self,
        name: str | None = None,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        timeout: float | None = None,
    ) -> Callable[[Callable[P, R]], Handler[P, R]]:
        """Register a function as a task handler (name defaults to the function's name).

        A failing task is retried after `retry_delay` seconds, doubling per attempt
        (with jitter), until it has been tried `max_attempts` times; then it is kept
        as `failed` with its error. A run longer than `timeout` seconds fails with
        `TaskTimeoutError` (None: the worker's default, if any).
        """
        return self.handlers.decorator(name, max_attempts, retry_delay, timeout)

    def periodic(
        self,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        timezone: str = "UTC",
        kwargs: dict[str, Any] | None = None,
    ) -> Callable[[Handler[P, R]], Handler[P, R]]:
        """Run a handler periodically: `@q.periodic(every=60)` on top of `@q.handler()`.

        `cron` is a cron expression (five fields, or six with seconds first; needs
        `sa_pgtq[cron]`) evaluated in `timezone` (an IANA name); `every` a timedelta
        or seconds, ticking at its multiples since the Unix epoch. Each tick becomes
        one job (called with `kwargs`, its `run_at` the tick) however many workers
        run; ticks missed while no worker ran make one job when one is back. The
        schedule's first sight only records the current tick: the next one runs.
        """
        return self.schedules.decorator(cron, every, timezone, kwargs)

    def pop(self, session: Caller | None = None, *, lease: float | None = None) -> Task | None:
        """Claim the next due task under a lease of `lease` seconds; run it with `task.run()`.

        `run()` keeps the lease alive while the handler runs. A popped task that is
        never run is not lost: once its lease expires a worker takes it over. Popped
        in the caller's `session`, it is the caller's until they commit: `run()`
        records its outcome in that transaction.
        """
        seconds = validation.check_timeout(lease, "lease") or DEFAULT_LEASE
        claimed = self.executor.claim(1, seconds, session)
        return claimed[0] if claimed else None

    # -- helpers -------------------------------------------------------------

    def _rules(self) -> Rules:
        return Rules(ignore_after=self.excepted_times_to_ignore)

    def _job(self, row: MessageRow) -> JobMixin:
        return job_from_row(self.model, row)


def job_from_row(model: type[JobMixin], row: MessageRow) -> JobMixin:
    """A removed message as a (transient) `Job`, its data decoded."""
    return model(**{**row, "data": message_data(row)})


def message_data(row: MessageRow) -> Any:
    """A removed message's data, decoded from the JSON text it was returned as."""
    return validation.decode_data(row["data"])
