"""
The committed generated code matches the protos.
"""

from __future__ import annotations

from pathlib import Path

from lake.api.codegen import ROOT, generate


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    """Regenerating from proto/ reproduces every committed file byte for byte."""
    fresh = generate(tmp_path)
    assert fresh, "no protos found"
    for path in fresh:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is not committed"
        assert path.read_bytes() == committed.read_bytes(), (
            f"{committed.relative_to(ROOT)} is stale: run python -m lake.api.codegen"
        )
