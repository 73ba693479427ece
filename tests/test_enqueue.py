"""enqueue / enqueue_many: atomic with the caller's rows, validated before any write."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest
from helpers import fresh_tables
from sqlalchemy import Column, Engine, Integer, MetaData, Table, func, select, text
from sqlalchemy.orm import Session

import sa_pgtq
from sa_pgtq import errors

orders = Table("orders", MetaData(), Column("id", Integer, primary_key=True))


@pytest.fixture
def app_table(clean: Engine) -> Table:
    fresh_tables(clean, orders)
    return orders


def row_counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        jobs = conn.execute(select(func.count()).select_from(sa_pgtq.Job)).scalar_one()
        app = conn.execute(select(func.count()).select_from(orders)).scalar_one()
    return jobs, app


def test_job_commits_with_the_callers_rows(
    q: sa_pgtq.Queue, clean: Engine, app_table: Table
) -> None:
    with Session(clean) as s, s.begin():
        s.execute(app_table.insert().values(id=7))
        job_id = q.enqueue("email", {"order": 7}, session=s)
    assert row_counts(clean) == (1, 1)
    assert [j.id for j in q.list("email")] == [job_id]


def test_rollback_of_the_callers_transaction_leaves_no_job(
    q: sa_pgtq.Queue, clean: Engine, app_table: Table
) -> None:
    with pytest.raises(RuntimeError), Session(clean) as s, s.begin():
        s.execute(app_table.insert().values(id=7))
        q.enqueue("email", {"order": 7}, session=s)
        q.enqueue_many("email", [1, 2, 3], session=s)
        raise RuntimeError("the request failed")
    assert row_counts(clean) == (0, 0)


def test_operations_never_commit_the_callers_session(q: sa_pgtq.Queue, clean: Engine) -> None:
    with Session(clean) as s:
        q.enqueue("t", 1, s)  # session positionally, q4pg style
        q.enqueue_many("t", [2, 3], s)
        assert q.count("t", s) == 3
        assert q.count("t") == 0, "another connection must not see uncommitted jobs"
        with q.dequeue("t", s) as data:
            assert data == 1
        assert q.dequeue_immediate("t", s) == 2
        s.rollback()
    assert q.count("t") == 0


def test_enqueue_flushes_pending_orm_rows_first(q: sa_pgtq.Queue, clean: Engine) -> None:
    with Session(clean) as s, s.begin():
        s.add(sa_pgtq.Job(queue=q.name, tag="t", data="added via ORM"))
        q.enqueue("t", "added via enqueue", session=s)
    assert [j.data for j in q.list("t")] == ["added via ORM", "added via enqueue"]


def test_enqueue_many_returns_ids_in_order_and_keeps_order(q: sa_pgtq.Queue) -> None:
    datas = [{"i": i} for i in range(250)]
    ids = q.enqueue_many("bulk", datas)
    assert len(ids) == 250 and ids == sorted(ids)
    assert [j.data for j in q.list("bulk")] == datas
    assert q.enqueue_many("bulk", []) == []


def test_priority_then_schedule_order(q: sa_pgtq.Queue) -> None:
    q.enqueue("t", "low")
    q.enqueue("t", "high", priority=10)
    q.enqueue("t", "later", delay=timedelta(hours=1))
    q.enqueue("t", "low2")
    assert [j.data for j in q.list("t")] == ["high", "low", "low2", "later"]
    got = [q.dequeue_immediate("t") for _ in range(4)]
    assert got == ["high", "low", "low2", None], "a delayed job is not handed out early"
    assert q.count("t") == 1


def test_run_at_in_the_past_is_due_and_delay_accepts_seconds(q: sa_pgtq.Queue) -> None:
    q.enqueue("t", "past", run_at=datetime.now(timezone.utc) - timedelta(days=1))
    q.enqueue("t", "soon", delay=3600.0)
    assert q.dequeue_immediate("t") == "past"
    assert q.dequeue_immediate("t") is None


def test_text_queue_stores_strings(clean: Engine) -> None:
    q = sa_pgtq.Queue(clean, data_type="text", data_length=5)
    q.enqueue("t", "héllo")
    assert q.dequeue_immediate("t") == "héllo"


BAD_DATA = [
    ({1, 2}, errors.DataNotSerializableError),
    (object(), errors.DataNotSerializableError),
    (math.nan, errors.DataNotSerializableError),
    ({"x": math.inf}, errors.DataNotSerializableError),
    ("a\x00b", errors.DataNotStorableError),
    ("\ud800", errors.DataNotStorableError),
    ("x" * 101, errors.DataTooLongError),
]


@pytest.mark.parametrize(("data", "error"), BAD_DATA)
def test_bad_data_raises_and_writes_nothing(clean: Engine, data: object, error: type) -> None:
    q = sa_pgtq.Queue(clean, data_length=100)
    with pytest.raises(error):
        q.enqueue("t", data)
    with pytest.raises(error):
        q.enqueue_many("t", ["fine", data])  # one bad item rejects the whole batch
    if error is not errors.DataTooLongError:  # without data_length, a batch is encoded whole
        with pytest.raises(error):
            sa_pgtq.Queue(clean).enqueue_many("t", ["fine", data])
    assert q.count("t") == 0


def test_text_queue_rejects_non_strings(clean: Engine) -> None:
    q = sa_pgtq.Queue(clean, data_type="text")
    with pytest.raises(errors.DataTypeError) as info:
        q.enqueue("t", {"not": "text"})
    assert isinstance(info.value, TypeError)
    assert q.count("t") == 0


def test_escaped_backslash_u0000_is_fine(q: sa_pgtq.Queue) -> None:
    q.enqueue("t", "\\u0000 is text, not NUL")
    assert q.dequeue_immediate("t") == "\\u0000 is text, not NUL"


@pytest.mark.parametrize("tag", ["", None, 5, "x" * 256, "nul\x00", "\udfff"])
def test_bad_tags_raise_value_errors_and_write_nothing(q: sa_pgtq.Queue, tag: object) -> None:
    with pytest.raises(errors.InvalidTagError) as info:
        q.enqueue(tag, 1)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    for op in (q.count, q.list, q.dequeue_immediate):
        with pytest.raises(errors.InvalidTagError):
            op(tag)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidTagError):
        q.listen(tag)  # type: ignore[arg-type]
    with q.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sa_pgtq_jobs")).scalar_one() == 0


@pytest.mark.parametrize(
    "options",
    [
        {"priority": 1.5},
        {"priority": True},
        {"priority": 2**31},
        {"delay": "soon"},
        {"delay": math.nan},
        {"run_at": "tomorrow"},
        {"run_at": datetime(2030, 1, 1)},  # naive: ambiguous time zone
        {"run_at": datetime.now(timezone.utc), "delay": 5},
    ],
)
def test_bad_scheduling_options_raise(q: sa_pgtq.Queue, options: dict[str, object]) -> None:
    with pytest.raises(errors.InvalidInputError):
        q.enqueue("t", 1, **options)  # type: ignore[arg-type]
    assert q.count("t") == 0


def test_bad_session_argument_is_a_type_error(q: sa_pgtq.Queue) -> None:
    with pytest.raises(TypeError):
        q.enqueue("t", 1, "not a session")  # type: ignore[arg-type]
    q.enqueue("t", 1)
    with pytest.raises(TypeError), q.dequeue("t", "not a session"):  # type: ignore[arg-type]
        pass
    assert q.count("t") == 1


def test_dequeue_in_a_session_sees_the_callers_pending_rows(
    q: sa_pgtq.Queue, clean: Engine
) -> None:
    with Session(clean) as s:
        s.add(sa_pgtq.Job(queue=q.name, tag="t", data="pending in the session"))
        with q.dequeue("t", s) as data:
            assert data == "pending in the session"
        s.rollback()


@pytest.mark.parametrize(
    "options",
    [{"data_type": "xml"}, {"data_length": -1}, {"excepted_times_to_ignore": "3"}, {"name": ""}],
)
def test_bad_queue_options_raise(clean: Engine, options: dict[str, object]) -> None:
    with pytest.raises(errors.InvalidInputError):
        sa_pgtq.Queue(clean, **options)  # type: ignore[arg-type]


HOSTILE_TAGS = [
    "a-b",
    "select",
    "MiXeD Case",
    "'; DROP TABLE sa_pgtq_jobs; --",
    '"quoted"',
    "$$ dollar $$",
    "日本語のタグ",
    "tab\tand\nnewline",
    "\\",
]


@pytest.mark.parametrize("tag", HOSTILE_TAGS)
def test_hostile_tags_are_just_data(q: sa_pgtq.Queue, tag: str) -> None:
    q.enqueue(tag, {"tag": tag})
    q.enqueue("other", 0)
    assert q.count(tag) == 1
    assert [j.tag for j in q.list(tag)] == [tag]
    assert next(iter(q.listen(tag, timeout=1))) == {"tag": tag}
    assert q.count("other") == 1
