"""Input at the edges: a clear sa_pgtq error (also a ValueError or TypeError), nothing written."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Engine, text

import sa_pgtq
from sa_pgtq import errors
from sa_pgtq.validation import MAX_DEPTH


def jobs_in_table(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM sa_pgtq_jobs")).scalar_one())


def rejected(
    engine: Engine, error: type[Exception], builtin: type[Exception], attempt: Callable[[], object]
) -> None:
    """`attempt` raises `error`, which is also `builtin`, and writes nothing."""
    before = jobs_in_table(engine)
    with pytest.raises(error) as info:
        attempt()
    assert isinstance(info.value, builtin)
    assert jobs_in_table(engine) == before, "nothing written"


def nested(depth: int) -> list[object]:
    """A list nested `depth` levels deep ([] is one level)."""
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_nesting_is_bounded_at_enqueue(q: sa_pgtq.Queue, clean: Engine) -> None:
    @q.handler()
    def takes(x: object) -> None: ...

    too_deep = nested(985)  # deep enough to break every consumer's decoding
    for attempt in [
        lambda: q.enqueue("t", too_deep),
        lambda: q.enqueue_many("t", [1, too_deep]),
        lambda: sa_pgtq.Queue(clean, data_length=10**6).enqueue_many("t", [1, too_deep]),
        lambda: q.enqueue("t", nested(MAX_DEPTH + 1)),
        lambda: takes.push(too_deep),
        lambda: takes.push_many([(1,), (too_deep,)]),
        lambda: takes.push(nested(MAX_DEPTH - 1)),  # {"args": [...]} adds two levels
    ]:
        rejected(clean, errors.DataTooDeepError, ValueError, attempt)
    q.enqueue("t", nested(MAX_DEPTH))
    q.enqueue_many("t", [nested(MAX_DEPTH)])
    takes.push(nested(MAX_DEPTH - 2))
    assert q.dequeue_immediate("t") == nested(MAX_DEPTH)
