"""The dashboard through an ASGI client: pages, filters, actions, CSRF, read-only, authorize."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, text

import sa_pgtq
from sa_pgtq import monitor as monitor_module
from sa_pgtq.monitor import Monitor

pytest.importorskip("jinja2")
pytest.importorskip("httpx")  # Starlette's TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount
from starlette.testclient import TestClient

from sa_pgtq.dashboard import create_app

HOST = "http://testserver"  # TestClient's own origin
_TOKEN = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


@dataclass
class Jobs:
    """What the fixture put in the table, by what each job is for."""

    failed: int
    queued: int
    running: int
    succeeded: int
    messages: list[int]
    reports: sa_pgtq.Queue  # keeps finished jobs for an hour


@pytest.fixture
def jobs(clean: Engine) -> Jobs:
    """Queues `emails` (messages) and `reports` (tasks: failed, succeeded, running, waiting)."""
    emails = sa_pgtq.Queue(clean, name="emails")
    reports = sa_pgtq.Queue(clean, name="reports", retention=3600)
    messages = [emails.enqueue("welcome", {"to": f"user{n}@example.com"}) for n in range(5)]

    @reports.handler(max_attempts=1)
    def broken(month: str) -> None:
        raise RuntimeError(f"the report of {month} broke")

    @reports.handler()
    def total(month: str) -> dict[str, Any]:
        return {"month": month, "total": 42}

    failed, succeeded = broken.push("May"), total.push("June")
    sa_pgtq.Worker(reports, install_signal_handlers=False).run(burst=True)
    running = total.push("July")
    assert reports.pop(lease=300) is not None  # claimed, never run: it stays running
    queued = total.push("August")
    return Jobs(failed, queued, running, succeeded, messages, reports)


@pytest.fixture
def client(clean: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(clean)) as client:
        yield client


def state_of(engine: Engine, job_id: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT state FROM sa_pgtq_jobs WHERE id = :id"), {"id": job_id}
        ).scalar_one_or_none()


def token(client: TestClient, page: str = "/") -> str:
    """The CSRF token of a page's forms (getting it also sets the cookie it signs)."""
    found = _TOKEN.search(client.get(page).text)
    assert found is not None, "the page has no action form"
    return found.group(1)


def act(client: TestClient, path: str, *, page: str = "/", **headers: str) -> Any:
    """POST an action as the dashboard's own form does, from its own origin."""
    form = {"csrf_token": token(client, page)}
    return client.post(path, data=form, headers={"Origin": HOST, **headers}, follow_redirects=False)


def row(html: str, queue: str) -> str:
    """The overview's row of a queue."""
    found = re.search(rf'<tr>\s*<td><a href="/jobs\?queue={queue}">.*?</tr>', html, re.S)
    assert found is not None, f"no row of {queue}"
    return found.group()


def link(html: str, label: str) -> str:
    found = re.search(rf'href="([^"]+)">{re.escape(label)}</a>', html)
    assert found is not None, f"no link {label!r}"
    return found.group(1).replace("&amp;", "&")


# -- pages ----------------------------------------------------------------------------


def test_overview_shows_each_queue_its_counts_wait_pause_and_throughput(
    jobs: Jobs, client: TestClient, clean: Engine
) -> None:
    Monitor(clean).pause("emails")
    page = client.get("/")
    assert page.status_code == 200
    html = page.text
    assert re.findall(r'<tr>\s*<td><a href="/jobs\?queue=(\w+)">', html) == ["emails", "reports"]
    emails, reports = row(html, "emails"), row(html, "reports")
    # Counts by state, in the order of the header, each a link to those jobs.
    assert re.findall(r'state=\w+">([^<]+)</a>', emails) == ["5", "0", "0", "0", "0"]
    assert re.findall(r'state=\w+">([^<]+)</a>', reports) == ["1", "1", "1", "1", "0"]
    assert "paused" in emails and "Resume" in emails
    assert "active" in reports and "Pause" in reports
    # The throughput chart: one succeeded and one failed job in the last hour.
    assert "<svg" in html
    assert "1 succeeded" in html and "1 failed" in html


def test_counts_above_the_cap_are_shown_as_estimates(
    jobs: Jobs, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitor_module, "COUNT_CAP", 2)
    emails = row(client.get("/").text, "emails")
    (shown,) = re.findall(r'state=queued">([^<]+)</a>', emails)
    assert shown.startswith("≈")  # the planner's estimate, however close it is


