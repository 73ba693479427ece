"""The only code that executes sa_pgtq's SQL.

Each operation is one plain function: the `Connection` it runs on, the table's
`Statements`, its parameters; it returns plain values (ints, dicts, transient
`Job` objects). Whose transaction that connection is in, and when it commits,
is the caller's business: the message and task layers pass the caller's
connection or one of their own, and the asyncio API hands these very functions
a sync connection through `AsyncConnection.run_sync`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Connection, func, inspect, literal, select, text
from sqlalchemy.engine import RowMapping

from . import schema, validation
from .errors import DataTooDeepError
from .inspection import inspection_of
from .models import CANCELLED, FAILED, QUEUED, TASK, JobMixin
from .statements import Order, Statements
from .tasks import Finished
from .validation import EncodedArray

#: A message as `remove_next_message` took it out: every column, `data` as JSON text.
MessageRow = dict[str, Any]

# The listener's commands. LISTEN takes no bound parameter; the channel is sa_pgtq's own
# constant. The name lets operators (and tests) tell listeners apart in pg_stat_activity.
LISTENER_NAME = "sa_pgtq listener"
_LISTEN = text(f"LISTEN {schema.CHANNEL}")
_NAME_LISTENER = text(f"SET application_name = '{LISTENER_NAME}'")
_PING = text("SELECT 1")
_BACKEND_PID = text("SELECT pg_backend_pid()")
_SHORT_LOCK_WAIT = text("SET LOCAL lock_timeout = '2s'")
_LOCK_SCHEMA = select(func.pg_advisory_xact_lock(func.hashtext(literal(schema.CHANNEL))))


# -- schema ------------------------------------------------------------------------


def create_table(conn: Connection, table_name: str) -> bool:
    """Create the queue table as the Alembic chain does, unless it exists; True if created.

    A transaction-scoped advisory lock makes concurrent callers (several test or
    script processes starting together) wait for one another instead of racing.
    """
    conn.execute(_LOCK_SCHEMA)
    if inspect(conn).has_table(table_name):
        return False
    schema.upgrade(schema.operations(conn), table_name=table_name)
    return True


def drop_table(conn: Connection, table_name: str) -> bool:
    """Drop the queue table and what belongs to it; False if there was none.

    The steps undone are those of the version the table records: older code made it.
    """
    conn.execute(_LOCK_SCHEMA)
    inspector = inspect(conn)
    if not inspector.has_table(table_name):
        return False
    installed = schema.installed_version(inspector.get_table_comment(table_name)["text"])
    schema.downgrade(schema.operations(conn), from_version=installed, table_name=table_name)
    return True


# -- inserting ---------------------------------------------------------------------


def insert_job(conn: Connection, table: Statements, params: dict[str, Any], data: str) -> int:
    """One job from checked `params` (see `validation.new_job_params`); its id.

    With a unique key already taken by a queued or running job, that job's id,
    and nothing is written.
    """
    values = {**params, "data": data}
    if params["unique_key"] is None and params["lock_key"] is None:
        return int(conn.execute(table.insert_one, values).scalar_one())
    while True:
        inserted = conn.execute(table.insert_keyed, values).scalar()
        if inserted is not None:
            return int(inserted)
        # Taken. The holder may have finished since: then the key is free, try again.
        holder = _holders(conn, table, params["queue_name"], [params["unique_key"]])
        if holder:
            return holder[params["unique_key"]]


def insert_jobs(
    conn: Connection,
    table: Statements,
    params: dict[str, Any],
    arrays: list[EncodedArray],
    unique_keys: list[str | None] | None = None,
) -> list[int]:
    """One job per element of the JSON `arrays`, one statement per array; ids in order.

    With `unique_keys` (one per job, or None), a job whose key is taken, by an
    earlier job of the batch or a queued or running one, is not written: its id
    is the holder's.
    """
    ids: list[int] = []
    if unique_keys is None and params["lock_key"] is None:
        for datas, _ in arrays:
            ids += conn.execute(table.insert_many, {**params, "datas": datas}).scalar_one()
        return ids
    keys = unique_keys or [None] * sum(size for _, size in arrays)
    for datas, size in arrays:
        ids += _insert_keyed(conn, table, params, datas, keys[len(ids) : len(ids) + size])
    return ids


def _insert_keyed(
    conn: Connection,
    table: Statements,
    params: dict[str, Any],
    datas: str,
    keys: list[str | None],
) -> list[int]:
    values = {**params, "datas": datas, "unique_keys": keys}
    inserted, inserted_keys, _ = conn.execute(table.insert_many_keyed, values).one()
    # Ids are drawn in the batch's order, so the rows written are the batch's in order,
    # less those skipped: a key's first use in the batch is written, unless already taken.
    written = iter(zip(inserted or [], inserted_keys or [], strict=True))
    ids: list[int | None] = []
    first: dict[str, int] = {}  # key -> id of the job holding it
    pending = next(written, None)
    for key in keys:
        if key is not None and key in first:
            ids.append(first[key])
        elif pending is not None and pending[1] == key:
            ids.append(pending[0])
            if key is not None:
                first[key] = pending[0]
            pending = next(written, None)
        else:
            ids.append(None)  # taken by a job outside the batch
    missing = {key for key, id_ in zip(keys, ids, strict=True) if id_ is None}
    if missing:
        holders = _holders(conn, table, params["queue_name"], list(missing))
        ids = [
            holders.get(key or "") if id_ is None else id_
            for key, id_ in zip(keys, ids, strict=True)
        ]
    if None in ids:  # a holder finished meanwhile, freeing its key: write those jobs now
        datas_again = json.loads(datas)
        retry = [i for i, id_ in enumerate(ids) if id_ is None]
        again = _insert_keyed(
            conn,
            table,
            params,
            json.dumps([datas_again[i] for i in retry]),
            [keys[i] for i in retry],
        )
        for i, id_ in zip(retry, again, strict=True):
            ids[i] = id_
    return [int(id_) for id_ in ids if id_ is not None]


def _holders(
    conn: Connection, table: Statements, queue_name: str, keys: list[str | None]
) -> dict[str, int]:
    """The queued or running jobs holding these unique keys: key -> id."""
    params = {"queue_name": queue_name, "unique_keys": keys}
    return {key: int(id_) for key, id_ in conn.execute(table.holders_of_keys, params)}


# -- messages ----------------------------------------------------------------------


def remove_next_message(
    conn: Connection, table: Statements, queue_name: str, tag: str, order: Order
) -> MessageRow | None:
    """Delete the next due message of `tag` and return it; its row stays locked until commit."""
    params = {"queue_name": queue_name, "tag": tag}
    row = conn.execute(table.remove_next_message[order], params).mappings().first()
    return None if row is None else dict(row)


def restore_message(
    conn: Connection,
    table: Statements,
    row: MessageRow,
    *,
    error: str | None = None,
    to_tail: bool = True,
    give_up: bool = False,
) -> None:
    """Put a removed message back: untouched, or (with `error`) failed once more.

    A failed message goes behind the others (`to_tail`: its `run_at` becomes now);
    `give_up` keeps it as `failed`: it is no longer handed out.
    """
    if error is not None:
        row = {**row, "attempts": row["attempts"] + 1, "last_error": error}
        if to_tail:
            row["run_at"] = None
    if give_up:
        row = {**row, "state": FAILED}
    conn.execute(table.restore_message, row)


def count_lost_failure(
    conn: Connection,
    table: Statements,
    row: MessageRow,
    *,
    error: str,
    to_tail: bool,
    give_up: bool,
) -> bool:
    """Count a failure whose restore was lost with its transaction; False if nothing to count.

    Run in a transaction of its own; it waits a little for the lost transaction's
    row lock (a rollback that is still under way), never long.
    """
    conn.execute(_SHORT_LOCK_WAIT)
    params = {
        "job_id": row["id"],
        "seen_attempts": row["attempts"],
        "error": error,
        "to_tail": to_tail,
        "state": FAILED if give_up else QUEUED,
    }
    return conn.execute(table.count_lost_failure, params).rowcount == 1


def count_messages(
    conn: Connection, table: Statements, queue_name: str, tag: str, *, due_only: bool = False
) -> int:
    params = {"queue_name": queue_name, "tag": tag, "due_only": due_only}
    return int(conn.execute(table.count_messages, params).scalar_one())


def list_messages(
    conn: Connection,
    table: Statements,
    queue_name: str,
    tag: str,
    *,
    due_only: bool = False,
    order: Order = "priority",
) -> list[JobMixin]:
    params = {"queue_name": queue_name, "tag": tag, "due_only": due_only}
    return _jobs(table, conn.execute(table.list_messages[order], params).mappings())


def seconds_until_next_message(
    conn: Connection, table: Statements, queue_name: str, tag: str
) -> float | None:
    """Seconds until the earliest waiting message of `tag` is due (negative: overdue)."""
    params = {"queue_name": queue_name, "tag": tag}
    return _seconds(conn.execute(table.seconds_until_next_message, params).scalar())


def cancel_job(
    conn: Connection, table: Statements, queue_name: str, job_id: int, *, keep: bool
) -> bool:
    """End a waiting or failed job as cancelled (`keep`: kept as such, else deleted).

    False if absent, another queue's, or being worked on.
    """
    params = {"job_id": job_id, "queue_name": queue_name}
    return conn.execute(table.cancel[keep], params).first() is not None


def abort_job(
    conn: Connection, table: Statements, queue_name: str, job_id: int, *, keep: bool
) -> bool:
    """Cancel a queued job (`keep`: kept as such), or ask a running one's worker to abort it.

    False if absent, another queue's, or finished.
    """
    params = {"job_id": job_id, "queue_name": queue_name}
    return conn.execute(table.abort[keep], params).first() is not None


def list_failed(
    conn: Connection, table: Statements, queue_name: str, tag: str | None
) -> list[JobMixin]:
    params = {"queue_name": queue_name, "tag": tag}
    return _jobs(table, conn.execute(table.list_failed, params).mappings())


def requeue_failed(
    conn: Connection, table: Statements, queue_name: str, ids: list[int] | None
) -> int:
    """Queue failed jobs again with fresh attempts and wake their listeners; how many."""
    params = {"queue_name": queue_name, "ids": ids}
    requeued = conn.execute(table.requeue_failed, params).all()
    for kind, tag in {tuple(row) for row in requeued}:
        _notify(conn, table, queue_name, kind, tag)
    return len(requeued)


# -- pausing -----------------------------------------------------------------------


def pause_queue(conn: Connection, table: Statements, queue_name: str) -> None:
    """Mark the queue paused (claims of its tasks find nothing) and say so to listeners."""
    conn.execute(table.pause, {"queue_name": queue_name})


def resume_queue(conn: Connection, table: Statements, queue_name: str) -> None:
    """Unpause the queue, if paused, and wake its idle workers."""
    conn.execute(table.resume, {"queue_name": queue_name})


def queue_paused(conn: Connection, table: Statements, queue_name: str) -> bool:
    return bool(conn.execute(table.is_paused, {"queue_name": queue_name}).scalar_one())


# -- tasks -------------------------------------------------------------------------


_NOTHING_DONE = Finished("")


class ClaimedTask(NamedTuple):
    """A claimed task as `claim_tasks` returns it."""

    id: int
    name: str  # the handler's
    data: str  # JSON text, decoded with a bound on its nesting by the caller
    attempts: int  # tries started, this one included
    priority: int
    run_at: datetime  # when it was due (a periodic task's tick, unless it was retried)
    aborted: bool  # its abort was requested before this claim


def claim_tasks(
    conn: Connection,
    table: Statements,
    queue_name: str,
    limit: int,
    token: str,
    lease: float,
    done: Finished | None = None,
    *,
    retain: bool = False,
) -> tuple[int, list[ClaimedTask]]:
    """Acknowledge `done` (an earlier claim's succeeded tasks: removed, or kept with their
    results when `retain`) and mark up to `limit` due tasks `running` under `token` and a
    lease, in one statement.

    Returns how many of `done` were acknowledged (the rest had lost their lease) and
    the claimed tasks, in dequeue order.
    """
    done = done or _NOTHING_DONE
    params = {
        "done_token": done.token,
        "done_ids": done.ids,
        "done_results": done.results,
        "queue_name": queue_name,
        "limit": limit,
        "token": token,
        "lease": timedelta(seconds=lease),
    }
    rows = conn.execute(table.claim_tasks[retain], params).all()
    removed = int(rows[0][0])
    if rows[0][1] is None:  # nothing claimed: the one row only carries the count
        return removed, []
    return removed, [ClaimedTask(*row[1:8]) for row in rows]  # a notice may follow


def acknowledge_tasks(
    conn: Connection, table: Statements, queue_name: str, done: Finished, *, retain: bool
) -> int:
    """Remove succeeded tasks still held under their token, or keep them with their results
    (`retain`, waking the queue's `result()` waiters); how many were acknowledged (the rest
    had lost their lease)."""
    params = {
        "ids": done.ids,
        "results": done.results,
        "token": done.token,
        "queue_name": queue_name,
    }
    return int(conn.execute(table.ack_tasks[retain], params).scalar_one())


def retry_task(
    conn: Connection,
    table: Statements,
    job_id: int,
    token: str,
    *,
    give_up: bool,
    delay: float,
    error: str,
) -> bool:
    """Queue a failed task again after `delay`, or keep it as `failed`; False if not held."""
    params = {
        "job_id": job_id,
        "token": token,
        "state": FAILED if give_up else QUEUED,
        "delay": timedelta(seconds=delay),
        "error": error,
    }
    return conn.execute(table.retry_task, params).first() is not None


def get_job(conn: Connection, table: Statements, queue_name: str, job_id: int) -> JobMixin | None:
    """The queue's job with this id, in any state; None if there is none."""
    params = {"job_id": job_id, "queue_name": queue_name}
    jobs = _jobs(table, conn.execute(table.get_job, params).mappings())
    return jobs[0] if jobs else None


