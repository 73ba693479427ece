"""`sa-pgtq demo`: a job commits or rolls back together with the application's own row."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, Integer, Text, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .binding import engine_from_url
from .embedded import database_url
from .queue import Queue


class _DemoBase(DeclarativeBase):
    pass


class Order(_DemoBase):
    """The application's own table."""

    __tablename__ = "sa_pgtq_demo_orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item: Mapped[str] = mapped_column(Text)


def run(url: str | None = None, say: Callable[[str], None] = print) -> None:
    with database_url(url) as uri:
        engine = engine_from_url(uri)
        where = "an embedded throwaway PostgreSQL" if url is None else engine.url.render_as_string()
        say(f"database: {where}")
        _DemoBase.metadata.create_all(engine)
        q = Queue(engine, name="demo")
        q.create_table()
        try:
            _tour(engine, q, say)
        finally:
            _DemoBase.metadata.drop_all(engine)
            engine.dispose()


def _tour(engine: Engine, q: Queue, say: Callable[[str], None]) -> None:
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