def test_jobs_are_filtered_by_queue_state_and_tag(jobs: Jobs, client: TestClient) -> None:
    def ids(query: str) -> list[int]:
        page = client.get(f"/jobs?{query}")
        assert page.status_code == 200
        return [int(i) for i in re.findall(r'<a href="/jobs/(\d+)">', page.text)]

    everything = sorted([*jobs.messages, jobs.failed, jobs.queued, jobs.running, jobs.succeeded])
    assert ids("") == everything[::-1]
    assert ids("queue=emails") == jobs.messages[::-1]
    assert ids("state=failed") == [jobs.failed]
    assert ids("state=queued&queue=reports") == [jobs.queued]
    assert ids("tag=total&state=succeeded") == [jobs.succeeded]
    assert ids("queue=emails&state=failed") == []
    assert ids("queue=&state=&tag=") == everything[::-1]  # the filter form's "any"


def test_jobs_are_paged_newest_first_by_keyset(jobs: Jobs, client: TestClient) -> None:
    seen: list[int] = []
    page = client.get("/jobs?queue=emails&limit=2")
    while True:
        seen += [int(i) for i in re.findall(r'<a href="/jobs/(\d+)">', page.text)]
        if "Older →" not in page.text:
            break
        older = link(page.text, "Older →")
        assert "queue=emails" in older and "limit=2" in older  # the filters are kept
        page = client.get(older)
    assert seen == jobs.messages[::-1]


def test_a_failed_jobs_page_shows_its_data_error_and_times(jobs: Jobs, client: TestClient) -> None:
    html = client.get(f"/jobs/{jobs.failed}").text
    assert f"Job {jobs.failed}" in html and '<span class="state failed">failed</span>' in html
    assert "Traceback (most recent call last)" in html
    assert "RuntimeError: the report of May broke" in html
    assert "&#34;May&#34;" in html  # the task's arguments, as JSON
    assert re.search(r"<th>Created</th><td[^>]*>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", html)
    assert ">Retry</button>" in html and ">Cancel</button>" in html
    assert ">Abort</button>" not in html


def test_a_succeeded_jobs_page_shows_its_result(jobs: Jobs, client: TestClient) -> None:
    html = client.get(f"/jobs/{jobs.succeeded}").text
    assert "<h2>Result</h2>" in html and "&#34;total&#34;: 42" in html
    assert "<button" not in html.split("<main>")[1]  # nothing left to do to it


def test_everything_shown_is_escaped(clean: Engine, client: TestClient) -> None:
    q = sa_pgtq.Queue(clean, name="<b>queue</b>")
    job_id = q.enqueue("<script>alert(1)</script>", {"html": "<img src=x onerror=alert(1)>"})
    for page in ("/", "/jobs", f"/jobs/{job_id}"):
        html = client.get(page).text
        assert "<script>alert" not in html and "<img src=x" not in html and "<b>queue" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get(f"/jobs/{job_id}").text


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/jobs/abc", 404, "Not Found"),
        ("/jobs/987654", 404, "There is no job 987654"),
        ("/jobs/99999999999999999999", 400, "64-bit"),
        ("/jobs?state=lost", 400, "state must be one of"),
        ("/jobs?limit=0", 400, "limit"),
        ("/jobs?limit=100000", 400, "limit must be at most"),
        ("/jobs?limit=ten", 400, "limit must be an integer"),
        ("/jobs?before=1.5", 400, "before must be an integer"),
        ("/nowhere", 404, "Not Found"),
    ],
)
def test_bad_ids_and_filters_get_an_error_page(
    client: TestClient, path: str, status: int, says: str
) -> None:
    page = client.get(path)
    assert page.status_code == status
    assert says in page.text and "<html" in page.text


# -- actions --------------------------------------------------------------------------


def test_retry_queues_a_failed_job_again(jobs: Jobs, client: TestClient, clean: Engine) -> None:
    answer = act(client, f"/jobs/{jobs.failed}/retry", page=f"/jobs/{jobs.failed}")
    assert answer.status_code == 303 and answer.headers["location"] == f"/jobs/{jobs.failed}"
    assert state_of(clean, jobs.failed) == "queued"
    page = client.get(answer.headers["location"])
    assert f"Job {jobs.failed} queued again." in page.text
    assert "queued again" not in client.get("/").text  # the message is shown once


def test_cancel_and_abort_end_jobs(jobs: Jobs, clean: Engine) -> None:
    # On the queue's own dashboard, which keeps finished jobs as the queue does.
    client = TestClient(create_app(jobs.reports))
    answer = act(client, f"/jobs/{jobs.queued}/cancel")
    assert answer.status_code == 303 and answer.headers["location"] == f"/jobs/{jobs.queued}"
    assert state_of(clean, jobs.queued) == "cancelled"
    answer = act(client, f"/jobs/{jobs.running}/abort")
    assert answer.headers["location"] == f"/jobs/{jobs.running}"
    with clean.connect() as conn:
        asked = conn.execute(
            text("SELECT abort_requested_at FROM sa_pgtq_jobs WHERE id = :id"),
            {"id": jobs.running},
        ).scalar_one()
    assert asked is not None
    assert "its worker was asked to stop it" in client.get(answer.headers["location"]).text


