"""RC4 stream cipher, as NTLM key exchange and sealing use it ([MS-NLMP] 3.4.3, 6), from
``cryptography`` (``hazmat.decrepit`` since 43, ``algorithms.ARC4`` before, with a
deprecation warning). Its context keeps the key stream between calls, which NTLM sealing
relies on: one RC4 handle per direction is used for every message of the session.
"""
from __future__ import annotations

import warnings

from cryptography.hazmat.primitives.ciphers import Cipher

try:  # cryptography >= 43
    from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4 as _ARC4
except ImportError:  # pragma: no cover - depends on the installed version
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cryptography.hazmat.primitives.ciphers.algorithms import ARC4 as _ARC4


class Rc4:
    """A stateful RC4 handle: successive ``update`` calls continue the key stream."""

    def __init__(self, key: bytes):
        if not key:
            raise ValueError("RC4 key must not be empty")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._ctx = Cipher(_ARC4(bytes(key)), mode=None).encryptor()

    def update(self, data: bytes) -> bytes:
        return self._ctx.update(bytes(data))


def rc4(key: bytes, data: bytes) -> bytes:
    """One-shot RC4 with a fresh key stream (e.g. EncryptedRandomSessionKey)."""
    return Rc4(key).update(data)
