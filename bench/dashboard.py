"""How long the dashboard's pages take beside a million jobs.

    python bench/dashboard.py [--url URL] [--jobs 1000000] [--rounds 7]

Fills a table of its own (`bench_dashboard_jobs`, dropped at the end) with mixed
states and queues in one INSERT .. SELECT generate_series, analyzes it, then times
each page through Starlette's TestClient (the app in-process, no network): the
median and the slowest of --rounds requests after one to warm up. Without --url an
embedded throwaway PostgreSQL is used.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

import sa_pgtq
from sa_pgtq.dashboard import create_app
from sa_pgtq.embedded import database_url

TABLE = "bench_dashboard_jobs"

# Row n's queue (from n / 100) and state (from n % 100) follow from n, so every run fills
# the same table: queues emails 40 %, reports 30 %, billing 20 %, x 10 %; states
# succeeded 70 %, queued 15 %, cancelled 8 %, failed 5 %, running 2 %. Finished jobs
# finished over the last two hours.
FILL = f"""
INSERT INTO {TABLE} (queue, kind, tag, data, state, attempts, created_at, run_at,
                     finished_at, lease_expires_at, locked_by, last_error, result)
SELECT q.queue, 'task', q.tag,
       jsonb_build_object('args', jsonb_build_array(n), 'kwargs', '{{}}'::jsonb),
       s.state, CASE WHEN s.state = 'queued' THEN 0 ELSE 1 END,
       now() - make_interval(secs => n % 7200 + 60), now() - make_interval(secs => n % 3600),
       CASE WHEN s.state IN ('succeeded', 'failed', 'cancelled')
            THEN now() - make_interval(secs => n % 7200) END,
       CASE WHEN s.state = 'running' THEN now() + interval '1 hour' END,
       CASE WHEN s.state = 'running' THEN 'bench-worker' END,
       CASE WHEN s.state = 'failed'
            THEN E'Traceback (most recent call last):\\n  ...\\nRuntimeError: job ' || n END,
       CASE WHEN s.state = 'succeeded' THEN to_jsonb(n) END
FROM generate_series(1, :jobs) AS n,
     LATERAL (SELECT CASE WHEN n / 100 % 10 < 4 THEN 'emails' WHEN n / 100 % 10 < 7 THEN 'reports'
                          WHEN n / 100 % 10 < 9 THEN 'billing' ELSE 'x' END AS queue,
                     CASE WHEN n % 1000 = 0 THEN 'rare' ELSE 'send' END AS tag) AS q,
     LATERAL (SELECT CASE WHEN n % 100 < 70 THEN 'succeeded' WHEN n % 100 < 85 THEN 'queued'
                          WHEN n % 100 < 93 THEN 'cancelled' WHEN n % 100 < 95 THEN 'failed'
                          ELSE 'running' END AS state) AS s
"""  # noqa: S608 (the bench's own table name)


def fill(engine: Engine, jobs: int) -> None:
    started = time.perf_counter()
    sa_pgtq.Queue(engine, table_name=TABLE).create_table()
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLE}, {TABLE}_queues RESTART IDENTITY"))
        conn.execute(text(FILL), {"jobs": jobs})
        paused = f"INSERT INTO {TABLE}_queues VALUES ('billing', now())"  # noqa: S608
        conn.execute(text(paused))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM ANALYZE {TABLE}"))
    print(f"{jobs:,} jobs written and analyzed in {time.perf_counter() - started:.1f} s")


def drop(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {TABLE}, {TABLE}_queues, {TABLE}_ticks"))


def timed(client: TestClient, path: str, rounds: int) -> tuple[float, float]:
    """Median and slowest milliseconds of `rounds` GETs of `path`, after one to warm up."""
    assert client.get(path).status_code == 200, path
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, path
    return statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: an embedded PostgreSQL)")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    with database_url(args.url) as uri:
        engine = create_engine(make_url(uri).set(drivername="postgresql+psycopg2"))
        try:
            fill(engine, args.jobs)
            with TestClient(create_app(engine, table_name=TABLE)) as client:
                first = client.get("/jobs").text
                last_shown = re.findall(r'<a href="/jobs/(\d+)">', first)[-1]
                overview = client.get("/").text
                print(
                    "overview counts of queue x:",
                    re.findall(r'queue=x&amp;state=\w+">([^<]+)<', overview),
                )
                pages = [
                    "/",
                    "/jobs",
                    "/jobs?state=failed",
                    "/jobs?state=queued&queue=x",
                    f"/jobs/{args.jobs // 2}",
                    f"/jobs?before={last_shown}",  # page 2, by keyset
                    "/jobs?state=failed&queue=reports&limit=200",
                    "/jobs?state=running&queue=billing",
                    "/jobs?tag=rare",
                    "/jobs?queue=nowhere",  # a queue with no job: through the indexes
                    "/jobs?tag=nowhere",  # a tag no job has: the whole table, walked back
                ]
                print(f"{'page':45s} {'median ms':>10s} {'max ms':>8s}")
                for path in pages:
                    median, slowest = timed(client, path, args.rounds)
                    print(f"{path:45s} {median:10.1f} {slowest:8.1f}", flush=True)
        finally:
            drop(engine)
            engine.dispose()


if __name__ == "__main__":
    main()
