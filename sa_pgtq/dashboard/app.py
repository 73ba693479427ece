"""`create_app`: the dashboard as a Starlette app, its routes, guards and error pages."""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..aio import AsyncQueue
from ..binding import Bind
from ..errors import InvalidInputError
from ..monitor import Monitor
from ..queue import Queue
from .actions import Actions
from .pages import Pages
from .rendering import Renderer

#: Says whether a request may see the dashboard (and act, unless it is read-only).
Authorize = Callable[[Request], bool | Awaitable[bool]]


def create_app(
    bind: Bind | AsyncEngine | Queue | AsyncQueue,
    *,
    read_only: bool = False,
    table_name: str | None = None,
    authorize: Authorize | None = None,
    secret: str | bytes | None = None,
) -> Starlette:
    """The dashboard of a queue table, an ASGI app to mount anywhere (or run with uvicorn).

    `bind` is what `sa_pgtq.monitor.Monitor` takes: an Engine, a URL, a sessionmaker, an
    AsyncEngine, or a Queue / AsyncQueue. `read_only` shows no action forms and refuses
    every POST with 403. `authorize(request)`, sync or async, is asked about every
    request; False answers 403. `secret` signs the forms' CSRF tokens: give the same one
    to every process serving the dashboard behind one address (by default each app makes
    its own, so a form is only good for the process that showed it).
    """
    monitor = Monitor(bind, table_name=table_name)
    key = (secret.encode() if isinstance(secret, str) else secret) or secrets.token_bytes(32)
    renderer = Renderer(secret=key, read_only=read_only, table_name=monitor.table_name)
    pages, actions = Pages(monitor, renderer), Actions(monitor, renderer)

    async def refused(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return renderer.error(request, exc.status_code, exc.detail)
        return renderer.error(request, 400, str(exc))  # bad input the Monitor refused

    return Starlette(
        routes=[
            Route("/", pages.overview),
            Route("/jobs", pages.jobs),
            Route("/jobs/{job_id:int}", pages.job),
            Route("/jobs/{job_id:int}/{action}", actions.job, methods=["POST"]),
            # A queue's name may hold a slash: `path` takes it whole, up to the action.
            Route("/queues/{name:path}/{action}", actions.queue, methods=["POST"]),
        ],
        middleware=[Middleware(Authorization, check=authorize, renderer=renderer)],
        exception_handlers={HTTPException: refused, InvalidInputError: refused},
    )


class Authorization:
    """Asks `check` about every HTTP request before the dashboard sees it, and refuses
    every other method than GET on a read-only dashboard."""

    def __init__(self, app: ASGIApp, check: Authorize | None, renderer: Renderer) -> None:
        self.app = app
        self.check = check
        self.renderer = renderer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            refusal = None
            if self.check is not None and not await self._allowed(request, self.check):
                refusal = "You are not allowed to see this."
            elif self.renderer.read_only and request.method not in ("GET", "HEAD"):
                # Every POST, to any path: a 403, not the 405 of a route that takes none.
                refusal = "This dashboard is read-only: it takes no actions."
            if refusal is not None:
                await self.renderer.error(request, 403, refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _allowed(request: Request, check: Authorize) -> bool:
        # A sync check may read a database: it runs in a thread, as sync endpoints do.
        if inspect.iscoroutinefunction(check):
            answer = await check(request)
        else:
            answer = await run_in_threadpool(check, request)
        if inspect.isawaitable(answer):
            answer = await answer
        return bool(answer)
