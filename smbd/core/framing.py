"""Direct TCP transport framing, MS-SMB2 2.1: a 4-byte header (zero byte, 24-bit big-endian length).

``FrameBuffer`` takes bytes (or lends its memory to the socket's reads) and yields whole
SMB2 messages; it never reads a socket itself.
"""
from __future__ import annotations

from smbd.status import ProtocolViolation

MAX_FRAME = 0xFFFFFF  # the 24-bit StreamProtocolLength


def frame(message_len: int) -> bytes:
    """The 4-byte transport header for a message of ``message_len`` bytes."""
    if message_len > MAX_FRAME:
        raise ValueError("SMB2 message larger than the direct TCP frame limit")
    return message_len.to_bytes(4, "big")


class FrameBuffer:
    """The same reassembly for an ``asyncio.BufferedProtocol``: the socket reads straight
    into our memory, and a large message's body lands in its own buffer with no copy.

    Small messages arrive many to a read through a staging area and are copied out (a few
    hundred bytes each). When a message of ``direct_min`` bytes or more begins (or one that
    would not fit the staging area), its own
    bytearray is allocated, what staging already holds of it is moved there, and
    :meth:`get_buffer` hands out the rest of that bytearray until it is full: an 8 MiB
    WRITE is read once by the kernel into the buffer the handler writes to disk from.
    """

    def __init__(self, max_message: int, *, staging: int = 256 * 1024, direct_min: int = 64 * 1024):
        if not 4 <= direct_min <= staging:
            raise ValueError("direct_min must be between 4 and the staging size")
        self.max_message = max_message
        self.direct_min = direct_min
        self._staging = bytearray(staging)
        self._view = memoryview(self._staging)
        self._start = 0  # first unconsumed byte in staging
        self._end = 0  # end of the bytes read into staging
        self._big: bytearray | None = None  # the large message being filled directly
        self._big_filled = 0

    def get_buffer(self) -> memoryview:
        if self._big is not None:
            return memoryview(self._big)[self._big_filled:]
        if self._end == len(self._staging):  # only a message's head is left: move it to the front
            self._compact()
        return self._view[self._end:]

    def advance(self, nbytes: int) -> list[bytes | bytearray]:
        """``nbytes`` were written into the last buffer handed out; the whole messages now."""
        if self._big is not None:
            self._big_filled += nbytes
            if self._big_filled < len(self._big):
                return []
            done, self._big = self._big, None
            return [done, *self._parse()]
        self._end += nbytes
        return self._parse()

    def feed(self, data: bytes) -> list[bytes | bytearray]:
        """Bytes read elsewhere (the first NEGOTIATE smbdd read before the hand-over)."""
        out: list[bytes | bytearray] = []
        pos = 0
        while pos < len(data):
            buf = self.get_buffer()
            n = min(len(buf), len(data) - pos)
            buf[:n] = data[pos:pos + n]
            del buf
            out += self.advance(n)
            pos += n
        return out

    def _parse(self) -> list[bytes | bytearray]:
        out: list[bytes | bytearray] = []
        buf = self._staging
        while self._end - self._start >= 4:
            s = self._start
            if buf[s] != 0:
                raise ProtocolViolation("non-zero byte in direct TCP header")
            length = int.from_bytes(buf[s + 1:s + 4], "big")
            if length > self.max_message:
                raise ProtocolViolation(f"message of {length} bytes exceeds {self.max_message}")
            have = self._end - s - 4
            if have >= length:
                out.append(bytes(buf[s + 4:s + 4 + length]))
                self._start = s + 4 + length
                continue
            if length >= self.direct_min or 4 + length > len(self._staging) - s:
                self._big = bytearray(length)
                self._big[:have] = self._view[s + 4:self._end]
                self._big_filled = have
                self._start = self._end = 0
            break
        if self._start == self._end:
            self._start = self._end = 0
        return out

    def pending(self) -> bytes:
        """The bytes received but not yet returned as a message, framed as they arrived:
        what a channel moving to another process must take along (smbd.server.channel_move)."""
        if self._big is not None:
            return frame(len(self._big)) + bytes(self._big[:self._big_filled])
        return bytes(self._staging[self._start:self._end])

    def needed(self) -> int:
        """Bytes still missing for the message being assembled (0 when unknown)."""
        if self._big is not None:
            return len(self._big) - self._big_filled
        if self._end - self._start < 4:
            return 0
        return 4 + int.from_bytes(self._staging[self._start + 1:self._start + 4], "big") - (self._end - self._start)

    def _compact(self) -> None:
        n = self._end - self._start
        self._staging[:n] = self._view[self._start:self._end]
        self._start, self._end = 0, n
