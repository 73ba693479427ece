"""The seam between sa_pgtq's sync code and asyncio: how it waits, and how it runs aside.

The asyncio API runs the very same sync code as `Queue`, inside greenlets that
SQLAlchemy's bridge spawns (`greenlet_spawn`, what `AsyncSession` does over
`Session`). Database calls there already yield to the event loop. The few other
places where sync code blocks or starts a thread (a sleep, a wait for NOTIFY, a
service ticking aside, a handler) ask here instead, with `asynchronous` saying
which world they run in: the queue's engine is an async one.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from sqlalchemy.util import await_only, greenlet_spawn

T = TypeVar("T")

#: How often a wait checks whether its worker is stopping.
STOP_CHECK_INTERVAL = 0.05

#: Background tasks, kept referenced until done (the loop holds only weak references).
_background: set[asyncio.Task[Any]] = set()


def wait_for(awaitable: Awaitable[T]) -> T:
    """Await from sync code running in a bridged greenlet: the event loop runs meanwhile."""
    return await_only(awaitable)


def sleep(seconds: float, stop: threading.Event | None, asynchronous: bool) -> None:
    """Sleep up to `seconds`, returning early once `stop` is set."""
    seconds = max(seconds, 0.0)
    if not asynchronous:
        if stop is None:
            time.sleep(seconds)
        else:
            stop.wait(seconds)
        return
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and not (stop is not None and stop.is_set()):
        wait_for(asyncio.sleep(left if stop is None else min(left, STOP_CHECK_INTERVAL)))


def run_aside(func: Callable[[], None], name: str, asynchronous: bool) -> None:
    """Run `func` without waiting for it: in a thread, or as a task of the event loop."""
    if not asynchronous:
        threading.Thread(target=func, name=name, daemon=True).start()
        return
    task = asyncio.get_running_loop().create_task(greenlet_spawn(func), name=name)
    _background.add(task)
    task.add_done_callback(_background.discard)


def spawn(func: Callable[..., T], *args: Any, **kwargs: Any) -> Coroutine[Any, Any, T]:
    """Run sync sa_pgtq code from a coroutine, its database calls awaited on the event loop."""
    return greenlet_spawn(func, *args, **kwargs)


async def in_thread(func: Callable[..., T], *args: Any, name: str) -> T:
    """Await `func(*args)` run in a daemon thread of its own (with the caller's context).

    Unlike `asyncio.to_thread`, no pool caps how many run at once, and a call that
    never returns holds no pool's thread: once its awaiting is cancelled (a timeout)
    it costs that thread alone, which keeps neither the loop's other calls waiting
    nor `asyncio.run` from returning.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # cancelled meanwhile: nobody waits for it any more
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        result, error = None, None
        try:
            result = context.run(func, *args)
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future
