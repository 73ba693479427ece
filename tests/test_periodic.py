"""Periodic tasks: `@q.periodic(cron=... | every=...)` on top of `@q.handler()`.

Each tick becomes one job however many workers offer it (a compare-and-set on
`<table>_ticks`), a schedule's first sight only records its tick, ticks missed
while no worker ran make one job, and a handler sees its tick as
`current_job().run_at`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cronsim import CronSim
from helpers import Spawn, at_once, count, engine_for, wait_ready
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

import sa_pgtq
from sa_pgtq import errors, gateway, ticks

UTC = timezone.utc
HOUR = timedelta(hours=1)


def fresh(engine: Engine) -> None:
    """No ticks recorded, no periodic jobs, and an empty table of runs."""
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE sa_pgtq_jobs_ticks"))
        conn.execute(text("DELETE FROM sa_pgtq_jobs WHERE queue = 'periodic'"))
        conn.execute(text("DROP TABLE IF EXISTS periodic_runs"))
        conn.execute(text("CREATE TABLE periodic_runs (tick timestamptz, pid int)"))


@pytest.fixture
def pq(clean: Engine) -> sa_pgtq.Queue:
    fresh(clean)
    return sa_pgtq.Queue(clean, name="periodic")


def recorded(engine: Engine) -> list[datetime]:
    """The ticks the runs recorded, in order."""
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT tick FROM periodic_runs ORDER BY tick")).scalars())


def last_tick(engine: Engine, name: str) -> datetime | None:
    sql = "SELECT last_tick FROM sa_pgtq_jobs_ticks WHERE queue = 'periodic' AND name = :name"
    with engine.connect() as conn:
        return conn.execute(text(sql), {"name": name}).scalar()


def set_last_tick(engine: Engine, name: str, tick: datetime) -> None:
    sql = "INSERT INTO sa_pgtq_jobs_ticks VALUES ('periodic', :name, :tick)"
    with engine.begin() as conn:
        conn.execute(text(sql), {"name": name, "tick": tick})


def record_tick() -> None:
    """A sync handler's body: the tick it runs for, committed with the job."""
    tick = sa_pgtq.current_job().run_at
    sa_pgtq.current_session().execute(text("INSERT INTO periodic_runs VALUES (:t, 0)"), {"t": tick})


def burst(q: sa_pgtq.Queue) -> None:
    sa_pgtq.Worker(q, install_signal_handlers=False).run(burst=True)


# -- refused at decoration ---------------------------------------------------------------


BAD_SCHEDULES: list[tuple[dict[str, Any], type[Exception]]] = [
    ({}, errors.InvalidScheduleError),
    ({"cron": "* * * * *", "every": 5}, errors.InvalidScheduleError),
    ({"every": 0}, errors.InvalidScheduleError),
    ({"every": -1.5}, errors.InvalidScheduleError),
    ({"every": timedelta(0)}, errors.InvalidScheduleError),
    ({"every": float("nan")}, errors.InvalidScheduleError),
    ({"every": float("inf")}, errors.InvalidScheduleError),
    ({"every": "5"}, errors.InvalidScheduleError),
    ({"every": True}, errors.InvalidScheduleError),
    ({"every": 5, "timezone": "Europe/Paris"}, errors.InvalidScheduleError),
    ({"cron": "every minute"}, errors.InvalidScheduleError),
    ({"cron": "61 * * * *"}, errors.InvalidScheduleError),
    ({"cron": "* * * *"}, errors.InvalidScheduleError),
    ({"cron": 5}, errors.InvalidScheduleError),
    ({"cron": "* * * * *", "timezone": "Mars/Olympus_Mons"}, errors.InvalidScheduleError),
    ({"cron": "* * * * *", "timezone": "../etc/passwd"}, errors.InvalidScheduleError),
    ({"cron": "* * * * *", "timezone": None}, errors.InvalidScheduleError),
    ({"every": 5, "kwargs": [1]}, errors.InvalidScheduleError),
    ({"every": 5, "kwargs": {"nope": 1}}, errors.TaskArgumentsError),
    ({"every": 5, "kwargs": {"n": object()}}, errors.DataNotSerializableError),
    ({"every": 5, "kwargs": {"n": float("nan")}}, errors.DataNotSerializableError),
]


@pytest.mark.parametrize(("options", "error"), BAD_SCHEDULES)
def test_bad_schedules_are_refused_before_anything_is_written(
    pq: sa_pgtq.Queue, options: dict[str, Any], error: type[Exception]
) -> None:
    @pq.handler()
    def task(n: int = 0) -> None:
        pass

    with pytest.raises(error) as refused:
        pq.periodic(**options)(task)
    assert isinstance(refused.value, (ValueError, TypeError))
    assert len(pq.schedules) == 0
    burst(pq)
    assert last_tick(pq.engine, "task") is None
    assert count(pq.engine, "SELECT count(*) FROM sa_pgtq_jobs") == 0


