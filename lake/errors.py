"""
One error tree for every deliberate failure in Lake.

::

    LakeError                                   base of every deliberate failure
    ├─ ConfigError(LakeError, ValueError)       bad or missing settings; start-up only
    ├─ LifecycleError(LakeError)                used out of turn (before start, ...)
    ├─ ValidationError(LakeError, ValueError)   bad operation input; names the field
    │  └─ UndecodableRequestError               a request body that is not the message
    ├─ DeadlineExceededError(LakeError)         the caller's time ran out
    ├─ StoreError(LakeError)
    │  ├─ NotFoundError                         the named thing does not exist
    │  ├─ ConflictError                         the write contradicts what is stored
    │  ├─ AbortedError                          gave up waiting for a lock; not retried
    │  └─ UnsupportedError                      the server lacks a capability (pgvector)
    ├─ MeshError(LakeError)                     a peer answered with an error
    ├─ ClientError(LakeError)                   lake.client: a status with no class
    │  ├─ UnauthenticatedError                  no, unknown, expired or revoked token
    │  └─ PermissionDeniedError                 the token's scope is too small
    └─ TransientError(LakeError)                retry-safe; paired with a domain base
       ├─ ResourceExhaustedError(TransientError)   out of connections or quota
       │  └─ QuotaExceededError                  a tenant's quota; names it
       ├─ CircuitOpenError(TransientError)         a dependency's breaker is open
       ├─ UnavailableError(TransientError)         lake.client: the server said
       │                                           UNAVAILABLE (starting, stopping...)
       ├─ StoreUnavailableError(TransientError, StoreError)
       └─ MeshUnavailableError(TransientError, MeshError)

Stores, resources and the mesh translate driver errors at their boundary, so the manager
and the API only ever see ``LakeError``. Messages never carry SQL, driver names or
secrets. A ``LakeError`` may carry a ``detail`` for the operator's log line only (the
SQLSTATE of a refused statement, say): never SQL text, parameter values or secrets,
and never sent to a client.
"""

from __future__ import annotations

from typing import Self

__all__ = [
    "AbortedError",
    "CircuitOpenError",
    "ClientError",
    "ConfigError",
    "ConflictError",
    "DeadlineExceededError",
    "LakeError",
    "LifecycleError",
    "MeshError",
    "MeshUnavailableError",
    "NotFoundError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "ResourceExhaustedError",
    "StoreError",
    "StoreUnavailableError",
    "TransientError",
    "UnauthenticatedError",
    "UnavailableError",
    "UndecodableRequestError",
    "UnsupportedError",
    "ValidationError",
]


class LakeError(Exception):
    """
    Base of every deliberate failure raised by Lake.
    """

    # A safe note for the operator's log line (never the client's message).
    detail: str = ""

    def with_detail(self, detail: str) -> Self:
        """
        This error, carrying ``detail`` for the operator's log line.
        """
        self.detail = detail
        return self


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

    def renamed(self, field: str) -> ValidationError:
        """
        The same problem reported against ``field`` (a request's spelling of it).
        """
        return ValidationError(field, self.problem).with_detail(self.detail)


class UndecodableRequestError(ValidationError):
    """
    A request body that does not decode as its message; says nothing of the parser.
    """

    def __init__(self) -> None:
        super().__init__("request", "body could not be decoded")


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


class AbortedError(StoreError):
    """
    The database gave up waiting for a lock another transaction holds (an
    operator's ``lock_timeout``); the caller may try again later.
    """


class UnsupportedError(StoreError):
    """
    The database server lacks what the operation needs; retrying will not help.
    """


class MeshError(LakeError):
    """
    A peer service answered with an error; ``peer`` names it when known.
    """

    peer: str = ""


class TransientError(LakeError):
    """
    A failure that may pass: retrying the same operation is safe.

    ``retry_after_s``, when set, is how long the caller should wait before trying
    again; the API sends it as ``grpc-retry-pushback-ms``.
    """

    retry_after_s: float | None = None

    def after(self, seconds: float) -> Self:
        """
        This error, telling the caller to come back in ``seconds``.
        """
        self.retry_after_s = max(0.0, seconds)
        return self


class ResourceExhaustedError(TransientError):
    """
    A bounded resource (pool connections, a quota) has nothing left right now.
    """


class QuotaExceededError(ResourceExhaustedError):
    """
    A tenant used up one of its quotas: ``quota`` names it (``read_per_s``,
    ``max_vectors``), ``retry_after`` says in seconds when trying again may succeed
    (None when waiting will not help: a storage cap). Never retried by Lake.
    """

    def __init__(
        self, quota: str, tenant: str, retry_after: float | None = None
    ) -> None:
        self.quota = quota
        self.tenant = tenant
        self.retry_after = retry_after
        super().__init__(f"quota {quota} exceeded for tenant {tenant}")


class StoreUnavailableError(TransientError, StoreError):
    """
    The store's backing service cannot be reached or is not ready.
    """


class MeshUnavailableError(TransientError, MeshError):
    """
    A peer cannot be reached.
    """


class CircuitOpenError(TransientError):
    """
    A dependency's circuit breaker is open: the call was refused without trying it.

    Not retried inside Lake (the breaker just said the dependency is sick); the
    caller is told when to come back (``retry_after_s``).
    """

    def __init__(self, dependency: str, retry_after_s: float) -> None:
        self.dependency = dependency
        super().__init__(f"{dependency} is unavailable (circuit open)")
        self.after(retry_after_s)


class UnavailableError(TransientError):
    """
    The server answered UNAVAILABLE (raised by ``lake.client`` once its retry policy
    gave up): starting, stopping, or a dependency out of reach; safe to retry.
    """


class ClientError(LakeError):
    """
    A status ``lake.client`` has no class of its own for (INTERNAL, UNKNOWN,
    CANCELLED...); ``code`` is its gRPC name.
    """

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class UnauthenticatedError(ClientError):
    """
    The call carried no token, or one the server does not accept (unknown,
    expired, revoked).
    """

    def __init__(self, message: str) -> None:
        super().__init__("UNAUTHENTICATED", message)


class PermissionDeniedError(ClientError):
    """
    The token's scope does not allow the call (a read token writing, say).
    """

    def __init__(self, message: str) -> None:
        super().__init__("PERMISSION_DENIED", message)
