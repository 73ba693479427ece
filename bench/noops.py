"""No-op tasks for the drain benchmarks: pushed in batches, run by one burst worker."""

from __future__ import annotations

import sa_pgtq


class Noops:
    """A `noop` handler on `q`, and a worker that stops once it has run enough of them."""

    def __init__(self, q: sa_pgtq.Queue, batch: int = 1000) -> None:
        self.batch = batch
        self.done = 0
        self._stop_after: int | None = None
        self.worker = sa_pgtq.Worker(q, install_signal_handlers=False)

        @q.handler(name="noop")
        def noop(i: int) -> None:
            self.done += 1
            if self._stop_after is not None and self.done >= self._stop_after:
                self.worker.stop()

        self._noop = noop

    def push(self, n: int) -> None:
        """`n` no-op tasks, `batch` per statement."""
        for start in range(0, n, self.batch):
            self._noop.push_many([(i,) for i in range(start, min(start + self.batch, n))])

    def drain(self, stop_after: int | None = None) -> int:
        """Run due tasks, one burst worker (until `stop_after` have run); how many ran."""
        self.done, self._stop_after = 0, stop_after
        self.worker.run(burst=True)
        return self.done
