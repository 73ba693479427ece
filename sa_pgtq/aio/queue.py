"""`AsyncQueue`: `Queue`'s message and task layers, awaited.

An `AsyncQueue` holds a `Queue` on the sync side of its async engine and awaits
each operation through SQLAlchemy's greenlet bridge, as `AsyncSession` does over
`Session`: the same validation, the same statements, the same transactions. The
caller's `AsyncSession` or `AsyncConnection` is joined through its sync side,
which is what its own `run_sync` would hand over.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from .. import bridge, validation
from ..binding import AsyncBind, AsyncCaller, Binding, sync_caller, timeout_and_session
from ..execution import Executor
from ..handlers import DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_DELAY, HandlerRegistry, P, R
from ..models import JobMixin
from ..queue import DEFAULT_POLL_INTERVAL, Queue
from ..schedules import ScheduleRegistry
from .consuming import AsyncListening, Held
from .handlers import AsyncHandler, AsyncTask

T = TypeVar("T")


class AsyncQueue:
    """A named queue on a queue table, for asyncio applications (asyncpg or psycopg 3).

    `bind` is an AsyncEngine, an async_sessionmaker bound to one, or a URL / DSN
    (a bare `postgresql://` gets asyncpg when it is installed). The options are
    `Queue`'s. A `Queue` on the same table and name is the same queue.
    """

    def __init__(
        self,
        bind: AsyncBind,
        *,
        name: str = "default",
        data_type: validation.DataType = "json",
        data_length: int | None = None,
        excepted_times_to_ignore: int = 0,
        model: type[JobMixin] | None = None,
        table_name: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        listen_bind: AsyncEngine | URL | str | None = None,
        retention: timedelta | float | None = None,
    ) -> None:
        #: The same queue, sync, on the async engine's sync side: what each call awaits.
        self.sync = Queue(
            Binding(bind, listen_bind, asynchronous=True),
            name=name,
            data_type=data_type,
            data_length=data_length,
            excepted_times_to_ignore=excepted_times_to_ignore,
            model=model,
            table_name=table_name,
            poll_interval=poll_interval,
            retention=retention,
        )
        async_sessions = self.sync.backend.binding.async_sessions
        assert async_sessions is not None
        self.engine: AsyncEngine = async_sessions.kw["bind"]

    def __repr__(self) -> str:
        return f"<AsyncQueue {self.name!r} on {self.table_name!r}>"

    @property
    def name(self) -> str:
        return self.sync.name

    @property
    def model(self) -> type[JobMixin]:
        return self.sync.model

    @property
    def table_name(self) -> str:
        return self.sync.table_name

    @property
    def poll_interval(self) -> float:
        return self.sync.poll_interval

    @property
    def retention(self) -> timedelta | None:
        return self.sync.retention

    @property
    def handlers(self) -> HandlerRegistry:
        return self.sync.handlers

    @property
    def schedules(self) -> ScheduleRegistry:
        return self.sync.schedules

    @property
    def executor(self) -> Executor:
        return self.sync.executor

    @property
    def sync_engine(self) -> Engine:
        return self.sync.engine

    # -- schema --------------------------------------------------------------

    async def create_table(self) -> bool:
        """Create the queue table (exactly as the Alembic chain does) unless it exists."""
        return await bridge.spawn(self.sync.create_table)

    # -- message layer -------------------------------------------------------

    async def enqueue(
        self,
        tag: str,
        data: Any,
        session: AsyncCaller | None = None,
        *,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        priority: int = 0,
        unique_key: str | None = None,
    ) -> int:
        """Add one message; returns its job id. See `Queue.enqueue`."""
        return await self._run(
            session,
            self.sync.enqueue,
            tag,
            data,
            run_at=run_at,
            delay=delay,
            priority=priority,
            unique_key=unique_key,
        )

    async def enqueue_many(
        self,
        tag: str,
        datas: Iterable[Any],
        session: AsyncCaller | None = None,
        *,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        priority: int = 0,
        unique_keys: Iterable[str | None] | None = None,
    ) -> list[int]:
        """Add many messages in one statement; returns their ids. See `Queue.enqueue_many`."""
        return await self._run(
            session,
            self.sync.enqueue_many,
            tag,
            datas,
            run_at=run_at,
            delay=delay,
            priority=priority,
            unique_keys=unique_keys,
        )

    def dequeue(self, tag: str, session: AsyncCaller | None = None) -> Held[Any]:
        """`async with q.dequeue(tag) as data:`, with `Queue.dequeue`'s semantics."""
        caller = sync_caller(session)
        return Held(lambda: self.sync.dequeue(tag, caller))

    def dequeue_item(self, tag: str, session: AsyncCaller | None = None) -> Held[JobMixin | None]:
        """Like `dequeue`, yielding the whole `Job` row."""
        caller = sync_caller(session)
        return Held(lambda: self.sync.dequeue_item(tag, caller))

    async def dequeue_immediate(self, tag: str, session: AsyncCaller | None = None) -> Any:
        """Remove the next message at once and return its data (None when there is none)."""
        return await self._run(session, self.sync.dequeue_immediate, tag)

    async def dequeue_item_immediate(
        self, tag: str, session: AsyncCaller | None = None
    ) -> JobMixin | None:
        """Remove the next message at once and return it as a `Job`."""
        return await self._run(session, self.sync.dequeue_item_immediate, tag)

    def listen(
        self,
        tag: str,
        timeout: float | AsyncCaller | None = None,
        session: AsyncCaller | None = None,
    ) -> AsyncListening:
        """`async for data in q.listen(tag, timeout)`, with `Queue.listen`'s semantics."""
        return self._listen(self.sync.listen, tag, timeout, session)

    def listen_item(
        self,
        tag: str,
        timeout: float | AsyncCaller | None = None,
        session: AsyncCaller | None = None,
    ) -> AsyncListening:
        """Like `listen`, yielding whole `Job` rows."""
        return self._listen(self.sync.listen_item, tag, timeout, session)

    async def list(self, tag: str, session: AsyncCaller | None = None) -> builtins.list[JobMixin]:
        """Waiting messages with this tag, in the order they would be dequeued."""
        return await self._run(session, self.sync.list, tag)

    async def count(self, tag: str, session: AsyncCaller | None = None) -> int:
        """Messages with this tag that will still be handed out (failed ones excluded)."""
        return await self._run(session, self.sync.count, tag)

    async def cancel(self, job_id: int, session: AsyncCaller | None = None) -> bool:
        """Cancel a waiting or failed job of this queue; False if absent or being worked on."""
        return await self._run(session, self.sync.cancel, job_id)

    async def abort(self, job_id: int, session: AsyncCaller | None = None) -> bool:
        """Stop a queued or running job of this queue; False if absent or finished.

        See `Queue.abort`.
        """
        return await self._run(session, self.sync.abort, job_id)

    async def failed(
        self, tag: str | None = None, session: AsyncCaller | None = None
    ) -> builtins.list[JobMixin]:
        """Jobs kept as `failed`, oldest first; `tag` narrows by tag/handler."""
        return await self._run(session, self.sync.failed, tag)

    async def requeue_failed(
        self, job_ids: Iterable[int] | None = None, session: AsyncCaller | None = None
    ) -> int:
        """Queue failed jobs again with fresh attempts (all of this queue's, or just `job_ids`)."""
        return await self._run(session, self.sync.requeue_failed, job_ids)

    # -- job lifecycle -------------------------------------------------------

    async def job(self, job_id: int, session: AsyncCaller | None = None) -> JobMixin | None:
        """The queue's job with this id, in any state (None: not in the queue, or pruned)."""
        return await self._run(session, self.sync.job, job_id)

    async def result(self, job_id: int, timeout: float | None = None) -> Any:
        """The result of a task once it has succeeded. See `Queue.result`."""
        return await bridge.spawn(self.sync.result, job_id, timeout)

    # -- pausing -------------------------------------------------------------

    async def pause(self, session: AsyncCaller | None = None) -> None:
        """Stop handing out this queue's tasks until `resume()`. See `Queue.pause`."""
        await self._run(session, self.sync.pause)

    async def resume(self, session: AsyncCaller | None = None) -> None:
        """Hand out this queue's tasks again; idle workers are woken to claim at once."""
        await self._run(session, self.sync.resume)

    async def is_paused(self, session: AsyncCaller | None = None) -> bool:
        return await self._run(session, self.sync.is_paused)

    # -- task layer ----------------------------------------------------------

    def handler(
        self,
        name: str | None = None,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        timeout: float | None = None,
    ) -> Callable[[Callable[P, R]], AsyncHandler[P, R]]:
        """Register an `async def` (or a plain def, run in a thread) as a task handler.

        See `Queue.handler`. A run longer than `timeout` seconds is cancelled and
        fails with `TaskTimeoutError`.
        """
        register = self.sync.handler(
            name, max_attempts=max_attempts, retry_delay=retry_delay, timeout=timeout
        )
        return lambda func: AsyncHandler(register(func))

    def periodic(
        self,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        timezone: str = "UTC",
        kwargs: dict[str, Any] | None = None,
    ) -> Callable[[AsyncHandler[P, R]], AsyncHandler[P, R]]:
        """Run a handler periodically, on top of `@q.handler()`. See `Queue.periodic`."""
        register = self.sync.periodic(cron=cron, every=every, timezone=timezone, kwargs=kwargs)

        def decorate(handler: AsyncHandler[P, R]) -> AsyncHandler[P, R]:
            register(handler.sync if isinstance(handler, AsyncHandler) else handler)
            return handler

        return decorate

    async def pop(
        self, session: AsyncCaller | None = None, *, lease: float | None = None
    ) -> AsyncTask | None:
        """Claim the next due task; run it with `await task.run()`. See `Queue.pop`."""
        task = await self._run(session, self.sync.pop, lease=lease)
        return None if task is None else AsyncTask(task)

    # -- helpers -------------------------------------------------------------

    async def _run(
        self, session: object, operation: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        """`operation` of the sync queue, in the caller's transaction (its sync side) or ours."""
        return await bridge.spawn(operation, *args, session=sync_caller(session), **kwargs)

    def _listen(
        self,
        listen: Callable[[str, float | None, Any], Any],
        tag: str,
        timeout: object,
        session: object,
    ) -> AsyncListening:
        timeout, session = timeout_and_session(timeout, session)
        seconds = validation.check_timeout(timeout)
        return AsyncListening(listen(tag, seconds, sync_caller(session)))
