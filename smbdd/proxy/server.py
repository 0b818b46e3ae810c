"""The SMB Direct proxy: rdma_cm listeners, the shared-memory pool, per-connection drivers.

The pool is registered as one memory region per device, once; every connection of the
device does its RDMA reads and writes through that region, and workers name slots by
integer. Slots are lent to a connection's worker, which keeps a few between I/Os; when
the pool is exhausted an ALLOC queues (and RECLAIM asks workers for their idle slots), so
a burst of large I/O waits (and, through SMB2 credits, slows the client) instead of
growing memory.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections import Counter, deque

from smbd.server import access
from smbdd.smbdirect.connection import SmbdConfig

from .connection import ProxyConnection

log = logging.getLogger("smbdd.proxy")

DEFAULT_SLOTS = 64  # x MaxReadWriteSize (1 MiB) = 64 MiB of pool
RECLAIM_INTERVAL = 0.5  # seconds between RECLAIM rounds while ALLOCs wait


class Proxy:
    def __init__(self, settings, supervisor, devices: list[str], *, listen: list[str] | None = None,
                 slot_count: int = DEFAULT_SLOTS, max_read_write_size: int = 1024 * 1024):
        self.settings = settings
        self.supervisor = supervisor
        self.devices = devices
        self.listen_addresses = listen
        # An inline READ/WRITE of MaxReadWriteSize (signed or sealed sessions send data inline)
        # is that much plus the SMB2 headers and a transform header: leave room for them.
        self.smbd_config = SmbdConfig(max_read_write_size=max_read_write_size,
                                      max_fragmented_size=max(1024 * 1024, max_read_write_size) + 64 * 1024)
        self.max_rdma_ops = 64
        self.slot_count = slot_count
        self.pool = None
        self.allocator = None
        self._mrs: dict[str, object] = {}
        self._slot_owner: dict[int, ProxyConnection] = {}
        self._alloc_waiters: deque[tuple[ProxyConnection, int]] = deque()
        self._last_reclaim = float("-inf")
        self.listeners: list = []
        self.connections: set[ProxyConnection] = set()
        self._op_ids = itertools.count(1)
        self.accepted = itertools.count(1)  # ProxyConnection.serial: the order of accepts
        self.stats: Counter = Counter()

    async def start(self) -> None:
        from shm.allocator import SlotAllocator
        from shm.pool import BufferPool
        from smbdd.rdma.verbs import Device, Listener, describe_device

        self.pool = BufferPool.create(f"smbdd-{os.getpid()}", self.smbd_config.max_read_write_size, self.slot_count)
        self.allocator = SlotAllocator(self.slot_count)
        loop = asyncio.get_running_loop()
        interfaces = []
        for name in self.devices:
            info = describe_device(name)
            dev = Device.get(name)
            self._mrs[name] = dev.register(self.pool.base_address, self.pool.size)
            interfaces.extend(info.netdevs)
            # Link-local IPv6 needs a scope id rdma_cm cannot take here; clients use the others.
            addresses = self.listen_addresses or [a for a in info.addresses if not a.lower().startswith("fe80")]
            port = self.settings.rdma_port or info.smbd_port
            if not addresses:
                log.warning("RDMA device %s has no IP address; not listening on it", name)
            for addr in addresses:
                listener = Listener(addr, port)
                self.listeners.append(listener)
                loop.add_reader(listener.fd, self._on_listener, listener)
                print(f"smbdd: SMB Direct on {name} {addr}:{port} ({info.transport})", flush=True)
        # FSCTL_QUERY_NETWORK_INTERFACE_INFO marks these interfaces RDMA_CAPABLE.
        from dataclasses import replace
        self.supervisor.config = replace(self.supervisor.config, rdma_interfaces=tuple(interfaces))

    def pool_mr(self, device) -> object:
        return self._mrs[device.name]

    def next_op_id(self) -> int:
        return next(self._op_ids) & 0xFFFFFFFFFF

    def _on_listener(self, listener) -> None:
        try:
            requests = listener.poll()
        except OSError as e:
            log.error("rdma_cm listener: %s", e)
            return
        cfg = self.supervisor.config
        for request in requests:
            if self.supervisor.stopping:
                request.reject()
                continue
            if not access.host_allowed(access.peer_address(request.peer_address), cfg.hosts_allow, cfg.hosts_deny):
                log.warning("rdma:%s: refused by hosts_allow/hosts_deny", request.peer_address)
                request.reject()
                continue
            try:
                conn = ProxyConnection(self, request)
            except OSError as e:
                log.error("cannot set up SMB Direct connection from %s: %s", request.peer_address, e)
                try:
                    request.reject()
                except OSError:
                    pass
                continue
            self.connections.add(conn)
            try:
                conn.accept()
            except OSError as e:
                conn.close(f"accept failed: {e}")

    # ---- pool slots ---------------------------------------------------------------------

    def allocate(self, conn: ProxyConnection, request_id: int) -> None:
        slot = self.allocator.acquire(conn)
        if slot is None:
            self.stats["pool_exhausted"] += 1
            self._alloc_waiters.append((conn, request_id))
            self._reclaim_idle_slots()
            return
        self._slot_owner[slot] = conn
        conn.alloc_done(request_id, slot)

    def try_acquire(self, conn: ProxyConnection, limit: int) -> int | None:
        """A slot for the proxy's own use on ``conn`` (a WRITE prefetch), only if one is free
        now, no ALLOC waits for one, and ``conn`` holds fewer than ``limit``."""
        if self._alloc_waiters or self.allocator.count_held(conn) >= limit:
            return None
        slot = self.allocator.acquire(conn)
        if slot is not None:
            self._slot_owner[slot] = conn
        return slot

    def _reclaim_idle_slots(self) -> None:
        """Workers keep a few slots idle between I/Os; ask for them back while ALLOCs wait
        (at most twice a second: a worker stays quiet for a while after a RECLAIM)."""
        now = asyncio.get_running_loop().time()
        if now - self._last_reclaim < RECLAIM_INTERVAL:
            return
        self._last_reclaim = now
        for conn in list(self.connections):
            if self.allocator.count_held(conn):
                self.stats["reclaims"] += 1
                conn.reclaim()

    def owns(self, conn: ProxyConnection, slot: int) -> bool:
        return self._slot_owner.get(slot) is conn

    def release(self, conn: ProxyConnection, slot: int) -> None:
        if self._slot_owner.get(slot) is not conn:
            log.error("%s: released slot %d it does not hold", conn.peer, slot)
            conn.close("bad slot release")
            return
        del self._slot_owner[slot]
        self.allocator.release(slot)
        self._serve_waiters()

    def _serve_waiters(self) -> None:
        while self._alloc_waiters and self.allocator.free:
            conn, request_id = self._alloc_waiters.popleft()
            if not conn.closed:
                self.allocate(conn, request_id)

    def connection_closed(self, conn: ProxyConnection) -> None:
        self.connections.discard(conn)
        for slot in self.allocator.release_all_of(conn):
            self._slot_owner.pop(slot, None)
        self._alloc_waiters = deque(w for w in self._alloc_waiters if w[0] is not conn)
        self._serve_waiters()
        log.info("pool: %d of %d slots in use after %s closed", self.allocator.in_use, self.slot_count, conn.peer)

    # ---- test hook ---------------------------------------------------------------------

    def cut_newest_connection(self) -> None:
        """Test only (the smbtorture_fsctl option; smbdd runs it on SIGUSR2): disconnect the
        SMB Direct connection accepted last, as a failed link ends one channel of a
        multichannel session. The lab has no other way to cut one QP: there is no ss -K for
        a queue pair, and rxe loops local traffic back past any packet filter."""
        live = [c for c in self.connections if not c.closed]
        if not live:
            log.warning("test hook: no SMB Direct connection to cut")
            return
        max(live, key=lambda c: c.serial).close("cut by the test hook")

    # ---- shutdown ----------------------------------------------------------------------

    async def stop_listening(self) -> None:
        loop = asyncio.get_running_loop()
        for listener in self.listeners:
            loop.remove_reader(listener.fd)
            listener.close()
        self.listeners.clear()

    async def close(self) -> None:
        for conn in list(self.connections):
            conn.close("shutting down")
        for mr in self._mrs.values():
            mr.close()
        if self.pool is not None:
            self.pool.close()
        log.info("proxy stats: %s", dict(self.stats))
