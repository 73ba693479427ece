"""The task layer: decorated handlers, pushing calls as jobs, and popping them back."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from sqlalchemy.orm import Session

from . import codec
from .errors import DuplicateHandlerError, TaskArgumentsError
from .models import TASK

if TYPE_CHECKING:
    from .queue import Queue

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_RETRY_DELAY = 1.0  # seconds before the first retry; doubles per attempt
MAX_RETRY_DELAY = 3600.0


@dataclass(frozen=True)
class Task:
    """A claimed task: run it with `run()`, or its lease expires and a worker retries it."""

    id: int
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    attempts: int
    token: str = field(repr=False)  # identifies this claim; a lost lease makes it stale
    queue: Queue = field(repr=False, compare=False)

    def run(self) -> bool:
        """Run the handler and record the outcome; True if it succeeded."""
        from .execution import acknowledge, execute

        outcome = execute(self.queue, self)
        if outcome.needs_ack:
            acknowledge(self.queue, self.token, [self.id])
        return outcome.succeeded


def decode_call(data: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The (args, kwargs) stored in a task's data; anything else is a malformed task."""
    if not isinstance(data, dict) or not isinstance(data.get("args"), list):
        raise TaskArgumentsError(f"malformed task payload: {data!r}")
    kwargs = data.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise TaskArgumentsError(f"malformed task payload: {data!r}")
    return tuple(data["args"]), kwargs


class Handler(Generic[P, R]):
    """A function registered on a queue. Calling it runs it now; `push` queues it."""

    def __init__(
        self, queue: Queue, func: Callable[P, R], name: str, max_attempts: int, retry_delay: float
    ) -> None:
        self.queue = queue
        self.func = func
        self.name = name
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.signature = inspect.signature(func)
        self.__doc__ = func.__doc__
        self.__wrapped__ = func

    def __repr__(self) -> str:
        return f"<Handler {self.name!r} on {self.queue!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def options(
        self,
        *,
        session: Session | None = None,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        priority: int = 0,
    ) -> Push[P]:
        """How to push: in the caller's `session`, scheduled, prioritised."""
        return Push(self, session, self.queue.job_params(TASK, self.name, run_at, delay, priority))

    def push(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Queue a call in its own transaction; returns the job id."""
        return self.options().push(*args, **kwargs)

    def push_many(self, calls: Iterable[tuple[Any, ...] | dict[str, Any]]) -> list[int]:
        """Queue many calls in one statement (a tuple: positional args; a dict: keyword args)."""
        return self.options().push_many(calls)

    def call_data(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """A call's job data, once the arguments fit the handler's signature."""
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TaskArgumentsError(f"{self.name}: {exc}") from None
        return {"args": list(args), "kwargs": kwargs}


class Push(Generic[P]):
    """A handler plus validated push options (see `Handler.options`)."""

    def __init__(self, handler: Handler[P, Any], session: Session | None, params: dict[str, Any]):
        self._handler = handler
        self._session = session
        self._params = params

    def push(self, *args: P.args, **kwargs: P.kwargs) -> int:
        return self._insert([self._handler.call_data(args, kwargs)])[0]

    def push_many(self, calls: Iterable[tuple[Any, ...] | dict[str, Any]]) -> list[int]:
        return self._insert([self._handler.call_data(*_split(call)) for call in calls])

    def _insert(self, datas: list[object]) -> list[int]:
        if not datas:
            return []
        batch = codec.encode_batch(datas, "json", None)
        return self._handler.queue.insert_many({**self._params, "datas": batch}, self._session)


def _split(call: object) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(call, dict):
        return (), call
    if isinstance(call, tuple):
        return call, {}
    raise TaskArgumentsError(
        f"each call must be a tuple (positional args) or a dict (keyword args), not {call!r}"
    )


class Registry:
    """The handlers of one queue, by name."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue
        self._handlers: dict[str, Handler[Any, Any]] = {}

    def get(self, name: str) -> Handler[Any, Any] | None:
        return self._handlers.get(name)

    def decorator(
        self, name: str | None, max_attempts: int, retry_delay: float
    ) -> Callable[[Callable[P, R]], Handler[P, R]]:
        codec.check_count(max_attempts, "max_attempts")
        codec.check_timeout(retry_delay, "retry_delay")

        def register(func: Callable[P, R]) -> Handler[P, R]:
            handler_name = codec.check_name(name or func.__name__, "handler name")
            if handler_name in self._handlers:
                raise DuplicateHandlerError(
                    f"a handler named {handler_name!r} is already registered on {self._queue!r}"
                )
            handler = Handler(self._queue, func, handler_name, max_attempts, retry_delay)
            self._handlers[handler_name] = handler
            return handler

        return register
