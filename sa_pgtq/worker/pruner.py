"""The pruner: deletes the finished jobs a queue with a retention has kept long enough."""

from __future__ import annotations

import logging

from .. import gateway
from ..backend import Backend
from ..periodic import Periodic

log = logging.getLogger(__name__)

#: Rows one statement deletes at most: each batch locks that many rows for a moment.
PRUNE_BATCH = 1000
#: Batches one tick deletes at most, so a huge backlog is worked off over several ticks
#: without one worker doing nothing else.
MAX_BATCHES = 20
#: Seconds between ticks (less for a retention shorter than twice this).
PRUNE_INTERVAL = 10.0


class Pruner(Periodic):
    """Deletes jobs that succeeded or were cancelled longer than the retention ago.

    Failed jobs are kept until requeued or cancelled, whatever their age. Every
    worker prunes; SKIP LOCKED keeps them out of one another's way.
    """

    name = "pruner"

    def __init__(self, backend: Backend) -> None:
        assert backend.retention is not None
        self._retention = backend.retention
        interval = min(PRUNE_INTERVAL, max(self._retention.total_seconds() / 2, 0.5))
        super().__init__(interval, asynchronous=backend.binding.asynchronous)
        self._backend = backend

    def tick(self) -> None:
        backend = self._backend
        total = 0
        for _ in range(MAX_BATCHES):
            pruned = backend.run(
                None,
                gateway.prune_finished,
                backend.queue_name,
                self._retention,
                PRUNE_BATCH,
            )
            total += pruned
            if pruned < PRUNE_BATCH:
                break
        if total:
            log.debug("pruned %d finished jobs older than %s", total, self._retention)


def pruners(backend: Backend) -> list[Periodic]:
    """The pruner a queue with a retention needs; none without one."""
    return [] if backend.retention is None else [Pruner(backend)]
