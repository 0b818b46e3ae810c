"""Direct TCP transport framing, MS-SMB2 2.1: a 4-byte header (zero byte, 24-bit big-endian length).

``FrameDecoder`` is fed bytes and yields whole SMB2 messages; it never reads a socket.
"""
from __future__ import annotations

from smbd.status import ProtocolViolation

MAX_FRAME = 0xFFFFFF  # the 24-bit StreamProtocolLength


def frame(message_len: int) -> bytes:
    """The 4-byte transport header for a message of ``message_len`` bytes."""
    if message_len > MAX_FRAME:
        raise ValueError("SMB2 message larger than the direct TCP frame limit")
    return message_len.to_bytes(4, "big")


class FrameDecoder:
    """Reassembles length-prefixed SMB2 messages from a byte stream."""

    def __init__(self, max_message: int):
        self.max_message = max_message
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= 4:
            if self._buf[0] != 0:
                raise ProtocolViolation("non-zero byte in direct TCP header")
            length = int.from_bytes(self._buf[1:4], "big")
            if length > self.max_message:
                raise ProtocolViolation(f"message of {length} bytes exceeds {self.max_message}")
            if len(self._buf) < 4 + length:
                break
            out.append(bytes(self._buf[4:4 + length]))
            del self._buf[:4 + length]
        return out

    def needed(self) -> int:
        """Bytes still missing for the message being assembled (0 when unknown)."""
        if len(self._buf) < 4:
            return 0
        return 4 + int.from_bytes(self._buf[1:4], "big") - len(self._buf)
