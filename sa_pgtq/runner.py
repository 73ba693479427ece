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
    """A daemon thread running submitted calls in order, until abandoned."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[Call[object] | None] = queue.SimpleQueue()
        thread = threading.Thread(target=self._serve, name=name, daemon=True)
        thread.start()

    def submit(self, func: Callable[[], T]) -> Call[T]:
        call = Call(func)
        self._calls.put(call)  # type: ignore[arg-type]
        return call

    def abandon(self) -> None:
        """No more calls: the thread ends after the one in hand, whenever that returns."""
        self._calls.put(None)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            call.run()
