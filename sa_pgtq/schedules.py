"""Periodic tasks: the schedules registered on a queue with `@q.periodic(...)`.

A schedule names a handler of the queue, its ticks and the keyword arguments
each tick's job is called with. Everything is checked when the decorator is
applied; the workers' scheduler (`worker.scheduler`) turns ticks into jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import ticks, validation
from .backend import Backend
from .errors import InvalidScheduleError
from .handlers import Handler, P, R


@dataclass(frozen=True)
class Schedule:
    #: The handler's name: its jobs' tag, and its row's key in `<table>_ticks`.
    name: str
    ticks: ticks.Ticks
    #: Each job's data, as JSON text: the call with the schedule's keyword arguments.
    data: str


class ScheduleRegistry:
    """The schedules of one queue, one per handler at most."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._schedules: dict[str, Schedule] = {}

    def __iter__(self) -> Iterator[Schedule]:
        return iter(self._schedules.values())

    def __len__(self) -> int:
        return len(self._schedules)

    def decorator(
        self, cron: object, every: object, timezone: object, kwargs: object
    ) -> Callable[[Handler[P, R]], Handler[P, R]]:
        when = _ticks(cron, every, timezone)
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, dict):
            raise InvalidScheduleError(f"kwargs must be a dict, got {type(kwargs).__name__}")
        call_kwargs: dict[str, Any] = kwargs

        def register(handler: Handler[P, R]) -> Handler[P, R]:
            if not isinstance(handler, Handler) or handler.backend is not self._backend:
                raise InvalidScheduleError(
                    "@q.periodic(...) goes on top of @q.handler() of the same queue, "
                    f"not on {handler!r}"
                )
            if handler.name in self._schedules:
                raise InvalidScheduleError(f"{handler.name!r} already has a schedule")
            call = handler.call_data((), call_kwargs)
            data = validation.encode_data(call, "json", None)
            self._schedules[handler.name] = Schedule(handler.name, when, data)
            return handler

        return register


def _ticks(cron: object, every: object, timezone: object) -> ticks.Ticks:
    if (cron is None) == (every is None):
        raise InvalidScheduleError("give exactly one of cron= and every=")
    if every is not None:
        if timezone != "UTC":
            # A zone would suggest local midnights that an epoch count cannot give.
            raise InvalidScheduleError(
                "timezone= is for cron= schedules: every= counts from the Unix epoch in UTC"
            )
        return ticks.every(every)
    return ticks.cron(cron, timezone)
