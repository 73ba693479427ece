"""The aborter: tells the handlers a worker runs that `abort()` was requested for their task."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection

from .. import bridge, gateway
from ..backend import Backend
from ..leases import Leases
from ..listener import Listener
from ..models import ABORT, CONTROL
from ..periodic import Periodic


class Aborter(Periodic):
    """Woken by the NOTIFY of an abort request on the queue, asks which of the tasks held
    have one (a primary-key probe per claim) and tells them.

    A notification may be lost (a reconnect, a pooler that forbids LISTEN): the
    heartbeat, whose lease renewal also reports abort requests, catches those a
    third of a lease later. Between notifications it only pings, every `interval`.
    """

    name = "aborter"

    def __init__(self, backend: Backend, leases: Leases, poll_interval: float) -> None:
        super().__init__(poll_interval, asynchronous=backend.binding.asynchronous)
        self._backend = backend
        self._leases = leases
        self._listener = Listener(
            backend.binding.listen_engine,
            backend.table_name,
            backend.queue_name,
            CONTROL,
            ABORT,
            poll_interval,
        )

    def tick(self) -> None:
        held = self._leases.snapshot()
        if not held:
            return
        with self._connection() as conn:
            for token, ids in held.items():
                aborted = gateway.abort_requests(conn, self._backend.statements, token, ids)
                self._leases.request_abort(token, aborted)

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        # The listening connection when it reaches the queue's database: handlers
        # holding every pooled connection must not hold up their own abort.
        own = self._listener.connection_to(self._backend.binding.engine)
        if own is None:
            with self._backend.binding.transaction() as conn:
                yield conn
            return
        try:
            with own.begin():
                yield own
        except BaseException:
            self._listener.close()  # reconnected (and asked again) at the next wait
            raise

    def _run(self) -> None:
        with self._listener as listener:
            while not self._stopped.is_set():
                if listener.wait(self.interval, self._stopped) and not self._stopped.is_set():
                    self.safe_tick()

    async def _serve(self, wake: asyncio.Event) -> None:
        # Waiting on LISTEN is sync code that awaits through the bridge: the whole
        # loop runs in one bridged greenlet, checking `_stopped` as the thread does.
        await bridge.spawn(self._run)
