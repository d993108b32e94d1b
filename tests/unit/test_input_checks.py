"""
The input checks added so every input has an answer: caps, subnormal numbers,
request field names, and the SQLSTATE a refused statement leaves in the log.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import asyncpg
import grpc
import pytest
from structlog.testing import capture_logs

from lake.api.errors import status_of
from lake.api.fields import RENAMES, request_field
from lake.config import load_settings
from lake.errors import ConfigError, StoreError, ValidationError
from lake.operations import (
    Feature,
    FeaturesNearby,
    Limits,
    Point,
    UpsertFeatures,
    WritePoints,
)
from lake.stores.database import translate_pg_error
from lake.validation import check_json, check_name, check_tags, check_tenant
from tests.strategies import lake_methods

LIMITS = Limits()
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def nested(depth: int) -> dict[str, object]:
    value: object = 1
    for _ in range(depth):
        value = {"d": value}
    return {"top": value}


@pytest.mark.parametrize(
    ("tags", "problem"),
    [
        ({f"t{i}": "v" for i in range(17)}, "more than 16 tags"),
        ({f"t{i}": "\U0001f600" * 20 for i in range(16)}, "more than 1024 bytes"),
        ({"host": "x" * 257}, "must be a short string"),
    ],
)
def test_tags_over_the_caps_are_refused(tags, problem):
    """Too many tags, or too many bytes of them (UTF-8), never reach the btree."""
    with pytest.raises(ValidationError, match=problem):
        check_tags(tags, LIMITS)


def test_tags_at_the_caps_pass():
    """16 tags within 1,024 bytes of names and values are accepted."""
    check_tags({f"tag{i:02}": "v" * 58 for i in range(16)}, LIMITS)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({f"k{i}": i for i in range(257)}, "more than 256 keys"),
        (
            {"a": [{f"k{i}": 1 for i in range(200)}, {f"j{i}": 1 for i in range(60)}]},
            "keys",
        ),
        (nested(8), "nests objects or lists too deeply"),
        ({"a": [[[[[[[[1]]]]]]]]}, "nests objects or lists too deeply"),
        ({"a": float("nan")}, "finite numbers"),
        ({"a": {"b": [1, float("-inf")]}}, "finite numbers"),
    ],
)
def test_json_objects_over_the_caps_are_refused(value, problem):
    """Keys at every level count; nesting is bounded; numbers must be finite."""
    with pytest.raises(ValidationError, match=problem) as info:
        check_json(value, "items[2].metadata", LIMITS)
    assert info.value.field == "items[2].metadata"


def test_json_within_the_caps_passes():
    """Seven levels of nesting and 256 keys are accepted."""
    check_json(nested(6), "where", LIMITS)
    check_json({f"k{i}": i for i in range(256)}, "where", LIMITS)


@pytest.mark.parametrize(
    ("operation", "field"),
    [
        (UpsertFeatures("t1", [Feature("a", 1.0, 5e-324)]), "features[0].lat"),
        (FeaturesNearby("t1", -1e-310, 0.0, 10.0), "lon"),
        (FeaturesNearby("t1", 0.0, 0.0, 5e-324), "radius_m"),
    ],
)
def test_subnormal_numbers_are_refused_where_the_database_would_underflow(
    operation, field
):
    """5e-324 as a coordinate or radius names its field instead of reaching SQL."""
    with pytest.raises(ValidationError, match="subnormal") as info:
        operation.validate(LIMITS)
    assert info.value.field == field


def test_zero_and_negative_zero_coordinates_pass():
    """0.0 and -0.0 are ordinary coordinates."""
    FeaturesNearby("t1", -0.0, 0.0, 10.0).validate(LIMITS)


def test_the_python_api_keeps_model_names():
    """Operations name model fields (points[0].value); only the API renames them."""
    with pytest.raises(ValidationError) as info:
        WritePoints("t1", "cpu", [Point(T0, float("nan"))]).validate(LIMITS)
    assert info.value.field == "points[0].value"
    renamed = request_field("TimeSeriesServicer.Write", info.value)
    assert (renamed.field, renamed.problem) == ("values[0]", info.value.problem)


def test_every_rename_targets_a_field_of_its_request():
    """Each rule in the table turns into a field the request message has."""
    methods = {
        f"{m.containing_service.name}Servicer.{m.name}": m for m in lake_methods()
    }
    for method, rules in RENAMES.items():
        fields = methods[method].input_type.fields_by_name
        for pattern, _ in rules:
            sample = pattern.pattern[1:-1].replace("(\\d+)", "3").replace("\\", "")
            renamed = request_field(method, ValidationError(sample, "x")).field
            assert renamed != sample, (method, sample)
            # A stream's errors name the message first: messages[3].values[3].
            renamed = re.sub(r"^messages\[\d+\]\.", "", renamed)
            assert re.split(r"[\[.]", renamed)[0] in fields, (method, renamed)


def test_an_unlisted_field_keeps_its_name():
    """A field already spelt as the request spells it passes through unchanged."""
    error = ValidationError("k", "must lie in [1, 1000]")
    assert request_field("VectorsServicer.Search", error) is error


def test_a_refused_statement_carries_its_sqlstate_to_the_log_only():
    """The operator's log line names SQLSTATE and error class; the client gets an id."""
    exc = asyncpg.exceptions.DiskFullError("could not extend file: SELECT secret")
    error = translate_pg_error(exc)
    assert isinstance(error, StoreError)
    assert error.detail == "sqlstate 53100 (disk_full)"
    with capture_logs() as logs:
        code, message = status_of(error, "SpatialServicer.Upsert")
    assert code is grpc.StatusCode.INTERNAL
    assert "53100" not in message
    assert "DiskFull" not in message
    line = next(e for e in logs if e["event"] == "rpc_failed")
    assert line["detail"] == "sqlstate 53100 (disk_full)"
    assert line["error_id"] in message
    assert "SELECT" not in str(line)


