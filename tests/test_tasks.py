"""The task layer in one process: handlers, push, pop, the worker's outcomes."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from helpers import BAD_CALLS, fresh_tables
from sqlalchemy import Column, Engine, Integer, MetaData, Table, select, text
from sqlalchemy.orm import Session

import sa_pgtq
from sa_pgtq import errors, gateway
from sa_pgtq.models import FAILED
from sa_pgtq.statements import statements_for
from sa_pgtq.tasks import Finished

effects = Table("task_effects", MetaData(), Column("n", Integer))


@pytest.fixture
def tq(clean: Engine) -> sa_pgtq.Queue:
    fresh_tables(clean, effects)
    return sa_pgtq.Queue(clean, name="test_queue")


def effect_rows(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(select(effects.c.n).order_by(effects.c.n)).scalars())


def burst(q: sa_pgtq.Queue) -> None:
    sa_pgtq.Worker(q, install_signal_handlers=False).run(burst=True)


def test_handler_call_push_and_pop(tq: sa_pgtq.Queue) -> None:
    @tq.handler()
    def add_numbers(a: int, b: int) -> int:
        return a + b

    assert add_numbers(2, 3) == 5
    job_id = add_numbers.push(2, b=3)
    task = tq.pop()
    assert task is not None
    assert (task.id, task.name, task.args, task.kwargs, task.attempts) == (
        job_id,
        "add_numbers",
        (2,),
        {"b": 3},
        1,
    )
    assert tq.pop() is None
    assert task.run() is True
    assert tq.failed() == [] and tq.pop() is None


def test_push_many_tuples_and_dicts(tq: sa_pgtq.Queue, clean: Engine) -> None:
    @tq.handler(name="sum_task")
    def total(a: int, b: int) -> None:
        sa_pgtq.current_session().execute(effects.insert().values(n=a + b))

    ids = total.push_many([(2, 3), (4, 5), {"a": 1, "b": 2}])
    assert len(ids) == 3
    burst(tq)
    assert effect_rows(clean) == [3, 5, 9]


def test_options_join_the_callers_transaction(tq: sa_pgtq.Queue, clean: Engine) -> None:
    @tq.handler()
    def remember(n: int) -> None:
        sa_pgtq.current_session().execute(effects.insert().values(n=n))

    with pytest.raises(RuntimeError), Session(clean) as s, s.begin():
        remember.options(session=s, priority=5).push(1)
        remember.options(session=s).push_many([(2,)])
        raise RuntimeError("rolled back")
    assert tq.pop() is None
    with Session(clean) as s, s.begin():
        remember.options(session=s).push(3)
    burst(tq)
    assert effect_rows(clean) == [3]


def test_no_parameter_name_is_reserved(tq: sa_pgtq.Queue, clean: Engine) -> None:
    @tq.handler()
    def odd(session: int, delay: int, priority: int, run_at: int) -> None:
        sa_pgtq.current_session().execute(
            effects.insert().values(n=session + delay + priority + run_at)
        )

    odd.options(delay=0).push(1, 2, priority=3, run_at=4)
    burst(tq)
    assert effect_rows(clean) == [10]


@pytest.mark.parametrize(
    ("call", "error"),
    BAD_CALLS,
)
def test_bad_arguments_raise_before_anything_is_written(
    tq: sa_pgtq.Queue, call: object, error: type
) -> None:
    @tq.handler()
    def one(x: object) -> None: ...

    if isinstance(call, (tuple, dict)):
        args, kwargs = (call, {}) if isinstance(call, tuple) else ((), call)
        with pytest.raises(error):
            one.push(*args, **kwargs)
    with pytest.raises(error):
        one.push_many([(1,), call])  # type: ignore[list-item]  # the good call is not written
    assert tq.pop() is None


def test_duplicate_handler_names_are_rejected(tq: sa_pgtq.Queue) -> None:
    @tq.handler()
    def job() -> None: ...

    with pytest.raises(errors.DuplicateHandlerError):

        @tq.handler(name="job")
        def other() -> None: ...

    with pytest.raises(errors.InvalidInputError):
        tq.handler(max_attempts=0)


def test_context_outside_a_worker_is_a_clear_error() -> None:
    for ask in (sa_pgtq.current_session, sa_pgtq.current_job, sa_pgtq.current_task):
        with pytest.raises(errors.NoWorkerContextError):
            ask()


def test_current_job_is_the_running_row(tq: sa_pgtq.Queue, clean: Engine) -> None:
    seen: list[tuple[int, str, str]] = []

    @tq.handler()
    def inspect_me() -> None:
        job = sa_pgtq.current_job()
        seen.append((job.id, job.state, sa_pgtq.current_task().name))

    job_id = inspect_me.push()
    burst(tq)
    assert seen == [(job_id, "running", "inspect_me")]


def test_failures_retry_with_backoff_then_stay_failed(tq: sa_pgtq.Queue, clean: Engine) -> None:
    calls: list[float] = []

    @tq.handler(max_attempts=3, retry_delay=0.2)
    def flaky() -> None:
        calls.append(time.monotonic())
        sa_pgtq.current_session().execute(effects.insert().values(n=len(calls)))
        raise ValueError(f"failure {len(calls)}")

    job_id = flaky.push()
    worker = sa_pgtq.Worker(tq, install_signal_handlers=False, poll_interval=0.05)
    deadline = time.monotonic() + 20
    while len(calls) < 3 and time.monotonic() < deadline:
        worker.run(burst=True)
        time.sleep(0.02)
    assert len(calls) == 3
    # Equal jitter: the n-th retry waits between half and all of 0.2 * 2**(n-1) seconds.
    assert calls[1] - calls[0] >= 0.1 and calls[2] - calls[1] >= 0.2
    assert effect_rows(clean) == [], "a failing handler's writes roll back"
    (job,) = tq.failed()
    assert (job.id, job.state, job.attempts) == (job_id, FAILED, 3)
    assert job.last_error is not None and "ValueError: failure 3" in job.last_error
    worker.run(burst=True)
    assert len(calls) == 3, "a failed task is kept, not retried"


def test_failed_tasks_can_be_requeued(tq: sa_pgtq.Queue) -> None:
    attempts: list[int] = []

    @tq.handler(max_attempts=1)
    def once_broken() -> None:
        attempts.append(sa_pgtq.current_task().attempts)
        if len(attempts) == 1:
            raise RuntimeError("transient")

    once_broken.push()
    burst(tq)
    (failed,) = tq.failed(tag="once_broken")
    assert tq.requeue_failed([failed.id]) == 1
    burst(tq)
    assert attempts == [1, 1] and tq.failed() == []


def test_unknown_handlers_fail_visibly_instead_of_sticking(
    tq: sa_pgtq.Queue, clean: Engine
) -> None:
    producer = sa_pgtq.Queue(clean, name="test_queue")

    @producer.handler(max_attempts=1)
    def only_in_the_producer() -> None: ...

    only_in_the_producer.push()
    worker = sa_pgtq.Worker(tq, install_signal_handlers=False)  # tq has no such handler
    for _ in range(sa_pgtq.handlers.DEFAULT_MAX_ATTEMPTS):
        with clean.begin() as conn:  # skip the backoff wait
            conn.execute(text("UPDATE sa_pgtq_jobs SET run_at = now() WHERE state = 'queued'"))
        worker.run(burst=True)
    (job,) = tq.failed()
    assert job.last_error is not None and "UnknownHandlerError" in job.last_error
    assert job.attempts == sa_pgtq.handlers.DEFAULT_MAX_ATTEMPTS


def test_priority_and_schedule_order(tq: sa_pgtq.Queue) -> None:
    order: list[str] = []

    @tq.handler()
    def step(name: str) -> None:
        order.append(name)

    step.push("normal-1")
    step.options(delay=timedelta(milliseconds=600)).push("scheduled")
    step.options(priority=10).push("urgent")
    step.push("normal-2")
    burst(tq)
    assert order == ["urgent", "normal-1", "normal-2"], "the scheduled task is not due yet"
    time.sleep(0.7)
    burst(tq)
    assert order[-1] == "scheduled"


def test_a_popped_task_that_is_never_run_is_taken_over(tq: sa_pgtq.Queue, clean: Engine) -> None:
    ran: list[int] = []

    @tq.handler()
    def work(n: int) -> None:
        ran.append(n)

    work.push(1)
    abandoned = tq.pop()
    assert abandoned is not None
    with clean.begin() as conn:  # as if its lease had run out
        conn.execute(text("UPDATE sa_pgtq_jobs SET lease_expires_at = now() - interval '1 s'"))
    burst(tq)
    assert ran == [1]
    assert abandoned.run() is True  # the stale claim runs the function, but...
    with clean.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sa_pgtq_jobs")).scalar_one() == 0


def test_stale_claim_cannot_commit_its_writes(tq: sa_pgtq.Queue, clean: Engine) -> None:
    @tq.handler()
    def write(n: int) -> None:
        sa_pgtq.current_session().execute(effects.insert().values(n=n))

    write.push(7)
    stale = tq.pop()
    assert stale is not None
    with clean.begin() as conn:
        conn.execute(text("UPDATE sa_pgtq_jobs SET lease_expires_at = now() - interval '1 s'"))
    burst(tq)  # the rescuer runs it once
    assert stale.run() is False, "the lost lease is detected at completion"
    assert effect_rows(clean) == [7], "no duplicate effect"


def test_tasks_and_messages_do_not_mix(tq: sa_pgtq.Queue) -> None:
    @tq.handler()
    def email() -> None: ...

    email.push()
    tq.enqueue("email", "a message, not a task")
    assert tq.count("email") == 1
    assert tq.dequeue_immediate("email") == "a message, not a task"
    task = tq.pop()
    assert task is not None and task.name == "email"
    assert task.run() and tq.pop() is None
    assert tq.list("email") == [] and tq.failed() == []


def test_concurrency_runs_tasks_side_by_side(tq: sa_pgtq.Queue) -> None:
    import threading

    together = threading.Barrier(2, timeout=10)  # passes only if two tasks run at once
    threads: set[str] = set()

    @tq.handler(max_attempts=1)
    def meet() -> None:
        threads.add(threading.current_thread().name)
        together.wait()

    meet.push_many([(), ()])
    sa_pgtq.Worker(tq, concurrency=2, install_signal_handlers=False).run(burst=True)
    assert tq.failed() == [] and tq.pop() is None
    assert len(threads) == 2


def test_a_worker_runs_on_when_its_listen_connection_cannot_connect(
    tq: sa_pgtq.Queue, clean: Engine
) -> None:
    # As when a worker starts while PostgreSQL restarts: it must poll, not die.
    q = sa_pgtq.Queue(clean, name="test_queue", listen_bind="postgresql://x@127.0.0.1:1/x")

    @q.handler()
    def record(n: int) -> None:
        sa_pgtq.current_session().execute(effects.insert().values(n=n))

    record.push(7)
    burst(q)
    assert effect_rows(clean) == [7]


def test_malformed_payloads_in_a_batch_fail_alone(tq: sa_pgtq.Queue, clean: Engine) -> None:
    # A batch's payloads are decoded together; one that is no call fails for good, alone.
    ran: list[int] = []

    @tq.handler()
    def record(n: int) -> None:
        ran.append(n)

    record.push_many([(1,), (2,)])
    with clean.begin() as conn:
        for data in ('{"args": 1}', '{"args": [], "kwargs": []}', "[]"):
            conn.execute(
                text(
                    "INSERT INTO sa_pgtq_jobs (queue, kind, tag, data) "
                    "VALUES ('test_queue', 'task', 'record', CAST(:data AS jsonb))"
                ),
                {"data": data},
            )
    record.push(3)
    sa_pgtq.Worker(tq, batch_size=8, install_signal_handlers=False).run(burst=True)
    assert ran == [1, 2, 3]
    failed = tq.failed()
    assert len(failed) == 3
    assert all(
        job.attempts == 1 and "TaskArgumentsError" in (job.last_error or "") for job in failed
    )


def test_a_claim_removes_an_earlier_claims_finished_tasks(tq: sa_pgtq.Queue) -> None:
    @tq.handler()
    def noop(n: int) -> None:
        pass

    noop.push_many([(n,) for n in range(5)])
    statements = statements_for(tq.model)
    with tq.engine.connect() as conn:
        _, first = gateway.claim_tasks(conn, statements, tq.name, 2, "a", 30)
        ids = [task.id for task in first]
        # Finished under another token (a lease lost and taken over): kept.
        lost = Finished("x", ids, [None] * 2)
        removed, _ = gateway.claim_tasks(conn, statements, tq.name, 0, "b", 30, lost)
        assert removed == 0
        done = Finished("a", ids, [None] * 2)
        removed, second = gateway.claim_tasks(conn, statements, tq.name, 9, "c", 30, done)
        conn.commit()
    assert removed == 2
    assert [task.attempts for task in second] == [1, 1, 1]  # tries started
    assert [task.id for task in tq.failed()] == []
    with tq.engine.connect() as conn:
        left = conn.execute(text("SELECT id FROM sa_pgtq_jobs ORDER BY id")).scalars().all()
    assert left == [task.id for task in second]
