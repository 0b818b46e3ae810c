"""SMB2/3 cryptography: key derivation, signing and encryption ([MS-SMB2] 3.1.4).

Pure functions over bytes: no sockets, no session objects.  The server core keeps the
keys in its Session/Channel objects and calls these.
"""
from .constants import (
    CIPHER_AES_128_CCM,
    CIPHER_AES_128_GCM,
    CIPHER_AES_256_CCM,
    CIPHER_AES_256_GCM,
    DIALECT_SMB_2_0_2,
    DIALECT_SMB_2_1,
    DIALECT_SMB_3_0,
    DIALECT_SMB_3_0_2,
    DIALECT_SMB_3_1_1,
    SIGNING_AES_CMAC,
    SIGNING_AES_GMAC,
    SIGNING_HMAC_SHA256,
    cipher_key_length,
)
from .keys import PreauthHash, SessionKeys, derive_session_keys, kdf
from .signing import sign, verify_signature
from .transform import (
    TRANSFORM_HEADER_SIZE,
    DecryptError,
    TransformHeader,
    decrypt_message,
    encrypt_message,
    parse_transform_header,
)

__all__ = [
    "CIPHER_AES_128_CCM",
    "CIPHER_AES_128_GCM",
    "CIPHER_AES_256_CCM",
    "CIPHER_AES_256_GCM",
    "DIALECT_SMB_2_0_2",
    "DIALECT_SMB_2_1",
    "DIALECT_SMB_3_0",
    "DIALECT_SMB_3_0_2",
    "DIALECT_SMB_3_1_1",
    "SIGNING_AES_CMAC",
    "SIGNING_AES_GMAC",
    "SIGNING_HMAC_SHA256",
    "TRANSFORM_HEADER_SIZE",
    "DecryptError",
    "PreauthHash",
    "SessionKeys",
    "TransformHeader",
    "cipher_key_length",
    "decrypt_message",
    "derive_session_keys",
    "encrypt_message",
    "kdf",
    "parse_transform_header",
    "sign",
    "verify_signature",
]
