"""
Lake: the core of a multi-tenant data-lake service.
"""

from __future__ import annotations

import os

# Before gRPC is imported anywhere: gRPC core's fork support (on by default) runs
# a post-fork handler in every forked child, and a child that forks to exec as
# another user (the embedded servers' pg_ctl, run as root) can crash in it before
# it execs (grpc/grpc#43055: 61 of 300 such forks here while gRPC was busy). Lake
# never forks without exec, so it needs none of it; an operator may still set it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from lake.errors import LakeError

__all__ = ["LakeError", "__version__"]

__version__ = "0.1.0"
