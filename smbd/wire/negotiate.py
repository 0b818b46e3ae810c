"""NEGOTIATE request/response and negotiate contexts, MS-SMB2 2.2.3, 2.2.3.1, 2.2.4, 2.2.4.1."""
from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass, field

from smbd.status import NtStatus, SmbError

from .common import body, buffer, pad8
from .header import HEADER_SIZE


class Dialect(enum.IntEnum):
    SMB_2_0_2 = 0x0202
    SMB_2_1 = 0x0210
    SMB_3_0 = 0x0300
    SMB_3_0_2 = 0x0302
    SMB_3_1_1 = 0x0311
    WILDCARD = 0x02FF  # "SMB 2.???" in the SMB2 answer to an SMB1 negotiate


class SecurityMode(enum.IntFlag):
    SIGNING_ENABLED = 0x0001
    SIGNING_REQUIRED = 0x0002


class Capabilities(enum.IntFlag):
    DFS = 0x01
    LEASING = 0x02
    LARGE_MTU = 0x04
    MULTI_CHANNEL = 0x08
    PERSISTENT_HANDLES = 0x10
    DIRECTORY_LEASING = 0x20
    ENCRYPTION = 0x40
    NOTIFICATIONS = 0x80


class ContextType(enum.IntEnum):
    PREAUTH_INTEGRITY = 0x0001
    ENCRYPTION = 0x0002
    COMPRESSION = 0x0003
    NETNAME = 0x0005
    TRANSPORT = 0x0006
    RDMA_TRANSFORM = 0x0007
    SIGNING = 0x0008


HASH_SHA512 = 0x0001
RDMA_TRANSFORM_NONE = 0x0000
RDMA_TRANSFORM_ENCRYPTION = 0x0001
RDMA_TRANSFORM_SIGNING = 0x0002

_REQUEST = struct.Struct("<HHHHI16sIHH")
_RESPONSE = struct.Struct("<HHHH16sIIIIQQHHI")
_CONTEXT = struct.Struct("<HHI")
_U16 = struct.Struct("<H")


@dataclass(frozen=True, slots=True)
class NegotiateRequest:
    """SMB2 NEGOTIATE Request, 2.2.3, with its contexts (2.2.3.1) when 3.1.1 is offered."""

    dialects: tuple[int, ...]
    security_mode: int
    capabilities: int
    client_guid: uuid.UUID
    contexts: dict[int, bytes] = field(default_factory=dict)  # ContextType -> Data

    @classmethod
    def parse(cls, msg: memoryview) -> "NegotiateRequest":
        (_, count, security_mode, _, capabilities, guid, ctx_offset, ctx_count, _) = body(msg, _REQUEST, 36)
        if count == 0:
            raise SmbError(NtStatus.INVALID_PARAMETER, "no dialects offered")
        dialects_at = HEADER_SIZE + _REQUEST.size
        raw = buffer(msg, dialects_at, 2 * count)
        dialects = tuple(_U16.unpack_from(raw, 2 * i)[0] for i in range(count))
        contexts: dict[int, bytes] = {}
        if Dialect.SMB_3_1_1 in dialects and ctx_count:
            contexts = parse_contexts(msg, ctx_offset, ctx_count)
        return cls(dialects, security_mode, capabilities, uuid.UUID(bytes_le=bytes(guid)), contexts)


def parse_contexts(msg: memoryview, offset: int, count: int) -> dict[int, bytes]:
    """Walk the 8-byte aligned NEGOTIATE_CONTEXT list (2.2.3.1); duplicates are refused (3.3.5.4)."""
    contexts: dict[int, bytes] = {}
    pos = offset
    for i in range(count):
        if i:
            pos = pad8(pos)
        if pos < HEADER_SIZE or pos + _CONTEXT.size > len(msg):
            raise SmbError(NtStatus.INVALID_PARAMETER, "negotiate context out of range")
        ctype, length, _ = _CONTEXT.unpack_from(msg, pos)
        data = bytes(buffer(msg, pos + _CONTEXT.size, length))
        if ctype in contexts and ctype in (ContextType.PREAUTH_INTEGRITY, ContextType.ENCRYPTION,
                                           ContextType.COMPRESSION, ContextType.RDMA_TRANSFORM,
                                           ContextType.SIGNING):
            raise SmbError(NtStatus.INVALID_PARAMETER, "duplicate negotiate context")
        contexts[ctype] = data
        pos += _CONTEXT.size + length
    return contexts


