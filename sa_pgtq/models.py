"""The queue table as a declarative model.

`JobMixin` holds the columns and indexes; `Job` is the ready-made model on
sa_pgtq's own metadata (table `sa_pgtq_jobs`). A host application may instead
declare `class MyJob(JobMixin, AppBase): __tablename__ = "my_jobs"` and pass
`model=MyJob` to `Queue`. Index and constraint names derive from the table
name, so several queue tables can share a database.

Each queue table has two small tables beside it, declared on the same metadata
when the model is: `<table>_queues` (a paused queue's row) and `<table>_ticks`
(the last tick of each periodic task that was turned into a job).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    TIMESTAMP,
    BigInteger,
    CheckConstraint,
    Column,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

DEFAULT_TABLE = "sa_pgtq_jobs"
#: PostgreSQL cuts identifiers at 63 bytes, so the longest name derived from a table's
#: (ix_<table>_messages) must fit, or names would be cut and could collide.
MAX_TABLE_NAME_BYTES = 63 - len("ix__messages")

# Job states. Without a retention a job is deleted when it succeeds or is cancelled.
QUEUED = "queued"  # waiting (possibly until run_at)
RUNNING = "running"  # claimed by a worker under a lease
FAILED = "failed"  # out of attempts; kept with its last error until requeued or cancelled
SUCCEEDED = "succeeded"  # kept with its result for the queue's retention
CANCELLED = "cancelled"  # cancelled or aborted; kept for the queue's retention
STATES = (QUEUED, RUNNING, FAILED, SUCCEEDED, CANCELLED)
#: The states a job may still leave: a unique key is taken while its job is in one.
ACTIVE = (QUEUED, RUNNING)
#: The states the pruner removes once they are older than the retention.
PRUNABLE = (SUCCEEDED, CANCELLED)

# What put the row there: the message layer (dequeue by tag) or the task layer (workers).
MESSAGE = "message"
TASK = "task"
# What else a notification on sa_pgtq's channel may be about (its kind field; MESSAGE
# and TASK mean a job arrived): a job of the queue finished, which wakes `result()`;
# a control request (tag "abort", which the workers' aborters act on; "pause" and
# "resume", for operators' tools: workers need no word, the claim checks the pause).
FINISHED = "finished"
CONTROL = "control"
#: The tag of the control request that asks a running job's worker to abort it.
ABORT = "abort"

#: The schema version the model describes (`schema.LATEST`). From version 2 on, a
#: queue table records its version in its comment, so that dropping or upgrading a
#: table made by older code knows where it stands.
SCHEMA_VERSION = 5
_SCHEMA_RECORD = "sa_pgtq schema version "

_queue_tables: set[str] = set()


def schema_comment(version: int) -> str:
    """The comment that records a queue table's schema version."""
    return f"{_SCHEMA_RECORD}{version}"


def recorded_version(comment: str | None) -> int | None:
    """The version `schema_comment` recorded in `comment`, if it is such a record."""
    number = (comment or "").removeprefix(_SCHEMA_RECORD)
    return int(number) if number != comment and number.isdigit() else None


def queue_table_names() -> frozenset[str]:
    """Names of every table declared with `JobMixin` in this process."""
    return frozenset(_queue_tables)


def in_states(states: tuple[str, ...]) -> str:
    """SQL text of `state IN (...)` for sa_pgtq's own constants (checks, index predicates)."""
    return f"state IN ({', '.join(repr(state) for state in states)})"


