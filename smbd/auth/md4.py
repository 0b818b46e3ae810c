"""MD4 message digest (RFC 1320), in pure Python.

NTLM's NT hash is MD4 over the UTF-16LE password ([MS-NLMP] 3.3.1).  Modern OpenSSL
(3.x, as Debian 12 ships it) only offers MD4 through the legacy provider, which is not
loaded by default, so ``hashlib.new("md4")`` cannot be relied on.  Passwords are short
and the hash is computed once per login, so speed does not matter here.
"""
from __future__ import annotations

import struct

_MASK = 0xFFFFFFFF
_BLOCK = struct.Struct("<16I")
_LENGTH = struct.Struct("<Q")
_DIGEST = struct.Struct("<4I")

# Round 2 and 3 additive constants (RFC 1320 section 3.4): sqrt(2) and sqrt(3) scaled to 2^30.
_ROUND2_K = 0x5A827999
_ROUND3_K = 0x6ED9EBA1

# Message word order and shift amounts of rounds 2 and 3 (RFC 1320 section 3.4).
_ROUND2_ORDER = (0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15)
_ROUND3_ORDER = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)
_ROUND1_SHIFTS = (3, 7, 11, 19)
_ROUND2_SHIFTS = (3, 5, 9, 13)
_ROUND3_SHIFTS = (3, 9, 11, 15)


def _rotl(value: int, shift: int) -> int:
    value &= _MASK
    return ((value << shift) | (value >> (32 - shift))) & _MASK


def _compress(state: list[int], block: bytes) -> None:
    """Process one 64-byte block (RFC 1320 section 3.4), updating ``state`` in place."""
    x = _BLOCK.unpack(block)
    a, b, c, d = state

    for i in range(16):
        f = (b & c) | (~b & d)
        a, b, c, d = d, _rotl(a + f + x[i], _ROUND1_SHIFTS[i % 4]), b, c
    for i in range(16):
        g = (b & c) | (b & d) | (c & d)
        a, b, c, d = d, _rotl(a + g + x[_ROUND2_ORDER[i]] + _ROUND2_K, _ROUND2_SHIFTS[i % 4]), b, c
    for i in range(16):
        h = b ^ c ^ d
        a, b, c, d = d, _rotl(a + h + x[_ROUND3_ORDER[i]] + _ROUND3_K, _ROUND3_SHIFTS[i % 4]), b, c

    state[0] = (state[0] + a) & _MASK
    state[1] = (state[1] + b) & _MASK
    state[2] = (state[2] + c) & _MASK
    state[3] = (state[3] + d) & _MASK


def md4(data: bytes) -> bytes:
    """Return the 16-byte MD4 digest of ``data`` (RFC 1320)."""
    data = bytes(data)
    bit_length = (len(data) * 8) & 0xFFFFFFFFFFFFFFFF
    # Padding (RFC 1320 3.1/3.2): a single 1 bit, zeros to 56 mod 64, then the length.
    padding = b"\x80" + b"\x00" * ((55 - len(data)) % 64)
    message = data + padding + _LENGTH.pack(bit_length)

    state = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476]
    for offset in range(0, len(message), 64):
        _compress(state, message[offset:offset + 64])
    return _DIGEST.pack(*state)
