"""Prometheus metrics: scraped from `sa-pgtq worker --metrics-port`, or an app's own registry."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import socket
import sys
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType

import pytest
from helpers import Spawn, wait_for, wait_ready
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

import sa_pgtq

pytest.importorskip("prometheus_client", reason="needs prometheus-client (dev extra)")
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import sa_pgtq.metrics

HERE = Path(__file__).resolve().parent
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def metricsapp(db_url: str, clean: Engine) -> Iterator[ModuleType]:
    """The worker processes' app (queue "metrics"), imported here to push; the table empty."""
    os.environ["SA_PGTQ_WORKER_URL"] = db_url
    sys.path.insert(0, str(HERE))
    try:
        yield importlib.import_module("metricsapp")
    finally:
        sys.path.remove(str(HERE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples:
    """Every sample the endpoint serves, by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        exposition = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def scraped_when(port: int, ready: object, seconds: float) -> Samples:
    """The first scrape for which `ready(samples)` holds (the endpoint may not be up yet)."""
    found: list[Samples] = []

    def attempt() -> bool:
        try:
            samples = scrape(port)
        except OSError:
            return False
        found[:] = [samples]
        return bool(ready(samples))  # type: ignore[operator]

    wait_for(attempt, seconds)
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("queue", ["q", "aq"])  # a Worker, an AsyncWorker
def test_a_burst_scraped_from_the_workers_endpoint(
    metricsapp: ModuleType, clean: Engine, spawn: Spawn, db_url: str, queue: str
) -> None:
    handlers = metricsapp.q.handlers
    handlers["ok"].push_many([(n,) for n in range(5)])
    handlers["flaky"].push_many([(n,) for n in range(3)])
    handlers["broken"].push_many([(n,) for n in range(2)])
    handlers["ok"].options(delay=timedelta(hours=1)).push_many([(10,), (11,)])  # waits
    idle = sa_pgtq.Queue(clean, name="idle")  # no worker runs it: it only waits
    an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    idle.enqueue_many("report", [1, 2, 3], run_at=an_hour_ago)

    port = free_port()
    worker = spawn(db_url, "--metrics-port", str(port), app=f"metricsapp:{queue}")
    wait_ready(worker)
    runs = 5 + 3 * 2 + 2  # each flaky task runs twice
    got = scraped_when(port, lambda s: total(s, "sa_pgtq_jobs_run_total") >= runs, 60)

    def labels(task: str) -> dict[str, str]:
        return {"table": "sa_pgtq_jobs", "queue": "metrics", "task": task}

    def series(name: str, task: str) -> float | None:
        return value(got, name, **labels(task))

    assert total(got, "sa_pgtq_jobs_run_total") == runs
    assert [series("sa_pgtq_jobs_run_total", t) for t in ("ok", "flaky", "broken")] == [5, 6, 2]
    assert series("sa_pgtq_jobs_succeeded_total", "ok") == 5
    assert series("sa_pgtq_jobs_succeeded_total", "flaky") == 3
    assert series("sa_pgtq_jobs_retried_total", "flaky") == 3
    assert series("sa_pgtq_jobs_failed_total", "broken") == 2
    assert total(got, "sa_pgtq_jobs_failed_total") == 2
    assert total(got, "sa_pgtq_jobs_retried_total") == 3
    assert total(got, "sa_pgtq_job_run_duration_seconds_count") == runs
    everything = value(got, "sa_pgtq_job_run_duration_seconds_bucket", le="+Inf", **labels("ok"))
    assert everything == 5

    assert (
        value(got, "sa_pgtq_queue_depth", table="sa_pgtq_jobs", queue="metrics") == 2
    )  # the two scheduled ones
    assert (
        value(got, "sa_pgtq_queue_jobs", table="sa_pgtq_jobs", queue="metrics", state="failed") == 2
    )
    assert (
        value(got, "sa_pgtq_queue_oldest_waiting_seconds", table="sa_pgtq_jobs", queue="metrics")
        == 0
    )
    assert value(got, "sa_pgtq_queue_depth", table="sa_pgtq_jobs", queue="idle") == 3
    oldest = value(got, "sa_pgtq_queue_oldest_waiting_seconds", table="sa_pgtq_jobs", queue="idle")
    assert oldest is not None and 3600 <= oldest < 3600 + 120
    assert value(got, "sa_pgtq_queue_paused", table="sa_pgtq_jobs", queue="idle") == 0

    idle.pause()  # read at scrape time
    scraped_when(
        port,
        lambda s: value(s, "sa_pgtq_queue_paused", table="sa_pgtq_jobs", queue="idle") == 1,
        10,
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0


def test_a_metrics_port_in_use_is_a_one_line_error(
    metricsapp: ModuleType, spawn: Spawn, db_url: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        worker = spawn(db_url, "--metrics-port", str(taken.getsockname()[1]), app="metricsapp:q")
        assert worker.wait(30) == 2  # bad arguments
    log = Path(worker.log_path).read_text()  # type: ignore[attr-defined]
    assert "sa-pgtq: --metrics-port:" in log
    assert "Traceback" not in log


def test_an_applications_own_registry(q: sa_pgtq.Queue, clean: Engine) -> None:
    @q.handler(max_attempts=2, retry_delay=0.01)
    def flaky(n: int) -> None:
        if n % 2 and sa_pgtq.current_task().attempts == 1:
            raise RuntimeError("odd, first attempt")

    registry, other = CollectorRegistry(), CollectorRegistry()
    sa_pgtq.metrics.register(q, registry=registry)
    sa_pgtq.metrics.register(q, registry=registry)  # again: changes nothing
    sa_pgtq.metrics.register(q, registry=other)
    labels = {"table": "sa_pgtq_jobs", "queue": "default", "task": "flaky"}
    assert registry.get_sample_value("sa_pgtq_jobs_run_total", labels) == 0  # from the start

    flaky.push_many([(n,) for n in range(4)])
    flaky.options(delay=600).push(9)
    assert (
        registry.get_sample_value(
            "sa_pgtq_queue_depth", {"table": "sa_pgtq_jobs", "queue": "default"}
        )
        == 5
    )
    worker = sa_pgtq.Worker(q, install_signal_handlers=False, poll_interval=0.05)

    def ran_all() -> bool:  # the retries are due a moment after the failures
        worker.run(burst=True)
        return registry.get_sample_value("sa_pgtq_jobs_run_total", labels) == 6

    wait_for(ran_all, 10)

    for reg in (registry, other):
        assert reg.get_sample_value("sa_pgtq_jobs_run_total", labels) == 6
        assert reg.get_sample_value("sa_pgtq_jobs_succeeded_total", labels) == 4
        assert reg.get_sample_value("sa_pgtq_jobs_retried_total", labels) == 2
        assert reg.get_sample_value("sa_pgtq_jobs_failed_total", labels) == 0
        assert reg.get_sample_value("sa_pgtq_job_run_duration_seconds_count", labels) == 6
    assert (
        registry.get_sample_value(
            "sa_pgtq_queue_depth", {"table": "sa_pgtq_jobs", "queue": "default"}
        )
        == 1
    )
    state = {"table": "sa_pgtq_jobs", "queue": "default", "state": "succeeded"}
    assert registry.get_sample_value("sa_pgtq_queue_jobs", state) == 0  # no retention


def test_an_async_worker_counts_on_an_apps_registry(async_url: str) -> None:
    registry = CollectorRegistry()

    async def scenario() -> None:
        engine = create_async_engine(async_url)
        try:
            q = sa_pgtq.AsyncQueue(engine, name="aio")

            @q.handler(max_attempts=1)
            async def check(n: int) -> None:
                if n == 0:
                    raise ValueError("zero")

            sa_pgtq.metrics.register(q, registry=registry)
            await check.push_many([(n,) for n in range(3)])
            await sa_pgtq.AsyncWorker(q, install_signal_handlers=False).run(burst=True)
        finally:
            await engine.dispose()

    asyncio.run(scenario())
    labels = {"table": "sa_pgtq_jobs", "queue": "aio", "task": "check"}
    assert registry.get_sample_value("sa_pgtq_jobs_run_total", labels) == 3
    assert registry.get_sample_value("sa_pgtq_jobs_succeeded_total", labels) == 2
    assert registry.get_sample_value("sa_pgtq_jobs_failed_total", labels) == 1
    failed = {"table": "sa_pgtq_jobs", "queue": "aio", "state": "failed"}
    assert registry.get_sample_value("sa_pgtq_queue_jobs", failed) == 1


def test_an_unreachable_table_leaves_the_scrape_working(db_url: str) -> None:
    engine = create_engine(db_url.replace("/sa_pgtq_test_", "/no_such_db_"))
    registry = CollectorRegistry()
    sa_pgtq.metrics.register(sa_pgtq.Queue(engine), registry=registry)
    assert (
        registry.get_sample_value(
            "sa_pgtq_queue_depth", {"table": "sa_pgtq_jobs", "queue": "default"}
        )
        is None
    )
    assert registry.get_sample_value("sa_pgtq_jobs_run_total", {}) is None
    engine.dispose()


def test_an_observer_that_raises_never_costs_a_run(q: sa_pgtq.Queue) -> None:
    runs: list[int] = []

    @q.handler()
    def once(n: int) -> None:
        runs.append(n)

    def broken(*_: object) -> None:
        raise RuntimeError("a metric broke")

    q.executor.observers.append(broken)
    job_ids = [once.push(n) for n in range(3)]
    sa_pgtq.Worker(q, install_signal_handlers=False).run(burst=True)
    assert sorted(runs) == [0, 1, 2], "each ran once, none again after the observer's error"
    assert all(q.job(job_id) is None for job_id in job_ids)


def test_two_tables_on_one_registry_are_told_apart(clean: Engine) -> None:
    registry = CollectorRegistry()
    queues = [sa_pgtq.Queue(clean, table_name=name) for name in ("metrics_a", "metrics_b")]
    try:
        for depth, queue in enumerate(queues, start=1):
            queue.create_table()

            @queue.handler(name="work")
            def work() -> None: ...

            sa_pgtq.metrics.register(queue, registry=registry)
            work.push_many([()] * depth)
        for table, depth in (("metrics_a", 1), ("metrics_b", 2)):
            where = {"table": table, "queue": "default"}
            assert registry.get_sample_value("sa_pgtq_queue_depth", where) == depth
        sa_pgtq.Worker(queues[0], install_signal_handlers=False).run(burst=True)
        for table, runs in (("metrics_a", 1), ("metrics_b", 0)):
            where = {"table": table, "queue": "default", "task": "work"}
            assert registry.get_sample_value("sa_pgtq_jobs_run_total", where) == runs
    finally:
        with clean.begin() as conn:
            for name in ("metrics_a", "metrics_b"):
                conn.execute(text(f"DROP TABLE {name}, {name}_queues, {name}_ticks"))
