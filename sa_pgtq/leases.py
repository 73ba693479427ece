"""The heartbeat: keeps the lease of every task held alive, a worker's or a popped one."""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager

from sqlalchemy import Connection

from . import gateway
from .backend import Backend
from .binding import DedicatedConnection
from .periodic import Periodic
from .tasks import Task

log = logging.getLogger(__name__)


class Leases:
    """The tasks a worker holds (claim token -> tasks by id), from claim until removed or put
    back."""

    def __init__(self) -> None:
        self._held: dict[str, dict[int, Task]] = {}
        self._lock = threading.Lock()

    def hold(self, tasks: list[Task]) -> None:
        with self._lock:
            for task in tasks:
                self._held.setdefault(task.token, {})[task.id] = task

    def drop(self, token: str, ids: list[int]) -> None:
        with self._lock:
            held = self._held.get(token)
            if held is not None:
                for task_id in ids:
                    held.pop(task_id, None)
                if not held:
                    del self._held[token]

    def holding(self) -> bool:
        """Whether any task is held: claimed, running, or finished and not yet acknowledged."""
        with self._lock:
            return bool(self._held)

    def snapshot(self) -> dict[str, list[int]]:
        with self._lock:
            return {token: list(tasks) for token, tasks in self._held.items()}

    def request_abort(self, token: str, ids: set[int]) -> None:
        """Tell those of the tasks held under `token` that their abort was requested."""
        with self._lock:
            held = self._held.get(token, {})
            tasks = [held[task_id] for task_id in ids if task_id in held]
        for task in tasks:
            task.abort.request()  # outside the lock: it may cancel a coroutine at once


class Heartbeat(Periodic):
    """Renews the leases of everything held, every third of a lease, and passes on the
    abort requests it finds.

    A worker's heartbeat renews on a connection of its own, outside the pool:
    handlers holding every pooled connection must not starve it, or their own
    leases expire and another worker runs their tasks a second time. A popped
    task's (`own_connection=False`) borrows a pooled one at each tick, so a short
    run opens none.
    """

    name = "heartbeat"

    def __init__(
        self, backend: Backend, leases: Leases, lease: float, *, own_connection: bool = True
    ) -> None:
        super().__init__(lease / 3, asynchronous=backend.binding.asynchronous)
        self._backend = backend
        self._leases = leases
        self._lease = lease
        self._connection = DedicatedConnection(backend.binding.engine) if own_connection else None
        self._missing: dict[str, set[int]] = {}  # not renewed at the last tick

    def start(self) -> None:
        if self._connection is not None:
            try:
                self._connection.open()  # now, while the pool still has room
            except Exception as exc:
                log.warning("heartbeat: no connection yet (%s); trying again at each tick", exc)
        super().start()

    def stop(self) -> None:
        super().stop()
        if self._connection is not None:
            self._connection.close()

    def _transaction(self) -> AbstractContextManager[Connection]:
        if self._connection is None:
            return self._backend.binding.transaction()
        return self._connection.transaction()

    def tick(self) -> None:
        held = self._leases.snapshot()
        missing: dict[str, set[int]] = {}
        if held:
            with self._transaction() as conn:
                for token, ids in held.items():
                    renewed = gateway.renew_leases(
                        conn, self._backend.statements, token, ids, self._lease
                    )
                    if len(renewed) < len(ids):
                        missing[token] = set(ids) - renewed.keys()
                    # The fallback for an abort whose NOTIFY was lost, or that no worker
                    # listens for (a popped task): it comes with the renewal, no query more.
                    self._leases.request_abort(
                        token, {task_id for task_id, aborted in renewed.items() if aborted}
                    )
        # A task finished between the snapshot and the renewal is not renewed either,
        # and is no longer held a moment later. One still held a whole tick later is
        # really lost: say so then, and only then.
        for token, not_renewed in missing.items():
            if lost := not_renewed & self._missing.get(token, set()):
                log.warning("lost the lease of tasks %s; another worker may run them", lost)
                self._leases.drop(token, list(lost))
        self._missing = missing
