"""The worker: claims, runs and acknowledges a queue's tasks.

    sa_pgtq.Worker(q, concurrency=1).run(burst=False)
    sa_pgtq.worker.main_loop(q)          # run until SIGTERM/SIGINT, then exit 0

A worker is a few small services with one duty each: producers claim batches
with FOR UPDATE SKIP LOCKED and run them (one thread per concurrency slot);
the completer acknowledges finished tasks in batches; the heartbeat keeps the
leases of everything held alive; the rescuer requeues tasks whose worker died,
so a killed worker never loses a job; the aborter tells running handlers
that their task was aborted; the scheduler turns the ticks of periodic tasks
into jobs; with a retention, the pruner deletes finished jobs once they are
old enough (`services`). Several processes on several machines
may share one table.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn

from ..leases import Leases
from ..periodic import Periodic
from ..queue import Queue
from .base import BaseWorker
from .completer import Completer
from .producer import Producer

__all__ = ["Worker", "main_loop"]

log = logging.getLogger(__name__)


class Worker(BaseWorker[Queue]):
    """Runs a queue's tasks; `concurrency` producers each claim and run batches.

    Options: `concurrency`, `batch_size` (most tasks claimed at once), `lease`
    (seconds), `poll_interval`, `timeout` (seconds a task may run when its handler
    sets none), `install_signal_handlers`.
    """

    def run(self, burst: bool = False) -> None:
        """Run tasks until `stop()` (or a signal); with `burst`, until nothing is due."""
        self._stopping.clear()
        executor = self.queue.executor
        leases = Leases()
        completer = Completer(executor, leases)
        services, at_start = self._services(leases)
        for service in at_start:
            service.safe_tick()
        producer = Producer(
            executor,
            leases,
            completer,
            self._stopping,
            batch_size=self.batch_size,
            lease=self.lease,
            poll_interval=self.poll_interval,
            timeout=self.timeout,
        )
        with self._signals(), _running(*services), _running(completer, final=True):
            log.info("worker ready: %r, concurrency %d", self.queue, self.concurrency)
            # Every producer runs in a thread of its own, so the main thread stays free
            # to take signals even while a handler is stuck in C code (a query, a
            # socket) that would hold off Python's signal handlers in the main thread.
            producers = [
                threading.Thread(target=producer.run, args=(burst,), name=f"sa_pgtq-worker-{n}")
                for n in range(self.concurrency)
            ]
            for thread in producers:
                thread.start()
            try:
                for thread in producers:
                    thread.join()
            finally:
                self._stopping.set()
                for thread in producers:
                    thread.join()

    @contextmanager
    def _signals(self) -> Iterator[None]:
        if not self._takes_signals():
            yield
            return

        def graceful(signum: int, frame: FrameType | None) -> None:
            self._on_signal(signum)

        previous = {sig: signal.signal(sig, graceful) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@contextmanager
def _running(*services: Periodic, final: bool = False) -> Iterator[None]:
    """Services started for the block; stopped after it (with a `final` last tick)."""
    start(*services)
    try:
        yield
    finally:
        stop(*services, final=final)


def start(*services: Periodic) -> None:
    for service in services:
        service.start()


def stop(*services: Periodic, final: bool = False) -> None:
    for service in services:
        service.stop()
        if final:
            service.safe_tick()


def main_loop(queue: Queue, *, concurrency: int = 1) -> NoReturn:
    """Run `queue`'s tasks until SIGTERM/SIGINT, finish the task in hand, and exit 0."""
    Worker(queue, concurrency=concurrency).run()
    raise SystemExit(0)
