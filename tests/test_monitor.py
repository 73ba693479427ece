"""`Monitor`: what operators' tools read and do, across every queue of a table."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

import sa_pgtq
from sa_pgtq import monitor as monitor_module
from sa_pgtq.errors import InvalidInputError
from sa_pgtq.monitor import Count, Monitor

FAILING = 1  # attempts before a task of `fail` is kept as failed


def _queues(engine: Engine, retention: float | None = None) -> dict[str, sa_pgtq.Queue]:
    return {
        name: sa_pgtq.Queue(engine, name=name, retention=retention)
        for name in ("emails", "reports", "idle")
    }


def _fail_one(q: sa_pgtq.Queue) -> int:
    @q.handler(max_attempts=FAILING)
    def fail() -> None:
        raise RuntimeError("the report broke")

    job_id = fail.push()
    sa_pgtq.Worker(q, install_signal_handlers=False).run(burst=True)
    return job_id


def test_queues_show_counts_by_state_the_longest_wait_and_the_pause(clean: Engine) -> None:
    queues = _queues(clean, retention=3600)
    emails, reports, idle = queues.values()
    with clean.begin() as conn:  # two messages that have waited a minute and ten minutes
        for minutes, tag, priority in ((1, "a", 5), (10, "b", 0)):
            emails.enqueue(tag, {}, conn, priority=priority)
            conn.execute(
                text(
                    "UPDATE sa_pgtq_jobs SET run_at = now() - make_interval(mins => :m) "
                    "WHERE id = (SELECT max(id) FROM sa_pgtq_jobs)"
                ),
                {"m": minutes},
            )
    emails.enqueue("later", {}, delay=3600)  # waiting, but not yet due: not a wait
    failed_id = _fail_one(reports)

    @reports.handler()
    def ok() -> int:
        return 1

    for _ in range(3):
        ok.push()
    sa_pgtq.Worker(reports, install_signal_handlers=False).run(burst=True)
    ok.push()
    ok.options(delay=600).push()
    idle.pause()

    stats = {s.name: s for s in Monitor(clean).queues()}
    assert list(stats) == ["emails", "idle", "reports"]
    assert stats["emails"].counts["queued"] == Count(3)
    assert timedelta(minutes=10) <= stats["emails"].oldest_waiting < timedelta(minutes=11)
    assert stats["reports"].counts == {
        "queued": Count(2),
        "running": Count(0),
        "failed": Count(1),
        "succeeded": Count(3),
        "cancelled": Count(0),
    }
    assert stats["reports"].oldest_waiting is not None
    assert stats["reports"].oldest_waiting < timedelta(minutes=1)
    assert stats["idle"].paused and not stats["emails"].paused
    assert stats["idle"].oldest_waiting is None and stats["idle"].counts["queued"] == Count(0)
    assert Monitor(clean).job(failed_id).state == "failed"  # type: ignore[union-attr]


def test_a_task_of_low_priority_waiting_longest_sets_the_wait(q: sa_pgtq.Queue) -> None:
    @q.handler()
    def work() -> None: ...

    old = datetime.now(timezone.utc) - timedelta(hours=2)
    work.options(run_at=old, priority=-5).push()
    for priority in (0, 3, 9):
        work.options(priority=priority).push()
    (stats,) = Monitor(q.engine).queues()
    assert timedelta(hours=2) <= stats.oldest_waiting < timedelta(hours=2, minutes=1)  # type: ignore[operator]


def test_counts_above_the_cap_are_the_planners_estimates(
    q: sa_pgtq.Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    q.enqueue_many("t", range(300))
    with q.engine.begin() as conn:
        conn.execute(text("ANALYZE sa_pgtq_jobs"))
    assert Monitor(q.engine).queues()[0].counts["queued"] == Count(300)
    monkeypatch.setattr(monitor_module, "COUNT_CAP", 100)
    counted = Monitor(q.engine).queues()[0].counts["queued"]
    assert counted.estimated and 100 < counted.value < 3000
    assert str(counted).startswith("≈")


def test_jobs_filter_and_page_by_keyset(clean: Engine) -> None:
    emails, reports, _ = _queues(clean).values()
    ids = emails.enqueue_many("send", range(5)) + emails.enqueue_many("other", range(2))
    failed_id = _fail_one(reports)
    monitor = Monitor(clean)
    everything = monitor.jobs()
    assert [job.id for job in everything] == sorted([*ids, failed_id], reverse=True)
    first = monitor.jobs(queue="emails", tag="send", limit=2)
    second = monitor.jobs(queue="emails", tag="send", limit=2, before=first[-1].id)
    third = monitor.jobs(queue="emails", tag="send", limit=2, before=second[-1].id)
    assert [j.id for j in first + second + third] == list(reversed(ids[:5]))
    assert [j.data for j in third] == [0]
    assert [j.id for j in monitor.jobs(state="failed")] == [failed_id]
    assert monitor.jobs(state="queued", queue="reports") == []
    assert len(monitor.jobs(state="queued")) == 7


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"state": "done"}, "state must be one of"),
        ({"limit": 0}, "limit"),
        ({"limit": 5000}, "at most"),
        ({"before": "x"}, "job id"),
        ({"queue": ""}, "queue name"),
    ],
)
def test_bad_filters_are_refused(clean: Engine, filters: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Monitor(clean).jobs(**filters)  # type: ignore[arg-type]


def test_actions_act_on_the_jobs_own_queue(clean: Engine) -> None:
    emails, reports, _ = _queues(clean).values()
    failed_id = _fail_one(reports)
    waiting = emails.enqueue("send", 1)
    monitor = Monitor(clean)
    assert monitor.retry(failed_id) and reports.job(failed_id).state == "queued"  # type: ignore[union-attr]
    assert not monitor.retry(failed_id), "it is no longer failed"
    assert monitor.cancel(waiting) and emails.job(waiting) is None, "no retention: deleted"
    assert not monitor.cancel(waiting) and not monitor.abort(waiting) and not monitor.retry(10**9)
    assert monitor.abort(failed_id) is True and reports.job(failed_id) is None
    monitor.pause("emails")
    assert emails.is_paused() and not reports.is_paused()
    monitor.resume("emails")
    assert not emails.is_paused()


def test_a_queues_retention_keeps_what_its_monitor_cancels(clean: Engine) -> None:
    kept = sa_pgtq.Queue(clean, retention=3600)
    job_id = kept.enqueue("t", 1)
    assert Monitor(kept).cancel(job_id)
    assert kept.job(job_id).state == "cancelled"  # type: ignore[union-attr]


def test_throughput_counts_finished_jobs_per_bucket(clean: Engine) -> None:
    q = sa_pgtq.Queue(clean, retention=3600)

    @q.handler()
    def ok() -> None: ...

    ok.push_many([()] * 4)
    sa_pgtq.Worker(q, install_signal_handlers=False).run(burst=True)
    _fail_one(q)
    buckets = Monitor(q).throughput(window=timedelta(minutes=10), buckets=10)
    assert len(buckets) == 10 and buckets[0].start < buckets[-1].start
    assert sum(b.succeeded for b in buckets) == 4 and sum(b.failed for b in buckets) == 1
    assert (
        buckets[-1].start <= datetime.now(timezone.utc) < buckets[-1].start + timedelta(minutes=2)
    )


def test_reads_join_the_callers_session(clean: Engine) -> None:
    q = sa_pgtq.Queue(clean)
    with Session(clean) as session:
        job_id = q.enqueue("t", 1, session)
        monitor = Monitor(clean)
        assert monitor.job(job_id, session) is not None
        assert monitor.job(job_id) is None, "not committed"
        assert [s.name for s in monitor.queues(session)] == ["default"]


def test_an_async_queue_or_engine_is_monitored_through_a_sync_engine(async_url: str) -> None:
    # What PgBouncer setups put in an asyncpg URL, which psycopg2 would refuse.
    options = {
        "asyncpg": "prepared_statement_cache_size=0&ssl=disable",
        "psycopg": "sslmode=disable",
    }
    url = make_url(async_url)
    url = url.update_query_string(options[url.drivername.split("+")[1]], append=True)

    async def scenario() -> None:
        aq = sa_pgtq.AsyncQueue(url, name="a")
        job_id = await aq.enqueue("t", {"x": 1})
        for monitor in (Monitor(aq), Monitor(aq.engine)):
            assert monitor.job(job_id).data == {"x": 1}  # type: ignore[union-attr]
            assert [s.name for s in monitor.queues()] == ["a"]
            monitor.engine.dispose()
        await aq.engine.dispose()

    asyncio.run(scenario())
