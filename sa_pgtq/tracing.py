"""OpenTelemetry spans for pushes and runs, linked across the queue by the job's `meta`.

With `sa_pgtq[otel]` installed and a tracer provider set up by the application,
every enqueue or push is a PRODUCER span whose context (W3C `traceparent`,
through the global propagator) is stored in the new jobs' `meta`, and every
run of a task is a CONSUMER span LINKED to it: a link, not a child, since a
job may run hours after the request that pushed it ended. Attributes follow
OpenTelemetry's messaging conventions (`messaging.*`), plus `sa_pgtq.tag` (a
message's tag, a task's handler) and `sa_pgtq.attempt`.

Without the API, or before a provider is set up, a push or a run pays one
check: the API is imported once, and a provider is looked for at most once a
second until there is one (the API lets it be set only once).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .tasks import Outcome, Task

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

R = TypeVar("R")
log = logging.getLogger(__name__)

#: Seconds between looks for a tracer provider while there is none.
RECHECK = 1.0
SYSTEM = "sa_pgtq"
#: The key of `meta` that holds the producer's context (the propagator's fields).
META_KEY = "trace"

_absent = False  # opentelemetry-api is not installed
_tracer: Tracer | None = None
_next_look = 0.0


def tracer() -> Tracer | None:
    """sa_pgtq's tracer, or None: no OpenTelemetry API, or no tracer provider set up (yet)."""
    global _absent, _tracer, _next_look
    if _tracer is not None or _absent:
        return _tracer
    now = time.monotonic()
    if now < _next_look:
        return None
    _next_look = now + RECHECK
    try:
        from opentelemetry import trace
    except ImportError:
        _absent = True
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        return None  # not set up yet
    if isinstance(provider, trace.NoOpTracerProvider):
        _absent = True  # switched off for good: a provider is set only once
        return None
    _tracer = provider.get_tracer(SYSTEM)
    return _tracer


def produce(operation: str, params: dict[str, Any], insert: Callable[[dict[str, Any]], R]) -> R:
    """`insert(params)` (new jobs, see `validation.new_job_params`) in a producer span, the
    span's context in the jobs' `meta`. `operation` names it: enqueue or push."""
    traced = tracer()
    if traced is None:
        return insert(params)
    from opentelemetry import propagate
    from opentelemetry.trace import SpanKind

    attributes = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": operation,
        "messaging.destination.name": params["queue_name"],
        "sa_pgtq.tag": params["tag"],
    }
    name = f"{operation} {params['tag']}"
    with traced.start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=attributes) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        result = insert({**params, "meta": json.dumps({META_KEY: carrier})})
        if isinstance(result, int):
            span.set_attribute("messaging.message.id", str(result))
        elif isinstance(result, list):
            span.set_attribute("messaging.batch.message_count", len(result))
        return result


def consume(traced: Tracer, queue_name: str, task: Task, run: Callable[[], Outcome]) -> Outcome:
    """`run()` (the task's run) in a consumer span linked to the span that pushed it.

    A run that does not succeed records its error and an error status.
    """
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode

    producer = _producer_context(task.meta)
    attributes: dict[str, str | int] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "run",
        "messaging.destination.name": queue_name,
        "messaging.message.id": str(task.id),
        "sa_pgtq.tag": task.name,
        "sa_pgtq.attempt": task.attempts,
    }
    outcome: Outcome | None = None
    started = False
    try:
        with traced.start_as_current_span(
            f"run {task.name}",
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=[Link(producer)] if producer is not None else None,
        ) as span:
            started = True
            outcome = run()
            if outcome.error is not None:
                span.record_exception(outcome.error)
                span.set_attribute("error.type", type(outcome.error).__qualname__)
                span.set_status(Status(StatusCode.ERROR, str(outcome.error)))
    except Exception:
        if started and outcome is None:
            raise  # the run's own
        # The tracer's: the span is lost, never the run (recorded, or not yet started).
        log.exception("tracing the run of task %s (%s) failed", task.id, task.name)
    return run() if outcome is None else outcome


def _producer_context(meta: str | None) -> Any:
    """The SpanContext stored in a job's meta, or None (none, or not a valid one)."""
    if meta is None:
        return None
    from opentelemetry import propagate, trace

    # Whatever is in meta (plain SQL may write anything there) costs the run its link
    # at most: a propagator meeting what it did not expect may raise anything.
    try:
        carrier = json.loads(meta).get(META_KEY)
        if not isinstance(carrier, dict):
            return None
        context = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    except Exception:
        return None
    return context if context.is_valid else None
