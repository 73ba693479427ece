"""`AsyncWorker`: one event loop running up to `concurrency` of a queue's tasks at once.

    await sa_pgtq.AsyncWorker(q, concurrency=50).run(burst=False)

The services are the sync worker's (completer, heartbeat, rescuer, aborter,
scheduler, pruner), ticking as tasks of the event loop through the greenlet
bridge. What is written for asyncio is the dispatch: one fetcher claims batches
(FOR UPDATE SKIP LOCKED) into a buffer while `concurrency` slots take tasks from
it and run them, each run the executor's own, its handler awaited on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from .. import bridge
from ..execution import Executor
from ..leases import Leases
from ..listener import Listener
from ..tasks import Task
from ..worker import start, stop
from ..worker.base import BaseWorker
from ..worker.completer import Completer
from ..worker.producer import burst_recheck, idle_seconds, task_listener
from .queue import AsyncQueue

log = logging.getLogger(__name__)

#: Seconds to wait before claiming again after a database error.
RECONNECT_DELAY = 1.0

#: Claims a worker keeps in flight: the next batch is on its way while one is run.
CLAIMS_IN_FLIGHT = 2

#: The buffer of claimed tasks holds what the slots finish in this many seconds.
RESERVE_SECONDS = 0.05

#: Tasks that never await still leave the event loop a turn this often.
TURN_SECONDS = 0.001


class AsyncWorker(BaseWorker[AsyncQueue]):
    """Runs an `AsyncQueue`'s tasks, `concurrency` at a time, on the running event loop.

    Options are `Worker`'s.
    """

    _loop: asyncio.AbstractEventLoop | None = None
    _progress: asyncio.Event | None = None  # a slot freed, a claim landed, or stop()

    def stop(self) -> None:
        """Finish the tasks in hand, put back the claimed but unstarted rest, and return.

        Safe to call from any thread.
        """
        super().stop()
        loop, progress = self._loop, self._progress
        if loop is not None and progress is not None and not loop.is_closed():
            loop.call_soon_threadsafe(progress.set)

    async def run(self, burst: bool = False) -> None:
        """Run tasks until `stop()` (or a signal); with `burst`, until nothing is due."""
        self._stopping.clear()
        self._loop = asyncio.get_running_loop()
        self._progress = asyncio.Event()
        executor = self.queue.executor
        leases = Leases()
        completer = Completer(executor, leases)
        services, at_start = self._services(leases)
        for service in at_start:
            await bridge.spawn(service.safe_tick)
        await bridge.spawn(start, *services, completer)
        try:
            with self._signals():
                log.info("worker ready: %r, concurrency %d", self.queue, self.concurrency)
                await _Dispatch(self, executor, leases, completer).run(burst)
        finally:
            # As the sync worker: the last acks go first, while the heartbeat still
            # keeps the finished tasks' leases.
            await bridge.spawn(stop, completer, final=True)
            await bridge.spawn(stop, *services)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if not self._takes_signals():
            yield
            return
        assert self._loop is not None
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            self._loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in signals:
                self._loop.remove_signal_handler(sig)


class _Dispatch:
    """One run's fetcher and slots, sharing the buffer of claimed, unstarted tasks.

    The buffer holds what the slots finish in `RESERVE_SECONDS` (measured as they go),
    so fast tasks are claimed in full batches, with the next one already on its way,
    and slow ones one free slot at a time: nothing is hoarded that another worker
    could run.
    """

    def __init__(
        self, worker: AsyncWorker, executor: Executor, leases: Leases, completer: Completer
    ) -> None:
        assert worker._progress is not None
        self._worker = worker
        self._executor = executor
        self._leases = leases
        self._completer = completer
        self._stopping = worker._stopping
        self._progress = worker._progress
        self._ready: asyncio.Queue[Task | None] = asyncio.Queue()
        self._running = 0  # tasks the slots are running
        self._claiming = 0  # tasks asked for by the claims in flight
        self._finished = 0  # runs ended since `_measured_at`
        self._measured_at = time.monotonic()
        self._reserve = 0  # tasks to keep waiting in the buffer
        self._found_none = False  # the last claim to finish found nothing due
        self._held_then = False  # ... while tasks of ours were held (see `Producer.run`)

    async def run(self, burst: bool) -> None:
        worker = self._worker
        slots = [
            asyncio.ensure_future(bridge.spawn(self._serve_slot)) for _ in range(worker.concurrency)
        ]
        listener = task_listener(self._executor.backend, worker.poll_interval)
        await bridge.spawn(listener.__enter__)
        try:
            await self._fetch(listener, burst)
        finally:
            if self._stopping.is_set():
                await self._release_unstarted()
            for _ in slots:
                self._ready.put_nowait(None)  # after what is left: a burst runs it all
            await asyncio.gather(*slots)
            await bridge.spawn(listener.close)

    async def _fetch(self, listener: Listener, burst: bool) -> None:
        """Claim as slots free up and the buffer runs low; idle, wait for a NOTIFY."""
        claims: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping.is_set():
                if self._found_none:  # nothing is due: wait for the claims out, then a NOTIFY
                    if not claims:
                        if burst:
                            wait = burst_recheck(self._held_then, self._leases, self._completer)
                            if wait is None:
                                return
                            await asyncio.sleep(wait)
                            self._found_none = False
                            continue
                        await self._wait_for_work(listener)
                        self._found_none = False
                        continue
                elif len(claims) < CLAIMS_IN_FLIGHT and (limit := self._claim_size()):
                    self._claiming += limit
                    claims.add(asyncio.ensure_future(self._claim(limit)))
                    continue
                self._progress.clear()
                await self._progress.wait()
                claims = {claim for claim in claims if not claim.done()}
        finally:
            await asyncio.gather(*claims)  # what they claim is run, or put back

    def _claim_size(self) -> int:
        """How many tasks to claim now (0: not yet)."""
        worker = self._worker
        coming = self._ready.qsize() + self._claiming
        idle = worker.concurrency - self._running - coming  # slots that would wait
        wanted = min(idle + self._reserve, worker.batch_size)
        # At once for a slot that would wait; else refill the reserve in large batches.
        return wanted if idle > 0 or wanted >= worker.batch_size // 2 else 0

    async def _claim(self, limit: int) -> None:
        held = self._leases.holding()
        try:
            tasks = await bridge.spawn(self._completer.claim, limit, self._worker.lease)
        except (DBAPIError, SQLAlchemyTimeoutError) as exc:
            # The database went away or the pool is full: held tasks are safe under
            # their leases meanwhile.
            log.warning("database error in the worker loop (%s); retrying", exc)
            await asyncio.sleep(RECONNECT_DELAY)
            tasks = []
        else:
            self._found_none, self._held_then = not tasks, held
        finally:
            self._claiming -= limit
            self._progress.set()
        if tasks:
            self._leases.hold(tasks)
            for task in tasks:
                self._ready.put_nowait(task)

    async def _wait_for_work(self, listener: Listener) -> None:
        try:
            backend = self._executor.backend
            wait = await bridge.spawn(idle_seconds, backend, self._worker.poll_interval)
            await bridge.spawn(listener.wait, wait, self._stopping)
        except (DBAPIError, SQLAlchemyTimeoutError) as exc:
            log.warning("database error in the worker loop (%s); retrying", exc)
            await asyncio.sleep(RECONNECT_DELAY)

    def _serve_slot(self) -> None:
        """One slot: runs tasks from the buffer one at a time until it gets None.

        Sync code in one bridged greenlet for the whole run: a task costs a switch to
        await its handler, not a greenlet of its own.
        """
        executor, leases, completer = self._executor, self._leases, self._completer
        ready, timeout = self._ready, self._worker.timeout
        next_turn = time.monotonic() + TURN_SECONDS
        while (
            task := ready.get_nowait() if ready.qsize() else bridge.wait_for(ready.get())
        ) is not None:
            self._running += 1
            try:
                outcome = executor.run_claimed(task, timeout)
            except (DBAPIError, SQLAlchemyTimeoutError) as exc:
                # Its outcome could not be recorded: no longer renewed, its lease expires
                # and the task runs again, counted.
                log.warning("task %s: database error (%s); it will run again", task.id, exc)
                leases.drop(task.token, [task.id])
            except Exception:
                log.exception("task %s: unexpected error; it will run again", task.id)
                leases.drop(task.token, [task.id])
            else:
                completer.settle(task, outcome)
            finally:
                self._running -= 1
                now = time.monotonic()
                self._measure(now)
                self._progress.set()
            if now >= next_turn:
                # A turn for the rest of the loop (the fetcher, a claim's answer, the
                # heartbeat, the application's own tasks), which tasks that never await
                # would otherwise keep waiting until the buffer runs dry.
                bridge.wait_for(asyncio.sleep(0))
                next_turn = now + TURN_SECONDS

    def _measure(self, now: float) -> None:
        """Size the reserve from the rate at which the slots finish tasks (one just did)."""
        self._finished += 1
        elapsed = now - self._measured_at
        if elapsed >= RESERVE_SECONDS:
            rate = self._finished / elapsed
            limit = CLAIMS_IN_FLIGHT * self._worker.batch_size
            self._reserve = min(int(rate * RESERVE_SECONDS), limit)
            self._finished, self._measured_at = 0, now

    async def _release_unstarted(self) -> None:
        """Put claimed tasks that never started back, untouched."""
        unstarted: dict[str, list[int]] = {}
        while not self._ready.empty():
            task = self._ready.get_nowait()
            if task is not None:
                unstarted.setdefault(task.token, []).append(task.id)
        for token, ids in unstarted.items():
            try:
                await bridge.spawn(self._executor.release, token, ids)
            except (DBAPIError, SQLAlchemyTimeoutError) as exc:
                log.warning("could not put tasks back (%s); their leases will expire", exc)
            self._leases.drop(token, ids)
