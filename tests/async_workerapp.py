"""The multi-process tests' application on asyncio: `sa-pgtq worker async_workerapp:q`.

The same queue, tables and handler names as workerapp.py, so either app's producers
push what this one's AsyncWorker runs. The URL (asyncpg or psycopg) comes from
SA_PGTQ_WORKER_URL.
"""

from __future__ import annotations

import asyncio
import os

from sqlalchemy import Column, Integer, MetaData, Table
from sqlalchemy.ext.asyncio import create_async_engine

import sa_pgtq

engine = create_async_engine(os.environ["SA_PGTQ_WORKER_URL"])
q = sa_pgtq.AsyncQueue(engine, name="procs", poll_interval=0.5)

metadata = MetaData()
effects = Table("proc_effects", metadata, Column("n", Integer), Column("pid", Integer))
started = Table("proc_started", metadata, Column("n", Integer), Column("pid", Integer))


@q.handler()
async def record(n: int) -> None:
    """The effect commits with the job's completion: exactly once per job."""
    await sa_pgtq.current_async_session().execute(effects.insert().values(n=n, pid=os.getpid()))


@q.handler(max_attempts=50)  # the chaos test fails it on purpose, again and again
async def slow(n: int, seconds: float) -> None:
    async with engine.begin() as conn:  # visible at once, so a test knows the job is running
        await conn.execute(started.insert().values(n=n, pid=os.getpid()))
    await asyncio.sleep(seconds)
    await sa_pgtq.current_async_session().execute(effects.insert().values(n=n, pid=os.getpid()))
