"""periodicapp.py on asyncio: `sa-pgtq worker async_periodicapp:q` (asyncpg or psycopg).

The same queue, task and table as periodicapp.py.
"""

from __future__ import annotations

import os

from sqlalchemy import TIMESTAMP, Column, Integer, MetaData, Table
from sqlalchemy.ext.asyncio import create_async_engine

import sa_pgtq

engine = create_async_engine(os.environ["SA_PGTQ_WORKER_URL"])
q = sa_pgtq.AsyncQueue(engine, name="periodic", poll_interval=0.5)

runs = Table(
    "periodic_runs",
    MetaData(),
    Column("tick", TIMESTAMP(timezone=True)),
    Column("pid", Integer),
)


@q.periodic(every=2)
@q.handler()
async def every_two_seconds() -> None:
    tick = sa_pgtq.current_job().run_at  # no I/O: what the claim returned
    await sa_pgtq.current_async_session().execute(runs.insert().values(tick=tick, pid=os.getpid()))
