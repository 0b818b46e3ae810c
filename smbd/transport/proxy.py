"""A worker's end of an SMB Direct connection relayed by the smbdd proxy.

SMB2 messages arrive and leave as relay frames. READ and WRITE with an RDMA channel
(MS-SMB2 3.3.5.12, 3.3.5.13) move their payload through a shared-memory slot: the disk
is read into the slot and the proxy RDMA-writes it to the client's buffer, or the proxy
RDMA-reads the client's buffer into the slot and the disk is written from it. Neither
path copies file data in user space. Workers never import pyverbs.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from typing import TYPE_CHECKING

from smbd.status import NtStatus, ProtocolViolation, SmbError
from smbd.vfs.errors import translate_oserror
from smbd.wire import fileio

from . import relay

if TYPE_CHECKING:
    from smbd.server.connection import Request
    from smbd.server.objects import Open
    from smbd.worker import Worker

log = logging.getLogger("smbd.proxy")
_pools: dict[str, object] = {}  # attached once per worker


def _attach_pool(name: str):
    from shm.pool import BufferPool

    pool = _pools.get(name)
    if pool is None:
        pool = BufferPool.attach(name)
        _pools[name] = pool
    return pool


class ProxyTransport(asyncio.Protocol):
    """Transport for SmbConnection over the relay socket; also its RDMA capability."""

    def __init__(self, peer: str, on_message, on_lost):
        self.peer = peer
        self.rdma: RdmaChannel | None = None
        # The largest message the peer reassembles (its MaxFragmentedSize, MS-SMBD 3.1.1.1).
        self.max_message: int | None = None
        self._decoder = relay.FrameDecoder()
        self._on_message = on_message
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._setup = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            for fr in self._decoder.feed(data):
                self._frame(fr)
        except ProtocolViolation as e:
            log.warning("%s: relay: %s", self.peer, e)
            self.close()

    def _frame(self, fr: relay.Frame) -> None:
        if fr.type == relay.FrameType.SETUP:
            info = fr.json()
            self.rdma = RdmaChannel(self, _attach_pool(info["pool"]), info)
            self.peer = info.get("peer", self.peer)
            self.max_message = int(info.get("max_message", 0)) or None
            if not self._setup.done():
                self._setup.set_result(info)
        elif fr.type == relay.FrameType.MESSAGE:
            smb2, _token = fr.message()
            self._on_message(smb2)
        elif self.rdma is not None:
            self.rdma.on_frame(fr)
        else:
            raise ProtocolViolation("relay frame before SETUP")

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def connection_lost(self, exc) -> None:
        self._closed = True
        self._can_write.set()
        if self.rdma is not None:
            self.rdma.fail_all()
        self._on_lost()

    def write(self, parts: list) -> None:
        if self._closed or self._transport is None:
            raise ConnectionResetError("relay closed")
        self._transport.writelines(parts)

    async def send(self, parts: list, invalidate_token: int | None = None) -> None:
        size = sum(len(p) for p in parts)
        self.write([relay.message(size, invalidate_token), *parts])
        await self._can_write.wait()

    def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.close()


class RdmaChannel:
    """RDMA data movement for one SMB Direct connection, done by the proxy on our behalf."""

    def __init__(self, transport: ProxyTransport, pool, info: dict):
        self.transport = transport
        self.pool = pool
        self.max_read_write = int(info.get("max_read_write_size", pool.slot_size))
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self.stats = {"rdma_reads": 0, "rdma_writes": 0, "bytes": 0}

    def on_frame(self, fr: relay.Frame) -> None:
        if fr.type == relay.FrameType.ALLOC_DONE:
            request_id, slot = fr.ids()
            fut = self._waiting.pop(request_id, None)
            if fut is not None and not fut.done():
                fut.set_result(slot)
            else:  # nobody waits any more: give it back at once
                self.transport.write([relay.release(slot)])
        elif fr.type == relay.FrameType.RDMA_DONE:
            request_id, status, moved = fr.done()
            fut = self._waiting.pop(request_id, None)
            if fut is not None and not fut.done():
                fut.set_result((status, moved))
        else:
            raise ProtocolViolation(f"unexpected relay frame {fr.type}")

    def fail_all(self) -> None:
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionResetError("relay closed"))
        self._waiting.clear()

    async def _request(self, data_for_id) -> object:
        request_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = fut
        self.transport.write([data_for_id(request_id)])
        return await fut

    async def _slot(self) -> int:
        return await self._request(relay.alloc)  # type: ignore[return-value]

    def _release(self, slot: int) -> None:
        try:
            self.transport.write([relay.release(slot)])
        except ConnectionResetError:
            pass  # the proxy frees a dead connection's slots itself

    def _check(self, length: int, descriptors: tuple[fileio.BufferDescriptor, ...]) -> None:
        if length > self.max_read_write or length > self.pool.slot_size:
            raise SmbError(NtStatus.INVALID_PARAMETER, "RDMA I/O larger than MaxReadWriteSize")
        if sum(d.length for d in descriptors) < length:
            raise SmbError(NtStatus.INVALID_PARAMETER, "buffer descriptors shorter than the I/O")

    async def read_to_client(self, req: "Request", op: "Open", rd: fileio.ReadRequest) -> list:
        """READ over RDMA: disk -> slot -> RDMA write into the client's buffers (3.3.5.12)."""
        self._check(rd.length, rd.descriptors)
        slot = await self._slot()
        try:
            view = self.pool.slot_view(slot)[:rd.length]
            with translate_oserror():
                n = await req.server.io(op.tree.vfs.pread_into, op.fd, view, rd.offset)
            del view
            if n < rd.minimum_count or (n == 0 and rd.length > 0):
                raise SmbError(NtStatus.END_OF_FILE)
            status, moved = await self._request(
                lambda i: relay.rdma(relay.FrameType.RDMA_WRITE, i, slot, n, rd.descriptors))
        finally:
            self._release(slot)
        if status != 0 or moved != n:
            raise SmbError(NtStatus.IO_TIMEOUT if status else NtStatus.INVALID_PARAMETER, "RDMA write failed")
        self.stats["rdma_writes"] += 1
        self.stats["bytes"] += n
        return [fileio.read_response_header(0, n, inline=False)]

    async def write_from_client(self, req: "Request", op: "Open", wr: fileio.WriteRequest, offset: int) -> int:
        """WRITE over RDMA: RDMA read of the client's buffers -> slot -> disk (3.3.5.13)."""
        length = wr.remaining_bytes
        self._check(length, wr.descriptors)
        slot = await self._slot()
        try:
            status, moved = await self._request(
                lambda i: relay.rdma(relay.FrameType.RDMA_READ, i, slot, length, wr.descriptors))
            if status != 0 or moved != length:
                raise SmbError(NtStatus.IO_TIMEOUT if status else NtStatus.INVALID_PARAMETER, "RDMA read failed")
            view = self.pool.slot_view(slot)[:length]
            from smbd.server.handlers.files import _pwrite_all
            with translate_oserror():
                n = await req.server.io(_pwrite_all, op.tree.vfs, op.fd, view, offset,
                                        bool(wr.flags & fileio.WRITEFLAG_WRITE_THROUGH))
            del view
        finally:
            self._release(slot)
        self.stats["rdma_reads"] += 1
        self.stats["bytes"] += n
        return n


async def serve_proxy_channel(worker: "Worker", fd: int, record: dict) -> None:
    """Serve one SMB Direct connection whose relay socket smbdd passed us."""
    from smbd.server.connection import SmbConnection

    sock = socket.socket(fileno=fd)
    server = worker.server
    holder: dict[str, SmbConnection] = {}

    def on_message(message: bytes) -> None:
        holder["conn"].receive(message)

    def on_lost() -> None:
        conn = holder.get("conn")
        if conn is not None:
            conn.close()
        worker.check_idle()

    transport = ProxyTransport(record.get("peer", "rdma"), on_message, on_lost)
    conn = SmbConnection(server, transport)
    holder["conn"] = conn
    server.connections.add(conn)
    await asyncio.get_running_loop().connect_accepted_socket(lambda: transport, sock)
    log.info("%s: SMB Direct channel", transport.peer)