def test_a_schedule_goes_on_one_handler_of_its_own_queue_once(pq: sa_pgtq.Queue) -> None:
    other = sa_pgtq.Queue(pq.engine, name="other")

    @other.handler()
    def elsewhere() -> None:
        pass

    def plain() -> None:
        pass

    @pq.periodic(every=60)
    @pq.handler()
    def task() -> None:
        pass

    for target in (plain, elsewhere, task):  # not a handler; another queue's; scheduled
        with pytest.raises(errors.InvalidScheduleError):
            pq.periodic(every=30)(target)  # type: ignore[arg-type]
    assert [schedule.name for schedule in pq.schedules] == ["task"]
    assert task() is None, "the handler comes back unchanged"


def test_cron_without_cronsim_says_what_to_install(
    pq: sa_pgtq.Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cronsim", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install sa_pgtq\[cron\]"):
        pq.periodic(cron="*/5 * * * *")
    pq.periodic(every=5)  # needs nothing


# -- tick arithmetic -----------------------------------------------------------------------


def test_every_ticks_are_multiples_of_the_interval_since_the_epoch() -> None:
    every = ticks.every(timedelta(seconds=7))
    now = datetime(2024, 5, 17, 10, 11, 12, 345678, tzinfo=UTC)
    latest, following = every.latest(now), every.following(now)
    assert latest <= now < following == latest + timedelta(seconds=7)
    assert (latest - ticks.EPOCH) % timedelta(seconds=7) == timedelta(0)
    assert every.latest(latest) == latest, "a tick falling on now is due now"
    assert ticks.every(0.25).following(now) == datetime(2024, 5, 17, 10, 11, 12, 500000, UTC)


def test_cron_ticks_are_in_the_schedules_time_zone() -> None:
    weekdays_at_nine = ticks.cron("0 9 * * 1-5", "America/New_York")
    monday_8am_edt = datetime(2024, 3, 11, 12, 0, tzinfo=UTC)  # the day after DST began
    assert weekdays_at_nine.latest(monday_8am_edt) == datetime(2024, 3, 8, 14, 0, tzinfo=UTC)
    assert weekdays_at_nine.following(monday_8am_edt) == datetime(2024, 3, 11, 13, 0, tzinfo=UTC)
    assert ticks.cron("0 9 * * *", "UTC").following(monday_8am_edt).hour == 9


@pytest.mark.parametrize(
    ("expression", "zone", "start"),
    [
        ("30 2 * * *", "Europe/Paris", datetime(2024, 3, 25, tzinfo=UTC)),  # 02:30 skipped
        ("30 1 * * *", "America/New_York", datetime(2024, 10, 28, tzinfo=UTC)),  # twice
        ("*/15 * * * *", "Europe/Paris", datetime(2024, 10, 26, 22, tzinfo=UTC)),
        ("0 0 * * MON", "Asia/Kolkata", datetime(2024, 1, 1, tzinfo=UTC)),
        ("*/20 * * * * *", "Australia/Lord_Howe", datetime(2024, 4, 6, 14, 45, tzinfo=UTC)),
    ],
)
def test_cron_ticks_agree_with_cronsim_going_forward(
    expression: str, zone: str, start: datetime
) -> None:
    schedule = ticks.cron(expression, zone)
    forward = CronSim(expression, start.astimezone(schedule.zone))
    expected = [next(forward).astimezone(UTC) for _ in range(40)]
    for tick, following in itertools.pairwise(expected):
        for now in (tick, tick + (following - tick) / 2, following - timedelta(microseconds=1)):
            assert (schedule.latest(now), schedule.following(now)) == (tick, following)


# -- exactly once, in the database -----------------------------------------------------


def test_each_tick_makes_one_job_however_many_workers_offer_it(pq: sa_pgtq.Queue) -> None:
    backend = pq.backend
    data = '{"args":[],"kwargs":{"n":1}}'
    first, second = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, 1, tzinfo=UTC)

    def offer_together(tick: datetime, workers: int = 8) -> list[int | None]:
        def offer(_: int) -> int | None:
            return backend.run(None, gateway.insert_tick_job, pq.name, "job", tick, data)

        return at_once(workers, offer)

    assert offer_together(first) == [None] * 8, "first sight records the tick, runs nothing"
    won = [job_id for job_id in offer_together(second) if job_id is not None]
    assert len(won) == 1
    assert offer_together(first) + offer_together(second) == [None] * 16, "not new"
    assert last_tick(pq.engine, "job") == second
    with pq.engine.connect() as conn:
        job = conn.execute(text("SELECT * FROM sa_pgtq_jobs")).mappings().one()
    assert (job["id"], job["kind"], job["tag"], job["state"]) == (won[0], "task", "job", "queued")
    assert (job["run_at"], job["data"]) == (second, {"args": [], "kwargs": {"n": 1}})


def test_first_sight_records_the_tick_without_running_it(pq: sa_pgtq.Queue) -> None:
    hourly = pq.periodic(every=HOUR)(pq.handler()(record_tick))
    burst(pq)
    assert recorded(pq.engine) == []
    assert last_tick(pq.engine, hourly.name) == ticks.every(HOUR).latest(datetime.now(UTC))


