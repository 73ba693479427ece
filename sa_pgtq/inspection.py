"""Statements of the operators' read side: queues, their counts, their jobs, throughput.

Built so that a page view costs the same beside a million jobs as beside ten:
- the queues are found by skip scans (one index probe per queue) of the partial
  indexes, which between them cover every state, and the pause table;
- a count stops at a cap; above it the caller asks the planner for an estimate
  (`Explain`);
- the longest wait is the earliest `run_at` among the heads of each (tag,) priority
  of the dequeue indexes, also by skip scan.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Executable,
    Integer,
    Select,
    Text,
    and_,
    bindparam,
    func,
    literal,
    or_,
    select,
    true,
    union,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from .models import CANCELLED, FAILED, MESSAGE, PRUNABLE, QUEUED, RUNNING, STATES, SUCCEEDED, TASK
from .statements import Statements, _in_states, const

#: The most heads (of a priority, or a tag and priority) read for the longest wait: with
#: more (a tag per user, say), the longest wait among the first ones in index order.
MAX_HEADS = 1000


class Explain(Executable, ClauseElement):
    """`EXPLAIN (FORMAT JSON)` of a statement: how many rows the planner expects."""

    inherit_cache = False

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement


@compiles(Explain, "postgresql")
def _explain(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return f"EXPLAIN (FORMAT JSON) {compiler.process(element.statement, **kw)}"


class Inspection:
    """The read-side statements of one queue table (see the module's docstring)."""

    def __init__(self, statements: Statements) -> None:
        self.statements = statements
        table = statements.table
        c = table.c
        queue = bindparam("queue_name", type_=Text)
        self._table = table
        # Each predicate matches a partial index's (queued rows have two, one per kind).
        waiting = {
            kind: and_(c.state == const(QUEUED), c.kind == const(kind)) for kind in (TASK, MESSAGE)
        }
        #: How each state is found through a partial index.
        self.in_state: dict[str, ColumnElement[bool]] = {
            QUEUED: or_(waiting[TASK], waiting[MESSAGE]),
            **{state: c.state == const(state) for state in STATES if state != QUEUED},
        }
        # The partial indexes led by `queue`: between them, every row.
        self._by_queue = (
            waiting[TASK],
            waiting[MESSAGE],
            c.state == const(RUNNING),
            c.state == const(FAILED),
            _in_states(c.state, PRUNABLE),
        )
        #: -> the name of every queue with a job (in any state) or a row in the pause table
        self.queue_names: CompoundSelect[Any] = union(
            *(
                _skip_scan_queues(table, where, f"queues_{n}")
                for n, where in enumerate(self._by_queue)
            ),
            select(statements.queues.c.queue),
        ).order_by("queue")
        cap = bindparam("cap", type_=Integer)
        # Each count walks one partial index, and never its rows: succeeded jobs are
        # the finished ones (succeeded or cancelled, one index) less the cancelled.
        counted = {
            "queued_tasks": waiting[TASK],
            "queued_messages": waiting[MESSAGE],
            **{state: c.state == const(state) for state in (RUNNING, FAILED, CANCELLED)},
            "finished": _in_states(c.state, PRUNABLE),
        }
        #: queue_name, cap -> per field of `counted` its number of jobs, up to cap;
        #: the earliest run_at of a waiting job; whether paused; now
        self.queue_stats: Select[Any] = select(
            *(
                select(func.count())
                .select_from(
                    select(literal(1)).where(c.queue == queue, where).limit(cap).subquery()
                )
                .scalar_subquery()
                .label(name)
                for name, where in counted.items()
            ),
            func.least(
                _earliest_head(table, and_(c.queue == queue, waiting[TASK]), by_tag=False),
                _earliest_head(table, and_(c.queue == queue, waiting[MESSAGE]), by_tag=True),
            ).label("earliest"),
            select(statements.is_paused.selected_columns[0]).scalar_subquery().label("paused"),
            func.now().label("now"),
        )
        #: queue_name -> the planner's estimate of the queue's jobs in a state (or a field
        #: of `counted`)
        self.estimates: dict[str, Explain] = {
            name: Explain(select(literal(1)).select_from(table).where(c.queue == queue, where))
            for name, where in {**counted, SUCCEEDED: c.state == const(SUCCEEDED)}.items()
        }
        #: job_id -> every column of that job, whichever its queue
        self.job: Select[Any] = select(*statements.every_column).where(c.id == bindparam("job_id"))
        # Index entries only: the finished (succeeded or cancelled) less the cancelled are
        # the succeeded, and each index holds its rows' finish time. Each index's entries
        # are counted per bucket on their own (no rows of states to carry and filter), in
        # float8: numeric (what EXTRACT gives) costs more per entry than the scan itself.
        width = bindparam("seconds", type_=Integer)
        bucket = func.floor(func.date_part("epoch", c.finished_at) / width) * width
        #: queue_name, since, seconds -> (what, bucket start as epoch seconds, jobs) of the
        #: queue's jobs finished since `since`, what being "finished" (succeeded or
        #: cancelled), "cancelled" or "failed"
        self.finished_per_bucket: CompoundSelect[Any] = union_all(
            *(
                select(const(what), bucket, func.count())
                .where(c.queue == queue, where, c.finished_at >= bindparam("since"))
                .group_by(bucket)
                for what, where in (
                    ("finished", _in_states(c.state, PRUNABLE)),
                    (CANCELLED, c.state == const(CANCELLED)),
                    (FAILED, c.state == const(FAILED)),
                )
            )
        )

    def jobs(self, *, queue: bool, state: str | None, tag: bool, before: bool) -> Select[Any]:
        """queue_name, tag, before, limit (each bound when asked for) -> jobs, newest first."""
        c = self._table.c
        where: list[ColumnElement[bool]] = []
        if queue:
            where.append(c.queue == bindparam("queue_name", type_=Text))
        if state is not None:
            where.append(self.in_state[state])
        elif queue:
            # Any state, said so that each partial index qualifies: a small queue's jobs
            # are then found through them, not by walking the whole table backwards.
            where.append(or_(*self._by_queue))
        if tag:
            where.append(c.tag == bindparam("tag", type_=Text))
        if before:
            where.append(c.id < bindparam("before"))
        return (
            select(*self.statements.every_column)
            .where(*where)
            .order_by(c.id.desc())
            .limit(bindparam("limit"))
        )


def _skip_scan_queues(table: Any, where: ColumnElement[bool], name: str) -> Select[Any]:
    """The distinct queues of the rows `where` picks, one index probe each (a loose scan)."""
    c = table.c
    found = select(func.min(c.queue).label("queue")).where(where).cte(name, recursive=True)
    following = select(func.min(c.queue)).where(where, c.queue > found.c.queue).scalar_subquery()
    found = found.union_all(select(following).where(found.c.queue.is_not(None)))
    return select(found.c.queue).where(found.c.queue.is_not(None))


def _earliest_head(table: Any, waiting: ColumnElement[bool], *, by_tag: bool) -> Any:
    """The earliest run_at of the `waiting` rows, read off the head of each priority (and
    tag, for messages) in dequeue order: one index probe each, whatever waits behind."""
    c = table.c
    keys = [c.tag, c.priority, c.run_at] if by_tag else [c.priority, c.run_at]
    order = ([c.tag] if by_tag else []) + [c.priority.desc(), c.run_at, c.id]
    first = select(*keys).where(waiting).order_by(*order).limit(1)
    heads = first.cte("heads_by_tag" if by_tag else "heads", recursive=True)
    lower = select(*keys).where(waiting, c.priority < heads.c.priority)
    step: Select[Any] | CompoundSelect[Any] = lower.order_by(*order).limit(1)
    if by_tag:
        # The next priority of this tag, else the first of the next tag.
        same_tag = lower.where(c.tag == heads.c.tag).order_by(*order[1:]).limit(1)
        later_tag = select(*keys).where(waiting, c.tag > heads.c.tag).order_by(*order).limit(1)
        step = union_all(same_tag, later_tag).limit(1)
    following = step.lateral("following")
    heads = heads.union_all(select(*following.c).select_from(heads.join(following, true())))
    # A recursive query runs only as far as it is read: at most MAX_HEADS probes.
    read = select(heads.c.run_at).limit(MAX_HEADS).subquery()
    return select(func.min(read.c.run_at)).scalar_subquery()


@cache
def inspection_of(statements: Statements) -> Inspection:
    """The read-side statements of a table, built on first use (operators' tools only)."""
    return Inspection(statements)
