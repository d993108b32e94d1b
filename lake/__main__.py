"""
``python -m lake`` runs the ``lake`` command.
"""

from __future__ import annotations

from lake.cli import main

main()
