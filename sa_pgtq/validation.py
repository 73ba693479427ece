"""Checking user input and turning it into values PostgreSQL will store, or a clear error.

Everything here runs before any SQL is sent, which is what makes "bad input
writes nothing" hold: a batch is validated whole before its single INSERT.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

from .errors import (
    DataNotSerializableError,
    DataNotStorableError,
    DataTooDeepError,
    DataTooLongError,
    DataTypeError,
    InvalidBatchError,
    InvalidInputError,
    InvalidTagError,
)
from .models import MAX_TABLE_NAME_BYTES

DataType = Literal["json", "text"]

#: Tags and queue names travel in NOTIFY payloads (8000 bytes at most), so they are bounded.
MAX_NAME_LENGTH = 255
#: How deeply a payload may nest arrays and objects (a task's data counts its
#: {"args": [...]} wrapper). Decoding much deeper data raises RecursionError in every
#: consumer (json, the drivers), so it is refused at enqueue and, when another producer
#: wrote it with plain SQL, fails its own job instead of every consumer.
MAX_DEPTH = 200
#: The longest duration taken (a delay, lease, timeout or interval): a century. Longer
#: is surely a mistake, and would overflow Python's timers or PostgreSQL's timestamps.
MAX_SECONDS = 100 * 365.25 * 24 * 3600
#: The longest payload, as JSON text in UTF-8: PostgreSQL stores at most 2**28 - 1 bytes
#: in one jsonb value. A longer one is refused before anything is sent (building and
#: sending it only for the server to refuse took seconds and gigabytes).
MAX_DATA_BYTES = 255 * 2**20
#: The JSON text of one INSERT of a batch, at most. A jsonb array holds 2**28 - 1 bytes
#: and can take six times the room of its text (arrays of small numbers), so a larger
#: batch is split into several statements (in one transaction).
BATCH_CHARS = 32 * 2**20
_INT32 = 2**31 - 1
_INT64 = 2**63 - 1

# jsonb rejects the \u0000 escape; an escaped backslash before "u0000" is harmless.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
# One encoder for every payload: json.dumps with options builds a new one per call. It
# sorts keys, which jsonb reorders anyway: sorting is what fails on an object with keys
# of several types ({"1": a, 1: b}), which JSON might turn into one key.
_JSON = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
_JSON_UNSORTED = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))
# A JSON string (UTF-8), escapes included. For measuring nesting, objects count as
# arrays ({ as [) and only brackets and quotes matter.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(set(range(256)) - set(b'[]{}"'))


def check_name(value: object, what: str = "tag") -> str:
    """Validate a tag, queue name or handler name; return it unchanged."""
    if not isinstance(value, str):
        raise InvalidTagError(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise InvalidTagError(f"{what} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidTagError(f"{what} is longer than {MAX_NAME_LENGTH} characters")
    if "\x00" in value:
        raise InvalidTagError(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidTagError(f"{what} is not valid Unicode text: {exc.reason}") from None
    return value


def encode_data(data: object, data_type: DataType, data_length: int | None) -> str:
    """Serialise a payload to the JSON text stored in the `data` column."""
    _check_type(data, data_type)
    text = _to_json(data)
    # A character is 1 to 4 bytes in UTF-8: the bytes are counted only when it matters.
    if len(text) * 4 > MAX_DATA_BYTES and (
        len(text) > MAX_DATA_BYTES or len(text.encode("utf-8")) > MAX_DATA_BYTES
    ):
        raise DataTooLongError(
            f"data is more than {MAX_DATA_BYTES} bytes as JSON, "
            "the most PostgreSQL stores in one jsonb value"
        )
    check_depth(text)
    measured = len(data) if isinstance(data, str) and data_type == "text" else len(text)
    if data_length is not None and measured > data_length:
        raise DataTooLongError(f"data is {measured} characters long; data_length is {data_length}")
    return text


#: Payloads serialised as one JSON array for one INSERT, and how many it holds.
EncodedArray = tuple[str, int]


def encode_batch(
    datas: list[object], data_type: DataType, data_length: int | None
) -> list[EncodedArray]:
    """Serialise payloads to JSON arrays, one per INSERT; their elements, in order, the jobs."""
    whole = None if data_length is not None else _whole_batch(datas, data_type)
    if whole is not None:
        return [(whole, len(datas))]
    # Each payload on its own, measured against data_length and the size limits, then
    # grouped into arrays of at most BATCH_CHARS each (a larger payload goes alone).
    texts = [encode_data(data, data_type, data_length) for data in datas]
    arrays: list[EncodedArray] = []
    start, size = 0, 1  # the array so far: "["
    for end, text in enumerate(texts):
        size += len(text) + 1  # the payload, and a comma or the closing bracket
        if size > BATCH_CHARS and end > start:
            arrays.append((f"[{','.join(texts[start:end])}]", end - start))
            start, size = end, len(text) + 2
    arrays.append((f"[{','.join(texts[start:])}]", len(texts) - start))
    return arrays


def _whole_batch(datas: list[object], data_type: DataType) -> str | None:
    """The batch as one JSON array, if it fits one INSERT (the usual case)."""
    for data in datas:
        _check_type(data, data_type)
    # One call into the C encoder for the whole batch; the checks hold for every element.
    text = _to_json(datas)
    if len(text) > BATCH_CHARS:
        return None
    check_depth(text, MAX_DEPTH + 1)  # the batch's array is one level more
    return text


def decode_data(text: str) -> Any:
    """A stored payload (its JSON text) as Python values; DataTooDeepError past MAX_DEPTH."""
    check_depth(text)
    return json.loads(text)


def check_depth(text: str, limit: int = MAX_DEPTH) -> None:
    """Raise DataTooDeepError if the JSON `text` nests deeper than `limit` levels."""
    # Fewer brackets than the limit cannot nest deeper (those inside strings only add
    # to the count): the usual payload costs two scans in C and nothing more.
    if text.count("[") + text.count("{") <= limit:
        return
    raw = text.encode("utf-8", "ignore")
    if b'\\"' in raw:  # an escaped quote: find the strings the slow way
        raw = _JSON_STRING.sub(b"", raw)
    # Brackets and quotes are left; with no escaped quote, every quote starts or ends a
    # string, so every other piece between quotes is outside the strings.
    brackets = b"".join(raw.translate(_SQUARE, _NOT_STRUCTURE).split(b'"')[::2])
    # Each pass removes the innermost level (a wide but shallow batch takes two passes);
    # brackets left after `limit` passes nest deeper.
    for _ in range(limit):
        if not brackets:
            return
        brackets = brackets.replace(b"[]", b"")
    if brackets:
        raise _too_deep()


def _too_deep() -> DataTooDeepError:
    return DataTooDeepError(f"data nests arrays and objects more than {MAX_DEPTH} levels deep")


def _check_type(data: object, data_type: DataType) -> None:
    if data_type == "text" and not isinstance(data, str):
        raise DataTypeError(f"data_type='text' takes str data, got {type(data).__name__}")


def _to_json(data: object) -> str:
    """JSON text that PostgreSQL's jsonb will store, or a clear error."""
    try:
        text = _encode(data)
    except (TypeError, ValueError) as exc:
        raise DataNotSerializableError(f"data is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise _too_deep() from None
    try:
        if not text.isascii():  # ASCII, the usual case, holds no lone surrogate
            text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataNotStorableError(f"data is not valid Unicode text: {exc.reason}") from None
    if "\\u0000" in text and _JSON_NUL.search(text):
        raise DataNotStorableError("data contains a NUL character, which PostgreSQL cannot store")
    return text


def _encode(data: object) -> str:
    try:
        return _JSON.encode(data)
    except TypeError:
        # Keys of several types in one object (or a type JSON cannot take, which fails
        # again here): they must stay distinct once JSON has made them strings.
        text = _JSON_UNSORTED.encode(data)
        _check_distinct_keys(data)
        return text


def _check_distinct_keys(data: object) -> None:
    """TypeError if an object has keys that JSON turns into one ({"1": a, 1: b})."""
    pending = [data]  # JSON-serialisable, so free of cycles
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            if not all(isinstance(key, str) for key in value):
                names = [_JSON_UNSORTED.encode({key: 0}) for key in value]
                if len(set(names)) < len(names):
                    counts = Counter(names)
                    merged = [k for k, name in zip(value, names, strict=True) if counts[name] > 1]
                    raise TypeError(f"keys {merged!r} would be merged into one JSON key")
            pending.extend(value.values())
        elif isinstance(value, (list, tuple)):
            pending.extend(value)


def check_count(value: object, what: str) -> int:
    """A whole number of at least 1 (attempts, threads, batch sizes)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidInputError(f"{what} must be an int >= 1, got {value!r}")
    return value


def check_priority(priority: object) -> int:
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise InvalidInputError(f"priority must be an int, got {type(priority).__name__}")
    if not -_INT32 - 1 <= priority <= _INT32:
        raise InvalidInputError("priority must fit in a 32-bit integer")
    return priority


def check_schedule(run_at: object, delay: object) -> tuple[datetime | None, timedelta | None]:
    """Validate `run_at` / `delay`; at most one may be given."""
    if run_at is not None and delay is not None:
        raise InvalidInputError("give run_at or delay, not both")
    if run_at is not None:
        if not isinstance(run_at, datetime):
            raise InvalidInputError(f"run_at must be a datetime, got {type(run_at).__name__}")
        if run_at.tzinfo is None or run_at.utcoffset() is None:
            raise InvalidInputError(
                "run_at must be timezone-aware (e.g. datetime.now(timezone.utc))"
            )
    return run_at, None if delay is None else check_duration(delay, "delay")


def check_duration(value: object, what: str) -> timedelta:
    """A timedelta or seconds, finite and at most a century either way."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise InvalidInputError(
            f"{what} must be a timedelta or seconds, got {type(value).__name__}"
        )
    if not math.isfinite(seconds) or abs(seconds) > MAX_SECONDS:
        raise InvalidInputError(f"{what} must be finite and at most a century")
    return value if isinstance(value, timedelta) else timedelta(seconds=seconds)


