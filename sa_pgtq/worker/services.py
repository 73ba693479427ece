"""The services a worker runs beside its producers or slots, the same for both kinds."""

from __future__ import annotations

from ..backend import Backend
from ..leases import Heartbeat, Leases
from ..periodic import Periodic
from ..schedules import ScheduleRegistry
from .aborter import Aborter
from .pruner import pruners
from .rescuer import Rescuer
from .scheduler import schedulers


def side_services(
    backend: Backend,
    schedules: ScheduleRegistry,
    leases: Leases,
    *,
    lease: float,
    poll_interval: float,
) -> tuple[list[Periodic], list[Periodic]]:
    """(every service, those to tick once before the first claim).

    The heartbeat keeps `leases` alive; the rescuer requeues what dead workers left;
    the aborter tells running handlers of aborts; the scheduler turns periodic ticks
    into jobs; the pruner (with a retention) deletes old finished jobs. What a dead
    worker left, and the ticks missed while no worker ran, are due at once, for a
    burst run too.
    """
    at_start: list[Periodic] = [
        Rescuer(backend, lease),
        *schedulers(backend, schedules),
        *pruners(backend),
    ]
    every = [Heartbeat(backend, leases, lease), Aborter(backend, leases, poll_interval), *at_start]
    return every, at_start
