"""Direct TCP transport (MS-SMB2 2.1) for a socket smbdd handed to this worker."""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import struct
import termios
from typing import Callable

from smbd.core.framing import FrameBuffer, frame
from smbd.status import ProtocolViolation

log = logging.getLogger("smbd.tcp")

MAX_IN_FLIGHT = 64  # messages being processed before we stop reading (back-pressure)
_JOIN_BELOW = 64 * 1024  # response parts smaller than this are joined before writing
_OUTQ = struct.Struct("i")  # SIOCOUTQ (= TIOCOUTQ): bytes the peer has not acknowledged yet
_TCPI_RTO = struct.Struct("@8xI")  # struct tcp_info (linux/tcp.h): tcpi_rto in microseconds


class TcpTransport(asyncio.BufferedProtocol):
    """Frames and unframes SMB2 messages; flow control both ways. The socket is read
    straight into the message buffers (:class:`FrameBuffer`), so a WRITE's data is not
    copied in user space before it goes to the disk."""

    rdma = None
    max_message = None  # direct TCP carries any message up to MaxTransactSize

    def __init__(self, peer: str, max_message: int, on_message: Callable[[bytes], None],
                 on_lost: Callable[[], None], start_paused: bool = False):
        self.peer = peer
        self._start_paused = start_paused  # a moved channel reads once its state is back
        self._frames = FrameBuffer(max_message)
        self._on_message = on_message
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._closed = False
        self._sock: socket.socket | None = None
        self.written = 0  # bytes handed to the socket, frame headers included (break_delivery)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self._sock = sock
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        transport.set_write_buffer_limits(high=4 * 1024 * 1024)  # type: ignore[attr-defined]
        if self._start_paused:
            transport.pause_reading()  # type: ignore[attr-defined]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._frames.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._deliver(self._frames.advance, nbytes)

    def feed_initial(self, data: bytes) -> None:
        """The bytes smbdd read before handing over the socket (the first NEGOTIATE)."""
        self._deliver(self._frames.feed, data)

    def _deliver(self, step, arg) -> None:
        try:
            for message in step(arg):
                self._on_message(message)
        except ProtocolViolation as e:
            log.warning("%s: %s; closing", self.peer, e)
            self.close()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._can_write.set()
        self._on_lost()

    async def send(self, parts: list) -> None:
        if self._closed or self._transport is None:
            raise ConnectionResetError("connection closed")
        size = sum(len(p) for p in parts)
        self.written += 4 + size
        # writelines() joins everything into one new bytes object (Python 3.11): a copy of
        # every READ's data. Small parts are joined (one segment), a large one is written
        # as it is, so the kernel takes it straight from the buffer the disk filled.
        small: list = [frame(size)]
        for part in parts:
            if len(part) < _JOIN_BELOW:
                small.append(part)
                continue
            self._transport.write(b"".join(small))
            small = []
            self._transport.write(part)
        if small:
            self._transport.write(b"".join(small))
        await self._can_write.wait()

    def delivered(self) -> int | None:
        """Bytes of ``written`` the peer's TCP has acknowledged: what is neither in asyncio's
        buffer nor in the kernel's send queue. None where the kernel will not tell; 0 once
        closed, since what was still queued then will never arrive."""
        if self._closed:
            return 0
        if self._sock is None or self._transport is None:
            return None
        try:
            queued = _OUTQ.unpack(fcntl.ioctl(self._sock.fileno(), termios.TIOCOUTQ, bytes(_OUTQ.size)))[0]
        except OSError:
            return None
        return self.written - self._transport.get_write_buffer_size() - queued

    def retransmit_timeout(self) -> float | None:
        """The connection's current TCP retransmission timeout in seconds (TCP_INFO)."""
        if self._sock is None or self._closed:
            return None
        try:
            info = self._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_RTO.size)
        except OSError:
            return None
        return _TCPI_RTO.unpack_from(info)[0] / 1e6 if len(info) >= _TCPI_RTO.size else None

    def pause_reading(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.resume_reading()

    def detach(self) -> tuple[int, bytes]:
        """Stop reading; a duplicate of the socket and the bytes read but not delivered yet,
        for another worker to go on with the connection (smbd.server.channel_move). A
        ``close`` afterwards only drops our descriptor: no FIN, the other one keeps it."""
        if self._closed or self._sock is None or self._transport is None:
            raise ConnectionResetError("connection closed")
        if self._transport.get_write_buffer_size():
            raise BlockingIOError("responses still being written")
        self._transport.pause_reading()
        return os.dup(self._sock.fileno()), self._frames.pending()

    def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.close()
