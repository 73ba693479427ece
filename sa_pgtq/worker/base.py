"""What `Worker` and `AsyncWorker` share: their options, side services, stopping, signals."""

from __future__ import annotations

import logging
import os
import threading
from typing import Generic, Protocol, TypeVar

from .. import validation
from ..execution import DEFAULT_LEASE, Executor
from ..leases import Leases
from ..periodic import Periodic
from ..schedules import ScheduleRegistry
from .services import side_services

log = logging.getLogger(__name__)


class _Queue(Protocol):
    @property
    def poll_interval(self) -> float: ...

    @property
    def executor(self) -> Executor: ...

    @property
    def schedules(self) -> ScheduleRegistry: ...


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

    def _services(self, leases: Leases) -> tuple[list[Periodic], list[Periodic]]:
        """The services beside the run, and those to tick once before its first claim."""
        return side_services(
            self.queue.executor.backend,
            self.queue.schedules,
            leases,
            lease=self.lease,
            poll_interval=self.poll_interval,
        )

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
