"""`sa-pgtq demo`, run as a user runs it: a subprocess, the lines it prints, what it leaves."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url

#: What a newcomer reads, in order (the worker's log line has a jittered delay: a pattern).
EXPECTED = [
    "1. An order and its email job in one transaction:",
    "   committed together: job #1; orders=1 jobs=1",
    "2. A failing request rolls back its order, and the job with it:",
    "   request failed (payment declined); orders=1 jobs=1  <- no job for order 2",
    "3. More work arrives in bulk and is consumed:",
    "   handling {'to': 'ada@example.com', 'order': 1} ... the mail server is down",
    "   failed: job #1 kept, attempts=1, moved to the tail",
    "   sent {'order': 3}",
    "   sent {'order': 4}",
    "   sent {'to': 'ada@example.com', 'order': 1}",
    "   queue drained; orders=1 jobs=0",
    "4. Tasks: handlers pushed in an order's transaction:",
    "   order 5 placed, ship(5) and send_receipt(5) pushed with it: committed together",
    "   order 6 failed (card declined): rolled back, its tasks with it",
    "   queued tasks: #5 ship, #6 send_receipt",
    "5. A worker runs them (as `sa-pgtq worker module:q` would); a failure is retried:",
    "   ship(5): order 5 marked shipped",
    "   send_receipt(5), attempt 1: the mail server is busy",
    re.compile(
        r"   worker log: task 6 \(send_receipt\) failed on attempt 1: "
        r"ConnectionError\('mail server busy'\); retrying in 0\.\ds"
    ),
    "   send_receipt(5), attempt 2: sent to ada@example.com",
    "6. The result, kept with the finished job (Queue(..., retention=...)):",
    "   q.result(6) -> 'receipt for order 5 sent to ada@example.com'",
    "   job #6 succeeded after 2 attempts; order 5 is shipped",
    "   queued tasks: none",
]


def run_demo(*args: str, env: dict[str, str] | None = None) -> list[str]:
    """`sa-pgtq demo ...`'s output lines (blank ones dropped), once it exited cleanly."""
    done = subprocess.run(
        [sys.executable, "-m", "sa_pgtq.cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "no warning, no traceback"
    return [line for line in done.stdout.splitlines() if line.strip()]


def assert_tour(lines: list[str]) -> None:
    tour = lines[1:]
    assert len(tour) == len(EXPECTED), "\n".join(lines)
    for line, expected in zip(tour, EXPECTED, strict=True):
        if isinstance(expected, str):
            assert line == expected
        else:
            assert expected.fullmatch(line), line


def demo_tables(db_url: str) -> list[str]:
    engine = create_engine(db_url)
    try:
        return [name for name in inspect(engine).get_table_names() if "demo" in name]
    finally:
        engine.dispose()


@pytest.mark.parametrize("given", ["--url", "DATABASE_URL"])
def test_the_demo_tells_both_layers_and_leaves_the_database_as_it_was(
    db_url: str, given: str
) -> None:
    if given == "--url":
        lines = run_demo("--url", db_url, env={"SA_PGTQ_TEST_URL": "", "DATABASE_URL": ""})
    else:
        lines = run_demo(env={"SA_PGTQ_TEST_URL": "", "DATABASE_URL": db_url})
    shown = make_url(db_url).render_as_string()  # the password hidden
    assert lines[0] == f"database: {shown}"
    assert_tour(lines)
    assert demo_tables(db_url) == [], "its tables are dropped: a second run starts afresh"
