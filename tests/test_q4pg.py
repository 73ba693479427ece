"""sa_pgtq.q4pg.QueueManager: what q4pg's code and tests rely on, on sa_pgtq's table.

Each QueueManager here is built from the `engine` fixture's URL (so it runs on both
drivers) on a table of its own, created and dropped around the test.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from datetime import datetime, timedelta
from typing import Any, cast

import pytest
from helpers import next_within
from sqlalchemy import Engine, func, inspect, select, table
from sqlalchemy.orm import Session

from sa_pgtq import errors
from sa_pgtq.models import FAILED
from sa_pgtq.q4pg import QueueManager

fork = multiprocessing.get_context("fork")

MakeQueueManager = Callable[..., QueueManager]


@pytest.fixture
def make_qm(engine: Engine) -> Iterator[MakeQueueManager]:
    """QueueManager(url, table_name=<a fresh table>, **options), its table created and dropped."""
    made: list[QueueManager] = []

    def make(**options: Any) -> QueueManager:
        url = engine.url.render_as_string(hide_password=False)
        manager = QueueManager(url, table_name=f"mq_{uuid.uuid4().hex[:12]}", **options)
        assert manager.create_table() is True
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.drop_table()
        manager.queue.engine.dispose()


@pytest.fixture
def qm(make_qm: MakeQueueManager) -> QueueManager:
    return make_qm()


@pytest.fixture
def far_from_utc() -> Iterator[None]:
    """The client's local time is UTC+9:30, so a naive datetime read as UTC is hours off."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "QPG-9:30"  # POSIX: 9 h 30 min east of UTC, no tz database needed
    time.tzset()
    assert datetime.now().astimezone().utcoffset() == timedelta(hours=9, minutes=30)
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def stored(qm: QueueManager) -> int:
    """Every row in the QueueManager's table, whatever its state."""
    with qm.queue.engine.connect() as conn:
        return int(
            conn.execute(select(func.count()).select_from(table(qm.table_name))).scalar_one()
        )


def ids(rows: list[Any]) -> list[int]:
    return [row[0] for row in rows]


def failed_ids(qm: QueueManager) -> list[int]:
    """The messages kept as failed (no longer handed out)."""
    return [job.id for job in qm.queue.failed()]


# -- the table ------------------------------------------------------------------------


def test_create_drop_and_reset_table(qm: QueueManager) -> None:
    assert qm.create_table() is False, "it exists already"
    qm.enqueue("t", 1)
    qm.enqueue("t", 2)
    qm.reset_table()
    assert qm.count("t") == 0 and stored(qm) == 0, "reset_table empties the table"
    assert qm.enqueue("t", 3) == 1, "a new table: ids start again at 1"
    assert qm.drop_table() is True
    with qm.queue.engine.connect() as conn:
        assert not inspect(conn).has_table(qm.table_name)
    assert qm.drop_table() is False
    assert qm.create_table() is True
    assert qm.list("t") == []


def test_enqueue_returns_the_new_ids(qm: QueueManager) -> None:
    new = [qm.enqueue("tag", {"n": n}) for n in range(5)]
    assert new == [1, 2, 3, 4, 5], "q4pg's own test expects 1..5 on a new table"
    assert ids(qm.list("tag")) == new
    assert qm.enqueue("other", "x") == 6


# -- rows -----------------------------------------------------------------------------


