"""The producer: claims batches of due tasks and runs them, one thread per concurrency slot."""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from .. import gateway
from ..backend import Backend
from ..execution import Executor
from ..leases import Leases
from ..listener import Listener, idle_wait
from ..models import TASK
from ..tasks import Task
from .completer import Completer

log = logging.getLogger(__name__)

_RECONNECT_DELAY = 1.0
#: Seconds a burst run waits at most (a NOTIFY ends the wait) before claiming again while
#: tasks of its own are held: one of them may hold a lock the next of its line waits for.
BURST_RECHECK = 0.2


class BatchSize:
    """How many tasks to claim at once: grows while batches finish fast, shrinks when slow.

    Fast no-op tasks get large batches (few round trips per task); slow tasks get
    small ones, so one worker does not hoard work that others could run.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 1

    def update(self, claimed: int, seconds: float) -> None:
        if claimed == self.size and seconds < 0.1:
            self.size = min(self.size * 2, self.limit)
        elif seconds > 1.0:
            self.size = max(self.size // 2, 1)


class Producer:
    """Claims with FOR UPDATE SKIP LOCKED, runs each task, hands successes to the completer.

    Idle, it waits on LISTEN/NOTIFY (at most `poll_interval`, and no longer than
    until the next scheduled task is due). On `stopping` it finishes the task in
    hand and puts the claimed but unstarted rest back untouched.
    """

    def __init__(
        self,
        executor: Executor,
        leases: Leases,
        completer: Completer,
        stopping: threading.Event,
        *,
        batch_size: int,
        lease: float,
        poll_interval: float,
        timeout: float | None,
    ) -> None:
        self._executor = executor
        self._leases = leases
        self._completer = completer
        self._stopping = stopping
        self._batch_size = batch_size
        self._lease = lease
        self._poll_interval = poll_interval
        self._timeout = timeout

    def run(self, burst: bool) -> None:
        """Claim and run until stopped; with `burst`, until nothing is due."""
        backend = self._executor.backend
        size = BatchSize(self._batch_size)
        with task_listener(backend, self._poll_interval) as listener:
            while not self._stopping.is_set():
                try:
                    started = time.monotonic()
                    held = self._leases.holding()
                    tasks = self._completer.claim(size.size, self._lease)
                    if tasks:
                        self._run_batch(tasks)
                        size.update(len(tasks), time.monotonic() - started)
                        continue
                    if burst:
                        wait = burst_recheck(held, self._leases, self._completer)
                        if wait is None:
                            return
                        if wait:
                            listener.wait(wait, self._stopping)
                        continue
                    listener.wait(idle_seconds(backend, self._poll_interval), self._stopping)
                except (DBAPIError, SQLAlchemyTimeoutError) as exc:
                    # The database went away (restart, network) or the pool had no free
                    # connection: the pool reconnects on the next checkout; held tasks
                    # are safe under their leases meanwhile.
                    log.warning("database error in the worker loop (%s); retrying", exc)
                    self._stopping.wait(_RECONNECT_DELAY)
                except Exception:
                    # Never a handler's error (those are recorded as the task's outcome):
                    # a bug of ours must not end the worker, nor spin it.
                    log.exception("unexpected error in the worker loop; retrying")
                    self._stopping.wait(_RECONNECT_DELAY)

    def _run_batch(self, tasks: list[Task]) -> None:
        token = tasks[0].token
        ids = [t.id for t in tasks]
        self._leases.hold(tasks)
        done = 0
        try:
            for task in tasks:
                if self._stopping.is_set():
                    self._executor.release(token, ids[done:])
                    break
                outcome = self._executor.run_claimed(task, self._timeout)
                done += 1
                self._completer.settle(task, outcome)
        finally:
            # Released, or abandoned by an error: whatever never ran is no longer renewed,
            # so if it is still claimed its lease expires and another worker takes it.
            self._leases.drop(token, ids[done:])


def burst_recheck(held: bool, leases: Leases, completer: Completer) -> float | None:
    """After a claim of a burst run found nothing: None to stop, else seconds to wait (at
    most: a NOTIFY ends it) before claiming again.

    Nothing is due unless a lock's line waits for a task of ours: one still to be
    acknowledged (the next claim does it, at once), one still running (its end may
    free the next of its line), or one this very claim acknowledged (`held` before
    it), which the claim could not yet see gone.
    """
    if completer.has_pending():
        return 0.0
    if leases.holding():
        return BURST_RECHECK
    return 0.0 if held else None


def task_listener(backend: Backend, poll_interval: float) -> Listener:
    """A listener woken by any task of the queue becoming due."""
    return Listener(
        backend.binding.listen_engine,
        backend.table_name,
        backend.queue_name,
        TASK,
        None,
        poll_interval,
    )


def idle_seconds(backend: Backend, poll_interval: float) -> float:
    """How long an idle worker waits for a NOTIFY: until the next scheduled task, at most a poll."""
    due = backend.run(None, gateway.seconds_until_next_task, backend.queue_name)
    return idle_wait(due, poll_interval)
