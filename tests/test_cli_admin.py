"""The operators' commands of `sa-pgtq`, run as a user runs them: a subprocess on a database."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import async_url_for, wait_for
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.engine import make_url
from test_schema import new_database, snapshot

import sa_pgtq
from sa_pgtq import schema
from sa_pgtq.cli.output import JOB_FIELDS
from sa_pgtq.models import MAX_TABLE_NAME_BYTES, job_model
from sa_pgtq.monitor import COUNT_CAP

__all__ = ["new_database"]  # a fixture of test_schema, used here too

TABLE = "cli_jobs"
Job = job_model(TABLE)
SIDE_TABLES = f"{TABLE}, {TABLE}_queues, {TABLE}_ticks"
#: The exit statuses `sa-pgtq --help` documents.
OK, NOT_DONE, USAGE, DATABASE = 0, 1, 2, 3

Run = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """The test database with an empty queue table `cli_jobs` (the commands get --table)."""
    eng = create_engine(db_url)
    sa_pgtq.Queue(eng, table_name=TABLE).create_table()
    with eng.begin() as conn:
        conn.execute(text(f"TRUNCATE {SIDE_TABLES} RESTART IDENTITY"))
    yield eng
    eng.dispose()


@pytest.fixture
def sa_pgtq_cli(db_url: str, tmp_path: Path) -> Run:
    """Runs `sa-pgtq ARGS` (DATABASE_URL: the test database, unless `env` says otherwise)."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, "DATABASE_URL": db_url, **(env or {})}
        environment = {name: value for name, value in environment.items() if value}
        return subprocess.run(
            [sys.executable, "-m", "sa_pgtq.cli", *args],
            cwd=tmp_path,  # where a test writes an application module for --queue module:q
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


@pytest.fixture
def myapp(db_url: str, tmp_path: Path) -> dict[str, str]:
    """An application module (`myapp:q`) whose Queue alone knows the database; its env."""
    (tmp_path / "myapp.py").write_text(
        "import os, sa_pgtq\n"
        f"q = sa_pgtq.Queue(os.environ['MYAPP_URL'], name='mine', table_name={TABLE!r}, "
        "retention=3600)\n"
        "aq = sa_pgtq.AsyncQueue(os.environ['MYAPP_ASYNC_URL'], name='theirs', "
        f"table_name={TABLE!r})\n"
    )
    return {
        "MYAPP_URL": db_url,
        "MYAPP_ASYNC_URL": async_url_for(db_url, "asyncpg"),
        "DATABASE_URL": "",
    }


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert (result.returncode, result.stderr) == (OK, ""), result.stdout
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    """What a failed command said: exactly one line on stderr, no traceback, nothing on stdout."""
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def queue(engine: Engine, name: str = "default", **options: Any) -> sa_pgtq.Queue:
    return sa_pgtq.Queue(engine, name=name, table_name=TABLE, **options)


def failed_task(q: sa_pgtq.Queue, message: str = "boom") -> int:
    """A task that failed on its only attempt, its traceback kept."""

    def boom() -> None:
        raise RuntimeError(message)

    handler = q.handler(name=f"boom-{message}", max_attempts=1)(boom)
    job_id = handler.push()
    task = q.pop()
    assert task is not None and task.id == job_id
    task.run()
    return job_id


def states(engine: Engine, *ids: int) -> dict[int, str]:
    with engine.connect() as conn:
        found = conn.execute(select(Job.id, Job.state).where(Job.id.in_(ids)))
        return {row.id: row.state for row in found}


# -- stats --------------------------------------------------------------------------


def test_stats_counts_each_queue_by_state(engine: Engine, sa_pgtq_cli: Run) -> None:
    default, emails = queue(engine), queue(engine, "emails")
    default.enqueue_many("t", [1, 2])
    failed_task(emails)
    emails.handler(name="later")(lambda: None).push()
    assert emails.pop(lease=60) is not None  # running, under a lease nobody renews
    queue(engine, "idle").pause()

    stats = as_json(sa_pgtq_cli("stats", "--table", TABLE, "--json"))
    assert stats["table"] == TABLE
    by_name = {q["name"]: q for q in stats["queues"]}
    assert list(by_name) == ["default", "emails", "idle"]
    assert by_name["default"]["counts"] == {
        "queued": 2,
        "running": 0,
        "failed": 0,
        "succeeded": 0,
        "cancelled": 0,
    }
    assert by_name["emails"]["counts"]["failed"] == by_name["emails"]["counts"]["running"] == 1
    assert by_name["default"]["oldest_waiting_seconds"] >= 0
    assert by_name["idle"]["oldest_waiting_seconds"] is None
    assert [q["paused"] for q in by_name.values()] == [False, False, True]
    assert all(q["estimated"] == [] for q in by_name.values())

    lines = ok(sa_pgtq_cli("stats", "--table", TABLE)).splitlines()
    assert lines[0].split() == [
        "QUEUE", "QUEUED", "RUNNING", "FAILED", "SUCCEEDED", "CANCELLED", "OLDEST", "WAITING",
        "PAUSED",
    ]  # fmt: skip
    assert [line.split()[:6] for line in lines[1:]] == [
        ["default", "2", "0", "0", "0", "0"],
        ["emails", "0", "1", "1", "0", "0"],
        ["idle", "0", "0", "0", "0", "0"],
    ]
    assert lines[3].endswith("paused") and not lines[1].endswith("paused")
    # Counts are right-aligned under their headers.
    for header, counts in (("QUEUED", "200"), ("FAILED", "010")):
        end = lines[0].index(header) + len(header)
        assert [line[end - 1] for line in lines[1:]] == list(counts)
        assert all(line[end] == " " for line in lines[1:])


def test_stats_marks_estimated_counts(engine: Engine, sa_pgtq_cli: Run) -> None:
    """Above the exact-count cap, a count is the planner's estimate: marked, and said so."""
    queue(engine).enqueue_many("t", range(COUNT_CAP + 1))
    with engine.begin() as conn:
        conn.execute(text(f"ANALYZE {TABLE}"))
    (stats,) = as_json(sa_pgtq_cli("stats", "--table", TABLE, "--json"))["queues"]
    assert stats["estimated"] == ["queued"]
    assert stats["counts"]["queued"] > COUNT_CAP
    row = ok(sa_pgtq_cli("stats", "--table", TABLE)).splitlines()[1].split()
    assert row[:3] == ["default", f"≈{stats['counts']['queued']:,}", "0"]


def test_stats_of_an_empty_table(engine: Engine, sa_pgtq_cli: Run) -> None:
    assert ok(sa_pgtq_cli("stats", "--table", TABLE)) == f"no queues in {TABLE}\n"
    assert as_json(sa_pgtq_cli("stats", "--table", TABLE, "--json"))["queues"] == []


# -- jobs -----------------------------------------------------------------------------


def test_jobs_list_filters_and_pages_newest_first(engine: Engine, sa_pgtq_cli: Run) -> None:
    default, emails = queue(engine), queue(engine, "emails")
    a = default.enqueue_many("a", [1, 2, 3])
    b = default.enqueue("b", 4)
    broken = failed_task(emails)
    e = emails.enqueue("a", 5)
    every = [e, broken, b, *reversed(a)]

    def ids(*args: str) -> list[int]:
        found = as_json(sa_pgtq_cli("jobs", "list", "--table", TABLE, "--json", *args))
        return [job["id"] for job in found["jobs"]]

    assert ids() == every
    assert ids("--state", "failed") == [broken]
    assert ids("--tag", "a") == [e, *reversed(a)]
    assert ids("--queue", "emails") == [e, broken]
    assert ids("--queue", "default", "--tag", "a", "--state", "queued") == list(reversed(a))

    pages, before = [], []
    while True:
        page = as_json(
            sa_pgtq_cli("jobs", "list", "--table", TABLE, "--json", "--limit", "2", *before)
        )
        pages.append([job["id"] for job in page["jobs"]])
        if page["next_before"] is None:
            break
        assert page["next_before"] == pages[-1][-1]
        before = ["--before", str(page["next_before"])]
    assert pages == [every[0:2], every[2:4], every[4:6]]

    job = as_json(sa_pgtq_cli("jobs", "list", "--table", TABLE, "--json", "--limit", "1"))["jobs"][
        0
    ]
    assert list(job) == list(JOB_FIELDS)
    assert (job["id"], job["queue"], job["tag"], job["data"]) == (e, "emails", "a", 5)
    assert datetime.fromisoformat(job["created_at"]).utcoffset() == timedelta(0)

    lines = ok(sa_pgtq_cli("jobs", "list", "--table", TABLE, "--limit", "2")).splitlines()
    assert lines[0].split() == [
        "ID",
        "QUEUE",
        "KIND",
        "TAG",
        "STATE",
        "ATTEMPTS",
        "CREATED",
        "ERROR",
    ]
    assert lines[1].split()[:6] == [str(e), "emails", "message", "a", "queued", "0"]
    assert lines[2].split()[:6] == [str(broken), "emails", "task", "boom-boom", "failed", "1"]
    assert lines[2].endswith("RuntimeError: boom")
    assert lines[3] == f"(more: --before {broken})"
    assert ok(sa_pgtq_cli("jobs", "list", "--table", TABLE, "--tag", "nope")) == "no jobs\n"


def test_jobs_show_a_failed_job_with_its_traceback(engine: Engine, sa_pgtq_cli: Run) -> None:
    job_id = failed_task(queue(engine, "emails"), "the printer is on fire")

    shown = ok(sa_pgtq_cli("jobs", "show", str(job_id), "--table", TABLE))
    fields = dict(line.split(None, 1) for line in shown.splitlines()[:7])
    assert fields == {
        "id": str(job_id),
        "queue": "emails",
        "kind": "task",
        "tag": "boom-the printer is on fire",
        "state": "failed",
        "priority": "0",
        "attempts": "1",
    }
    error = shown[shown.index("\nerror\n") :]
    assert "  Traceback (most recent call last):" in error
    assert error.rstrip().endswith("  RuntimeError: the printer is on fire")
    assert "data\n  {\n" in shown  # the task's arguments, as indented JSON

    job = as_json(sa_pgtq_cli("jobs", "show", str(job_id), "--table", TABLE, "--json"))
    assert list(job) == list(JOB_FIELDS)
    assert (job["id"], job["state"], job["attempts"]) == (job_id, "failed", 1)
    assert job["last_error"].rstrip().endswith("RuntimeError: the printer is on fire")
    assert datetime.fromisoformat(job["finished_at"]) >= datetime.fromisoformat(job["created_at"])


def test_retry_cancel_and_abort_change_states(
    engine: Engine, sa_pgtq_cli: Run, myapp: dict[str, str]
) -> None:
    q = queue(engine, "mine", retention=timedelta(hours=1))  # as myapp:q, which the CLI loads
    first, second = failed_task(q, "one"), failed_task(q, "two")
    waiting = q.enqueue("t", 1)
    q.handler(name="long")(lambda: None).push()
    running = q.pop(lease=60)
    assert running is not None

    def jobs(*args: str) -> subprocess.CompletedProcess[str]:
        return sa_pgtq_cli("jobs", *args, "--queue", "myapp:q", env=myapp)

    assert ok(jobs("retry", str(first), str(second))) == f"{first}: retried\n{second}: retried\n"
    assert states(engine, first, second) == {first: "queued", second: "queued"}

    # The queue's retention keeps the cancelled job (with --url alone it would be deleted).
    assert ok(jobs("cancel", str(waiting))) == f"{waiting}: cancelled\n"
    assert states(engine, waiting) == {waiting: "cancelled"}

    assert ok(jobs("abort", str(running.id))) == f"{running.id}: aborted\n"
    job = q.job(running.id)
    assert job is not None and job.abort_requested_at is not None  # its worker is told

    # What did not apply says why, and the status says not everything was done.
    refused = jobs("retry", str(first), str(waiting))
    assert (refused.returncode, refused.stderr) == (NOT_DONE, "")
    assert refused.stdout == (
        f"{first}: not retried (it is queued)\n{waiting}: not retried (it is cancelled)\n"
    )
    refused = jobs("cancel", str(running.id))
    assert (refused.returncode, refused.stdout) == (
        NOT_DONE,
        f"{running.id}: not cancelled (it is running)\n",
    )
    assert states(engine, first, waiting, running.id)[running.id] == "running"


def test_a_missing_job_is_not_found_not_an_error(engine: Engine, sa_pgtq_cli: Run) -> None:
    assert one_line_error(sa_pgtq_cli("jobs", "show", "424242", "--table", TABLE), NOT_DONE) == (
        "sa-pgtq: no job 424242\n"
    )
    q = queue(engine)
    there = q.enqueue("t", 1)
    result = sa_pgtq_cli("jobs", "cancel", "424242", str(there), "--table", TABLE)
    assert (result.returncode, result.stderr) == (NOT_DONE, "")
    assert result.stdout == f"424242: not found\n{there}: cancelled\n"
    assert q.job(there) is None, "cancelled without a retention: deleted"


# -- pause and resume ---------------------------------------------------------------


def test_pause_and_resume(engine: Engine, sa_pgtq_cli: Run) -> None:
    emails = queue(engine, "emails")
    assert ok(sa_pgtq_cli("pause", "emails", "--table", TABLE)) == "emails: paused\n"
    assert emails.is_paused() and not queue(engine).is_paused()
    assert ok(sa_pgtq_cli("pause", "emails", "--table", TABLE)) == "emails: paused\n", "idempotent"
    assert ok(sa_pgtq_cli("resume", "emails", "--table", TABLE)) == "emails: resumed\n"
    assert not emails.is_paused()


# -- where the queue table is ---------------------------------------------------------


def test_the_applications_queue_names_database_and_table(
    engine: Engine, sa_pgtq_cli: Run, myapp: dict[str, str], db_url: str
) -> None:
    mine = queue(engine, "mine").enqueue("t", 1)
    theirs = queue(engine, "theirs").enqueue("t", 2)
    env = myapp

    stats = as_json(sa_pgtq_cli("stats", "--queue", "myapp:q", "--json", env=env))
    assert stats["table"] == TABLE
    assert [q["name"] for q in stats["queues"]] == ["mine", "theirs"]
    listed = as_json(sa_pgtq_cli("jobs", "list", "--queue", "myapp:q", "--json", env=env))
    assert [job["id"] for job in listed["jobs"]] == [mine], "its own queue's jobs"
    listed = as_json(sa_pgtq_cli("jobs", "list", "--queue", "myapp:aq", "--json", env=env))
    assert [job["id"] for job in listed["jobs"]] == [theirs], "an AsyncQueue too"
    assert ok(sa_pgtq_cli("pause", "mine", "--queue", "myapp:q", env=env)) == "mine: paused\n"
    assert queue(engine, "mine").is_paused()

    # The URL as a libpq key=value DSN, and as a bare libpq URI.
    url = make_url(db_url)
    params = {**url.translate_connect_args(username="user", database="dbname"), **url.query}
    dsn = " ".join(f"{key}={value}" for key, value in params.items())
    uri = url.set(drivername="postgresql").render_as_string(hide_password=False)
    for given in (dsn, uri):
        stats = as_json(sa_pgtq_cli("stats", "--url", given, "--table", TABLE, "--json", env=env))
        assert [q["name"] for q in stats["queues"]] == ["mine", "theirs"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "the following arguments are required: COMMAND"),
        (("nope",), "invalid choice: 'nope'"),
        (("jobs", "list", "--state", "lost"), "argument --state: invalid choice: 'lost'"),
        (("jobs", "list", "--limit", "0"), "argument --limit: expected 1 to 1000, got '0'"),
        (("jobs", "show", "seven"), "argument id: not a job id: 'seven'"),
        (("jobs", "retry"), "the following arguments are required: ID"),
        (("jobs", "cancel", "99999999999999999999"), "not a job id"),
        (("stats", "--url", "no such thing"), "bad database URL"),
        (("stats", "--url", "mysql://localhost/app"), "bad database URL"),
        (("stats", "--url", "sqlite://"), "sa_pgtq needs PostgreSQL, not sqlite"),
        (("stats", "--queue", "nosuchmodule:q"), "cannot load nosuchmodule:q: No module named"),
        (("stats", "--queue", "json:dumps"), "json:dumps is a function, not a sa_pgtq.Queue"),
        (("stats", "--queue", "json"), "expected module:attribute, got 'json'"),
        (
            ("stats", "--table", "x" * (MAX_TABLE_NAME_BYTES + 1)),
            f"table_name must be at most {MAX_TABLE_NAME_BYTES} bytes long",
        ),
        (("dashboard", "--port", "70000"), "argument --port: not a TCP port: '70000'"),
        (("sql", "--from-version", "9"), "argument --from-version: invalid choice: 9"),
        (("sql", "--from-version", str(schema.LATEST)), "argument --from-version: invalid choice"),
        (("sql", "--table", ""), "table_name must not be empty"),
    ],
)
def test_bad_arguments_get_one_line(sa_pgtq_cli: Run, args: tuple[str, ...], says: str) -> None:
    assert says in one_line_error(sa_pgtq_cli(*args), USAGE)


