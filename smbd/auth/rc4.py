"""RC4 stream cipher, as NTLM key exchange and sealing use it ([MS-NLMP] 3.4.3, 6).

``cryptography`` offers ARC4 (``hazmat.decrepit`` since 43, ``algorithms.ARC4`` before,
with a deprecation warning); when neither is importable a small pure-Python RC4 is used.
Both keep the key stream state between calls, which NTLM sealing relies on: one RC4
handle per direction is used for every message of the session.
"""
from __future__ import annotations

import warnings

try:  # cryptography >= 43
    from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4 as _ARC4
except ImportError:  # pragma: no cover - depends on the installed version
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from cryptography.hazmat.primitives.ciphers.algorithms import ARC4 as _ARC4
    except ImportError:
        _ARC4 = None

if _ARC4 is not None:
    from cryptography.hazmat.primitives.ciphers import Cipher


class _PureRc4:
    """Textbook RC4 key schedule and generator."""

    def __init__(self, key: bytes):
        s = list(range(256))
        j = 0
        for i in range(256):
            j = (j + s[i] + key[i % len(key)]) & 0xFF
            s[i], s[j] = s[j], s[i]
        self._s = s
        self._i = 0
        self._j = 0

    def update(self, data: bytes) -> bytes:
        s, i, j = self._s, self._i, self._j
        out = bytearray(len(data))
        for n, byte in enumerate(data):
            i = (i + 1) & 0xFF
            j = (j + s[i]) & 0xFF
            s[i], s[j] = s[j], s[i]
            out[n] = byte ^ s[(s[i] + s[j]) & 0xFF]
        self._i, self._j = i, j
        return bytes(out)


def _native(key: bytes):
    """An OpenSSL RC4 context, or None when unavailable for this key.

    cryptography accepts only some key sizes (40..256 bits in steps), and an OpenSSL 3
    without the legacy provider refuses RC4 altogether; NTLM keys are 16 bytes.
    """
    if _ARC4 is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Cipher(_ARC4(key), mode=None).encryptor()
    except Exception:  # unsupported key size or algorithm: use the pure-Python code
        return None


class Rc4:
    """A stateful RC4 handle: successive ``update`` calls continue the key stream."""

    def __init__(self, key: bytes):
        if not key:
            raise ValueError("RC4 key must not be empty")
        self._ctx = _native(bytes(key)) or _PureRc4(bytes(key))

    def update(self, data: bytes) -> bytes:
        return self._ctx.update(bytes(data))


def rc4(key: bytes, data: bytes) -> bytes:
    """One-shot RC4 with a fresh key stream (e.g. EncryptedRandomSessionKey)."""
    return Rc4(key).update(data)
