"""listen: NOTIFY wake-up across processes, timeouts, and leaving the loop early."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from helpers import next_within
from sqlalchemy import Engine, event, text
from tcpproxy import TcpProxy

import sa_pgtq

ENQUEUE_LATER = textwrap.dedent(
    """
    import sys, time
    from sqlalchemy import create_engine
    import sa_pgtq
    q = sa_pgtq.Queue(create_engine(sys.argv[1]))
    time.sleep(float(sys.argv[2]))
    q.enqueue("wake-up", {"from": "another process"})
    """
)


def test_listen_wakes_up_on_notify_from_another_process(clean: Engine) -> None:
    # With a 30 s poll interval, only NOTIFY can deliver the job within the 10 s timeout.
    q = sa_pgtq.Queue(clean, poll_interval=30)
    url = clean.url.render_as_string(hide_password=False)
    proc = subprocess.Popen([sys.executable, "-c", ENQUEUE_LATER, url, "1.0"])
    try:
        started = time.monotonic()
        first = next(iter(q.listen("wake-up", timeout=10)))
        elapsed = time.monotonic() - started
    finally:
        proc.wait(30)
    assert first == {"from": "another process"}
    assert elapsed < 8, f"woken after {elapsed:.1f}s: NOTIFY did not arrive"
    assert q.count("wake-up") == 0 or q.count("wake-up") == 1  # removed once the next is asked for


def test_listen_yields_none_after_the_timeout_and_keeps_listening(q: sa_pgtq.Queue) -> None:
    stream = q.listen("quiet", timeout=0.2)
    started = time.monotonic()
    assert next(stream) is None
    assert 0.15 < time.monotonic() - started < 3
    q.enqueue("quiet", "now")
    assert next(stream) == "now"
    assert next(stream) is None
    assert q.count("quiet") == 0, "asking for the next item committed the previous one"


def test_listen_item_yields_jobs_in_order(q: sa_pgtq.Queue) -> None:
    q.enqueue_many("t", [1, 2, 3])
    stream = q.listen_item("t", timeout=0.2)
    assert [next(stream).data for _ in range(3)] == [1, 2, 3]
    assert next(stream) is None


def test_leaving_the_loop_returns_the_current_item_untouched(q: sa_pgtq.Queue) -> None:
    q.enqueue_many("t", ["a", "b"])
    for data in q.listen("t", timeout=1):
        assert data == "a"
        break
    (a, _b) = q.list("t")
    assert (a.data, a.attempts) == ("a", 0)


def test_a_scheduled_job_is_picked_up_when_due_without_notify(clean: Engine) -> None:
    q = sa_pgtq.Queue(clean, poll_interval=30)
    q.enqueue("later", "due", delay=0.5)
    started = time.monotonic()
    assert next(iter(q.listen("later", timeout=10))) == "due"
    assert 0.4 < time.monotonic() - started < 5, "slept until run_at, not the poll interval"


def test_listen_with_positional_session_q4pg_style(q: sa_pgtq.Queue, clean: Engine) -> None:
    from sqlalchemy.orm import Session

    q.enqueue("t", "x")
    with Session(clean) as s:
        stream = q.listen("t", s)
        assert next(stream) == "x"
        stream.close()
        s.rollback()
    assert q.count("t") == 1


def test_a_dead_listen_connection_is_noticed_and_replaced(clean: Engine) -> None:
    # The server ends the LISTEN backend (as a failover or an idle-killer would); the
    # listener must notice, reconnect, and be woken by NOTIFY again (polling is 30 s).
    from sqlalchemy import text

    listeners = text(
        "SELECT pid FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'sa_pgtq listener'"
    )
    q = sa_pgtq.Queue(clean, poll_interval=30)
    stream = q.listen("t", timeout=1)
    assert next(stream) is None
    with clean.connect() as conn:
        (old,) = conn.execute(listeners).scalars().all()
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": old})
    assert next(stream) is None  # survives the loss...
    assert next(stream) is None  # ...and reconnects while waiting
    with clean.connect() as conn:
        (new,) = conn.execute(listeners).scalars().all()
    assert new != old
    threading.Timer(0.2, q.enqueue, ("t", "woken by NOTIFY")).start()
    assert next(stream) == "woken by NOTIFY"


def test_a_silently_dead_listen_connection_is_cut_and_replaced(clean: Engine) -> None:
    # The LISTEN connection goes through a proxy that then black-holes it: no FIN, no
    # RST, so only a ping with a deadline can tell. With a 2 s poll interval, the ping
    # gives up after 2 s, the listener reconnects, and polling delivers meanwhile.
    def arrives_in(data: str, seconds: float) -> float:
        threading.Timer(0.3, q.enqueue, ("t", data)).start()
        started = time.monotonic()
        assert next_within(stream, seconds) == data
        return time.monotonic() - started

    with TcpProxy(clean.url) as proxy:
        q = sa_pgtq.Queue(clean, poll_interval=2, listen_bind=proxy.url)
        stream = q.listen("t", timeout=60)
        try:
            arrives_in("before", 10)
            assert proxy.connections == 1
            proxy.freeze()
            assert arrives_in("during", 20) < 8, "the dead connection held listen up"
            arrives_in("after", 10)
            assert proxy.connections == 2, "a new LISTEN connection"
            assert arrives_in("woken", 10) < 1.5, "woken by NOTIFY, not by the 2 s poll"
        finally:
            stream.close()


def test_listen_waits_quietly_while_another_consumer_holds_the_message(
    q: sa_pgtq.Queue, clean: Engine
) -> None:
    # The held message is due, yet not for us: asking for it again and again (it once
    # did, ~2000 statements a second) only loads the database.
    q.enqueue("t", "held")
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with q.dequeue("t") as data:
            assert data == "held"
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(clean, "before_cursor_execute", count)
    try:
        assert next(q.listen("t", timeout=1)) is None
    finally:
        event.remove(clean, "before_cursor_execute", count)
        release.set()
        holder.join()
    # A message that became due a moment ago (50 ms) may still be asked for at once.
    assert len(statements) < 200, f"{len(statements)} statements in one quiet second"
    assert q.count("t") == 0


def woken_after(stream: Any, send: Callable[[], object], expected: Any) -> float:
    """Seconds from `send()` (made while `stream` waits) until `stream` yields `expected`."""
    sender = threading.Timer(0.3, send)
    sender.start()
    started = time.monotonic()
    assert next_within(stream, 10) == expected
    elapsed = time.monotonic() - started - 0.3
    sender.join()
    return elapsed


def test_every_way_a_message_arrives_wakes_a_listener(q: sa_pgtq.Queue, clean: Engine) -> None:
    slow = sa_pgtq.Queue(clean, poll_interval=30)  # only a NOTIFY wakes it in time
    stream = slow.listen("t")
    assert woken_after(stream, lambda: q.enqueue("t", "one"), "one") < 2
    assert woken_after(stream, lambda: q.enqueue_many("t", ["many", "x"]), "many") < 2
    assert next_within(stream, 5) == "x"

    # Another consumer holds a message while the listener waits, then fails it: the
    # message is put back, and that wakes the listener.
    taken, fail = threading.Event(), threading.Event()

    def fail_one() -> None:
        with pytest.raises(RuntimeError), q.dequeue("t") as data:
            assert data == "failed elsewhere"
            taken.set()
            fail.wait(10)
            raise RuntimeError("put back")

    q.enqueue("t", "failed elsewhere")
    consumer = threading.Thread(target=fail_one)
    consumer.start()
    assert taken.wait(10)
    assert woken_after(stream, fail.set, "failed elsewhere") < 2, "woken by the restore"
    consumer.join()
    stream.close()


PLAIN_INSERT = text(
    "INSERT INTO sa_pgtq_jobs (queue, kind, tag, data) VALUES ('default', 'message', 't', :data)"
)
# What the README tells producers that write with plain SQL to add, to wake listeners at once.
PLAIN_NOTIFY = text(
    "SELECT pg_notify('sa_pgtq', json_build_array('sa_pgtq_jobs', 'default', 'message', 't')::text)"
)


def test_a_plain_sql_insert_is_found_by_polling_or_woken_by_its_notify(clean: Engine) -> None:
    def insert(data: int, *, notify: bool) -> Callable[[], None]:
        def run() -> None:
            with clean.begin() as conn:
                conn.execute(PLAIN_INSERT, {"data": str(data)})
                if notify:
                    conn.execute(PLAIN_NOTIFY)

        return run

    polling = sa_pgtq.Queue(clean, poll_interval=0.5).listen("t", timeout=2)
    assert woken_after(polling, insert(1, notify=False), 1) < 3, "found by the next poll"
    assert next(polling) is None, "taken for good"
    polling.close()
    slow = sa_pgtq.Queue(clean, poll_interval=30).listen("t")
    assert woken_after(slow, insert(2, notify=True), 2) < 2, "woken by its NOTIFY"
    slow.close()
