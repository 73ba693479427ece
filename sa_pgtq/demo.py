"""`sa-pgtq demo`: jobs commit or roll back together with the application's own rows.

A short tour of both layers on tables of its own (dropped at the end, so a real
database is left as it was): messages enqueued in an order's transaction and
consumed, then task handlers pushed with an order, run by a worker (one of them
failing once and retried), and a task's result.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import Engine, Integer, Text, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from . import gateway
from .binding import engine_from_url
from .context import current_session, current_task
from .embedded import configured_url, database_url
from .queue import Queue
from .worker import Worker

Say = Callable[[str], None]

#: The demo's queue table: its own, so that it can drop it afterwards.
JOBS_TABLE = "sa_pgtq_demo_jobs"


class _DemoBase(DeclarativeBase):
    pass


class Order(_DemoBase):
    """The application's own table."""

    __tablename__ = "sa_pgtq_demo_orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, default="placed")


def run(url: str | None = None, say: Say = print) -> None:
    with database_url(url) as uri:
        engine = engine_from_url(uri)
        shown = url or configured_url()
        where = engine.url.render_as_string() if shown else "an embedded throwaway PostgreSQL"
        say(f"database: {where}")
        _drop_tables(engine)  # what an interrupted run left
        _DemoBase.metadata.create_all(engine)
        # Finished tasks are kept a while, with their results (see step 6).
        q = Queue(engine, name="demo", table_name=JOBS_TABLE, retention=timedelta(minutes=10))
        q.create_table()
        try:
            _message_tour(engine, q, say)
            _task_tour(engine, q, say)
        finally:
            _drop_tables(engine)
            engine.dispose()


def _drop_tables(engine: Engine) -> None:
    _DemoBase.metadata.drop_all(engine)
    with engine.begin() as conn:
        gateway.drop_table(conn, JOBS_TABLE)


def _message_tour(engine: Engine, q: Queue, say: Say) -> None:
    def counts() -> str:
        with Session(engine) as s:
            orders = s.execute(select(func.count()).select_from(Order)).scalar_one()
        return f"orders={orders} jobs={q.count('email')}"

    say("\n1. An order and its email job in one transaction:")
    with Session(engine) as s, s.begin():
        s.add(Order(id=1, item="teapot"))
        job_id = q.enqueue("email", {"order": 1, "to": "ada@example.com"}, session=s)
    say(f"   committed together: job #{job_id}; {counts()}")

    say("\n2. A failing request rolls back its order, and the job with it:")
    try:
        with Session(engine) as s, s.begin():
            s.add(Order(id=2, item="kettle"))
            q.enqueue("email", {"order": 2}, session=s)
            raise RuntimeError("payment declined")
    except RuntimeError as exc:
        say(f"   request failed ({exc}); {counts()}  <- no job for order 2")

    say("\n3. More work arrives in bulk and is consumed:")
    q.enqueue_many("email", [{"order": n} for n in (3, 4)])
    try:
        with q.dequeue("email") as data:
            say(f"   handling {data} ... the mail server is down")
            raise ConnectionError("smtp unreachable")
    except ConnectionError:
        job = q.list("email")[-1]
        say(f"   failed: job #{job.id} kept, attempts={job.attempts}, moved to the tail")
    for data in q.listen("email", timeout=0.5):
        if data is None:
            break
        say(f"   sent {data}")
    say(f"   queue drained; {counts()}")


def _task_tour(engine: Engine, q: Queue, say: Say) -> None:
    @q.handler()
    def ship(order_id: int) -> None:
        order = current_session().get(Order, order_id)
        assert order is not None
        order.status = "shipped"  # commits with the job's completion, or not at all
        say(f"   ship({order_id}): order {order_id} marked shipped")

    @q.handler(retry_delay=0.1)  # retried after 0.05-0.1 s (doubling per attempt)
    def send_receipt(order_id: int, to: str) -> str:
        attempt = current_task().attempts
        if attempt == 1:
            say(f"   send_receipt({order_id}), attempt 1: the mail server is busy")
            raise ConnectionError("mail server busy")
        say(f"   send_receipt({order_id}), attempt {attempt}: sent to {to}")
        return f"receipt for order {order_id} sent to {to}"

    def queued() -> str:
        jobs = q.backend.run(None, gateway.list_queued, q.name)
        return ", ".join(f"#{job.id} {job.tag}" for job in jobs) or "none"

    say("\n4. Tasks: handlers pushed in an order's transaction:")
    with Session(engine) as s, s.begin():
        s.add(Order(id=5, item="toaster"))
        ship.options(session=s).push(5)
        receipt_id = send_receipt.options(session=s).push(5, to="ada@example.com")
    say("   order 5 placed, ship(5) and send_receipt(5) pushed with it: committed together")
    try:
        with Session(engine) as s, s.begin():
            s.add(Order(id=6, item="kettle"))
            ship.options(session=s).push(6)
            send_receipt.options(session=s).push(6, to="bob@example.com")
            raise RuntimeError("card declined")
    except RuntimeError as exc:
        say(f"   order 6 failed ({exc}): rolled back, its tasks with it")
    say(f"   queued tasks: {queued()}")

    say("\n5. A worker runs them (as `sa-pgtq worker module:q` would); a failure is retried:")
    worker = Worker(q, install_signal_handlers=False)
    shown = _Said(say)  # the worker's warnings (a task's failure) as lines of the demo
    logging.getLogger("sa_pgtq").addHandler(shown)
    running = threading.Thread(target=worker.run, name="sa_pgtq demo worker")
    running.start()
    try:
        result = q.result(receipt_id, timeout=30)  # woken by the job's completion
    finally:
        worker.stop()  # it finishes what it holds, then returns
        running.join()
        logging.getLogger("sa_pgtq").removeHandler(shown)

    say("\n6. The result, kept with the finished job (Queue(..., retention=...)):")
    say(f"   q.result({receipt_id}) -> {result!r}")
    job = q.job(receipt_id)
    assert job is not None
    with Session(engine) as s:
        status = s.execute(select(Order.status).where(Order.id == 5)).scalar_one()
    say(f"   job #{receipt_id} {job.state} after {job.attempts} attempts; order 5 is {status}")
    say(f"   queued tasks: {queued()}")


class _Said(logging.Handler):
    def __init__(self, say: Say) -> None:
        super().__init__(logging.WARNING)
        self.say = say

    def emit(self, record: logging.LogRecord) -> None:
        self.say(f"   worker log: {record.getMessage()}")
