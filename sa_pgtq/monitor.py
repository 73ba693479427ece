"""`Monitor`: what operators' tools see and do across every queue of a queue table.

The CLI, the dashboard and the Prometheus gauges read through here. Reads cost
the same beside a million jobs as beside ten (see `inspection`): counts are
exact up to `COUNT_CAP`, the planner's estimate above it. Actions go through a
`Queue` of the job's own queue, so they behave exactly as the application's
own calls would.
"""

from __future__ import annotations

import builtins
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from . import gateway, validation
from .aio import AsyncQueue
from .backend import Backend
from .binding import Bind, Binding, Caller, engine_from_url
from .errors import InvalidInputError
from .models import (
    CANCELLED,
    DEFAULT_TABLE,
    FAILED,
    QUEUED,
    RUNNING,
    STATES,
    SUCCEEDED,
    JobMixin,
    job_model,
)
from .queue import Queue
from .statements import statements_for

#: Counts stop here (a page view never walks more index entries than this per count);
#: above it the planner's estimate is shown instead.
COUNT_CAP = 10_000
#: The most `Queue` objects a monitor keeps for its actions.
_KEPT_QUEUES = 100
#: The most jobs one listing returns.
MAX_LIMIT = 1000
# Waiting jobs are counted per kind: each kind has its own index.
_QUEUED = ("queued_tasks", "queued_messages")


@dataclass(frozen=True)
class Count:
    value: int
    #: Above `COUNT_CAP`: the planner's estimate, not an exact count.
    estimated: bool = False

    def __str__(self) -> str:
        return f"≈{self.value:,}" if self.estimated else f"{self.value:,}"


@dataclass(frozen=True)
class QueueStats:
    name: str
    #: Every state of `models.STATES`, zeros included.
    counts: dict[str, Count]
    #: How long the longest-waiting due job has waited (None: none is due).
    oldest_waiting: timedelta | None
    paused: bool


@dataclass(frozen=True)
class Bucket:
    start: datetime
    succeeded: int
    failed: int


