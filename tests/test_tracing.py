"""OpenTelemetry: spans for pushes and runs, the run linked to the push through the job's meta.

The SDK's in-memory exporter collects what an application's tracing backend would get.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import wait_for
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

import sa_pgtq
from sa_pgtq import tracing

pytest.importorskip("opentelemetry.sdk.trace", reason="needs opentelemetry-sdk (dev extra)")
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

EXPORTER = InMemorySpanExporter()


class Recording(SimpleSpanProcessor):
    """Exports to EXPORTER only while a test of this module runs: the provider, once set,
    stays for the rest of the process (the API sets one only once)."""

    on = False

    def on_end(self, span: ReadableSpan) -> None:
        if Recording.on:
            super().on_end(span)


@functools.cache
def set_up() -> None:
    """The process's tracer provider, as an application sets it up (once)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(Recording(EXPORTER))
    wait_for(lambda: tracing.tracer() is not None, 5)  # sa_pgtq looks again within a second


@pytest.fixture(autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    set_up()
    EXPORTER.clear()
    Recording.on = True
    try:
        yield EXPORTER
    finally:
        Recording.on = False


def only(name: str) -> ReadableSpan:
    found = [span for span in EXPORTER.get_finished_spans() if span.name == name]
    assert len(found) == 1, [span.name for span in EXPORTER.get_finished_spans()]
    return found[0]


def stored_meta(engine: Engine, job_id: int) -> Any:
    with engine.connect() as conn:
        meta = conn.execute(text("SELECT meta FROM sa_pgtq_jobs WHERE id = :id"), {"id": job_id})
        return meta.scalar_one()


def traceparent_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def burst(q: sa_pgtq.Queue) -> None:
    sa_pgtq.Worker(q, install_signal_handlers=False).run(burst=True)


def ids(context: Any) -> tuple[int, int]:
    """Which span a SpanContext names (a link's is the remote copy carried by the job)."""
    return context.trace_id, context.span_id


def assert_linked(run: ReadableSpan, producer: ReadableSpan) -> None:
    """The run is a span of its own trace, linked (not parented) to the producer's span."""
    assert run.kind == SpanKind.CONSUMER
    assert [ids(link.context) for link in run.links] == [ids(producer.context)]
    assert run.parent is None
    assert run.context.trace_id != producer.context.trace_id


def test_a_push_in_a_request_is_linked_from_its_run(q: sa_pgtq.Queue, clean: Engine) -> None:
    seen: list[Any] = []

    @q.handler()
    def add(a: int, b: int) -> int:
        seen.append(trace.get_current_span().get_span_context())
        return a + b

    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("POST /orders") as request:
        job_id = add.push(2, 3)

    push = only("push add")
    assert push.kind == SpanKind.PRODUCER
    assert push.parent == request.get_span_context()
    assert push.attributes == {
        "messaging.system": "sa_pgtq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "push",
        "messaging.destination.name": "default",
        "messaging.message.id": str(job_id),
        "sa_pgtq.tag": "add",
    }
    assert stored_meta(clean, job_id) == {"trace": {"traceparent": traceparent_of(push)}}

    burst(q)
    run = only("run add")
    assert_linked(run, push)
    assert run.attributes == {
        "messaging.system": "sa_pgtq",
        "messaging.operation.type": "process",
        "messaging.operation.name": "run",
        "messaging.destination.name": "default",
        "messaging.message.id": str(job_id),
        "sa_pgtq.tag": "add",
        "sa_pgtq.attempt": 1,
    }
    assert run.status.status_code == StatusCode.UNSET
    assert seen == [run.get_span_context()], "the handler runs inside its run's span"


def test_a_handler_with_a_timeout_runs_in_its_spans_context(q: sa_pgtq.Queue) -> None:
    seen: list[Any] = []

    @q.handler(timeout=30)  # run in a thread of its own, which can be abandoned
    def timed() -> None:
        seen.append(trace.get_current_span().get_span_context())

    timed.push()
    burst(q)
    assert seen == [only("run timed").get_span_context()]


def test_enqueue_and_enqueue_many_are_producer_spans(q: sa_pgtq.Queue, clean: Engine) -> None:
    one = q.enqueue("email", {"order": 7})
    many = q.enqueue_many("email", [{"order": 8}, {"order": 9}, {"order": 10}])

    single, batch = (s for s in EXPORTER.get_finished_spans() if s.name == "enqueue email")
    assert single.kind == batch.kind == SpanKind.PRODUCER
    assert single.attributes is not None and batch.attributes is not None
    assert single.attributes["messaging.message.id"] == str(one)
    assert batch.attributes["messaging.batch.message_count"] == 3
    assert stored_meta(clean, one) == {"trace": {"traceparent": traceparent_of(single)}}
    for job_id in many:  # one span for the batch, in every job of it
        assert stored_meta(clean, job_id) == {"trace": {"traceparent": traceparent_of(batch)}}
    with q.dequeue_item("email") as job:
        assert job is not None and job.meta == {"trace": {"traceparent": traceparent_of(single)}}


def test_push_many_links_each_run_to_the_one_push(q: sa_pgtq.Queue) -> None:
    @q.handler()
    def step(n: int) -> None: ...

    step.push_many([(1,), (2,)])
    burst(q)
    push = only("push step")
    runs = [span for span in EXPORTER.get_finished_spans() if span.name == "run step"]
    assert len(runs) == 2
    for run in runs:
        assert_linked(run, push)


def test_a_failed_run_records_its_error(q: sa_pgtq.Queue) -> None:
    @q.handler(max_attempts=1)
    def broken() -> None:
        raise ValueError("no such order")

    broken.push()
    burst(q)
    run = only("run broken")
    assert run.status.status_code == StatusCode.ERROR
    assert run.status.description == "no such order"
    assert run.attributes is not None and run.attributes["error.type"] == "ValueError"
    (event,) = run.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert q.failed()[0].tag == "broken"


def test_a_task_popped_in_the_callers_session_is_traced(q: sa_pgtq.Queue, clean: Engine) -> None:
    @q.handler()
    def ship(order: int) -> None: ...

    ship.push(7)
    with Session(clean) as s, s.begin():
        task = q.pop(session=s)
        assert task is not None and task.run()
    assert_linked(only("run ship"), only("push ship"))


def test_async_push_and_async_worker(async_url: str) -> None:
    seen: list[Any] = []

    async def scenario() -> None:
        engine = create_async_engine(async_url)
        try:
            q = sa_pgtq.AsyncQueue(engine, name="aio")

            @q.handler()
            async def notify(user: int) -> None:
                seen.append(trace.get_current_span().get_span_context())

            @q.handler()
            def welcome(user: int) -> None:  # run in a thread of its own
                seen.append(trace.get_current_span().get_span_context())

            with trace.get_tracer("app").start_as_current_span("POST /signup"):
                await notify.push(3)
                await notify.push_many([(4,)])
                await welcome.push(5)
            await sa_pgtq.AsyncWorker(q, install_signal_handlers=False).run(burst=True)
        finally:
            await engine.dispose()

    asyncio.run(scenario())
    pushes = [span for span in EXPORTER.get_finished_spans() if span.name.startswith("push ")]
    runs = [span for span in EXPORTER.get_finished_spans() if span.name.startswith("run ")]
    assert len(pushes) == len(runs) == 3
    request = only("POST /signup")
    assert all(push.parent == request.get_span_context() for push in pushes)
    for run in runs:
        (push,) = (
            push
            for push in pushes
            if [ids(push.context)] == [ids(link.context) for link in run.links]
        )
        assert_linked(run, push)
    assert sorted(map(ids, seen)) == sorted(ids(run.context) for run in runs), "in their spans"


UNTRACED = """
import sys
{block}
from sqlalchemy import create_engine, text
import sa_pgtq
engine = create_engine(sys.argv[1])
q = sa_pgtq.Queue(engine, name="untraced")

@q.handler()
def job() -> None: ...

job_id = job.push()
with engine.connect() as conn:
    meta = conn.execute(text("SELECT meta FROM sa_pgtq_jobs WHERE id = :id"), {{"id": job_id}})
    assert meta.scalar_one() is None
sa_pgtq.Worker(q, install_signal_handlers=False).run(burst=True)
assert q.job(job_id) is None, "it ran"
print(sys.modules.get("opentelemetry") is not None)
"""


@pytest.mark.parametrize(
    ("block", "imported"),
    [
        ("sys.modules['opentelemetry'] = None  # not installed", "False"),
        ("", "True"),  # installed, but no tracer provider set up
    ],
)
def test_without_opentelemetry_set_up_jobs_carry_no_trace(
    clean: Engine, db_url: str, block: str, imported: str
) -> None:
    script = textwrap.dedent(UNTRACED).format(block=block)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", script, db_url], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [imported]


@pytest.mark.parametrize(
    "meta", ["[1, 2]", '{"trace": {"traceparent": 5}}', '{"trace": {"traceparent": "00-zz"}}']
)
def test_meta_that_is_no_trace_context_is_no_link(
    q: sa_pgtq.Queue, clean: Engine, meta: str
) -> None:
    runs: list[int] = []

    @q.handler(max_attempts=1)
    def odd() -> None:
        runs.append(1)

    job_id = odd.push()
    engine = create_engine(clean.url)
    with engine.begin() as conn:  # written by someone else's plain SQL
        conn.execute(
            text("UPDATE sa_pgtq_jobs SET meta = :m WHERE id = :id"), {"m": meta, "id": job_id}
        )
    engine.dispose()
    burst(q)
    assert only("run odd").links == ()
    assert runs == [1] and q.job(job_id) is None, "ran once, and succeeded"


class Failing(SimpleSpanProcessor):
    """A span processor that breaks when a run's span ends, as a misconfigured exporter may
    (until switched off: the SDK cannot remove a processor)."""

    broken = True

    def on_end(self, span: ReadableSpan) -> None:
        if self.broken and span.name.startswith("run "):
            raise RuntimeError("the exporter broke")


def test_a_broken_tracer_loses_the_span_never_the_run(q: sa_pgtq.Queue) -> None:
    runs: list[int] = []

    @q.handler()
    def once(n: int) -> None:
        runs.append(n)

    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    failing = Failing(EXPORTER)
    provider.add_span_processor(failing)
    try:
        job_ids = [once.push(n) for n in range(3)]
        burst(q)
    finally:
        failing.broken = False
    assert sorted(runs) == [0, 1, 2], "each ran once, none again after the tracer's error"
    assert all(q.job(job_id) is None for job_id in job_ids), "and each succeeded"
