"""
The Grafana dashboard under deploy/ asks only for series Lake serves.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

from lake.lag import LoopLag
from lake.metrics import (
    CacheSource,
    EventsSource,
    LoopLagSource,
    Source,
    process_source,
)
from lake.opmetrics import OperationMetrics, QuotaRejections
from lake.poolmetrics import PoolMetrics

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "lake.json"


def served_sample_names() -> set[str]:
    ops = OperationMetrics()
    ops.record("Query", "t", 0.001, None)
    quotas = QuotaRejections()
    quotas.rejected("read_per_s")
    cache = SimpleNamespace(
        stats=lambda: {
            "hits": 1,
            "misses": 1,
            "routes": {},
            "connections": {"in_use": 0, "available": 1, "max": 8},
        }
    )
    manager = SimpleNamespace(components=SimpleNamespace(cache=cache))
    events = EventsSource(manager)
    events._pending = 0
    sources: list[Source] = [
        ops,
        PoolMetrics(),
        quotas,
        CacheSource(manager),
        events,
        LoopLagSource(LoopLag()),
        process_source(),
    ]
    return {s.name for source in sources for f in source.collect() for s in f.samples}


def test_dashboard_is_json_and_queries_only_served_series():
    """Every metric a panel queries is one Lake exports."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    wanted = {n for e in exprs for n in re.findall(r"\b(?:lake|process)_[a-z_]+", e)}
    assert wanted <= served_sample_names()
