"""sa_pgtq.testing: assert_enqueued and drain inside a test transaction that is rolled back.

Each test runs an application's code in the setup SQLAlchemy documents ("Joining a
Session into an External Transaction"): a Connection in a transaction, a Session on
it with join_transaction_mode="create_savepoint", everything rolled back at the end,
then checks that nothing was left behind. Sync tests run on psycopg2 and psycopg 3
(the `engine` fixture), async ones on asyncpg and psycopg 3 (`async_url`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
from helpers import count, fresh_tables
from sqlalchemy import Column, Connection, Engine, Integer, MetaData, Table, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import sa_pgtq
from sa_pgtq import errors
from sa_pgtq.testing import DrainLimitError, assert_enqueued, drain

#: The application's own table, written by its handlers.
receipts = Table("testing_receipts", MetaData(), Column("order_id", Integer, primary_key=True))

LEFT_IN_QUEUE = "SELECT count(*) FROM sa_pgtq_jobs WHERE queue = 'shop'"
LEFT_IN_APP = "SELECT count(*) FROM testing_receipts"


class Shop:
    """An application: a queue with its handlers, and the code under test that pushes."""

    def __init__(self, bind: Engine) -> None:
        self.q = q = sa_pgtq.Queue(bind, name="shop")
        self.failures_left = 0

        @q.handler()
        def send_receipt(order_id: int) -> None:
            sa_pgtq.current_session().execute(receipts.insert().values(order_id=order_id))

        @q.handler(max_attempts=2)
        def flaky_receipt(order_id: int) -> None:
            send_receipt(order_id)  # written, then undone with the failure
            if self.failures_left:
                self.failures_left -= 1
                raise ValueError(f"mail server down for order {order_id}")

        @q.handler()
        def ship(order_id: int, carrier: str = "post") -> None:
            # A task pushing the next one in the same transaction: drain runs it too.
            send_receipt.options(session=sa_pgtq.current_session()).push(order_id)

        @q.handler()
        def forever(n: int) -> None:
            forever.options(session=sa_pgtq.current_session()).push(n + 1)

        self.send_receipt, self.flaky_receipt, self.ship, self.forever = (
            send_receipt,
            flaky_receipt,
            ship,
            forever,
        )

    def checkout(self, session: Session, order_id: int) -> int:
        """The code under test: pushes a task and a message in the caller's transaction."""
        job_id = self.send_receipt.options(session=session).push(order_id)
        self.q.enqueue("audit", {"order": order_id}, session=session)
        session.commit()  # the application commits: in the test, only a savepoint
        return job_id


@pytest.fixture
def shop(clean: Engine) -> Shop:
    fresh_tables(clean, receipts)
    return Shop(clean)


@contextlib.contextmanager
def rolled_back(engine: Engine) -> Iterator[Session]:
    """A test's Session, as the README's conftest fixture makes it; then nothing is left."""
    with engine.connect() as conn:
        outer = conn.begin()
        session = Session(bind=conn, join_transaction_mode="create_savepoint")
        try:
            yield session
        finally:
            session.close()
            outer.rollback()
    assert count(engine, LEFT_IN_QUEUE) == 0, "the rollback took the jobs with it"
    assert count(engine, LEFT_IN_APP) == 0, "and the handlers' writes"


def receipts_in(session: Session | Connection) -> list[int]:
    return list(session.execute(select(receipts.c.order_id).order_by("order_id")).scalars())


def states_in(session: Session) -> list[tuple[str, str, int]]:
    sql = "SELECT tag, state, attempts FROM sa_pgtq_jobs WHERE queue = 'shop' ORDER BY id"
    return [tuple(row) for row in session.execute(text(sql))]  # type: ignore[misc]


# -- assert_enqueued -----------------------------------------------------------------


def test_assert_enqueued_finds_what_the_transaction_pushed(shop: Shop, clean: Engine) -> None:
    with rolled_back(clean) as s:
        job_id = shop.checkout(s, 7)
        q = shop.q
        (job,) = assert_enqueued(q, shop.send_receipt, args=[7], session=s)
        assert job.id == job_id and job.state == "queued"
        assert [j.id for j in assert_enqueued(q, "send_receipt", session=s)] == [job_id]
        assert assert_enqueued(q, shop.send_receipt, args=(7,), kwargs={}, session=s)
        (message,) = assert_enqueued(q, "audit", data={"order": 7}, session=s)
        assert message.kind == "message"
        assert assert_enqueued(q, "audit", session=s)
        # A scheduled job is enqueued too (drain leaves it for later).
        shop.ship.options(session=s, delay=3600).push(8, carrier="van")
        assert assert_enqueued(q, shop.ship, kwargs={"carrier": "van"}, session=s)
        assert drain(q, session=s) == 1
        assert assert_enqueued(q, shop.ship, args=[8], session=s)


