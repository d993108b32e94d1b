"""
One error tree for every deliberate failure in Lake.

::

    LakeError                                   base of every deliberate failure
    ├─ ConfigError(LakeError, ValueError)       bad or missing settings; start-up only
    ├─ LifecycleError(LakeError)                used out of turn (before start, ...)
    ├─ ValidationError(LakeError, ValueError)   bad operation input; names the field
    ├─ DeadlineExceededError(LakeError)         the caller's time ran out
    ├─ StoreError(LakeError)
    │  ├─ NotFoundError                         the named thing does not exist
    │  ├─ ConflictError                         the write contradicts what is stored
    │  └─ UnsupportedError                      the server lacks a capability (pgvector)
    ├─ MeshError(LakeError)                     a peer answered with an error
    └─ TransientError(LakeError)                retry-safe; paired with a domain base
       ├─ ResourceExhaustedError(TransientError)   out of connections or quota
       ├─ StoreUnavailableError(TransientError, StoreError)
       └─ MeshUnavailableError(TransientError, MeshError)

Stores, resources and the mesh translate driver errors at their boundary, so the manager
and the API only ever see ``LakeError``. Messages never carry SQL, driver names or
secrets.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConflictError",
    "DeadlineExceededError",
    "LakeError",
    "LifecycleError",
    "MeshError",
    "MeshUnavailableError",
    "NotFoundError",
    "ResourceExhaustedError",
    "StoreError",
    "StoreUnavailableError",
    "TransientError",
    "UnsupportedError",
    "ValidationError",
]


class LakeError(Exception):
    """
    Base of every deliberate failure raised by Lake.
    """


class ConfigError(LakeError, ValueError):
    """
    A setting is missing or invalid; raised at start-up only.
    """


class LifecycleError(LakeError):
    """
    The service manager was used in a state that does not allow it.
    """


class ValidationError(LakeError, ValueError):
    """
    An operation's input is invalid; ``field`` names the offending field.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class DeadlineExceededError(LakeError):
    """
    The caller's deadline passed before the operation finished; not retried.
    """


class StoreError(LakeError):
    """
    A store could not carry out an operation.
    """


class NotFoundError(StoreError):
    """
    The named collection, series or feature does not exist.
    """


class ConflictError(StoreError):
    """
    The write contradicts what is already stored.
    """


class UnsupportedError(StoreError):
    """
    The database server lacks what the operation needs; retrying will not help.
    """


class MeshError(LakeError):
    """
    A peer service answered with an error.
    """


class TransientError(LakeError):
    """
    A failure that may pass: retrying the same operation is safe.
    """


class ResourceExhaustedError(TransientError):
    """
    A bounded resource (pool connections, a quota) has nothing left right now.
    """


class StoreUnavailableError(TransientError, StoreError):
    """
    The store's backing service cannot be reached or is not ready.
    """


class MeshUnavailableError(TransientError, MeshError):
    """
    A peer cannot be reached.
    """
