"""The shape every background duty of a worker shares: ticking aside until stopped.

Under the sync API a duty ticks in a thread of its own; under the asyncio API
it is a task of the event loop whose ticks run the same sync code through the
greenlet bridge (`start` and `stop` are then called from bridged sync code).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from . import bridge

log = logging.getLogger(__name__)


class Periodic:
    """Runs `tick()` every `interval` seconds aside, from `start()` to `stop()`.

    An error in one tick (a restart, a dropped connection, a pool with no free slot)
    is logged and the next tick tries again: a service that stopped for good would
    let leases expire or finished tasks pile up, so no exception ends it.
    """

    name = "periodic"

    def __init__(self, interval: float, *, asynchronous: bool = False) -> None:
        self.interval = interval
        self.asynchronous = asynchronous
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    def tick(self) -> None:
        raise NotImplementedError

    def safe_tick(self) -> None:
        try:
            self.tick()
        except (DBAPIError, SQLAlchemyTimeoutError) as exc:
            log.warning("%s failed (%s); retrying", self.name, exc)
        except Exception:
            log.exception("%s failed; retrying", self.name)

    def start(self) -> None:
        self._stopped.clear()
        if self.asynchronous:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._serve(self._wake), name=f"sa_pgtq-{self.name}"
            )
            return
        self._thread = threading.Thread(target=self._run, name=f"sa_pgtq-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._task is not None and self._wake is not None:
            self._wake.set()
            bridge.wait_for(self._task)
            self._task = self._wake = None

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.safe_tick()

    async def _serve(self, wake: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), self.interval)
            if self._stopped.is_set():
                return
            await bridge.spawn(self.safe_tick)
