"""sa_pgtq: a PostgreSQL task queue that lives inside your SQLAlchemy application."""

from . import errors, schema
from .compat import QueueManager
from .models import Job, JobMixin
from .queue import Queue

__all__ = ["Job", "JobMixin", "Queue", "QueueManager", "errors", "schema"]
