"""
Signed paging cursors: opaque to callers, forged or altered ones are refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any

from lake.errors import ValidationError

__all__ = ["CursorSigner"]

_SIG_BYTES = 16
FORGED = "is not a cursor Lake issued"


class CursorSigner:
    """
    Encodes a position as ``base64(json) + HMAC`` and checks it on the way back.

    With no key, a random one is made per process: cursors then only work against
    the instance that issued them, so configure a shared key behind a balancer.
    """

    def __init__(self, key: str = "") -> None:
        self._key = key.encode() if key else secrets.token_bytes(32)

    def encode(self, position: dict[str, Any]) -> str:
        """
        Return a cursor for ``position``.
        """
        body = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
        sig = hmac.new(self._key, body, hashlib.sha256).digest()[:_SIG_BYTES]
        return base64.urlsafe_b64encode(sig + body).decode().rstrip("=")

    def decode(self, cursor: str) -> dict[str, Any]:
        """
        Return the position in ``cursor``.

        Raises:
            ValidationError: the cursor was not issued by this key or was altered.
        """
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (ValueError, TypeError):
            raise ValidationError(field="cursor", problem=FORGED) from None
        sig, body = raw[:_SIG_BYTES], raw[_SIG_BYTES:]
        expected = hmac.new(self._key, body, hashlib.sha256).digest()[:_SIG_BYTES]
        if len(sig) != _SIG_BYTES or not hmac.compare_digest(sig, expected):
            raise ValidationError(field="cursor", problem=FORGED)
        position = json.loads(body)
        if not isinstance(position, dict):
            raise ValidationError(field="cursor", problem=FORGED)
        return position
