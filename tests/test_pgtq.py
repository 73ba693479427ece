"""pgtq users change one import: `from sa_pgtq import pgtq`, then pgtq's README as written."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, inspect

from sa_pgtq import errors, gateway, pgtq
from sa_pgtq.models import FAILED

TABLE = "pgtq_test_jobs"


@pytest.fixture
def url(clean: Engine) -> Iterator[str]:
    """A DSN of the test database, with no pgtq table in it yet."""
    yield clean.url.render_as_string(hide_password=False)
    with clean.begin() as conn:
        gateway.drop_table(conn, TABLE)


def test_the_readme_runs_unchanged(url: str, clean: Engine) -> None:
    q = pgtq.PgTq("test_queue", url, table_name=TABLE)
    assert inspect(clean).has_table(TABLE), "PgTq creates its table when missing"

    @q.handler()
    def add_numbers(a: int, b: int) -> int:
        return a + b

    assert add_numbers(2, 3) == 5  # a plain call runs now
    add_numbers.push(2, 3)
    task = q.pop()
    assert task is not None
    assert (task.name, task.args, task.kwargs, task.attempts) == ("add_numbers", (2, 3), {}, 1)
    assert task.key == task.id
    assert task.execute() == 5, "execute() returns the handler's result"
    assert q.pop() is None, "and the task is done"

    @q.handler(name="sum_task")
    def add_more(a: int, b: int) -> int:
        return a + b

    add_more.push(a=1, b=2)
    task = q.pop()
    assert task is not None and task.name == "sum_task" and task.kwargs == {"a": 1, "b": 2}
    assert task.execute() == 3


def test_a_failing_task_raises_and_is_retried_max_retries_times(url: str) -> None:
    q = pgtq.PgTq("test_queue", url, table_name=TABLE)

    @q.handler(max_retries=1, retry_delay=0.01)
    def broken() -> None:
        raise ValueError("nope")

    broken.push()
    for attempt in (1, 2):  # the first try and one retry
        task = wait_for_task(q)
        assert task.attempts == attempt
        with pytest.raises(ValueError, match="nope"):
            task.execute()  # pgtq raised the handler's exception again
    assert q.pop() is None
    (failed,) = q.failed()
    assert (failed.state, failed.attempts) == (FAILED, 2)
    assert failed.last_error is not None and "ValueError: nope" in failed.last_error


def wait_for_task(q: pgtq.PgTq) -> pgtq.Task:
    deadline = time.monotonic() + 5
    while (task := q.pop()) is None:
        assert time.monotonic() < deadline, "no task became due"
        time.sleep(0.02)
    return task


def test_a_taken_name_already_exists(url: str) -> None:
    q = pgtq.PgTq("test_queue", url, table_name=TABLE)

    @q.handler()
    def test_handler() -> None: ...

    with pytest.raises(RuntimeError, match="already exists") as info:

        @q.handler(name="test_handler")
        def other() -> None: ...

    assert isinstance(info.value, errors.DuplicateHandlerError)
    for bad in ({"max_retries": -1}, {"max_retries": 1.5}, {"max_attempts": 0}):
        with pytest.raises(errors.InvalidInputError):
            q.handler(**bad)  # type: ignore[arg-type]


WORKER = textwrap.dedent(
    """
    import sys
    from sa_pgtq import pgtq, worker
    q = pgtq.PgTq("test_queue", sys.argv[1], table_name=sys.argv[2], poll_interval=0.5)

    @q.handler()
    def say(text):
        print(text, flush=True)

    if __name__ == "__main__":
        if sys.argv[3] == "push":
            say.push("hello from pgtq")
        else:
            print("ready", flush=True)
            worker.main_loop(q)
    """
)


@pytest.mark.slow
def test_main_loop_runs_tasks_until_sigterm(url: str) -> None:
    def run(*args: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-c", WORKER, url, TABLE, *args]
        return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)

    pgtq.PgTq("test_queue", url, table_name=TABLE)  # the table, before two processes race
    loop = run("work")
    try:
        assert loop.stdout is not None and loop.stdout.readline() == "ready\n"
        assert run("push").wait(30) == 0
        assert loop.stdout.readline() == "hello from pgtq\n"
        loop.send_signal(signal.SIGTERM)
        assert loop.wait(30) == 0, "main_loop exits 0 on SIGTERM"
    finally:
        if loop.poll() is None:
            loop.kill()