def test_a_program_limit_is_invalid_argument():
    """SQLSTATE class 54 (an index row too large) is the request's size: refused."""
    exc = asyncpg.exceptions.ProgramLimitExceededError("index row size 5496 exceeds")
    error = translate_pg_error(exc)
    assert isinstance(error, ValidationError)
    assert error.detail.startswith("sqlstate 54000 (")
    assert "5496" not in str(error)


def test_a_lock_timeout_is_aborted_not_internal():
    """SQLSTATE 55P03 (an operator's lock_timeout ran out) is ABORTED and not
    retried; it used to be INTERNAL ("database error")."""
    from lake.errors import AbortedError
    from lake.resilience import is_transient

    exc = asyncpg.exceptions.LockNotAvailableError("canceling statement: lock")
    error = translate_pg_error(exc)
    assert isinstance(error, AbortedError)
    assert error.detail == "sqlstate 55P03 (lock_not_available)"
    assert status_of(error)[0] is grpc.StatusCode.ABORTED
    assert not is_transient(error)


def test_a_tag_cap_past_the_btree_row_is_a_config_error(monkeypatch):
    """limits.max_tags_bytes above 2,048 would let PostgreSQL refuse rows: refused."""
    monkeypatch.setenv("LAKE_LIMITS__MAX_TAGS_BYTES", "5000")
    with pytest.raises(ConfigError, match="max_tags_bytes"):
        load_settings("testing")


def test_an_overflowing_number_is_invalid_argument():
    """SQLSTATE 22003 (a sum beyond float8) is INVALID_ARGUMENT, its state logged."""
    exc = asyncpg.exceptions.NumericValueOutOfRangeError("value out of range")
    error = translate_pg_error(exc)
    assert isinstance(error, ValidationError)
    assert str(error) == "request: a number overflows what the database holds"
    assert error.detail == "sqlstate 22003 (numeric_value_out_of_range)"


@pytest.mark.parametrize("tenant", ["acme\n", "acme\r\n"])
def test_a_tenant_or_name_with_a_trailing_newline_is_refused(tenant):
    """'$' would accept one trailing newline; names are matched whole."""
    with pytest.raises(ValidationError):
        check_tenant(tenant)
    with pytest.raises(ValidationError):
        check_name(tenant, "metric")