def test_rows_are_q4pg_tuples_with_compact_json_and_naive_local_times(
    qm: QueueManager, far_from_utc: None
) -> None:
    data = {"json": [1, "two", None, {"x": 0.5}]}
    text = '{"json":[1,"two",null,{"x":0.5}]}'
    before = datetime.now()
    first = qm.enqueue("tag", data)
    after = datetime.now()
    (row,) = qm.list("tag")
    assert type(row) is tuple and len(row) == 6
    assert row == (first, "tag", text, row[3], 0, None)
    created = row[3]
    assert isinstance(created, datetime) and created.tzinfo is None
    slack = timedelta(milliseconds=500)
    assert before - slack <= created <= after + slack, "created_at is the client's local time"

    with qm.dequeue_item("tag") as item:
        assert item == row
    qm.enqueue("tag", data)
    (listed,) = qm.list("tag")
    assert qm.dequeue_item_immediate("tag") == listed
    qm.enqueue("tag", data)
    (listed,) = qm.list("tag")
    stream = qm.listen_item("tag", timeout=0.2)
    assert next_within(stream, 5) == listed
    assert next_within(stream, 5) is None
    assert qm.count("tag") == 0


def test_text_data_type_keeps_the_raw_string(make_qm: MakeQueueManager) -> None:
    qm = make_qm(data_type="text")
    qm.enqueue("t", "not {json")
    (row,) = qm.list("t")
    assert row[2] == "not {json"
    with qm.dequeue("t") as data:
        assert data == "not {json"
    qm.enqueue("t", '{"a": 1}')
    item = qm.dequeue_item_immediate("t")
    assert item is not None and item[2] == '{"a": 1}', "stored as given, not re-serialised"
    with pytest.raises(errors.DataTypeError) as raised:
        qm.enqueue("t", {"a": 1})
    assert isinstance(raised.value, TypeError)
    assert stored(qm) == 0


# -- scheduling -----------------------------------------------------------------------


def test_a_naive_schedule_is_local_time_and_handed_out_on_time(
    qm: QueueManager, far_from_utc: None
) -> None:
    due = datetime.now() + timedelta(seconds=0.6)
    qm.enqueue("later", "due", None, due)  # q4pg's positional order: tag, data, other_sess
    assert qm.dequeue_immediate("later") is None, "not handed out before its time"
    (row,) = qm.list("later", ignore_scheduled=False)
    assert row[5] == due, "schedule is the naive local time given"
    stream = cast("Generator[Any, None, None]", qm.listen("later", timeout=5))
    try:
        data = next_within(stream, 5)
        handed_out = datetime.now()
    finally:
        stream.close()
    assert data == "due"
    late = handed_out - due
    assert timedelta(0) <= late < timedelta(milliseconds=100), f"handed out {late} after due"


def test_list_and_count_show_scheduled_messages_only_when_asked(
    qm: QueueManager, far_from_utc: None
) -> None:
    now = qm.enqueue("t", "now")
    later_at = datetime.now() + timedelta(hours=1)
    later = qm.enqueue("t", "later", schedule=later_at)
    qm.enqueue("other-tag", "x")
    assert qm.count("t") == 1 and ids(qm.list("t")) == [now]
    assert qm.count("t", ignore_scheduled=True) == 1
    assert qm.count("t", None, False) == 2
    rows = qm.list("t", ignore_scheduled=False)
    assert ids(rows) == [now, later]
    assert rows[0][5] is None and rows[1][5] == later_at
    assert qm.dequeue_immediate("t") == "now"
    assert qm.dequeue_immediate("t") is None, "the scheduled one is not due"


# -- failures -------------------------------------------------------------------------


def test_a_failed_message_is_retried_first_but_listed_last(qm: QueueManager) -> None:
    a, b, c = (qm.enqueue("t", name) for name in "abc")
    with pytest.raises(ZeroDivisionError), qm.dequeue("t") as data:
        assert data == "a"
        raise ZeroDivisionError
    rows = qm.list("t")
    assert ids(rows) == [b, c, a], "listed after the untouched ones, as q4pg's table order"
    assert [row[4] for row in rows] == [0, 0, 1]
    assert [qm.dequeue_immediate("t") for _ in range(4)] == ["a", "b", "c", None], (
        "handed out in id order: the failed one is retried before newer ones"
    )


