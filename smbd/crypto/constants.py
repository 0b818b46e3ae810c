"""Algorithm identifiers and dialect numbers shared by signing, key derivation and encryption.

Cipher ids: [MS-SMB2] 2.2.3.1.2 (SMB2_ENCRYPTION_CAPABILITIES).
Signing algorithm ids: [MS-SMB2] 2.2.3.1.7 (SMB2_SIGNING_CAPABILITIES).
Dialect revisions: [MS-SMB2] 2.2.3 (SMB2 NEGOTIATE Request, Dialects).
"""
from __future__ import annotations

CIPHER_AES_128_CCM = 0x0001
CIPHER_AES_128_GCM = 0x0002
CIPHER_AES_256_CCM = 0x0003
CIPHER_AES_256_GCM = 0x0004

SIGNING_HMAC_SHA256 = 0x0000
SIGNING_AES_CMAC = 0x0001
SIGNING_AES_GMAC = 0x0002

DIALECT_SMB_2_0_2 = 0x0202
DIALECT_SMB_2_1 = 0x0210
DIALECT_SMB_3_0 = 0x0300
DIALECT_SMB_3_0_2 = 0x0302
DIALECT_SMB_3_1_1 = 0x0311

KNOWN_DIALECTS = frozenset(
    {DIALECT_SMB_2_0_2, DIALECT_SMB_2_1, DIALECT_SMB_3_0, DIALECT_SMB_3_0_2, DIALECT_SMB_3_1_1}
)
KNOWN_CIPHERS = frozenset(
    {CIPHER_AES_128_CCM, CIPHER_AES_128_GCM, CIPHER_AES_256_CCM, CIPHER_AES_256_GCM}
)
GCM_CIPHERS = frozenset({CIPHER_AES_128_GCM, CIPHER_AES_256_GCM})
AES_256_CIPHERS = frozenset({CIPHER_AES_256_CCM, CIPHER_AES_256_GCM})


def cipher_key_length(cipher: int) -> int:
    """Key size in bytes of an SMB cipher id (16 for AES-128-*, 32 for AES-256-*)."""
    if cipher not in KNOWN_CIPHERS:
        raise ValueError(f"unknown SMB cipher id {cipher:#06x}")
    return 32 if cipher in AES_256_CIPHERS else 16
