"""
Lake: the core of a multi-tenant data-lake service.
"""

from __future__ import annotations

from lake.errors import LakeError

__all__ = ["LakeError", "__version__"]

__version__ = "0.1.0"
