"""SMB2 message signing and verification ([MS-SMB2] 3.1.4.1, 3.1.5.1).

The signature covers the whole message (header and body, up to the next compound
element) with the header's Signature field (offset 48, 16 bytes) taken as zero.  The
algorithm depends on the dialect:

- 2.0.2 / 2.1: HMAC-SHA256 with the session key, truncated to 16 bytes;
- 3.0 / 3.0.2: AES-128-CMAC with Session.SigningKey;
- 3.1.1: AES-128-CMAC, or the algorithm SMB2_SIGNING_CAPABILITIES negotiated
  ([MS-SMB2] 2.2.3.1.7, 3.1.4.1): AES-128-GMAC, or HMAC-SHA256 (with the KDF-derived
  signing key, as Windows and Samba do when a client offers only that).  GMAC's
  12-byte nonce is the MessageId followed by a 32-bit word whose bit 0 says "sent by
  the server" and bit 1 "this is a CANCEL request".

The Signature field is skipped by feeding the MAC three pieces (before, zeros, after)
so a large WRITE is never copied just to blank 16 bytes.
"""
from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..status import ProtocolViolation
from .constants import (
    DIALECT_SMB_3_0,
    DIALECT_SMB_3_1_1,
    KNOWN_DIALECTS,
    SIGNING_AES_CMAC,
    SIGNING_AES_GMAC,
    SIGNING_HMAC_SHA256,
)

SMB2_HEADER_SIZE = 64
SIGNATURE_OFFSET = 48
SIGNATURE_SIZE = 16
_ZERO_SIGNATURE = b"\x00" * SIGNATURE_SIZE

# Header fields the GMAC nonce is built from ([MS-SMB2] 2.2.1.2).
_HEADER_COMMAND = struct.Struct("<H")  # at offset 12
_HEADER_FLAGS = struct.Struct("<I")  # at offset 16
_HEADER_MESSAGE_ID = struct.Struct("<Q")  # at offset 24
_GMAC_NONCE = struct.Struct("<QI")
_SMB2_FLAGS_SERVER_TO_REDIR = 0x00000001
_SMB2_CANCEL = 0x000C
_GMAC_ROLE_SERVER = 0x1
_GMAC_CANCEL = 0x2


def _library_takes_buffers() -> bool:
    """Whether cryptography's CMAC/GCM accept memoryviews (newer releases) or only bytes (38)."""
    try:
        probe = cmac.CMAC(algorithms.AES(b"\x00" * 16))
        probe.update(memoryview(b"probe"))
        return True
    except TypeError:
        return False


_TAKES_BUFFERS = _library_takes_buffers()


def _pieces(message: memoryview) -> tuple[bytes | memoryview, bytes, bytes | memoryview]:
    head = message[:SIGNATURE_OFFSET]
    tail = message[SIGNATURE_OFFSET + SIGNATURE_SIZE:]
    if not _TAKES_BUFFERS:
        # Old cryptography insists on bytes: one copy of the message is unavoidable there.
        return bytes(head), _ZERO_SIGNATURE, bytes(tail)
    return head, _ZERO_SIGNATURE, tail


def _effective_algorithm(algorithm: int, dialect: int) -> int:
    """The algorithm [MS-SMB2] 3.1.4.1 prescribes for ``dialect`` given the negotiated one."""
    if dialect not in KNOWN_DIALECTS:
        raise ValueError(f"unknown SMB dialect {dialect:#06x}")
    if dialect < DIALECT_SMB_3_0:
        return SIGNING_HMAC_SHA256
    if algorithm == SIGNING_AES_GMAC:
        if dialect != DIALECT_SMB_3_1_1:
            raise ValueError("AES-GMAC signing exists only in SMB 3.1.1")
        return SIGNING_AES_GMAC
    if algorithm not in (SIGNING_AES_CMAC, SIGNING_HMAC_SHA256):
        raise ValueError(f"unknown signing algorithm {algorithm:#06x}")
    if algorithm == SIGNING_HMAC_SHA256 and dialect == DIALECT_SMB_3_1_1:
        # Only a 3.1.1 SMB2_SIGNING_CAPABILITIES context can select it (smbtorture
        # smb2.session.signing-hmac-sha-256); 3.0/3.0.2 have no choice and use CMAC.
        return SIGNING_HMAC_SHA256
    return SIGNING_AES_CMAC


def gmac_nonce(message: bytes | bytearray | memoryview) -> bytes:
    """The 12-byte AES-GMAC nonce of an SMB2 message ([MS-SMB2] 3.1.4.1)."""
    view = memoryview(message)
    if len(view) < SMB2_HEADER_SIZE:
        raise ProtocolViolation("SMB2 message shorter than its header")
    (message_id,) = _HEADER_MESSAGE_ID.unpack_from(view, 24)
    (flags,) = _HEADER_FLAGS.unpack_from(view, 16)
    (command,) = _HEADER_COMMAND.unpack_from(view, 12)
    info = 0
    if flags & _SMB2_FLAGS_SERVER_TO_REDIR:
        info |= _GMAC_ROLE_SERVER
    elif command == _SMB2_CANCEL:
        info |= _GMAC_CANCEL
    return _GMAC_NONCE.pack(message_id, info)


def sign(
    algorithm: int, key: bytes, message: bytes | bytearray | memoryview, *, dialect: int
) -> bytes:
    """Return the 16-byte signature of one SMB2 message; ``message`` is not modified.

    ``message`` starts with the 64-byte SMB2 header; for a compound element pass only
    that element (up to NextCommand).  Raises ProtocolViolation if it is shorter than
    the header, ValueError on an unknown algorithm/dialect combination.
    """
    view = memoryview(message).cast("B")
    if len(view) < SMB2_HEADER_SIZE:
        raise ProtocolViolation("SMB2 message shorter than its header")
    effective = _effective_algorithm(algorithm, dialect)
    head, zeros, tail = _pieces(view)

    if effective == SIGNING_HMAC_SHA256:
        mac = hmac.new(key, head, hashlib.sha256)
        mac.update(zeros)
        mac.update(tail)
        return mac.digest()[:SIGNATURE_SIZE]

    if effective == SIGNING_AES_CMAC:
        mac = cmac.CMAC(algorithms.AES(key))
        mac.update(head)
        mac.update(zeros)
        mac.update(tail)
        return mac.finalize()

    # AES-GMAC is AES-GCM with the whole message as additional data and no plaintext.
    encryptor = Cipher(algorithms.AES(key), modes.GCM(gmac_nonce(view))).encryptor()
    encryptor.authenticate_additional_data(head)
    encryptor.authenticate_additional_data(zeros)
    encryptor.authenticate_additional_data(tail)
    encryptor.finalize()
    return encryptor.tag


def verify_signature(
    algorithm: int, key: bytes, message: bytes | bytearray | memoryview, *, dialect: int
) -> bool:
    """True when the Signature field of ``message`` matches (constant-time comparison)."""
    view = memoryview(message).cast("B")
    if len(view) < SMB2_HEADER_SIZE:
        raise ProtocolViolation("SMB2 message shorter than its header")
    received = bytes(view[SIGNATURE_OFFSET:SIGNATURE_OFFSET + SIGNATURE_SIZE])
    return hmac.compare_digest(received, sign(algorithm, key, view, dialect=dialect))
