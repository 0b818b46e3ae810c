"""SMB2 leases (MS-SMB2 3.3.1.13 Per Lease; 3.3.5.9.8 and 3.3.5.9.11 granting at CREATE;
3.3.4.7 breaking; 3.3.5.22.2 the client's acknowledgment).

A lease is keyed by (ClientGUID, LeaseKey) and covers every Open its client made with that
key on one file: those opens share the caching state (R, RH, RW, RWH) and never break each
other. One worker serves one ClientGUID, so every lease of a client lives in one process.

Who notices a conflict:
- opens and writes inside this worker: we decide here (``on_open``, ``break_on_write``),
  following MS-FSA's oplock rules as Windows applies them to leases: a new open under
  another key (or with no lease) takes W away from existing leases; an overwrite takes R
  too; a sharing violation takes H (``break_handles``) so that the holder may close.
- other processes (other clients' workers, local programs): the kernel, through the same
  fcntl F_SETLEASE machinery as oplocks (smbd.server.oplocks). While the worker holds a
  file leased through exactly one descriptor, that descriptor carries a kernel write lease
  (or a read lease if it is read-only); while it holds several, all read-only, each carries
  a read lease. The kernel's break becomes a lease break to the client, and the kernel lease
  is released (or downgraded) when the client acknowledges.

Known gap: while this worker holds a file open through several descriptors of which one is
writable, the kernel grants no lease at all (a read lease needs no writer anywhere, a write
lease needs a single open), so R/W caching of those leases is not protected against other
processes; conflicts inside the worker are still exact. Handle caching (H) is the worker's
alone: another process meets our share modes (a sharing violation) instead of a break.
"""
from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from smbd.status import NtStatus, SmbError
from smbd.wire.create import Disposition
from smbd.wire.lease import (LeaseBreakAck, LeaseFlags, LeaseRequest, LeaseState, lease_break_notification,
                             lease_break_response, lease_response_context)

from . import caching, persistent
from .oplocks import (BREAK_ACK_TIMEOUT, break_channels, drop_lease, is_writable_fd, lease_state, send_break,
                       take_lease)

if TYPE_CHECKING:
    from .connection import Request
    from .objects import Open
    from .state import ServerState

log = logging.getLogger("smbd.leases")

R, H, W = LeaseState.READ, LeaseState.HANDLE, LeaseState.WRITE
# 3.3.5.9.8: what a client may hold; Windows grants nothing for H, W or HW alone.
_GRANTABLE = {0, R, R | H, R | W, R | H | W}
_TRUNCATING = (Disposition.SUPERSEDE, Disposition.OVERWRITE, Disposition.OVERWRITE_IF)
# Access that makes an open a "stat open" (MS-FSA 2.1.5.1.2): it takes part in no lease conflict.
_STAT_ACCESS = 0x80 | 0x100 | 0x20000 | 0x100000  # READ/WRITE_ATTRIBUTES, READ_CONTROL, SYNCHRONIZE
# For oplocks READ_CONTROL is not enough: Windows breaks a batch oplock for it, and Samba
# keeps the two masks apart too (smbtorture smb2.oplock.statopen1 against smb2.lease.statopen*).
_OPLOCK_STAT_ACCESS = _STAT_ACCESS & ~0x20000


def is_stat_open(access: int) -> bool:
    return not access & ~_STAT_ACCESS


def is_oplock_stat_open(access: int) -> bool:
    return not access & ~_OPLOCK_STAT_ACCESS


def grantable(requested: int) -> int:
    requested &= R | H | W
    return requested if requested in _GRANTABLE else 0


@dataclass(eq=False)
class Lease:
    """3.3.1.13 Per Lease."""

    client_guid: Any
    key: bytes
    file_key: int
    version: int  # 1 (RqLs v1) or 2 (v2: epoch and parent key)
    state: int = 0
    epoch: int = 0
    parent_key: bytes | None = None
    opens: list["Open"] = field(default_factory=list)
    breaking_to: int | None = None  # Lease.Breaking and Lease.BreakToLeaseState
    acked: asyncio.Event | None = None  # set when the break in progress ends
    timer: asyncio.TimerHandle | None = None
    kernel_break: int | None = None  # the kernel's target (F_RDLCK/F_UNLCK) if it started the break
    # Conflicts met while a break is in progress: they are not told to the client until it
    # acknowledges the current break; then a further break follows (as Windows does).
    pending_keep: int = R | H | W

    @property
    def breaking(self) -> bool:
        return self.breaking_to is not None


