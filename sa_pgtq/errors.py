"""Exceptions raised by sa_pgtq.

Each bad-input error also derives from the matching builtin (`ValueError` or
`TypeError`), so callers may catch either the precise class or the builtin.
Bad input is always rejected before anything is written.
"""

from __future__ import annotations


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


class DuplicateHandlerError(SaPgtqError, ValueError):
    """Two handlers were registered under the same name on one queue."""


class UnknownHandlerError(SaPgtqError, LookupError):
    """A task names a handler that this process has not registered."""


class NoWorkerContextError(SaPgtqError, RuntimeError):
    """`current_session()` / `current_job()` was called outside a running job."""


class TaskArgumentsError(SaPgtqError, TypeError):
    """Arguments pushed for a handler do not fit its signature."""


class WorkerLostError(SaPgtqError, RuntimeError):
    """A task's last allowed try never finished: its worker died or lost the lease."""
