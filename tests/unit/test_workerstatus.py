"""
Worker figures added up: counters summed, means averaged, shared figures kept.
"""

from __future__ import annotations

from lake.workerstatus import StatusBoard, merge_reports


def test_counters_sum_means_average_and_shared_figures_stay():
    """Two workers' reports merge into the service's."""
    a = {
        "state": "running",
        "events_pending": 7,
        "operations": {"Nearest": {"calls": 3, "mean_ms": 2.0, "failures": {"x": 1}}},
        "cache": {"hits": 10, "routes": {"Nearest": {"hit_ratio": 0.5}}},
    }
    b = {
        "state": "stopping",
        "events_pending": 7,
        "operations": {"Nearest": {"calls": 5, "mean_ms": 4.0, "failures": {"x": 2}}},
        "cache": {"hits": 1, "routes": {"Nearest": {"hit_ratio": 1.0}}},
    }
    merged = merge_reports([a, b])
    assert merged["state"] == "running"
    assert merged["events_pending"] == 7
    assert merged["operations"]["Nearest"] == {
        "calls": 8,
        "mean_ms": 3.0,
        "failures": {"x": 3},
    }
    assert merged["cache"] == {"hits": 11, "routes": {"Nearest": {"hit_ratio": 0.75}}}


def test_a_board_gathers_what_the_others_published(tmp_path):
    """Worker 1 published; worker 0 answers with both, and says who reported."""
    one = StatusBoard(directory=str(tmp_path), index=1, count=3)
    one.publish({"state": "running", "operations": {"W": {"calls": 2}}})
    zero = StatusBoard(directory=str(tmp_path), index=0, count=3)
    merged = zero.gather({"state": "running", "operations": {"W": {"calls": 1}}})
    assert merged["operations"]["W"]["calls"] == 3
    assert merged["workers"] == {"count": 3, "reporting": 2}
    alone = StatusBoard(directory="", index=0, count=1)
    assert "workers" not in alone.gather({"state": "running"})
