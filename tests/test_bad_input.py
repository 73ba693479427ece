"""Input at the edges: a clear sa_pgtq error (also a ValueError or TypeError), nothing written."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

import sa_pgtq
from sa_pgtq import errors, gateway, validation
from sa_pgtq.validation import MAX_DEPTH


def jobs_in_table(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM sa_pgtq_jobs")).scalar_one())


@contextmanager
def rejected(engine: Engine, error: type[Exception], builtin: type[Exception]) -> Iterator[None]:
    """The block raises `error`, which is also `builtin`, and writes nothing."""
    before = jobs_in_table(engine)
    with pytest.raises(error) as info:
        yield
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
    too_deep_error = (clean, errors.DataTooDeepError, ValueError)
    with rejected(*too_deep_error):
        q.enqueue("t", too_deep)
    with rejected(*too_deep_error):
        q.enqueue_many("t", [1, too_deep])
    with rejected(*too_deep_error):
        sa_pgtq.Queue(clean, data_length=10**6).enqueue_many("t", [1, too_deep])
    with rejected(*too_deep_error):
        q.enqueue("t", nested(MAX_DEPTH + 1))
    with rejected(*too_deep_error):
        takes.push(too_deep)
    with rejected(*too_deep_error):
        takes.push_many([(1,), (too_deep,)])
    with rejected(*too_deep_error):
        takes.push(nested(MAX_DEPTH - 1))  # {"args": [...]} adds two levels
    q.enqueue("t", nested(MAX_DEPTH))
    q.enqueue_many("t", [nested(MAX_DEPTH)])
    takes.push(nested(MAX_DEPTH - 2))
    assert q.dequeue_immediate("t") == nested(MAX_DEPTH)


@pytest.mark.parametrize("delay", [1e15, -1e15, timedelta.max, timedelta(days=365 * 101)])
def test_delays_out_of_range_are_rejected(q: sa_pgtq.Queue, delay: timedelta | float) -> None:
    @q.handler()
    def later() -> None: ...

    with rejected(q.engine, errors.InvalidInputError, ValueError):
        q.enqueue("t", 1, delay=delay)
    with rejected(q.engine, errors.InvalidInputError, ValueError):
        q.enqueue_many("t", [1], delay=delay)
    with rejected(q.engine, errors.InvalidInputError, ValueError):
        later.options(delay=delay).push()


@pytest.mark.parametrize(
    "configure",
    [
        lambda q: sa_pgtq.Worker(q, lease=1e300),
        lambda q: sa_pgtq.Worker(q, lease=2**70),
        lambda q: sa_pgtq.Worker(q, poll_interval=1e10),
        lambda q: sa_pgtq.Queue(q.engine, poll_interval=1e300),
        lambda q: q.handler(retry_delay=1e300),
        lambda q: q.listen("t", timeout=1e300),
    ],
)
def test_durations_out_of_range_are_rejected(q: sa_pgtq.Queue, configure: Any) -> None:
    with rejected(q.engine, errors.InvalidInputError, ValueError):
        configure(q)


def test_job_ids_out_of_range_are_rejected(q: sa_pgtq.Queue) -> None:
    job_id = q.enqueue("t", 1)
    with rejected(q.engine, errors.InvalidInputError, ValueError):
        q.requeue_failed([2**70])
    with rejected(q.engine, errors.InvalidInputError, ValueError):
        q.requeue_failed([job_id, -(2**63) - 1])
    with rejected(q.engine, errors.InvalidInputError, ValueError):
        q.cancel(2**63)
    assert q.count("t") == 1


@pytest.mark.parametrize("batch", [None, 5, "hello", b"hello", {"a": 1}, object()])
def test_a_batch_must_be_a_collection_of_items(q: sa_pgtq.Queue, batch: Any) -> None:
    @q.handler()
    def one(x: object = None) -> None: ...

    q.enqueue("t", "already there")
    with rejected(q.engine, errors.InvalidBatchError, TypeError):
        q.enqueue_many("t", batch)
    with rejected(q.engine, errors.InvalidBatchError, TypeError):
        one.push_many(batch)
    if batch is not None:  # None: every failed job
        with rejected(q.engine, errors.InvalidBatchError, ValueError):
            q.requeue_failed(batch)


@pytest.mark.parametrize(
    "data",
    [{"1": 1, 1: 2}, [{"a": {"true": 1, True: 2}}], {None: 1, "null": 2}, {1.5: 1, "1.5": 2}],
)
def test_keys_that_json_would_merge_are_rejected(q: sa_pgtq.Queue, data: object) -> None:
    @q.handler()
    def takes(x: object) -> None: ...

    with rejected(q.engine, errors.DataNotSerializableError, TypeError):
        q.enqueue("t", data)
    with rejected(q.engine, errors.DataNotSerializableError, TypeError):
        q.enqueue_many("t", [1, data])
    with rejected(q.engine, errors.DataNotSerializableError, TypeError):
        takes.push(data)


def test_keys_of_several_types_that_stay_distinct_are_fine(q: sa_pgtq.Queue) -> None:
    q.enqueue("t", {1: "a", "b": 2, 2.5: "c", None: "d", False: "e"})
    assert q.dequeue_immediate("t") == {"1": "a", "b": 2, "2.5": "c", "null": "d", "false": "e"}


@pytest.mark.parametrize(
    ("table_name", "builtin"),
    [("", ValueError), (5, ValueError), ("x" * 52, ValueError), ("é" * 26, ValueError)],
)
def test_table_names_postgresql_cannot_take_are_rejected(
    clean: Engine, table_name: Any, builtin: type[Exception]
) -> None:
    with rejected(clean, errors.InvalidInputError, builtin):
        sa_pgtq.Queue(clean, table_name=table_name)


def test_the_longest_table_name_works(clean: Engine) -> None:
    name = "t" * 51  # its derived names (ix_..._messages) fill PostgreSQL's 63 bytes
    longest = sa_pgtq.Queue(clean, table_name=name)
    assert longest.create_table()
    try:
        longest.enqueue("t", 1)
        assert longest.dequeue_immediate("t") == 1
    finally:
        with clean.begin() as conn:
            assert gateway.drop_table(conn, name), "its side tables too"


@pytest.mark.parametrize("positionally", [True, False])
@pytest.mark.parametrize(
    ("operation", "args"),
    [
        ("enqueue", ("t", 1)),
        ("enqueue_many", ("t", [1])),
        ("enqueue_many", ("t", [])),
        ("dequeue", ("t",)),
        ("dequeue_item", ("t",)),
        ("dequeue_immediate", ("t",)),
        ("dequeue_item_immediate", ("t",)),
        ("listen", ("t", None)),
        ("listen_item", ("t", None)),
        ("list", ("t",)),
        ("count", ("t",)),
        ("cancel", (1,)),
        ("failed", ("t",)),
        ("requeue_failed", ([1],)),
        ("requeue_failed", (None,)),
        ("pop", ()),
    ],
)
def test_anything_but_a_session_is_refused_by_every_operation(
    q: sa_pgtq.Queue, operation: str, args: tuple[object, ...], positionally: bool
) -> None:
    q.enqueue("t", 1)
    with rejected(q.engine, errors.InvalidSessionError, TypeError):
        method = getattr(q, operation)
        result = method(*args, "x") if positionally else method(*args, session="x")
        if isinstance(result, AbstractContextManager):  # dequeue: refused on entering
            result.__enter__()


def test_anything_but_a_session_is_refused_when_pushing(q: sa_pgtq.Queue) -> None:
    @q.handler()
    def noop() -> None: ...

    bad: Any = "x"
    with rejected(q.engine, errors.InvalidSessionError, TypeError):
        noop.options(session=bad)


def test_a_batch_beyond_one_jsonb_array_is_split_not_refused(q: sa_pgtq.Queue) -> None:
    # 257 x 1 MiB is more than PostgreSQL's 2**28 - 1 bytes of one jsonb array.
    ids = q.enqueue_many("big", ["x" * 2**20] * 256 + ["last"])
    assert len(ids) == 257 and ids == sorted(ids)
    with q.engine.connect() as conn:
        query = "SELECT id, length(data #>> '{}') FROM sa_pgtq_jobs ORDER BY id"
        rows = conn.execute(text(query)).all()
    assert [id for id, _ in rows] == ids
    assert [length for _, length in rows] == [2**20] * 256 + [4]


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches split every 100 characters of JSON, so that splitting is cheap to watch."""
    monkeypatch.setattr(validation, "BATCH_CHARS", 100)


