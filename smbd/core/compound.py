"""Compounded requests and responses, MS-SMB2 3.2.4.1.4 / 3.3.5.2.7 / 3.3.4.1.3."""
from __future__ import annotations

import struct

from smbd.status import ProtocolViolation
from smbd.wire.header import HEADER_SIZE, NEXT_COMMAND_OFFSET

_U32 = struct.Struct("<I")


def split(message: memoryview) -> list[memoryview]:
    """The requests of a (possibly compounded) message, as views into it.

    Every NextCommand must point forward, 8-byte aligned, to a full header inside the
    message; anything else (including a loop) is a protocol violation. The count is
    bounded by the message length, since each hop moves forward at least 64 bytes.
    """
    out = []
    pos = 0
    total = len(message)
    while True:
        if pos + HEADER_SIZE > total:
            raise ProtocolViolation("compound element shorter than a header")
        (nxt,) = _U32.unpack_from(message, pos + NEXT_COMMAND_OFFSET)
        if nxt == 0:
            out.append(message[pos:])
            return out
        if nxt % 8 or nxt < HEADER_SIZE or pos + nxt > total:
            raise ProtocolViolation(f"bad NextCommand {nxt}")
        out.append(message[pos:pos + nxt])
        pos += nxt


def join(responses: list[bytearray]) -> None:
    """Pad each response of a compound to 8 bytes and set its NextCommand, in place.

    The last one is padded too (NextCommand 0), as Windows and Samba send it: smbtorture
    smb2.compound.compound-padding expects a 3-byte READ as the last response to be 24 bytes
    of body. A single response is left as it is. Called before signing: each element is
    signed over its own bytes including padding.
    """
    if len(responses) < 2:
        return
    for resp in responses:
        resp += b"\0" * (-len(resp) % 8)
    for resp in responses[:-1]:
        _U32.pack_into(resp, NEXT_COMMAND_OFFSET, len(resp))
