"""Session key derivation for SMB 2.x and 3.x.

- :func:`kdf`: NIST SP800-108 KDF in counter mode with HMAC-SHA256 as PRF, as
  [MS-SMB2] 3.1.4.2 uses it (r = 32, a single 0x00 separator, L in bits).
- :class:`PreauthHash`: the SMB 3.1.1 pre-authentication integrity hash chain,
  [MS-SMB2] 3.3.5.4 / 3.3.5.5 (SHA-512 over the previous value and each message).
- :func:`derive_session_keys`: the per-session keys of [MS-SMB2] 3.3.5.5.3.
"""
from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field

from .constants import (
    AES_256_CIPHERS,
    DIALECT_SMB_3_0,
    DIALECT_SMB_3_1_1,
    KNOWN_CIPHERS,
    KNOWN_DIALECTS,
)

_U32_BE = struct.Struct(">I")

# [MS-SMB2] 3.3.5.5.3 labels and contexts; each includes its terminating NUL.
_LABEL_30_SIGNING = b"SMB2AESCMAC\x00"
_CONTEXT_30_SIGNING = b"SmbSign\x00"
_LABEL_30_CIPHER = b"SMB2AESCCM\x00"
_CONTEXT_30_SERVER_IN = b"ServerIn \x00"  # client -> server traffic
_CONTEXT_30_SERVER_OUT = b"ServerOut\x00"  # server -> client traffic
_LABEL_30_APPLICATION = b"SMB2APP\x00"
_CONTEXT_30_APPLICATION = b"SmbRpc\x00"

_LABEL_311_SIGNING = b"SMBSigningKey\x00"
_LABEL_311_C2S_CIPHER = b"SMBC2SCipherKey\x00"
_LABEL_311_S2C_CIPHER = b"SMBS2CCipherKey\x00"
_LABEL_311_APPLICATION = b"SMBAppKey\x00"

_PREAUTH_HASH_SIZE = 64


def kdf(key: bytes, label: bytes, context: bytes, length: int = 16) -> bytes:
    """SP800-108 counter-mode KDF with HMAC-SHA256 ([MS-SMB2] 3.1.4.2).

    ``length`` is in bytes (16 or 32 in SMB: L = 128 or 256 bits).  Each PRF block is
    HMAC-SHA256(key, i || label || 0x00 || context || L) with i and L as 32-bit
    big-endian integers.
    """
    if length <= 0:
        raise ValueError("KDF output length must be positive")
    fixed_input = label + b"\x00" + context + _U32_BE.pack(length * 8)
    output = bytearray()
    counter = 1
    while len(output) < length:
        output += hmac.new(key, _U32_BE.pack(counter) + fixed_input, hashlib.sha256).digest()
        counter += 1
    return bytes(output[:length])


class PreauthHash:
    """SMB 3.1.1 preauth integrity hash value ([MS-SMB2] 3.2.5.2, 3.3.5.4, 3.3.5.5).

    Starts as 64 zero bytes; each message (NEGOTIATE request/response, then each
    SESSION_SETUP request and every non-final response) is folded in as
    H = SHA-512(H || message).  The connection keeps one chain; each session in setup
    continues from a copy of the connection's value after NEGOTIATE.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes = b"\x00" * _PREAUTH_HASH_SIZE):
        if len(value) != _PREAUTH_HASH_SIZE:
            raise ValueError("preauth hash value must be 64 bytes")
        self._value = bytes(value)

    def update(self, message: bytes | bytearray | memoryview) -> None:
        digest = hashlib.sha512(self._value)
        digest.update(message)
        self._value = digest.digest()

    @property
    def value(self) -> bytes:
        return self._value

    def copy(self) -> "PreauthHash":
        return PreauthHash(self._value)

    def __repr__(self) -> str:
        return f"PreauthHash({self._value[:8].hex()}...)"


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Keys of one authenticated session ([MS-SMB2] 3.3.1.8 Session.*Key).

    ``encrypting`` protects server -> client messages (Session.EncryptionKey on the
    server, "ServerOut" / SMBS2CCipherKey); ``decrypting`` opens client -> server
    messages (Session.DecryptionKey, "ServerIn " / SMBC2SCipherKey).  Both are b"" for
    SMB 2.x, which has no encryption.
    """

    signing: bytes = field(repr=False)
    encrypting: bytes = field(repr=False)
    decrypting: bytes = field(repr=False)
    application: bytes = field(repr=False)


def _session_key_16(session_key: bytes) -> bytes:
    """Session.SessionKey: the first 16 bytes, right-padded with zeros ([MS-SMB2] 3.3.5.5.3)."""
    return bytes(session_key[:16]).ljust(16, b"\x00")


def derive_session_keys(
    dialect: int, session_key: bytes, preauth_hash: bytes | None, cipher: int | None
) -> SessionKeys:
    """Derive a session's signing, encryption and application keys ([MS-SMB2] 3.3.5.5.3).

    ``session_key`` is the authentication's full session key (NTLM's ExportedSessionKey,
    16 bytes; Kerberos' may be 32).  ``preauth_hash`` is the session's preauth integrity
    hash value and is required for 3.1.1.  ``cipher`` is Connection.CipherId (3.1.1) or
    None; 3.0/3.0.2 always use AES-128-CCM.  For AES-256 ciphers the cipher keys are 32
    bytes and derived from the full session key; every other key uses the first 16 bytes.
    """
    if dialect not in KNOWN_DIALECTS:
        raise ValueError(f"unknown SMB dialect {dialect:#06x}")
    if cipher is not None and cipher not in KNOWN_CIPHERS:
        raise ValueError(f"unknown SMB cipher id {cipher:#06x}")
    short_key = _session_key_16(session_key)

    if dialect < DIALECT_SMB_3_0:
        # SMB 2.x signs with the session key itself and cannot encrypt.
        return SessionKeys(signing=short_key, encrypting=b"", decrypting=b"", application=short_key)

    if dialect < DIALECT_SMB_3_1_1:
        return SessionKeys(
            signing=kdf(short_key, _LABEL_30_SIGNING, _CONTEXT_30_SIGNING),
            encrypting=kdf(short_key, _LABEL_30_CIPHER, _CONTEXT_30_SERVER_OUT),
            decrypting=kdf(short_key, _LABEL_30_CIPHER, _CONTEXT_30_SERVER_IN),
            application=kdf(short_key, _LABEL_30_APPLICATION, _CONTEXT_30_APPLICATION),
        )

    if preauth_hash is None or len(preauth_hash) != _PREAUTH_HASH_SIZE:
        raise ValueError("SMB 3.1.1 key derivation needs the 64-byte preauth integrity hash")
    if cipher in AES_256_CIPHERS:
        cipher_key_input, cipher_key_length = bytes(session_key), 32
    else:
        cipher_key_input, cipher_key_length = short_key, 16
    return SessionKeys(
        signing=kdf(short_key, _LABEL_311_SIGNING, preauth_hash),
        encrypting=kdf(cipher_key_input, _LABEL_311_S2C_CIPHER, preauth_hash, cipher_key_length),
        decrypting=kdf(cipher_key_input, _LABEL_311_C2S_CIPHER, preauth_hash, cipher_key_length),
        application=kdf(short_key, _LABEL_311_APPLICATION, preauth_hash),
    )
