"""Reward headers at rest: Fernet (AES-128-CBC + HMAC) with the key from ``RLFT_ENCRYPTION_KEY``.

``fingerprint`` compares header values without keeping them: an HMAC-SHA256 under a key derived (HKDF)
from the same secret, so a stored fingerprint reveals nothing and cannot be checked against guesses
without the server's key. A new ``RLFT_ENCRYPTION_KEY`` gives new fingerprints.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_FINGERPRINT_INFO = b"rlft/reward-headers-fingerprint/v1"


class HeaderCipher:
    def __init__(self, key: str):
        self._fernet = Fernet(key.encode())
        # A key of its own: the Fernet keys are never used for anything but Fernet.
        self._fingerprint_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=_FINGERPRINT_INFO
        ).derive(base64.urlsafe_b64decode(key.encode()))

    def fingerprint(self, headers: dict[str, Any]) -> str:
        """A keyed digest of ``headers`` (names and values): equal for equal headers, opaque otherwise."""
        canonical = json.dumps(headers, sort_keys=True).encode()
        return hmac.new(self._fingerprint_key, canonical, hashlib.sha256).hexdigest()

    def encrypt(self, headers: dict[str, Any]) -> str | None:
        if not headers:
            return None
        return self._fernet.encrypt(json.dumps(headers).encode()).decode()

    def decrypt(self, token: str | None) -> dict[str, Any]:
        if not token:
            return {}
        try:
            return json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as e:
            # The message must not echo the token; it says what to check.
            raise RuntimeError(
                "stored reward headers cannot be decrypted: RLFT_ENCRYPTION_KEY differs from the key "
                "they were written with"
            ) from e
