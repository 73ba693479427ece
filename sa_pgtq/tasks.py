"""A claimed task: what `Queue.pop()` returns and what a worker runs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class Outcome:
    """How running a task went."""

    succeeded: bool
    result: Any = None  # the handler's return value
    error: BaseException | None = None  # why it did not succeed
    needs_ack: bool = False  # succeeded without a session: still to be removed (in a batch)
    stored: str | None = None  # the result as JSON text, to keep (with a retention)
    #: A failure recorded: the job's state after it, `queued` (to be retried) or `failed`.
    failure: str | None = None


@dataclass
class Finished:
    """Succeeded tasks of one claim, to be acknowledged together (removed, or kept).

    `results` holds each task's result as JSON text (None: nothing to keep).
    """

    token: str
    ids: list[int] = field(default_factory=list)
    results: list[str | None] = field(default_factory=list)

    def add(self, task_id: int, result: str | None) -> None:
        self.ids.append(task_id)
        self.results.append(result)

    def extend(self, other: Finished) -> None:
        self.ids += other.ids
        self.results += other.results


class TaskRunner(Protocol):
    """Runs a popped task and records its outcome (implemented by `execution.Executor`)."""

    def run_popped(self, task: Task) -> Outcome: ...


class AbortSignal:
    """Whether a task's abort was requested, and whom to tell when it is.

    Set from the service that learns of the request (a thread, or the event loop),
    read by the handler's own thread; `watch` lets a run on the event loop cancel
    its coroutine the moment the request arrives.
    """

    def __init__(self) -> None:
        # A plain flag, not a threading.Event: every claimed task makes one, and reading
        # a bool another thread sets is safe; the lock orders a request and a watch.
        self._requested = False
        self._lock = threading.Lock()
        self._watcher: Callable[[], object] | None = None

    @property
    def requested(self) -> bool:
        return self._requested

    def request(self) -> None:
        with self._lock:
            if self._requested:
                return
            self._requested = True
            watcher = self._watcher
        if watcher is not None:
            watcher()

    def watch(self, watcher: Callable[[], object] | None) -> None:
        """Call `watcher` once the abort is requested (at once if it was); None: stop."""
        with self._lock:
            self._watcher = watcher
            requested = self._requested
        if requested and watcher is not None:
            watcher()


@dataclass(frozen=True)
class Task:
    """A claimed task: run it with `run()`, or its lease expires and a worker retries it."""

    id: int
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    attempts: int  # tries started, this one included
    priority: int
    run_at: datetime  # when it was due: a periodic task's tick (a retry's, once retried)
    token: str = field(repr=False)  # identifies this claim; a lost lease makes it stale
    runner: TaskRunner = field(repr=False, compare=False)
    lease: float = field(repr=False)  # seconds the claim stays valid without a renewal
    caller: object = field(default=None, repr=False, compare=False)  # whose transaction
    abort: AbortSignal = field(default_factory=AbortSignal, repr=False, compare=False)
    #: The job's `meta` as JSON text (the producer's trace context), None when it has none.
    meta: str | None = field(default=None, repr=False, compare=False)

    def run(self) -> bool:
        """Run the handler and record the outcome; True if it succeeded.

        Its lease is kept alive while it runs. A task popped in the caller's
        transaction runs in a savepoint of it and records its outcome there too.
        """
        return self.runner.run_popped(self).succeeded
