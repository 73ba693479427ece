"""Task handlers: registering functions on a queue and pushing calls of them as jobs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, Generic, ParamSpec, TypeVar

from . import gateway, tracing, validation
from .backend import Backend
from .binding import Caller, check_caller
from .errors import DuplicateHandlerError, InvalidInputError, TaskArgumentsError
from .models import TASK

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_RETRY_DELAY = 1.0  # seconds before the first retry; doubles per attempt
MAX_RETRY_DELAY = 3600.0


class Handler(Generic[P, R]):
    """A function registered on a queue. Calling it runs it now; `push` queues it."""

    def __init__(
        self,
        backend: Backend,
        func: Callable[P, R],
        name: str,
        max_attempts: int,
        retry_delay: float,
        timeout: float | None = None,
    ) -> None:
        self.backend = backend
        self.func = func
        self.name = name
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.timeout = timeout  # seconds a run may take; None: the worker's default
        self.signature = inspect.signature(func)
        #: An `async def`: awaited on the event loop (run with asyncio.run by a sync worker).
        self.is_async = inspect.iscoroutinefunction(func)
        self.__doc__ = func.__doc__
        self.__wrapped__ = func

    def __repr__(self) -> str:
        return f"<Handler {self.name!r} of queue {self.backend.queue_name!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def options(
        self,
        *,
        session: Caller | None = None,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        priority: int = 0,
        unique_key: str | None = None,
        lock: str | None = None,
    ) -> Push[P]:
        """How to push: in the caller's `session`, scheduled, prioritised, keyed, locked.

        While a job of this queue with `unique_key` is queued or running, a push with
        the key writes nothing and returns that job's id. Of the tasks with one `lock`,
        at most one runs at a time, in queue order.
        """
        check_caller(session)
        params = validation.new_job_params(
            self.backend.queue_name, TASK, self.name, run_at, delay, priority, unique_key, lock
        )
        return Push(self, session, params)

    def push(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Queue a call in its own transaction; returns the job id."""
        return self.options().push(*args, **kwargs)

    def push_many(
        self,
        calls: Iterable[tuple[Any, ...] | dict[str, Any]],
        *,
        unique_keys: Iterable[str | None] | None = None,
    ) -> list[int]:
        """Queue many calls in one statement (a tuple: positional args; a dict: keyword args).

        `unique_keys` gives each call a unique key (or None), as `options(unique_key=)`.
        """
        return self.options().push_many(calls, unique_keys=unique_keys)

    def call_data(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """A call's job data, once the arguments fit the handler's signature."""
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TaskArgumentsError(f"{self.name}: {exc}") from None
        return {"args": list(args), "kwargs": kwargs}


class Push(Generic[P]):
    """A handler plus validated push options (see `Handler.options`)."""

    def __init__(self, handler: Handler[P, Any], session: Caller | None, params: dict[str, Any]):
        self._handler = handler
        self._session = session
        self._params = params

    def push(self, *args: P.args, **kwargs: P.kwargs) -> int:
        data = validation.encode_data(self._handler.call_data(args, kwargs), "json", None)
        return tracing.produce(
            "push",
            self._params,
            lambda p: self._handler.backend.run(self._session, gateway.insert_job, p, data),
        )

    def push_many(
        self,
        calls: Iterable[tuple[Any, ...] | dict[str, Any]],
        *,
        unique_keys: Iterable[str | None] | None = None,
    ) -> list[int]:
        batch = validation.check_batch(calls, "calls")
        keys = validation.check_unique_keys(unique_keys, len(batch))
        if self._params["unique_key"] is not None and (len(batch) > 1 or keys is not None):
            raise InvalidInputError(
                "options(unique_key=...) keys one job: give push_many unique_keys=[...], "
                "one per call"
            )
        datas: list[object] = [self._handler.call_data(*_split(call)) for call in batch]
        if not datas:
            return []
        arrays = validation.encode_batch(datas, "json", None)
        if keys is None and self._params["unique_key"] is not None:
            keys = [self._params["unique_key"]]
        return tracing.produce(
            "push",
            self._params,
            lambda p: self._handler.backend.insert_jobs(self._session, p, arrays, keys),
        )


def _split(call: object) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(call, dict):
        return (), call
    if isinstance(call, tuple):
        return call, {}
    raise TaskArgumentsError(
        f"each call must be a tuple (positional args) or a dict (keyword args), not {call!r}"
    )


class HandlerRegistry:
    """The handlers of one queue, by name (read like a dict)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._handlers: dict[str, Handler[Any, Any]] = {}

    def __getitem__(self, name: str) -> Handler[Any, Any]:
        return self._handlers[name]

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def get(self, name: str) -> Handler[Any, Any] | None:
        return self._handlers.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._handlers)

    def __len__(self) -> int:
        return len(self._handlers)

    def decorator(
        self, name: str | None, max_attempts: int, retry_delay: float, timeout: float | None = None
    ) -> Callable[[Callable[P, R]], Handler[P, R]]:
        validation.check_count(max_attempts, "max_attempts")
        validation.check_timeout(retry_delay, "retry_delay")
        timeout = validation.check_timeout(timeout, "timeout")

        def register(func: Callable[P, R]) -> Handler[P, R]:
            handler_name = validation.check_name(name or func.__name__, "handler name")
            if handler_name in self._handlers:
                raise DuplicateHandlerError(
                    f"a handler named {handler_name!r} already exists "
                    f"on queue {self._backend.queue_name!r}"
                )
            handler = Handler(self._backend, func, handler_name, max_attempts, retry_delay, timeout)
            self._handlers[handler_name] = handler
            return handler

        return register
