"""
`lake serve` checks its settings before anything starts: nothing embedded, no
files written, one line naming the key.
"""

from __future__ import annotations

import pytest

from tests.integration.test_cli import env_for, run


@pytest.mark.parametrize(
    ("name", "value", "line"),
    [
        (
            "LAKE_GRPC__ADDRESS",
            "127.0.0.1:99999",
            "Error: config error: invalid setting grpc.address in profile "
            "'development' (LAKE_GRPC__ADDRESS): '127.0.0.1:99999': port '99999' "
            "is not a number from 0 to 65535",
        ),
        (
            "LAKE_GRPC__ADDRESS",
            "nonsense",
            "Error: config error: invalid setting grpc.address in profile "
            "'development' (LAKE_GRPC__ADDRESS): 'nonsense' is not host:port",
        ),
        (
            "LAKE_POSTGRES__MAXSIZE",
            "3",
            "Error: config error: unknown setting LAKE_POSTGRES__MAXSIZE "
            "(postgres.maxsize); did you mean LAKE_POSTGRES__MAX_SIZE "
            "(postgres.max_size)?",
        ),
    ],
)
def test_serve_refuses_bad_settings_before_starting_anything(
    tmp_path, name, value, line
):
    """One line naming the key; no embedded server started, nothing written."""
    data = tmp_path / "data"
    env = env_for(LAKE_ENV="development", LAKE_DATA_DIR=str(data), **{name: value})
    result = run("serve", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [line]
    assert not data.exists()
