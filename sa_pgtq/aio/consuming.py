"""Handing messages out on the event loop: the `async with` hold and the `async for` listen.

Both drive the sync ones (`Queue.dequeue`'s context manager, `Queue.listen`'s
iterator) one step at a time in bridged greenlets, so their semantics are the
sync ones by construction: only the stepping is written for asyncio.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Generic, TypeVar

from .. import bridge
from ..consuming import Listening

T = TypeVar("T")


class Held(Generic[T]):
    """`async with`: the sync hold entered and left in bridged greenlets."""

    def __init__(self, open_hold: Callable[[], AbstractContextManager[T]]) -> None:
        self._open = open_hold
        self._hold: AbstractContextManager[T] | None = None

    async def __aenter__(self) -> T:
        self._hold = self._open()
        return await bridge.spawn(self._hold.__enter__)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        hold, self._hold = self._hold, None
        assert hold is not None, "not entered"
        return await bridge.spawn(hold.__exit__, exc_type, exc, traceback)


class AsyncListening(AsyncIterator[Any]):
    """What `AsyncQueue.listen` returns: an async iterator, and an async context manager.

    A message is held until the next one is asked for. Leaving an `async for`
    loop releases it once the iterator is collected (the event loop closes it);
    `async with q.listen(...) as messages:` or `await messages.aclose()` at once.
    """

    def __init__(self, items: Listening) -> None:
        self._steps = _step(items)

    def __aiter__(self) -> AsyncListening:
        return self

    async def __anext__(self) -> Any:
        return await self._steps.__anext__()

    async def aclose(self) -> None:
        """Put the message in hand back and stop listening."""
        await self._steps.aclose()

    async def athrow(self, exc: BaseException) -> Any:
        """Fail the message in hand with `exc` (as `Listening.throw` does)."""
        return await self._steps.athrow(exc)

    async def __aenter__(self) -> AsyncListening:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _step(items: Listening) -> AsyncGenerator[Any, None]:
    # A native async generator: collected unfinished, the event loop closes it, which
    # closes the sync iterator and so puts the message in hand back.
    try:
        item = await bridge.spawn(next, items)
        while True:
            try:
                yield item
            except GeneratorExit:
                raise
            except BaseException as exc:
                item = await bridge.spawn(items.throw, exc)
            else:
                item = await bridge.spawn(next, items)
    finally:
        await bridge.spawn(items.close)
