"""The rescuer: requeues tasks whose worker stopped renewing their lease (it died)."""

from __future__ import annotations

import logging

from .. import gateway
from ..backend import Backend
from ..periodic import Periodic

log = logging.getLogger(__name__)


class Rescuer(Periodic):
    """Every half lease, puts the queue's expired tasks back and wakes idle workers."""

    name = "rescuer"

    def __init__(self, backend: Backend, lease: float) -> None:
        super().__init__(lease / 2, asynchronous=backend.binding.asynchronous)
        self._backend = backend

    def tick(self) -> None:
        rescued = self._backend.run_atomic(None, gateway.rescue_expired, self._backend.queue_name)
        if rescued:
            log.warning("requeued %d tasks whose worker was lost", rescued)
