"""How commands print: aligned tables and short ages for people, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from .. import monitor
from ..models import JobMixin

#: A job's fields as `--json` gives them, in this order (timestamps as ISO 8601).
JOB_FIELDS = (
    "id",
    "queue",
    "kind",
    "tag",
    "state",
    "priority",
    "attempts",
    "created_at",
    "run_at",
    "finished_at",
    "lease_expires_at",
    "locked_by",
    "abort_requested_at",
    "unique_key",
    "lock_key",
    "data",
    "result",
    "meta",
    "last_error",
)


def age(elapsed: timedelta | None) -> str:
    return "-" if elapsed is None else monitor.age(elapsed)


def relative(moment: datetime) -> str:
    """`3m12s ago`, or `in 3m12s` for a moment still ahead (a job's `run_at`)."""
    elapsed = datetime.now(timezone.utc) - moment
    return f"{age(elapsed)} ago" if elapsed >= timedelta(0) else f"in {age(-elapsed)}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    """Columns aligned under their headers; the `numeric` ones (by index) to the right."""
    widths = [max([len(h), *(len(row[n]) for row in rows)]) for n, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if n in numeric else cell.ljust(width)
            for n, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def job_json(job: JobMixin) -> dict[str, Any]:
    return {field: getattr(job, field) for field in JOB_FIELDS}


def dumps(value: Any) -> str:
    """JSON for scripts: timestamps in ISO 8601, durations in seconds."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=_plain)


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    raise TypeError(f"{type(value).__name__} is not JSON")