class Monitor:
    """Read and act on every queue of one queue table.

    `bind` is an Engine, URL or DSN string, or sessionmaker (as for `Queue`); an
    AsyncEngine (a sync engine on the same database is made for it); or a `Queue` /
    `AsyncQueue`, whose table and retention are then used. The retention decides
    whether cancelled jobs are kept or deleted, as it does for the application.
    """

    def __init__(
        self,
        bind: Bind | AsyncEngine | Queue | AsyncQueue,
        *,
        table_name: str | None = None,
    ) -> None:
        if isinstance(bind, AsyncQueue):
            bind = bind.sync
        retention = None
        if isinstance(bind, Queue):
            if table_name is not None and table_name != bind.table_name:
                raise InvalidInputError("give a queue or a table_name, not two different tables")
            binding, model, retention = bind.backend.binding, bind.model, bind.retention
            if binding.async_sessions is not None:  # an AsyncQueue's: its engine is async
                binding = Binding(_sync_engine(binding.async_sessions.kw["bind"]))
        else:
            if isinstance(bind, AsyncEngine):
                bind = _sync_engine(bind)
            binding = Binding(bind)
            table = DEFAULT_TABLE if table_name is None else table_name
            model = job_model(validation.check_table_name(table))
        # Reads span every queue; the backend's own queue name is never used.
        self.backend = Backend(binding, statements_for(model), "", retention)
        self._queues: dict[str, Queue] = {}

    @property
    def table_name(self) -> str:
        return self.backend.table_name

    @property
    def retention(self) -> timedelta | None:
        return self.backend.retention

    @property
    def engine(self) -> Engine:
        return self.backend.binding.engine

    # -- reads ----------------------------------------------------------------

    def queues(self, session: Caller | None = None) -> builtins.list[QueueStats]:
        """Every queue with a job or a pause record, by name."""
        with self.backend.connection(session, atomic=True) as conn:
            names = gateway.queue_names(conn, self.backend.statements)
            return [self._stats(conn, name) for name in names]

    def jobs(
        self,
        *,
        queue: str | None = None,
        state: str | None = None,
        tag: str | None = None,
        before: int | None = None,
        limit: int = 50,
        session: Caller | None = None,
    ) -> builtins.list[JobMixin]:
        """Jobs matching the filters (None: any), newest first.

        Keyset pagination: the next page is `before=` the last id shown.
        """
        if queue is not None:
            validation.check_name(queue, "queue name")
        if tag is not None:
            validation.check_name(tag)
        if state is not None and state not in STATES:
            raise InvalidInputError(f"state must be one of {', '.join(STATES)}, not {state!r}")
        if before is not None:
            validation.check_job_id(before)
        if validation.check_count(limit, "limit") > MAX_LIMIT:
            raise InvalidInputError(f"limit must be at most {MAX_LIMIT}, got {limit}")
        return self.backend.run(session, gateway.browse_jobs, queue, state, tag, before, limit)

    def job(self, job_id: int, session: Caller | None = None) -> JobMixin | None:
        """The job with this id, whichever its queue (None: absent, or pruned)."""
        checked = validation.check_job_id(job_id)
        return self.backend.run(session, gateway.find_job, checked)

    def throughput(
        self,
        *,
        window: timedelta = timedelta(hours=1),
        buckets: int = 60,
        session: Caller | None = None,
    ) -> builtins.list[Bucket]:
        """Jobs finished per bucket over the last `window`, oldest bucket first.

        Succeeded jobs are counted only where they are kept (a queue with a
        retention); failed ones always are.
        """
        seconds = validation.check_duration(window, "window")
        validation.check_count(buckets, "buckets")
        width = max(1, round(seconds.total_seconds() / buckets))
        start = (int(time.time()) // width - buckets + 1) * width
        since = datetime.fromtimestamp(start, timezone.utc)
        totals = {start + n * width: [0, 0] for n in range(buckets)}
        with self.backend.connection(session, atomic=True) as conn:
            table = self.backend.statements
            for name in gateway.queue_names(conn, table):
                per_bucket = gateway.finished_per_bucket(conn, table, name, since, width)
                for bucket, (succeeded, failed) in per_bucket.items():
                    total = totals.get(int(bucket))
                    if total is not None:
                        total[0] += succeeded
                        total[1] += failed
        return [
            Bucket(datetime.fromtimestamp(at, timezone.utc), ok, failed)
            for at, (ok, failed) in totals.items()
        ]

    # -- actions --------------------------------------------------------------

    def retry(self, job_id: int, session: Caller | None = None) -> bool:
        """Queue a failed job again with fresh attempts; False if absent or not failed."""
        queue = self._queue_of(job_id, session)
        return queue is not None and queue.requeue_failed([job_id], session) == 1

    def cancel(self, job_id: int, session: Caller | None = None) -> bool:
        """`Queue.cancel` on the job's queue; False if absent or not waiting or failed."""
        queue = self._queue_of(job_id, session)
        return queue is not None and queue.cancel(job_id, session)

    def abort(self, job_id: int, session: Caller | None = None) -> bool:
        """`Queue.abort` on the job's queue; False if absent or finished."""
        queue = self._queue_of(job_id, session)
        return queue is not None and queue.abort(job_id, session)

    def pause(self, queue: str, session: Caller | None = None) -> None:
        self.queue(queue).pause(session)

    def resume(self, queue: str, session: Caller | None = None) -> None:
        self.queue(queue).resume(session)

    def queue(self, name: str) -> Queue:
        """A `Queue` of this name on the monitor's table, for actions on it."""
        queue = self._queues.get(name)
        if queue is None:
            if len(self._queues) >= _KEPT_QUEUES:  # names come from requests: keep a few
                self._queues.clear()
            queue = Queue(
                self.backend.binding,
                name=name,
                model=self.backend.statements.model,
                retention=self.retention,
            )
            self._queues[name] = queue
        return queue

    # -- helpers --------------------------------------------------------------

    def _stats(self, conn: Any, name: str) -> QueueStats:
        row = gateway.queue_stats(conn, self.backend.statements, name, COUNT_CAP + 1)
        counts = {
            state: self._count(conn, name, state, row[state])
            for state in (RUNNING, FAILED, CANCELLED)
        }
        tasks, messages = (self._count(conn, name, f, row[f]) for f in _QUEUED)
        counts[QUEUED] = Count(tasks.value + messages.value, tasks.estimated or messages.estimated)
        finished = self._count(conn, name, "finished", row["finished"])
        counts[SUCCEEDED] = (
            self._count(conn, name, SUCCEEDED, COUNT_CAP + 1)
            if finished.estimated
            else Count(finished.value - counts[CANCELLED].value)
        )
        earliest, now = row["earliest"], row["now"]
        waited = None if earliest is None or earliest > now else now - earliest
        return QueueStats(name, {state: counts[state] for state in STATES}, waited, row["paused"])

    def _count(self, conn: Any, queue: str, field: str, counted: int) -> Count:
        """`counted` (a count stopped at the cap), else the planner's estimate of `field`."""
        if counted <= COUNT_CAP:
            return Count(counted)
        estimate = gateway.estimated_count(conn, self.backend.statements, queue, field)
        return Count(max(estimate, COUNT_CAP + 1), estimated=True)

    def _queue_of(self, job_id: int, session: Caller | None) -> Queue | None:
        job = self.job(job_id, session)
        return None if job is None else self.queue(job.queue)


def age(elapsed: timedelta, sep: str = "") -> str:
    """`3m12s`, `2h05m`, `4d03h`: two units at most, as people read a wait (`sep` between)."""
    seconds = max(0, int(elapsed.total_seconds()))
    minutes, secs = divmod(seconds, 60)
    hours, mins = divmod(minutes, 60)
    days, hrs = divmod(hours, 24)
    if days:
        return f"{days}d{sep}{hrs:02d}h"
    if hours:
        return f"{hours}h{sep}{mins:02d}m"
    if minutes:
        return f"{minutes}m{sep}{secs:02d}s"
    return f"{secs}s"


#: Query options of an asyncpg URL that are asyncpg's or SQLAlchemy's asyncpg dialect's,
#: not libpq's: psycopg2 refuses them.
_ASYNCPG_OPTIONS = frozenset(
    {
        "prepared_statement_cache_size",
        "prepared_statement_name_func",
        "statement_cache_size",
        "max_cached_statement_lifetime",
        "max_cacheable_statement_size",
        "command_timeout",
        "ssl",
    }
)
_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


def _sync_engine(engine: AsyncEngine) -> Engine:
    """A sync engine on an async engine's database: psycopg's keeps its URL, asyncpg's gets
    psycopg2 and libpq's options (its `ssl` mode as `sslmode`). The async engine's
    `connect_args` are not carried over: give a sync Engine when they matter."""
    url: URL = engine.url
    if url.drivername == "postgresql+asyncpg":
        query = {k: v for k, v in url.query.items() if k not in _ASYNCPG_OPTIONS}
        ssl = url.query.get("ssl")
        if isinstance(ssl, str) and ssl in _SSL_MODES:
            query.setdefault("sslmode", ssl)
        url = url.set(drivername="postgresql+psycopg2", query=query)
    return engine_from_url(url)
