"""An `AsyncQueue`'s handlers and popped tasks: `Handler` and `Task`, awaited."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Generic

from .. import bridge
from ..binding import AsyncCaller, sync_caller
from ..handlers import Handler, P, Push, R
from ..tasks import Task


class AsyncHandler(Generic[P, R]):
    """A function registered on an `AsyncQueue`. Calling it runs it now; `await push` queues it."""

    def __init__(self, handler: Handler[P, R]) -> None:
        #: The registration the workers run (`Queue`'s own kind).
        self.sync = handler
        self.name = handler.name
        self.func = handler.func
        self.__doc__ = handler.__doc__
        self.__wrapped__ = handler.func

    def __repr__(self) -> str:
        return f"<AsyncHandler {self.name!r} of queue {self.sync.backend.queue_name!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def options(
        self,
        *,
        session: AsyncCaller | None = None,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        priority: int = 0,
        unique_key: str | None = None,
        lock: str | None = None,
    ) -> AsyncPush[P]:
        """How to push: in the caller's `session`, scheduled, prioritised, keyed, locked.

        See `Handler.options`.
        """
        caller = sync_caller(session)
        return AsyncPush(
            self.sync.options(
                session=caller,
                run_at=run_at,
                delay=delay,
                priority=priority,
                unique_key=unique_key,
                lock=lock,
            )
        )

    async def push(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Queue a call in its own transaction; returns the job id."""
        return await self.options().push(*args, **kwargs)

    async def push_many(
        self,
        calls: Iterable[tuple[Any, ...] | dict[str, Any]],
        *,
        unique_keys: Iterable[str | None] | None = None,
    ) -> list[int]:
        """Queue many calls in one statement (a tuple: positional args; a dict: keyword args)."""
        return await self.options().push_many(calls, unique_keys=unique_keys)


class AsyncPush(Generic[P]):
    """A handler plus validated push options (see `AsyncHandler.options`)."""

    def __init__(self, push: Push[P]) -> None:
        self._push = push

    async def push(self, *args: P.args, **kwargs: P.kwargs) -> int:
        return await bridge.spawn(self._push.push, *args, **kwargs)

    async def push_many(
        self,
        calls: Iterable[tuple[Any, ...] | dict[str, Any]],
        *,
        unique_keys: Iterable[str | None] | None = None,
    ) -> list[int]:
        return await bridge.spawn(self._push.push_many, calls, unique_keys=unique_keys)


class AsyncTask:
    """A task claimed with `AsyncQueue.pop()`: run it with `await task.run()`."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def __repr__(self) -> str:
        return f"<AsyncTask {self.task!r}>"

    @property
    def id(self) -> int:
        return self.task.id

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def args(self) -> tuple[Any, ...]:
        return self.task.args

    @property
    def kwargs(self) -> dict[str, Any]:
        return self.task.kwargs

    @property
    def attempts(self) -> int:
        return self.task.attempts

    async def run(self) -> bool:
        """Run the handler and record the outcome; True if it succeeded. See `Task.run`."""
        return await bridge.spawn(self.task.run)
