"""The asyncio API: `AsyncQueue` and `AsyncWorker`, running the sync code through greenlets."""

from .handlers import AsyncHandler, AsyncPush, AsyncTask
from .queue import AsyncQueue
from .worker import AsyncWorker

__all__ = ["AsyncHandler", "AsyncPush", "AsyncQueue", "AsyncTask", "AsyncWorker"]
