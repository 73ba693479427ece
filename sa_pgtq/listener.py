"""Waiting for new jobs with LISTEN/NOTIFY, with polling as the fallback.

A `Listener` owns one dedicated connection, detached from the engine's pool so
that its LISTEN never leaks into a pooled connection. It answers one question:
"may there be new work for me?". Between waits its owner may run transactions on
it (`connection`): the server delivers notifications once they end. Any doubt (a
notification, a dropped connection, a reconnect) answers yes, because the
caller always re-checks the table; a lost notification only costs latency,
never a job.

Two ways LISTEN can fail without an error are handled here. A connection that
dies silently (a partition, a dropped NAT entry: no FIN, no RST) would leave a
ping blocked until TCP gives up, minutes later, so a ping slower than a poll
interval cuts the socket and reconnects. A connection through a transaction
pooler such as PgBouncer would LISTEN on a server connection that is soon handed
to another client, so notifications never arrive and LISTEN leaks into the pool;
a pooler is recognised at connect time and the listener polls instead.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import SupportsFloat

from sqlalchemy import Connection, Engine

from . import bridge, gateway, validation
from .binding import DedicatedConnection
from .notifications import Notifications, notifications_of

log = logging.getLogger(__name__)

#: A ping may take this long even with a very short poll interval.
MIN_PING_TIMEOUT = 1.0

#: Engine URLs already warned about, so each process says it once.
_warned_pooled: set[str] = set()


def idle_wait(seconds_until_due: SupportsFloat | None, poll_interval: float) -> float:
    """How long to wait for a NOTIFY: until the next scheduled job, at most `poll_interval`."""
    if seconds_until_due is None:
        return poll_interval
    return min(max(float(seconds_until_due), 0.0), poll_interval)


class Listener:
    def __init__(
        self,
        engine: Engine,
        table: str,
        queue: str,
        kind: str,
        tag: str | None,
        poll_interval: float,
    ) -> None:
        self._engine = engine
        self._wanted = (table, queue, kind)
        self._tag = tag
        self._poll_interval = poll_interval
        self._ping_timeout = max(poll_interval, MIN_PING_TIMEOUT)
        self._dedicated = DedicatedConnection(engine)
        self._asynchronous = engine.dialect.is_async
        self._conn: Connection | None = None  # listening (the dedicated one), or None
        self._notifications: Notifications | None = None  # how its driver delivers them
        self._pid = 0  # the process that opened it
        self._pooled = False  # behind a transaction pooler: poll, never LISTEN

    def __enter__(self) -> Listener:
        try:
            self._connect()
        except Exception as exc:
            # The server may be restarting: poll meanwhile; `wait` reconnects (and says yes).
            log.warning("could not LISTEN (%s); polling until it reconnects", exc)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connection(self) -> Connection | None:
        """The listening connection, for a transaction between waits; None when not listening.

        Work done on it takes no pool slot and no check-out. Its owner ends each
        transaction before waiting again (notifications arrive only between
        transactions) and calls `close` after a database error on it.
        """
        return self._conn if self._pid == os.getpid() else None

    def connection_to(self, engine: Engine) -> Connection | None:
        """`connection()`, when it reaches `engine`'s database directly (not a `listen_bind`
        of its own): work done there then takes no pool check-out."""
        return self.connection() if self._engine is engine else None

    def close(self) -> None:
        self._conn = self._notifications = None
        self._dedicated.close()

    def wait(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Block up to `timeout` seconds, or until `stop` is set; True when there may be work.

        False means the time passed quietly and the connection answered a ping,
        so the silence is real and not a LISTEN connection that died unnoticed.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        try:
            if self._pooled:
                self._sleep(deadline, stop)
                return True
            if self._conn is None or self._pid != os.getpid():
                self.close()
                self._connect()
                return True  # notifications may have been missed while disconnected
            while (left := deadline - time.monotonic()) > 0:
                if stop is not None:
                    if stop.is_set():
                        return True
                    left = min(left, bridge.STOP_CHECK_INTERVAL)
                assert self._notifications is not None
                if any(self._matches(payload) for payload in self._notifications.receive(left)):
                    return True
            self._ping()
            return False
        except Exception as exc:
            # Any driver error means the connection is gone; drop it, reconnect on the
            # next call and, meanwhile, behave as a poll.
            log.warning("LISTEN connection lost (%s); falling back to polling", exc)
            self.close()
            self._sleep(deadline, stop)
            return True

    def _connect(self) -> None:
        with self._dedicated.autocommit() as conn:
            notifications = notifications_of(conn)
            # A pooler hands the client a made-up backend pid (its own cancel key).
            self._pooled = gateway.backend_pid(conn) != notifications.backend_pid()
            if not self._pooled:
                notifications.start(conn)
                self._conn, self._notifications, self._pid = conn, notifications, os.getpid()
                return
        self._dedicated.close()
        url = self._engine.url.render_as_string()
        (log.debug if url in _warned_pooled else log.warning)(
            "%s goes through a connection pooler (PgBouncer?), where LISTEN loses "
            "notifications; polling every %.1fs instead. Give Queue a direct "
            "connection for LISTEN with listen_bind=",
            url,
            self._poll_interval,
        )
        _warned_pooled.add(url)

    def _ping(self) -> None:
        """A round trip; a silently dead connection is cut after `ping_timeout` seconds."""
        assert self._notifications is not None
        watchdog = threading.Timer(self._ping_timeout, self._notifications.cut)
        watchdog.daemon = True
        watchdog.start()
        try:
            with self._dedicated.autocommit() as conn:
                gateway.ping(conn)
        finally:
            watchdog.cancel()

    def _sleep(self, deadline: float, stop: threading.Event | None) -> None:
        bridge.sleep(deadline - time.monotonic(), stop, self._asynchronous)

    def _matches(self, payload: str) -> bool:
        # Any role that can connect may NOTIFY this channel. A payload that is not the
        # [table, queue, kind, tag] sa_pgtq sends means "maybe": a query, never an error.
        try:
            fields = validation.decode_data(payload)  # bounded nesting: no RecursionError
        except ValueError:
            return True
        if not (isinstance(fields, list) and len(fields) == 4):
            return True
        table, queue, kind, tag = fields
        return (table, queue, kind) == self._wanted and (self._tag is None or tag == self._tag)
