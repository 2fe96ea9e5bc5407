"""Reward headers at rest: Fernet (AES-128-CBC + HMAC) with the key from ``RLFT_ENCRYPTION_KEY``."""

from __future__ import annotations

import json

from cryptography.fernet import Fernet, InvalidToken


class HeaderCipher:
    def __init__(self, key: str):
        self._fernet = Fernet(key.encode())

    def encrypt(self, headers: dict[str, str]) -> str | None:
        if not headers:
            return None
        return self._fernet.encrypt(json.dumps(headers).encode()).decode()

    def decrypt(self, token: str | None) -> dict[str, str]:
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