@pytest.fixture
def inserts(q: sa_pgtq.Queue) -> Iterator[list[str]]:
    """The INSERT statements sent to the database during the test."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "INSERT INTO" in statement:
            sent.append(statement)

    event.listen(q.engine, "before_cursor_execute", record)
    yield sent
    event.remove(q.engine, "before_cursor_execute", record)


def test_split_batches_keep_their_order_and_ids(
    q: sa_pgtq.Queue, small_batches: None, inserts: list[str]
) -> None:
    @q.handler()
    def task(n: int, pad: str) -> None: ...

    datas = [{"n": n, "pad": "y" * (n % 40)} for n in range(60)]
    ids = q.enqueue_many("t", datas)
    assert len(inserts) > 10, "several statements"
    assert [job.id for job in q.list("t")] == ids and ids == sorted(ids)
    assert [job.data for job in q.list("t")] == datas
    task_ids = task.push_many(datas)
    assert len(task_ids) == 60 and task_ids == sorted(task_ids) and task_ids[0] > ids[-1]
    assert [t.kwargs for t in iter(q.pop, None)] == datas


@pytest.fixture
def refuse_poison(clean: Engine) -> Iterator[None]:
    """The table refuses rows whose data is "poison", as a failing statement would."""
    with clean.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'poison'; END $$;"
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON sa_pgtq_jobs FOR EACH ROW "
                """WHEN (NEW.data = '"poison"') EXECUTE FUNCTION refuse_poison()"""
            )
        )
    yield
    with clean.begin() as conn:
        conn.execute(
            text("DROP TRIGGER refuse_poison ON sa_pgtq_jobs; DROP FUNCTION refuse_poison")
        )


def test_a_split_batch_is_all_or_nothing(
    q: sa_pgtq.Queue, small_batches: None, refuse_poison: None, inserts: list[str]
) -> None:
    datas = [f"message {n}" for n in range(30)]
    with pytest.raises(DBAPIError):
        q.enqueue_many("t", [*datas, "poison"])
    assert len(inserts) > 2, "the poison was in a later statement"
    assert q.count("t") == 0, "the earlier statements were rolled back with it"
    with Session(q.engine) as s:
        q.enqueue_many("t", datas, s)
        assert q.count("t", s) == 30
        s.rollback()
    assert q.count("t") == 0, "in the caller's transaction, which rolled back"
    with Session(q.engine) as s, s.begin():
        q.enqueue_many("t", datas, s)
    assert [job.data for job in q.list("t")] == datas


def test_a_payload_too_large_for_jsonb_is_refused_before_sending(
    q: sa_pgtq.Queue, inserts: list[str]
) -> None:
    with rejected(q.engine, errors.DataTooLongError, ValueError):
        q.enqueue("t", "x" * 2**28)  # more than the 2**28 - 1 bytes of one jsonb value
    assert inserts == [], "nothing was sent"


def test_every_way_in_refuses_a_payload_too_large(
    q: sa_pgtq.Queue, small_batches: None, monkeypatch: pytest.MonkeyPatch, inserts: list[str]
) -> None:
    monkeypatch.setattr(validation, "MAX_DATA_BYTES", 1000)

    @q.handler()
    def takes(x: object) -> None: ...

    big = "€" * 400  # 1,202 bytes of JSON text in 402 characters
    too_long = (q.engine, errors.DataTooLongError, ValueError)
    with rejected(*too_long):
        q.enqueue("t", big)
    with rejected(*too_long):
        q.enqueue_many("t", [1, big])
    with rejected(*too_long):
        sa_pgtq.Queue(q.engine, data_length=10**6).enqueue_many("t", [1, big])
    with rejected(*too_long):
        takes.push(big)
    with rejected(*too_long):
        takes.push_many([(1,), (big,)])
    assert inserts == [], "nothing was sent"
    q.enqueue("t", "€" * 300)  # 902 bytes
