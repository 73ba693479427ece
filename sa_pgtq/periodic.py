"""The shape every background duty of a worker shares: a thread that ticks until stopped."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

log = logging.getLogger(__name__)


class Periodic:
    """Runs `tick()` every `interval` seconds in a thread of its own, from `start()` to `stop()`.

    An error in one tick (a restart, a dropped connection, a pool with no free slot)
    is logged and the next tick tries again: a service that stopped for good would
    let leases expire or finished tasks pile up, so no exception ends the thread.
    """

    name = "periodic"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

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
        self._thread = threading.Thread(target=self._run, name=f"sa_pgtq-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.safe_tick()
