"""Prometheus metrics of a queue's runs and of its table (`sa_pgtq[prometheus]`).

    import sa_pgtq.metrics
    sa_pgtq.metrics.register(q)                       # prometheus_client's default REGISTRY
    sa_pgtq.metrics.register(q, registry=registry)    # or an application's own
    sa_pgtq.metrics.serve(q, port=9100)               # what `sa-pgtq worker --metrics-port` does

Counters and the histogram count the runs of this process (its workers, and
`task.run()`), by table, queue and task (the handler's name):

    sa_pgtq_jobs_run_total              runs finished, whatever their outcome
    sa_pgtq_jobs_succeeded_total        runs that succeeded
    sa_pgtq_jobs_retried_total          runs that failed and were queued again
    sa_pgtq_jobs_failed_total           runs that failed for good: the job is kept as failed
    sa_pgtq_job_run_duration_seconds    a histogram of how long runs took

Gauges are read from the table when scraped (`Monitor.queues()`, a few index
probes), for every queue of each table registered, by table and queue:

    sa_pgtq_queue_depth                     jobs waiting (queued, due or scheduled)
    sa_pgtq_queue_oldest_waiting_seconds    how long the longest-waiting due job has waited
    sa_pgtq_queue_jobs{state=...}           jobs by state (above 10,000: the planner's estimate)
    sa_pgtq_queue_paused                    1 while the queue is paused

Several worker processes report the same gauges: aggregate them with max(), and
the counters with sum().
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from typing import NamedTuple

from sqlalchemy.exc import SQLAlchemyError

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:
    raise ImportError(
        "sa_pgtq.metrics needs prometheus-client: pip install 'sa_pgtq[prometheus]'"
    ) from exc

from .aio import AsyncQueue
from .execution import Executor, RunObserver
from .models import FAILED, QUEUED, STATES
from .monitor import Monitor
from .queue import Queue
from .tasks import Outcome, Task

__all__ = ["BUCKETS", "register", "serve"]

log = logging.getLogger(__name__)

#: The run duration histogram's buckets, in seconds: from fast no-ops to hour-long tasks.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
LABELS = ("table", "queue", "task")

_registered: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


def register(queue: Queue | AsyncQueue, registry: CollectorRegistry = REGISTRY) -> None:
    """Count `queue`'s runs in this process, and report its table's queues when scraped,
    on `registry`. Queues of one or several tables may share a registry; registering a
    queue again changes nothing."""
    metrics = _registered.get(registry)
    if metrics is None:
        metrics = _registered[registry] = _Metrics(registry)
    metrics.add(queue.sync if isinstance(queue, AsyncQueue) else queue)


def serve(
    queue: Queue | AsyncQueue,
    port: int,
    addr: str = "0.0.0.0",  # every interface: a worker is scraped from elsewhere
    registry: CollectorRegistry = REGISTRY,
) -> None:
    """`register` the queue, and serve `registry` over HTTP on `port` (a daemon thread)."""
    register(queue, registry)
    start_http_server(port, addr, registry)


class _Metrics:
    """One registry's metrics: run counters and histogram by (table, queue, task), gauges."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, LABELS, registry=registry)

        self.run = counter("sa_pgtq_jobs_run", "Task runs finished, whatever their outcome")
        self.succeeded = counter("sa_pgtq_jobs_succeeded", "Task runs that succeeded")
        self.retried = counter("sa_pgtq_jobs_retried", "Task runs that failed and were requeued")
        self.failed = counter("sa_pgtq_jobs_failed", "Task runs that failed for good (kept failed)")
        self.duration = Histogram(
            "sa_pgtq_job_run_duration_seconds",
            "How long task runs took, outcome recorded",
            LABELS,
            buckets=BUCKETS,
            registry=registry,
        )
        self.tables = _Tables()
        registry.register(self.tables)
        self._observed: weakref.WeakSet[Executor] = weakref.WeakSet()

    def add(self, queue: Queue) -> None:
        self.tables.add(queue)
        if queue.executor in self._observed:
            return
        self._observed.add(queue.executor)
        queue.executor.observers.append(self._observer(queue))

    def _observer(self, queue: Queue) -> RunObserver:
        # Each task's series looked up once: `labels()` takes a lock and a dict.
        series: dict[str, _Series] = {}

        def of(task: str) -> _Series:
            found = series.get(task)
            if found is None:
                labels = (queue.table_name, queue.name, task)
                found = series[task] = _Series(
                    self.run.labels(*labels),
                    self.succeeded.labels(*labels),
                    self.retried.labels(*labels),
                    self.failed.labels(*labels),
                    self.duration.labels(*labels),
                )
            return found

        for name in queue.handlers:  # reported from the start, at zero
            of(name)

        def observe(task: Task, outcome: Outcome, seconds: float) -> None:
            run, succeeded, retried, failed, duration = of(task.name)
            run.inc()
            duration.observe(seconds)
            if outcome.succeeded:
                succeeded.inc()
            elif outcome.failure == QUEUED:
                retried.inc()
            elif outcome.failure == FAILED:
                failed.inc()

        return observe


class _Series(NamedTuple):
    """One (table, queue, task)'s children of the run metrics."""

    run: Counter
    succeeded: Counter
    retried: Counter
    failed: Counter
    duration: Histogram


class _Tables(Collector):
    """The gauges of every queue of the tables registered, read when scraped."""

    def __init__(self) -> None:
        self._monitors: dict[tuple[str, str], Monitor] = {}

    def add(self, queue: Queue) -> None:
        key = (str(queue.engine.url), queue.table_name)
        if key not in self._monitors:
            self._monitors[key] = Monitor(queue)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Names only: registering must not query the database.
        return iter(_families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth, oldest, jobs, paused = families = _families()
        for monitor in list(self._monitors.values()):
            try:
                stats = monitor.queues()
            except SQLAlchemyError as exc:  # the scrape goes on without this table
                log.warning("metrics: cannot read table %s: %s", monitor.table_name, exc)
                continue
            for queue in stats:
                where = [monitor.table_name, queue.name]
                depth.add_metric(where, queue.counts[QUEUED].value)
                waited = queue.oldest_waiting
                oldest.add_metric(where, 0.0 if waited is None else waited.total_seconds())
                for state in STATES:
                    jobs.add_metric([*where, state], queue.counts[state].value)
                paused.add_metric(where, 1.0 if queue.paused else 0.0)
        return iter(families)


def _families() -> tuple[GaugeMetricFamily, ...]:
    return (
        GaugeMetricFamily(
            "sa_pgtq_queue_depth",
            "Jobs waiting in the queue, due or scheduled",
            labels=["table", "queue"],
        ),
        GaugeMetricFamily(
            "sa_pgtq_queue_oldest_waiting_seconds",
            "How long the longest-waiting due job has waited (0: none is due)",
            labels=["table", "queue"],
        ),
        GaugeMetricFamily(
            "sa_pgtq_queue_jobs",
            "Jobs of the queue by state (above 10,000, the planner's estimate)",
            labels=["table", "queue", "state"],
        ),
        GaugeMetricFamily(
            "sa_pgtq_queue_paused", "1 while the queue is paused", labels=["table", "queue"]
        ),
    )