def test_no_database_given(sa_pgtq_cli: Run) -> None:
    said = one_line_error(sa_pgtq_cli("stats", env={"DATABASE_URL": ""}), USAGE)
    assert (
        said == "sa-pgtq: no database: give --url, --queue module:attribute, or set DATABASE_URL\n"
    )


def test_a_database_that_fails_is_one_line_too(engine: Engine, sa_pgtq_cli: Run) -> None:
    unreachable = sa_pgtq_cli("stats", "--url", "postgresql://nobody@127.0.0.1:1/none")
    assert one_line_error(unreachable, DATABASE).startswith("sa-pgtq: database error: ")
    missing = one_line_error(sa_pgtq_cli("jobs", "list", "--table", "no_such_jobs"), DATABASE)
    assert '"no_such_jobs" does not exist' in missing and "give --table" in missing


def test_help_documents_the_exit_statuses(sa_pgtq_cli: Run) -> None:
    shown = ok(sa_pgtq_cli("--help"))
    for command in ("worker", "demo", "stats", "jobs", "pause", "resume", "sql", "dashboard"):
        assert f"    {command}" in shown
    assert "  1  a job id not found, or an action that did not apply" in shown
    assert "  3  the database failed" in shown
    assert "--concurrency" in ok(sa_pgtq_cli("worker", "--help"))


