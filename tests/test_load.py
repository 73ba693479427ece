"""Under sustained load the hot statements keep to the indexes meant for them.

A long transaction elsewhere (a report, a forgotten BEGIN) keeps vacuum from
removing dead index entries; a statement that reads a whole index then pays for
every job ever finished since. These tests look at the plans PostgreSQL picks.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, text

import sa_pgtq
from sa_pgtq import gateway
from sa_pgtq.statements import statements_for


def plan(conn: Connection, statement: Any, params: dict[str, Any]) -> str:
    compiled = statement.compile(dialect=conn.dialect)
    rows = conn.exec_driver_sql("EXPLAIN " + str(compiled), {**compiled.params, **params})
    return "\n".join(row[0] for row in rows)


def test_acks_heartbeats_and_releases_find_tasks_by_primary_key(q: sa_pgtq.Queue) -> None:
    # A backlog beside a claimed batch, analyzed: the statistics of a busy queue, under
    # which the leases index looks tiny (it holds only the running rows, when vacuumed).
    @q.handler()
    def noop(i: int) -> None:
        pass

    noop.push_many([(i,) for i in range(20_000)])
    statements = statements_for(q.model)
    with q.engine.begin() as conn:
        claimed = gateway.claim_tasks(conn, statements, q.name, 100, "token", 30)
        conn.execute(text(f"ANALYZE {q.table_name}"))
    held = {"ids": [task.id for task in claimed], "token": "token"}
    with q.engine.connect() as conn:
        for statement, params in [
            (statements.ack_tasks, held),
            (statements.heartbeat, {**held, "lease": timedelta(seconds=30)}),
            (statements.release_tasks, held),
        ]:
            chosen = plan(conn, statement, params)
            assert f"{q.table_name}_pkey" in chosen, chosen
            assert "leases" not in chosen, chosen
