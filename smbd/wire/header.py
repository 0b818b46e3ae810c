"""SMB2 packet header, MS-SMB2 2.2.1.1 (async) and 2.2.1.2 (sync)."""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from smbd.status import ProtocolViolation

PROTOCOL_ID = b"\xfeSMB"
TRANSFORM_ID = b"\xfdSMB"
COMPRESSION_ID = b"\xfcSMB"
SMB1_ID = b"\xffSMB"
HEADER_SIZE = 64


class Command(enum.IntEnum):
    NEGOTIATE = 0x0000
    SESSION_SETUP = 0x0001
    LOGOFF = 0x0002
    TREE_CONNECT = 0x0003
    TREE_DISCONNECT = 0x0004
    CREATE = 0x0005
    CLOSE = 0x0006
    FLUSH = 0x0007
    READ = 0x0008
    WRITE = 0x0009
    LOCK = 0x000A
    IOCTL = 0x000B
    CANCEL = 0x000C
    ECHO = 0x000D
    QUERY_DIRECTORY = 0x000E
    CHANGE_NOTIFY = 0x000F
    QUERY_INFO = 0x0010
    SET_INFO = 0x0011
    OPLOCK_BREAK = 0x0012


class Flags:
    """Header Flags bits (2.2.1.2): plain ints, not an IntFlag, because every message tests
    them several times and each IntFlag operation builds an enum member (microseconds each
    on the host, tens under the lab's emulation)."""

    SERVER_TO_REDIR = 0x00000001
    ASYNC_COMMAND = 0x00000002
    RELATED_OPERATIONS = 0x00000004
    SIGNED = 0x00000008
    PRIORITY_MASK = 0x00000070
    DFS_OPERATIONS = 0x10000000
    REPLAY_OPERATION = 0x20000000


_ECHOED_FLAGS = Flags.ASYNC_COMMAND | Flags.RELATED_OPERATIONS | Flags.PRIORITY_MASK
_NO_SIGNATURE = bytes(16)
_HEADER = struct.Struct("<4sHHIHHIIQQQ16s")
assert _HEADER.size == HEADER_SIZE


@dataclass(frozen=True, slots=True)
class Header:
    """MS-SMB2 2.2.1: the 64-byte header shared by requests and responses.

    ``async_id`` is set when Flags has ASYNC_COMMAND; then the 8 bytes at offset 32
    are the AsyncId (2.2.1.1) instead of Reserved + TreeId (2.2.1.2).
    """

    credit_charge: int
    status: int  # ChannelSequence/Reserved in 3.x requests
    command: int
    credits: int  # CreditRequest in requests, CreditResponse in responses
    flags: int
    next_command: int
    message_id: int
    tree_id: int
    async_id: int
    session_id: int
    signature: bytes

    @classmethod
    def parse(cls, data: memoryview | bytes) -> "Header":
        if len(data) < HEADER_SIZE:
            raise ProtocolViolation("SMB2 message shorter than its header")
        (pid, size, charge, status, command, credits, flags, next_command, message_id,
         async_or_tree, session_id, signature) = _HEADER.unpack_from(data)
        if pid != PROTOCOL_ID:
            raise ProtocolViolation("bad SMB2 ProtocolId")
        if size != HEADER_SIZE:
            raise ProtocolViolation("bad SMB2 header StructureSize")
        if flags & Flags.ASYNC_COMMAND:
            tree_id, async_id = 0, async_or_tree
        else:
            tree_id, async_id = async_or_tree >> 32, 0
        return cls(charge, status, command, credits, flags, next_command, message_id,
                   tree_id, async_id, session_id, bytes(signature))

    @property
    def is_async(self) -> bool:
        return bool(self.flags & Flags.ASYNC_COMMAND)

    @property
    def channel_sequence(self) -> int:
        """3.x requests carry ChannelSequence in the low 16 bits of Status (2.2.1.2)."""
        return self.status & 0xFFFF

    def pack(self) -> bytes:
        if self.flags & Flags.ASYNC_COMMAND:
            word = self.async_id
        else:
            word = (self.tree_id & 0xFFFFFFFF) << 32
        return _HEADER.pack(PROTOCOL_ID, HEADER_SIZE, self.credit_charge, self.status,
                            self.command, self.credits, self.flags, self.next_command,
                            self.message_id, word, self.session_id, self.signature)

    def response(self, status: int, credits: int, *, session_id: int | None = None,
                 tree_id: int | None = None) -> "Header":
        """The header of the response to this request (2.2.1; 3.3.4.1); the session and tree
        ids are the request's unless given (a new session or tree)."""
        return Header(self.credit_charge, status, self.command, credits,
                      (self.flags & _ECHOED_FLAGS) | Flags.SERVER_TO_REDIR, 0, self.message_id,
                      self.tree_id if tree_id is None else tree_id, self.async_id,
                      self.session_id if session_id is None else session_id, _NO_SIGNATURE)


SIGNATURE_OFFSET = 48
FLAGS_OFFSET = 16
NEXT_COMMAND_OFFSET = 20
