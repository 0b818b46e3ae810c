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
import os
import socket
import struct
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

    def __init__(self, peer: str, on_message, on_lost, start_paused: bool = False):
        self.peer = peer
        self._start_paused = start_paused  # a moved channel reads once its state is back
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
        self._held: list = []  # frames that ride along with the next write (write_with_next)
        self.setup_info: dict | None = None  # the proxy's SETUP, kept for a move (detach)
        # Breaks sent with send_tracked (smbd.server.break_delivery): bytes written that way,
        # and those the proxy has not reported SENT yet, by tag.
        self.written = 0
        self._unsent: dict[int, int] = {}
        self._tags = itertools.count(1)

    def connection_made(self, transport) -> None:
        self._transport = transport
        if self._start_paused:
            transport.pause_reading()

    def feed_initial(self, data: bytes) -> None:
        """Relay bytes another worker read before it passed the socket on."""
        if data:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        try:
            for fr in self._decoder.feed(data):
                self._frame(fr)
        except ProtocolViolation as e:
            log.warning("%s: relay: %s", self.peer, e)
            self.close()

    def _frame(self, fr: relay.Frame) -> None:
        if fr.type == relay.FrameType.SETUP:
            self.set_up(fr.json())
        elif fr.type == relay.FrameType.SENT:
            self._unsent.pop(fr.u32(), None)
        elif fr.type == relay.FrameType.MESSAGE:
            smb2, _token = fr.message()
            prefetch = fr.prefetch()
            if prefetch is not None:
                if self.rdma is None:
                    raise ProtocolViolation("prefetched WRITE before SETUP")
                self.rdma.on_prefetch(smb2, *prefetch)
            self._on_message(smb2)
        elif self.rdma is not None:
            self.rdma.on_frame(fr)
        else:
            raise ProtocolViolation("relay frame before SETUP")

    def set_up(self, info: dict) -> None:
        """The proxy's SETUP frame: the pool and the sizes the SMB Direct connection negotiated.
        A channel moved from another worker gets it from that worker."""
        self.setup_info = info
        self.rdma = RdmaChannel(self, _attach_pool(info["pool"]), info)
        self.peer = info.get("peer", self.peer)
        self.max_message = int(info.get("max_message", 0)) or None
        if not self._setup.done():
            self._setup.set_result(info)

    def detach(self) -> tuple[int, bytes]:
        """Stop reading; a duplicate of the relay socket and the bytes of frames not yet whole,
        for another worker to go on with the connection (smbd.server.channel_move). Only
        between I/Os: an RDMA operation in flight would complete in the wrong process."""
        if self._closed or self._transport is None:
            raise ConnectionResetError("relay closed")
        if self.setup_info is None:
            raise BlockingIOError("no SETUP from the proxy yet")
        if self._held or (self.rdma is not None and not self.rdma.give_back_all()):
            raise BlockingIOError("RDMA I/O in progress")
        if self._transport.get_write_buffer_size():
            raise BlockingIOError("frames still being written")
        self._transport.pause_reading()
        return os.dup(self._transport.get_extra_info("socket").fileno()), self._decoder.pending()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.resume_reading()

    def connection_lost(self, exc) -> None:
        self._closed = True
        self._can_write.set()
        if self.rdma is not None:
            self.rdma.fail_all()
        self._on_lost()

    def write(self, parts: list) -> None:
        if self._closed or self._transport is None:
            raise ConnectionResetError("relay closed")
        if self._held:
            parts, self._held = [*self._held, *parts], []
        self._transport.writelines(parts)

    def write_with_next(self, parts: list) -> None:
        """Send ``parts`` together with the next write, or at the end of this loop iteration
        if none comes: a READ's RDMA_WRITE frame and its response then reach the proxy in one
        send(2) and one wake-up instead of two."""
        if self._closed or self._transport is None:
            raise ConnectionResetError("relay closed")
        if not self._held:
            asyncio.get_running_loop().call_soon(self._flush_held)
        self._held.extend(parts)

    def _flush_held(self) -> None:
        if self._held and not self._closed and self._transport is not None:
            self.write([])

    async def send(self, parts: list, invalidate_token: int | None = None) -> None:
        if self.rdma is not None and self.rdma.prefetch_pending:
            self.rdma.response_sent(parts[0])
        size = sum(len(p) for p in parts)
        self.write([relay.message(size, invalidate_token), *parts])
        await self._can_write.wait()

    async def send_tracked(self, parts: list) -> None:
        """Send a message whose arrival at the client's NIC the proxy confirms (relay SENT)."""
        if self._closed or self._transport is None:
            raise ConnectionResetError("relay closed")
        tag = next(self._tags) & 0xFFFFFFFF
        size = sum(len(p) for p in parts)
        self._unsent[tag] = size
        self.written += size
        self.write([relay.tracked_message(size, tag), *parts])
        await self._can_write.wait()

    def delivered(self) -> int | None:
        """Bytes of ``written`` the client has (break_delivery); 0 once closed."""
        if self._closed:
            return 0
        return self.written - sum(self._unsent.values())

    def retransmit_timeout(self) -> float:
        """break_delivery waits six of these (its TCP rule) for a tracked send: RC_GIVE_UP."""
        return RC_GIVE_UP / 6

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.close()


