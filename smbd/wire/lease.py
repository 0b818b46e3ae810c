"""SMB2 leases on the wire: the lease create contexts and the lease break messages.

- SMB2_CREATE_REQUEST_LEASE (RqLs) v1, MS-SMB2 2.2.13.2.8, and v2, 2.2.13.2.10; the
  response context SMB2_CREATE_RESPONSE_LEASE v1/v2 (2.2.14.2.10, 2.2.14.2.11) has the same
  layouts under the same name.
- Lease Break Notification, 2.2.23.2; Lease Break Acknowledgment, 2.2.24.2; Lease Break
  Response, 2.2.25.2. They travel as the OPLOCK_BREAK command, told apart from the oplock
  messages (24 bytes) by their StructureSize.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from smbd.status import NtStatus, SmbError

from .common import body
from .header import HEADER_SIZE, Command, Flags, Header

LEASE_CONTEXT = b"RqLs"

_LEASE_V1 = struct.Struct("<16sIIQ")  # LeaseKey, LeaseState, LeaseFlags, LeaseDuration
_LEASE_V2 = struct.Struct("<16sIIQ16sHH")  # ... ParentLeaseKey, Epoch, Reserved
_BREAK_NOTIFICATION = struct.Struct("<HHI16sIIIII")
_BREAK_ACK = struct.Struct("<HHI16sIQ")
BREAK_NOTIFICATION_SIZE = 44
BREAK_ACK_SIZE = 36
assert _BREAK_NOTIFICATION.size == BREAK_NOTIFICATION_SIZE and _BREAK_ACK.size == BREAK_ACK_SIZE
assert _LEASE_V1.size == 32 and _LEASE_V2.size == 52

UNSOLICITED_MESSAGE_ID = 0xFFFFFFFFFFFFFFFF


class LeaseState(enum.IntFlag):
    """SMB2_LEASE_* caching bits (2.2.13.2.8)."""

    NONE = 0
    READ = 0x1
    HANDLE = 0x2
    WRITE = 0x4


ALL_LEASE_BITS = LeaseState.READ | LeaseState.HANDLE | LeaseState.WRITE


class LeaseFlags(enum.IntFlag):
    BREAK_IN_PROGRESS = 0x2  # SMB2_LEASE_FLAG_BREAK_IN_PROGRESS (response only)
    PARENT_LEASE_KEY_SET = 0x4  # SMB2_LEASE_FLAG_PARENT_LEASE_KEY_SET (v2)


NOTIFY_BREAK_LEASE_FLAG_ACK_REQUIRED = 0x1  # 2.2.23.2 Flags


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """SMB2_CREATE_REQUEST_LEASE (v1, 2.2.13.2.8) or _V2 (2.2.13.2.10), told apart by length."""

    key: bytes
    state: int
    flags: int
    version: int
    parent_key: bytes = b"\0" * 16
    epoch: int = 0

    @classmethod
    def parse(cls, data: bytes) -> "LeaseRequest":
        # 3.3.5.9.8/11: a context of any other size is malformed.
        if len(data) == _LEASE_V2.size:
            key, state, flags, _, parent, epoch, _ = _LEASE_V2.unpack(data)
            return cls(key, state, flags, 2, parent, epoch)
        if len(data) == _LEASE_V1.size:
            key, state, flags, _ = _LEASE_V1.unpack(data)
            return cls(key, state, flags, 1)
        raise SmbError(NtStatus.INVALID_PARAMETER, "bad lease context length")

    @property
    def has_parent(self) -> bool:
        return self.version == 2 and bool(self.flags & LeaseFlags.PARENT_LEASE_KEY_SET)


def lease_response_context(version: int, key: bytes, state: int, flags: int = 0,
                           parent_key: bytes | None = None, epoch: int = 0) -> bytes:
    """SMB2_CREATE_RESPONSE_LEASE (2.2.14.2.10) or _V2 (2.2.14.2.11): the context data."""
    if version == 2:
        if parent_key is not None:
            flags |= LeaseFlags.PARENT_LEASE_KEY_SET
        return _LEASE_V2.pack(key, state, flags, 0, parent_key or b"\0" * 16, epoch & 0xFFFF, 0)
    return _LEASE_V1.pack(key, state, flags & ~LeaseFlags.PARENT_LEASE_KEY_SET, 0)


def lease_break_notification(key: bytes, current: int, new: int, *, epoch: int = 0,
                             ack_required: bool = True) -> bytes:
    """A whole Lease Break Notification message: header (2.2.1.2) + body (2.2.23.2).

    Unsolicited, like the oplock break: MessageId all ones, SessionId and TreeId 0.
    NewEpoch is 0 for v1 leases; BreakReason, AccessMaskHint and ShareMaskHint are 0."""
    header = Header(credit_charge=0, status=0, command=Command.OPLOCK_BREAK, credits=0,
                    flags=Flags.SERVER_TO_REDIR, next_command=0, message_id=UNSOLICITED_MESSAGE_ID,
                    tree_id=0, async_id=0, session_id=0, signature=b"\0" * 16)
    flags = NOTIFY_BREAK_LEASE_FLAG_ACK_REQUIRED if ack_required else 0
    return header.pack() + _BREAK_NOTIFICATION.pack(BREAK_NOTIFICATION_SIZE, epoch & 0xFFFF, flags, key,
                                                    current, new, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class LeaseBreakAck:
    """SMB2 Lease Break Acknowledgment, 2.2.24.2."""

    key: bytes
    state: int

    @classmethod
    def parse(cls, msg: memoryview) -> "LeaseBreakAck":
        _, _, _, key, state, _ = body(msg, _BREAK_ACK, BREAK_ACK_SIZE)
        return cls(key, state)


def lease_break_response(key: bytes, state: int) -> bytes:
    """SMB2 Lease Break Response body, 2.2.25.2 (same layout as the acknowledgment)."""
    return _BREAK_ACK.pack(BREAK_ACK_SIZE, 0, 0, key, state, 0)


def break_structure_size(msg: memoryview) -> int:
    """The StructureSize of an OPLOCK_BREAK request: 24 for an oplock ack, 36 for a lease ack."""
    if len(msg) < HEADER_SIZE + 2:
        raise SmbError(NtStatus.INVALID_PARAMETER, "request body truncated")
    return struct.unpack_from("<H", msg, HEADER_SIZE)[0]
