"""The dashboard in a real browser: Debian's chromium, driven by Playwright, on a real uvicorn.

The app is mounted under a prefix of a host application, as it would be in production,
and the browser sends its own Origin and Sec-Fetch-Site headers to the CSRF checks.
A screenshot of each page is kept under a temporary directory (its path is printed).
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import engine_for, wait_for
from sqlalchemy import Engine, text

import sa_pgtq

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn (the dashboard extra) is not installed")
from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Mount  # noqa: E402

from sa_pgtq.dashboard import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("no chromium browser (Debian's `chromium` package)", allow_module_level=True)

#: Playwright cannot download a browser of its own here; Debian's runs without a sandbox
#: (as root) and without reaching out to any service.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PREFIX = "/ops/queue"
log = logging.getLogger(__name__)


@pytest.fixture
def psycopg2_engine(db_url: str) -> Iterator[Engine]:
    """One driver is enough here: the ASGI tests run the dashboard on each."""
    eng = engine_for(db_url, "psycopg2")
    sa_pgtq.Queue(eng).create_table()
    with eng.begin() as conn:
        conn.execute(text("TRUNCATE sa_pgtq_jobs, sa_pgtq_jobs_queues RESTART IDENTITY"))
    yield eng
    eng.dispose()


@pytest.fixture
def served(psycopg2_engine: Engine) -> Iterator[str]:
    """The dashboard mounted at PREFIX of a host app, on uvicorn in a thread: its URL."""
    host = Starlette(routes=[Mount(PREFIX, app=create_app(psycopg2_engine))])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held from the start: no race for it
    server = uvicorn.Server(uvicorn.Config(host, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 10)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}{PREFIX}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def page() -> Iterator[sync_api.Page]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(10_000)  # every wait of the browser has a deadline
            yield page
        finally:
            browser.close()


@pytest.fixture
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dashboard-screenshots")
    print(f"dashboard screenshots: {folder}")
    log.warning("dashboard screenshots: %s", folder)
    return folder


def test_an_operator_retries_a_failed_job_and_pauses_a_queue(
    psycopg2_engine: Engine, served: str, page: sync_api.Page, shots: Path
) -> None:
    engine = psycopg2_engine
    emails = sa_pgtq.Queue(engine, name="emails")
    reports = sa_pgtq.Queue(engine, name="reports", retention=3600)
    for n in range(3):
        emails.enqueue("welcome", {"to": f"user{n}@example.com"})

    @reports.handler(max_attempts=1)
    def monthly(month: str) -> dict[str, int]:
        if month == "May":
            raise RuntimeError(f"the report of {month} broke")
        return {"rows": 42}

    broken = monthly.push("May")
    for month in ("March", "April"):
        monthly.push(month)
    sa_pgtq.Worker(reports, install_signal_handlers=False).run(burst=True)
    monthly.push("June")
    expect = sync_api.expect

    page.goto(f"{served}/")
    expect(page.locator("h1")).to_have_text("Queues")
    expect(page.locator("table.queues tbody tr")).to_have_count(2)
    page.screenshot(path=shots / "1-overview.png", full_page=True)

    page.get_by_role("link", name="Jobs", exact=True).click()
    page.select_option("select[name=state]", "failed")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(f"{served}/jobs?queue=&state=failed&tag=")
    expect(page.locator("table.jobs tbody tr")).to_have_count(1)
    page.screenshot(path=shots / "2-failed-jobs.png", full_page=True)

    page.get_by_role("link", name=str(broken), exact=True).click()
    expect(page.locator("h1")).to_contain_text(f"Job {broken}")
    expect(page.locator("pre.traceback")).to_contain_text("RuntimeError: the report of May broke")
    page.screenshot(path=shots / "3-failed-job.png", full_page=True)

    page.get_by_role("button", name="Retry").click()
    expect(page.locator(".flash")).to_have_text(f"Job {broken} queued again.")
    assert reports.job(broken).state == "queued"  # type: ignore[union-attr]
    page.screenshot(path=shots / "4-retried-job.png", full_page=True)

    page.get_by_role("link", name="Queues").click()
    reports_row = page.locator("table.queues tbody tr", has_text="reports")
    reports_row.get_by_role("button", name="Pause").click()
    expect(page.locator(".flash")).to_contain_text("Queue reports paused")
    assert reports.is_paused() and not emails.is_paused()
    page.screenshot(path=shots / "5-paused-queue.png", full_page=True)

    reports_row.get_by_role("button", name="Resume").click()
    expect(page.locator(".flash")).to_have_text("Queue reports resumed.")
    assert not reports.is_paused()
    page.screenshot(path=shots / "6-resumed-queue.png", full_page=True)
    assert sorted(p.name for p in shots.iterdir()) == [
        "1-overview.png",
        "2-failed-jobs.png",
        "3-failed-job.png",
        "4-retried-job.png",
        "5-paused-queue.png",
        "6-resumed-queue.png",
    ]
