"""CREATE request/response and create contexts, MS-SMB2 2.2.13, 2.2.13.2, 2.2.14, 2.2.14.2."""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from smbd.status import NtStatus, SmbError

from .common import body, buffer, file_id, pack_file_id, pad8, utf16
from .header import HEADER_SIZE

_REQ = struct.Struct("<HBBIQQIIIIIHHII")
_RESP = struct.Struct("<HBBIQQQQQQII16sII")
_CTX = struct.Struct("<IHHHHI")


class Disposition(enum.IntEnum):
    SUPERSEDE = 0
    OPEN = 1
    CREATE = 2
    OPEN_IF = 3
    OVERWRITE = 4
    OVERWRITE_IF = 5


class CreateOptions(enum.IntFlag):
    DIRECTORY_FILE = 0x00000001
    WRITE_THROUGH = 0x00000002
    SEQUENTIAL_ONLY = 0x00000004
    NO_INTERMEDIATE_BUFFERING = 0x00000008
    SYNCHRONOUS_IO_ALERT = 0x00000010
    SYNCHRONOUS_IO_NONALERT = 0x00000020
    NON_DIRECTORY_FILE = 0x00000040
    COMPLETE_IF_OPLOCKED = 0x00000100
    NO_EA_KNOWLEDGE = 0x00000200
    RANDOM_ACCESS = 0x00000800
    DELETE_ON_CLOSE = 0x00001000
    OPEN_BY_FILE_ID = 0x00002000
    OPEN_FOR_BACKUP_INTENT = 0x00004000
    NO_COMPRESSION = 0x00008000
    OPEN_REMOTE_INSTANCE = 0x00000400
    OPEN_REQUIRING_OPLOCK = 0x00010000
    DISALLOW_EXCLUSIVE = 0x00020000
    RESERVE_OPFILTER = 0x00100000
    OPEN_REPARSE_POINT = 0x00200000
    OPEN_NO_RECALL = 0x00400000
    OPEN_FOR_FREE_SPACE_QUERY = 0x00800000


class Access:
    """Access mask bits, MS-SMB2 2.2.13.1.1 / MS-DTYP 2.4.3: plain ints, as READ and WRITE
    test them on every call (an IntFlag operation costs an enum construction each)."""

    FILE_READ_DATA = 0x00000001
    FILE_WRITE_DATA = 0x00000002
    FILE_APPEND_DATA = 0x00000004
    FILE_READ_EA = 0x00000008
    FILE_WRITE_EA = 0x00000010
    FILE_EXECUTE = 0x00000020
    FILE_DELETE_CHILD = 0x00000040
    FILE_READ_ATTRIBUTES = 0x00000080
    FILE_WRITE_ATTRIBUTES = 0x00000100
    DELETE = 0x00010000
    READ_CONTROL = 0x00020000
    WRITE_DAC = 0x00040000
    WRITE_OWNER = 0x00080000
    SYNCHRONIZE = 0x00100000
    ACCESS_SYSTEM_SECURITY = 0x01000000
    MAXIMUM_ALLOWED = 0x02000000
    GENERIC_ALL = 0x10000000
    GENERIC_EXECUTE = 0x20000000
    GENERIC_WRITE = 0x40000000
    GENERIC_READ = 0x80000000


FILE_ALL_ACCESS = 0x001F01FF
FILE_GENERIC_READ = 0x00120089
FILE_GENERIC_WRITE = 0x00120116
FILE_GENERIC_EXECUTE = 0x001200A0
# Bits that modify the file (or its name) and so are refused on read-only shares.
WRITE_ACCESS = (Access.FILE_WRITE_DATA | Access.FILE_APPEND_DATA | Access.FILE_WRITE_EA
                | Access.FILE_WRITE_ATTRIBUTES | Access.DELETE | Access.WRITE_DAC
                | Access.WRITE_OWNER | Access.FILE_DELETE_CHILD)
VALID_ACCESS = 0xF31F01FF  # generic, MAXIMUM_ALLOWED, SACL, standard and file-specific bits (2.2.13.1)


def map_generic(mask: int) -> int:
    """Expand GENERIC_* bits into file rights (MS-SMB2 3.3.5.9 via MS-DTYP 2.4.3)."""
    if mask & Access.GENERIC_ALL:
        mask |= FILE_ALL_ACCESS
    if mask & Access.GENERIC_READ:
        mask |= FILE_GENERIC_READ
    if mask & Access.GENERIC_WRITE:
        mask |= FILE_GENERIC_WRITE
    if mask & Access.GENERIC_EXECUTE:
        mask |= FILE_GENERIC_EXECUTE
    return mask & ~(Access.GENERIC_ALL | Access.GENERIC_READ | Access.GENERIC_WRITE | Access.GENERIC_EXECUTE)


