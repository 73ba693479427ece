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
    # which the index of running rows looks tiny (as it is, when vacuumed).
    @q.handler()
    def noop(i: int) -> None:
        pass

    noop.push_many([(i,) for i in range(20_000)])
    statements = statements_for(q.model)
    with q.engine.begin() as conn:
        _, claimed = gateway.claim_tasks(conn, statements, q.name, 100, "token", 30)
        conn.execute(text(f"ANALYZE {q.table_name}"))
    ids = [task.id for task in claimed]
    held = {"ids": ids, "token": "token"}
    results = {**held, "results": ['{"a": 1}'] * len(ids)}
    with q.engine.connect() as conn:
        for statement, params in [
            (statements.ack_tasks[False], results),
            (statements.ack_tasks[True], results),  # kept with their results
            (statements.heartbeat, {**held, "lease": timedelta(seconds=30)}),
            (statements.release_tasks, held),
        ]:
            chosen = plan(conn, statement, params)
            assert f"{q.table_name}_pkey" in chosen, chosen
            assert f"ix_{q.table_name}_running" not in chosen, chosen


def test_heartbeats_update_in_place(q: sa_pgtq.Queue) -> None:
    # HOT: no indexed column changes and the page has room (fillfactor), so renewing a
    # lease adds no index entries and its old row version is pruned without vacuum.
    @q.handler()
    def noop(i: int) -> None:
        pass

    noop.push_many([(i,) for i in range(10)])
    statements = statements_for(q.model)
    with q.engine.begin() as conn:
        _, claimed = gateway.claim_tasks(conn, statements, q.name, 10, "token", 30)
    counts = text(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables "
        "WHERE relid = to_regclass(:table)"
    )
    with q.engine.begin() as conn:
        # This backend's counts not yet flushed to the shared statistics: compare.
        before = conn.execute(counts, {"table": q.table_name}).one()
        renewed = gateway.renew_leases(conn, statements, "token", [t[0] for t in claimed], 60)
        after = conn.execute(counts, {"table": q.table_name}).one()
    assert len(renewed) == 10
    assert (after[0] - before[0], after[1] - before[1]) == (10, 10), "updated, all HOT"
