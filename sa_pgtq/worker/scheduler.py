"""The scheduler: turns the ticks of a queue's periodic tasks into jobs.

Every worker runs one, and each offers every tick; the database keeps the
first offer of each tick and refuses the others (`gateway.insert_tick_job`),
so no worker needs to be the leader, and any may stop at any time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timezone

from .. import gateway
from ..backend import Backend
from ..periodic import Periodic
from ..schedules import Schedule, ScheduleRegistry

log = logging.getLogger(__name__)

#: Seconds before a tick that failed (the database away) is tried again.
RETRY_DELAY = 1.0


class Scheduler(Periodic):
    """Sleeps until the earliest next tick of its schedules, then offers the due ones.

    Its first tick (at once) offers each schedule's latest tick: missed ones run
    once, or on first sight the tick is only recorded.
    """

    name = "scheduler"

    def __init__(self, backend: Backend, schedules: Iterable[Schedule]) -> None:
        super().__init__(0.0, asynchronous=backend.binding.asynchronous)
        self._backend = backend
        self._schedules = list(schedules)
        self._offered: dict[str, datetime] = {}  # by name: the last tick offered

    def tick(self) -> None:
        # `Periodic` waits `interval` before each tick: a failure below leaves the retry
        # delay, a success the time until the next tick.
        self.interval = RETRY_DELAY
        now = datetime.now(timezone.utc)
        for schedule in self._schedules:
            due = schedule.ticks.latest(now)
            if self._offered.get(schedule.name) != due:
                self._offer(schedule, due)
                self._offered[schedule.name] = due
        upcoming = min(schedule.ticks.following(now) for schedule in self._schedules)
        # The job itself waits for its run_at by the server's clock, so a clock ahead of
        # the server's cannot run a tick early; one behind it runs ticks late.
        self.interval = max((upcoming - datetime.now(timezone.utc)).total_seconds(), 0.0)

    def _offer(self, schedule: Schedule, tick: datetime) -> None:
        backend = self._backend
        job_id = backend.run(
            None, gateway.insert_tick_job, backend.queue_name, schedule.name, tick, schedule.data
        )
        if job_id is not None:
            log.info("periodic task %s: tick %s queued as job %d", schedule.name, tick, job_id)


def schedulers(backend: Backend, schedules: ScheduleRegistry) -> list[Scheduler]:
    """The queue's scheduler; none for a queue without periodic tasks."""
    return [Scheduler(backend, schedules)] if len(schedules) else []
