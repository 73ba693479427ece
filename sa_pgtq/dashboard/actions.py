"""The actions: POSTs that retry, cancel or abort a job, pause or resume a queue.

Each is checked (read-only, then cross-site), done through the Monitor, and answered
with a 303 back to the page it belongs to, which shows what happened once.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..models import FAILED, QUEUED, RUNNING
from ..monitor import Monitor
from . import csrf
from .rendering import Renderer, query

#: A form holds one token; anything much longer is not the dashboard's own form.
_MAX_BODY = 4096


class Actions:
    def __init__(self, monitor: Monitor, renderer: Renderer) -> None:
        self.monitor = monitor
        self.renderer = renderer
        self.on_jobs: dict[str, Callable[[int], bool]] = {
            "retry": monitor.retry,
            "cancel": monitor.cancel,
            "abort": monitor.abort,
        }
        self.on_queues: dict[str, Callable[[str], None]] = {
            "pause": monitor.pause,
            "resume": monitor.resume,
        }

    async def job(self, request: Request) -> Response:
        await self._check(request)
        job_id: int = request.path_params["job_id"]
        action: str = request.path_params["action"]
        if action not in self.on_jobs:
            raise HTTPException(404, "A job's actions are retry, cancel and abort.")
        path, message = await run_in_threadpool(self._act_on_job, job_id, action)
        return self.renderer.redirect(request, path, message)

    async def queue(self, request: Request) -> Response:
        await self._check(request)
        name: str = request.path_params["name"]
        action: str = request.path_params["action"]
        act = self.on_queues.get(action)
        if act is None:
            raise HTTPException(404, "A queue's actions are pause and resume.")
        await run_in_threadpool(act, name)
        message = (
            f"Queue {name} paused: no worker takes its tasks until it is resumed."
            if action == "pause"
            else f"Queue {name} resumed."
        )
        return self.renderer.redirect(request, "/", message)

    def _act_on_job(self, job_id: int, action: str) -> tuple[str, str]:
        """Where to go next and what to say, once `action` was tried on the job."""
        job = self.monitor.job(job_id)
        if job is None:
            raise HTTPException(404, f"There is no job {job_id} in {self.monitor.table_name}.")
        message = _outcome(action, job_id, job.state, self.on_jobs[action](job_id))
        # Without a retention a cancelled job is deleted: its queue's list is what is left.
        gone = self.monitor.job(job_id) is None
        return (f"/jobs{query(queue=job.queue)}" if gone else f"/jobs/{job_id}"), message

    async def _check(self, request: Request) -> None:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_BODY:
                raise HTTPException(413, "The form is too large to be the dashboard's own.")
        token = parse_qs(body.decode("utf-8", "replace")).get(csrf.FIELD, [None])[0]
        nonce = request.cookies.get(csrf.COOKIE)
        why = csrf.refusal(request.headers, nonce, token, self.renderer.secret)
        if why is not None:
            raise HTTPException(403, why)


def _outcome(action: str, job_id: int, state: str, done: bool) -> str:
    """The flash message: what the action did to a job that was in `state`."""
    if action == "retry":
        if done:
            return f"Job {job_id} queued again."
        if state == FAILED:  # requeue_failed leaves it when its unique key is taken again
            return f"Job {job_id} stays failed: another job of its queue holds its unique key."
        return f"Job {job_id} was not retried: it is {state}, and only a failed job can be."
    if action == "cancel":
        return (
            f"Job {job_id} cancelled."
            if done
            else f"Job {job_id} was not cancelled: it is {state}"
            + (" (abort a running job instead)." if state == RUNNING else ".")
        )
    if not done:
        return f"Job {job_id} was not aborted: it is {state}."
    if state == QUEUED:
        return f"Job {job_id} cancelled before it started."
    return f"Job {job_id}: its worker was asked to stop it (within about a second)."
