"""A queue's place in the database, and where each gateway call runs.

`Backend` ties a queue name to its table's statements and its database binding.
`run` and `run_atomic` execute one `gateway` function in the caller's
transaction when there is one (never committing it), else in one of the
queue's own. The message layer, the task layer and the worker all go through
here, so "whose transaction" is decided in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection

from . import gateway
from .binding import Binding, join
from .statements import Statements
from .validation import EncodedArray

P = ParamSpec("P")
R = TypeVar("R")

Operation = Callable[Concatenate[Connection, Statements, P], R]


class Backend:
    def __init__(
        self,
        binding: Binding,
        statements: Statements,
        queue_name: str,
        retention: timedelta | None = None,
    ) -> None:
        self.binding = binding
        self.statements = statements
        self.queue_name = queue_name
        #: How long finished jobs are kept (None: deleted as they finish).
        self.retention = retention

    @property
    def keeps_finished(self) -> bool:
        """Whether jobs that end are kept (succeeded, cancelled) rather than deleted."""
        return self.retention is not None

    @property
    def table_name(self) -> str:
        return str(self.statements.table.name)

    # The hot path of every enqueue: it opens our own connection directly rather
    # than through `connection()`, one generator less.
    def run(
        self, caller: object, operation: Operation[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """An operation of one statement: in the caller's transaction, else in autocommit."""
        if caller is not None:
            return operation(self._joined(caller), self.statements, *args, **kwargs)
        with self.binding.autocommit() as own:
            return operation(own, self.statements, *args, **kwargs)

    def run_atomic(
        self, caller: object, operation: Operation[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """An operation of several statements: in the caller's transaction, else in our own."""
        with self.connection(caller, atomic=True) as conn:
            return operation(conn, self.statements, *args, **kwargs)

    def insert_jobs(
        self,
        caller: object,
        params: dict[str, Any],
        arrays: list[EncodedArray],
        unique_keys: list[str | None] | None = None,
    ) -> list[int]:
        """Jobs from encoded JSON arrays: one statement, or one per array all in one transaction."""
        run = self.run if len(arrays) == 1 else self.run_atomic
        return run(caller, gateway.insert_jobs, params, arrays, unique_keys)

    @contextmanager
    def connection(self, caller: object, *, atomic: bool) -> Iterator[Connection]:
        """The caller's connection (flushed, never committed here), or one of our own.

        Our own is committed at the end; with `atomic=False` it runs in autocommit,
        for exactly one statement.
        """
        if caller is not None:
            yield self._joined(caller)
            return
        with self.binding.transaction() if atomic else self.binding.autocommit() as own:
            yield own

    def _joined(self, caller: object) -> Connection:
        return join(caller, self.statements.model).connection
