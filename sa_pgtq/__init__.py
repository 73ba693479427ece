"""sa_pgtq: a PostgreSQL task queue that lives inside your SQLAlchemy application."""

from . import errors, pgtq, q4pg, schema, worker
from .context import current_job, current_session, current_task
from .handlers import Handler
from .models import Job, JobMixin
from .q4pg import QueueManager
from .queue import Queue
from .tasks import Task
from .worker import Worker

__all__ = [
    "Handler",
    "Job",
    "JobMixin",
    "Queue",
    "QueueManager",
    "Task",
    "Worker",
    "current_job",
    "current_session",
    "current_task",
    "errors",
    "pgtq",
    "q4pg",
    "schema",
    "worker",
]
