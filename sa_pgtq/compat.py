"""`QueueManager`: q4pg's constructor on top of `Queue`, for a one-import switch."""

from __future__ import annotations

from typing import Any

from .models import DEFAULT_TABLE
from .queue import Queue


class QueueManager(Queue):
    """A `Queue` built from q4pg's arguments.

    `dsn` is a libpq key=value string or a URL; `table_name` picks the queue
    table (created with sa_pgtq's schema by `create_table()`); q4pg's "jsonb"
    data type is sa_pgtq's "json" (always stored as jsonb).
    """

    def __init__(
        self,
        dsn: str,
        table_name: str = DEFAULT_TABLE,
        data_type: str = "json",
        data_length: int | None = None,
        excepted_times_to_ignore: int = 0,
        **options: Any,
    ) -> None:
        super().__init__(
            dsn,
            table_name=table_name,
            data_type="json" if data_type == "jsonb" else data_type,  # type: ignore[arg-type]
            data_length=data_length,
            excepted_times_to_ignore=excepted_times_to_ignore,
            **options,
        )