def list_queued(conn: Connection, table: Statements, queue_name: str) -> list[JobMixin]:
    """The queue's queued jobs, tasks and messages, due or scheduled, in dequeue order."""
    return _jobs(table, conn.execute(table.list_queued, {"queue_name": queue_name}).mappings())


def prune_finished(
    conn: Connection, table: Statements, queue_name: str, retention: timedelta, limit: int
) -> int:
    """Delete up to `limit` jobs that succeeded or were cancelled over `retention` ago."""
    params = {"queue_name": queue_name, "retention": retention, "limit": limit}
    return int(conn.execute(table.prune, params).rowcount)


def end_aborted(
    conn: Connection, table: Statements, job_id: int, token: str, *, keep: bool
) -> bool:
    """End an aborted task as cancelled (`keep`: kept as such); False if no longer held."""
    params = {"job_id": job_id, "token": token}
    return conn.execute(table.end_aborted[keep], params).first() is not None


def abort_requests(conn: Connection, table: Statements, token: str, ids: list[int]) -> set[int]:
    """Those of the tasks held under `token` whose abort was requested."""
    return set(conn.execute(table.abort_requests, {"ids": ids, "token": token}).scalars())


def release_tasks(conn: Connection, table: Statements, token: str, ids: list[int]) -> None:
    """Put back claimed tasks that never started, as if never claimed."""
    conn.execute(table.release_tasks, {"ids": ids, "token": token})


