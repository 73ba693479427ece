"""Fuzzed payloads and tags: they round-trip exactly, or are rejected with nothing written."""

from __future__ import annotations

import json
import math
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

import sa_pgtq
from sa_pgtq import errors, validation
from sa_pgtq.errors import describe_error
from sa_pgtq.validation import MAX_DEPTH

# JSON-ish values including the awkward parts: NaN/inf, NUL, lone surrogates, huge ints.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
payloads = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
tags = st.text(max_size=300)

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def jobs_in_table(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM sa_pgtq_jobs")).scalar_one())


def normalised(value: object) -> object:
    """What JSON can give back: tuples are lists, keys are strings, -0.0 may be 0."""
    if isinstance(value, dict):
        return {str(k): normalised(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalised(v) for v in value]
    return value


@FUZZ
@given(data=payloads, tag=tags)
def test_payloads_and_tags_round_trip_or_are_rejected(
    q: sa_pgtq.Queue, data: object, tag: str
) -> None:
    before = jobs_in_table(q.engine)
    try:
        job_id = q.enqueue(tag, data)
    except (errors.InvalidDataError, errors.InvalidTagError):
        assert jobs_in_table(q.engine) == before, "a rejected job must leave no row"
        return
    job = q.dequeue_item_immediate(tag)
    assert job is not None and job.id == job_id and job.tag == tag
    assert_same_json(job.data, normalised(data))


def assert_same_json(got: object, expected: object) -> None:
    if isinstance(expected, float):
        assert isinstance(got, (int, float)) and not isinstance(got, bool)
        assert math.isclose(got, expected, rel_tol=1e-15, abs_tol=0.0) or got == expected
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            assert_same_json(g, e)
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys()
        for key in expected:
            assert_same_json(got[key], expected[key])
    else:
        assert got == expected and type(got) is type(expected)


@FUZZ
@given(datas=st.lists(payloads, min_size=1, max_size=5), tag=tags)
def test_a_batch_is_stored_whole_or_not_at_all(
    q: sa_pgtq.Queue, datas: list[object], tag: str
) -> None:
    before = jobs_in_table(q.engine)
    try:
        ids = q.enqueue_many(tag, datas)
    except (errors.InvalidDataError, errors.InvalidTagError):
        assert jobs_in_table(q.engine) == before
        return
    assert len(ids) == len(datas)
    assert [q.dequeue_immediate(tag) is not None or d is None for d in datas] == [True] * len(datas)


@pytest.mark.parametrize("bad", [math.nan, -math.inf, {"k": [1, math.inf]}])
def test_non_standard_json_numbers_are_rejected(q: sa_pgtq.Queue, bad: object) -> None:
    with pytest.raises(errors.DataNotSerializableError):
        q.enqueue("t", bad)
    assert jobs_in_table(q.engine) == 0


@settings(max_examples=300, deadline=None)
@given(message=st.text())
def test_any_error_text_can_be_stored_as_last_error(message: str) -> None:
    described = describe_error(ValueError(message))
    described.encode("utf-8")  # no lone surrogate
    assert "\x00" not in described, "PostgreSQL's text cannot hold NUL"
    assert described.startswith("ValueError")


@settings(FUZZ, max_examples=60)
@given(
    shape=st.integers(1, MAX_DEPTH + 30).flatmap(
        lambda depth: st.lists(st.booleans(), min_size=depth, max_size=depth)
    ),
    leaf=st.text(alphabet='[]{}"\\,:x', max_size=300),  # brackets that are only text
)
def test_nesting_up_to_the_limit_round_trips_and_deeper_is_rejected(
    q: sa_pgtq.Queue, shape: list[bool], leaf: str
) -> None:
    data: object = leaf
    for as_list in shape:
        data = [data] if as_list else {leaf: data}
    if len(shape) > MAX_DEPTH:
        with pytest.raises(errors.DataTooDeepError):
            q.enqueue("t", data)
        assert jobs_in_table(q.engine) == 0
        return
    q.enqueue("t", data)
    assert q.dequeue_immediate("t") == data


json_keys = (
    st.integers(-3, 3)
    | st.integers(-3, 3).map(str)
    | st.sampled_from([True, False, None, 1.5, "true", "false", "null", "1.5"])
)


@settings(FUZZ, max_examples=100)
@given(keys=st.lists(json_keys, max_size=6))
def test_object_keys_stay_distinct_or_are_rejected(q: sa_pgtq.Queue, keys: list[object]) -> None:
    data = {key: n for n, key in enumerate(keys)}
    as_json = [json.dumps({key: 0}) for key in data]  # how the standard library names each key
    if len(set(as_json)) < len(as_json):
        with pytest.raises(errors.DataNotSerializableError):
            q.enqueue("t", data)
        assert jobs_in_table(q.engine) == 0
        return
    q.enqueue("t", data)
    assert q.dequeue_immediate("t") == json.loads(json.dumps(data))


@settings(max_examples=300, deadline=None)
@given(datas=st.lists(payloads, min_size=1, max_size=12), limit=st.integers(1, 120))
def test_a_split_batch_holds_every_payload_once_in_order(datas: list[object], limit: int) -> None:
    with mock.patch.object(validation, "BATCH_CHARS", limit):
        try:
            arrays = validation.encode_batch(datas, "json", None)
        except errors.InvalidDataError:
            return
    split = [json.loads(array) for array, _ in arrays]
    assert [data for array in split for data in array] == json.loads(json.dumps(datas))
    for (encoded, size), array in zip(arrays, split, strict=True):
        assert len(encoded) <= limit or len(array) == 1, "within the limit, unless alone"
        assert size == len(array)
