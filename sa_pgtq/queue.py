"""`Queue`: the message layer (tags + JSON data) over one queue table.

Every operation takes `session=None`. With the caller's Session it runs inside
the caller's transaction (flushing, never committing), so a job commits or
rolls back with the application's own rows. Without one, the queue opens its
own session from the engine's pool and commits.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL, RowMapping
from sqlalchemy.orm import Session

from . import codec, schema
from .binding import Bind, Binding
from .errors import InvalidInputError
from .execution import DEFAULT_LEASE, claim
from .models import DEFAULT_TABLE, FAILED, MESSAGE, QUEUED, JobMixin, job_model
from .notify import Listener, idle_wait, notify_payload
from .sql import Statements
from .tasks import DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_DELAY, Handler, P, R, Registry, Task

_DEFAULT_POLL_INTERVAL = 5.0


@dataclass
class _Claim:
    """A message held under a row lock while the caller's block runs."""

    id: int
    value: Any  # the data, or the whole Job for the *_item variants


class Queue:
    """A named queue on a queue table.

    `bind` is an Engine, a sessionmaker bound to one, or a URL / libpq DSN string.
    Several `Queue` objects (with different names) may share one table.
    """

    def __init__(
        self,
        bind: Bind,
        *,
        name: str = "default",
        data_type: codec.DataType = "json",
        data_length: int | None = None,
        excepted_times_to_ignore: int = 0,
        model: type[JobMixin] | None = None,
        table_name: str | None = None,
        poll_interval: float = _DEFAULT_POLL_INTERVAL,
        listen_bind: Engine | URL | str | None = None,
    ) -> None:
        codec.check_name(name, "queue name")
        codec.check_options(data_type, data_length, excepted_times_to_ignore)
        if model is not None and table_name is not None and model.__tablename__ != table_name:
            raise ValueError("give model or table_name, not two different tables")
        self.name = name
        self.data_type: codec.DataType = data_type
        self.data_length = data_length
        self.excepted_times_to_ignore = excepted_times_to_ignore
        self.poll_interval = codec.check_timeout(poll_interval, "poll_interval") or 0.0
        self.model: type[JobMixin] = model or job_model(table_name or DEFAULT_TABLE)
        self.binding = Binding(bind, listen_bind)
        self.sql = Statements(self.model)
        self.tasks = Registry(self)

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} on {self.model.__tablename__!r}>"

    @property
    def table_name(self) -> str:
        return self.model.__tablename__

    # -- schema --------------------------------------------------------------

    def create_table(self) -> bool:
        """Create the queue table (exactly as the Alembic chain does) unless it exists."""
        with self.binding.engine.begin() as conn:
            return schema.create_all(conn, self.table_name)

    # -- enqueue -------------------------------------------------------------

    def enqueue(
        self,
        tag: str,
        data: Any,
        session: Session | None = None,
        *,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        priority: int = 0,
    ) -> int:
        """Add one message; returns its job id."""
        params = self.job_params(MESSAGE, tag, run_at, delay, priority)
        params["data"] = self.encode(data)
        with self.binding.single_statement(session) as s:
            return int(s.execute(self.sql.insert_one, params).scalar_one())

    def enqueue_many(
        self,
        tag: str,
        datas: Any,
        session: Session | None = None,
        *,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        priority: int = 0,
    ) -> list[int]:
        """Add many messages in one statement; returns their ids in the order given."""
        params = self.job_params(MESSAGE, tag, run_at, delay, priority)
        values = builtins.list(datas)
        if not values:
            return []
        params["datas"] = codec.encode_batch(values, self.data_type, self.data_length)
        return self.insert_many(params, session)

    def insert_many(self, params: dict[str, Any], session: Session | None) -> list[int]:
        """Run the bulk INSERT for validated parameters, `datas` a JSON array (one job each).

        Shared with the task layer.
        """
        with self.binding.single_statement(session) as s:
            return sorted(s.execute(self.sql.insert_many, params).scalars())

    def encode(self, data: Any) -> str:
        return codec.encode_data(data, self.data_type, self.data_length)

    def job_params(
        self, kind: str, tag: str, run_at: object, delay: object, priority: object
    ) -> dict[str, Any]:
        """Validated parameters shared by every INSERT (all checks before any write)."""
        run_at, delay = codec.check_schedule(run_at, delay)
        return {
            "queue_name": self.name,
            "kind": kind,
            "tag": codec.check_name(tag),
            "priority": codec.check_priority(priority),
            "run_at": run_at,
            "delay": delay,
        }

    # -- dequeue -------------------------------------------------------------

    @contextmanager
    def dequeue(self, tag: str, session: Session | None = None) -> Iterator[Any]:
        """Lock the next message's row and yield its data (None when there is none).

        Leaving the block normally removes the message. An exception leaves it in
        the queue with `attempts + 1` and its traceback in `last_error`, moves it
        behind the others, and propagates.
        """
        with self._claim(tag, session, item=False) as claim:
            yield None if claim is None else claim.value

    @contextmanager
    def dequeue_item(self, tag: str, session: Session | None = None) -> Iterator[JobMixin | None]:
        """Like `dequeue`, yielding the whole `Job` row."""
        with self._claim(tag, session, item=True) as claim:
            yield None if claim is None else claim.value

    def dequeue_immediate(self, tag: str, session: Session | None = None) -> Any:
        """Remove the next message at once and return its data (None when there is none)."""
        params = self._tag_params(tag)
        with self.binding.single_statement(session) as s:
            row = s.execute(self.sql.take_next_message, params).first()
            return None if row is None else row[0]

    def dequeue_item_immediate(self, tag: str, session: Session | None = None) -> JobMixin | None:
        """Remove the next message at once and return it as a `Job`."""
        params = self._tag_params(tag)
        with self.binding.orm_transaction(session) as s:
            job: JobMixin | None = s.scalars(self.sql.take_next_message_item, params).first()
            return job

    @contextmanager
    def _claim(self, tag: str, session: Session | None, *, item: bool) -> Iterator[_Claim | None]:
        params = self._tag_params(tag)
        if session is not None:
            with self._claim_in(self.binding.join(session), params, item=item, own=False) as claim:
                yield claim
            return
        # No ORM state is involved, so a plain Connection does (and costs less per call).
        with (
            self.binding.engine.connect() as own,
            self._claim_in(own, params, item=item, own=True) as claim,
        ):
            yield claim

    @contextmanager
    def _claim_in(
        self, s: Session | Connection, params: dict[str, Any], *, item: bool, own: bool
    ) -> Iterator[_Claim | None]:
        row = s.execute(self.sql.claim_next_message, params).mappings().first()
        if row is None:
            if own:
                s.commit()  # release the snapshot before the caller's block runs
            yield None
            return
        data = json.loads(row["data"])
        claim = _Claim(row["id"], self.model(**{**row, "data": data}) if item else data)
        # In the caller's transaction the block runs in a savepoint, so that a failure
        # undoes the block's writes but not the removal (taken outside it).
        block = None if own else s.begin_nested()
        try:
            yield claim
        except BaseException as exc:
            if block is not None:
                block.rollback()
            # GeneratorExit (a listen loop left early) and KeyboardInterrupt are not the
            # message's fault: it goes back untouched.
            failure = exc if isinstance(exc, Exception) else None
            if own and failure is None:
                s.rollback()
            else:
                s.execute(self.sql.restore_message, self._restored(row, failure))
                if own:
                    s.commit()
            raise
        if block is not None:
            block.commit()
        if own:
            s.commit()

    def _restored(self, row: RowMapping, failure: Exception | None) -> dict[str, Any]:
        """A claimed message's row as it goes back: unchanged, or failed once more, at the tail."""
        if failure is None:
            return dict(row)
        attempts = row["attempts"] + 1
        ignored = 0 < self.excepted_times_to_ignore < attempts
        return {
            **row,
            "attempts": attempts,
            "last_error": codec.describe_error(failure),
            "run_at": None,
            "state": FAILED if ignored else QUEUED,
        }

    # -- listen --------------------------------------------------------------

    def listen(
        self, tag: str, timeout: float | None = None, session: Session | None = None
    ) -> Iterator[Any]:
        """Yield message data as it arrives, woken by NOTIFY (no busy polling).

        Each message is held in a transaction while the loop body runs and removed
        when the next one is asked for. Leaving the loop (break or exception)
        returns the current message untouched. Yields None after `timeout` quiet
        seconds, then keeps listening.
        """
        return self._listen(tag, timeout, session, item=False)

    def listen_item(
        self, tag: str, timeout: float | None = None, session: Session | None = None
    ) -> Iterator[Any]:
        """Like `listen`, yielding whole `Job` rows."""
        return self._listen(tag, timeout, session, item=True)

    def _listen(
        self, tag: str, timeout: object, session: Session | None, *, item: bool
    ) -> Iterator[Any]:
        if isinstance(timeout, Session):  # q4pg style: the session passed positionally last
            timeout, session = None, timeout
        seconds = codec.check_timeout(timeout)
        params = self._tag_params(tag)  # validated now, not at the first next()
        return self._listen_loop(params, seconds, session, item=item)

    def _listen_loop(
        self, params: dict[str, Any], timeout: float | None, session: Session | None, *, item: bool
    ) -> Iterator[Any]:
        tag = params["tag"]
        with self.listener(MESSAGE, tag) as listener:
            quiet_since = time.monotonic()
            while True:
                with self._claim(tag, session, item=item) as claim:
                    if claim is not None:
                        yield claim.value
                if claim is not None:
                    quiet_since = time.monotonic()
                    continue
                wait = self._seconds_until_due(params, session)
                if timeout is not None:
                    left = quiet_since + timeout - time.monotonic()
                    if left <= 0:
                        yield None
                        quiet_since = time.monotonic()
                        continue
                    wait = min(wait, left)
                listener.wait(wait)

    def listener(self, kind: str, tag: str | None, poll_interval: float | None = None) -> Listener:
        """A LISTEN connection waiting for this queue's `kind` jobs (with `tag`, or any)."""
        return Listener(
            self.binding.listen_engine,
            self.table_name,
            self.name,
            kind,
            tag,
            self.poll_interval if poll_interval is None else poll_interval,
        )

    def _seconds_until_due(self, params: dict[str, Any], session: Session | None) -> float:
        """How long to sleep: until the next scheduled message, at most `poll_interval`."""
        with self.binding.single_statement(session) as s:
            due = s.execute(self.sql.seconds_until_next_message, params).scalar()
        return idle_wait(due, self.poll_interval)

    # -- inspect and cancel --------------------------------------------------

    def list(self, tag: str, session: Session | None = None) -> list[JobMixin]:
        """Waiting messages with this tag, in the order they would be dequeued."""
        with self.binding.orm_transaction(session) as s:
            return list(s.scalars(self.sql.list_messages, self._tag_params(tag)))

    def count(self, tag: str, session: Session | None = None) -> int:
        """Messages with this tag that will still be handed out (failed ones excluded)."""
        with self.binding.single_statement(session) as s:
            return int(s.execute(self.sql.count_messages, self._tag_params(tag)).scalar_one())

    def cancel(self, job_id: int, session: Session | None = None) -> bool:
        """Delete a waiting or failed job of this queue; False if absent or being worked on."""
        params = {"job_id": _job_id(job_id), "queue_name": self.name}
        with self.binding.single_statement(session) as s:
            return s.execute(self.sql.cancel, params).first() is not None

    # -- task layer ----------------------------------------------------------

    def handler(
        self,
        name: str | None = None,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_delay: float = DEFAULT_RETRY_DELAY,
    ) -> Callable[[Callable[P, R]], Handler[P, R]]:
        """Register a function as a task handler (name defaults to the function's name).

        A failing task is retried after `retry_delay` seconds, doubling per attempt
        (with jitter), until it has been tried `max_attempts` times; then it is kept
        as `failed` with its error.
        """
        return self.tasks.decorator(name, max_attempts, retry_delay)

    def pop(self, session: Session | None = None) -> Task | None:
        """Claim the next due task under a lease; run it with `task.run()`.

        A popped task that is never run is not lost: once its lease expires a
        worker takes it over.
        """
        claimed = claim(self, 1, DEFAULT_LEASE, session)
        return claimed[0] if claimed else None

    def failed(
        self, tag: str | None = None, session: Session | None = None
    ) -> builtins.list[JobMixin]:
        """Jobs (tasks or messages) kept as `failed`, oldest first; `tag` narrows by tag/handler."""
        params = {"queue_name": self.name, "tag": None if tag is None else codec.check_name(tag)}
        with self.binding.orm_transaction(session) as s:
            return list(s.scalars(self.sql.list_failed, params))

    def requeue_failed(
        self, job_ids: Iterable[int] | None = None, session: Session | None = None
    ) -> int:
        """Queue failed jobs again with fresh attempts (all of this queue's, or just `job_ids`)."""
        ids = None if job_ids is None else [_job_id(i) for i in job_ids]
        with self.binding.transaction(session) as s:
            requeued = s.execute(
                self.sql.requeue_failed, {"queue_name": self.name, "ids": ids}
            ).all()
            for kind, tag in {tuple(row) for row in requeued}:
                payload = notify_payload(self.table_name, self.name, kind, tag)
                s.execute(self.sql.notify, {"payload": payload})
        return len(requeued)

    def _tag_params(self, tag: str) -> dict[str, Any]:
        return {"queue_name": self.name, "tag": codec.check_name(tag)}


def _job_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"a job id must be an int, got {type(value).__name__}")
    return value