def test_cancelling_a_job_that_is_then_deleted_goes_back_to_its_queue(
    jobs: Jobs, client: TestClient, clean: Engine
) -> None:
    answer = act(client, f"/jobs/{jobs.messages[0]}/cancel")  # emails keeps nothing
    assert answer.headers["location"] == "/jobs?queue=emails"
    assert state_of(clean, jobs.messages[0]) is None
    assert f"Job {jobs.messages[0]} cancelled." in client.get(answer.headers["location"]).text


def test_an_action_that_does_not_apply_says_so(
    jobs: Jobs, client: TestClient, clean: Engine
) -> None:
    answer = act(client, f"/jobs/{jobs.succeeded}/retry")
    assert answer.status_code == 303
    assert state_of(clean, jobs.succeeded) == "succeeded"
    page = client.get(answer.headers["location"]).text
    assert "was not retried: it is succeeded, and only a failed job can be." in page


def test_a_retry_that_finds_the_unique_key_taken_says_so(clean: Engine, client: TestClient) -> None:
    q = sa_pgtq.Queue(clean, name="keyed")

    @q.handler(max_attempts=1)
    def sync(account: int) -> None:
        raise RuntimeError("the bank is down")

    failed = sync.options(unique_key="account-1").push(1)
    sa_pgtq.Worker(q, install_signal_handlers=False).run(burst=True)
    sync.options(unique_key="account-1").push(1)  # a new job holds the key now
    answer = act(client, f"/jobs/{failed}/retry")
    assert state_of(clean, failed) == "failed"
    page = client.get(answer.headers["location"]).text
    assert f"Job {failed} stays failed: another job of its queue holds its unique key." in page


@pytest.mark.parametrize("name", ["reports", "a/b c"])
def test_pause_and_resume_a_queue(jobs: Jobs, client: TestClient, clean: Engine, name: str) -> None:
    segment = name.replace("/", "%2F").replace(" ", "%20")
    answer = act(client, f"/queues/{segment}/pause")
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    assert sa_pgtq.Queue(clean, name=name).is_paused()
    assert f"Queue {name} paused" in client.get("/").text
    act(client, f"/queues/{segment}/resume")
    assert not sa_pgtq.Queue(clean, name=name).is_paused()


def test_unknown_actions_and_jobs_are_not_found(jobs: Jobs, client: TestClient) -> None:
    assert act(client, f"/jobs/{jobs.failed}/explode").status_code == 404
    assert act(client, "/queues/reports/drain").status_code == 404
    assert act(client, "/jobs/987654/retry").status_code == 404
    assert act(client, f"/queues/{'x' * 300}/pause").status_code == 400  # too long a name


# -- cross-site requests --------------------------------------------------------------


def _post(client: TestClient, path: str, form: dict[str, str], headers: dict[str, str]) -> Any:
    return client.post(path, data=form, headers=headers, follow_redirects=False)


CSRF_CASES: dict[str, tuple[Callable[[str], dict[str, str]], dict[str, str], str]] = {
    # case: (the form, given the good token; the headers; what the refusal says)
    "no Origin": (lambda t: {"csrf_token": t}, {}, "no Origin header"),
    "foreign Origin": (
        lambda t: {"csrf_token": t},
        {"Origin": "https://evil.example"},
        "came from https://evil.example",
    ),
    "null Origin": (lambda t: {"csrf_token": t}, {"Origin": "null"}, "no Origin header"),
    "cross-site fetch": (
        lambda t: {"csrf_token": t},
        {"Origin": HOST, "Sec-Fetch-Site": "cross-site"},
        "Sec-Fetch-Site: cross-site",
    ),
    "same-site fetch": (
        lambda t: {"csrf_token": t},
        {"Origin": HOST, "Sec-Fetch-Site": "same-site"},
        "Sec-Fetch-Site: same-site",
    ),
    "no token": (lambda t: {}, {"Origin": HOST}, "CSRF token is missing or does not match"),
    "bad token": (
        lambda t: {"csrf_token": "0" * len(t)},
        {"Origin": HOST},
        "CSRF token is missing or does not match",
    ),
}


@pytest.mark.parametrize("case", CSRF_CASES)
def test_cross_site_posts_are_refused(
    jobs: Jobs, client: TestClient, clean: Engine, case: str
) -> None:
    form, headers, says = CSRF_CASES[case]
    good = token(client)
    for path in (f"/jobs/{jobs.failed}/retry", "/queues/reports/pause"):
        answer = _post(client, path, form(good), headers)
        assert answer.status_code == 403
        assert says in answer.text
    assert state_of(clean, jobs.failed) == "failed"
    assert not sa_pgtq.Queue(clean, name="reports").is_paused()


