"""Every statement sa_pgtq sends, built once per queue table.

All values (queue names, tags, payloads, ids) travel as bound parameters; the
only identifiers in the SQL are the table's own columns, quoted by SQLAlchemy.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    TIMESTAMP,
    ColumnElement,
    Delete,
    Interval,
    Select,
    Text,
    Update,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.sql.dml import ReturningDelete, ReturningInsert

from .models import FAILED, MESSAGE, QUEUED, JobMixin
from .schema import CHANNEL


def const(value: str) -> ColumnElement[str]:
    """One of sa_pgtq's own state/kind constants, rendered inline.

    psycopg 3 prepares repeated statements, and a generic plan cannot match a
    partial index (`WHERE state = 'queued'`) against `state = $1`: the fetch
    paths must say the constant literally to stay on their index.
    """
    return literal(value, literal_execute=True)


def _run_at() -> ColumnElement[Any]:
    # Scheduling is computed by the server clock: an explicit run_at wins, else now() + delay.
    return func.coalesce(
        bindparam("run_at", type_=TIMESTAMP(timezone=True)),
        func.now() + func.coalesce(bindparam("delay", type_=Interval), text("interval '0'")),
    )


class Statements:
    """The statements of one queue table. Parameters are named in each docstring."""

    def __init__(self, model: type[JobMixin]) -> None:
        table = model.__table__  # type: ignore[attr-defined]
        c = table.c
        self.model = model
        self.table = table
        self.dequeue_order = (c.priority.desc(), c.run_at, c.id)

        queue = bindparam("queue", type_=Text)
        tag = bindparam("tag", type_=Text)
        kind = bindparam("kind", type_=Text)
        waiting_messages = and_(
            c.queue == queue, c.tag == tag, c.kind == const(MESSAGE), c.state == const(QUEUED)
        )
        ready_messages = and_(waiting_messages, c.run_at <= func.now())

        #: queue, kind, tag, data (JSON text), priority, run_at, delay -> id
        self.insert_one: ReturningInsert[Any] = (
            insert(table)
            .values(
                queue=queue,
                kind=kind,
                tag=tag,
                data=cast(bindparam("data", type_=Text), JSONB),
                priority=bindparam("priority"),
                run_at=_run_at(),
            )
            .returning(c.id)
        )

        # One INSERT .. SELECT over unnest(): one round trip and one cached plan per batch size.
        rows = (
            func.unnest(bindparam("datas", type_=ARRAY(Text)))
            .table_valued("d", with_ordinality="n")
            .render_derived()
        )
        #: queue, kind, tag, datas (list of JSON text), priority, run_at, delay -> ids in order
        self.insert_many: ReturningInsert[Any] = (
            insert(table)
            .from_select(
                ["queue", "kind", "tag", "data", "priority", "run_at"],
                select(
                    cast(queue, Text),
                    cast(kind, Text),
                    cast(tag, Text),
                    cast(rows.c.d, JSONB),
                    bindparam("priority"),
                    _run_at(),
                ).order_by(rows.c.n),
            )
            .returning(c.id)
        )

        #: queue, tag -> (id, data) of the next ready message, row-locked (SKIP LOCKED)
        self.lock_next_message: Select[Any] = (
            select(c.id, c.data)
            .where(ready_messages)
            .order_by(*self.dequeue_order)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        #: queue, tag -> the same row as an ORM entity
        self.lock_next_message_item: Select[Any] = (
            select(model)
            .where(ready_messages)
            .order_by(*self.dequeue_order)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        next_message_id = (
            select(c.id)
            .where(ready_messages)
            .order_by(*self.dequeue_order)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        #: queue, tag -> (data,) of the message removed at once
        self.take_next_message: ReturningDelete[Any] = (
            delete(table).where(c.id == next_message_id).returning(c.data)
        )
        #: queue, tag -> the removed message as an ORM entity
        self.take_next_message_item: ReturningDelete[Any] = (
            delete(model).where(model.id == next_message_id).returning(model)
        )
        #: job_id
        self.delete_job: Delete = delete(table).where(c.id == bindparam("job_id"))
        #: job_id, error, ignore_after (0 = never) -> the message goes to the tail, or to `failed`
        self.fail_message: Update = (
            update(table)
            .where(c.id == bindparam("job_id"))
            .values(
                attempts=c.attempts + 1,
                last_error=bindparam("error"),
                run_at=func.clock_timestamp(),
                state=case(
                    (
                        and_(
                            bindparam("ignore_after") > 0,
                            c.attempts + 1 > bindparam("ignore_after"),
                        ),
                        const(FAILED),
                    ),
                    else_=const(QUEUED),
                ),
            )
        )
        #: queue, tag -> number of waiting messages
        self.count_messages: Select[Any] = (
            select(func.count()).select_from(table).where(waiting_messages)
        )
        #: queue, tag -> waiting messages in dequeue order
        self.list_messages: Select[Any] = (
            select(model).where(waiting_messages).order_by(*self.dequeue_order)
        )
        #: queue, tag -> seconds until the earliest waiting message is due (None: there is none).
        #: The server's clock decides, so client clock skew cannot delay a job.
        self.seconds_until_next_message: Select[Any] = select(
            func.extract("epoch", func.min(c.run_at) - func.clock_timestamp())
        ).where(waiting_messages)
        #: job_id, queue -> id if a waiting or failed job was deleted; a locked one is skipped
        self.cancel: ReturningDelete[Any] = (
            delete(table)
            .where(
                c.id
                == select(c.id)
                .where(
                    c.id == bindparam("job_id"),
                    c.queue == queue,
                    c.state.in_([const(QUEUED), const(FAILED)]),
                )
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            .returning(c.id)
        )
        #: payload -> wake listeners (the trigger does this for INSERTs)
        self.notify: Select[Any] = select(func.pg_notify(CHANNEL, bindparam("payload", type_=Text)))


#: The fixed channel is sa_pgtq's own constant; LISTEN cannot take a bound parameter.
LISTEN = f"LISTEN {CHANNEL}"
PING = "SELECT 1"
