"""The worker: a SQLAlchemy-session loop that claims, runs and acknowledges tasks.

    sa_pgtq.Worker(q, concurrency=1).run(burst=False)
    sa_pgtq.worker.main_loop(q)          # run until SIGTERM/SIGINT, then exit 0

Each loop claims a batch with FOR UPDATE SKIP LOCKED under a lease, runs the
handlers one by one and removes the finished ones in batched DELETEs. A
heartbeat thread keeps the leases of everything held alive; any worker
requeues tasks whose lease ran out (their worker died), so a killed worker
never loses a job. Several processes on several machines may share one table.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from types import FrameType
from typing import NoReturn

from sqlalchemy.exc import DBAPIError

from . import codec
from .execution import DEFAULT_LEASE, acknowledge, claim, execute
from .models import TASK
from .notify import idle_wait, notify_payload
from .queue import Queue
from .tasks import Task

log = logging.getLogger(__name__)

Finished = tuple[str, list[int]]  # a claim token and its finished, not yet removed tasks

_ACK_INTERVAL = 0.5  # seconds a finished task may wait for its batched removal
_RECONNECT_DELAY = 1.0


class _BatchSize:
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


class _Leases:
    """The tasks this worker holds, kept alive by one heartbeat thread."""

    def __init__(self, queue: Queue, lease: float) -> None:
        self._queue = queue
        self._lease = timedelta(seconds=lease)
        self._held: dict[str, set[int]] = {}  # claim token -> task ids
        self._lock = threading.Lock()

    def hold(self, token: str, ids: list[int]) -> None:
        with self._lock:
            self._held.setdefault(token, set()).update(ids)

    def drop(self, token: str, ids: list[int]) -> None:
        with self._lock:
            held = self._held.get(token)
            if held is not None:
                held.difference_update(ids)
                if not held:
                    del self._held[token]

    def renew(self) -> None:
        with self._lock:
            held = {token: list(ids) for token, ids in self._held.items()}
        with self._queue.binding.transaction(None) as s:
            for token, ids in held.items():
                params = {"ids": ids, "token": token, "lease": self._lease}
                kept = set(s.execute(self._queue.sql.heartbeat, params).scalars())
                if lost := set(ids) - kept:
                    log.warning("lost the lease of tasks %s; another worker may run them", lost)


class Worker:
    """Runs a queue's tasks. `concurrency` threads each claim and run batches."""

    def __init__(
        self,
        queue: Queue,
        *,
        concurrency: int = 1,
        batch_size: int = 100,
        lease: float | None = None,
        poll_interval: float | None = None,
        install_signal_handlers: bool = True,
    ) -> None:
        self.queue = queue
        self.concurrency = codec.check_count(concurrency, "concurrency")
        self.batch_size = codec.check_count(batch_size, "batch_size")
        self.lease = codec.check_timeout(lease, "lease") or DEFAULT_LEASE
        self.poll_interval = (
            codec.check_timeout(poll_interval, "poll_interval") or queue.poll_interval
        )
        self.install_signal_handlers = install_signal_handlers
        self._stopping = threading.Event()
        self._leases = _Leases(queue, self.lease)
        self._last_rescue = 0.0
        self._rescue_lock = threading.Lock()

    def stop(self) -> None:
        """Finish the task in hand, put back the unstarted rest of the batch, and return."""
        self._stopping.set()

    def run(self, burst: bool = False) -> None:
        """Run tasks until `stop()` (or a signal); with `burst`, until nothing is due."""
        self._stopping.clear()
        with self._signals(), self._heartbeat():
            log.info("worker ready: %r, concurrency %d", self.queue, self.concurrency)
            others = [
                threading.Thread(target=self._loop, args=(burst,), name=f"sa_pgtq-worker-{n}")
                for n in range(1, self.concurrency)
            ]
            for thread in others:
                thread.start()
            try:
                self._loop(burst)
            finally:
                if not burst:
                    self._stopping.set()
                for thread in others:
                    thread.join()

    # -- the loop ------------------------------------------------------------

    def _loop(self, burst: bool) -> None:
        size = _BatchSize(self.batch_size)
        listener = self.queue.listener(TASK, None, self.poll_interval)
        # Finished tasks of the last batch, removed in the next claim's transaction:
        # one commit per batch instead of two.
        pending: Finished | None = None
        try:
            with listener:
                while not self._stopping.is_set():
                    try:
                        self._rescue_expired()
                        started = time.monotonic()
                        tasks = claim(self.queue, size.size, self.lease, finished=pending)
                        if pending is not None:
                            self._leases.drop(*pending)
                            pending = None
                        if tasks:
                            pending = self._run_batch(tasks)
                            size.update(len(tasks), time.monotonic() - started)
                            continue
                        if burst:
                            return
                        listener.wait(self._idle_wait())
                    except DBAPIError as exc:
                        # The database went away (restart, network): the pool reconnects on
                        # the next checkout; held tasks are safe under their leases meanwhile.
                        log.warning("database error in the worker loop (%s); retrying", exc)
                        self._stopping.wait(_RECONNECT_DELAY)
        finally:
            if pending is not None:
                self._acknowledge(*pending)

    def _run_batch(self, tasks: list[Task]) -> Finished:
        """Run a claimed batch; return the finished tasks still to be removed."""
        token = tasks[0].token
        held = [t.id for t in tasks]
        self._leases.hold(token, held)
        finished: list[int] = []
        flushed_at = time.monotonic()
        try:
            for index, task in enumerate(tasks):
                if self._stopping.is_set():
                    self._release(token, [t.id for t in tasks[index:]])
                    break
                outcome = execute(self.queue, task)
                if outcome.needs_ack:
                    finished.append(task.id)
                else:
                    self._leases.drop(token, [task.id])
                if finished and time.monotonic() - flushed_at > _ACK_INTERVAL:
                    self._acknowledge(token, finished)
                    finished, flushed_at = [], time.monotonic()
        except BaseException:
            # Stop renewing: whatever is not done expires and another worker retries it.
            self._leases.drop(token, held)
            raise
        done = set(finished)
        self._leases.drop(token, [i for i in held if i not in done])
        return token, finished

    def _acknowledge(self, token: str, ids: list[int]) -> None:
        try:
            acknowledge(self.queue, token, ids)
        except DBAPIError as exc:
            log.warning("could not remove finished tasks (%s); they may run again", exc)
        finally:
            self._leases.drop(token, ids)

    def _release(self, token: str, ids: list[int]) -> None:
        with self.queue.binding.single_statement(None) as s:
            s.execute(self.queue.sql.release_tasks, {"ids": ids, "token": token})

    def _idle_wait(self) -> float:
        with self.queue.binding.single_statement(None) as s:
            due = s.execute(
                self.queue.sql.seconds_until_next_task, {"queue_name": self.queue.name}
            ).scalar()
        # Wake in time to rescue expired leases, too.
        return min(idle_wait(due, self.poll_interval), self.lease / 2)

    def _rescue_expired(self) -> None:
        """Requeue tasks whose worker stopped renewing their lease (one thread at a time)."""
        now = time.monotonic()
        if now - self._last_rescue < self.lease / 2 or not self._rescue_lock.acquire(
            blocking=False
        ):
            return
        try:
            self._last_rescue = now
            with self.queue.binding.transaction(None) as s:
                rescued = s.execute(
                    self.queue.sql.rescue_expired, {"queue_name": self.queue.name}
                ).all()
                if rescued:
                    payload = notify_payload(self.queue.table_name, self.queue.name, TASK, "")
                    s.execute(self.queue.sql.notify, {"payload": payload})
            if rescued:
                log.warning("requeued %d tasks whose worker was lost", len(rescued))
        finally:
            self._rescue_lock.release()

    # -- process plumbing ----------------------------------------------------

    @contextmanager
    def _heartbeat(self) -> Iterator[None]:
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.lease / 3):
                try:
                    self._leases.renew()
                except DBAPIError as exc:
                    log.warning("heartbeat failed (%s); retrying", exc)

        thread = threading.Thread(target=beat, name="sa_pgtq-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    @contextmanager
    def _signals(self) -> Iterator[None]:
        if (
            not self.install_signal_handlers
            or threading.current_thread() is not threading.main_thread()
        ):
            yield
            return

        def graceful(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: finishing the current task, then stopping", signum)
            self.stop()

        previous = {sig: signal.signal(sig, graceful) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def main_loop(queue: Queue, *, concurrency: int = 1) -> NoReturn:
    """Run `queue`'s tasks until SIGTERM/SIGINT, finish the task in hand, and exit 0."""
    Worker(queue, concurrency=concurrency).run()
    raise SystemExit(0)
