"""sa_pgtq: a PostgreSQL task queue that lives inside your SQLAlchemy application."""

from . import errors, pgtq, q4pg, schema, worker
from .aio import AsyncHandler, AsyncQueue, AsyncTask, AsyncWorker
from .context import (
    abort_requested,
    current_async_session,
    current_job,
    current_session,
    current_task,
)
from .handlers import Handler
from .models import Job, JobMixin
from .q4pg import QueueManager
from .queue import Queue
from .tasks import Task
from .worker import Worker

__all__ = [
    "AsyncHandler",
    "AsyncQueue",
    "AsyncTask",
    "AsyncWorker",
    "Handler",
    "Job",
    "JobMixin",
    "Queue",
    "QueueManager",
    "Task",
    "Worker",
    "abort_requested",
    "current_async_session",
    "current_job",
    "current_session",
    "current_task",
    "errors",
    "pgtq",
    "q4pg",
    "schema",
    "worker",
]
