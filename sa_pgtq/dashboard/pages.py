"""The pages: the queues (overview), a filtered list of jobs, one job."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..models import FAILED, QUEUED, RUNNING, STATES
from ..monitor import Monitor
from .chart import throughput_chart
from .rendering import Renderer

#: Jobs per page unless `limit` says otherwise.
PAGE_SIZE = 50
#: The actions a job's page offers in each state (the POST routes refuse nothing by state:
#: the Monitor's answer, done or not, is what the flash message reports).
OFFERED = {QUEUED: ("cancel",), RUNNING: ("abort",), FAILED: ("retry", "cancel")}
_INTEGER = re.compile(r"-?[0-9]{1,19}")


class Pages:
    def __init__(self, monitor: Monitor, renderer: Renderer) -> None:
        self.monitor = monitor
        self.renderer = renderer

    async def overview(self, request: Request) -> Response:
        # Each costs a few index probes per queue, on a connection of its own: side by side.
        queues, buckets = await _at_once(self.monitor.queues, self.monitor.throughput)
        return self.renderer.page(
            request, "overview.html", queues=queues, states=STATES, chart=throughput_chart(buckets)
        )

    async def jobs(self, request: Request) -> Response:
        params = request.query_params
        queue, state, tag = (params.get(name) or None for name in ("queue", "state", "tag"))
        before = _integer(params, "before")
        limit = _integer(params, "limit")
        size = PAGE_SIZE if limit is None else limit
        jobs = await run_in_threadpool(
            partial(self.monitor.jobs, queue=queue, state=state, tag=tag, before=before, limit=size)
        )
        return self.renderer.page(
            request,
            "jobs.html",
            jobs=jobs,
            filters={"queue": queue, "state": state, "tag": tag},
            states=STATES,
            limit=limit,
            before=before,
            # A full page may have older jobs after it; the last id shown is where they start.
            older=jobs[-1].id if jobs and len(jobs) == size else None,
        )

    async def job(self, request: Request) -> Response:
        job_id: int = request.path_params["job_id"]
        job = await run_in_threadpool(self.monitor.job, job_id)
        if job is None:
            raise HTTPException(
                404,
                f"There is no job {job_id} in {self.monitor.table_name}: it finished "
                "without a retention, was pruned, or never existed.",
            )
        return self.renderer.page(request, "job.html", job=job, actions=OFFERED.get(job.state, ()))


async def _at_once(*calls: Callable[[], Any]) -> list[Any]:
    """The results of `calls`, each run in a worker thread, all at the same time."""
    results: list[Any] = [None] * len(calls)

    async def run(n: int, call: Callable[[], Any]) -> None:
        results[n] = await run_in_threadpool(call)

    async with anyio.create_task_group() as group:
        for n, call in enumerate(calls):
            group.start_soon(run, n, call)
    return results


def _integer(params: QueryParams, name: str) -> int | None:
    value = params.get(name) or None
    if value is None:
        return None
    if not _INTEGER.fullmatch(value):
        raise HTTPException(400, f"{name} must be an integer, got {value!r}.")
    return int(value)
