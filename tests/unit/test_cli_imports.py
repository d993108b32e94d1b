"""
The ``lake`` command starts without the server's stack: a probe (`lake health`)
or a client command (`lake token`, `lake call`) imports neither the container nor
the database and Redis drivers, which cost about 1.2 s a start.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("asyncpg", "redis", "dependency_injector", "lake.container")


def test_the_cli_imports_no_driver_or_container_until_lake_runs():
    probe = (
        "import sys, lake.cli; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
