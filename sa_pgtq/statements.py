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
    Table,
    Text,
    Update,
    and_,
    any_,
    bindparam,
    case,
    cast,
    column,
    delete,
    exists,
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
from sqlalchemy.dialects.postgresql import insert as upsert
from sqlalchemy.sql.dml import ReturningDelete, ReturningInsert, ReturningUpdate
from sqlalchemy.sql.expression import Grouping
from sqlalchemy.sql.selectable import ScalarSelect

from .models import (
    ABORT,
    ACTIVE,
    CANCELLED,
    CONTROL,
    FAILED,
    FINISHED,
    MESSAGE,
    PRUNABLE,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TASK,
    JobMixin,
    side_tables,
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


def _in_states(state: ColumnElement[str], states: tuple[str, ...]) -> ColumnElement[bool]:
    """`state IN (...)` of sa_pgtq's own constants, rendered inline (see `const`)."""
    return state.in_([const(value) for value in states])


def _run_at() -> ColumnElement[Any]:
    # Scheduling is computed by the server clock: an explicit run_at wins, else now() + delay.
    return func.coalesce(
        bindparam("run_at", type_=TIMESTAMP(timezone=True)),
        func.now() + func.coalesce(bindparam("delay", type_=Interval), text("interval '0'")),
    )


def _meta() -> ColumnElement[Any]:
    """A new job's meta: JSON text or NULL (`validation.new_job_params`)."""
    return cast(bindparam("meta", type_=Text), JSONB)


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


def _wake_workers_if_locked(table: Any) -> ColumnElement[Any]:
    """For the RETURNING of a statement that ends running tasks: wake the queue's workers
    when the task held a lock, so that an idle one claims the next task of its line.

    That task has been due for long, so no idle worker counts it as due soon (see
    `_seconds_until_due`): without the NOTIFY it would wait for the next poll. A task
    without a lock costs one null test.
    """
    c = table.c
    wake = _wake_listeners(table, c.queue, const(TASK), literal("", Text))
    return case((c.lock_key.is_not(None), wake))


def _paused(queues: Table, queue: ColumnElement[str]) -> ColumnElement[bool]:
    return exists().where(queues.c.queue == queue, queues.c.paused_at.is_not(None))


def _lock_free(table: Any, *, first_in_line: bool) -> ColumnElement[bool]:
    """The candidate has no lock, or no task of the queue with its lock is running (and,
    `first_in_line`, no due one comes before it in dequeue order).

    The OR stops at `lock_key IS NULL`: a task without a lock costs no probe. Only a
    line's head is claimable, so one claim never takes two tasks of a lock, nor do two
    concurrent claims: the other's candidate is still queued ahead in this snapshot, or
    already running (the unique index of holders is only the guard). The head is the
    line's first due entry on its partial index; the holder is probed only for a head
    (the AND is evaluated in order), at most once per lock a claim walks past. The head
    is probed for every locked row the claim walks past, though: a deep line of one
    lock ahead of the claimable tasks costs each claim one probe per task in that line
    (as procrastinate's `lock` does).
    """
    c = table.c
    free: ColumnElement[bool] = _holder(table).is_(None)
    if first_in_line:
        free = and_(c.id == _head_of_line(table), free)
    return or_(c.lock_key.is_(None), free)


def _holder(table: Any) -> ColumnElement[Any]:
    # Indexed columns only: the planner takes it as an index-only probe of the unique
    # index of holders, where `SELECT id` may walk every running row of the queue on the
    # index of running rows. A NOT EXISTS here may become a hashed subplan over every
    # running row of the table.
    c, holder = table.c, table.alias("holder")
    return (
        select(holder.c.lock_key)
        .where(
            holder.c.queue == c.queue,
            holder.c.lock_key == c.lock_key,
            holder.c.state == const(RUNNING),
        )
        .scalar_subquery()
    )


def _head_of_line(table: Any) -> ColumnElement[Any]:
    c, line = table.c, table.alias("line")
    return (
        select(line.c.id)
        .where(
            line.c.queue == c.queue,
            line.c.lock_key == c.lock_key,
            line.c.state == const(QUEUED),
            line.c.run_at <= func.now(),
        )
        .order_by(line.c.priority.desc(), line.c.run_at, line.c.id)
        .limit(1)
        .scalar_subquery()
    )


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
                meta=_meta(),
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
                ["queue", "kind", "tag", "data", "priority", "run_at", "meta"],
                select(
                    cast(queue, Text),
                    cast(kind, Text),
                    cast(tag, Text),
                    rows.c.d,
                    bindparam("priority"),
                    _run_at(),
                    _meta(),
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

        self._keyed_insert_statements(queue, kind, tag, rows)

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
                _in_states(c.state, (QUEUED, FAILED)),
            )
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        #: The side tables: paused queues, and periodic tasks' last ticks.
        self.queues, self.ticks = side_tables(str(table.name), table.metadata)
        self._pause_statements()
        #: [keep] job_id, queue -> id if a waiting or failed job was cancelled (kept as such,
        #: or deleted); a locked one is skipped
        self.cancel: dict[bool, ReturningUpdate[Any] | ReturningDelete[Any]] = {
            keep: _cancelled(table, c.id == cancellable, keep).returning(
                c.id, _finished(table, c.queue), _wake_workers_if_locked(table)
            )
            for keep in (False, True)
        }
        self._abort_statements()
        self._task_statements()
        self._periodic_statements()

        #: queue_name, kind, tag -> wake their listeners (INSERTs do this in their RETURNING)
        self.notify: Select[Any] = select(_wake_listeners(table, queue, kind, tag))

    def _keyed_insert_statements(self, queue: Any, kind: Any, tag: Any, rows: Any) -> None:
        """INSERTs of jobs with a unique key or a lock: kept apart, so plain ones pay nothing.

        A key taken by a queued or running job of the queue makes the INSERT skip the
        row (`ON CONFLICT DO NOTHING` on the partial unique index), so a duplicate never
        raises and never aborts the caller's transaction.
        """
        table, c = self.table, self.table.c
        active = and_(c.unique_key.is_not(None), _in_states(c.state, ACTIVE))
        unique_key = bindparam("unique_key", type_=Text)
        lock_key = bindparam("lock_key", type_=Text)
        #: queue_name, kind, tag, data, priority, run_at, delay, unique_key, lock_key -> id, or
        #: no row when the key is taken
        self.insert_keyed: ReturningInsert[Any] = (
            upsert(table)
            .values(
                queue=queue,
                kind=kind,
                tag=tag,
                data=cast(bindparam("data", type_=Text), JSONB),
                priority=bindparam("priority"),
                run_at=_run_at(),
                unique_key=unique_key,
                lock_key=lock_key,
                meta=_meta(),
            )
            .on_conflict_do_nothing(index_elements=[c.queue, c.unique_key], index_where=active)
            .returning(c.id, _notify_if_due(table))
        )
        keys = cast(bindparam("unique_keys", type_=ARRAY(Text)), ARRAY(Text))
        inserted = (
            upsert(table)
            .from_select(
                [
                    "queue",
                    "kind",
                    "tag",
                    "data",
                    "priority",
                    "run_at",
                    "unique_key",
                    "lock_key",
                    "meta",
                ],
                select(
                    cast(queue, Text),
                    cast(kind, Text),
                    cast(tag, Text),
                    rows.c.d,
                    bindparam("priority"),
                    _run_at(),
                    Grouping(keys)[rows.c.n],  # (CAST(..))[n]: the cast must be bracketed
                    lock_key,
                    _meta(),
                ).order_by(rows.c.n),
            )
            .on_conflict_do_nothing(index_elements=[c.queue, c.unique_key], index_where=active)
            .returning(c.id, c.unique_key, c.run_at)
            .cte("inserted")
        )
        due = func.bool_or(inserted.c.run_at <= func.clock_timestamp())
        #: insert_many's parameters, unique_keys (one per element, or NULL), lock_key -> the
        #: ids inserted and their keys, in insertion order (a row whose key was taken, before
        #: or earlier in the batch, is skipped)
        self.insert_many_keyed: Select[Any] = select(
            func.array_agg(aggregate_order_by(inserted.c.id, inserted.c.id)),
            func.array_agg(aggregate_order_by(inserted.c.unique_key, inserted.c.id)),
            case((due, _wake_listeners(table, queue, kind, tag))),
        )
        #: queue_name, unique_keys -> (unique_key, id) of the queued or running jobs holding them
        self.holders_of_keys: Select[Any] = select(c.unique_key, c.id).where(
            c.queue == queue,
            c.unique_key == any_(keys),
            _in_states(c.state, ACTIVE),
        )

    def _pause_statements(self) -> None:
        """Pausing a queue: its row in the side table, and word to whoever listens."""
        queues = self.queues
        queue = bindparam("queue_name", type_=Text)
        control = const(CONTROL)
        #: queue_name -> pause it (kept as first paused: pausing again changes nothing)
        self.pause: ReturningInsert[Any] = (
            upsert(queues)
            .values(queue=queue, paused_at=func.now())
            .on_conflict_do_update(
                index_elements=[queues.c.queue],
                set_={"paused_at": func.coalesce(queues.c.paused_at, func.now())},
            )
            .returning(_wake_listeners(self.table, queue, control, literal("pause", Text)))
        )
        # Resuming wakes the idle workers (a TASK notification), so they claim at once.
        #: queue_name -> resume it if paused
        self.resume: ReturningUpdate[Any] = (
            update(queues)
            .where(queues.c.queue == queue, queues.c.paused_at.is_not(None))
            .values(paused_at=None)
            .returning(
                _wake_listeners(self.table, queue, control, literal("resume", Text)),
                _wake_listeners(self.table, queue, const(TASK), literal("", Text)),
            )
        )
        #: queue_name -> whether it is paused
        self.is_paused: Select[Any] = select(_paused(queues, queue))

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
                _in_states(c.state, ACTIVE),
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
                .returning(c.id, _wake_workers_if_locked(table))
                .cte("ended"),
                requested,
            )
            for keep in (False, True)
        }
        #: [keep] job_id, token -> id if the aborted task was still held, now cancelled
        self.end_aborted: dict[bool, ReturningUpdate[Any] | ReturningDelete[Any]] = {
            keep: _cancelled(
                table, and_(c.id == bindparam("job_id"), c.locked_by == bindparam("token")), keep
            ).returning(c.id, _finished(table, c.queue), _wake_workers_if_locked(table))
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
        # A paused queue hands out nothing. Uncorrelated: the planner checks it once per
        # statement (an InitPlan), not per row, and a pause needs no message to take hold.
        not_paused = not_(_paused(self.queues, queue))

        # `attempts` counts tries started, so a job that kills its workers still runs out.
        # `id = ANY(ARRAY(SELECT ...))`, not `id IN (SELECT ...)`: the locking subquery runs
        # once as an InitPlan and the rows are found by primary key. The semi-join of IN
        # took three times as long to plan (psycopg2 plans every execution).
        chosen = (
            select(c.id)
            .where(
                waiting_tasks,
                c.run_at <= func.now(),
                not_paused,
                _lock_free(table, first_in_line=True),
            )
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
            .returning(
                c.id,
                c.tag,
                self.data_as_text,
                c.attempts,
                c.priority,
                c.run_at,
                # An abort requested of an earlier run (it was rescued, retried or put back
                # before it was told): this run ends as cancelled, never starting.
                c.abort_requested_at.is_not(None).label("aborted"),
            )
        )
        # The worker's hot path: the finished tasks of one earlier claim are removed and the
        # next batch is claimed in one statement, one round trip in autocommit (atomic on
        # its own) where a transaction takes four (BEGIN, DELETE, UPDATE, COMMIT). The two
        # touch disjoint rows (running under the earlier token; queued). RETURNING has no
        # order of its own: the outer SELECT puts the claimed rows in dequeue order. One row
        # always comes back, to carry the count removed: with nothing claimed, its task
        # columns are NULL.
        claimed = claim.cte("claimed")
        #: retain -> done_ids, done_results, done_token (finished tasks of one claim, their
        #: results as JSON text), queue_name, limit, token, lease -> (acked, id, tag, data,
        #: attempts, ...): how many finished tasks were acknowledged, and the tasks claimed,
        #: now `running` under the lease, in dequeue order
        self.claim_tasks: dict[bool, Select[Any]] = {}
        #: retain -> ids, results, token -> (how many finished tasks were acknowledged, ...);
        #: a task whose lease was lost is left alone
        self.ack_tasks: dict[bool, Select[Any]] = {}
        for retain in (False, True):
            acked = self._acknowledged("done_", retain).cte("acked")
            self.claim_tasks[retain] = (
                select(
                    select(func.count()).select_from(acked).scalar_subquery().label("acked"),
                    claimed.c.id,
                    claimed.c.tag,
                    claimed.c.data,
                    claimed.c.attempts,
                    claimed.c.priority,
                    claimed.c.run_at,
                    claimed.c.aborted,
                    *self._wake_waiters(acked, retain),
                )
                .select_from(select(literal_column("1")).subquery("one").outerjoin(claimed, true()))
                .order_by(claimed.c.priority.desc(), claimed.c.run_at, claimed.c.id)
            )
            acked = self._acknowledged("", retain).cte("acked")
            self.ack_tasks[retain] = select(
                select(func.count()).select_from(acked).scalar_subquery(),
                *self._wake_waiters(acked, retain),
            )
        state = bindparam("state", type_=Text)
        #: job_id, token, state (queued or failed), delay, error -> id if still held (a job
        #: kept as failed has finished: its `result()` waiters are woken)
        self.retry_task: ReturningUpdate[Any] = (
            update(table)
            .where(c.id == bindparam("job_id"), c.locked_by == token)
            .values(
                state=state,
                run_at=func.clock_timestamp() + bindparam("delay", type_=Interval),
                last_error=bindparam("error", type_=Text),
                finished_at=case((state == const(FAILED), func.clock_timestamp())),
                **released,
            )
            .returning(
                c.id,
                case((c.state == const(FAILED), _finished(table, c.queue))),
                _wake_workers_if_locked(table),
            )
        )
        #: ids, token -> put back claimed tasks that never started (graceful shutdown)
        self.release_tasks: ReturningUpdate[Any] = (
            update(table)
            .where(mine)
            .values(state=const(QUEUED), attempts=c.attempts - 1, **released)
            .returning(_wake_workers_if_locked(table))
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
        #: queue_name -> seconds until the earliest waiting task is due (None: there is none,
        #: or the queue is paused). A task behind a held lock does not count: the holder's
        #: end wakes the workers. Which task heads its lock's line is known only once they
        #: are due, so that is left to the claim.
        self.seconds_until_next_task = _seconds_until_due(
            table, and_(waiting_tasks, not_paused, _lock_free(table, first_in_line=False))
        )
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
        chosen_failed = and_(
            c.queue == queue, c.state == const(FAILED), or_(ids.is_(None), c.id == any_(ids))
        )
        # A failed job freed its unique key, which another job may hold by now; and of
        # failed jobs sharing a key, one may come back.
        holder, twin = table.alias("holder"), table.alias("twin")
        key_free = or_(
            c.unique_key.is_(None),
            and_(
                ~exists().where(
                    holder.c.queue == c.queue,
                    holder.c.unique_key == c.unique_key,
                    _in_states(holder.c.state, ACTIVE),
                ),
                ~exists().where(
                    twin.c.queue == c.queue,
                    twin.c.unique_key == c.unique_key,
                    twin.c.state == const(FAILED),
                    twin.c.id < c.id,
                    or_(ids.is_(None), twin.c.id == any_(ids)),
                ),
            ),
        )
        #: queue_name, ids (None: all) -> (kind, tag) of failed jobs requeued with fresh attempts
        #: (one whose unique key is held by a queued or running job stays failed)
        self.requeue_failed: ReturningUpdate[Any] = (
            update(table)
            .where(chosen_failed, key_free)
            .values(
                state=const(QUEUED),
                attempts=0,
                run_at=func.now(),
                finished_at=None,
                abort_requested_at=None,
            )
            .returning(c.kind, c.tag)
        )
        #: job_id, queue_name -> the job (every column, data as JSON text), in any state
        self.get_job: Select[Any] = select(*self.every_column).where(
            c.id == bindparam("job_id"), c.queue == queue
        )
        #: queue_name -> its queued jobs, tasks and messages, due or scheduled (every column),
        #: in dequeue order: what an application's tests match against (`sa_pgtq.testing`)
        self.list_queued: Select[Any] = (
            select(*self.every_column)
            .where(c.queue == queue, c.state == const(QUEUED))
            .order_by(*self.dequeue_order)
        )
        # Oldest first, a batch at a time, skipping rows someone holds: each statement
        # locks at most `limit` rows for a moment, never the table.
        prunable = (
            select(c.id)
            .where(
                c.queue == queue,
                _in_states(c.state, PRUNABLE),
                c.finished_at < func.clock_timestamp() - bindparam("retention", type_=Interval),
            )
            .order_by(c.finished_at)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
        #: queue_name, retention, limit -> delete up to `limit` of the queue's jobs that
        #: succeeded or were cancelled longer than `retention` ago
        self.prune: Delete = delete(table).where(
            c.id == any_(func.array(prunable.scalar_subquery(), type_=ARRAY(BigInteger)))
        )

    def _acknowledged(
        self, prefix: str, retain: bool
    ) -> ReturningDelete[Any] | ReturningUpdate[Any]:
        """Succeeded tasks still held under their claim's token, removed or (`retain`) kept.

        Parameters: `{prefix}ids`, `{prefix}results` (JSON texts, NULL for none: used when
        kept), `{prefix}token`.
        """
        table, c = self.table, self.table.c
        # Cast: asyncpg on SQLAlchemy 2.0.0 gets no type for a bare array in unnest().
        ids = cast(bindparam(f"{prefix}ids", type_=ARRAY(BigInteger)), ARRAY(BigInteger))
        token = bindparam(f"{prefix}token", type_=Text)
        if not retain:
            return (
                delete(table)
                .where(c.id == any_(ids), c.locked_by == token)
                .returning(c.id, _wake_workers_if_locked(table))
            )
        done = (
            func.unnest(ids, cast(bindparam(f"{prefix}results", type_=ARRAY(Text)), ARRAY(Text)))
            .table_valued(column("id", BigInteger), column("result", Text))
            .render_derived("done")
        )
        return (
            update(table)
            .where(c.id == done.c.id, c.locked_by == token)
            .values(
                state=const(SUCCEEDED),
                result=cast(done.c.result, JSONB),
                finished_at=func.clock_timestamp(),
                locked_by=None,
                lease_expires_at=None,
            )
            .returning(c.id, _wake_workers_if_locked(table))
        )

    def _wake_waiters(self, acked: Any, retain: bool) -> list[ScalarSelect[Any]]:
        """With a retention, one notification per batch acknowledged, for `result()` waiters."""
        if not retain:
            return []
        queue = bindparam("queue_name", type_=Text)
        notice = case((func.count() > 0, _finished(self.table, queue)))
        return [select(notice).select_from(acked).scalar_subquery()]

    def _periodic_statements(self) -> None:
        table = self.table
        ticks = self.ticks
        queue = bindparam("queue_name", type_=Text)
        # Not "name": an UPDATE would take a parameter named after a column for its SET.
        name = bindparam("schedule", type_=Text)
        tick = bindparam("tick", type_=TIMESTAMP(timezone=True))
        # Exactly once per tick, however many workers offer it: the tick's row in `ticks`
        # is a compare-and-set, and the job is inserted only by the statement that moved
        # it forward. A concurrent offer of the same tick waits for the row lock, then
        # finds `last_tick < tick` false. Offering a later tick jumps straight to it:
        # the ticks missed while no worker ran make one job, not one each.
        won = (
            update(ticks)
            .where(ticks.c.queue == queue, ticks.c.name == name, ticks.c.last_tick < tick)
            .values(last_tick=tick)
            .returning(ticks.c.name)
            .cte("won")
        )
        # First sight of a schedule records the tick without running it (a daily task
        # deployed at noon waits for midnight). Both CTEs read the statement's snapshot:
        # `won` never sees the row `seen` inserts, so a first sight inserts no job.
        seen = (
            upsert(ticks)
            .values(queue=queue, name=name, last_tick=tick)
            .on_conflict_do_nothing()
            .cte("seen")
        )
        #: queue_name, schedule (the handler's name), tick, data (JSON text) -> the id of the
        #: tick's job (kind task, tag schedule, run_at tick), or no row: first sight, or old
        self.insert_tick_job: ReturningInsert[Any] = (
            insert(table)
            .from_select(
                ["queue", "kind", "tag", "data", "run_at"],
                # Cast: asyncpg infers no type for a parameter in a SELECT list.
                select(
                    cast(queue, Text),
                    const(TASK),
                    cast(name, Text),
                    cast(bindparam("data", type_=Text), JSONB),
                    cast(tick, TIMESTAMP(timezone=True)),
                ).select_from(won),
            )
            .returning(table.c.id, _notify_if_due(table))
            .add_cte(seen)
        )


_built: dict[type[JobMixin], Statements] = {}


def statements_for(model: type[JobMixin]) -> Statements:
    """The statements of `model`'s table, built once: queues on one table share them."""
    statements = _built.get(model)
    if statements is None:
        statements = _built[model] = Statements(model)
    return statements
