"""
The CSV rules of `lake points write`, checked whole before anything is sent.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from lake.console import CsvError, integral, read_points


def us(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp()) * 1_000_000


def test_header_comments_and_empty_lines_are_skipped():
    """A header, blank lines and # lines carry no points; rows keep their order."""
    stamps, values = read_points(
        [
            "timestamp,value",
            "",
            "# a comment",
            "2026-11-27T10:00:00Z,1.5",
            " 2026-11-27T11:00:00+01:00 , -2 ",
            "1764237600,0",
            "1764237600.000001,3e2",
        ],
        "p.csv",
    )
    assert stamps == [
        us("2026-11-27T10:00:00+00:00"),
        us("2026-11-27T10:00:00+00:00"),
        1764237600 * 1_000_000,
        1764237600 * 1_000_000 + 1,  # epoch decimals are exact to the microsecond
    ]
    assert values == [1.5, -2.0, 0.0, 300.0]


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        (["2026-11-27T10:00:00Z,1", "2026-11-27T10:00:01Z,abc"], "p.csv:2:2: value"),
        (["2026-11-27T10:00:00Z,nan"], "p.csv:1:2: value 'nan' is not a finite"),
        (["2026-11-27T10:00:00Z,inf"], "p.csv:1:2: value 'inf'"),
        (["2026-11-27T10:00:00Z,1_000"], "p.csv:1:2: value '1_000'"),
        (["ts,value", "2026-11-27T10:00:00,1"], "p.csv:2:1: timestamp"),
        (["ts,value", "yesterday,1"], "p.csv:2:1: timestamp 'yesterday' is neither"),
        (["2026-11-27T10:00:00Z"], "p.csv:1:2: expected 2 fields"),
        (["2026-11-27T10:00:00Z,1,2"], "p.csv:1:3: expected 2 fields"),
        (["x,1"], "p.csv:1:1: timestamp 'x'"),
        (["99999999999999999,1"], "p.csv:1:1: timestamp '99999999999999999' is out"),
        (["timestamp,value", "", "# none"], "p.csv:1:1: no points"),
        ([], "p.csv:1:1: no points"),
    ],
)
def test_a_bad_row_is_named_by_line_and_column(lines, error):
    """The first bad row is reported as FILE:LINE:COLUMN with what is wrong."""
    with pytest.raises(CsvError) as info:
        read_points(lines, "p.csv")
    assert str(info.value).startswith(error)


def test_line_numbers_count_skipped_lines():
    """The line named is the file's line, blank and comment lines included."""
    lines = ["timestamp,value", "", "# c", "2026-11-27T10:00:00Z,1", "oops,2"]
    with pytest.raises(CsvError, match=r"^p\.csv:5:1: "):
        read_points(lines, "p.csv")


def test_naive_timestamps_are_refused_with_the_fix():
    """A timestamp without a zone is ambiguous: the message says to add one."""
    with pytest.raises(CsvError, match=r"no time zone \(add Z or \+00:00\)"):
        read_points(["2026-11-27T10:00:00,1"], "p.csv")


def test_integral_turns_whole_floats_into_ints():
    """Counters held as doubles print as integers; fractions are kept."""
    assert integral({"a": 3.0, "b": [1.0, 2.5], "c": {"d": 0.0}, "e": "x"}) == {
        "a": 3,
        "b": [1, 2.5],
        "c": {"d": 0},
        "e": "x",
    }
    assert isinstance(integral(3.0), int)
