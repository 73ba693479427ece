"""sa_pgtq: a PostgreSQL task queue that lives inside your SQLAlchemy application."""

from . import errors, schema, worker
from .compat import QueueManager
from .context import current_job, current_session, current_task
from .models import Job, JobMixin
from .queue import Queue
from .tasks import Handler, Task
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
    "schema",
    "worker",
]
