"""dequeue and friends: transactional hand-out, failure accounting, concurrency, cancel."""

from __future__ import annotations

import pytest
from helpers import dequeue_concurrently, fresh_tables
from sqlalchemy import Column, Engine, Integer, MetaData, Table, func, select
from sqlalchemy.orm import Session

import sa_pgtq
from sa_pgtq.models import FAILED

done = Table("done_rows", MetaData(), Column("n", Integer))


def test_empty_and_unknown_tags_are_normal(q: sa_pgtq.Queue) -> None:
    with q.dequeue("nothing") as data:
        assert data is None
    with q.dequeue_item("nothing") as job:
        assert job is None
    assert q.dequeue_immediate("nothing") is None
    assert q.dequeue_item_immediate("nothing") is None
    assert q.count("nothing") == 0 and q.list("nothing") == []


def test_success_removes_the_job(q: sa_pgtq.Queue) -> None:
    q.enqueue("t", {"a": 1})
    with q.dequeue("t") as data:
        assert data == {"a": 1}
    assert q.count("t") == 0


def test_failure_keeps_the_job_counts_it_and_moves_it_to_the_tail(q: sa_pgtq.Queue) -> None:
    first, second = q.enqueue("t", "first"), q.enqueue("t", "second")
    with pytest.raises(ZeroDivisionError), q.dequeue("t") as data:
        assert data == "first"
        raise ZeroDivisionError("the handler failed")
    jobs = q.list("t")
    assert [j.id for j in jobs] == [second, first]
    failed = jobs[1]
    assert failed.attempts == 1
    assert failed.last_error is not None and "ZeroDivisionError" in failed.last_error
    assert jobs[0].attempts == 0, "the error counter is per job, not per queue"


def test_the_row_is_locked_while_the_block_runs(q: sa_pgtq.Queue) -> None:
    q.enqueue("t", "only")
    with q.dequeue("t") as data:
        assert data == "only"
        with q.dequeue("t") as other:
            assert other is None, "a locked job is skipped, not handed out twice"
        assert q.cancel(q.list("t")[0].id) is False, "a job being worked on cannot be cancelled"
    assert q.count("t") == 0


def test_dequeue_item_yields_the_whole_row(q: sa_pgtq.Queue) -> None:
    job_id = q.enqueue("t", [1, 2], priority=3)
    with q.dequeue_item("t") as job:
        assert isinstance(job, sa_pgtq.Job)
        assert (job.id, job.tag, job.data, job.priority, job.queue) == (
            job_id,
            "t",
            [1, 2],
            3,
            "default",
        )
    assert job.attempts == 0  # still readable after the block
    assert q.count("t") == 0


def test_immediate_dequeue_removes_at_once(q: sa_pgtq.Queue) -> None:
    q.enqueue_many("t", ["a", "b"])
    assert q.dequeue_immediate("t") == "a"
    job = q.dequeue_item_immediate("t")
    assert job is not None and job.data == "b"
    assert q.count("t") == 0


def test_in_callers_session_a_failure_undoes_only_the_block(
    q: sa_pgtq.Queue, clean: Engine
) -> None:
    fresh_tables(clean, done)
    q.enqueue("t", "job")
    with Session(clean) as s, s.begin():
        s.execute(done.insert().values(n=1))  # the caller's own work, before the dequeue
        with pytest.raises(KeyError), q.dequeue("t", session=s) as data:
            assert data == "job"
            s.execute(done.insert().values(n=2))  # undone with the failed block
            raise KeyError("boom")
    with clean.connect() as conn:
        assert conn.execute(select(done.c.n)).scalars().all() == [1]
    (job,) = q.list("t")
    assert job.attempts == 1


def test_in_callers_session_success_commits_with_the_caller(
    q: sa_pgtq.Queue, clean: Engine
) -> None:
    q.enqueue("t", "job")
    with Session(clean) as s:
        with q.dequeue("t", session=s) as data:
            assert data == "job"
        assert q.count("t") == 1, "not removed for others until the caller commits"
        s.commit()
    assert q.count("t") == 0


def test_excepted_times_to_ignore_keeps_poison_messages_visible(clean: Engine) -> None:
    q = sa_pgtq.Queue(clean, excepted_times_to_ignore=2)
    job_id = q.enqueue("t", "poison")
    for _ in range(2):
        with pytest.raises(ValueError), q.dequeue("t") as data:
            assert data == "poison"
            raise ValueError("cannot handle")
    with q.dequeue("t") as data:
        assert data is None, "failed 2 times: no longer handed out, as in q4pg"
    assert q.count("t") == 0
    assert [job.id for job in q.failed()] == [job_id]
    with Session(clean) as s:
        job = s.get(sa_pgtq.Job, job_id)
        assert job is not None, "ignored, not deleted"
        assert (job.state, job.attempts) == (FAILED, 2)
        assert job.last_error is not None and "cannot handle" in job.last_error


def test_zero_ignore_threshold_hands_out_forever(q: sa_pgtq.Queue) -> None:
    q.enqueue("t", "flaky")
    for _ in range(5):
        with pytest.raises(ValueError), q.dequeue("t"):
            raise ValueError
    assert q.list("t")[0].attempts == 5


def test_queues_and_tags_are_separate(clean: Engine) -> None:
    a, b = sa_pgtq.Queue(clean, name="a"), sa_pgtq.Queue(clean, name="b")
    a.enqueue("t", "for a")
    assert b.dequeue_immediate("t") is None and b.count("t") == 0
    assert a.dequeue_immediate("other") is None
    assert a.dequeue_immediate("t") == "for a"


def test_cancel(q: sa_pgtq.Queue, clean: Engine) -> None:
    keep, drop = q.enqueue("t", "keep"), q.enqueue("t", "drop")
    assert q.cancel(drop) is True
    assert q.cancel(drop) is False, "already gone"
    assert q.cancel(10**12) is False
    assert sa_pgtq.Queue(clean, name="other").cancel(keep) is False, "another queue's job"
    assert [j.id for j in q.list("t")] == [keep]
    with pytest.raises(ValueError):
        q.cancel("1")  # type: ignore[arg-type]


def test_concurrent_dequeuers_never_share_a_job(q: sa_pgtq.Queue, clean: Engine) -> None:
    n = 400
    q.enqueue_many("t", list(range(n)))
    seen = dequeue_concurrently(q, "t", 6)
    assert sorted(seen) == list(range(n))
    with clean.connect() as conn:
        assert conn.execute(select(func.count()).select_from(sa_pgtq.Job)).scalar_one() == 0
