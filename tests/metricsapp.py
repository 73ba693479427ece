"""The metrics tests' application: `sa-pgtq worker metricsapp:q` (or `metricsapp:aq`, asyncio).

Both are queue "metrics" of the same table: tasks pushed through either run in either.
The URL (psycopg2) comes from SA_PGTQ_WORKER_URL; the AsyncQueue gets asyncpg.
"""

from __future__ import annotations

import os

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

import sa_pgtq

url = make_url(os.environ["SA_PGTQ_WORKER_URL"])
q = sa_pgtq.Queue(create_engine(url), name="metrics", poll_interval=0.5)
aq = sa_pgtq.AsyncQueue(
    create_async_engine(url.set(drivername="postgresql+asyncpg")), name="metrics", poll_interval=0.5
)


def ok(n: int) -> int:
    return n


def flaky(n: int) -> None:
    """Fails its first attempt, succeeds on the retry."""
    if sa_pgtq.current_task().attempts == 1:
        raise RuntimeError(f"flaky {n}: first attempt")


def broken(n: int) -> None:
    raise ValueError(f"broken {n}")


for queue in (q, aq):
    queue.handler()(ok)
    queue.handler(retry_delay=0.01)(flaky)
    queue.handler(max_attempts=1)(broken)
