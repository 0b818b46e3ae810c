"""An asyncio RDMA server harness over smbdd.rdma.verbs, for the in-VM tests.

The shape the proxy will have: the listener's and each endpoint's descriptors registered with
``loop.add_reader``; buffers are slots of one POSIX shared-memory mapping registered once per
device.  Per-connection behaviour is a small handler object (echo, buffer exchange).
"""
from __future__ import annotations

import asyncio
import ctypes
import mmap
import os
import struct
import time
from dataclasses import dataclass, field

from smbdd.rdma import verbs

DESC = struct.Struct("<4sQII")


def pattern(tag: int, length: int) -> bytes:
    unit = bytes((tag + i) & 0xFF for i in range(251))
    return (unit * (length // len(unit) + 1))[:length]


class ShmPool:
    """A /dev/shm file mapped read/write and cut into equal slots (a stand-in for shm/)."""

    def __init__(self, name: str, slot_size: int, slots: int) -> None:
        self.path = f"/dev/shm/{name}"
        self.slot_size, self.slots = slot_size, slots
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, slot_size * slots)
            self.mm = mmap.mmap(fd, slot_size * slots)
        finally:
            os.close(fd)
        self._anchor = ctypes.c_char.from_buffer(self.mm)
        self.base = ctypes.addressof(self._anchor)
        self._next = 0

    def alloc(self, count: int) -> list[int]:
        if self._next + count > self.slots:
            raise MemoryError("pool exhausted")
        out = list(range(self._next, self._next + count))
        self._next += count
        return out

    def addr(self, slot: int) -> int:
        return self.base + slot * self.slot_size

    def view(self, slot: int, length: int | None = None) -> memoryview:
        off = slot * self.slot_size
        return memoryview(self.mm)[off:off + (self.slot_size if length is None else length)]

    def close(self) -> None:
        del self._anchor
        self.mm.close()
        os.unlink(self.path)


@dataclass
class Conn:
    ep: verbs.Endpoint
    server: "AioServer"
    recv_slots: list[int]
    spare_slots: list[int]
    completions: list[verbs.Completion] = field(default_factory=list)
    cm_events: list[verbs.CmEvent] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    established: asyncio.Event = field(default_factory=asyncio.Event)
    state: dict = field(default_factory=dict)

    def repost(self, slot: int) -> None:
        pool = self.server.pool
        self.ep.post_recv(slot, pool.addr(slot), pool.slot_size, self.server.mr.lkey)


class EchoHandler:
    """Send every received message back from the slot it landed in, then repost the slot."""

    def on_completion(self, conn: Conn, c: verbs.Completion) -> None:
        pool, lkey = conn.server.pool, conn.server.mr.lkey
        if c.status != verbs.WC_SUCCESS:
            return
        if c.opcode == verbs.WcOpcode.RECV:
            conn.ep.post_send(c.wr_id, pool.addr(c.wr_id), c.byte_len, lkey)
        elif c.opcode == verbs.WcOpcode.SEND:
            conn.repost(c.wr_id)


class ExchangeHandler:
    """Buffer exchange with rdma_client.py's ``rdma`` mode (see its docstring)."""

    def on_completion(self, conn: Conn, c: verbs.Completion) -> None:
        srv, st = conn.server, conn.state
        pool, lkey = srv.pool, srv.mr.lkey
        if c.status == verbs.WC_WR_FLUSH_ERR:
            return  # receives still posted when the client left
        if c.status != verbs.WC_SUCCESS:
            st.setdefault("errors", []).append(c)
            return
        if c.opcode == verbs.WcOpcode.RECV:
            tag = bytes(pool.view(c.wr_id, 4))
            if tag == b"DESC":
                _, addr, rkey, length = DESC.unpack(pool.view(c.wr_id, DESC.size))
                st["client"] = (addr, rkey, length)
                read_slot, write_slot, target_slot, msg_slot = conn.spare_slots[:4]
                st["slots"] = (read_slot, write_slot, target_slot, msg_slot)
                pool.view(read_slot)[:] = bytes(pool.slot_size)
                st["t_read"] = srv.loop.time()
                conn.ep.post_rdma_read(1001, pool.addr(read_slot), length, lkey, addr, rkey)
            elif tag == b"WROT":
                target = st["slots"][2]
                st["client_write_ok"] = bytes(pool.view(target, st["client"][2])) == pattern(0xC, st["client"][2])
                st["done"] = True
            conn.repost(c.wr_id)
        elif c.opcode == verbs.WcOpcode.RDMA_READ:
            read_slot, write_slot, target_slot, msg_slot = st["slots"]
            addr, rkey, length = st["client"]
            st["read_s"] = srv.loop.time() - st["t_read"]
            st["read_ok"] = bytes(pool.view(read_slot, length)) == pattern(0xA, length)
            pool.view(write_slot, length)[:] = pattern(0xB, length)
            st["t_write"] = srv.loop.time()
            conn.ep.post_rdma_write(1002, pool.addr(write_slot), length, lkey, addr, rkey)
        elif c.opcode == verbs.WcOpcode.RDMA_WRITE:
            read_slot, write_slot, target_slot, msg_slot = st["slots"]
            st["write_s"] = srv.loop.time() - st["t_write"]
            pool.view(target_slot)[:] = bytes(pool.slot_size)
            pool.view(msg_slot, DESC.size)[:] = DESC.pack(b"DONE", pool.addr(target_slot), srv.mr.rkey,
                                                          st["client"][2])
            conn.ep.post_send(1003, pool.addr(msg_slot), DESC.size, lkey)


class InvalidateHandler:
    """Send-with-invalidate exchange with rdma_client.py's ``inv`` mode."""

    def on_completion(self, conn: Conn, c: verbs.Completion) -> None:
        srv, st = conn.server, conn.state
        pool, lkey = srv.pool, srv.mr.lkey
        if c.status != verbs.WC_SUCCESS:
            if c.status != verbs.WC_WR_FLUSH_ERR:
                st.setdefault("errors", []).append(c)
            return
        if c.opcode == verbs.WcOpcode.RECV:
            tag = bytes(pool.view(c.wr_id, 4))
            if tag == b"DESC":
                _, addr, rkey, length = DESC.unpack(pool.view(c.wr_id, DESC.size))
                st["client"] = (addr, rkey, length)
                data_slot, msg_slot = conn.spare_slots[:2]
                pool.view(data_slot, length)[:] = pattern(0xD, length)
                conn.ep.post_rdma_write(2001, pool.addr(data_slot), length, lkey, addr, rkey)
            elif tag == b"AGIN":
                addr, rkey, length = st["client"]
                data_slot = conn.spare_slots[0]
                pool.view(data_slot, length)[:] = pattern(0xE, length)
                conn.ep.post_rdma_write(2003, pool.addr(data_slot), length, lkey, addr, rkey)
            conn.repost(c.wr_id)
        elif c.opcode == verbs.WcOpcode.RDMA_WRITE and c.wr_id == 2001:
            msg_slot = conn.spare_slots[1]
            pool.view(msg_slot, 4)[:] = b"INVD"
            conn.ep.post_send(2002, pool.addr(msg_slot), 4, lkey, invalidate_rkey=st["client"][1])
        elif c.opcode == verbs.WcOpcode.RDMA_WRITE and c.wr_id == 2003:
            st["second_write_succeeded"] = True


class AioServer:
    """Listener + endpoints driven only by add_reader callbacks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: ShmPool, handler, *,
                 addr: str = "10.77.0.1", port: int = 0, recv_slots: int = 8, spare_slots: int = 4):
        self.loop, self.pool, self.handler = loop, pool, handler
        self.addr, self.port = addr, port
        self.recv_slots, self.spare_slots = recv_slots, spare_slots
        self.conns: list[Conn] = []
        self.new_conn = asyncio.Queue()
        self.listener: verbs.Listener | None = None
        self.mr = None
        # Longest time one callback held the loop, per kind: what a silent or slow peer could
        # cost everybody else.
        self.max_callback_s = {"listener": 0.0, "cq": 0.0, "cm": 0.0}
        self.cq_callbacks = 0
        self.cq_callback_total_s = 0.0

    def _timed(self, kind: str, t0: float) -> float:
        dt = time.perf_counter() - t0
        if dt > self.max_callback_s[kind]:
            self.max_callback_s[kind] = dt
        return dt

    def start(self) -> None:
        self.listener = verbs.Listener(self.addr, self.port)
        self.port = self.listener.port
        dev = verbs.describe_device("rxe0")
        # One registration of the whole pool on the device's shared PD.
        self.mr = verbs.Device.get(dev.name).register(self.pool.base, self.pool.slot_size * self.pool.slots)
        self.loop.add_reader(self.listener.fd, self._on_listener)

    def _on_listener(self) -> None:
        t0 = time.perf_counter()
        try:
            self._accept_all()
        finally:
            self._timed("listener", t0)

    def _accept_all(self) -> None:
        for req in self.listener.poll():
            ep = verbs.Endpoint(req, max_send_wr=16, max_recv_wr=self.recv_slots)
            conn = Conn(ep, self, self.pool.alloc(self.recv_slots), self.pool.alloc(self.spare_slots))
            for slot in conn.recv_slots:
                conn.repost(slot)
            ep.accept()
            self.conns.append(conn)
            self.loop.add_reader(ep.cq_fd, self._on_cq, conn)
            self.loop.add_reader(ep.cm_fd, self._on_cm, conn)
            self.new_conn.put_nowait(conn)

    def _on_cq(self, conn: Conn) -> None:
        t0 = time.perf_counter()
        for c in conn.ep.poll_completions():
            conn.completions.append(c)
            self.handler.on_completion(conn, c)
        self.cq_callback_total_s += self._timed("cq", t0)
        self.cq_callbacks += 1

    def _on_cm(self, conn: Conn) -> None:
        t0 = time.perf_counter()
        kinds = conn.ep.poll_cm_events()
        self._timed("cm", t0)
        conn.cm_events.extend(kinds)
        if verbs.CmEvent.ESTABLISHED in kinds:
            conn.established.set()
        if conn.ep.state is verbs.EndpointState.DISCONNECTED:
            self._on_cq(conn)  # collect the flushed receives
            conn.closed.set()

    def close_conn(self, conn: Conn) -> None:
        for fd in (conn.ep.cq_fd, conn.ep.cm_fd):
            if fd >= 0:
                self.loop.remove_reader(fd)
        conn.ep.close()

    def close(self) -> None:
        for conn in self.conns:
            self.close_conn(conn)
        if self.listener is not None:
            self.loop.remove_reader(self.listener.fd)
            self.listener.close()
        if self.mr is not None:
            self.mr.close()
