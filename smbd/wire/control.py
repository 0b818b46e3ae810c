"""IOCTL (2.2.31/32), QUERY_DIRECTORY (2.2.33/34), CHANGE_NOTIFY (2.2.35/36), QUERY_INFO (2.2.37/38),
SET_INFO (2.2.39/40) and the ERROR response (2.2.2)."""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from .common import body, buffer, file_id, pack_file_id, utf16
from .header import HEADER_SIZE

_IOCTL_REQ = struct.Struct("<HHI16sIIIIIIII")
_IOCTL_RESP = struct.Struct("<HHI16sIIIIII")
_QD_REQ = struct.Struct("<HBBI16sHHI")
_OUT_RESP = struct.Struct("<HHI")
_CN_REQ = struct.Struct("<HHI16sII")
_QI_REQ = struct.Struct("<HBBIHHIII16s")
_SI_REQ = struct.Struct("<HBBIHHI16s")
_ERROR = struct.Struct("<HBBI")

IOCTL_IS_FSCTL = 0x00000001


@dataclass(frozen=True, slots=True)
class IoctlRequest:
    """SMB2 IOCTL Request, 2.2.31."""

    ctl_code: int
    file_id: tuple[int, int]
    input: bytes
    max_input_response: int
    max_output_response: int
    flags: int

    @classmethod
    def parse(cls, msg: memoryview) -> "IoctlRequest":
        (_, _, code, fid, in_off, in_count, max_in, _out_off, _out_count, max_out,
         flags, _) = body(msg, _IOCTL_REQ, 57)
        return cls(code, file_id(fid), bytes(buffer(msg, in_off, in_count)), max_in, max_out, flags)


def ioctl_response(ctl_code: int, fid: tuple[int, int], output: bytes, input_echo: bytes = b"") -> bytes:
    """SMB2 IOCTL Response, 2.2.32: input echoed (only for some FSCTLs), then output."""
    in_off = HEADER_SIZE + _IOCTL_RESP.size
    out_off = in_off + ((len(input_echo) + 7) & ~7)
    fixed = _IOCTL_RESP.pack(49, 0, ctl_code, pack_file_id(*fid), in_off, len(input_echo),
                             out_off, len(output), 0, 0)
    pad = b"\0" * (out_off - in_off - len(input_echo))
    return fixed + input_echo + pad + output


class QueryDirectoryFlags(enum.IntFlag):
    RESTART_SCANS = 0x01
    RETURN_SINGLE_ENTRY = 0x02
    INDEX_SPECIFIED = 0x04
    REOPEN = 0x10


@dataclass(frozen=True, slots=True)
class QueryDirectoryRequest:
    """SMB2 QUERY_DIRECTORY Request, 2.2.33."""

    info_class: int
    flags: int
    file_index: int
    file_id: tuple[int, int]
    pattern: str
    output_length: int

    @classmethod
    def parse(cls, msg: memoryview) -> "QueryDirectoryRequest":
        _, cls_, flags, index, fid, name_off, name_len, out_len = body(msg, _QD_REQ, 33)
        return cls(cls_, flags, index, file_id(fid), utf16(buffer(msg, name_off, name_len)), out_len)


def output_response(data: bytes) -> bytes:
    """QUERY_DIRECTORY, CHANGE_NOTIFY and QUERY_INFO responses (2.2.34, 2.2.36, 2.2.38)."""
    offset = HEADER_SIZE + _OUT_RESP.size
    return _OUT_RESP.pack(9, offset if data else 0, len(data)) + (data or b"\0")


WATCH_TREE = 0x0001


@dataclass(frozen=True, slots=True)
class ChangeNotifyRequest:
    """SMB2 CHANGE_NOTIFY Request, 2.2.35."""

    flags: int
    output_length: int
    file_id: tuple[int, int]
    completion_filter: int

    @classmethod
    def parse(cls, msg: memoryview) -> "ChangeNotifyRequest":
        _, flags, out_len, fid, filt, _ = body(msg, _CN_REQ, 32)
        return cls(flags, out_len, file_id(fid), filt)


class InfoType(enum.IntEnum):
    FILE = 0x01
    FILESYSTEM = 0x02
    SECURITY = 0x03
    QUOTA = 0x04


@dataclass(frozen=True, slots=True)
class QueryInfoRequest:
    """SMB2 QUERY_INFO Request, 2.2.37."""

    info_type: int
    info_class: int
    output_length: int
    input: bytes
    additional_information: int
    flags: int
    file_id: tuple[int, int]

    @classmethod
    def parse(cls, msg: memoryview) -> "QueryInfoRequest":
        _, itype, icls, out_len, in_off, _, in_len, addl, flags, fid = body(msg, _QI_REQ, 41)
        return cls(itype, icls, out_len, bytes(buffer(msg, in_off, in_len)), addl, flags, file_id(fid))


@dataclass(frozen=True, slots=True)
class SetInfoRequest:
    """SMB2 SET_INFO Request, 2.2.39."""

    info_type: int
    info_class: int
    buffer: bytes
    additional_information: int
    file_id: tuple[int, int]

    @classmethod
    def parse(cls, msg: memoryview) -> "SetInfoRequest":
        _, itype, icls, length, off, _, addl, fid = body(msg, _SI_REQ, 33)
        return cls(itype, icls, bytes(buffer(msg, off, length)), addl, file_id(fid))


def set_info_response() -> bytes:
    """SMB2 SET_INFO Response, 2.2.40: StructureSize 2 and nothing else."""
    return struct.pack("<H", 2)


def error_response(data: bytes = b"", context_count: int = 0) -> bytes:
    """SMB2 ERROR Response, 2.2.2: at least one byte of ErrorData even when empty."""
    return _ERROR.pack(9, context_count, 0, len(data)) + (data or b"\0")
