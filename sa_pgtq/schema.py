"""Versioned DDL for a queue table, written as Alembic operations.

One definition serves three callers, so they cannot drift apart:
- the shipped revisions in `sa_pgtq.migrations` (the `sa_pgtq` branch);
- a host application's own revision, Oban style:
  `schema.upgrade(op, to_version=1, table_name="my_jobs")`;
- `Queue.create_table()`, which runs the same steps on a plain connection (`operations`).
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.dialects.postgresql import JSONB

from .models import (
    DEFAULT_TABLE,
    FAILED,
    MESSAGE,
    QUEUED,
    RUNNING,
    TASK,
    in_states,
    queue_table_names,
    queues_table_name,
    recorded_version,
    schema_comment,
    ticks_table_name,
)

#: Notifications for every queue table go to this one fixed channel; the payload
#: (a JSON array [table, queue, kind, tag]) says what arrived. A fixed channel means
#: no user-chosen name ever reaches LISTEN, which cannot take a bound parameter.
CHANNEL = "sa_pgtq"


def _quote(op: Operations, name: str) -> str:
    return op.get_bind().dialect.identifier_preparer.quote(name)


def _v1_up(op: Operations, table: str) -> None:
    ts = sa.TIMESTAMP(timezone=True)
    op.create_table(
        table,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False, server_default=MESSAGE),
        sa.Column("tag", sa.Text, nullable=False),
        sa.Column("data", JSONB, nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default=QUEUED),
        sa.Column("priority", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", ts, nullable=False, server_default=sa.func.now()),
        sa.Column("run_at", ts, nullable=False, server_default=sa.func.now()),
        sa.Column("lease_expires_at", ts, nullable=True),
        sa.Column("locked_by", sa.Text, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.CheckConstraint(
            f"state IN ('{QUEUED}', '{RUNNING}', '{FAILED}')", name=f"ck_{table}_state"
        ),
        sa.CheckConstraint(f"kind IN ('{MESSAGE}', '{TASK}')", name=f"ck_{table}_kind"),
    )
    op.create_index(
        f"ix_{table}_messages",
        table,
        ["queue", "tag", sa.text("priority DESC"), "run_at", "id"],
        postgresql_where=sa.text(f"state = '{QUEUED}' AND kind = '{MESSAGE}'"),
    )
    op.create_index(
        f"ix_{table}_tasks",
        table,
        ["queue", sa.text("priority DESC"), "run_at", "id"],
        postgresql_where=sa.text(f"state = '{QUEUED}' AND kind = '{TASK}'"),
    )
    op.create_index(
        f"ix_{table}_leases",
        table,
        ["lease_expires_at"],
        postgresql_where=sa.text(f"state = '{RUNNING}'"),
    )
    _create_notify_trigger(op, table)


def _create_notify_trigger(op: Operations, table: str) -> None:
    # Versions 1 and 2: a statement-level trigger sends one NOTIFY per distinct (queue,
    # kind, tag) an INSERT adds, so a 1000-row enqueue_many costs one notification.
    # DDL cannot bind identifiers: the names are the dialect's quoted table-derived ones.
    function = _quote(op, f"{table}_notify")
    op.execute(
        f"""
        CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}',
                              json_build_array(TG_TABLE_NAME, n.queue, n.kind, n.tag)::text)
            FROM (SELECT DISTINCT queue, kind, tag FROM sa_pgtq_new
                  WHERE state = '{QUEUED}' AND run_at <= now()) AS n;
            RETURN NULL;
        END
        $$
        """  # noqa: S608
    )
    op.execute(
        f"CREATE TRIGGER {_quote(op, f'{table}_notify')} AFTER INSERT ON {_quote(op, table)} "
        f"REFERENCING NEW TABLE AS sa_pgtq_new FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
    )


def _drop_notify_function(op: Operations, table: str) -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {_quote(op, f'{table}_notify')}()")


def _v1_down(op: Operations, table: str) -> None:
    op.drop_table(table)  # drops its indexes and trigger with it
    _drop_notify_function(op, table)


#: Storage parameters of a queue table as of version 2 (frozen, like the step: a later
#: version that changes them does so in a step of its own). Every job is inserted,
#: updated once or twice and deleted within seconds, so dead rows pile up far faster
#: than in the tables stock autovacuum is tuned for (a vacuum once a fifth of the table
#: is dead). Vacuum once 1% (and at least 1000 rows) is dead, at ten times stock speed;
#: analyze as often, since plans follow how many rows are waiting, running or failed;
#: keep a tenth of each page free, so that a heartbeat's update stays on its page (HOT:
#: no new index entries).
V2_STORAGE = {
    "fillfactor": "90",
    "autovacuum_vacuum_scale_factor": "0.01",
    "autovacuum_vacuum_threshold": "1000",
    "autovacuum_vacuum_cost_limit": "2000",
    "autovacuum_analyze_scale_factor": "0.01",
    "autovacuum_analyze_threshold": "1000",
}


def _v2_up(op: Operations, table: str) -> None:
    # Storage parameter names and values are sa_pgtq's own constants; the table name is quoted.
    options = ", ".join(f"{name} = {value}" for name, value in V2_STORAGE.items())
    op.execute(f"ALTER TABLE {_quote(op, table)} SET ({options})")
    # A heartbeat changes only lease_expires_at: with that column in no index, its update
    # can be HOT. The rescuer finds the running rows of its queue (a worker's batches at
    # most) and checks their leases on the rows.
    op.drop_index(f"ix_{table}_leases", table_name=table)
    op.create_index(
        f"ix_{table}_running",
        table,
        ["queue"],
        postgresql_where=sa.text(f"state = '{RUNNING}'"),
    )
    op.create_table_comment(table, schema_comment(2))


def _v2_down(op: Operations, table: str) -> None:
    op.drop_table_comment(table)
    op.drop_index(f"ix_{table}_running", table_name=table)
    op.create_index(
        f"ix_{table}_leases",
        table,
        ["lease_expires_at"],
        postgresql_where=sa.text(f"state = '{RUNNING}'"),
    )
    op.execute(f"ALTER TABLE {_quote(op, table)} RESET ({', '.join(V2_STORAGE)})")


def _v3_up(op: Operations, table: str) -> None:
    # sa_pgtq's INSERTs now notify in the statement itself (`statements._notify_if_due`):
    # the trigger cost every enqueue a transition table and a query, about 0.05 ms of a
    # 0.7 ms Session enqueue. A producer that writes with plain SQL is found by the
    # listeners' polling, or wakes them with the same pg_notify.
    op.execute(f"DROP TRIGGER {_quote(op, f'{table}_notify')} ON {_quote(op, table)}")
    _drop_notify_function(op, table)
    op.create_table_comment(table, schema_comment(3))


def _v3_down(op: Operations, table: str) -> None:
    _create_notify_trigger(op, table)
    op.create_table_comment(table, schema_comment(2))


#: The job states as of version 4 (frozen: `models.STATES` may grow in a later step).
V4_STATES = (QUEUED, RUNNING, FAILED, "succeeded", "cancelled")


def _v4_up(op: Operations, table: str) -> None:
    # The job lifecycle: kept results, unique keys, per-key locks, abort, pause, periodic
    # ticks. Every new column is nullable without a default: adding one rewrites nothing,
    # so the upgrade takes its lock for a moment, whatever the table holds.
    ts = sa.TIMESTAMP(timezone=True)
    op.drop_constraint(f"ck_{table}_state", table, type_="check")
    op.create_check_constraint(f"ck_{table}_state", table, in_states(V4_STATES))
    op.add_column(table, sa.Column("result", JSONB, nullable=True))
    op.add_column(table, sa.Column("finished_at", ts, nullable=True))
    op.add_column(table, sa.Column("unique_key", sa.Text, nullable=True))
    op.add_column(table, sa.Column("lock_key", sa.Text, nullable=True))
    op.add_column(table, sa.Column("abort_requested_at", ts, nullable=True))
    # The arbiter of `INSERT .. ON CONFLICT DO NOTHING` for unique keys: a key is taken
    # while its job may still run, and free again once it has finished.
    op.create_index(
        f"ux_{table}_unique",
        table,
        ["queue", "unique_key"],
        unique=True,
        postgresql_where=sa.text(f"unique_key IS NOT NULL AND {in_states(V4_STATES[:2])}"),
    )
    # The pruner's path to finished rows older than the retention; the claims' partial
    # indexes leave finished rows out, so a million of them cost a claim nothing.
    op.create_index(
        f"ix_{table}_finished",
        table,
        ["queue", "finished_at"],
        postgresql_where=sa.text(in_states(V4_STATES[3:])),
    )
    # One running holder per lock (a guard: claims pick only the head of each lock's line),
    # and each lock's line of waiting tasks in dequeue order.
    op.create_index(
        f"ux_{table}_holders",
        table,
        ["queue", "lock_key"],
        unique=True,
        postgresql_where=sa.text(f"lock_key IS NOT NULL AND state = '{RUNNING}'"),
    )
    op.create_index(
        f"ix_{table}_locked",
        table,
        ["queue", "lock_key", sa.text("priority DESC"), "run_at", "id"],
        postgresql_where=sa.text(f"lock_key IS NOT NULL AND state = '{QUEUED}'"),
    )
    queues, ticks = queues_table_name(table), ticks_table_name(table)
    op.create_table(
        queues,
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("paused_at", ts, nullable=True),
        sa.PrimaryKeyConstraint("queue", name=f"pk_{queues}"),
    )
    op.create_table(
        ticks,
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("last_tick", ts, nullable=False),
        sa.PrimaryKeyConstraint("queue", "name", name=f"pk_{ticks}"),
    )
    op.create_table_comment(table, schema_comment(4))


def _v4_down(op: Operations, table: str) -> None:
    # Finished rows have no place in version 3: they go, as version 3 would have done.
    op.execute(
        f"DELETE FROM {_quote(op, table)} WHERE {in_states(V4_STATES[3:])}"  # noqa: S608
    )
    op.drop_table(ticks_table_name(table))
    op.drop_table(queues_table_name(table))
    for index in ("ix_{}_locked", "ux_{}_holders", "ix_{}_finished", "ux_{}_unique"):
        op.drop_index(index.format(table), table_name=table)
    for column in ("abort_requested_at", "lock_key", "unique_key", "finished_at", "result"):
        op.drop_column(table, column)
    op.drop_constraint(f"ck_{table}_state", table, type_="check")
    op.create_check_constraint(f"ck_{table}_state", table, in_states(V4_STATES[:3]))
    op.create_table_comment(table, schema_comment(3))


def _v5_up(op: Operations, table: str) -> None:
    # Operating and observing. `meta` carries what travels with a job besides its data
    # (the producer's trace context); nullable without a default, so adding it rewrites
    # nothing. Failed and cancelled rows had no index of their own: an operator's tools
    # list and count them per queue, and find the queues that hold them. Their finish
    # time is in their index entries, so that throughput is counted from index entries
    # alone (succeeded: the finished ones less the cancelled).
    op.add_column(table, sa.Column("meta", JSONB, nullable=True))
    op.create_index(
        f"ix_{table}_failed",
        table,
        ["queue", "id"],
        postgresql_include=["finished_at"],
        postgresql_where=sa.text(f"state = '{FAILED}'"),
    )
    op.create_index(
        f"ix_{table}_cancel",
        table,
        ["queue", "id"],
        postgresql_include=["finished_at"],
        postgresql_where=sa.text(f"state = '{V4_STATES[4]}'"),
    )
    op.create_table_comment(table, schema_comment(5))


def _v5_down(op: Operations, table: str) -> None:
    op.drop_index(f"ix_{table}_cancel", table_name=table)
    op.drop_index(f"ix_{table}_failed", table_name=table)
    op.drop_column(table, "meta")
    op.create_table_comment(table, schema_comment(4))


Step = Callable[[Operations, str], None]
_STEPS: list[tuple[Step, Step]] = [
    (_v1_up, _v1_down),
    (_v2_up, _v2_down),
    (_v3_up, _v3_down),
    (_v4_up, _v4_down),
    (_v5_up, _v5_down),
]

#: The schema version the current code expects.
LATEST = len(_STEPS)


def upgrade(
    op: Operations,
    *,
    to_version: int = LATEST,
    from_version: int = 0,
    table_name: str = DEFAULT_TABLE,
) -> None:
    """Apply schema versions `from_version + 1` .. `to_version` to `table_name`."""
    _check_range(from_version, to_version)
    for up, _ in _STEPS[from_version:to_version]:
        up(op, table_name)


def downgrade(
    op: Operations,
    *,
    to_version: int = 0,
    from_version: int = LATEST,
    table_name: str = DEFAULT_TABLE,
) -> None:
    """Undo schema versions `from_version` .. `to_version + 1` of `table_name`."""
    _check_range(to_version, from_version)
    for _, down in reversed(_STEPS[to_version:from_version]):
        down(op, table_name)


def installed_version(comment: str | None) -> int:
    """The version a queue table's comment records; one without the record is version 1."""
    return recorded_version(comment) or 1


def _check_range(low: int, high: int) -> None:
    if not 0 <= low <= high <= LATEST:
        raise ValueError(f"schema versions run from 0 to {LATEST}; got {low}..{high}")


def operations(connection: sa.Connection) -> Operations:
    """Alembic operations on a plain connection, to run the steps outside a migration."""
    return Operations(MigrationContext.configure(connection))


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """An Alembic `include_object` hook that hides queue tables from autogenerate.

    Use it in the host application's `env.py` (`context.configure(...,
    include_object=sa_pgtq.schema.include_object)`) so that autogenerate never
    proposes to drop or alter a queue table that sa_pgtq's own branch manages.
    """
    names = queue_table_names()
    if type_ == "table":
        return name not in names
    table = getattr(obj, "table", None)
    return getattr(table, "name", None) not in names


def migration_table_name() -> str:
    """The table a running revision targets: `-x sa_pgtq_table=NAME`, else `sa_pgtq_jobs`."""
    from alembic import context  # only meaningful inside a running migration

    return context.get_x_argument(as_dictionary=True).get("sa_pgtq_table", DEFAULT_TABLE)