def test_each_failure_counts_once_and_the_data_stays(qm: QueueManager) -> None:
    only = qm.enqueue("t", {"keep": "me"})
    for failures in (1, 2):
        with pytest.raises(RuntimeError), qm.dequeue_item("t") as item:
            assert item is not None and item[0] == only
            created = item[3]
            raise RuntimeError("handler failed")
        (row,) = qm.list("t")
        assert row[:5] == (only, "t", '{"keep":"me"}', created, failures)
    with qm.dequeue("t") as data:
        assert data == {"keep": "me"}
    assert stored(qm) == 0


def test_a_failure_does_not_make_a_message_look_scheduled(qm: QueueManager) -> None:
    qm.enqueue("t", "x")
    with pytest.raises(ValueError), qm.dequeue("t"):
        raise ValueError
    (row,) = qm.list("t")
    assert row[4] == 1
    assert row[5] is None, "never scheduled: schedule stays None"


def fail_times(qm: QueueManager, tag: str, times: int) -> None:
    for _ in range(times):
        with pytest.raises(ArithmeticError), qm.dequeue(tag) as data:
            assert data is not None
            raise ArithmeticError


def test_after_n_failures_a_message_stays_listed_until_passed_over_then_is_kept_failed(
    qm: QueueManager,
) -> None:
    qm.excepted_times_to_ignore = 2  # set on the instance, as q4pg's test does
    poison = qm.enqueue("t", "poison")
    fail_times(qm, "t", 2)
    (row,) = qm.list("t")
    assert (row[0], row[4]) == (poison, 2), "still listed after its last failure"
    assert qm.count("t") == 1 and qm.queue.failed() == []
    with qm.dequeue("t") as data:
        assert data is None, "no longer handed out"
    assert qm.list("t") == [] and qm.count("t") == 0
    (failed,) = qm.queue.failed()
    assert (failed.id, failed.state, failed.attempts, failed.data) == (poison, FAILED, 2, "poison")
    assert qm.dequeue_immediate("t") is None
    assert stored(qm) == 1, "kept, never deleted"


def test_a_dequeue_passes_over_an_ignored_message_to_the_next(qm: QueueManager) -> None:
    qm.excepted_times_to_ignore = 1
    poison = qm.enqueue("t", "poison")
    fail_times(qm, "t", 1)
    good = qm.enqueue("t", "good")
    with qm.dequeue_item("t") as item:
        assert item is not None and item[0] == good
    assert failed_ids(qm) == [poison]
    assert qm.count("t") == 0


def test_a_dequeue_that_raises_after_passing_over_undoes_the_marking(qm: QueueManager) -> None:
    qm.excepted_times_to_ignore = 2
    poison = qm.enqueue("t", "poison")
    fail_times(qm, "t", 2)
    with pytest.raises(KeyError), qm.dequeue("t") as data:
        assert data is None
        raise KeyError("the block failed")
    assert ids(qm.list("t")) == [poison], "still listed: the marking was undone"
    assert qm.list("t")[0][4] == 2, "and not counted as another failure"
    assert qm.queue.failed() == []
    with qm.dequeue("t") as data:
        assert data is None
    assert failed_ids(qm) == [poison]


def test_listen_passes_over_an_ignored_message(qm: QueueManager) -> None:
    qm.excepted_times_to_ignore = 2
    poison = qm.enqueue("t", "poison")
    for failures in (1, 2):
        with pytest.raises(ZeroDivisionError):
            for _item in qm.listen_item("t", timeout=1):
                raise ZeroDivisionError
        assert qm.list("t")[0][4] == failures
    good = qm.enqueue("t", "good")
    stream = qm.listen_item("t", timeout=0.2)
    item = next_within(stream, 5)
    assert item is not None and item[0] == good
    assert next_within(stream, 5) is None
    assert failed_ids(qm) == [poison] and qm.count("t") == 0