def check_retention(retention: object) -> timedelta | None:
    """A queue's retention: a timedelta or seconds (positive, at most a century), or None."""
    if retention is None:
        return None
    kept_for = check_duration(retention, "retention")
    if kept_for <= timedelta(0):
        raise InvalidInputError("retention must be positive")
    return kept_for


def check_options(data_type: object, data_length: object, excepted_times_to_ignore: object) -> None:
    """Validate a queue's constructor options."""
    if data_type not in ("json", "text"):
        raise InvalidInputError(f"data_type must be 'json' or 'text', got {data_type!r}")
    if data_length is not None:
        check_non_negative(data_length, "data_length")
    check_non_negative(excepted_times_to_ignore, "excepted_times_to_ignore")


def check_non_negative(value: object, what: str) -> int:
    """A whole number of at least 0 (lengths, thresholds, retries)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInputError(f"{what} must be a non-negative int, got {value!r}")
    return value


def check_timeout(timeout: object, what: str = "timeout") -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidInputError(f"{what} must be a number of seconds or None")
    if not math.isfinite(timeout) or not 0 < timeout <= MAX_SECONDS:
        raise InvalidInputError(f"{what} must be a positive number of seconds, at most a century")
    return float(timeout)


def check_job_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"a job id must be an int, got {type(value).__name__}")
    if not -_INT64 - 1 <= value <= _INT64:
        raise InvalidInputError("a job id must fit in a 64-bit integer")
    return value


def check_batch(items: object, what: str) -> list[Any]:
    """A batch as a list. A str, bytes or mapping is one value, never a batch of its parts."""
    if isinstance(items, (str, bytes, bytearray, memoryview, Mapping)) or not isinstance(
        items, Iterable
    ):
        raise InvalidBatchError(
            f"{what} must be a list (or another iterable) of items, not {type(items).__name__}"
        )
    return list(items)


def check_table_name(value: object) -> str:
    name = check_name(value, "table_name")
    if len(name.encode("utf-8")) > MAX_TABLE_NAME_BYTES:
        raise InvalidInputError(
            f"table_name must be at most {MAX_TABLE_NAME_BYTES} bytes long, so that the names "
            "of its indexes fit PostgreSQL's 63-byte identifiers"
        )
    return name


def new_job_params(
    queue_name: str,
    kind: str,
    tag: object,
    run_at: object,
    delay: object,
    priority: object,
    unique_key: object = None,
    lock: object = None,
) -> dict[str, Any]:
    """Checked parameters shared by every INSERT of jobs (all checks before any write)."""
    checked_run_at, checked_delay = check_schedule(run_at, delay)
    return {
        "queue_name": queue_name,
        "kind": kind,
        "tag": check_name(tag),
        "priority": check_priority(priority),
        "run_at": checked_run_at,
        "delay": checked_delay,
        "unique_key": None if unique_key is None else check_name(unique_key, "unique_key"),
        "lock_key": None if lock is None else check_name(lock, "lock"),
        "meta": None,  # JSON text: set by tracing, when the producer is traced
    }


def check_unique_keys(keys: object, count: int) -> list[str | None] | None:
    """One unique key (or None) per job of a batch of `count`, or None for no keys at all."""
    if keys is None:
        return None
    checked = [
        None if key is None else check_name(key, "unique key")
        for key in check_batch(keys, "unique_keys")
    ]
    if len(checked) != count:
        raise InvalidInputError(
            f"unique_keys must give one key (or None) per job: {len(checked)} for {count} jobs"
        )
    return checked
