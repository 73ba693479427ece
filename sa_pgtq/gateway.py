"""The only code that executes sa_pgtq's SQL.

Each operation is one plain function: the `Connection` it runs on, the table's
`Statements`, its parameters; it returns plain values (ints, dicts, transient
`Job` objects). Whose transaction that connection is in, and when it commits,
is the caller's business: the message and task layers pass the caller's
connection or one of their own, and the asyncio API hands these very functions
a sync connection through `AsyncConnection.run_sync`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, func, inspect, literal, select, text
from sqlalchemy.engine import RowMapping

from . import schema, validation
from .errors import DataTooDeepError
from .models import FAILED, QUEUED, TASK, JobMixin
from .statements import Order, Statements

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
    """One job from checked `params` (see `validation.new_job_params`); its id."""
    return int(conn.execute(table.insert_one, {**params, "data": data}).scalar_one())


def insert_jobs(
    conn: Connection, table: Statements, params: dict[str, Any], arrays: list[str]
) -> list[int]:
    """One job per element of the JSON `arrays`, one statement per array; ids in order."""
    ids: list[int] = []
    for datas in arrays:
        ids += conn.execute(table.insert_many, {**params, "datas": datas}).scalar_one()
    return ids


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


# -- tasks -------------------------------------------------------------------------


#: A claimed task as `claim_tasks` returns it: id, handler name, data (JSON text, decoded
#: with a bound on its nesting by the caller), attempts (tries started, this one included).
ClaimedTask = tuple[int, str, str, int]


def claim_tasks(
    conn: Connection,
    table: Statements,
    queue_name: str,
    limit: int,
    token: str,
    lease: float,
    done: tuple[str, list[int]] = ("", []),
) -> tuple[int, list[ClaimedTask]]:
    """Remove `done` (an earlier claim's token, and its finished tasks) and mark up to `limit`
    due tasks `running` under `token` and a lease, in one statement.

    Returns how many of `done` were removed (the rest had lost their lease) and the
    claimed tasks, in dequeue order.
    """
    params = {
        "done_token": done[0],
        "done_ids": done[1],
        "queue_name": queue_name,
        "limit": limit,
        "token": token,
        "lease": timedelta(seconds=lease),
    }
    rows = conn.execute(table.claim_tasks, params).all()
    removed = int(rows[0][0])
    if rows[0][1] is None:  # nothing claimed: the one row only carries the count
        return removed, []
    return removed, [(row[1], row[2], row[3], row[4]) for row in rows]


def acknowledge_tasks(conn: Connection, table: Statements, token: str, ids: list[int]) -> int:
    """Remove finished tasks still held under `token`; how many were (the rest lost it)."""
    return len(conn.execute(table.ack_tasks, {"ids": ids, "token": token}).all())


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