# -- sql ------------------------------------------------------------------------------


def apply(url: str, script: str) -> None:
    """Run a script as a DBA would: psql, stopping at the first error (else the driver)."""
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    if shutil.which("psql"):
        subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", libpq, "-f", "-"],
            input=script,
            text=True,
            check=True,
            capture_output=True,
            timeout=60,
        )
    else:  # one simple-protocol query of many statements, as psql -c sends it
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.connection.dbapi_connection.cursor().execute(script)  # type: ignore[union-attr]
            conn.connection.dbapi_connection.commit()  # type: ignore[union-attr]
        engine.dispose()


# The catalog snapshot finds a table's comment, constraints and storage by a plain name.
@pytest.mark.parametrize("table", ["sa_pgtq_jobs", "ops_jobs"])
def test_sql_creates_what_create_table_makes(
    sa_pgtq_cli: Run, new_database: Callable[[], str], table: str
) -> None:
    script = ok(sa_pgtq_cli("sql", "--table", table, env={"DATABASE_URL": ""}))
    assert script.startswith(f"-- sa_pgtq schema versions 1 to {schema.LATEST}")
    scripted, created = new_database(), new_database()
    apply(scripted, script)
    assert sa_pgtq.Queue(created, table_name=table).create_table()
    with create_engine(scripted).connect() as s, create_engine(created).connect() as c:
        found = snapshot(s, table)
        assert found == snapshot(c, table)
    kinds = {kind for kind, _ in found}
    assert {"comment", "storage", f"{table}_queues column", f"{table}_ticks column"} <= kinds
    q = sa_pgtq.Queue(scripted, table_name=table)
    q.enqueue("t", 1)
    assert q.dequeue_immediate("t") == 1


