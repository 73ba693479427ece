"""Notifications as each driver delivers them: psycopg2, psycopg 3, and their asyncio kin.

The `Listener` asks one question of a connection ("any payloads on our channel
within t seconds?") and needs to cut it from another thread when it hangs.
Each driver answers differently: psycopg2 by `poll`, psycopg 3 by a `notifies`
generator (an async one in asyncio), asyncpg by a callback. Those differences
live here and nowhere else.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
from typing import Any, Protocol

from sqlalchemy import Connection
from sqlalchemy.engine import AdaptedConnection

from . import gateway
from .bridge import wait_for
from .schema import CHANNEL


class Notifications(Protocol):
    def backend_pid(self) -> int:
        """The server process's pid as the driver saw it at connect (a pooler's made-up one)."""

    def start(self, conn: Connection) -> None:
        """LISTEN on sa_pgtq's channel."""

    def receive(self, timeout: float) -> list[str]:
        """Payloads on sa_pgtq's channel, waiting up to `timeout` seconds for the first."""

    def cut(self) -> None:
        """Make a read blocked on the connection fail at once (callable from any thread)."""


def notifications_of(conn: Connection) -> Notifications:
    """The way `conn`'s driver delivers notifications."""
    # The DBAPI connection, or the driver's own under an asyncio adapter (a detached
    # connection no longer answers `driver_connection`).
    driver: Any = conn.connection.dbapi_connection
    if isinstance(driver, AdaptedConnection):
        driver = driver.driver_connection
    if conn.dialect.driver == "asyncpg":
        return _Asyncpg(driver)
    if hasattr(driver, "poll"):
        return _Psycopg2(driver)
    if conn.dialect.is_async:
        return _PsycopgAsync(driver)
    return _Psycopg(driver)


class _Socket:
    """psycopg2 and psycopg 3 expose their socket: shutting it down fails a blocked read."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def backend_pid(self) -> int:
        return int(self.driver.info.backend_pid)

    def start(self, conn: Connection) -> None:
        gateway.start_listening(conn)

    def cut(self) -> None:
        with socket.socket(fileno=os.dup(self.driver.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)


class _Psycopg2(_Socket):
    def receive(self, timeout: float) -> list[str]:
        if select.select([self.driver], [], [], timeout)[0]:
            self.driver.poll()
        payloads = [n.payload for n in self.driver.notifies if n.channel == CHANNEL]
        self.driver.notifies.clear()
        return payloads


class _Psycopg(_Socket):
    def receive(self, timeout: float) -> list[str]:
        notifies = self.driver.notifies(timeout=timeout, stop_after=1)
        return [n.payload for n in notifies if n.channel == CHANNEL]


class _PsycopgAsync(_Socket):
    def receive(self, timeout: float) -> list[str]:
        return wait_for(self._receive(timeout))

    async def _receive(self, timeout: float) -> list[str]:
        notifies = self.driver.notifies(timeout=timeout, stop_after=1)
        return [n.payload async for n in notifies if n.channel == CHANNEL]


class _Asyncpg:
    """asyncpg calls back on each notification; they wait here until received."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self._payloads: list[str] = []
        self._arrived = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def backend_pid(self) -> int:
        return int(self.driver.get_server_pid())

    def start(self, conn: Connection) -> None:
        wait_for(self.driver.add_listener(CHANNEL, self._arrive))  # it sends the LISTEN

    def receive(self, timeout: float) -> list[str]:
        if not self._payloads:
            try:
                wait_for(asyncio.wait_for(self._arrived.wait(), timeout))
            except asyncio.TimeoutError:
                return []
        payloads, self._payloads = self._payloads, []
        self._arrived.clear()
        return payloads

    def cut(self) -> None:
        # asyncpg is not thread-safe: its loop aborts the connection.
        self._loop.call_soon_threadsafe(self.driver.terminate)

    def _arrive(self, connection: object, pid: int, channel: str, payload: str) -> None:
        self._payloads.append(payload)
        self._arrived.set()