# Seconds before a tracked send with no completion counts as lost: the RC QP itself gives
# up after about 0.5 s (rdma_cm's default local ACK timeout, IB 14 = 67 ms, times 7
# retries); four times that leaves room for the proxy's hop and the lab VM's emulation.
RC_GIVE_UP = 2.0
KEEP_IDLE_SLOTS = 4  # slots kept between I/Os: one per request of a queue-depth-4 stream
RECLAIM_QUIET = 1.0  # seconds after a RECLAIM during which no slot is kept idle
MAX_DESCRIPTORS = 255  # the proxy posts one work request per descriptor and caps them there
_MESSAGE_ID = struct.Struct("<Q")  # SMB2 header MessageId, MS-SMB2 2.2.1.2, at offset 24


class RdmaChannel:
    """RDMA data movement for one SMB Direct connection, done by the proxy on our behalf.

    Per I/O the relay carries, at best: READ: the request in, then the RDMA_WRITE and the
    response out together (the RDMA_DONE comes back later, off the critical path, and
    only returns the slot); WRITE: the request in, already marked PREFETCHED with its RDMA
    read under way, then the response out. Slots stay with this connection between I/Os
    (up to KEEP_IDLE_SLOTS) so no ALLOC is needed in a steady stream.
    """

    def __init__(self, transport: ProxyTransport, pool, info: dict):
        self.transport = transport
        self.pool = pool
        self.max_read_write = int(info.get("max_read_write_size", pool.slot_size))
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._idle: list[int] = []
        self._quiet_until = 0.0
        # WRITEs the proxy prefetched, by SMB2 MessageId: (slot, future of its RDMA_DONE).
        self._prefetched: dict[int, tuple[int, asyncio.Future]] = {}
        self.stats = {"rdma_reads": 0, "rdma_writes": 0, "bytes": 0, "allocs": 0, "prefetched": 0}

    @property
    def prefetch_pending(self) -> bool:
        return bool(self._prefetched)

    def on_frame(self, fr: relay.Frame) -> None:
        if fr.type == relay.FrameType.ALLOC_DONE:
            request_id, slot = fr.ids()
            fut = self._waiting.pop(request_id, None)
            if fut is not None and not fut.done():
                fut.set_result(slot)
            else:  # nobody waits any more: give it back at once
                self._release(slot)
        elif fr.type == relay.FrameType.RDMA_DONE:
            request_id, status, moved = fr.done()
            fut = self._waiting.pop(request_id, None)
            if fut is not None and not fut.done():
                fut.set_result((status, moved))
        elif fr.type == relay.FrameType.RECLAIM:
            self._quiet_until = asyncio.get_running_loop().time() + RECLAIM_QUIET
            idle, self._idle = self._idle, []
            for slot in idle:
                self._release(slot)
        else:
            raise ProtocolViolation(f"unexpected relay frame {fr.type}")

    def give_back_all(self) -> bool:
        """Return the idle slots to the proxy; False if an operation is still in flight."""
        if self._waiting or self._prefetched:
            return False
        idle, self._idle = self._idle, []
        for slot in idle:
            self._release(slot)
        return True

    def fail_all(self) -> None:
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionResetError("relay closed"))
        self._waiting.clear()
        self._prefetched.clear()
        self._idle.clear()  # the proxy frees a dead connection's slots itself

    def _wait_for(self, request_id: int) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = fut
        return fut

    async def _request(self, data_for_id) -> object:
        request_id = next(self._ids)
        fut = self._wait_for(request_id)
        self.transport.write([data_for_id(request_id)])
        return await fut

    async def _slot(self) -> int:
        if self._idle:
            return self._idle.pop()
        self.stats["allocs"] += 1
        return await self._request(relay.alloc)  # type: ignore[return-value]

    def _give_back(self, slot: int) -> None:
        """Keep the slot for the next I/O, or return it to the proxy's pool."""
        if (len(self._idle) < KEEP_IDLE_SLOTS and not self.transport.closed
                and asyncio.get_running_loop().time() >= self._quiet_until):
            self._idle.append(slot)
        else:
            self._release(slot)

    def _give_back_when_done(self, slot: int, fut: asyncio.Future) -> None:
        """The slot is busy until the proxy's RDMA operation on it has completed."""
        def done(f: asyncio.Future) -> None:
            if f.cancelled() or f.exception() is not None:
                return  # the relay is gone: the proxy frees the slot with the connection
            status, _moved = f.result()
            if status != 0:
                log.warning("%s: RDMA operation on slot %d failed: %d", self.transport.peer, slot, status)
            self._give_back(slot)
        fut.add_done_callback(done)

    def _release(self, slot: int) -> None:
        try:
            self.transport.write([relay.release(slot)])
        except ConnectionResetError:
            pass  # the proxy frees a dead connection's slots itself

    def _check(self, length: int, descriptors: tuple[fileio.BufferDescriptor, ...]) -> None:
        if length > self.max_read_write or length > self.pool.slot_size:
            raise SmbError(NtStatus.INVALID_PARAMETER, "RDMA I/O larger than MaxReadWriteSize")
        if sum(d.length for d in descriptors) < length or len(descriptors) > MAX_DESCRIPTORS:
            raise SmbError(NtStatus.INVALID_PARAMETER, "buffer descriptors do not fit the I/O")

    # ---- WRITEs the proxy prefetched ---------------------------------------------------------

    def on_prefetch(self, smb2: bytes, request_id: int, slot: int) -> None:
        """The proxy started the RDMA read of this WRITE's buffers into ``slot``."""
        if request_id & relay.PROXY_REQUEST_ID == 0 or len(smb2) < 64:
            raise ProtocolViolation("bad prefetch frame")
        fut = self._wait_for(request_id)
        (message_id,) = _MESSAGE_ID.unpack_from(smb2, 24)
        if message_id in self._prefetched:  # a client reusing a MessageId gets it refused anyway
            self._give_back_when_done(slot, fut)
            return
        self.stats["prefetched"] += 1
        self._prefetched[message_id] = (slot, fut)

    def response_sent(self, head) -> None:
        """A final response went out: a prefetched WRITE that never reached the disk (refused
        request, closed handle...) gives its slot back once the RDMA read is over."""
        if len(head) < 64 or bytes(head[:4]) != b"\xfeSMB":
            return  # an encrypted reply: its request was encrypted too, so never prefetched
        status, flags = struct.unpack_from("<I4xI", head, 8)
        if status == NtStatus.PENDING and flags & 0x2:  # interim (3.3.4.2): the WRITE goes on
            return
        entry = self._prefetched.pop(_MESSAGE_ID.unpack_from(head, 24)[0], None)
        if entry is not None:
            self._give_back_when_done(*entry)

    # ---- READ and WRITE ------------------------------------------------------------------------

    async def read_to_client(self, req: "Request", op: "Open", rd: fileio.ReadRequest) -> list:
        """READ over RDMA: disk -> slot -> RDMA write into the client's buffers (3.3.5.12).

        The RDMA_WRITE frame goes out now and the response right behind it; the slot comes
        back when the proxy reports the write complete."""
        self._check(rd.length, rd.descriptors)
        slot = await self._slot()
        try:
            view = self.pool.slot_view(slot)[:rd.length]
            with translate_oserror():
                n = await req.server.read_into(op.tree.vfs, op.fd, view, rd.offset)
            del view
            if n < rd.minimum_count or (n == 0 and rd.length > 0):
                raise SmbError(NtStatus.END_OF_FILE)
        except BaseException:
            self._give_back(slot)
            raise
        request_id = next(self._ids)
        fut = self._wait_for(request_id)
        try:
            self.transport.write_with_next([relay.rdma(relay.FrameType.RDMA_WRITE, request_id, slot, n,
                                                       rd.descriptors)])
        except ConnectionResetError:
            self._waiting.pop(request_id, None)
            raise
        self._give_back_when_done(slot, fut)
        self.stats["rdma_writes"] += 1
        self.stats["bytes"] += n
        return [fileio.read_response_header(0, n, inline=False)]

    async def write_from_client(self, req: "Request", op: "Open", wr: fileio.WriteRequest, offset: int) -> int:
        """WRITE over RDMA: RDMA read of the client's buffers -> slot -> disk (3.3.5.13)."""
        length = wr.remaining_bytes
        self._check(length, wr.descriptors)  # refused: a prefetched slot returns with the reply
        prefetched = self._prefetched.pop(req.header.message_id, None)
        if prefetched is not None:
            slot, fut = prefetched
        else:
            slot = await self._slot()
            request_id = next(self._ids)
            fut = self._wait_for(request_id)
            try:
                self.transport.write([relay.rdma(relay.FrameType.RDMA_READ, request_id, slot, length,
                                                 wr.descriptors)])
            except ConnectionResetError:
                self._waiting.pop(request_id, None)
                raise
        try:
            # Shielded: a cancelled WRITE must not hand the slot on while the read still fills it.
            status, moved = await asyncio.shield(fut)
        except asyncio.CancelledError:
            self._give_back_when_done(slot, fut)
            raise
        try:
            if status != 0 or moved != length:
                raise SmbError(NtStatus.IO_TIMEOUT if status else NtStatus.INVALID_PARAMETER, "RDMA read failed")
            view = self.pool.slot_view(slot)[:length]
            with translate_oserror():
                n = await req.server.write_from(op.tree.vfs, op.fd, view, offset,
                                                bool(wr.flags & fileio.WRITEFLAG_WRITE_THROUGH))
            del view
        finally:
            self._give_back(slot)
        self.stats["rdma_reads"] += 1
        self.stats["bytes"] += n
        return n


async def serve_proxy_channel(worker: "Worker", fd: int, record: dict, setup: dict | None = None,
                              paused: bool = False):
    """Serve one SMB Direct connection whose relay socket smbdd passed us, or another worker
    did, with the proxy's ``setup`` it had received (smbd.server.channel_move)."""
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

    transport = ProxyTransport(record.get("peer", "rdma"), on_message, on_lost, start_paused=paused)
    if setup is not None:
        transport.set_up(setup)
    conn = SmbConnection(server, transport)
    holder["conn"] = conn
    server.connections.add(conn)
    await asyncio.get_running_loop().connect_accepted_socket(lambda: transport, sock)
    log.info("%s: SMB Direct channel", transport.peer)
    return conn
