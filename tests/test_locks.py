"""Per-key locks: of the tasks with one lock, at most one runs at a time, in queue order."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from helpers import wait_for
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import create_async_engine

import sa_pgtq
from sa_pgtq import errors, gateway

LOCK = "account:7"


class Timeline:
    """When each task started and ended (monotonic), as its handler records it."""

    def __init__(self) -> None:
        self.runs: dict[str, tuple[float, float]] = {}
        self._guard = threading.Lock()

    @contextmanager
    def run(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        yield
        with self._guard:
            self.runs[name] = (began, time.monotonic())

    def started_in_order(self, names: list[str]) -> bool:
        return sorted(names, key=lambda name: self.runs[name][0]) == names

    def overlapping(self, names: list[str]) -> bool:
        spans = sorted(self.runs[name] for name in names)
        return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


def push_lines(push: Callable[[str | None, str], object]) -> tuple[list[str], list[str]]:
    """Eight tasks with LOCK, then eight without; their names."""
    locked, free = [f"L{n}" for n in range(8)], [f"U{n}" for n in range(8)]
    for name in locked:
        push(LOCK, name)
    for name in free:
        push(None, name)
    return locked, free


def check_serialised(timeline: Timeline, locked: list[str], free: list[str]) -> None:
    assert not timeline.overlapping(locked), "two tasks with one lock ran at once"
    assert timeline.started_in_order(locked), "a lock's tasks run in queue order"
    last_locked_end = max(timeline.runs[name][1] for name in locked)
    assert max(timeline.runs[name][1] for name in free) < last_locked_end, (
        "the unlocked tasks were held back behind the lock's line"
    )


def test_a_lock_serialises_its_tasks_while_unlocked_ones_run_beside(clean: Engine) -> None:
    q = sa_pgtq.Queue(clean, name="locks_sync")
    timeline = Timeline()

    @q.handler()
    def step(name: str) -> None:
        with timeline.run(name):
            time.sleep(0.1)

    locked, free = push_lines(lambda lock, name: step.options(lock=lock).push(name))
    worker = sa_pgtq.Worker(q, concurrency=4, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_for(lambda: len(timeline.runs) == 16, 20)
    finally:
        worker.stop()
        thread.join(10)
    check_serialised(timeline, locked, free)


def test_a_lock_serialises_its_tasks_on_an_async_worker(async_url: str) -> None:
    timeline = Timeline()

    async def main() -> None:
        engine = create_async_engine(async_url)
        try:
            q = sa_pgtq.AsyncQueue(engine, name="locks_async")

            @q.handler()
            async def step(name: str) -> None:
                with timeline.run(name):
                    await asyncio.sleep(0.1)

            for lock, name in [(LOCK, f"L{n}") for n in range(8)] + [
                (None, f"U{n}") for n in range(8)
            ]:
                await step.options(lock=lock).push(name)
            worker = sa_pgtq.AsyncWorker(q, concurrency=4, install_signal_handlers=False)
            running = asyncio.ensure_future(worker.run())
            deadline = time.monotonic() + 20
            while len(timeline.runs) < 16 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            worker.stop()
            await asyncio.wait_for(running, 10)
        finally:
            await engine.dispose()

    asyncio.run(main())
    assert len(timeline.runs) == 16
    check_serialised(timeline, [f"L{n}" for n in range(8)], [f"U{n}" for n in range(8)])


def test_two_locks_run_side_by_side(clean: Engine) -> None:
    q = sa_pgtq.Queue(clean, name="locks_two")
    timeline = Timeline()

    @q.handler()
    def step(name: str) -> None:
        with timeline.run(name):
            time.sleep(0.3)

    lines = {lock: [f"{lock}/{n}" for n in range(3)] for lock in ("a", "b")}
    for n in range(3):
        for lock, names in lines.items():
            step.options(lock=lock).push(names[n])
    worker = sa_pgtq.Worker(q, concurrency=2, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_for(lambda: len(timeline.runs) == 6, 20)
    finally:
        worker.stop()
        thread.join(10)
    for names in lines.values():
        assert not timeline.overlapping(names) and timeline.started_in_order(names)
    assert timeline.overlapping(lines["a"] + lines["b"]), "two locks ran side by side"


def test_a_dead_holder_releases_its_lock_when_its_lease_is_rescued(clean: Engine) -> None:
    q = sa_pgtq.Queue(clean, name="locks_dead")

    @q.handler()
    def step(n: int) -> None: ...

    first, second = (step.options(lock=LOCK).push(n) for n in range(2))
    unlocked = step.push(2)
    holder = q.pop(lease=0.2)  # its worker "dies": it is never run, its lease never renewed
    assert holder is not None and holder.id == first
    task = q.pop()
    assert task is not None and task.id == unlocked, "only the unlocked task is handed out"
    assert task.run()
    assert q.pop() is None, "the lock is held"
    time.sleep(0.3)
    assert q.backend.run_atomic(None, gateway.rescue_expired, q.name) == 1
    # The rescued task is queued again behind the others (its run_at is now).
    after = q.pop()
    assert after is not None and after.id == second, "the lock was released"
    assert q.pop() is None, "and taken again"
    assert after.run()
    last = q.pop()
    assert last is not None and last.id == first and last.attempts == 2


@pytest.mark.parametrize("lock", ["", "x" * 10_000, 7, "a\x00b", "\ud800"])
def test_bad_lock_values_are_refused_before_anything_is_written(
    clean: Engine, lock: object
) -> None:
    q = sa_pgtq.Queue(clean, name="locks_bad")

    @q.handler()
    def step() -> None: ...

    with pytest.raises(errors.InvalidInputError):
        step.options(lock=lock).push()  # type: ignore[arg-type]
    assert q.pop() is None


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_burst_run_finishes_a_locks_line(clean: Engine, concurrency: int) -> None:
    # Each holder's end frees the next of its line only once acknowledged, which the
    # claim that finds nothing due cannot yet see: a burst run must not stop there.
    q = sa_pgtq.Queue(clean, name=f"locks_burst_{concurrency}")
    timeline = Timeline()

    @q.handler()
    def step(name: str) -> None:
        with timeline.run(name):
            time.sleep(0.02)

    locked, free = push_lines(lambda lock, name: step.options(lock=lock).push(name))
    sa_pgtq.Worker(q, concurrency=concurrency, install_signal_handlers=False).run(burst=True)
    assert sorted(timeline.runs) == sorted(locked + free)
    assert not timeline.overlapping(locked) and timeline.started_in_order(locked)


def test_an_async_burst_run_finishes_a_locks_line(async_url: str) -> None:
    timeline = Timeline()

    async def main() -> None:
        engine = create_async_engine(async_url)
        try:
            q = sa_pgtq.AsyncQueue(engine, name="locks_async_burst")

            @q.handler()
            async def step(name: str) -> None:
                with timeline.run(name):
                    await asyncio.sleep(0.02)

            await step.push_many([(f"U{n}",) for n in range(4)])
            for n in range(8):
                await step.options(lock=LOCK).push(f"L{n}")
            worker = sa_pgtq.AsyncWorker(q, concurrency=4, install_signal_handlers=False)
            await asyncio.wait_for(worker.run(burst=True), 30)
        finally:
            await engine.dispose()

    asyncio.run(main())
    locked = [f"L{n}" for n in range(8)]
    assert sorted(timeline.runs) == sorted(locked + [f"U{n}" for n in range(4)])
    assert not timeline.overlapping(locked) and timeline.started_in_order(locked)