def u16_list(data: bytes, count_at: int, list_at: int) -> list[int]:
    """A count followed by that many 16-bit ids, as in 2.2.3.1.1/2/5/7."""
    if len(data) < count_at + 2:
        raise SmbError(NtStatus.INVALID_PARAMETER, "negotiate context too short")
    (count,) = _U16.unpack_from(data, count_at)
    if count == 0 or len(data) < list_at + 2 * count:
        raise SmbError(NtStatus.INVALID_PARAMETER, "negotiate context list truncated")
    return [_U16.unpack_from(data, list_at + 2 * i)[0] for i in range(count)]


def preauth_hash_ids(data: bytes) -> list[int]:
    """SMB2_PREAUTH_INTEGRITY_CAPABILITIES (2.2.3.1.1): HashAlgorithmCount, SaltLength, ids."""
    return u16_list(data, 0, 4)


def cipher_ids(data: bytes) -> list[int]:
    """SMB2_ENCRYPTION_CAPABILITIES (2.2.3.1.2)."""
    return u16_list(data, 0, 2)


def signing_ids(data: bytes) -> list[int]:
    """SMB2_SIGNING_CAPABILITIES (2.2.3.1.7)."""
    return u16_list(data, 0, 2)


def rdma_transform_ids(data: bytes) -> list[int]:
    """SMB2_RDMA_TRANSFORM_CAPABILITIES (2.2.3.1.6): TransformCount, 6 reserved bytes, ids."""
    return u16_list(data, 0, 8)


def encode_context(ctype: int, data: bytes) -> bytes:
    return _CONTEXT.pack(ctype, len(data), 0) + data


def preauth_context(salt: bytes) -> bytes:
    return encode_context(ContextType.PREAUTH_INTEGRITY,
                          struct.pack("<HHH", 1, len(salt), HASH_SHA512) + salt)


def single_id_context(ctype: int, ident: int) -> bytes:
    """Encryption (2.2.4.1.2) and signing (2.2.4.1.7) responses carry exactly one id."""
    return encode_context(ctype, struct.pack("<HH", 1, ident))


def rdma_transform_context(ids: list[int]) -> bytes:
    return encode_context(ContextType.RDMA_TRANSFORM,
                          struct.pack("<HHI", len(ids), 0, 0) + b"".join(_U16.pack(i) for i in ids))


@dataclass(frozen=True, slots=True)
class NegotiateResponse:
    """SMB2 NEGOTIATE Response, 2.2.4."""

    security_mode: int
    dialect: int
    server_guid: uuid.UUID
    capabilities: int
    max_transact_size: int
    max_read_size: int
    max_write_size: int
    system_time: int
    security_buffer: bytes
    contexts: tuple[bytes, ...] = ()  # encoded contexts, 3.1.1 only

    def pack(self) -> bytes:
        sec_offset = HEADER_SIZE + _RESPONSE.size
        ctx_offset = pad8(sec_offset + len(self.security_buffer)) if self.contexts else 0
        fixed = _RESPONSE.pack(65, self.security_mode, self.dialect, len(self.contexts),
                               self.server_guid.bytes_le, self.capabilities, self.max_transact_size,
                               self.max_read_size, self.max_write_size, self.system_time, 0,
                               sec_offset if self.security_buffer else 0, len(self.security_buffer),
                               ctx_offset)
        out = bytearray(fixed + self.security_buffer)
        for i, ctx in enumerate(self.contexts):
            out += b"\0" * (pad8(HEADER_SIZE + len(out)) - HEADER_SIZE - len(out))
            out += ctx
        if not self.security_buffer and not self.contexts:
            out += b"\0"  # the variable part is at least one byte (StructureSize 65)
        return bytes(out)