def renew_leases(
    conn: Connection, table: Statements, token: str, ids: list[int], lease: float
) -> dict[int, bool]:
    """Extend the leases of tasks held under `token`: the ids still held, each with whether
    its abort was requested."""
    params = {"ids": ids, "token": token, "lease": timedelta(seconds=lease)}
    return {int(row[0]): bool(row[1]) for row in conn.execute(table.heartbeat, params)}


def rescue_expired(conn: Connection, table: Statements, queue_name: str) -> int:
    """Requeue tasks whose worker stopped renewing their lease; wake workers; how many."""
    rescued = len(conn.execute(table.rescue_expired, {"queue_name": queue_name}).all())
    if rescued:
        _notify(conn, table, queue_name, TASK, "")
    return rescued


def seconds_until_next_task(conn: Connection, table: Statements, queue_name: str) -> float | None:
    params = {"queue_name": queue_name}
    return _seconds(conn.execute(table.seconds_until_next_task, params).scalar())


# -- periodic tasks ----------------------------------------------------------------


def insert_tick_job(
    conn: Connection, table: Statements, queue_name: str, name: str, tick: datetime, data: str
) -> int | None:
    """The job of periodic task `name` for `tick`, in one statement; its id.

    None if this tick (or a later one) was already turned into a job, by this worker
    or another, or if this is the schedule's first sight: the tick is then only
    recorded, and the next one will run.
    """
    params = {"queue_name": queue_name, "schedule": name, "tick": tick, "data": data}
    row = conn.execute(table.insert_tick_job, params).first()
    return None if row is None else int(row[0])