def test_ticks_missed_while_no_worker_ran_run_once(pq: sa_pgtq.Queue) -> None:
    hourly = pq.periodic(every=HOUR)(pq.handler()(record_tick))
    now = datetime.now(UTC)
    set_last_tick(pq.engine, hourly.name, ticks.every(HOUR).latest(now) - 5 * HOUR)
    burst(pq)
    burst(pq)  # the tick was taken: nothing more
    runs = recorded(pq.engine)
    assert len(runs) == 1, "one job for the five ticks missed"
    assert runs == [last_tick(pq.engine, hourly.name)], "run_at is the tick"
    assert runs[0] > now - HOUR and (runs[0] - ticks.EPOCH) % HOUR == timedelta(0)


def test_async_handlers_see_their_tick_as_current_job_run_at(async_url: str, db_url: str) -> None:
    sync_engine = create_engine(db_url)
    fresh(sync_engine)
    seen: list[sa_pgtq.JobMixin] = []

    async def main() -> None:
        engine = create_async_engine(async_url)
        q = sa_pgtq.AsyncQueue(engine, name="periodic")

        async def nightly(zone: str) -> None:
            seen.append(sa_pgtq.current_job())

        handler = q.handler()(nightly)
        assert (
            q.periodic(cron="0 0 * * *", timezone="Asia/Tokyo", kwargs={"zone": "JST"})(handler)
            is handler
        )
        set_last_tick(sync_engine, "nightly", datetime(2024, 1, 1, tzinfo=UTC))
        try:
            await sa_pgtq.AsyncWorker(q, install_signal_handlers=False).run(burst=True)
        finally:
            await engine.dispose()

    asyncio.run(main())
    tick = last_tick(sync_engine, "nightly")
    sync_engine.dispose()
    assert tick is not None and tick.astimezone(ticks.time_zone("Asia/Tokyo")).hour == 0
    [job] = seen
    assert (job.run_at, job.queue, job.kind, job.tag, job.state) == (
        tick,
        "periodic",
        "task",
        "nightly",
        "running",
    )
    assert (job.data, job.attempts, job.priority) == ({"args": [], "kwargs": {"zone": "JST"}}, 1, 0)


def test_a_cron_schedule_with_seconds_runs_each_tick_in_real_time(pq: sa_pgtq.Queue) -> None:
    pq.periodic(cron="* * * * * *", timezone="Europe/Paris")(pq.handler()(record_tick))
    worker = sa_pgtq.Worker(pq, install_signal_handlers=False, poll_interval=0.2)
    thread = threading.Thread(target=worker.run)
    thread.start()
    time.sleep(3.3)
    stopping = time.monotonic()
    worker.stop()
    thread.join(10)
    assert time.monotonic() - stopping < 1.5, "the scheduler's sleep ends at stop()"
    runs = recorded(pq.engine)
    assert len(runs) >= 2, "the first sight's tick is not run; the next ones are"
    assert all(tick.microsecond == 0 for tick in runs)
    assert {b - a for a, b in itertools.pairwise(runs)} == {timedelta(seconds=1)}


# -- worker processes ----------------------------------------------------------------------


@pytest.fixture
def cli_db(db_url: str) -> Iterator[Engine]:
    engine = engine_for(db_url, "psycopg2")
    sa_pgtq.Queue(engine).create_table()
    fresh(engine)
    yield engine
    engine.dispose()


def three_workers_for_nine_seconds(engine: Engine, start: Callable[[], Any]) -> None:
    """Three workers run periodicapp's 2-second task for 9 s: each tick is recorded once."""
    workers = [start() for _ in range(3)]
    for worker in workers:
        wait_ready(worker)
    began = datetime.now(UTC)
    time.sleep(9)
    ended = datetime.now(UTC)
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    assert [worker.wait(30) for worker in workers] == [0, 0, 0]
    runs = recorded(engine)
    assert len(runs) == len(set(runs)), "no tick ran twice"
    assert {b - a for a, b in itertools.pairwise(runs)} == {timedelta(seconds=2)}, "contiguous"
    # Every tick while all three ran (the last one may be left to the next worker).
    every = ticks.every(2)
    expected, tick = [], every.following(began)
    while tick <= ended - timedelta(seconds=1):
        expected.append(tick)
        tick += timedelta(seconds=2)
    assert len(expected) >= 4
    assert set(expected) <= set(runs), f"{expected} not all in {runs}"


@pytest.mark.slow
def test_three_cli_workers_run_each_tick_once(cli_db: Engine, spawn: Spawn, db_url: str) -> None:
    three_workers_for_nine_seconds(cli_db, lambda: spawn(db_url, app="periodicapp:q"))


@pytest.mark.slow
def test_three_async_cli_workers_run_each_tick_once(
    cli_db: Engine, spawn: Spawn, async_url: str
) -> None:
    start = functools.partial(spawn, async_url, app="async_periodicapp:q")
    three_workers_for_nine_seconds(cli_db, start)
