"""Direct TCP transport (MS-SMB2 2.1) for a socket smbdd handed to this worker."""
from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import logging
import os
import select
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
_SENDFILE_THREADS = 8  # file spans being sent at once, over all of a worker's connections
_sendfile_pool: concurrent.futures.ThreadPoolExecutor | None = None


class FileSpan:
    """The last part of a response: ``length`` bytes of a file at ``offset``, which the kernel
    sends from the page cache (sendfile) with no copy through Python. Only where nothing has
    to read the bytes: no signature, no encryption, no compound. It holds its own duplicate
    of the descriptor, so a CLOSE of the handle before the send cannot make it send from
    another file that got the number; whoever drops the response closes it."""

    __slots__ = ("fd", "offset", "length")

    def __init__(self, fd: int, offset: int, length: int):
        self.fd = -1  # until the dup succeeds (EMFILE): nothing for __del__ to close
        self.fd = os.dup(fd)
        self.offset = offset
        self.length = length

    def __len__(self) -> int:
        return self.length

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:  # a response dropped on a path that did not close it
        self.close()


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    # Its own threads, not the I/O pool's: a client that reads slowly holds one for as long
    # as its socket stays full, and must not keep other clients' disk work waiting.
    global _sendfile_pool
    if _sendfile_pool is None:
        _sendfile_pool = concurrent.futures.ThreadPoolExecutor(_SENDFILE_THREADS, thread_name_prefix="sendfile")
    return _sendfile_pool


class TcpTransport(asyncio.BufferedProtocol):
    """Frames and unframes SMB2 messages; flow control both ways. The socket is read
    straight into the message buffers (:class:`FrameBuffer`), so a WRITE's data is not
    copied in user space before it goes to the disk."""

    rdma = None
    max_message = None  # direct TCP carries any message up to MaxTransactSize
    sends_file_spans = True  # a response may end in a FileSpan

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
        self.sendfile_bytes = 0  # READ data the kernel sent straight from the file (smbdd status)
        self._span_left = 0  # of a FileSpan being sent: bytes not in the kernel's queue yet

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
        """One message. The caller (SmbConnection.send_lock) sends one at a time."""
        if self._closed or self._transport is None:
            raise ConnectionResetError("connection closed")
        size = sum(len(p) for p in parts)
        self.written += 4 + size
        if parts and isinstance(parts[-1], FileSpan):
            await self._send_with_file(frame(size) + b"".join(parts[:-1]), parts[-1])
            return
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

    async def _send_with_file(self, head: bytes, span: FileSpan) -> None:
        """``head`` and then the file's bytes, written by a helper thread straight to the
        socket once asyncio's own buffer is empty (nothing may come between them)."""
        assert self._transport is not None and self._sock is not None
        transport = self._transport
        while transport.get_write_buffer_size() and not self._closed:
            # With a zero high-water mark asyncio pauses us now and resumes once it is empty.
            transport.set_write_buffer_limits(high=0)
            await self._can_write.wait()
        transport.set_write_buffer_limits(high=4 * 1024 * 1024)
        if self._closed:
            raise ConnectionResetError("connection closed")
        # A duplicate for the thread: if the connection closes meanwhile, the number it
        # writes to cannot be reused for another file before it has stopped.
        sock = socket.socket(fileno=os.dup(self._sock.fileno()))
        self._span_left = len(head) + span.length
        try:
            sent = await asyncio.get_running_loop().run_in_executor(_pool(), self._write_span, sock, head, span)
        except OSError as e:
            if not self._closed:
                log.warning("%s: sending %d bytes of a file failed (%s); closing", self.peer, span.length, e)
            self.close()
            raise ConnectionResetError("connection closed") from e
        finally:
            self._span_left = 0
            sock.close()
        self.sendfile_bytes += sent

    def _write_span(self, sock: socket.socket, head: bytes, span: FileSpan) -> int:
        """On a helper thread: the whole of ``head`` and ``span``; returns the bytes sendfile sent.
        The file may have shrunk since its size was read: the rest is sent as zeros, since
        the header already promised the client that many bytes (Samba does the same)."""
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        view = memoryview(head)
        while view:  # MSG_MORE: the header leaves in the same segment as the first data
            view = view[self._wait_and(poller, lambda: sock.send(view, socket.MSG_MORE)):]
            self._span_left = len(view) + span.length
        offset, left = span.offset, span.length
        while left:
            n = self._wait_and(poller, lambda: os.sendfile(sock.fileno(), span.fd, offset, left))
            if n == 0:
                break  # end of file
            offset += n
            left -= n
            self._span_left = left
        zeros = memoryview(bytes(min(left, 65536)))
        while self._span_left:
            self._span_left -= self._wait_and(poller, lambda: sock.send(zeros[:self._span_left]))
        return span.length - left

    def _wait_and(self, poller: select.poll, write: Callable[[], int]) -> int:
        while True:
            if self._closed:
                raise ConnectionResetError("connection closed")
            try:
                return write()
            except BlockingIOError:
                poller.poll(1000)  # the peer is not reading: look at _closed once a second

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
        return self.written - self._transport.get_write_buffer_size() - self._span_left - queued

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
        if self._transport.get_write_buffer_size() or self._span_left:
            raise BlockingIOError("responses still being written")
        self._transport.pause_reading()
        return os.dup(self._sock.fileno()), self._frames.pending()

    def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.close()
