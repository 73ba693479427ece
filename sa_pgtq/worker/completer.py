"""The completer: acknowledges succeeded tasks in batches instead of one transaction each."""

from __future__ import annotations

import threading

from ..execution import Executor
from ..leases import Leases
from ..periodic import Periodic
from ..tasks import Finished, Outcome, Task

#: Seconds a finished task may wait for its batched removal.
ACK_INTERVAL = 0.5


class Completer(Periodic):
    """Collects tasks that succeeded without a session of their own, and acknowledges them:
    removed, or kept with their results when the queue has a retention.

    A claiming producer takes one claim's pending tasks into its claim statement (one
    round trip for both); whatever no claim took is acknowledged every `ACK_INTERVAL`
    seconds. Until then, a finished task keeps its lease, so it is never rescued and
    run again.
    """

    name = "completer"

    def __init__(self, executor: Executor, leases: Leases) -> None:
        super().__init__(ACK_INTERVAL, asynchronous=executor.backend.binding.asynchronous)
        self._executor = executor
        self._leases = leases
        self._pending: dict[str, Finished] = {}
        self._lock = threading.Lock()

    def claim(self, limit: int, lease: float) -> list[Task]:
        """Claim tasks, removing one earlier claim's finished ones in the same round trip."""
        finished = self.take_one()
        if finished is None:
            return self._executor.claim(limit, lease)
        try:
            tasks = self._executor.claim(limit, lease, finished=finished)
        except BaseException:
            self.put_back([finished])
            raise
        self.removed([finished])
        return tasks

    def settle(self, task: Task, outcome: Outcome) -> None:
        """After a run: a success still to remove keeps its lease until removed."""
        if outcome.needs_ack:
            self.finished(task.token, task.id, outcome.stored)
        else:
            self._leases.drop(task.token, [task.id])

    def finished(self, token: str, task_id: int, result: str | None = None) -> None:
        with self._lock:
            done = self._pending.get(token)
            if done is None:
                done = self._pending[token] = Finished(token)
            done.add(task_id, result)

    def has_pending(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def take_one(self) -> Finished | None:
        """One claim's pending tasks (the longest waiting), for a claim to acknowledge."""
        with self._lock:
            if not self._pending:
                return None
            return self._pending.pop(next(iter(self._pending)))

    def take(self) -> list[Finished]:
        """Everything pending, for the caller to acknowledge (then `removed` or `put_back`)."""
        with self._lock:
            taken, self._pending = list(self._pending.values()), {}
        return taken

    def removed(self, batch: list[Finished]) -> None:
        for done in batch:
            self._leases.drop(done.token, done.ids)

    def put_back(self, batch: list[Finished]) -> None:
        with self._lock:
            for done in batch:
                pending = self._pending.get(done.token)
                if pending is None:
                    self._pending[done.token] = done
                else:
                    pending.extend(done)

    def tick(self) -> None:
        batch = self.take()
        if not batch:
            return
        try:
            self._executor.acknowledge(batch)
        except BaseException:
            self.put_back(batch)
            raise
        self.removed(batch)