# -- the listener's connection -------------------------------------------------------


def start_listening(conn: Connection) -> None:
    """Name the connection and LISTEN on sa_pgtq's channel (autocommit, or it waits)."""
    conn.execute(_NAME_LISTENER)
    conn.execute(_LISTEN)


def ping(conn: Connection) -> None:
    conn.execute(_PING)


def backend_pid(conn: Connection) -> int:
    """The server process pid as the server says; a pooler reports another than at connect."""
    return int(conn.execute(_BACKEND_PID).scalar_one())


# -- helpers -------------------------------------------------------------------------


def _notify(conn: Connection, table: Statements, queue_name: str, kind: str, tag: str) -> None:
    conn.execute(table.notify, {"queue_name": queue_name, "kind": kind, "tag": tag})


# -- operators' read side (see `inspection`) ----------------------------------------


def queue_names(conn: Connection, table: Statements) -> list[str]:
    """Every queue of the table with a job, in any state, or a pause record."""
    return list(conn.execute(inspection_of(table).queue_names).scalars())


def queue_stats(conn: Connection, table: Statements, queue_name: str, cap: int) -> RowMapping:
    """One queue's jobs per state, each counted up to `cap`; the earliest `run_at` of its
    waiting jobs; whether it is paused; the server's `now`."""
    statement = inspection_of(table).queue_stats
    return conn.execute(statement, {"queue_name": queue_name, "cap": cap}).mappings().one()


