"""Unique jobs: while a job with a key is queued or running, pushing the key writes nothing."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from helpers import count, fresh_tables
from sqlalchemy import Column, Engine, Integer, MetaData, Table, insert, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import sa_pgtq
from sa_pgtq import errors

orders = Table("unique_orders", MetaData(), Column("id", Integer, primary_key=True))

JOBS = "SELECT count(*) FROM sa_pgtq_jobs"


def burst(q: sa_pgtq.Queue) -> None:
    sa_pgtq.Worker(q, install_signal_handlers=False).run(burst=True)


def test_a_key_held_by_a_queued_message_returns_its_id(q: sa_pgtq.Queue, clean: Engine) -> None:
    first = q.enqueue("email", {"to": 7}, unique_key="order-7")
    assert q.enqueue("email", {"to": "other"}, unique_key="order-7") == first
    assert q.enqueue("email", {"to": 8}, unique_key="order-8") != first
    assert count(clean, JOBS) == 2
    assert q.dequeue_immediate("email") == {"to": 7}, "the first push's data, untouched"
    again = q.enqueue("email", {"to": 7}, unique_key="order-7")
    assert again != first, "a finished job frees its key"


def test_a_task_key_is_held_while_queued_and_running_then_free(
    q: sa_pgtq.Queue, clean: Engine
) -> None:
    runs: list[int] = []
    seen: list[int] = []

    @q.handler()
    def charge(amount: int) -> None:
        runs.append(amount)
        # Running: the key is still taken.
        seen.append(charge.options(unique_key="charge:1").push(999))

    first = charge.options(unique_key="charge:1").push(5)
    assert charge.options(unique_key="charge:1").push(6) == first
    burst(q)
    assert runs == [5] and seen == [first]
    assert count(clean, JOBS) == 0
    assert charge.options(unique_key="charge:1").push(7) != first


def test_a_failed_job_frees_its_key(q: sa_pgtq.Queue, clean: Engine) -> None:
    @q.handler(max_attempts=1)
    def boom() -> None:
        raise RuntimeError("no")

    failed = boom.options(unique_key="k").push()
    burst(q)
    assert [job.id for job in q.failed()] == [failed]
    assert boom.options(unique_key="k").push() != failed


def test_requeue_leaves_a_failed_job_whose_key_is_held_again(
    q: sa_pgtq.Queue, clean: Engine
) -> None:
    @q.handler(max_attempts=1)
    def boom(n: int) -> None:
        raise RuntimeError("no")

    first = boom.options(unique_key="k").push(1)
    burst(q)
    second = boom.options(unique_key="k").push(2)
    burst(q)  # two failed jobs with the key
    holder = boom.options(unique_key="k").push(3)
    assert q.requeue_failed() == 0, "the key is held: both stay failed"
    assert q.cancel(holder)
    assert q.requeue_failed() == 1, "of the two, the oldest comes back"
    assert [job.id for job in q.failed()] == [second]
    assert q.job(first).state == "queued"  # type: ignore[union-attr]


def test_eight_concurrent_transactions_make_one_job_and_keep_their_own_rows(
    q: sa_pgtq.Queue, clean: Engine
) -> None:
    fresh_tables(clean, orders)

    @q.handler()
    def ship(order: int) -> None: ...

    start = threading.Barrier(8, timeout=10)
    ids: list[int] = []
    errors_seen: list[BaseException] = []

    def push(n: int) -> None:
        try:
            with Session(clean) as s, s.begin():
                s.execute(insert(orders).values(id=n))
                start.wait()
                ids.append(ship.options(session=s, unique_key="ship:1").push(n))
        except BaseException as exc:
            errors_seen.append(exc)

    threads = [threading.Thread(target=push, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors_seen == []
    assert len(set(ids)) == 1 and len(ids) == 8
    assert count(clean, JOBS) == 1
    assert count(clean, "SELECT count(*) FROM unique_orders") == 8, "no transaction poisoned"


def test_a_holder_rolled_back_frees_the_key_for_the_waiting_push(
    q: sa_pgtq.Queue, clean: Engine
) -> None:
    holder = Session(clean)
    holder.begin()
    q.enqueue("t", "rolled back", holder, unique_key="k")
    result: list[int] = []
    waiting = threading.Thread(target=lambda: result.append(q.enqueue("t", "kept", unique_key="k")))
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive(), "waits for the holder's transaction to end"
    holder.rollback()
    holder.close()
    waiting.join(10)
    assert q.list("t")[0].id == result[0]
    assert q.dequeue_immediate("t") == "kept"


def test_batches_honour_keys_per_item(q: sa_pgtq.Queue, clean: Engine) -> None:
    held = q.enqueue("t", "held", unique_key="a")
    ids = q.enqueue_many("t", ["x", "y", "z", "w", "v"], unique_keys=["a", None, "b", "b", None])
    assert ids[0] == held, "taken before the batch"
    assert ids[2] == ids[3], "taken earlier in the batch"
    assert len({ids[1], ids[2], ids[4], held}) == 4
    assert [job.data for job in q.list("t")] == ["held", "y", "z", "v"]

    @q.handler()
    def add(a: int, b: int) -> int:
        return a + b

    pushed = add.push_many([(1, 2), (3, 4), (5, 6)], unique_keys=["s", "s", None])
    assert pushed[0] == pushed[1] != pushed[2]
    assert add.push_many([(7, 8)], unique_keys=["s"]) == [pushed[0]]
    assert count(clean, "SELECT count(*) FROM sa_pgtq_jobs WHERE kind = 'task'") == 2


def test_a_keyed_batch_split_over_several_statements(
    q: sa_pgtq.Queue, clean: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sa_pgtq.validation, "BATCH_CHARS", 20)
    datas = [f"payload-{n}" for n in range(6)]
    ids = q.enqueue_many("t", datas, unique_keys=["k0", "k1", "k0", None, "k1", "k5"])
    assert ids[0] == ids[2] and ids[1] == ids[4]
    assert [job.data for job in q.list("t")] == ["payload-0", "payload-1", "payload-3", "payload-5"]


BAD: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("enqueue", {"unique_key": ""}, errors.InvalidTagError),
    ("enqueue", {"unique_key": 7}, errors.InvalidTagError),
    ("enqueue", {"unique_key": "a\x00b"}, errors.InvalidTagError),
    ("enqueue_many", {"unique_keys": ["a"]}, errors.InvalidInputError),  # two datas, one key
    ("enqueue_many", {"unique_keys": "ab"}, errors.InvalidBatchError),
    ("enqueue_many", {"unique_keys": ["a", 3]}, errors.InvalidTagError),
]


@pytest.mark.parametrize(("operation", "options", "error"), BAD)
def test_bad_keys_are_refused_before_anything_is_written(
    q: sa_pgtq.Queue, clean: Engine, operation: str, options: dict[str, Any], error: type
) -> None:
    data: Any = "x" if operation == "enqueue" else ["x", "y"]
    with pytest.raises(error):
        getattr(q, operation)("t", data, **options)
    assert issubclass(error, (ValueError, TypeError))
    assert count(clean, JOBS) == 0


def test_bad_task_keys_and_locks_are_refused(q: sa_pgtq.Queue, clean: Engine) -> None:
    @q.handler()
    def noop(n: int) -> None: ...

    with pytest.raises(errors.InvalidTagError):
        noop.options(unique_key="")
    with pytest.raises(errors.InvalidTagError):
        noop.options(lock=3)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidInputError, match="one per call"):
        noop.options(unique_key="k").push_many([(1,), (2,)])
    with pytest.raises(errors.InvalidInputError, match="one per call"):
        noop.options(unique_key="k").push_many([(1,)], unique_keys=["x"])
    with pytest.raises(errors.InvalidInputError):
        noop.push_many([(1,), (2,)], unique_keys=["k"])
    assert count(clean, JOBS) == 0


def test_async_unique_pushes_race_to_one_job(async_url: str) -> None:
    async def main() -> tuple[list[int], int, int]:
        engine = create_async_engine(async_url)
        try:
            q = sa_pgtq.AsyncQueue(engine, name="aio")

            @q.handler()
            async def ship(order: int) -> None: ...

            async def push(n: int) -> int:
                async with AsyncSession(engine) as s, s.begin():
                    return await ship.options(session=s, unique_key="ship:1").push(n)

            ids = list(await asyncio.gather(*(push(n) for n in range(8))))
            message = await q.enqueue("t", 1, unique_key="m")
            again = await q.enqueue("t", 2, unique_key="m")
            many = await q.enqueue_many("t", [3, 4], unique_keys=["m", "n"])
            many_tasks = await ship.push_many([(1,), (2,)], unique_keys=["ship:1", None])
            assert message == again == many[0] and many_tasks[0] == ids[0]
            async with engine.connect() as conn:
                jobs = (await conn.execute(text(JOBS))).scalar_one()
            return ids, jobs, many_tasks[1]
        finally:
            await engine.dispose()

    ids, jobs, _ = asyncio.run(main())
    assert len(set(ids)) == 1
    assert jobs == 4, "ship:1, the message m, the message n and the unkeyed task"