@dataclass(eq=False)
class _Backing:
    """A kernel lease held on one descriptor on behalf of an SMB2 lease."""

    lease: Lease
    op: "Open"
    kind: int  # fcntl.F_WRLCK or fcntl.F_RDLCK


def lease_manager(server: "ServerState") -> "LeaseManager":
    """The worker's LeaseManager (created on first use, on the event loop)."""
    mgr = getattr(server, "leases", None)
    if mgr is None:
        mgr = LeaseManager(server)
        server.leases = mgr
    return mgr


class LeaseManager:
    """Every lease of one worker. Runs on the event loop thread (``forget`` excepted)."""

    def __init__(self, server: "ServerState", ack_timeout: float = BREAK_ACK_TIMEOUT):
        self.server = server
        self.oplocks = server.oplocks
        self.ack_timeout = ack_timeout
        self._leases: dict[tuple[Any, bytes], Lease] = {}
        self._by_file: dict[int, list[Lease]] = {}
        self._backing: dict[int, _Backing] = {}  # by fd
        self._released: set[int] = set()  # files whose backing an I/O thread dropped for our own open
        # Files another worker opens or has open (smbd.server.caching): their leases hold no
        # kernel lease, which that worker's open would break to none behind its back.
        self._foreign: set[int] = set()
        # A lease whose every Open is a disconnected durable one has no channel to hear a
        # break: such Opens are closed instead (smbd.server.durable sets this).
        self.on_disconnected: Callable[["Open"], None] | None = None

    # -- lookups ----------------------------------------------------------------------------

    def get(self, client_guid: Any, key: bytes) -> Lease | None:
        return self._leases.get((client_guid, key))

    def leases_of(self, file_key: int | None) -> list[Lease]:
        return list(self._by_file.get(file_key, ())) if file_key is not None else []

    def has_leases(self, file_key: int | None) -> bool:
        return file_key is not None and bool(self._by_file.get(file_key))

    # -- our own opens: the kernel lease must not break on them -------------------------------

    def release_kernel_for(self, file_key: int | None) -> None:
        """Drop the kernel leases backing our leases on a file this worker is about to open
        again: conflicts between our own opens are decided here, not by the kernel (whose
        break would reach us as if another process opened). Safe from an I/O thread; the
        backing is re-taken, where the kernel allows it, by ``rebalance`` after the open."""
        if file_key is None:
            return
        for fd, b in list(self._backing.items()):
            if b.lease.file_key == file_key and not b.op.closed:
                self._released.add(file_key)
                drop_lease(fd)

    def restore_released(self) -> None:
        """After our own open (whatever came of it): take back the kernel leases it needed
        dropped, as far as the kernel now allows. On the loop."""
        while self._released:
            file_key = self._released.pop()
            if self._by_file.get(file_key):
                self.rebalance(file_key)

    # -- 3.3.5.9: CREATE ----------------------------------------------------------------------

    def check_request(self, req: "Request", request: LeaseRequest, file_key: int | None) -> None:
        """3.3.5.9.8: a lease key already in use for another file is refused."""
        lease = self.get(req.conn.client_guid, request.key)
        if lease is not None and lease.opens and file_key is not None and lease.file_key != file_key:
            raise SmbError(NtStatus.INVALID_PARAMETER, "lease key in use for another file")

    @property
    def active(self) -> bool:
        return bool(self._by_file)

    async def break_for_open(self, req: "Request", file_key: int | None, disposition: int,
                             own_key: bytes | None, access: int) -> None:
        """Break what a new open of an existing file conflicts with (other keys' leases in
        this worker) and wait for the acknowledgments that are due (3.3.4.7; MS-FSA
        2.1.5.1.2): W always goes, an overwrite takes everything, stat opens break nothing.

        Called after the open passed its share-mode check (a sharing violation breaks only
        H, see ``break_handles``), except for an overwrite, which is called before so that
        the holder's cached writes reach the file before it is truncated."""
        if is_stat_open(access) or file_key is None or not self._by_file.get(file_key):
            return
        await self._wait(req, self._break_for_open_of(file_key, disposition in _TRUNCATING,
                                                      str(req.conn.client_guid), own_key))

    def _break_for_open_of(self, file_key: int, truncating: bool, client_guid: str | None,
                           own_key: bytes | None) -> list[asyncio.Event]:
        """Break the file's leases but the opener's own (W goes, an overwrite takes all);
        the acknowledgments the open waits for."""
        keep = 0 if truncating else R | H
        waits = []
        for lease in self.leases_of(file_key):
            if lease.key == own_key and str(lease.client_guid) == client_guid:
                continue
            dirty = bool(lease.state & W)
            ev = self.break_lease(lease, keep)
            if ev is not None and dirty:
                # Only cached writes hold the open up; a break of R/H alone is answered later.
                waits.append(ev)
        return waits

    async def break_handles(self, req: "Request", file_key: int | None, own_key: bytes | None) -> bool:
        """A new open met a sharing violation: break H of the other leases on the file (the
        client may then close the cached handles) and wait. True if any H was broken."""
        broke, waits = self.break_handles_of(file_key, req.conn.client_guid, own_key)
        await self._wait(req, waits)
        return broke

    def break_handles_of(self, file_key: int | None, client_guid: Any, own_key: bytes | None
                         ) -> tuple[bool, list[asyncio.Event]]:
        """Break H of the file's leases but the opener's own: (any broken, what to wait for)."""
        waits = []
        broke = False
        for lease in self.leases_of(file_key):
            if lease.key == own_key and lease.client_guid == client_guid:
                continue
            current = lease.breaking_to if lease.breaking else lease.state
            if current & H:
                broke = True
                ev = self.break_lease(lease, R | W)
                if ev is not None:
                    waits.append(ev)
        return broke, waits

    def break_for_remote_open(self, file_key: int, truncating: bool, client_guid: str | None,
                              own_key: bytes | None, stat: bool = False) -> list[asyncio.Event]:
        """Another worker opens the file (smbd.server.caching): W goes, an overwrite takes
        everything, as for an open here (``break_for_open``); returns the acknowledgments
        the opener waits for (cached writes only). The kernel leases of the file go now."""
        self._foreign.add(file_key)
        for fd, b in list(self._backing.items()):
            if b.lease.file_key == file_key:
                self.oplocks.unwatch(fd)
                del self._backing[fd]
                if not b.op.closed:
                    drop_lease(fd)
        if stat:
            return []  # attributes only: no caching conflicts with it (MS-FSA 2.1.5.1.2)
        return self._break_for_open_of(file_key, truncating, client_guid, own_key)

    async def break_for_namespace_change(self, req: "Request", op: "Open") -> None:
        """A rename or delete through ``op``: other keys' handle caching on the file goes
        (MS-FSA 2.1.5.14.11; Windows breaks H before renaming), and the change waits for
        the acknowledgments so those clients can close what they only kept cached."""
        if not self.has_leases(op.file_key):
            return
        waits = []
        for lease in self.leases_of(op.file_key):
            if lease is op.lease:
                continue
            ev = self.break_lease(lease, R | W)
            if ev is not None:
                waits.append(ev)
        await self._wait(req, waits)

    async def _wait(self, req: "Request", waits: list[asyncio.Event]) -> None:
        waits = [ev for ev in waits if not ev.is_set()]
        if not waits:
            return
        if req.is_last and not req.interim_sent:
            await req.go_async()
        tasks = [asyncio.ensure_future(ev.wait()) for ev in waits]
        try:
            # The acknowledgment timer (3.3.2.5) sets every event; the timeout is a backstop.
            await asyncio.wait(tasks, timeout=self.ack_timeout + 5)
        finally:
            for t in tasks:
                t.cancel()

    def grant(self, req: "Request", op: "Open", request: LeaseRequest) -> bytes:
        """Grant (or share) the lease for a new Open; returns the RqLs response context data."""
        if op.is_dir or op.file_key is None:
            raise AssertionError("no leases on directories")
        requested = grantable(request.state)
        key = (req.conn.client_guid, request.key)
        lease = self._leases.get(key)
        others = [l for l in self.leases_of(op.file_key) if l is not lease]
        plain = [o for o in self.server.opens_of(op.file_key)
                 if o.lease is None and o is not op and not is_stat_open(o.granted_access)]
        contended = bool(others or plain)
        if lease is None or not lease.opens:
            lease = Lease(req.conn.client_guid, request.key, op.file_key, request.version,
                          parent_key=request.parent_key if request.has_parent else None,
                          epoch=request.epoch)
            self._leases[key] = lease
            self._by_file.setdefault(op.file_key, []).append(lease)
            lease.state = requested & ~W if contended else requested
            if lease.state & H and caching.oplock_held(self.server, op.file_key):
                # Beside an oplock (level II by now: the open broke batch and exclusive),
                # Windows grants R without H, and so does Samba (smbtorture smb2.lease.oplock).
                lease.state &= ~H
            if lease.state:
                lease.epoch += 1
        elif (not lease.breaking and requested != lease.state and requested & lease.state == lease.state
              and not (contended and requested & W)):
            # 3.3.5.9.8: a superset upgrades the lease; anything else leaves it as it is, and
            # so does a request for W while other opens exist (it is not cut down to fit).
            lease.state = requested
            lease.epoch += 1
        op.lease = lease
        lease.opens.append(op)
        self._back_or_shrink(lease)
        self._changed(lease.file_key)
        return self.response_context(op)

    def _changed(self, file_key: int | None) -> None:
        changed = getattr(self.server, "caching_changed", None)
        if changed is not None:
            changed(file_key)

    def adopt(self, op: "Open", client_guid: Any, key: bytes, version: int, state: int, epoch: int,
              parent_key: bytes | None) -> None:
        """An Open another worker handed over (smbd.server.handoff) brings its lease as it
        was; the kernel lease behind it is taken here (or the state shrinks to what the
        kernel allows, as for a new lease)."""
        lease = self._leases.get((client_guid, key))
        if lease is None or not lease.opens:
            lease = Lease(client_guid, key, op.file_key, version, state=state, epoch=epoch, parent_key=parent_key)
            self._leases[(client_guid, key)] = lease
            self._by_file.setdefault(op.file_key, []).append(lease)
        op.lease = lease
        lease.opens.append(op)
        self._back_or_shrink(lease)
        self._changed(lease.file_key)

    def response_context(self, op: "Open", version: int | None = None) -> bytes:
        """The RqLs response for an Open holding its lease: in the lease's own version (a v1
        request on a v2 lease is answered v2, and the other way round)."""
        lease = op.lease
        v = version or lease.version
        return lease_response_context(v, lease.key, lease.state,
                                      LeaseFlags.BREAK_IN_PROGRESS if lease.breaking else 0,
                                      parent_key=lease.parent_key if v == 2 else None,
                                      epoch=lease.epoch if v == 2 else 0)

    def _back_or_shrink(self, lease: Lease) -> None:
        """Take the kernel lease that protects ``lease`` from other processes; when this
        worker's only descriptor of the file cannot get it, another process has the file
        open, and W is not granted. R and H are, as Windows grants them beside other
        clients' opens; other workers' writes and sharing violations break them
        (smbd.server.caching), with no kernel lease behind them."""
        failed = self.rebalance(lease.file_key)
        if failed and lease.state & W and self._single_descriptor(lease.file_key):
            lease.state &= ~W
            self.rebalance(lease.file_key)

    def _single_descriptor(self, file_key: int) -> bool:
        fds = {o.fd for l in self.leases_of(file_key) for o in l.opens if not o.closed}
        fds |= {o.fd for o in self.server.opens_of(file_key) if not o.closed}
        return len(fds) <= 1

    # -- the kernel leases behind our leases ---------------------------------------------------

    def rebalance(self, file_key: int) -> bool:
        """Hold the kernel leases the file's SMB2 leases need, as far as the kernel allows.
        Returns True if a needed kernel lease was refused."""
        desired: dict[int, tuple[Lease, "Open", int]] = {}
        if file_key in self._foreign:
            return False
        leased = {o.fd: (l, o) for l in self.leases_of(file_key) for o in l.opens
                  if not o.closed and not l.kernel_break}
        plain = [o for o in self.server.opens_of(file_key) if o.lease is None and not o.closed]
        if len(leased) == 1 and not plain:
            fd, (lease, op) = next(iter(leased.items()))
            if lease.state & (R | W):
                desired[fd] = (lease, op, fcntl.F_WRLCK if lease.state & W or is_writable_fd(fd) else fcntl.F_RDLCK)
        elif leased and not any(is_writable_fd(fd) for fd in leased) and not any(is_writable_fd(o.fd) for o in plain):
            for fd, (lease, op) in leased.items():
                if lease.state & R:
                    desired[fd] = (lease, op, fcntl.F_RDLCK)
        for fd, b in list(self._backing.items()):
            if b.lease.file_key != file_key or b.lease.kernel_break:
                continue
            want = desired.get(fd)
            if want is None or want[1] is not b.op or want[2] != b.kind or lease_state(fd) != b.kind:
                if not b.op.closed:
                    drop_lease(fd)
                self.oplocks.unwatch(fd)
                del self._backing[fd]
        failed = False
        for fd, (lease, op, kind) in desired.items():
            if fd in self._backing:
                continue
            if take_lease(fd, kind):
                self._backing[fd] = _Backing(lease, op, kind)
                self.oplocks.watch(fd, self._kernel_break)
            else:
                failed = True
        return failed

    def _kernel_break(self, fd: int) -> None:
        """The kernel breaks a lease we hold for an SMB2 lease: another process opens the
        file. Break the SMB2 lease to what stays safe: H (ours alone) and R if the kernel
        lets us keep a read lease (a reader, and our descriptor is read-only)."""
        b = self._backing.get(fd)
        if b is None:
            return
        target = lease_state(fd)
        if target < 0 or target == b.kind:
            return
        lease = b.lease
        keep = H
        if target == fcntl.F_RDLCK and not is_writable_fd(fd):
            keep |= R
        lease.kernel_break = target
        log.debug("kernel breaks lease %s (fd %d) to %d", lease.key.hex(), fd, target)
        ev = self.break_lease(lease, keep)
        if ev is None:
            self._settle_kernel(lease)

    def _settle_kernel(self, lease: Lease) -> None:
        """The client answered a kernel-started break (or it timed out): comply with the
        kernel so the other process's open goes on."""
        target = lease.kernel_break
        lease.kernel_break = None
        for fd, b in list(self._backing.items()):
            if b.lease is not lease:
                continue
            self.oplocks.unwatch(fd)
            del self._backing[fd]
            if b.op.closed:
                continue
            if target == fcntl.F_RDLCK and lease.state & R and not lease.state & W and take_lease(fd, fcntl.F_RDLCK):
                self._backing[fd] = _Backing(lease, b.op, fcntl.F_RDLCK)
                self.oplocks.watch(fd, self._kernel_break)
            else:
                drop_lease(fd)

    # -- 3.3.4.7: breaking ----------------------------------------------------------------------

    def break_lease(self, lease: Lease, keep: int, event: asyncio.Event | None = None) -> asyncio.Event | None:
        """Break ``lease`` to (its state & keep). Returns an Event to wait on if the client
        must acknowledge, else None (done at once). ``event`` is given for a break that
        follows an acknowledged one: it keeps the epoch of that break (as Windows does)."""
        if lease.breaking:
            # One break at a time: the acknowledgment must fit what was notified; what this
            # conflict needs beyond it is broken once the client has answered.
            if lease.breaking_to & keep != lease.breaking_to:
                lease.pending_keep &= keep
            return lease.acked
        current = lease.state
        new = current & keep
        if new == current:
            return None
        live = [o for o in lease.opens if not o.disconnected]
        if not live:
            self._close_disconnected(lease)
            return None
        ack_required = bool(lease.state & (W | H))
        if lease.version == 2 and event is None:
            lease.epoch += 1
        self._notify(lease, live[0], lease.state, new, ack_required)
        if not ack_required:
            lease.state = new
            if lease.kernel_break is None:
                self.rebalance(lease.file_key)
            self._changed(lease.file_key)
            return None
        lease.breaking_to = new
        lease.acked = event or asyncio.Event()
        lease.timer = asyncio.get_running_loop().call_later(self.ack_timeout, self._ack_timed_out, lease)
        return lease.acked

    def break_on_write(self, writer: "Open") -> None:
        """A write through ``writer``: other keys' read caching on the file is stale now
        (MS-FSA 2.1.4.12): their leases break to none (at once for R-only ones)."""
        self.break_reads(writer.file_key, writer.lease)

    def break_reads(self, file_key: int | None, writers: Lease | None) -> None:
        """Break every lease of the file holding R but the writer's own to none."""
        for lease in self.leases_of(file_key):
            if lease is writers:
                continue
            if (lease.breaking_to if lease.breaking else lease.state) & R:
                self.break_lease(lease, 0)

    def _close_disconnected(self, lease: Lease) -> None:
        for op in list(lease.opens):
            if op.disconnected and self.on_disconnected is not None:
                self.on_disconnected(op)

    def _notify(self, lease: Lease, op: "Open", current: int, new: int, ack_required: bool) -> None:
        message = lease_break_notification(lease.key, current, new,
                                           epoch=lease.epoch if lease.version == 2 else 0,
                                           ack_required=ack_required)
        log.debug("lease %s: break 0x%x -> 0x%x sent", lease.key.hex(), current, new)
        send_break(asyncio.get_running_loop(), functools.partial(_channels_for, self.server, lease), op,
                   message, "lease")

    def _ack_timed_out(self, lease: Lease) -> None:
        """3.3.2.5 Lease Break Acknowledgment Timer: unacknowledged, the lease is gone (NONE)."""
        lease.timer = None
        if lease.breaking:
            log.info("lease %s: break not acknowledged in %.0f s", lease.key.hex(), self.ack_timeout)
            lease.pending_keep = R | H | W
            self._finish_break(lease, 0)

    def _finish_break(self, lease: Lease, state: int) -> None:
        if lease.timer is not None:
            lease.timer.cancel()
            lease.timer = None
        lease.state = state
        lease.breaking_to = None
        event, lease.acked = lease.acked, None
        pending, lease.pending_keep = lease.pending_keep, R | H | W
        follow = state & pending
        if follow != state and lease.opens:
            if state & R and state & H and not follow & R:
                # Windows takes H first and R after (RH -> R -> none), one break at a time.
                follow = R
                lease.pending_keep = pending
            if self.break_lease(lease, follow, event):
                return  # the waiters wait on for the next acknowledgment
            if lease.state & lease.pending_keep != lease.state:
                lease.pending_keep, pending = R | H | W, lease.pending_keep
                self.break_lease(lease, pending)
        if event is not None:
            event.set()
        if lease.kernel_break is not None:
            self._settle_kernel(lease)
        elif lease.opens:
            self.rebalance(lease.file_key)
        self._changed(lease.file_key)

    # -- 3.3.5.22.2: the acknowledgment --------------------------------------------------------

    def acknowledge(self, req: "Request", ack: LeaseBreakAck) -> bytes:
        lease = self.get(req.conn.client_guid, ack.key)
        if lease is None or not lease.opens:
            raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "no such lease")
        if not lease.breaking:
            raise SmbError(NtStatus.UNSUCCESSFUL, "no lease break in progress")
        if ack.state & ~lease.breaking_to:
            raise SmbError(NtStatus.REQUEST_NOT_ACCEPTED, "acknowledged state beyond the break")
        self._finish_break(lease, ack.state)
        for op in list(lease.opens):
            persistent.changed(self.server, op)  # a persistent Open comes back with the state it has now
        return lease_break_response(lease.key, ack.state)

    # -- teardown ---------------------------------------------------------------------------------

    def forget(self, op: "Open") -> None:
        """The Open is closing. Safe from any thread: the bookkeeping moves to the loop."""
        if op.lease is None:
            return
        loop = self.oplocks._loop
        if loop is not None and threading.get_ident() != self.oplocks._thread:
            loop.call_soon_threadsafe(self._forget, op)
            return
        self._forget(op)

    def _forget(self, op: "Open") -> None:
        lease = op.lease
        if lease is None or op not in lease.opens:
            return
        lease.opens.remove(op)
        b = self._backing.get(op.fd)
        if b is not None and b.op is op:
            self.oplocks.unwatch(op.fd)
            del self._backing[op.fd]
        if lease.opens:
            self.rebalance(lease.file_key)
            self._changed(lease.file_key)
            return
        # 3.3.4.? the last Open of a lease closed: the lease is gone (and a break with it).
        if lease.breaking:
            self._finish_break(lease, 0)
        self._leases.pop((lease.client_guid, lease.key), None)
        by_file = self._by_file.get(lease.file_key)
        if by_file is not None and lease in by_file:
            by_file.remove(lease)
            if not by_file:
                del self._by_file[lease.file_key]
                self._foreign.discard(lease.file_key)
            else:
                self.rebalance(lease.file_key)
        self._changed(lease.file_key)


def _channels_for(server: "ServerState", lease: Lease) -> list:
    """Where a lease break may go (3.3.4.7: any connection of the client), in the order the
    client's connections arrived, as Samba tries them; then, for a lease whose client has no
    connection here any more, the channels of its live Opens' sessions. Opens kept for a
    durable reconnect have none."""
    guid = lease.client_guid
    out = sorted((c for c in server.connections if guid is not None and c.client_guid == guid),
                 key=lambda conn: conn.serial)
    for op in lease.opens:
        if not op.disconnected:
            out += [c for c in break_channels(op) if all(c is not o for o in out)]
    return out


__all__ = ["Lease", "LeaseManager", "LeaseRequest", "LeaseBreakAck", "lease_manager", "grantable"]