def test_assert_enqueued_failure_lists_the_queue(shop: Shop, clean: Engine) -> None:
    with rolled_back(clean) as s:
        shop.checkout(s, 7)
        shop.ship.options(session=s).push(7, carrier="van")
        with pytest.raises(AssertionError) as failed:
            assert_enqueued(shop.q, shop.send_receipt, args=[8], session=s)
        assert str(failed.value).startswith(
            "no queued job of queue 'shop' matches task 'send_receipt' with args=[8]; "
            "its 3 queued jobs:\n"
            "  #1 task send_receipt(7) (run_at "
        )
        assert "\n  #2 message 'audit': {'order': 7} (run_at " in str(failed.value)
        assert "\n  #3 task ship(7, carrier='van') (run_at " in str(failed.value)
        # A message tag is not a task; a task's name with data= is not a message.
        with pytest.raises(AssertionError, match="matches task 'audit' with args="):
            assert_enqueued(shop.q, "audit", args=[{"order": 7}], session=s)
        with pytest.raises(AssertionError, match="matches job 'audit' with data=\\{'order': 8\\}"):
            assert_enqueued(shop.q, "audit", data={"order": 8}, session=s)


def test_assert_enqueued_outside_the_transaction_says_where_to_look(
    shop: Shop, clean: Engine
) -> None:
    with rolled_back(clean) as s:
        shop.checkout(s, 7)
        with pytest.raises(AssertionError) as failed:
            assert_enqueued(shop.q, shop.send_receipt)  # its own connection sees nothing yet
        assert "the queue has no queued jobs" in str(failed.value)
        assert "pass session=" in str(failed.value)


def test_bad_input_is_refused(shop: Shop, clean: Engine) -> None:
    other = sa_pgtq.Queue(clean, name="elsewhere")

    @other.handler()
    def send_receipt(order_id: int) -> None: ...

    with rolled_back(clean) as s:
        with pytest.raises(errors.InvalidInputError, match="data= is a message's"):
            assert_enqueued(shop.q, shop.send_receipt, data={"order": 7}, session=s)
        with pytest.raises(errors.TaskArgumentsError, match="args must be a list"):
            assert_enqueued(shop.q, "send_receipt", args=7, session=s)  # type: ignore[arg-type]
        with pytest.raises(errors.DataNotSerializableError):
            assert_enqueued(shop.q, "send_receipt", args=[object()], session=s)
        with pytest.raises(errors.InvalidInputError, match="not a handler of"):
            assert_enqueued(shop.q, send_receipt, session=s)
        with pytest.raises(errors.InvalidTagError):
            assert_enqueued(shop.q, "", session=s)
        with pytest.raises(errors.InvalidInputError, match="limit"):
            drain(shop.q, session=s, limit=0)
        with pytest.raises(errors.InvalidInputError, match="Queue or AsyncQueue"):
            drain(object(), session=s)  # type: ignore[call-overload]
        with pytest.raises(errors.InvalidSessionError):
            drain(shop.q, session=AsyncSession())  # type: ignore[arg-type]


# -- drain ---------------------------------------------------------------------------


@pytest.mark.parametrize("caller", ["session", "connection"])
def test_drain_runs_due_tasks_in_the_transaction(shop: Shop, clean: Engine, caller: str) -> None:
    with rolled_back(clean) as s:
        shop.checkout(s, 7)
        shop.ship.options(session=s).push(8)
        # A Core caller's handlers get a Session on its connection, in its transaction.
        where = s if caller == "session" else s.connection()
        assert drain(shop.q, session=where) == 3, "send_receipt(7), ship(8), then its receipt"
        assert receipts_in(s) == [7, 8]
        assert states_in(s) == [("audit", "queued", 0)], "run tasks are gone; messages stay"
        with pytest.raises(AssertionError):
            assert_enqueued(shop.q, shop.send_receipt, session=s)
        assert drain(shop.q, session=s) == 0


def test_drain_raises_a_failure_recorded_as_a_worker_would(shop: Shop, clean: Engine) -> None:
    shop.failures_left = 2
    with rolled_back(clean) as s:
        job_id = shop.flaky_receipt.options(session=s).push(7)
        with pytest.raises(ValueError, match="mail server down for order 7"):
            drain(shop.q, session=s)
        job = shop.q.job(job_id, session=s)
        assert job is not None and (job.state, job.attempts) == ("queued", 1), "to be retried"
        assert "ValueError: mail server down" in (job.last_error or "")
        assert receipts_in(s) == [], "its write was undone with the failure"
        assert drain(shop.q, session=s) == 0, "the retry waits out its backoff"

        # Out of attempts, it is kept as failed; raise_errors=False counts it and goes on.
        s.execute(text("UPDATE sa_pgtq_jobs SET run_at = now() WHERE id = :id"), {"id": job_id})
        shop.send_receipt.options(session=s).push(9)
        assert drain(shop.q, session=s, raise_errors=False) == 2
        assert [j.id for j in shop.q.failed(session=s)] == [job_id]
        assert receipts_in(s) == [9]


