"""A tiny application whose queue the multi-process tests run with `sa-pgtq worker`."""

from __future__ import annotations

import os
import time

from sqlalchemy import Column, Integer, MetaData, Table, create_engine, text

import sa_pgtq

# SA_PGTQ_WORKER_POOL=n: a pool of n connections and no overflow, which the chaos test
# starves on purpose.
pool = int(os.environ.get("SA_PGTQ_WORKER_POOL", "0"))
limits = {"pool_size": pool, "max_overflow": 0, "pool_timeout": 0.05} if pool else {}
engine = create_engine(os.environ["SA_PGTQ_WORKER_URL"], **limits)
q = sa_pgtq.Queue(engine, name="procs", poll_interval=0.5)

metadata = MetaData()
effects = Table("proc_effects", metadata, Column("n", Integer), Column("pid", Integer))
started = Table("proc_started", metadata, Column("n", Integer), Column("pid", Integer))


@q.handler()
def record(n: int) -> None:
    """The effect commits with the job's completion: exactly once per job."""
    sa_pgtq.current_session().execute(effects.insert().values(n=n, pid=os.getpid()))


@q.handler(max_attempts=50)  # the chaos tests fail it on purpose, again and again
def slow(n: int, seconds: float) -> None:
    with engine.begin() as conn:  # visible at once, so a test knows the job is running
        conn.execute(started.insert().values(n=n, pid=os.getpid()))
    time.sleep(seconds)
    sa_pgtq.current_session().execute(effects.insert().values(n=n, pid=os.getpid()))


@q.handler()
def stuck(n: int) -> None:
    """Blocked in the driver's C code, where Python's signal handlers cannot run."""
    with engine.begin() as conn:
        conn.execute(started.insert().values(n=n, pid=os.getpid()))
    sa_pgtq.current_session().execute(text("SELECT pg_sleep(60)"))


#: A queue that keeps finished jobs and their results; its long poll interval leaves
#: waking `result()` to the completion's NOTIFY.
kept = sa_pgtq.Queue(engine, name="kept", retention=3600, poll_interval=30)


@kept.handler()
def add(a: int, b: int) -> int:
    return a + b