class ShareAccess(enum.IntFlag):
    READ = 0x1
    WRITE = 0x2
    DELETE = 0x4


class CreateAction(enum.IntEnum):
    SUPERSEDED = 0
    OPENED = 1
    CREATED = 2
    OVERWRITTEN = 3


class OplockLevel(enum.IntEnum):
    NONE = 0x00
    II = 0x01
    EXCLUSIVE = 0x08
    BATCH = 0x09
    LEASE = 0xFF


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """SMB2 CREATE Request, 2.2.13."""

    oplock_level: int
    impersonation_level: int
    desired_access: int
    file_attributes: int
    share_access: int
    disposition: int
    options: int
    name: str
    contexts: dict[bytes, bytes]

    @classmethod
    def parse(cls, msg: memoryview) -> "CreateRequest":
        (_, _, oplock, imp, _, _, access, attrs, share, disp, opts,
         name_off, name_len, ctx_off, ctx_len) = body(msg, _REQ, 57)
        name = utf16(buffer(msg, name_off, name_len)) if name_len else ""
        contexts = parse_contexts(buffer(msg, ctx_off, ctx_len)) if ctx_len else {}
        return cls(oplock, imp, access, attrs, share, disp, opts, name, contexts)


def parse_contexts(data: memoryview) -> dict[bytes, bytes]:
    """SMB2_CREATE_CONTEXT chain (2.2.13.2): Next, NameOffset/Length, DataOffset/Length, each relative to the context."""
    out: dict[bytes, bytes] = {}
    pos = 0
    while True:
        if pos + _CTX.size > len(data):
            raise SmbError(NtStatus.INVALID_PARAMETER, "create context truncated")
        nxt, name_off, name_len, _, data_off, data_len = _CTX.unpack_from(data, pos)
        end = pos + nxt if nxt else len(data)
        if nxt and (nxt % 8 or end > len(data)):
            raise SmbError(NtStatus.INVALID_PARAMETER, "bad create context Next")
        # The name follows the 16-byte header at once; data is 8-byte aligned (2.2.13.2).
        if name_off != _CTX.size or name_len < 4 or pos + name_off + name_len > end:
            raise SmbError(NtStatus.INVALID_PARAMETER, "bad create context name")
        if data_len and (data_off % 8 or pos + data_off + data_len > end or data_off < name_off + name_len):
            raise SmbError(NtStatus.INVALID_PARAMETER, "bad create context data")
        name = bytes(data[pos + name_off:pos + name_off + name_len])
        if name in out:
            raise SmbError(NtStatus.INVALID_PARAMETER, "duplicate create context")
        out[name] = bytes(data[pos + data_off:pos + data_off + data_len]) if data_len else b""
        if not nxt:
            return out
        pos = end


def encode_contexts(contexts: list[tuple[bytes, bytes]]) -> bytes:
    """Build an SMB2_CREATE_CONTEXT chain for a response (2.2.14.2)."""
    out = bytearray()
    for i, (name, data) in enumerate(contexts):
        name_off = _CTX.size
        data_off = pad8(name_off + len(name)) if data else 0
        size = (data_off + len(data)) if data else name_off + len(name)
        last = i == len(contexts) - 1
        nxt = 0 if last else pad8(size)
        entry = bytearray(_CTX.pack(nxt, name_off, len(name), 0, data_off, len(data)))
        entry += name
        if data:
            entry += b"\0" * (data_off - len(entry)) + data
        if not last:
            entry += b"\0" * (nxt - len(entry))
        out += entry
    return bytes(out)


@dataclass(frozen=True, slots=True)
class CreateResponse:
    """SMB2 CREATE Response, 2.2.14."""

    oplock_level: int
    flags: int
    action: int
    creation_time: int
    last_access_time: int
    last_write_time: int
    change_time: int
    allocation_size: int
    end_of_file: int
    attributes: int
    file_id: tuple[int, int]
    contexts: bytes = b""

    def pack(self) -> bytes:
        ctx_off = pad8(HEADER_SIZE + _RESP.size) if self.contexts else 0
        fixed = _RESP.pack(89, self.oplock_level, self.flags, self.action, self.creation_time,
                           self.last_access_time, self.last_write_time, self.change_time,
                           self.allocation_size, self.end_of_file, self.attributes, 0,
                           pack_file_id(*self.file_id), ctx_off, len(self.contexts))
        if not self.contexts:
            return fixed + b"\0"
        return fixed + b"\0" * (ctx_off - HEADER_SIZE - len(fixed)) + self.contexts


__all__ = ["CreateRequest", "CreateResponse", "file_id"]
