"""The heartbeat: keeps the lease of every task a worker holds alive."""

from __future__ import annotations

import logging
import threading

from .. import gateway
from ..backend import Backend
from .periodic import Periodic

log = logging.getLogger(__name__)


class Leases:
    """The tasks a worker holds (claim token -> task ids), from claim until removed or put back."""

    def __init__(self) -> None:
        self._held: dict[str, set[int]] = {}
        self._lock = threading.Lock()

    def hold(self, token: str, ids: list[int]) -> None:
        with self._lock:
            self._held.setdefault(token, set()).update(ids)

    def drop(self, token: str, ids: list[int]) -> None:
        with self._lock:
            held = self._held.get(token)
            if held is not None:
                held.difference_update(ids)
                if not held:
                    del self._held[token]

    def snapshot(self) -> dict[str, list[int]]:
        with self._lock:
            return {token: list(ids) for token, ids in self._held.items()}


class Heartbeat(Periodic):
    """Renews the leases of everything held, every third of a lease."""

    name = "heartbeat"

    def __init__(self, backend: Backend, leases: Leases, lease: float) -> None:
        super().__init__(lease / 3)
        self._backend = backend
        self._leases = leases
        self._lease = lease

    def tick(self) -> None:
        held = self._leases.snapshot()
        if not held:
            return
        with self._backend.binding.transaction() as conn:
            for token, ids in held.items():
                kept = gateway.renew_leases(conn, self._backend.statements, token, ids, self._lease)
                if lost := set(ids) - kept:
                    log.warning("lost the lease of tasks %s; another worker may run them", lost)
