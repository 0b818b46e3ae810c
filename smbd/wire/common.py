"""Helpers shared by the SMB2 command codecs."""
from __future__ import annotations

import struct

from smbd.status import NtStatus, ProtocolViolation, SmbError

from .header import HEADER_SIZE

_FILE_ID = struct.Struct("<QQ")


def body(msg: memoryview, st: struct.Struct, structure_size: int) -> tuple:
    """Unpack a request's fixed part and check its StructureSize (MS-SMB2 2.2.x).

    A wrong StructureSize is answered with STATUS_INVALID_PARAMETER, as Windows does.
    Requests whose fixed part is cut short count as malformed too.
    """
    if len(msg) < HEADER_SIZE + st.size:
        raise SmbError(NtStatus.INVALID_PARAMETER, "request body truncated")
    fields = st.unpack_from(msg, HEADER_SIZE)
    if fields[0] != structure_size:
        raise SmbError(NtStatus.INVALID_PARAMETER, "bad StructureSize")
    return fields


def buffer(msg: memoryview, offset: int, length: int, *, minimum_offset: int = HEADER_SIZE) -> memoryview:
    """The variable part at (offset, length) measured from the header, bounds checked."""
    if length == 0:
        return msg[0:0]
    if offset < minimum_offset or offset + length > len(msg):
        raise SmbError(NtStatus.INVALID_PARAMETER, "buffer offset/length out of range")
    return msg[offset:offset + length]


def utf16(data: memoryview | bytes) -> str:
    if len(data) % 2:
        raise SmbError(NtStatus.INVALID_PARAMETER, "odd UTF-16 length")
    try:
        return bytes(data).decode("utf-16-le")
    except UnicodeDecodeError as e:  # lone surrogates
        raise SmbError(NtStatus.OBJECT_NAME_INVALID, "invalid UTF-16") from e


def file_id(raw: bytes) -> tuple[int, int]:
    """SMB2_FILEID (2.2.14.1): Persistent and Volatile 64-bit halves."""
    return _FILE_ID.unpack(raw)


def pack_file_id(persistent: int, volatile: int) -> bytes:
    return _FILE_ID.pack(persistent, volatile)


def pad8(n: int) -> int:
    return (n + 7) & ~7


def require(cond: bool, what: str) -> None:
    if not cond:
        raise ProtocolViolation(what)
