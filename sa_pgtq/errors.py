"""Exceptions raised by sa_pgtq.

Each bad-input error also derives from the matching builtin (`ValueError` or
`TypeError`), so callers may catch either the precise class or the builtin.
Bad input is always rejected before anything is written.
"""

from __future__ import annotations

import traceback


class SaPgtqError(Exception):
    """Base class of every error sa_pgtq raises on purpose."""


class InvalidInputError(SaPgtqError, ValueError):
    """An argument can never be stored (bad tag, queue name, schedule, ...)."""


class InvalidTagError(InvalidInputError):
    """A tag (or handler name) is empty, too long, or not storable text."""


class InvalidDataError(SaPgtqError):
    """Base of the payload errors."""


class DataNotSerializableError(InvalidDataError, TypeError):
    """The payload cannot be represented as standard JSON (objects, NaN, ...)."""


class DataTypeError(InvalidDataError, TypeError):
    """The payload has the wrong Python type for the queue's `data_type`."""


class DataTooLongError(InvalidDataError, ValueError):
    """The serialised payload is longer than the queue's `data_length`."""


class DataNotStorableError(InvalidDataError, ValueError):
    """The payload is valid JSON that PostgreSQL cannot store (NUL, lone surrogates)."""


class DataTooDeepError(InvalidDataError, ValueError):
    """The payload nests arrays and objects deeper than `validation.MAX_DEPTH` levels."""


class InvalidBatchError(InvalidInputError, TypeError):
    """A batch (`enqueue_many`, `push_many`, `requeue_failed`) is not a collection of items."""


class InvalidScheduleError(InvalidInputError, TypeError):
    """A periodic schedule (`q.periodic`) is malformed: cron, every, timezone or its handler."""


class InvalidSessionError(SaPgtqError, TypeError):
    """`session=` is neither a Session, a scoped_session registry nor a Connection."""


class DuplicateHandlerError(SaPgtqError, ValueError, RuntimeError):
    """Two handlers were registered under the same name on one queue.

    Also a RuntimeError, which is what pgtq raised: its users' code keeps working.
    """


class UnknownHandlerError(SaPgtqError, LookupError):
    """A task names a handler that this process has not registered."""


class NoWorkerContextError(SaPgtqError, RuntimeError):
    """`current_session()` / `current_job()` was called outside a running job."""


class TaskArgumentsError(SaPgtqError, TypeError):
    """Arguments pushed for a handler do not fit its signature."""


class WorkerLostError(SaPgtqError, RuntimeError):
    """A task's last allowed try never finished: its worker died or lost the lease."""


class LeaseLostError(SaPgtqError, RuntimeError):
    """A task finished after another worker had taken it over; its outcome was discarded."""


class TaskResultError(SaPgtqError, TypeError):
    """A handler returned what a queue with a retention cannot keep as JSON; the task fails."""


class JobFailedError(SaPgtqError, RuntimeError):
    """`result()` of a job that failed or was cancelled: `state` and `last_error` say how."""

    def __init__(self, message: str, *, job_id: int, state: str, last_error: str | None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.state = state
        self.last_error = last_error


class JobNotFoundError(SaPgtqError, LookupError):
    """`result()` of a job that is not in the queue (never was, or pruned after its retention)."""


class ResultsNotKeptError(SaPgtqError, RuntimeError):
    """`result()` on a queue without a retention: finished jobs, results included, are deleted."""


class ResultTimeoutError(SaPgtqError, TimeoutError):
    """`result(timeout=...)` passed before the job finished."""


class TaskTimeoutError(SaPgtqError, TimeoutError):
    """A task ran longer than its handler's `timeout`; the run counts as a failed attempt."""


class TaskAbortedError(SaPgtqError):
    """A task's abort was requested while it ran; it ends as `cancelled`, never retried."""


class DrainLimitError(SaPgtqError, RuntimeError):
    """`drain` ran its `limit` of tasks and more were still due: most likely a task that
    pushes itself again, or a chain of tasks that never ends."""


def exception_line(error: str | None) -> str:
    """The exception line of a traceback `describe_error` kept (its last non-empty line)."""
    lines = [line for line in (error or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def describe_error(exc: BaseException, limit: int = 20_000) -> str:
    """The traceback kept in `last_error`, bounded so a huge message cannot bloat a row.

    NUL and lone surrogates (what `os.fsdecode` makes of a file name that is not
    UTF-8) are written as backslash escapes: PostgreSQL's text cannot hold them,
    and a traceback that cannot be stored would replace the user's exception with
    the driver's and leave the failure uncounted.
    """
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if not text.isascii():  # ASCII (the usual case) holds neither
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = text.replace("\x00", "\\x00")
    return text if len(text) <= limit else text[: limit // 2] + "\n...\n" + text[-limit // 2 :]
