"""One SMB Direct connection in the proxy: verbs endpoint + MS-SMBD core + relay to a worker.

Everything runs on the daemon's event loop and never blocks: the endpoint's completion
and rdma_cm descriptors are watched with add_reader, completions are drained with
non-blocking polls, and the MS-SMBD core (sans-IO) says what to post. A slow or silent
client only ever costs a few callbacks; it cannot hold the loop.

Work request ids carry their kind in the top bits: receives and sends name their
buffer, RDMA reads/writes name the worker's request.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import itertools
import logging
import socket
from collections import Counter, deque
from typing import TYPE_CHECKING

from smbd import metrics
from smbd.status import ProtocolViolation, SmbError
from smbd.transport import relay
from smbd.wire import fileio
from smbdd.acceptor import client_guid_of
from smbdd.smbdirect.connection import SmbdConnection
from smbdd.smbdirect.errors import SmbdLocalError, SmbdProtocolError
from smbdd.smbdirect.events import CloseConnection, MessageReceived, NegotiateDone, PostReceives, PostSend

if TYPE_CHECKING:
    from .server import Proxy

log = logging.getLogger("smbdd.proxy")

KIND_SHIFT = 56
KIND_RECV, KIND_SEND, KIND_RDMA = 1, 2, 3
IDX_MASK = (1 << KIND_SHIFT) - 1


# Slots one connection may hold before its WRITEs stop being prefetched (they then take the
# worker's ALLOC path, which queues when the pool is dry).
PREFETCH_SLOTS = 8
_WRITE_COMMAND = 9  # SMB2 WRITE, MS-SMB2 2.2.1.2
_SERVER_TO_REDIR = 0x1


def _wr(kind: int, idx: int) -> int:
    return (kind << KIND_SHIFT) | idx


class _RdmaOp:
    __slots__ = ("request_id", "pending", "moved", "failed")

    def __init__(self, request_id: int, pending: int, moved: int):
        self.request_id, self.pending, self.moved, self.failed = request_id, pending, moved, False


class ProxyConnection:
    def __init__(self, proxy: "Proxy", request):
        from smbdd.rdma.verbs import Endpoint

        self.proxy = proxy
        self.serial = next(proxy.accepted)
        self.loop = asyncio.get_running_loop()
        cfg = proxy.smbd_config
        self.core = SmbdConnection(cfg, now=self.loop.time())
        self.peer = f"rdma:{request.peer_address}"
        self.recv_size = cfg.max_receive_size
        self.recv_count = cfg.receive_credit_max
        # One receive beyond ReceiveCreditMax, posted only when the core asks (PostReceives):
        # with one send credit left and every posted receive granted, the core needs one
        # more receive to grant before it may spend that credit (MS-SMBD 3.1.5.1, 3.1.5.9).
        self.recv_slots = self.recv_count + 1
        self._spare_recv = [self.recv_count]
        self.send_size = cfg.max_send_size
        self.send_count = cfg.max_sends_in_flight
        self.sq_depth = self.send_count + proxy.max_rdma_ops + 8
        self.ep = Endpoint(request, max_send_wr=self.sq_depth, max_recv_wr=self.recv_slots)
        self.device = self.ep.device
        # Receive and send buffers of this connection, registered once.
        self._recv_buf = ctypes.create_string_buffer(self.recv_size * self.recv_slots)
        self._send_buf = ctypes.create_string_buffer(self.send_size * self.send_count)
        self._recv_mr = self.device.register(ctypes.addressof(self._recv_buf), len(self._recv_buf))
        self._send_mr = self.device.register(ctypes.addressof(self._send_buf), len(self._send_buf))
        self._free_send = deque(range(self.send_count))
        # Send buffers whose completion finishes a tracked message (relay SENT): idx -> tag.
        self._send_tags: dict[int, int] = {}
        self._pool_mr = proxy.pool_mr(self.device)
        self._rdma_ops: dict[int, _RdmaOp] = {}
        self._prefetch_ids = itertools.count(1)
        self._deferred: deque = deque()  # work requests waiting for send-queue room
        self.sq_outstanding = 0
        self.relay: RelayProtocol | None = None
        self._early: list[bytes] = []
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None
        self.stats = _Stats(proxy.stats)  # this connection's counts, added to the proxy's too

    # ---- setup ------------------------------------------------------------------------

    def accept(self) -> None:
        """Post every receive (the negotiate request's among them) before accepting (MS-SMBD 3.1.5)."""
        for i in range(self.recv_count):
            self._post_recv(i)
        self.core.receive_reposted(self.recv_count)
        self.loop.add_reader(self.ep.cq_fd, self._on_cq)
        self.loop.add_reader(self.ep.cm_fd, self._on_cm)
        self.ep.accept()
        self._arm_timer()
        log.info("%s: SMB Direct connection accepted (RDMA read depth %d, responder resources %d)",
                 self.peer, self.ep.initiator_depth, self.ep.responder_resources)

    def _post_recv(self, i: int) -> None:
        self.ep.post_recv(_wr(KIND_RECV, i), ctypes.addressof(self._recv_buf) + i * self.recv_size,
                          self.recv_size, self._recv_mr.lkey)

    # ---- events from the queue pair ---------------------------------------------------------

    def _on_cm(self) -> None:
        try:
            kinds = self.ep.poll_cm_events()
        except OSError as e:
            self.close(f"rdma_cm: {e}")
            return
        from smbdd.rdma.verbs import CmEvent

        if any(k in (CmEvent.DISCONNECTED, CmEvent.DEVICE_REMOVAL, CmEvent.TIMEWAIT_EXIT) for k in kinds):
            self.close("peer disconnected")

    def _on_cq(self) -> None:
        try:
            completions = self.ep.poll_completions()
        except OSError as e:
            self.close(f"completion queue: {e}")
            return
        now = self.loop.time()
        relay_out = self.relay
        if relay_out is not None:
            relay_out.cork()  # everything this batch sends the worker goes in one write
        try:
            try:
                for c in completions:
                    kind, idx = c.wr_id >> KIND_SHIFT, c.wr_id & IDX_MASK
                    if c.status != 0:
                        self._failed(kind, idx, c.status)
                        continue
                    if kind == KIND_RECV:
                        # Copy just this message out of its buffer (the core keeps it; the
                        # buffer is reposted at once).
                        data = ctypes.string_at(ctypes.addressof(self._recv_buf) + idx * self.recv_size,
                                                c.byte_len)
                        self.core.receive(data, now)
                        if not self.closed:
                            self._post_recv(idx)
                            self.core.receive_reposted(1)
                    elif kind == KIND_SEND:
                        self.sq_outstanding -= 1
                        self._free_send.append(idx)
                        self.core.send_completed(1)
                        if self._send_tags:
                            self._tracked_sent(idx)
                    elif kind == KIND_RDMA:
                        self.sq_outstanding -= 1
                        self._rdma_completed(idx)
            except SmbdProtocolError as e:
                log.warning("%s: malformed SMB Direct message: %s", self.peer, e)
            except SmbdLocalError as e:
                log.error("%s: %s", self.peer, e)
                self.close(str(e))
                return
            self._drive()
            self._post_deferred()
        finally:
            if relay_out is not None:
                relay_out.uncork()

    def _failed(self, kind: int, idx: int, status: int) -> None:
        if kind == KIND_RDMA:
            self.sq_outstanding -= 1
            op = self._rdma_ops.get(idx >> 8)
            if op is not None:
                op.failed = True
                self._rdma_completed(idx)
        if not self.closed:
            # A flushed or failed work request means the queue pair is in error: done.
            self.close(f"work completion status {status}")

    # ---- driving the MS-SMBD core ----------------------------------------------------------

    def _drive(self) -> None:
        # Handling an event may feed the core (a spare receive posted), which queues more.
        while events := self.core.events():
            if self._handle(events):
                return
        self._arm_timer()

    def _handle(self, events: list) -> bool:
        """Carry out the core's events; True once the connection is closed."""
        for ev in events:
            if isinstance(ev, PostSend):
                self._post_send(ev.payload, ev.invalidate_rkey, ev.tag)
            elif isinstance(ev, MessageReceived):
                self.stats["messages_in"] += 1
                if len(ev.smb2) > 4096:
                    log.debug("%s: reassembled a %d-byte message", self.peer, len(ev.smb2))
                self._to_worker(ev.smb2)
            elif isinstance(ev, PostReceives):
                for _ in range(min(ev.count, len(self._spare_recv))):
                    self._post_recv(self._spare_recv.pop())
                    self.core.receive_reposted(1)
            elif isinstance(ev, NegotiateDone):
                log.info("%s: negotiated send %d recv %d fragmented %d rw %d", self.peer,
                         ev.params.max_send_size, ev.params.max_receive_size,
                         ev.params.max_fragmented_recv_size, ev.params.max_read_write_size)
            elif isinstance(ev, CloseConnection):
                self.close(ev.reason)
                return True
        return False

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.core.next_deadline()
        if deadline is not None and not self.closed:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        self.core.timer(self.loop.time())
        self._drive()

    def _post_send(self, payload: bytes, invalidate_rkey: int | None, tag: int | None = None) -> None:
        if not self._free_send:
            raise SmbdLocalError("no free send buffer: the core exceeded max_sends_in_flight")
        idx = self._free_send.popleft()
        if tag is not None:
            self._send_tags[idx] = tag
        addr = ctypes.addressof(self._send_buf) + idx * self.send_size
        ctypes.memmove(addr, payload, len(payload))
        self._submit(lambda: self.ep.post_send(_wr(KIND_SEND, idx), addr, len(payload), self._send_mr.lkey,
                                               invalidate_rkey=invalidate_rkey))
        if invalidate_rkey is not None:
            self.stats["send_with_invalidate"] += 1

    def _tracked_sent(self, idx: int) -> None:
        """A tracked message's last fragment completed: on a reliable connection the client's
        NIC has it, which is what the worker waits for before it counts a break as delivered
        (smbd.server.break_delivery). A send that fails never gets here: the connection closes."""
        tag = self._send_tags.pop(idx, None)
        if tag is not None and self.relay is not None:
            self.stats["tracked_sent"] += 1
            self.relay.write(relay.sent(tag))

    def _submit(self, post) -> None:
        """Post now if the send queue has room, else when completions free it (in order)."""
        if self._deferred or self.sq_outstanding >= self.sq_depth:
            self._deferred.append(post)
            return
        self.sq_outstanding += 1
        post()

    def _post_deferred(self) -> None:
        while self._deferred and self.sq_outstanding < self.sq_depth and not self.closed:
            self.sq_outstanding += 1
            self._deferred.popleft()()

    # ---- relay to the worker ----------------------------------------------------------------

    def _to_worker(self, smb2: bytes) -> None:
        if self.relay is not None:
            if not self._prefetch_write(smb2):
                self.relay.send_message(smb2)
            return
        self._early.append(smb2)
        if len(self._early) == 1:
            self.loop.create_task(self._open_relay(smb2))

    async def _open_relay(self, first: bytes) -> None:
        """Route the connection by the ClientGUID of its first NEGOTIATE, like TCP ones."""
        guid = client_guid_of(first)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        await self.proxy.supervisor.hand_over(guid, {"op": "channel", "peer": self.peer}, theirs.detach())
        _, proto = await self.loop.connect_accepted_socket(lambda: RelayProtocol(self), ours)
        if self.closed:
            proto.close()
            return
        self.relay = proto
        proto.write(relay.setup({"pool": self.proxy.pool.name, "slot_size": self.proxy.pool.slot_size,
                                 "peer": self.peer,
                                 "max_read_write_size": self.proxy.smbd_config.max_read_write_size,
                                 "max_message": self.core.params.max_fragmented_send_size}))
        early, self._early = self._early, []
        for msg in early:
            proto.send_message(msg)

    def from_worker(self, fr: relay.Frame) -> None:
        if fr.type == relay.FrameType.MESSAGE:
            smb2, token = fr.message()
            self.stats["messages_out"] += 1
            try:
                self.core.send_message(smb2, invalidate_token=token, tag=fr.tracked())
            except SmbdLocalError as e:
                self.close(f"worker message: {e}")
                return
            self._drive()
        elif fr.type == relay.FrameType.ALLOC:
            log.debug("%s: ALLOC", self.peer)
            self.proxy.allocate(self, fr.u32())
        elif fr.type == relay.FrameType.RELEASE:
            self.proxy.release(self, fr.u32())
        elif fr.type in (relay.FrameType.RDMA_WRITE, relay.FrameType.RDMA_READ):
            self._start_rdma(fr.type, *fr.rdma())
        else:
            raise ProtocolViolation(f"unexpected relay frame {fr.type} from worker")

    def _prefetch_write(self, smb2: bytes) -> bool:
        """Start the RDMA read of a WRITE's buffers now and pass the WRITE on marked PREFETCHED.

        The worker would ask for exactly this read as soon as it sees the WRITE; starting it
        here saves that round trip between the processes on every RDMA WRITE. Only a plain,
        single WRITE (no transform, no compound) is looked at; anything else, or no free
        slot, goes the ordinary way. The worker still checks the request: a refused one just
        returns the slot. Reading the client's buffers early is safe: the client named them
        for this WRITE and the data lands in a slot of this connection only.
        """
        if (len(smb2) < 64 or smb2[:4] != b"\xfeSMB" or smb2[12] != _WRITE_COMMAND or smb2[13]
                or smb2[16] & _SERVER_TO_REDIR or any(smb2[20:24])):
            return False
        try:
            wr = fileio.WriteRequest.parse(memoryview(smb2))
        except (SmbError, ProtocolViolation):
            return False
        length = wr.remaining_bytes
        if (wr.channel not in (fileio.Channel.RDMA_V1, fileio.Channel.RDMA_V1_INVALIDATE) or not length
                or length > self.proxy.smbd_config.max_read_write_size):
            return False
        slot = self.proxy.try_acquire(self, PREFETCH_SLOTS)
        if slot is None:
            return False
        chunks = self._chunks(slot, length, wr.descriptors)
        if chunks is None:
            self.proxy.release(self, slot)
            return False
        request_id = relay.PROXY_REQUEST_ID | (next(self._prefetch_ids) & 0x7FFFFFFF)
        # The worker hears of the WRITE first: on soft-RoCE the post below moves the data
        # before it returns, and the worker's checks can run meanwhile on another CPU.
        self.relay.send_prefetched(smb2, request_id, slot)
        self.relay.flush()
        self._post_rdma(False, request_id, chunks, length)
        self.stats["prefetched_writes"] += 1
        return True

    def reclaim(self) -> None:
        if self.relay is not None:
            self.relay.write(relay.reclaim())

    def alloc_done(self, request_id: int, slot: int) -> None:
        if self.relay is not None:
            self.relay.write(relay.alloc_done(request_id, slot))

    # ---- RDMA read/write on the worker's behalf ----------------------------------------------

    def _start_rdma(self, ftype: int, request_id: int, slot: int, length: int, descriptors) -> None:
        if not self.proxy.owns(self, slot) or length > self.proxy.pool.slot_size:
            raise ProtocolViolation("RDMA request on a slot the worker does not hold")
        chunks = self._chunks(slot, length, descriptors)
        if chunks is None:
            self.relay.write(relay.rdma_done(request_id, -errno.EINVAL, 0))
            return
        self._post_rdma(ftype == relay.FrameType.RDMA_WRITE, request_id, chunks, length)

    def _chunks(self, slot: int, length: int, descriptors) -> list | None:
        """(local address, length, remote offset, token) per work request, or None if the
        descriptors cannot carry ``length`` (too short, or more than 255 of them)."""
        if not descriptors or sum(d.length for d in descriptors) < length:
            return None
        base = self.proxy.pool.slot_address(slot)
        chunks = []
        done = 0
        for d in descriptors:
            if done >= length:
                break
            n = min(d.length, length - done)
            chunks.append((base + done, n, d.offset, d.token))
            done += n
        return chunks if len(chunks) <= 255 else None

    def _post_rdma(self, write: bool, request_id: int, chunks: list, length: int) -> None:
        op_id = self.proxy.next_op_id()
        op = _RdmaOp(request_id, len(chunks), length)
        self._rdma_ops[op_id] = op
        lkey = self._pool_mr.lkey
        post = self.ep.post_rdma_write if write else self.ep.post_rdma_read
        for i, (local, n, remote, rkey) in enumerate(chunks):
            wr_id = _wr(KIND_RDMA, (op_id << 8) | i)
            self._submit(lambda w=wr_id, a=local, n=n, r=remote, k=rkey: post(w, a, n, lkey, r, k))
        self.stats["rdma_writes" if write else "rdma_reads"] += 1
        self.stats["rdma_bytes"] += length
        metrics.rdma_moved("write" if write else "read", length)

    def _rdma_completed(self, idx: int) -> None:
        op_id = idx >> 8
        op = self._rdma_ops.get(op_id)
        if op is None:
            return
        op.pending -= 1
        if op.pending == 0:
            log.debug("%s: RDMA op %d done (failed=%s)", self.peer, op_id, op.failed)
            del self._rdma_ops[op_id]
            if self.relay is not None:
                self.relay.write(relay.rdma_done(op.request_id, -errno.EIO if op.failed else 0,
                                                 0 if op.failed else op.moved))

    # ---- teardown ----------------------------------------------------------------------------

    def close(self, reason: str = "") -> None:
        """Free everything this connection holds: QP, CQ, MRs, pool slots, the relay."""
        if self.closed:
            return
        self.closed = True
        c = self.stats.own
        log.info("%s: SMB Direct connection closed%s: %d messages in, %d out, RDMA reads %d, RDMA writes %d "
                 "(%d bytes), sends with invalidate %d, tracked sends %d", self.peer,
                 f" ({reason})" if reason else "", c["messages_in"], c["messages_out"], c["rdma_reads"],
                 c["rdma_writes"], c["rdma_bytes"], c["send_with_invalidate"], c["tracked_sent"])
        self.core.close()
        if self._timer is not None:
            self._timer.cancel()
        for fd in (self.ep.cq_fd, self.ep.cm_fd):
            try:
                self.loop.remove_reader(fd)
            except (ValueError, OSError):
                pass
        try:
            self.ep.disconnect()
        except OSError:
            pass
        self.ep.close()
        for mr in (self._recv_mr, self._send_mr):
            mr.close()
        self.proxy.connection_closed(self)
        if self.relay is not None:
            self.relay.close()


class _Stats:
    """Counters of one connection that also add up into the proxy-wide ones."""

    def __init__(self, total: Counter):
        self.own: Counter = Counter()
        self.total = total

    def __getitem__(self, key: str) -> int:
        return self.own[key]

    def __setitem__(self, key: str, value: int) -> None:
        self.total[key] += value - self.own[key]
        self.own[key] = value


class RelayProtocol(asyncio.Protocol):
    """The proxy's end of the relay socket to the worker."""

    def __init__(self, conn: ProxyConnection):
        self.conn = conn
        self.decoder = relay.FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self._corked: list | None = None

    def cork(self) -> None:
        """Hold writes until :meth:`uncork`: one batch of completions (messages for the
        worker, RDMA done notices) then costs one send(2) and one wake-up of the worker, not
        one each: each wake-up costs the worker a pass of its event loop in Python, on top of
        the hop itself (about 0.13 ms under the lab's emulation, ``python3 -m bench.lab_costs``)."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        parts, self._corked = self._corked, None
        if parts and self.transport is not None and not self.conn.closed:
            self.transport.writelines(parts)

    def flush(self) -> None:
        """Write what is held now and stay corked."""
        if self._corked:
            self.uncork()
            self._corked = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            for fr in self.decoder.feed(data):
                self.conn.from_worker(fr)
        except ProtocolViolation as e:
            log.error("%s: worker relay: %s", self.conn.peer, e)
            self.conn.close("worker relay error")

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.conn.close("worker gone")

    def _out(self, parts: list) -> None:
        if self._corked is not None:
            self._corked.extend(parts)
        elif self.transport is not None:
            self.transport.writelines(parts)

    def write(self, data: bytes) -> None:
        self._out([data])

    def send_message(self, smb2: bytes) -> None:
        self._out([relay.message(len(smb2)), smb2])

    def send_prefetched(self, smb2: bytes, request_id: int, slot: int) -> None:
        self._out([relay.prefetched_message(len(smb2), request_id, slot), smb2])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