# -- listen ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["break", "raise"])
@pytest.mark.parametrize("api", ["listen", "listen_item"])
def test_leaving_a_listen_loop_early_counts_as_a_failure(
    qm: QueueManager, api: str, how: str
) -> None:
    first, second, third = (qm.enqueue("t", n) for n in (1, 2, 3))
    seen = 0
    try:
        for _item in getattr(qm, api)("t", timeout=1):
            seen += 1
            if seen == 2:
                if how == "break":
                    break
                raise LookupError("the loop body failed")
    except LookupError:
        assert how == "raise"
    rows = qm.list("t")
    assert ids(rows) == [third, second], "the first was consumed; the second went to the tail"
    assert first not in ids(rows) and stored(qm) == 2
    assert [row[4] for row in rows] == [0, 1], "the message in hand failed once"
    assert rows[1][2] == "2", "its data stays"


@pytest.mark.parametrize("api", ["listen", "listen_item"])
def test_listen_yields_none_within_50_ms_of_the_timeout(qm: QueueManager, api: str) -> None:
    timeout = 0.4
    started = time.monotonic()
    stream = getattr(qm, api)("quiet", timeout=timeout)
    try:
        assert next_within(stream, 5) is None
        first = time.monotonic() - started
        again = time.monotonic()
        assert next_within(stream, 5) is None
        second = time.monotonic() - again
    finally:
        stream.close()
    assert abs(first - timeout) < 0.05, f"first None after {first:.3f}s, from the call"
    assert abs(second - timeout) < 0.05, f"next None after {second:.3f}s"


# -- the caller's session -------------------------------------------------------------


def test_a_session_passed_last_joins_the_callers_transaction(
    qm: QueueManager, engine: Engine
) -> None:
    with Session(engine) as s:
        mine = qm.enqueue("t", "mine", s)
        assert qm.count("t", s) == 1 and ids(qm.list("t", s)) == [mine]
        assert qm.count("t") == 0, "not visible to others before the caller commits"
        s.rollback()
    assert stored(qm) == 0, "rolled back with the caller's transaction"

    kept = qm.enqueue("t", "kept")
    with Session(engine) as s:
        with qm.dequeue("t", s) as data:
            assert data == "kept"
        assert qm.count("t") == 1, "removed only when the caller commits"
        s.rollback()
    assert qm.list("t")[0][0] == kept and qm.list("t")[0][4] == 0, "back, untouched"

    with Session(engine) as s:
        assert qm.cancel(kept, s) is True
        s.rollback()
    assert qm.count("t") == 1

    with Session(engine) as s:
        item = qm.dequeue_item_immediate("t", s)
        assert item is not None and item[0] == kept
        qm.enqueue("t", "next", s)
        s.commit()
    assert [row[2] for row in qm.list("t")] == ['"next"'], "both committed with the caller"


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["I'm", "", "two words", "tag;drop", "t\u00e4g", "a/b", "x.y"])
def test_q4pgs_tag_rule_rejects_a_tag_before_writing(qm: QueueManager, tag: str) -> None:
    with pytest.raises(ValueError) as raised:
        qm.enqueue(tag, {})
    assert str(raised.value).startswith("Invalid tag-name")
    assert isinstance(raised.value, errors.InvalidTagError)
    assert stored(qm) == 0
    for call in (qm.count, qm.list, qm.dequeue_immediate):
        with pytest.raises(ValueError, match=r"^Invalid tag-name"):
            call(tag)
    with pytest.raises(ValueError, match=r"^Invalid tag-name"), qm.dequeue(tag):
        pass
    with pytest.raises(ValueError, match=r"^Invalid tag-name"):
        next(iter(qm.listen(tag, timeout=0.1)))


def test_q4pgs_tag_rule_accepts_its_characters(qm: QueueManager) -> None:
    tag = "Az09-_+"
    qm.enqueue(tag, "ok")
    assert qm.dequeue_immediate(tag) == "ok"


