"""What `Worker` and `AsyncWorker` share: their options, stopping, and signals."""

from __future__ import annotations

import logging
import os
import threading
from typing import Generic, Protocol, TypeVar

from .. import validation
from ..execution import DEFAULT_LEASE

log = logging.getLogger(__name__)


class _Queue(Protocol):
    @property
    def poll_interval(self) -> float: ...


Q = TypeVar("Q", bound=_Queue)


class BaseWorker(Generic[Q]):
    """A worker's queue and checked options, and the graceful stop a first signal asks for."""

    def __init__(
        self,
        queue: Q,
        *,
        concurrency: int = 1,
        batch_size: int = 100,
        lease: float | None = None,
        poll_interval: float | None = None,
        timeout: float | None = None,
        install_signal_handlers: bool = True,
    ) -> None:
        self.queue = queue
        self.concurrency = validation.check_count(concurrency, "concurrency")
        self.batch_size = validation.check_count(batch_size, "batch_size")
        self.lease = validation.check_timeout(lease, "lease") or DEFAULT_LEASE
        self.poll_interval = (
            validation.check_timeout(poll_interval, "poll_interval") or queue.poll_interval
        )
        #: Seconds a task may run when its handler sets no timeout (None: no limit).
        self.timeout = validation.check_timeout(timeout, "timeout")
        self.install_signal_handlers = install_signal_handlers
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Finish the tasks in hand, put back the claimed but unstarted rest, and return."""
        self._stopping.set()

    def _takes_signals(self) -> bool:
        # Only the main thread may install signal handlers.
        return (
            self.install_signal_handlers and threading.current_thread() is threading.main_thread()
        )

    def _on_signal(self, signum: int) -> None:
        if self._stopping.is_set():
            # A second signal: the tasks in hand are left to their leases (another
            # worker takes them over once those expire), as after a crash.
            log.warning("signal %s again: exiting now", signum)
            os._exit(128 + signum)
        log.info("signal %s: finishing the tasks in hand, then stopping", signum)
        self.stop()