def _table_args(table: str) -> tuple[Any, ...]:
    # Partial indexes keep the fetch paths proportional to what is runnable,
    # not to the failed, finished or leased rows beside them.
    return (
        CheckConstraint(in_states(STATES), name=f"ck_{table}_state"),
        CheckConstraint(f"kind IN ('{MESSAGE}', '{TASK}')", name=f"ck_{table}_kind"),
        Index(
            f"ix_{table}_messages",
            "queue",
            "tag",
            text("priority DESC"),
            "run_at",
            "id",
            postgresql_where=text(f"state = '{QUEUED}' AND kind = '{MESSAGE}'"),
        ),
        Index(
            f"ix_{table}_tasks",
            "queue",
            text("priority DESC"),
            "run_at",
            "id",
            postgresql_where=text(f"state = '{QUEUED}' AND kind = '{TASK}'"),
        ),
        Index(f"ix_{table}_running", "queue", postgresql_where=text(f"state = '{RUNNING}'")),
        Index(
            f"ux_{table}_unique",
            "queue",
            "unique_key",
            unique=True,
            postgresql_where=text(f"unique_key IS NOT NULL AND {in_states(ACTIVE)}"),
        ),
        Index(
            f"ix_{table}_finished",
            "queue",
            "finished_at",
            postgresql_where=text(in_states(PRUNABLE)),
        ),
        Index(
            f"ix_{table}_failed",
            "queue",
            "id",
            postgresql_include=["finished_at"],
            postgresql_where=text(f"state = '{FAILED}'"),
        ),
        Index(
            f"ix_{table}_cancel",
            "queue",
            "id",
            postgresql_include=["finished_at"],
            postgresql_where=text(f"state = '{CANCELLED}'"),
        ),
        Index(
            f"ux_{table}_holders",
            "queue",
            "lock_key",
            unique=True,
            postgresql_where=text(f"lock_key IS NOT NULL AND state = '{RUNNING}'"),
        ),
        Index(
            f"ix_{table}_locked",
            "queue",
            "lock_key",
            text("priority DESC"),
            "run_at",
            "id",
            postgresql_where=text(f"lock_key IS NOT NULL AND state = '{QUEUED}'"),
        ),
        {"comment": schema_comment(SCHEMA_VERSION)},
    )


class JobMixin:
    """Columns, constraints and indexes of a queue table."""

    __tablename__: str

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    queue: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text, server_default=MESSAGE)
    tag: Mapped[str] = mapped_column(Text)
    data: Mapped[Any] = mapped_column(JSONB)
    state: Mapped[str] = mapped_column(Text, server_default=QUEUED)
    priority: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(
        TIMESTAMP(timezone=True), server_default=func.now()
    )
    run_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=func.now())
    lease_expires_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    locked_by: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    #: What the handler returned (kept with a retention).
    result: Mapped[Any | None] = mapped_column(JSONB)
    finished_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    #: While the job is queued or running, no other job of its queue has this key.
    unique_key: Mapped[str | None] = mapped_column(Text)
    #: While the job runs, no other job of its queue with this lock does.
    lock_key: Mapped[str | None] = mapped_column(Text)
    #: Set by `abort()` on a running job: its handler is asked to stop.
    abort_requested_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    #: What travels with the job besides its data: the producer's trace context.
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    @declared_attr.directive
    @classmethod
    def __table_args__(cls) -> tuple[Any, ...]:
        return _table_args(cls.__tablename__)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__tablename__" in cls.__dict__:
            name = cls.__tablename__
            _queue_tables.update((name, queues_table_name(name), ticks_table_name(name)))
            metadata = getattr(cls, "metadata", None)
            if isinstance(metadata, MetaData):
                side_tables(name, metadata)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} id={self.id} queue={self.queue!r} tag={self.tag!r} "
            f"state={self.state!r} attempts={self.attempts}>"
        )


def queues_table_name(table: str) -> str:
    return f"{table}_queues"


def ticks_table_name(table: str) -> str:
    return f"{table}_ticks"


def side_tables(table: str, metadata: MetaData) -> tuple[Table, Table]:
    """The queue table's side tables (`<table>_queues`, `<table>_ticks`) on `metadata`."""
    queues, ticks = queues_table_name(table), ticks_table_name(table)
    if queues in metadata.tables:
        return metadata.tables[queues], metadata.tables[ticks]
    ts = TIMESTAMP(timezone=True)
    return (
        Table(
            queues,
            metadata,
            Column("queue", Text, nullable=False),
            Column("paused_at", ts, nullable=True),
            PrimaryKeyConstraint("queue", name=f"pk_{queues}"),
        ),
        Table(
            ticks,
            metadata,
            Column("queue", Text, nullable=False),
            Column("name", Text, nullable=False),
            Column("last_tick", ts, nullable=False),
            PrimaryKeyConstraint("queue", "name", name=f"pk_{ticks}"),
        ),
    )


class Base(DeclarativeBase):
    """sa_pgtq's own declarative base; its metadata holds only queue tables."""

    metadata = MetaData()


class Job(JobMixin, Base):
    """The default queue table, `sa_pgtq_jobs`."""

    __tablename__ = DEFAULT_TABLE


_models: dict[str, type[JobMixin]] = {DEFAULT_TABLE: Job}


def job_model(table_name: str = DEFAULT_TABLE) -> type[JobMixin]:
    """The model for a queue table by name, declared on sa_pgtq's Base on first use."""
    model = _models.get(table_name)
    if model is None:
        model = type(f"Job_{table_name}", (JobMixin, Base), {"__tablename__": table_name})
        _models[table_name] = model
    return model
