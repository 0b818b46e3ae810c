"""SMB2 TRANSFORM_HEADER and message encryption ([MS-SMB2] 2.2.41, 3.1.4.3, 3.3.5.2.1.1).

Wire layout (52 bytes, little-endian)::

    0  ProtocolId           0xFD 'S' 'M' 'B'
    4  Signature            16-byte AEAD tag
    20 Nonce                16 bytes: AES-CCM uses the first 11, AES-GCM the first 12
    36 OriginalMessageSize  4
    40 Reserved             2
    42 Flags                2  (EncryptionAlgorithm in 3.0; 0x0001 = encrypted)
    44 SessionId            8

The additional authenticated data is the header from Nonce to the end (32 bytes); the
ciphertext follows the header and is exactly OriginalMessageSize bytes long.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from .constants import GCM_CIPHERS, KNOWN_CIPHERS, cipher_key_length

TRANSFORM_PROTOCOL_ID = b"\xfdSMB"
TRANSFORM_HEADER_SIZE = 52
TRANSFORM_FLAG_ENCRYPTED = 0x0001
_AAD_OFFSET = 20
_TAG_SIZE = 16
_NONCE_FIELD_SIZE = 16
_CCM_NONCE_SIZE = 11
_GCM_NONCE_SIZE = 12

# ProtocolId, Signature, Nonce, OriginalMessageSize, Reserved, Flags, SessionId
_TRANSFORM_HEADER = struct.Struct("<4s16s16sIHHQ")
assert _TRANSFORM_HEADER.size == TRANSFORM_HEADER_SIZE


class DecryptError(ValueError):
    """An encrypted message is malformed or fails authentication.

    The server answers with STATUS_ACCESS_DENIED or drops the connection
    ([MS-SMB2] 3.3.5.2.1.1); it never learns which check failed.
    """


@dataclass(frozen=True, slots=True)
class TransformHeader:
    """SMB2 TRANSFORM_HEADER ([MS-SMB2] 2.2.41), without ProtocolId."""

    signature: bytes
    nonce: bytes
    original_message_size: int
    flags: int
    session_id: int

    def pack(self) -> bytes:
        return _TRANSFORM_HEADER.pack(
            TRANSFORM_PROTOCOL_ID,
            self.signature,
            self.nonce,
            self.original_message_size,
            0,
            self.flags,
            self.session_id,
        )


def parse_transform_header(data: bytes | bytearray | memoryview) -> TransformHeader:
    """Parse the transform header at the start of ``data`` (raises DecryptError).

    Lets the server look up Session.DecryptionKey by SessionId before decrypting.
    """
    if len(data) < TRANSFORM_HEADER_SIZE:
        raise DecryptError("message shorter than SMB2 TRANSFORM_HEADER")
    protocol_id, signature, nonce, size, _reserved, flags, session_id = _TRANSFORM_HEADER.unpack_from(data, 0)
    if protocol_id != TRANSFORM_PROTOCOL_ID:
        raise DecryptError("not an SMB2 TRANSFORM_HEADER")
    return TransformHeader(signature, nonce, size, flags, session_id)


def _nonce_size(cipher: int) -> int:
    return _GCM_NONCE_SIZE if cipher in GCM_CIPHERS else _CCM_NONCE_SIZE


def _check_key(cipher: int, key: bytes) -> None:
    if cipher not in KNOWN_CIPHERS:
        raise ValueError(f"unknown SMB cipher id {cipher:#06x}")
    if len(key) != cipher_key_length(cipher):
        raise ValueError(f"cipher {cipher:#06x} needs a {cipher_key_length(cipher)}-byte key")


def encrypt_message(
    cipher: int,
    key: bytes,
    session_id: int,
    plaintext: bytes | bytearray | memoryview,
    nonce: bytes | None = None,
) -> bytes:
    """Encrypt one SMB2 message (or compound chain) into TRANSFORM_HEADER + ciphertext.

    ``nonce`` is the Nonce field: 11 (CCM) or 12 (GCM) bytes, or the full 16-byte field
    (only its first 11/12 bytes feed the cipher).  A random nonce is drawn when None;
    with 96 random bits a GCM nonce repeats only after about 2**48 messages per key.
    """
    _check_key(cipher, key)
    size = _nonce_size(cipher)
    if nonce is None:
        nonce = os.urandom(size)
    if len(nonce) not in (size, _NONCE_FIELD_SIZE):
        raise ValueError(f"nonce must be {size} or {_NONCE_FIELD_SIZE} bytes for cipher {cipher:#06x}")
    nonce_field = bytes(nonce).ljust(_NONCE_FIELD_SIZE, b"\x00")
    header = TransformHeader(b"\x00" * _TAG_SIZE, nonce_field, len(plaintext), TRANSFORM_FLAG_ENCRYPTED, session_id)
    aad = header.pack()[_AAD_OFFSET:]
    cipher_nonce = nonce_field[:size]

    if cipher in GCM_CIPHERS:
        encryptor = Cipher(algorithms.AES(key), modes.GCM(cipher_nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        ciphertext = encryptor.update(plaintext) + encryptor.finalize()
        tag = encryptor.tag
    else:
        sealed = AESCCM(key, tag_length=_TAG_SIZE).encrypt(cipher_nonce, bytes(plaintext), aad)
        ciphertext, tag = sealed[:-_TAG_SIZE], sealed[-_TAG_SIZE:]

    return (
        _TRANSFORM_HEADER.pack(
            TRANSFORM_PROTOCOL_ID, tag, nonce_field, len(plaintext), 0, TRANSFORM_FLAG_ENCRYPTED, session_id
        )
        + ciphertext
    )


def decrypt_message(cipher: int, key: bytes, data: bytes | bytearray | memoryview) -> bytes:
    """Check and decrypt TRANSFORM_HEADER + ciphertext; return the SMB2 message.

    Raises DecryptError when the header is malformed (short, wrong ProtocolId, Flags
    other than 0x0001, OriginalMessageSize not matching the ciphertext) or the tag does
    not verify.  ValueError (not DecryptError) means the caller passed a bad key/cipher.
    """
    _check_key(cipher, key)
    view = memoryview(data).cast("B")
    header = parse_transform_header(view)
    if header.flags != TRANSFORM_FLAG_ENCRYPTED:
        raise DecryptError(f"unexpected TRANSFORM_HEADER Flags {header.flags:#06x}")
    ciphertext = view[TRANSFORM_HEADER_SIZE:]
    if header.original_message_size != len(ciphertext):
        raise DecryptError("OriginalMessageSize does not match the encrypted data")
    if header.original_message_size == 0:
        raise DecryptError("empty encrypted message")
    aad = bytes(view[_AAD_OFFSET:TRANSFORM_HEADER_SIZE])
    cipher_nonce = header.nonce[:_nonce_size(cipher)]

    try:
        if cipher in GCM_CIPHERS:
            decryptor = Cipher(algorithms.AES(key), modes.GCM(cipher_nonce, header.signature)).decryptor()
            decryptor.authenticate_additional_data(aad)
            plaintext = decryptor.update(ciphertext)
            return plaintext + decryptor.finalize()
        return AESCCM(key, tag_length=_TAG_SIZE).decrypt(cipher_nonce, bytes(ciphertext) + header.signature, aad)
    except InvalidTag:
        raise DecryptError("encrypted message failed authentication") from None
