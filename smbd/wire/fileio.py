"""CLOSE (2.2.15/16), FLUSH (2.2.17/18), READ (2.2.19/20), WRITE (2.2.21/22), LOCK (2.2.26/27),
OPLOCK_BREAK acknowledgement (2.2.24) and SMB2_BUFFER_DESCRIPTOR_V1 (2.2.3.1 of MS-SMBD)."""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from smbd.status import NtStatus, SmbError

from .common import body, buffer, file_id
from .header import HEADER_SIZE

_CLOSE_REQ = struct.Struct("<HHI16s")
_CLOSE_RESP = struct.Struct("<HHIQQQQQQI")
_FLUSH_REQ = struct.Struct("<HHI16s")
_READ_REQ = struct.Struct("<HBBIQ16sIIIHH")
_READ_RESP = struct.Struct("<HBBIII")
_WRITE_REQ = struct.Struct("<HHIQ16sIIHHI")
_WRITE_RESP = struct.Struct("<HHIIHH")
_LOCK_REQ = struct.Struct("<HHI16s")
_LOCK_ELEMENT = struct.Struct("<QQII")
_BUFFER_DESC = struct.Struct("<QII")

CLOSE_FLAG_POSTQUERY_ATTRIB = 0x0001
READFLAG_READ_UNBUFFERED = 0x01
READFLAG_REQUEST_COMPRESSED = 0x02
WRITEFLAG_WRITE_THROUGH = 0x01


class Channel(enum.IntEnum):
    NONE = 0
    RDMA_V1 = 1
    RDMA_V1_INVALIDATE = 2
    RDMA_TRANSFORM = 3


@dataclass(frozen=True, slots=True)
class BufferDescriptor:
    """SMB2_BUFFER_DESCRIPTOR_V1 ([MS-SMB2] 2.2.3.1 via [MS-SMBD] 2.2.3.1): a client memory region."""

    offset: int
    token: int
    length: int


def parse_buffer_descriptors(data: memoryview) -> tuple[BufferDescriptor, ...]:
    if not data or len(data) % _BUFFER_DESC.size:
        raise SmbError(NtStatus.INVALID_PARAMETER, "bad RDMA channel info")
    return tuple(BufferDescriptor(*_BUFFER_DESC.unpack_from(data, i))
                 for i in range(0, len(data), _BUFFER_DESC.size))


@dataclass(frozen=True, slots=True)
class CloseRequest:
    flags: int
    file_id: tuple[int, int]

    @classmethod
    def parse(cls, msg: memoryview) -> "CloseRequest":
        _, flags, _, fid = body(msg, _CLOSE_REQ, 24)
        return cls(flags, file_id(fid))


def close_response(flags: int, times: tuple[int, int, int, int] = (0, 0, 0, 0),
                   allocation: int = 0, eof: int = 0, attributes: int = 0) -> bytes:
    return _CLOSE_RESP.pack(60, flags, 0, *times, allocation, eof, attributes)


def parse_flush(msg: memoryview) -> tuple[int, int]:
    _, _, _, fid = body(msg, _FLUSH_REQ, 24)
    return file_id(fid)


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """SMB2 READ Request, 2.2.19."""

    padding: int
    flags: int
    length: int
    offset: int
    file_id: tuple[int, int]
    minimum_count: int
    channel: int
    remaining_bytes: int
    descriptors: tuple[BufferDescriptor, ...]

    @classmethod
    def parse(cls, msg: memoryview) -> "ReadRequest":
        (_, padding, flags, length, offset, fid, minimum, channel, remaining,
         info_off, info_len) = body(msg, _READ_REQ, 49)
        descriptors: tuple[BufferDescriptor, ...] = ()
        if channel in (Channel.RDMA_V1, Channel.RDMA_V1_INVALIDATE):
            descriptors = parse_buffer_descriptors(buffer(msg, info_off, info_len))
        elif channel != Channel.NONE:
            raise SmbError(NtStatus.INVALID_PARAMETER, "unsupported read channel")
        return cls(padding, flags, length, offset, file_id(fid), minimum, channel, remaining, descriptors)


