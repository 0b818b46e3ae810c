"""Direct TCP transport (MS-SMB2 2.1) for a socket smbdd handed to this worker."""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable

from smbd.core.framing import FrameDecoder, frame
from smbd.status import ProtocolViolation

log = logging.getLogger("smbd.tcp")

MAX_IN_FLIGHT = 64  # messages being processed before we stop reading (back-pressure)


class TcpTransport(asyncio.Protocol):
    """Frames and unframes SMB2 messages; flow control both ways."""

    rdma = None
    max_message = None  # direct TCP carries any message up to MaxTransactSize

    def __init__(self, peer: str, max_message: int, on_message: Callable[[bytes], None],
                 on_lost: Callable[[], None]):
        self.peer = peer
        self._decoder = FrameDecoder(max_message)
        self._on_message = on_message
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        transport.set_write_buffer_limits(high=4 * 1024 * 1024)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            for message in self._decoder.feed(data):
                self._on_message(message)
        except ProtocolViolation as e:
            log.warning("%s: %s; closing", self.peer, e)
            self.close()

    def feed_initial(self, data: bytes) -> None:
        """The bytes smbdd read before handing over the socket (the first NEGOTIATE)."""
        self.data_received(data)

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
        self._transport.writelines([frame(size), *parts])
        await self._can_write.wait()

    def pause_reading(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.resume_reading()

    def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.close()
