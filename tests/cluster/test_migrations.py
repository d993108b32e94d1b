"""
Three instances started together on an empty database migrate it once.
"""

from __future__ import annotations

import pytest

from lake.stores.migrate import load_migrations

pytestmark = pytest.mark.asyncio(loop_scope="package")


async def test_three_instances_starting_together_migrate_once(cluster):
    """All three queued on the migration lock at once (the fixture saw them
    wait); one applied every version, the others found nothing left: each
    version is recorded once and logged as applied by exactly one instance."""
    rows = await cluster.fetch(
        "SELECT version, count(*) AS n FROM lake_migrations GROUP BY version"
    )
    versions = [m.version for m in load_migrations()]
    assert sorted(r["version"] for r in rows) == versions
    assert {r["n"] for r in rows} == {1}
    applied = {
        instance.index: [
            e["version"]
            for e in instance.events(start=1)
            if e.get("event") == "migration_applied"
        ]
        for instance in cluster.instances
    }
    appliers = [index for index, done in applied.items() if done]
    assert len(appliers) == 1, applied
    assert applied[appliers[0]] == versions
    for instance in cluster.instances:
        started = [
            e for e in instance.events(start=1) if e.get("event") == "lake_started"
        ]
        assert len(started) == 1, instance.log_text(1)