def test_sql_quotes_a_table_name(sa_pgtq_cli: Run, new_database: Callable[[], str]) -> None:
    table = "Odd 'name\"; DROP TABLE x; --"
    url = new_database()
    apply(url, ok(sa_pgtq_cli("sql", "--table", table)))
    q = sa_pgtq.Queue(url, table_name=table)
    assert q.create_table() is False, "there already"
    q.enqueue("t", 1)
    assert q.dequeue_immediate("t") == 1


def test_sql_upgrades_a_table_from_its_version(
    sa_pgtq_cli: Run, new_database: Callable[[], str]
) -> None:
    old, created = new_database(), new_database()
    with create_engine(old).begin() as conn:
        schema.upgrade(schema.operations(conn), to_version=4)
    apply(old, ok(sa_pgtq_cli("sql", "--from-version", "4")))
    assert sa_pgtq.Queue(created).create_table()
    with create_engine(old).connect() as o, create_engine(created).connect() as c:
        assert snapshot(o) == snapshot(c)


# -- dashboard ------------------------------------------------------------------------


def test_dashboard_serves_until_stopped(engine: Engine, db_url: str, tmp_path: Path) -> None:
    queue(engine, "emails").enqueue("t", 1)
    log = tmp_path / "dashboard.log"
    command = [sys.executable, "-m", "sa_pgtq.cli", "dashboard", "--url", db_url]
    command += ["--table", TABLE, "--port", "0", "--read-only"]  # port 0: uvicorn picks one
    with log.open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        address: list[str] = []

        def listening() -> bool:
            assert server.poll() is None, log.read_text()
            address[:] = re.findall(r"running on (http://\S+)", log.read_text())
            return bool(address)

        wait_for(listening, 30)
        with urllib.request.urlopen(address[0] + "/", timeout=10) as page:
            assert page.status == 200 and "emails" in page.read().decode()
        pause = urllib.request.Request(address[0] + "/queues/emails/pause", b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(pause, timeout=10)
        assert refused.value.code == 403, "read-only"
    finally:
        server.terminate()
        server.wait(timeout=30)
    # uvicorn shuts down cleanly, then ends by the signal it caught (recent versions).
    assert server.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()
    assert not queue(engine, "emails").is_paused()


def test_dashboard_checks_the_database_before_serving(sa_pgtq_cli: Run) -> None:
    said = one_line_error(sa_pgtq_cli("dashboard", "--table", "no_such_jobs"), DATABASE)
    assert '"no_such_jobs" does not exist' in said


def test_dashboard_without_its_extra_says_what_to_install(db_url: str) -> None:
    uvicorn_missing = (
        "import sys; sys.modules['uvicorn'] = None; from sa_pgtq.cli import main; "
        "sys.exit(main(['dashboard']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", uvicorn_missing],
        env={**os.environ, "DATABASE_URL": db_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = one_line_error(result, USAGE)
    assert said == 'sa-pgtq: the dashboard needs uvicorn: pip install "sa_pgtq[dashboard]"\n'
