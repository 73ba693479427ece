"""The producer: claims batches of due tasks and runs them, one thread per concurrency slot."""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from .. import gateway
from ..execution import Executor
from ..leases import Leases
from ..listener import Listener, idle_wait
from ..models import TASK
from ..tasks import Task
from .completer import Completer

log = logging.getLogger(__name__)

_RECONNECT_DELAY = 1.0


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
        listener = Listener(
            backend.binding.listen_engine,
            backend.table_name,
            backend.queue_name,
            TASK,
            None,
            self._poll_interval,
        )
        with listener:
            while not self._stopping.is_set():
                try:
                    started = time.monotonic()
                    tasks = self._claim(size.size)
                    if tasks:
                        self._run_batch(tasks)
                        size.update(len(tasks), time.monotonic() - started)
                        continue
                    if burst:
                        return
                    listener.wait(self._idle_wait(), self._stopping)
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

    def _claim(self, limit: int) -> list[Task]:
        # One claim's finished tasks are removed by the claim statement: one round trip.
        finished = self._completer.take_one()
        if finished is None:
            return self._executor.claim(limit, self._lease)
        try:
            tasks = self._executor.claim(limit, self._lease, finished=finished)
        except BaseException:
            self._completer.put_back([finished])
            raise
        self._completer.removed([finished])
        return tasks

    def _run_batch(self, tasks: list[Task]) -> None:
        token = tasks[0].token
        ids = [t.id for t in tasks]
        self._leases.hold(token, ids)
        done = 0
        try:
            for task in tasks:
                if self._stopping.is_set():
                    self._executor.release(token, ids[done:])
                    break
                outcome = self._executor.run_claimed(task, self._timeout)
                done += 1
                if outcome.needs_ack:
                    self._completer.finished(token, task.id)  # keeps its lease until removed
                else:
                    self._leases.drop(token, [task.id])
        finally:
            # Released, or abandoned by an error: whatever never ran is no longer renewed,
            # so if it is still claimed its lease expires and another worker takes it.
            self._leases.drop(token, ids[done:])

    def _idle_wait(self) -> float:
        backend = self._executor.backend
        due = backend.run(None, gateway.seconds_until_next_task, backend.queue_name)
        return idle_wait(due, self._poll_interval)