def test_drain_stops_a_task_that_pushes_itself_forever(shop: Shop, clean: Engine) -> None:
    with rolled_back(clean) as s:
        shop.forever.options(session=s).push(0)
        with pytest.raises(DrainLimitError, match="drain ran 5 tasks of queue 'shop'"):
            drain(shop.q, session=s, limit=5)
        (job,) = assert_enqueued(shop.q, shop.forever, args=[5], session=s)
        assert (job.state, job.attempts) == ("queued", 0), "the next one was put back untouched"


def test_drain_without_a_session_commits_each_task(shop: Shop, clean: Engine) -> None:
    shop.send_receipt.push(7)
    assert assert_enqueued(shop.q, shop.send_receipt, args=[7])
    assert drain(shop.q) == 1
    assert count(clean, LEFT_IN_APP) == 1 and count(clean, LEFT_IN_QUEUE) == 0
    with clean.begin() as conn:
        conn.execute(receipts.delete())


# -- asyncio -------------------------------------------------------------------------


class AsyncShop:
    def __init__(self, q: sa_pgtq.AsyncQueue) -> None:
        self.q = q
        self.plain_calls: list[int] = []

        @q.handler()
        async def send_receipt(order_id: int) -> None:
            session = sa_pgtq.current_async_session()
            await session.execute(receipts.insert().values(order_id=order_id))
            if order_id < 0:
                raise ValueError("no such order")

        @q.handler()
        def plain(order_id: int) -> None:  # in a thread: it cannot share the transaction
            self.plain_calls.append(order_id)

        self.send_receipt, self.plain = send_receipt, plain


@contextlib.asynccontextmanager
async def async_rolled_back(url: str) -> AsyncIterator[tuple[AsyncShop, AsyncConnection]]:
    """The async twin of the README's fixture: an AsyncConnection in a transaction, rolled
    back at the end; then nothing is left."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(receipts.drop, checkfirst=True)
            await conn.run_sync(receipts.create)
        async with engine.connect() as conn:
            outer = await conn.begin()
            try:
                yield AsyncShop(sa_pgtq.AsyncQueue(engine, name="shop")), conn
            finally:
                await outer.rollback()
        async with engine.connect() as conn:
            left = [
                (await conn.execute(text(sql))).scalar() for sql in (LEFT_IN_QUEUE, LEFT_IN_APP)
            ]
        assert left == [0, 0], "the rollback took the jobs and the handlers' writes with it"
    finally:
        await engine.dispose()


def test_async_helpers_in_a_rolled_back_async_session(async_url: str) -> None:
    async def main() -> None:
        async with async_rolled_back(async_url) as (shop, conn):
            s = AsyncSession(bind=conn, join_transaction_mode="create_savepoint")
            job_id = await shop.send_receipt.options(session=s).push(7)
            await shop.q.enqueue("audit", {"order": 7}, session=s)
            await s.commit()  # a savepoint
            (job,) = await assert_enqueued(shop.q, shop.send_receipt, args=[7], session=s)
            assert job.id == job_id
            with pytest.raises(AssertionError, match="#1 task send_receipt\\(7\\)"):
                await assert_enqueued(shop.q, "send_receipt", args=[8], session=s)

            assert await drain(shop.q, session=s) == 1
            assert list((await s.execute(select(receipts.c.order_id))).scalars()) == [7]
            assert await assert_enqueued(shop.q, "audit", data={"order": 7}, session=s)

            failing_id = await shop.send_receipt.options(session=s).push(-1)
            with pytest.raises(ValueError, match="no such order"):
                await drain(shop.q, session=s)
            failed_job = await shop.q.job(failing_id, session=s)
            assert failed_job is not None and failed_job.attempts == 1
            assert (await s.execute(select(func.count()).select_from(receipts))).scalar() == 1
            await s.close()

    asyncio.run(main())


def test_async_helpers_on_an_async_connection(async_url: str) -> None:
    async def main() -> None:
        async with async_rolled_back(async_url) as (shop, conn):
            await shop.plain.options(session=conn).push(1)
            await shop.plain.options(session=conn).push(2)
            assert len(await assert_enqueued(shop.q, shop.plain, session=conn)) == 2
            assert await drain(shop.q, conn) == 2
            assert shop.plain_calls == [1, 2]
            with pytest.raises(errors.InvalidSessionError):
                drain(shop.q, session=Session())  # type: ignore[call-overload]

    asyncio.run(main())


def test_async_drain_without_a_session_commits_each_task(async_url: str) -> None:
    async def main() -> None:
        engine = create_async_engine(async_url)
        try:
            shop = AsyncShop(sa_pgtq.AsyncQueue(engine, name="shop"))
            job_id = await shop.plain.push(3)
            assert await assert_enqueued(shop.q, "plain", args=[3])
            assert await drain(shop.q) == 1
            assert shop.plain_calls == [3]
            assert await shop.q.job(job_id) is None, "done, and removed"
        finally:
            await engine.dispose()

    asyncio.run(main())
