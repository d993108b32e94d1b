"""
``python -m bench`` runs the store benchmarks.
"""

from __future__ import annotations

from bench.run import main

main()