def estimated_count(conn: Connection, table: Statements, queue_name: str, counted: str) -> int:
    """The planner's estimate of a queue's jobs in a state (a `queue_stats` field name)."""
    statement = inspection_of(table).estimates[counted]
    plan = conn.execute(statement, {"queue_name": queue_name}).scalar_one()
    if isinstance(plan, str):  # psycopg2 returns EXPLAIN's JSON as text
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def find_job(conn: Connection, table: Statements, job_id: int) -> JobMixin | None:
    """The job with this id, whichever its queue; None if there is none."""
    jobs = _jobs(table, conn.execute(inspection_of(table).job, {"job_id": job_id}).mappings())
    return jobs[0] if jobs else None


def browse_jobs(
    conn: Connection,
    table: Statements,
    queue_name: str | None,
    state: str | None,
    tag: str | None,
    before: int | None,
    limit: int,
) -> list[JobMixin]:
    """Jobs matching the filters given (None: any), newest first, older than `before`."""
    statement = inspection_of(table).jobs(
        queue=queue_name is not None, state=state, tag=tag is not None, before=before is not None
    )
    params = {"queue_name": queue_name, "tag": tag, "before": before, "limit": limit}
    return _jobs(table, conn.execute(statement, params).mappings())


def finished_per_bucket(
    conn: Connection, table: Statements, queue_name: str, since: datetime, seconds: int
) -> dict[float, tuple[int, int]]:
    """Bucket start (epoch seconds) -> (succeeded, failed) of a queue's jobs since `since`."""
    params = {"queue_name": queue_name, "since": since, "seconds": seconds}
    counted: dict[float, dict[str, int]] = {}
    for what, start, jobs in conn.execute(inspection_of(table).finished_per_bucket, params):
        counted.setdefault(float(start), {})[what] = int(jobs)
    return {
        start: (n.get("finished", 0) - n.get(CANCELLED, 0), n.get(FAILED, 0))
        for start, n in counted.items()
    }


def _jobs(table: Statements, rows: Iterable[RowMapping]) -> list[JobMixin]:
    model = table.model
    return [model(**{**row, "data": _listed_data(row["data"])}) for row in rows]


def _listed_data(text: str) -> Any:
    try:
        return validation.decode_data(text)
    except DataTooDeepError:
        return None  # listed all the same: its last_error says why once a consumer met it


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)
