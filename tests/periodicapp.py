"""The periodic tests' application: `sa-pgtq worker periodicapp:q` runs a task every 2 s.

Each run records the tick it was scheduled for (`current_job().run_at`) in the same
transaction as the job's completion: one row per run, exactly.
"""

from __future__ import annotations

import os

from sqlalchemy import TIMESTAMP, Column, Integer, MetaData, Table, create_engine

import sa_pgtq

engine = create_engine(os.environ["SA_PGTQ_WORKER_URL"])
q = sa_pgtq.Queue(engine, name="periodic", poll_interval=0.5)

runs = Table(
    "periodic_runs",
    MetaData(),
    Column("tick", TIMESTAMP(timezone=True)),
    Column("pid", Integer),
)


@q.periodic(every=2)
@q.handler()
def every_two_seconds() -> None:
    tick = sa_pgtq.current_job().run_at
    sa_pgtq.current_session().execute(runs.insert().values(tick=tick, pid=os.getpid()))
