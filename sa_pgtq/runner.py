"""Running a call under a time limit, in a thread that can be abandoned.

Python cannot stop a thread, so a handler that overstays its time limit keeps
running; what can be done is to stop waiting for it. A `Runner` is one daemon
thread serving calls one at a time: the thread that waits on it gives up at the
deadline, abandons the runner (its thread ends once the stuck call returns) and
carries on with a new one, so a hung handler costs a thread, not a worker's slot.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Call(Generic[T]):
    """One call handed to a `Runner`: wait for it, then read `result`."""

    def __init__(self, func: Callable[[], T]) -> None:
        self.func = func
        self.done = threading.Event()
        self._result: T | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._result = self.func()
        except BaseException as exc:  # handed to the waiting thread, raised there
            self._error = exc
        finally:
            self.done.set()

    def result(self) -> T:
        self.done.wait()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


class Runner:
    """A daemon thread running submitted calls in order, until abandoned or idle.

    Its thread ends after `idle` seconds without a call, so the runners of threads
    that are gone do not pile up; `submit` then returns None and the owner makes
    a new one.
    """

    def __init__(self, name: str, idle: float = 60.0) -> None:
        self._calls: queue.SimpleQueue[Call[object] | None] = queue.SimpleQueue()
        self._idle = idle
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def submit(self, func: Callable[[], T]) -> Call[T] | None:
        """Hand `func` to the thread; None when this runner no longer takes calls."""
        with self._lock:
            if self._closed:
                return None
            call = Call(func)
            self._calls.put(call)  # type: ignore[arg-type]
            return call

    def abandon(self) -> None:
        """No more calls: the thread ends after the one in hand, whenever that returns."""
        with self._lock:
            self._closed = True
            self._calls.put(None)

    def _serve(self) -> None:
        while True:
            try:
                call = self._calls.get(timeout=self._idle)
            except queue.Empty:
                with self._lock:
                    if self._calls.empty():
                        self._closed = True
                        return
                continue
            if call is None:
                return
            call.run()