@pytest.mark.parametrize(
    ("data", "error", "builtin"),
    [
        (object(), errors.DataNotSerializableError, TypeError),
        ({"a set": {1}}, errors.DataNotSerializableError, TypeError),
        (float("nan"), errors.DataNotSerializableError, TypeError),
        ("x" * 1022, errors.DataTooLongError, ValueError),  # '"x...x"': 1024 > 1023
        ({"k": "v" * 1020}, errors.DataTooLongError, ValueError),
    ],
    ids=["object", "set", "nan", "str-1024", "dict-1029"],
)
def test_bad_data_raises_before_anything_is_written(
    qm: QueueManager, engine: Engine, data: Any, error: type[Exception], builtin: type[Exception]
) -> None:
    with pytest.raises(error) as raised:
        qm.enqueue("t", data)
    assert isinstance(raised.value, builtin)
    assert stored(qm) == 0
    with Session(engine) as s:
        with pytest.raises(error):
            qm.enqueue("t", data, s)
        assert qm.enqueue("t", "x" * 1021, s) > 0, "the session is still usable; 1023 fits"
        s.commit()
    assert [row[2] for row in qm.list("t")] == ['"' + "x" * 1021 + '"']


# -- cancel ---------------------------------------------------------------------------


def test_cancel(qm: QueueManager) -> None:
    a = qm.enqueue("t", "a")
    b = qm.enqueue("t", "b")
    assert qm.cancel(a) is True
    assert qm.cancel(a) is False, "already gone"
    assert qm.cancel(10**6) is False, "never existed"
    assert ids(qm.list("t")) == [b]
    with qm.dequeue("t") as data:
        assert data == "b"
        assert qm.cancel(b) is False, "being worked on"
    assert qm.count("t") == 0 and stored(qm) == 0


# -- binding --------------------------------------------------------------------------


def test_a_url_keeps_its_driver_and_an_engine_works_too(qm: QueueManager, engine: Engine) -> None:
    assert qm.queue.engine.dialect.driver == engine.dialect.driver
    on_engine = QueueManager(engine, table_name=qm.table_name)
    sent = qm.enqueue("t", "through the url")
    assert ids(on_engine.list("t")) == [sent]
    assert on_engine.dequeue_immediate("t") == "through the url"
    assert qm.count("t") == 0


# -- many processes -------------------------------------------------------------------


def consume(qm: QueueManager, tag: str, results: Any) -> None:
    """A forked child: q4pg's listen loop until the tag is empty; reports what it got."""
    got: list[int] = []
    for data in qm.listen(tag, timeout=1):
        if data is not None:
            got.append(data)
            time.sleep(0.005)  # some work, so that the processes overlap
        elif qm.count(tag) == 0:
            break
    results.put((os.getpid(), got))


@pytest.mark.slow
def test_forked_processes_consume_each_message_exactly_once(qm: QueueManager) -> None:
    tag = "message_q"
    sent = [qm.enqueue(tag, n) for n in range(300)]
    assert sent == list(range(1, 301)) and qm.count(tag) == 300
    with qm.dequeue(tag) as data:  # the parent uses its pool before forking
        assert data == 0
    results = fork.Queue()
    children = [fork.Process(target=consume, args=(qm, tag, results)) for _ in range(4)]
    for child in children:
        child.start()
    try:
        reports = [results.get(timeout=60) for _ in children]
    finally:
        for child in children:
            child.join(30)
            if child.exitcode is None:
                child.kill()
    assert [child.exitcode for child in children] == [0, 0, 0, 0]
    consumed = sorted(n for _, got in reports for n in got)
    assert consumed == list(range(1, 300)), "every message once, none twice"
    assert all(got for _, got in reports), "all four processes took a share"
    assert stored(qm) == 0 and qm.queue.failed() == []

    qm.enqueue(tag, "after")  # the parent still works
    assert qm.dequeue_immediate(tag) == "after"
    assert next_within(iter(qm.listen(tag, timeout=0.2)), 5) is None
