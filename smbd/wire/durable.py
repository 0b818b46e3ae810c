"""Durable handle create contexts, MS-SMB2 2.2.13.2.3-2.2.13.2.12 and 2.2.14.2.3-2.2.14.2.12.

- DHnQ: SMB2_CREATE_DURABLE_HANDLE_REQUEST (2.2.13.2.3), 16 reserved bytes; its response
  (2.2.14.2.3) is 8 reserved bytes.
- DHnC: SMB2_CREATE_DURABLE_HANDLE_RECONNECT (2.2.13.2.4): the FileId to reclaim.
- DH2Q: SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2 (2.2.13.2.11): Timeout (ms), Flags (persistent),
  8 reserved bytes, CreateGuid; its response (2.2.14.2.12): Timeout, Flags.
- DH2C: SMB2_CREATE_DURABLE_HANDLE_RECONNECT_V2 (2.2.13.2.12): FileId, CreateGuid, Flags.
"""
from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from smbd.status import NtStatus, SmbError

DHNQ = b"DHnQ"
DHNC = b"DHnC"
DH2Q = b"DH2Q"
DH2C = b"DH2C"

DHANDLE_FLAG_PERSISTENT = 0x2  # SMB2_DHANDLE_FLAG_PERSISTENT (2.2.13.2.11, 2.2.13.2.12)

_DH2Q = struct.Struct("<II8s16s")
_DH2Q_RESPONSE = struct.Struct("<II")
_DH2C = struct.Struct("<QQ16sI")
_FILE_ID = struct.Struct("<QQ")


def _invalid(what: str) -> SmbError:
    return SmbError(NtStatus.INVALID_PARAMETER, what)


def parse_dhnq(data: bytes) -> None:
    """DHnQ carries 16 reserved bytes; any other length is malformed (3.3.5.9.6)."""
    if len(data) != 16:
        raise _invalid("bad DHnQ length")


def parse_dhnc(data: bytes) -> tuple[int, int]:
    """DHnC: the FileId (Persistent, Volatile) of the durable open to reconnect."""
    if len(data) != _FILE_ID.size:
        raise _invalid("bad DHnC length")
    return _FILE_ID.unpack(data)


@dataclass(frozen=True, slots=True)
class DurableV2Request:
    """SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2, 2.2.13.2.11."""

    timeout_ms: int
    flags: int
    create_guid: uuid.UUID

    @classmethod
    def parse(cls, data: bytes) -> "DurableV2Request":
        if len(data) != _DH2Q.size:
            raise _invalid("bad DH2Q length")
        timeout, flags, _, guid = _DH2Q.unpack(data)
        return cls(timeout, flags, uuid.UUID(bytes_le=guid))


@dataclass(frozen=True, slots=True)
class DurableV2Reconnect:
    """SMB2_CREATE_DURABLE_HANDLE_RECONNECT_V2, 2.2.13.2.12."""

    file_id: tuple[int, int]
    create_guid: uuid.UUID
    flags: int

    @classmethod
    def parse(cls, data: bytes) -> "DurableV2Reconnect":
        if len(data) != _DH2C.size:
            raise _invalid("bad DH2C length")
        persistent, volatile, guid, flags = _DH2C.unpack(data)
        return cls((persistent, volatile), uuid.UUID(bytes_le=guid), flags)


def dhnq_response() -> bytes:
    """SMB2_CREATE_DURABLE_HANDLE_RESPONSE, 2.2.14.2.3."""
    return b"\0" * 8


def dh2q_response(timeout_ms: int, flags: int = 0) -> bytes:
    """SMB2_CREATE_DURABLE_HANDLE_RESPONSE_V2, 2.2.14.2.12."""
    return _DH2Q_RESPONSE.pack(timeout_ms, flags)