READ_RESPONSE_DATA_OFFSET = HEADER_SIZE + 16  # 80: data follows the 16-byte fixed part


def read_response_header(data_length: int, data_remaining: int = 0, *, inline: bool = True,
                         padding: int = 0) -> bytes:
    """The fixed part of an SMB2 READ Response (2.2.20); the data follows at offset 80.

    For RDMA channels the data went by RDMA write: DataLength is 0 and DataRemaining
    carries the number of bytes written (3.3.5.12); DataOffset stays 80, as Windows and
    ksmbd send it. ``padding`` zero bytes between the fixed part and the data (DataOffset
    moves by as much) exist only for smbtorture's
    FSCTL_SMBTORTURE_GLOBAL_READ_RESPONSE_BODY_PADDING8, which checks that clients honour
    DataOffset.
    """
    if not 0 <= padding <= 0xFF - READ_RESPONSE_DATA_OFFSET:
        raise ValueError("read response padding out of range")
    offset = READ_RESPONSE_DATA_OFFSET + padding
    if inline:
        return _READ_RESP.pack(17, offset, 0, data_length, data_remaining, 0) + b"\0" * padding
    return _READ_RESP.pack(17, offset, 0, 0, data_remaining, 0) + b"\0" * padding


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """SMB2 WRITE Request, 2.2.21. ``data`` is a view into the message (no copy)."""

    offset: int
    file_id: tuple[int, int]
    channel: int
    remaining_bytes: int
    flags: int
    length: int
    data: memoryview
    descriptors: tuple[BufferDescriptor, ...]

    @classmethod
    def parse(cls, msg: memoryview) -> "WriteRequest":
        (_, data_off, length, offset, fid, channel, remaining, info_off, info_len,
         flags) = body(msg, _WRITE_REQ, 49)
        descriptors: tuple[BufferDescriptor, ...] = ()
        if channel in (Channel.RDMA_V1, Channel.RDMA_V1_INVALIDATE):
            descriptors = parse_buffer_descriptors(buffer(msg, info_off, info_len))
            data = msg[0:0]
        elif channel != Channel.NONE:
            raise SmbError(NtStatus.INVALID_PARAMETER, "unsupported write channel")
        else:
            data = buffer(msg, data_off, length)
        return cls(offset, file_id(fid), channel, remaining, flags, length, data, descriptors)


def write_response(count: int) -> bytes:
    return _WRITE_RESP.pack(17, 0, count, 0, 0, 0)


class LockFlags(enum.IntFlag):
    SHARED = 0x01
    EXCLUSIVE = 0x02
    UNLOCK = 0x04
    FAIL_IMMEDIATELY = 0x10


@dataclass(frozen=True, slots=True)
class LockElement:
    """SMB2_LOCK_ELEMENT, 2.2.26.1."""

    offset: int
    length: int
    flags: int


@dataclass(frozen=True, slots=True)
class LockRequest:
    """SMB2 LOCK Request, 2.2.26."""

    sequence: int
    file_id: tuple[int, int]
    locks: tuple[LockElement, ...]

    @classmethod
    def parse(cls, msg: memoryview) -> "LockRequest":
        _, count, sequence, fid = body(msg, _LOCK_REQ, 48)
        if count == 0:
            raise SmbError(NtStatus.INVALID_PARAMETER, "LockCount is zero")
        raw = buffer(msg, HEADER_SIZE + _LOCK_REQ.size, count * _LOCK_ELEMENT.size)
        locks = tuple(LockElement(*_LOCK_ELEMENT.unpack_from(raw, i * _LOCK_ELEMENT.size)[:3])
                      for i in range(count))
        return cls(sequence, file_id(fid), locks)
