"""OPLOCK_BREAK messages: the server's notification (MS-SMB2 2.2.23.1), the client's
acknowledgment (2.2.24.1) and the server's response to it (2.2.25.1).

All three share one 24-byte layout: StructureSize (24), OplockLevel, Reserved, Reserved2,
FileId. Lease breaks (2.2.23.2, 2.2.24.2, 2.2.25.2) use the same command with other
StructureSizes (smbd.wire.lease); an acknowledgment of neither size is refused with
STATUS_INVALID_PARAMETER (by ``common.body``).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .common import body, file_id
from .header import Command, Flags, Header

_OPLOCK_BREAK = struct.Struct("<HBBI16s")
STRUCTURE_SIZE = 24
assert _OPLOCK_BREAK.size == STRUCTURE_SIZE

# 2.2.23.1: an unsolicited notification carries MessageId 0xFFFFFFFFFFFFFFFF, SessionId 0
# and TreeId 0 (so it cannot be signed; 3.3.4.6 encrypts it when the session requires it).
UNSOLICITED_MESSAGE_ID = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True, slots=True)
class OplockBreakAck:
    """SMB2 OPLOCK_BREAK Acknowledgment, MS-SMB2 2.2.24.1."""

    oplock_level: int
    file_id: tuple[int, int]

    @classmethod
    def parse(cls, msg: memoryview) -> "OplockBreakAck":
        _, level, _, _, fid = body(msg, _OPLOCK_BREAK, STRUCTURE_SIZE)
        return cls(level, file_id(fid))


def _pack(level: int, fid: tuple[int, int]) -> bytes:
    return _OPLOCK_BREAK.pack(STRUCTURE_SIZE, level, 0, 0, struct.pack("<QQ", *fid))


def oplock_break_response(level: int, fid: tuple[int, int]) -> bytes:
    """SMB2 OPLOCK_BREAK Response body, MS-SMB2 2.2.25.1: the level now granted."""
    return _pack(level, fid)


def oplock_break_notification(level: int, fid: tuple[int, int]) -> bytes:
    """A whole SMB2 Oplock Break Notification message (header 2.2.1.2 + body 2.2.23.1).

    ``level`` is the highest level the server accepts in the acknowledgment."""
    header = Header(credit_charge=0, status=0, command=Command.OPLOCK_BREAK, credits=0,
                    flags=Flags.SERVER_TO_REDIR, next_command=0, message_id=UNSOLICITED_MESSAGE_ID,
                    tree_id=0, async_id=0, session_id=0, signature=b"\0" * 16)
    return header.pack() + _pack(level, fid)
