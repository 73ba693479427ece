"""q4pg's `QueueManager` on sa_pgtq: q4pg users change one import.

    from sa_pgtq import q4pg          # was: import q4pg
    q = q4pg.QueueManager(dsn="dbname=db1 user=user", table_name="mq")

It keeps q4pg's API and the behaviour q4pg's code and tests rely on, on
sa_pgtq's table and machinery: q4pg's row tuples with the stored text, naive
local `schedule` times, `ignore_scheduled`, messages handed out in id order,
`excepted_times_to_ignore` settable on the instance, and leaving a `listen`
loop early counting as a failure of the message in hand. Where q4pg deleted a
message it ignored, sa_pgtq keeps it, visibly, as `failed`.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from . import consuming, gateway, validation
from .binding import Caller
from .consuming import Rules
from .errors import InvalidInputError, InvalidTagError
from .gateway import MessageRow
from .models import JobMixin
from .queue import Queue, job_from_row, message_data

#: q4pg's row: (id, tag, data as stored text, created_at, error count, schedule).
Row = tuple[int, str, str, datetime, int, datetime | None]

_TAG = re.compile(r"^[A-Za-z0-9\-_+]+$")
#: How late `listen` hands a scheduled message out, at most: within DESIGN's 100 ms.
_Q4PG_LATENESS = 0.05


class QueueManager:
    """q4pg's QueueManager. `dsn` is a libpq DSN or URL (or an Engine / sessionmaker).

    Each operation takes the caller's session last (an ORM Session, a
    scoped_session or a Core Connection) and then runs in the caller's
    transaction, which the caller commits, as with q4pg.
    """

    def __init__(
        self,
        dsn: str | Engine | sessionmaker[Session],
        table_name: str = "mq",
        data_type: str = "json",
        data_length: int | None = 1023,
        excepted_times_to_ignore: int = 0,
        **options: Any,
    ) -> None:
        if isinstance(dsn, str) and dsn.startswith("psql://"):  # q4pg accepted this scheme
            dsn = "postgresql://" + dsn.removeprefix("psql://")
        if data_type not in ("json", "jsonb", "text"):
            raise InvalidInputError(f"data_type must be 'json' or 'text', got {data_type!r}")
        self.queue = Queue(
            dsn,
            table_name=table_name,
            data_type="text" if data_type == "text" else "json",
            data_length=data_length,
            excepted_times_to_ignore=excepted_times_to_ignore,
            **options,
        )
        self.table_name = table_name
        self.data_type = data_type
        self.data_length = data_length

    def __repr__(self) -> str:
        return f"<QueueManager on {self.table_name!r}>"

    @property
    def excepted_times_to_ignore(self) -> int:
        """A message that has failed this many times is no longer handed out (0: never)."""
        return self.queue.excepted_times_to_ignore

    @excepted_times_to_ignore.setter
    def excepted_times_to_ignore(self, value: int) -> None:
        validation.check_non_negative(value, "excepted_times_to_ignore")
        self.queue.excepted_times_to_ignore = value

    # -- the table -----------------------------------------------------------

    def create_table(self, other_sess: Caller | None = None) -> bool:
        """Create the queue table with sa_pgtq's schema; False if it already exists."""
        return self._on_table(other_sess, gateway.create_table)

    def drop_table(self, other_sess: Caller | None = None) -> bool:
        return self._on_table(other_sess, gateway.drop_table)

    def reset_table(self, other_sess: Caller | None = None) -> None:
        """Drop the table with every message in it, and create it again."""
        self.drop_table(other_sess)
        self.create_table(other_sess)

    # -- messages ------------------------------------------------------------

    def enqueue(
        self,
        tag: str,
        data: Any,
        other_sess: Caller | None = None,
        schedule: datetime | None = None,
    ) -> int:
        """Add a message; `schedule` (a naive datetime is the local time) delays it."""
        if isinstance(schedule, datetime) and schedule.tzinfo is None:
            schedule = schedule.astimezone()
        return self.queue.enqueue(_check_tag(tag), data, other_sess, run_at=schedule)

    @contextmanager
    def dequeue(self, tag: str, other_sess: Caller | None = None) -> Iterator[Any]:
        with self._hold(tag, other_sess) as row:
            yield None if row is None else message_data(row)

    @contextmanager
    def dequeue_item(self, tag: str, other_sess: Caller | None = None) -> Iterator[Row | None]:
        with self._hold(tag, other_sess) as row:
            yield None if row is None else self._removed(row)

    def dequeue_immediate(self, tag: str, other_sess: Caller | None = None) -> Any:
        row = consuming.take(self.queue.backend, _check_tag(tag), other_sess, self._rules())
        return None if row is None else message_data(row)

    def dequeue_item_immediate(self, tag: str, other_sess: Caller | None = None) -> Row | None:
        row = consuming.take(self.queue.backend, _check_tag(tag), other_sess, self._rules())
        return None if row is None else self._removed(row)

    def listen(self, tag: str, timeout: float | None = None) -> consuming.Listening:
        """Yield message data as it arrives; None after `timeout` quiet seconds.

        Each message is removed when the next one is asked for; leaving the loop
        early (break, an exception) counts as a failure of the message in hand.
        """
        return self._listen(tag, timeout, message_data)

    def listen_item(self, tag: str, timeout: float | None = None) -> consuming.Listening:
        return self._listen(tag, timeout, self._removed)

    def list(
        self, tag: str, other_sess: Caller | None = None, ignore_scheduled: bool = True
    ) -> builtins.list[Row]:
        """Messages with this tag, the ones not due yet only if `ignore_scheduled` is False."""
        jobs = self.queue.backend.run(
            other_sess,
            gateway.list_messages,
            self.queue.name,
            _check_tag(tag),
            due_only=ignore_scheduled,
            order="id",
        )
        return [self._row(job) for job in jobs]

    def count(
        self, tag: str, other_sess: Caller | None = None, ignore_scheduled: bool = True
    ) -> int:
        return self.queue.backend.run(
            other_sess,
            gateway.count_messages,
            self.queue.name,
            _check_tag(tag),
            due_only=ignore_scheduled,
        )

    def cancel(self, id: int, other_sess: Caller | None = None) -> bool:
        return self.queue.cancel(id, other_sess)

    # -- helpers -------------------------------------------------------------

    def _rules(self) -> Rules:
        return Rules(
            order="id",
            ignore_after=self.excepted_times_to_ignore,
            pass_over=True,
            any_exit_is_failure=True,
            failure_to_tail=False,
            due_slack=_Q4PG_LATENESS,
        )

    def _hold(
        self, tag: str, other_sess: Caller | None
    ) -> AbstractContextManager[MessageRow | None]:
        return consuming.hold(self.queue.backend, _check_tag(tag), other_sess, self._rules())

    def _listen(
        self, tag: str, timeout: float | None, present: Callable[[MessageRow], Any]
    ) -> consuming.Listening:
        seconds = validation.check_timeout(timeout)
        backend = self.queue.backend
        return consuming.listen(
            backend, _check_tag(tag), seconds, None, self._rules, present, self.queue.poll_interval
        )

    def _on_table(
        self, other_sess: Caller | None, operation: Callable[[Connection, str], bool]
    ) -> bool:
        with self.queue.backend.connection(other_sess, atomic=True) as conn:
            return operation(conn, self.table_name)

    def _removed(self, row: MessageRow) -> Row:
        return self._row(job_from_row(self.queue.model, row))

    def _row(self, job: JobMixin) -> Row:
        """q4pg's tuple: the data as the stored text, datetimes naive in local time.

        q4pg stored the text it was given; jsonb keeps the value, not the text, so the
        text is compact JSON again (object keys in jsonb's order). `schedule` is the
        time it was enqueued for, None when it was due at once.
        """
        created = _naive_local(job.created_at)
        due = _naive_local(job.run_at)
        text = job.data if self.data_type == "text" else json.dumps(job.data, separators=(",", ":"))
        return (job.id, job.tag, text, created, job.attempts, due if due > created else None)


def _check_tag(tag: object) -> str:
    """q4pg's tag rule, with q4pg's message (its users may match on it)."""
    if not isinstance(tag, str) or not _TAG.match(tag):
        raise InvalidTagError(
            f'Invalid tag-name "{tag}". tag-name must be matched "^[A-Za-z0-9\\-_\\+]+$".'
        )
    return validation.check_name(tag)


def _naive_local(moment: datetime) -> datetime:
    return moment.astimezone().replace(tzinfo=None)