def test_a_token_is_good_only_with_its_own_cookie(jobs: Jobs, clean: Engine) -> None:
    app = create_app(clean)
    with TestClient(app) as mine, TestClient(app) as theirs:
        stolen = token(theirs)
        token(mine)  # mine has a cookie of its own
        answer = _post(mine, f"/jobs/{jobs.failed}/retry", {"csrf_token": stolen}, {"Origin": HOST})
        assert answer.status_code == 403
        mine.cookies.clear()
        answer = _post(mine, f"/jobs/{jobs.failed}/retry", {"csrf_token": stolen}, {"Origin": HOST})
        assert answer.status_code == 403  # no cookie at all
    assert state_of(clean, jobs.failed) == "failed"


def test_a_shared_secret_makes_tokens_good_across_processes(jobs: Jobs, clean: Engine) -> None:
    first, second = create_app(clean, secret="s3cret"), create_app(clean, secret="s3cret")
    with TestClient(first) as shown, TestClient(second) as served:
        good = token(shown)
        served.cookies.update(shown.cookies)
        answer = _post(served, f"/jobs/{jobs.failed}/retry", {"csrf_token": good}, {"Origin": HOST})
    assert answer.status_code == 303
    assert state_of(clean, jobs.failed) == "queued"


# -- read-only, authorize, mounting ---------------------------------------------------


def test_read_only_shows_no_forms_and_refuses_every_post(jobs: Jobs, clean: Engine) -> None:
    Monitor(clean).pause("emails")
    with TestClient(create_app(clean, read_only=True)) as client:
        for page in ("/", "/jobs", f"/jobs/{jobs.failed}", f"/jobs/{jobs.queued}"):
            html = client.get(page).text
            assert "read-only" in html
            assert 'method="post"' not in html
            assert not re.search(r">(Retry|Cancel|Abort|Pause|Resume)</button>", html)
        for path in (
            f"/jobs/{jobs.failed}/retry",
            f"/jobs/{jobs.queued}/cancel",
            f"/jobs/{jobs.running}/abort",
            "/queues/reports/pause",
            "/queues/emails/resume",
            "/",  # routes that take no POST at all: 403 too, not 405
            f"/jobs/{jobs.failed}",
        ):
            answer = client.post(path, headers={"Origin": HOST}, follow_redirects=False)
            assert answer.status_code == 403 and "read-only" in answer.text
    assert [state_of(clean, i) for i in (jobs.failed, jobs.queued)] == ["failed", "queued"]
    assert Monitor(clean).queues()[0].paused  # emails, still paused


def test_authorize_is_asked_about_every_request(jobs: Jobs, clean: Engine) -> None:
    asked: list[str] = []

    def only_admins(request: Request) -> bool:
        asked.append(f"{request.method} {request.url.path}")
        return request.headers.get("x-role") == "admin"

    with TestClient(create_app(clean, authorize=only_admins)) as client:
        assert client.get("/").status_code == 403
        assert client.get("/nowhere").status_code == 403
        assert client.post(f"/jobs/{jobs.failed}/retry").status_code == 403
        client.headers["x-role"] = "admin"
        assert client.get("/").status_code == 200
        assert act(client, f"/jobs/{jobs.failed}/retry").status_code == 303
    assert asked[:3] == ["GET /", "GET /nowhere", f"POST /jobs/{jobs.failed}/retry"]
    assert state_of(clean, jobs.failed) == "queued"


def test_authorize_may_be_async(jobs: Jobs, clean: Engine) -> None:
    async def nobody(request: Request) -> bool:
        return False

    with TestClient(create_app(clean, authorize=nobody)) as client:
        page = client.get(f"/jobs/{jobs.failed}")
        assert page.status_code == 403 and "not allowed" in page.text
        assert "RuntimeError" not in page.text


def test_mounted_under_a_prefix_every_link_and_form_stays_under_it(
    jobs: Jobs, clean: Engine
) -> None:
    host = Starlette(routes=[Mount("/ops/queue", app=create_app(clean))])
    with TestClient(host) as client:
        html = client.get("/ops/queue/").text
        targets = re.findall(r'(?:href|action)="([^"]+)"', html)
        assert targets and all(t.startswith("/ops/queue/") for t in targets), targets
        failed = client.get("/ops/queue/jobs?state=failed")
        job_page = f"/ops/queue/jobs/{jobs.failed}"
        assert f'href="{job_page}"' in failed.text
        answer = act(client, f"{job_page}/retry", page=job_page)
        assert answer.status_code == 303 and answer.headers["location"] == job_page
        assert "queued again" in client.get(job_page).text
    assert state_of(clean, jobs.failed) == "queued"
