"""
Logging: readable or JSON lines, operation context, and no secret ever printed.
"""

from __future__ import annotations

import io
import json
import logging

import structlog

from lake.logs import configure_logging, operation_context, register_secrets


def render(fmt: str, emit) -> str:
    stream = io.StringIO()
    configure_logging(fmt, "DEBUG", stream=stream)
    emit(structlog.get_logger("test"))
    return stream.getvalue()


def test_json_lines_carry_operation_context():
    """Each JSON line carries the bound tenant, operation and request id."""
    with operation_context(tenant="t1", operation="SearchVectors", request_id="r-1"):
        out = render("json", lambda log: log.info("searched", k=3))
    line = json.loads(out.strip().splitlines()[-1])
    assert line["event"] == "searched"
    assert line["tenant"] == "t1"
    assert line["operation"] == "SearchVectors"
    assert line["request_id"] == "r-1"
    assert line["level"] == "info"


def test_secret_keys_and_dsn_passwords_are_masked():
    """Password-like keys and DSN credentials never reach the output."""
    out = render(
        "json",
        lambda log: log.info(
            "connecting",
            dsn="postgresql://lake:hunter2-dsn@db:5432/lake",
            password="hunter2-key",
            nested={"api_token": "hunter2-token"},
        ),
    )
    assert "hunter2" not in out
    assert "postgresql://lake:***@db:5432/lake" in out


def test_registered_secret_is_masked_inside_exception_text():
    """A known secret inside an exception message and traceback is masked."""
    register_secrets(["Sup3r-Secret-PW"])

    def fail() -> None:
        msg = "login failed with password Sup3r-Secret-PW"
        raise RuntimeError(msg)

    def emit(log):
        try:
            fail()
        except RuntimeError:
            log.exception("login_failed")

    for fmt in ("json", "console"):
        out = render(fmt, emit)
        assert "login_failed" in out
        assert "Sup3r-Secret-PW" not in out


def test_tracebacks_show_no_local_variables():
    """Exception rendering leaves local variables out."""

    def emit(log):
        local_secret = "a-local-value-xyz"  # noqa: F841 -- must not be rendered
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.exception("boom")

    out = render("json", emit)
    assert "ZeroDivisionError" in out
    assert "a-local-value-xyz" not in out


def test_stdlib_log_records_pass_the_same_redaction():
    """Libraries logging through stdlib logging are redacted too."""
    register_secrets(["lib-secret-123"])
    stream = io.StringIO()
    configure_logging("console", "INFO", stream=stream)
    logging.getLogger("somelib").warning("dsn=postgresql://u:lib-secret-123@h/db")
    assert "lib-secret-123" not in stream.getvalue()
    assert "postgresql://u:***@h/db" in stream.getvalue()
