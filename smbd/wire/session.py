"""SESSION_SETUP (2.2.5, 2.2.6), LOGOFF (2.2.7, 2.2.8), TREE_CONNECT (2.2.9, 2.2.10), TREE_DISCONNECT (2.2.11, 2.2.12)."""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from smbd.status import NtStatus, SmbError

from .common import body, buffer, utf16
from .header import HEADER_SIZE

_SS_REQ = struct.Struct("<HBBIIHHQ")
_SS_RESP = struct.Struct("<HHHH")
_TC_REQ = struct.Struct("<HHHH")
_TC_RESP = struct.Struct("<HBBIII")
_EMPTY = struct.Struct("<HH")

SESSION_FLAG_BINDING = 0x01


class SessionFlags(enum.IntFlag):
    IS_GUEST = 0x0001
    IS_NULL = 0x0002
    ENCRYPT_DATA = 0x0004


@dataclass(frozen=True, slots=True)
class SessionSetupRequest:
    """SMB2 SESSION_SETUP Request, 2.2.5."""

    flags: int
    security_mode: int
    capabilities: int
    previous_session_id: int
    token: bytes

    @classmethod
    def parse(cls, msg: memoryview) -> "SessionSetupRequest":
        _, flags, mode, caps, _, off, length, prev = body(msg, _SS_REQ, 25)
        return cls(flags, mode, caps, prev, bytes(buffer(msg, off, length)))


def session_setup_response(session_flags: int, token: bytes) -> bytes:
    """SMB2 SESSION_SETUP Response, 2.2.6."""
    offset = HEADER_SIZE + _SS_RESP.size if token else 0
    return _SS_RESP.pack(9, session_flags, offset, len(token)) + (token or b"\0")


def parse_empty(msg: memoryview, structure_size: int = 4) -> None:
    """LOGOFF, TREE_DISCONNECT, ECHO and CANCEL requests: StructureSize 4 and Reserved (2.2.7, 2.2.11, 2.2.28, 2.2.30)."""
    body(msg, _EMPTY, structure_size)


def empty_response() -> bytes:
    """LOGOFF, TREE_DISCONNECT, FLUSH, LOCK and ECHO responses: StructureSize 4, Reserved."""
    return _EMPTY.pack(4, 0)


TREE_CONNECT_FLAG_EXTENSION_PRESENT = 0x0004
_TC_EXTENSION = struct.Struct("<IHHI")  # 2.2.9.1: TreeConnectContextOffset, Count, Reserved, Reserved


@dataclass(frozen=True, slots=True)
class TreeConnectRequest:
    """SMB2 TREE_CONNECT Request, 2.2.9; the path is "\\\\server\\share"."""

    flags: int
    path: str

    @classmethod
    def parse(cls, msg: memoryview, dialect: int) -> "TreeConnectRequest":
        _, flags, off, length = body(msg, _TC_REQ, 9)
        if dialect == 0x0311 and flags & TREE_CONNECT_FLAG_EXTENSION_PRESENT:
            # 2.2.9.1: PathOffset is then relative to the extension, which starts at the buffer.
            ext_at = HEADER_SIZE + _TC_REQ.size
            off += ext_at
        return cls(flags, utf16(buffer(msg, off, length)))

    @property
    def share_name(self) -> str:
        path = self.path
        if not path.startswith("\\\\"):
            raise SmbError(NtStatus.BAD_NETWORK_NAME, "tree path not \\\\server\\share")
        parts = path[2:].split("\\")
        if len(parts) != 2 or not parts[1]:
            raise SmbError(NtStatus.BAD_NETWORK_NAME, "tree path not \\\\server\\share")
        return parts[1]


class ShareType(enum.IntEnum):
    DISK = 0x01
    PIPE = 0x02
    PRINT = 0x03


class ShareFlags(enum.IntFlag):
    MANUAL_CACHING = 0x0000
    NO_CACHING = 0x0030
    DFS = 0x0001
    ENCRYPT_DATA = 0x8000


class ShareCaps(enum.IntFlag):
    DFS = 0x08
    CONTINUOUS_AVAILABILITY = 0x10
    SCALEOUT = 0x20
    CLUSTER = 0x40
    ASYMMETRIC = 0x80


def tree_connect_response(share_type: int, share_flags: int, capabilities: int, maximal_access: int) -> bytes:
    """SMB2 TREE_CONNECT Response, 2.2.10."""
    return _TC_RESP.pack(16, share_type, 0, share_flags, capabilities, maximal_access)
