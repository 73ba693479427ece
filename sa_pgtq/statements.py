"""Every statement sa_pgtq sends, built once per queue table (`statements_for`).

Only `gateway` executes them. All values (queue names, tags, payloads, ids)
travel as bound parameters; the only identifiers in the SQL are the table's own
columns, quoted by SQLAlchemy.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import (
    TIMESTAMP,
    BigInteger,
    Boolean,
    ColumnElement,
    Delete,
    Interval,
    Select,
    Text,
    Update,
    and_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    literal_column,
    not_,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, aggregate_order_by
from sqlalchemy.sql.dml import ReturningDelete, ReturningInsert, ReturningUpdate

from .models import (
    ABORT,
    CANCELLED,
    CONTROL,
    FAILED,
    FINISHED,
    MESSAGE,
    QUEUED,
    RUNNING,
    TASK,
    JobMixin,
)
from .schema import CHANNEL


def const(value: str) -> ColumnElement[str]:
    """One of sa_pgtq's own state/kind constants, rendered inline.

    psycopg 3 prepares repeated statements, and a generic plan cannot match a
    partial index (`WHERE state = 'queued'`) against `state = $1`: the fetch
    paths must say the constant literally to stay on their index. It is rendered
    when the statement is compiled (and cached), not at every execution; the
    values are sa_pgtq's own identifier-like constants, never user input.
    """
    if not value.isidentifier():
        raise ValueError(f"not a state or kind constant: {value!r}")
    return literal_column(f"'{value}'", Text)


def _run_at() -> ColumnElement[Any]:
    # Scheduling is computed by the server clock: an explicit run_at wins, else now() + delay.
    return func.coalesce(
        bindparam("run_at", type_=TIMESTAMP(timezone=True)),
        func.now() + func.coalesce(bindparam("delay", type_=Interval), text("interval '0'")),
    )


def _seconds_until_due(table: Any, waiting: ColumnElement[bool]) -> Select[Any]:
    # The server's clock decides, so client clock skew cannot delay a job. A job due
    # for longer than a moment that a fetch just missed is held by another consumer:
    # it comes back with a NOTIFY if it fails, so counting it would only make idle
    # consumers ask again and again while it is held. One that became due between
    # the fetch and this statement still counts.
    return select(func.extract("epoch", func.min(table.c.run_at) - func.clock_timestamp())).where(
        waiting, table.c.run_at > func.clock_timestamp() - text("interval '50 milliseconds'")
    )


def _wake_listeners(table: Any, queue: Any, kind: Any, tag: Any) -> ColumnElement[Any]:
    # The payload the listeners match on: [table, queue, kind, tag] as JSON text.
    payload = func.json_build_array(literal(str(table.name)), queue, kind, tag)
    return func.pg_notify(CHANNEL, cast(payload, Text))


def _notify_if_due(table: Any) -> ColumnElement[Any]:
    """For an INSERT's RETURNING: wake listeners if the row is waiting and due.

    PostgreSQL sends the notification at commit, and only once per transaction
    for equal payloads. A job scheduled for later wakes no one: listeners sleep
    until the earliest due job anyway. Due by the clock, not by the transaction's
    start: a failed message goes back with `run_at` = the moment it failed.
    """
    c = table.c
    due = and_(c.state == const(QUEUED), c.run_at <= func.clock_timestamp())
    return case((due, _wake_listeners(table, c.queue, c.kind, c.tag)))


def _finished(table: Any, queue: Any) -> ColumnElement[Any]:
    # Wakes whoever waits for a job of the queue to finish (`result()`).
    return _wake_listeners(table, queue, literal(FINISHED), literal(""))


def _cancelled(table: Any, where: ColumnElement[bool], keep: bool) -> Update | Delete:
    """The jobs `where` selects, ended as cancelled: kept as such (a retention), or deleted."""
    if not keep:
        return delete(table).where(where)
    return (
        update(table)
        .where(where)
        .values(
            state=const(CANCELLED),
            finished_at=func.clock_timestamp(),
            locked_by=None,
            lease_expires_at=None,
        )
    )


#: The order messages are handed out in: sa_pgtq's (priority, then run_at, then
#: insertion), or q4pg's (id: a retried message goes before newer ones).
Order = Literal["priority", "id"]


class Statements:
    """The statements of one queue table. Parameters are named in each comment."""

    def __init__(self, model: type[JobMixin]) -> None:
        table = model.__table__  # type: ignore[attr-defined]
        c = table.c
        self.model = model
        self.table = table
        self.dequeue_order = (c.priority.desc(), c.run_at, c.id)

        queue = bindparam("queue_name", type_=Text)
        tag = bindparam("tag", type_=Text)
        kind = bindparam("kind", type_=Text)
        waiting_messages = and_(
            c.queue == queue, c.tag == tag, c.kind == const(MESSAGE), c.state == const(QUEUED)
        )
        ready_messages = and_(waiting_messages, c.run_at <= func.now())

        #: queue_name, kind, tag, data (JSON text), priority, run_at, delay -> id
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
            .returning(c.id, _notify_if_due(table))
        )

        # One INSERT .. SELECT over the elements of one JSON array: one round trip, one
        # plan for any batch size, and one parameter to send (an array of a thousand
        # strings costs the driver more to quote than the server to parse).
        rows = (
            func.jsonb_array_elements(cast(bindparam("datas", type_=Text), JSONB))
            .table_valued("d", with_ordinality="n")
            .render_derived()
        )
        # The ids come back as one array, in insertion order (the identity is drawn in the
        # order of `n`): a thousand-row result costs the client more than the INSERT.
        inserted = (
            insert(table)
            .from_select(
                ["queue", "kind", "tag", "data", "priority", "run_at"],
                select(
                    cast(queue, Text),
                    cast(kind, Text),
                    cast(tag, Text),
                    rows.c.d,
                    bindparam("priority"),
                    _run_at(),
                ).order_by(rows.c.n),
            )
            .returning(c.id, c.run_at)
            .cte("inserted")
        )
        # One schedule for the whole batch: one notification, if it is due.
        due = func.bool_or(inserted.c.run_at <= func.clock_timestamp())
        #: queue_name, kind, tag, datas (a JSON array, one element per job), priority, run_at,
        #: delay -> an array of the ids, in order
        self.insert_many: Select[Any] = select(
            func.array_agg(aggregate_order_by(inserted.c.id, inserted.c.id)),
            case((due, _wake_listeners(table, queue, kind, tag))),
        )

        # Rows come back with `data` as JSON text, decoded in Python with a bound on its
        # nesting: a driver decoding a payload nested thousands deep (written with plain
        # SQL) would raise RecursionError for the whole fetch, on every try.
        kept = [col for col in table.c if col.name != "data"]
        self.data_as_text = cast(c.data, Text).label("data")
        self.every_column = [*kept, self.data_as_text]

        # A message is removed in the first statement that finds it: its row stays locked
        # until the commit, and a transactional dequeue that succeeds needs no second
        # statement. A failure puts the row back (restore_message).
        #: queue_name, tag -> every column of the next due message, removed (data as JSON text)
        self.remove_next_message: dict[Order, ReturningDelete[Any]] = {
            order: delete(table)
            .where(
                c.id
                == select(c.id)
                .where(ready_messages)
                .order_by(*(self.dequeue_order if order == "priority" else (c.id,)))
                .limit(1)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            .returning(*self.every_column)
            for order in ("priority", "id")
        }
        #: what remove_next_message returned (run_at None: now, behind the others) -> the row,
        #: waking the other listeners (at commit) if it is waiting again
        self.restore_message: ReturningInsert[Any] = (
            insert(table)
            .values(
                {
                    **{col.name: bindparam(col.name, type_=col.type) for col in kept},
                    "data": cast(bindparam("data", type_=Text), JSONB),
                    "run_at": func.coalesce(
                        bindparam("run_at", type_=c.run_at.type), func.clock_timestamp()
                    ),
                }
            )
            .returning(_notify_if_due(table))
        )
        #: job_id, seen_attempts (as handed out), error, to_tail, state -> the failure of a
        #: message whose restore was lost with its transaction (a rollback, a dropped
        #: connection), counted once: a restore that did commit already raised `attempts`
        self.count_lost_failure: Update = (
            update(table)
            .where(
                c.id == bindparam("job_id"),
                c.state == const(QUEUED),
                c.attempts == bindparam("seen_attempts"),
            )
            .values(
                attempts=c.attempts + 1,
                last_error=bindparam("error", type_=Text),
                run_at=case(
                    (bindparam("to_tail", type_=Boolean), func.clock_timestamp()), else_=c.run_at
                ),
                state=bindparam("state", type_=Text),
            )
        )
        # q4pg counts and lists only what is due unless asked for the scheduled ones too.
        listed = and_(
            waiting_messages,
            or_(not_(bindparam("due_only", type_=Boolean)), c.run_at <= func.now()),
        )
        #: queue_name, tag, due_only -> number of waiting messages
        self.count_messages: Select[Any] = select(func.count()).select_from(table).where(listed)
        #: queue_name, tag, due_only -> waiting messages (every column), listed in the order
        #: of `order`: sa_pgtq's dequeue order, or q4pg's table order (the messages that
        #: failed, which q4pg's UPDATE moved to the end, after the untouched ones)
        self.list_messages: dict[Order, Select[Any]] = {
            "priority": select(*self.every_column).where(listed).order_by(*self.dequeue_order),
            "id": select(*self.every_column).where(listed).order_by(c.attempts > 0, c.id),
        }
        #: queue_name, tag -> seconds until the earliest waiting message is due (None: none)
        self.seconds_until_next_message = _seconds_until_due(table, waiting_messages)
        cancellable = (
            select(c.id)
            .where(
                c.id == bindparam("job_id"),
                c.queue == queue,
                c.state.in_([const(QUEUED), const(FAILED)]),
            )
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        #: [keep] job_id, queue -> id if a waiting or failed job was cancelled (kept as such,
        #: or deleted); a locked one is skipped
        self.cancel: dict[bool, ReturningUpdate[Any] | ReturningDelete[Any]] = {
            keep: _cancelled(table, c.id == cancellable, keep).returning(
                c.id, _finished(table, c.queue)
            )
            for keep in (False, True)
        }
        self._abort_statements()
        self._task_statements()

        #: queue_name, kind, tag -> wake their listeners (INSERTs do this in their RETURNING)
        self.notify: Select[Any] = select(_wake_listeners(table, queue, kind, tag))

    def _abort_statements(self) -> None:
        table, c = self.table, self.table.c
        queue = bindparam("queue_name", type_=Text)
        # One statement decides: the row is locked first (waiting for a claim in flight,
        # so a job being claimed is aborted as running, not missed), then a queued job is
        # cancelled and a running one marked; its state as locked says which happened.
        target = (
            select(c.id, c.state)
            .where(
                c.id == bindparam("job_id"),
                c.queue == queue,
                c.state.in_([const(QUEUED), const(RUNNING)]),
            )
            .with_for_update()
            .cte("target")
        )
        mine = c.id == target.c.id
        requested = (
            update(table)
            .where(mine, target.c.state == const(RUNNING))
            .values(abort_requested_at=func.coalesce(c.abort_requested_at, func.clock_timestamp()))
            .returning(c.id)
            .cte("requested")
        )
        wake = case(
            (target.c.state == const(QUEUED), _finished(table, queue)),
            else_=_wake_listeners(table, queue, literal(CONTROL), literal(ABORT)),
        )
        #: [keep] job_id, queue_name -> a row if the job was queued (now cancelled: kept as
        #: such, or deleted) or running (its abort requested, its worker woken)
        self.abort: dict[bool, Select[Any]] = {
            keep: select(target.c.id, wake).add_cte(
                _cancelled(table, and_(mine, target.c.state == const(QUEUED)), keep)
                .returning(c.id)
                .cte("ended"),
                requested,
            )
            for keep in (False, True)
        }
        #: [keep] job_id, token -> id if the aborted task was still held, now cancelled
        self.end_aborted: dict[bool, ReturningUpdate[Any] | ReturningDelete[Any]] = {
            keep: _cancelled(
                table, and_(c.id == bindparam("job_id"), c.locked_by == bindparam("token")), keep
            ).returning(c.id, _finished(table, c.queue))
            for keep in (False, True)
        }

    def _task_statements(self) -> None:
        table, c = self.table, self.table.c
        queue = bindparam("queue_name", type_=Text)
        token = bindparam("token", type_=Text)
        # Cast explicitly: asyncpg infers no type for `$n IS NULL` (requeue_failed), and
        # SQLAlchemy 2.0.0 renders no cast of its own for array parameters.
        ids = cast(bindparam("ids", type_=ARRAY(BigInteger)), ARRAY(BigInteger))
        lease_end = func.clock_timestamp() + bindparam("lease", type_=Interval)
        waiting_tasks = and_(c.queue == queue, c.kind == const(TASK), c.state == const(QUEUED))
        # A claim's token is set with `running` and cleared by every way out of it, so the
        # token alone says "still held". Naming the state as well lets the planner AND in
        # the partial index of running rows (a bitmap scan of all of it, dead entries
        # included, which bitmap scans never clear: thousands per ack between two vacuums).
        # By id and token, the primary key finds the rows.
        mine = and_(c.id == any_(ids), c.locked_by == token)
        released = {"locked_by": None, "lease_expires_at": None}

        # `attempts` counts tries started, so a job that kills its workers still runs out.
        # `id = ANY(ARRAY(SELECT ...))`, not `id IN (SELECT ...)`: the locking subquery runs
        # once as an InitPlan and the rows are found by primary key. The semi-join of IN
        # took three times as long to plan (psycopg2 plans every execution).
        chosen = (
            select(c.id)
            .where(waiting_tasks, c.run_at <= func.now())
            .order_by(*self.dequeue_order)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(table)
            .where(c.id == any_(func.array(chosen.scalar_subquery(), type_=ARRAY(BigInteger))))
            .values(
                state=const(RUNNING),
                attempts=c.attempts + 1,
                locked_by=token,
                lease_expires_at=lease_end,
            )
            .returning(c.id, c.tag, self.data_as_text, c.attempts, c.priority, c.run_at)
        )
        # The worker's hot path: the finished tasks of one earlier claim are removed and the
        # next batch is claimed in one statement, one round trip in autocommit (atomic on
        # its own) where a transaction takes four (BEGIN, DELETE, UPDATE, COMMIT). The two
        # touch disjoint rows (running under the earlier token; queued). RETURNING has no
        # order of its own: the outer SELECT puts the claimed rows in dequeue order. One row
        # always comes back, to carry the count removed: with nothing claimed, its task
        # columns are NULL.
        acked = (
            delete(table)
            .where(c.id == any_(bindparam("done_ids", type_=ARRAY(BigInteger))))
            .where(c.locked_by == bindparam("done_token", type_=Text))
            .returning(c.id)
            .cte("acked")
        )
        claimed = claim.cte("claimed")
        #: done_ids, done_token (finished tasks of one claim), queue_name, limit, token,
        #: lease -> (acked, id, tag, data, attempts): how many finished tasks were removed,
        #: and the tasks claimed, now `running` under the lease, in dequeue order
        self.claim_tasks: Select[Any] = (
            select(
                select(func.count()).select_from(acked).scalar_subquery().label("acked"),
                claimed.c.id,
                claimed.c.tag,
                claimed.c.data,
                claimed.c.attempts,
            )
            .select_from(select(literal_column("1")).subquery("one").outerjoin(claimed, true()))
            .order_by(claimed.c.priority.desc(), claimed.c.run_at, claimed.c.id)
        )
        #: ids, token -> ids of finished tasks removed (a task whose lease was lost is kept)
        self.ack_tasks: ReturningDelete[Any] = delete(table).where(mine).returning(c.id)
        #: job_id, token, state (queued or failed), delay, error -> id if still held
        self.retry_task: ReturningUpdate[Any] = (
            update(table)
            .where(c.id == bindparam("job_id"), c.locked_by == token)
            .values(
                state=bindparam("state", type_=Text),
                run_at=func.clock_timestamp() + bindparam("delay", type_=Interval),
                last_error=bindparam("error", type_=Text),
                **released,
            )
            .returning(c.id)
        )
        #: ids, token -> put back claimed tasks that never started (graceful shutdown)
        self.release_tasks: Update = (
            update(table)
            .where(mine)
            .values(state=const(QUEUED), attempts=c.attempts - 1, **released)
        )
        #: ids, token, lease -> (id, abort requested) of each task whose lease was extended
        #: (the rest were lost): the abort flag costs the heartbeat no query of its own
        self.heartbeat: ReturningUpdate[Any] = (
            update(table)
            .where(mine)
            .values(lease_expires_at=lease_end)
            .returning(c.id, c.abort_requested_at.is_not(None))
        )
        #: ids, token -> ids of the tasks still held whose abort was requested
        self.abort_requests: Select[Any] = select(c.id).where(
            mine, c.abort_requested_at.is_not(None)
        )
        #: queue_name -> tasks whose worker stopped renewing its lease, queued again
        self.rescue_expired: ReturningUpdate[Any] = (
            update(table)
            .where(
                c.state == const(RUNNING),
                c.lease_expires_at < func.clock_timestamp(),
                c.queue == queue,
            )
            .values(
                state=const(QUEUED),
                run_at=func.clock_timestamp(),
                last_error=literal("lease expired: the worker stopped renewing it"),
                **released,
            )
            .returning(c.id)
        )
        #: queue_name -> seconds until the earliest waiting task is due (None: there is none)
        self.seconds_until_next_task = _seconds_until_due(table, waiting_tasks)
        #: queue_name, tag (None: any) -> failed jobs (every column), oldest first
        self.list_failed: Select[Any] = (
            select(*self.every_column)
            .where(
                c.queue == queue,
                c.state == const(FAILED),
                or_(bindparam("tag", type_=Text).is_(None), c.tag == bindparam("tag")),
            )
            .order_by(c.id)
        )
        #: queue_name, ids (None: all) -> (kind, tag) of failed jobs requeued with fresh attempts
        self.requeue_failed: ReturningUpdate[Any] = (
            update(table)
            .where(
                c.queue == queue, c.state == const(FAILED), or_(ids.is_(None), c.id == any_(ids))
            )
            .values(state=const(QUEUED), attempts=0, run_at=func.now())
            .returning(c.kind, c.tag)
        )


_built: dict[type[JobMixin], Statements] = {}


def statements_for(model: type[JobMixin]) -> Statements:
    """The statements of `model`'s table, built once: queues on one table share them."""
    statements = _built.get(model)
    if statements is None:
        statements = _built[model] = Statements(model)
    return statements
