"""SMB2 oplocks that hold across worker processes, backed by Linux kernel file leases.

MS-SMB2 3.3.5.9 (an oplock is granted at CREATE), 3.3.4.6 (the object store breaks it: the
server notifies the client), 3.3.5.22.1 (the client acknowledges), 3.3.2.1 (the 35 s Oplock
Break Acknowledgment Timer).

Each client has its own worker process, so only the kernel sees every open of a file: other
workers' clients, local programs, NFS. We therefore grant an oplock only when the kernel
grants a lease on the Open's own fd (fcntl F_SETLEASE), the way Samba's "kernel oplocks" work,
and never more than the kernel gave:

- BATCH / EXCLUSIVE need a write lease (F_WRLCK): the kernel grants it only while no other
  open file description of the file exists anywhere, and breaks it on any later open(2).
- LEVEL_II needs a lease that breaks on any open for writing: a read lease (F_RDLCK) does,
  but the kernel gives one only on an fd opened read-only; on a writable fd we hold a write
  lease instead (stronger: any open breaks it), and a level II break needs no acknowledgment.
- Otherwise NONE.

A break: the opener (any process, our own I/O threads included) blocks in open(2) while the
kernel queues LEASE_SIGNAL (set with F_SETSIG) for us. Python's sigwaitinfo() does not expose
si_fd, so the signal is blocked in every thread (block_lease_signals(), called before any
thread starts) and read from a signalfd on the event loop: struct signalfd_siginfo carries
ssi_fd. We send the Oplock Break Notification and wait for the acknowledgment (or a CLOSE, or
the 35 s timer), then drop or downgrade the lease, and the kernel lets the opener go on.
The kernel's own /proc/sys/fs/lease-break-time (45 s by default) is the last resort.

Break levels: the kernel cannot express what Windows grants when several clients open a
file (level II on a writable fd; a batch oplock broken to level II when another client
opens for writing). Those decisions are made by the workers themselves: before an open,
the opener breaks batch and exclusive oplocks to level II here and in the other workers
(``break_for_open``, smbd.server.caching), a write ends level II everywhere
(``break_level_ii``), and a level II granted while others have the file open holds no
kernel lease (Grant.lease None). A break the kernel starts (a local program, or an open
that raced the store) still goes to none unless our fd is read-only.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import functools
import logging
import os
import signal
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from smbd.status import NtStatus, SmbError
from smbd.wire.create import CreateAction, OplockLevel
from smbd.wire.oplock import oplock_break_notification

from .break_delivery import deliver

if TYPE_CHECKING:
    from .objects import Open

log = logging.getLogger("smbd.oplocks")

LEASE_SIGNAL = signal.SIGRTMIN + 2
# If the real-time signal queue overflows the kernel sends SIGIO instead (fcntl(2), F_SETSIG);
# that one carries no fd, so then every lease we hold is checked.
OVERFLOW_SIGNAL = signal.SIGIO
BREAK_ACK_TIMEOUT = 35.0  # MS-SMB2 3.3.2.1 Oplock Break Acknowledgment Timer (Windows: 35 s)

F_SETSIG = 10  # <fcntl.h>; Python's fcntl module does not name it
_SIGNALFD_SIGINFO = struct.Struct("<IiiIIi")  # ssi_signo, ssi_errno, ssi_code, ssi_pid, ssi_uid, ssi_fd
_SIGNALFD_SIGINFO_SIZE = 128  # sizeof(struct signalfd_siginfo), signalfd(2)

_EXCLUSIVE_LEVELS = (OplockLevel.BATCH, OplockLevel.EXCLUSIVE)
# An open that created, superseded or overwrote the file gets an oplock even when it asked
# for attributes only, as Windows and Samba grant it (smbtorture smb2.oplock.batch9, batch13)
_NEW_DATA = (CreateAction.CREATED, CreateAction.SUPERSEDED, CreateAction.OVERWRITTEN)


def block_lease_signals() -> None:
    """Block the lease signals in the calling thread and every thread it starts later.

    Must run in the main thread before the event loop and the I/O pool start: a real-time
    signal delivered to a thread that does not block it would kill the process (default
    action), and one caught by a handler loses its si_fd."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {LEASE_SIGNAL, OVERFLOW_SIGNAL})


def _signals_blocked() -> bool:
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return LEASE_SIGNAL in blocked and OVERFLOW_SIGNAL in blocked


# ---- the kernel side: leases and the signalfd ---------------------------------------------------

def take_lease(fd: int, kind: int) -> bool:
    """Ask the kernel for a lease (fcntl F_SETLEASE F_WRLCK / F_RDLCK) on ``fd``; False if refused.

    F_SETSIG comes first so that the break signal is LEASE_SIGNAL with si_fd set."""
    try:
        fcntl.fcntl(fd, F_SETSIG, LEASE_SIGNAL)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, kind)
        return True
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EBUSY, errno.EACCES, errno.EINVAL, errno.ENOLCK):
            log.warning("F_SETLEASE on fd %d: %s", fd, e)
        return False


def drop_lease(fd: int) -> None:
    """Release the lease (F_UNLCK), if the fd holds one: a blocked opener goes on. Never blocks.

    The kernel answers EAGAIN when the fd holds no lease (fs/locks.c generic_delete_lease):
    a lease released for one of our own opens and not yet taken back is dropped again when
    the leases are rebalanced, which is not worth a warning."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except OSError as e:
        if e.errno not in (errno.EBADF, errno.EAGAIN):
            log.warning("F_SETLEASE F_UNLCK on fd %d: %s", fd, e)


def lease_state(fd: int) -> int:
    """F_GETLEASE: the lease held, or during a break the type the breaker needs us to go to
    (F_RDLCK: it opens for reading; F_UNLCK: for writing). -1 if the fd is gone."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GETLEASE)
    except OSError:
        return -1


def is_writable_fd(fd: int) -> bool:
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY


class SignalFd:
    """signalfd(2) for the lease signals, through ctypes (Python has no binding)."""

    def __init__(self, signals: tuple[int, ...]):
        libc = ctypes.CDLL(None, use_errno=True)
        mask = (ctypes.c_ubyte * 128)()  # sigset_t: bit (signo - 1)
        for signo in signals:
            mask[(signo - 1) // 8] |= 1 << ((signo - 1) % 8)
        fd = libc.signalfd(-1, ctypes.byref(mask), os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"signalfd: {os.strerror(err)}")
        self.fd = fd

    def read(self) -> list[tuple[int, int]]:
        """Every pending (signo, fd) pair; fd is -1 for signals that carry none."""
        out = []
        while True:
            try:
                data = os.read(self.fd, _SIGNALFD_SIGINFO_SIZE * 16)
            except BlockingIOError:
                return out
            for off in range(0, len(data) - _SIGNALFD_SIGINFO_SIZE + 1, _SIGNALFD_SIGINFO_SIZE):
                signo, _, _, _, _, sfd = _SIGNALFD_SIGINFO.unpack_from(data, off)
                out.append((signo, sfd if signo == LEASE_SIGNAL else -1))

    def close(self) -> None:
        os.close(self.fd)


# ---- the oplock state of one Open ---------------------------------------------------------------

@dataclass(eq=False)
class Grant:
    """Open.OplockLevel and Open.OplockState (MS-SMB2 3.3.1.10) with the lease behind them."""

    op: "Open"
    fd: int
    level: int  # the SMB2 oplock level the client holds
    # fcntl.F_WRLCK or fcntl.F_RDLCK held on fd; None when the kernel cannot express the
    # level (level II on a writable fd, or while another process has the file open):
    # then the other workers tell us of conflicts (smbd.server.caching).
    lease: int | None
    breaking_to: int | None = None  # while Breaking: the level offered in the notification
    timer: asyncio.TimerHandle | None = None
    acked: asyncio.Event | None = None  # set when a break that needs an acknowledgment ends
    # The break in progress was for a reader (the kernel's, or a worker's open without
    # write access): acknowledged to level II on a read-only fd, a read lease may stay.
    for_reader: bool = False


class OplockManager:
    """Grants, breaks and acknowledgments for one worker's Opens.

    Everything but ``forget`` runs on the event loop thread. Until ``start`` succeeds (no
    loop, signals not blocked, no signalfd) it grants nothing: an oplock whose break we
    could not hear would let other clients read stale data."""

    def __init__(self, ack_timeout: float = BREAK_ACK_TIMEOUT):
        self.ack_timeout = ack_timeout
        self._grants: dict[int, Grant] = {}  # by fd
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sigfd: SignalFd | None = None
        self._thread: int | None = None
        # Kernel leases held for someone else (SMB2 leases, smbd.server.leases): fd -> callback
        # run on the loop when the kernel breaks the lease on that fd.
        self._watchers: dict[int, Callable[[int], None]] = {}
        # Called instead of notifying when the holder is a disconnected durable Open: it has
        # no channel to hear the break, so it is closed (MS-SMB2 3.3.4.6; smbd.server.durable).
        self.on_disconnected_break: Callable[["Open"], None] | None = None
        # Told the file key whenever the oplocks held on a file change (smbd.server.caching
        # publishes them for the other workers).
        self.on_change: Callable[[int | None], None] | None = None

    @property
    def enabled(self) -> bool:
        return self._sigfd is not None

    @property
    def has_grants(self) -> bool:
        return bool(self._grants)

    def levels_of(self, file_key: int | None) -> list[int]:
        """The levels held (or being broken to) on a file, for smbd.server.caching."""
        return [max(g.level, g.breaking_to or 0) for g in self._grants.values()
                if g.op.file_key == file_key and not g.op.closed]

    def run_on_loop(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback`` now if called on the event loop thread (or before the loop
        starts), else soon on the loop: the grants may only be read there."""
        if self._loop is not None and threading.get_ident() != self._thread and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback, *args)
        else:
            callback(*args)

    def _changed(self, op: "Open") -> None:
        if self.on_change is not None:
            self.on_change(op.file_key)

    def start(self, loop: asyncio.AbstractEventLoop) -> bool:
        if self._sigfd is not None:
            return True
        if not _signals_blocked():
            log.warning("lease signals are not blocked in this thread: oplocks disabled")
            return False
        try:
            self._sigfd = SignalFd((LEASE_SIGNAL, OVERFLOW_SIGNAL))
        except OSError as e:
            log.warning("no signalfd (%s): oplocks disabled", e)
            return False
        self._loop = loop
        self._thread = threading.get_ident()
        loop.add_reader(self._sigfd.fd, self._on_signals)
        kernel_limit = _lease_break_time()
        if kernel_limit is not None and kernel_limit <= self.ack_timeout:
            # The kernel would revoke the lease (and let the opener go on) while the client
            # may still be flushing cached writes: breaks become unsafe past that point.
            log.warning("/proc/sys/fs/lease-break-time is %d s, below the %.0f s oplock break "
                        "timeout: slow clients may lose cached data", kernel_limit, self.ack_timeout)
        return True

    def stop(self) -> None:
        for grant in list(self._grants.values()):
            self._end(grant, release=True)
        if self._sigfd is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sigfd.fd)
            self._sigfd.close()
            self._sigfd = None
        self._loop = None

    # -- 3.3.5.9: grant at CREATE --------------------------------------------------------

    def grant(self, op: "Open", requested: int) -> int:
        """The oplock level to return in the CREATE response, after taking the lease behind it."""
        if not self.enabled or op.is_dir or op.pipe is not None or op.closed:
            return OplockLevel.NONE
        if requested not in (OplockLevel.II, *_EXCLUSIVE_LEVELS):
            return OplockLevel.NONE  # NONE, or a lease (RqLs) request: we grant no leases yet
        if not _has_data_access(op.granted_access) and op.create_action not in _NEW_DATA:
            return OplockLevel.NONE  # attribute-only ("stat") opens get none, as in Samba
        writable = is_writable_fd(op.fd)
        if requested == OplockLevel.II and not writable and take_lease(op.fd, fcntl.F_RDLCK):
            level, lease = OplockLevel.II, fcntl.F_RDLCK  # other readers need not break it
        elif take_lease(op.fd, fcntl.F_WRLCK):
            # The kernel grants a write lease only while no other descriptor of the file
            # exists anywhere: nobody else has it open, the full level may be granted.
            level, lease = requested, fcntl.F_WRLCK
        elif not writable and take_lease(op.fd, fcntl.F_RDLCK):
            level, lease = OplockLevel.II, fcntl.F_RDLCK
        else:
            # Others have the file open (their exclusive oplocks were broken before this
            # open, smbd.server.caching.prepare_open): level II, as Windows grants it,
            # which later writes break through smbd.server.caching, not the kernel.
            level, lease = OplockLevel.II, None
        self._grants[op.fd] = Grant(op, op.fd, level, lease)
        log.debug("%s: oplock 0x%02x granted (lease %s, fd %d)", op.display_name, level, lease, op.fd)
        self._changed(op)
        return level

    def level(self, op: "Open") -> int:
        grant = self._grant_of(op)
        return grant.level if grant is not None else OplockLevel.NONE

    def breaking(self, op: "Open") -> bool:
        grant = self._grant_of(op)
        return grant is not None and grant.breaking_to is not None

    def _grant_of(self, op: "Open") -> Grant | None:
        grant = self._grants.get(op.fd)
        return grant if grant is not None and grant.op is op else None

    # -- 3.3.4.6: the kernel breaks a lease -----------------------------------------------

    def _on_signals(self) -> None:
        assert self._sigfd is not None
        for signo, fd in self._sigfd.read():
            if signo == LEASE_SIGNAL:
                grant = self._grants.get(fd)
                if grant is not None:
                    self._check(grant)
                elif fd in self._watchers:
                    self._watchers[fd](fd)
            else:  # queue overflow: find the breaking leases ourselves
                for grant in list(self._grants.values()):
                    self._check(grant)
                for wfd, callback in list(self._watchers.items()):
                    callback(wfd)

    def watch(self, fd: int, callback: Callable[[int], None]) -> None:
        """Route kernel lease breaks on ``fd`` (a lease taken by someone else) to ``callback``."""
        self._watchers[fd] = callback

    def unwatch(self, fd: int) -> None:
        self._watchers.pop(fd, None)

    def _check(self, grant: Grant) -> None:
        """Start a break if the kernel is breaking this lease (a queued signal may be stale:
        the fd may since have been closed and its number reused for a new lease)."""
        if grant.lease is None:
            return
        if grant.breaking_to is not None:
            if lease_state(grant.fd) == fcntl.F_UNLCK and grant.breaking_to != OplockLevel.NONE:
                grant.breaking_to = OplockLevel.NONE  # a writer came along during the break
            return
        state = lease_state(grant.fd)
        if state == grant.lease or state < 0:
            return
        self._break(grant, wants_write=(state == fcntl.F_UNLCK))

    def _break(self, grant: Grant, wants_write: bool) -> None:
        op = grant.op
        if op.disconnected and self.on_disconnected_break is not None:
            self._end(grant, release=True)  # let the opener go on at once
            self.on_disconnected_break(op)
            return
        if grant.level == OplockLevel.II:
            # 3.3.4.6 / 2.2.24.1: a break from level II goes to none, unacknowledged.
            self._notify(op, OplockLevel.NONE)
            self._end(grant, release=True)
            return
        downgradable = not wants_write and grant.lease == fcntl.F_WRLCK and not is_writable_fd(grant.fd)
        grant.for_reader = downgradable
        self._start_break(grant, OplockLevel.II if downgradable else OplockLevel.NONE)

    def _start_break(self, grant: Grant, to: int) -> asyncio.Event:
        """Notify a break of an exclusive or batch oplock; the acknowledgment ends it."""
        grant.breaking_to = to
        grant.acked = asyncio.Event()
        grant.timer = self._loop.call_later(self.ack_timeout, self._ack_timed_out, grant)
        self._notify(grant.op, to)
        self._changed(grant.op)
        return grant.acked

    def break_for_open(self, file_key: int | None, *, truncating: bool, writing: bool,
                       stat: bool = False, handles_only: bool = False) -> list[asyncio.Event]:
        """An open of the file (by this worker's client or another's) is about to happen:
        batch and exclusive oplocks break to level II, or to none for an overwrite (MS-FSA
        2.1.5.1.2 as Windows applies it); an overwrite also ends level II. Kernel read
        leases that an open for writing would break are let go, the level stays (later
        writes break it); a stat open breaks nothing but the kernel leases, which its
        open(2) would; an open that will meet a sharing violation breaks only batch
        (the handle caching). Returns the acknowledgments to wait for."""
        waits = []
        for grant in [g for g in self._grants.values() if g.op.file_key == file_key and not g.op.closed]:
            op = grant.op
            if stat:
                if grant.lease == fcntl.F_WRLCK:
                    drop_lease(grant.fd)
                    grant.lease = None
                continue
            if grant.breaking_to is not None:
                if truncating:
                    grant.breaking_to = OplockLevel.NONE
                if grant.acked is not None:
                    waits.append(grant.acked)
                continue
            if op.disconnected and self.on_disconnected_break is not None:
                self._end(grant, release=True)
                self.on_disconnected_break(op)
                continue
            if grant.lease == fcntl.F_WRLCK or (writing and grant.lease is not None):
                # The opener's open(2) would break it to none behind our back.
                drop_lease(grant.fd)
                grant.lease = None
            if handles_only:
                if grant.level == OplockLevel.BATCH:
                    grant.for_reader = True
                    waits.append(self._start_break(grant, OplockLevel.II))
                continue
            if grant.level in _EXCLUSIVE_LEVELS:
                grant.for_reader = not writing
                waits.append(self._start_break(grant, OplockLevel.NONE if truncating else OplockLevel.II))
            elif truncating:
                self._notify(op, OplockLevel.NONE)
                self._end(grant, release=True)
        return waits

    def break_level_ii(self, file_key: int | None) -> None:
        """A write (or another change of the data) is about to happen on the file: every
        level II oplock on it in this worker, the writer's own included, goes to none,
        unacknowledged (MS-FSA 2.1.4.12 via MS-SMB2 3.3.4.6). Writers in other processes
        needed an open for writing first, which the kernel already turned into a break."""
        if file_key is None or not self._grants:
            return
        for grant in [g for g in self._grants.values()
                      if g.op.file_key == file_key and g.level == OplockLevel.II and g.breaking_to is None]:
            self._notify(grant.op, OplockLevel.NONE)
            self._end(grant, release=True)

    def _notify(self, op: "Open", level: int) -> None:
        log.debug("%s: oplock break to 0x%02x sent", op.display_name, level)
        send_break(self._loop, functools.partial(break_channels, op), op,
                   oplock_break_notification(level, op.file_id), "oplock")

    def _ack_timed_out(self, grant: Grant) -> None:
        """3.3.2.1: no acknowledgment in time: the oplock is broken to none regardless."""
        grant.timer = None
        if self._grants.get(grant.fd) is grant:
            log.info("%s: oplock break not acknowledged in %.0f s", grant.op.display_name, self.ack_timeout)
            self._end(grant, release=True)

    # -- 3.3.5.22.1: the client acknowledges -------------------------------------------------

    def acknowledge(self, op: "Open", level: int) -> int:
        """Complete a break with the level the client accepts; returns the level now held."""
        grant = self._grant_of(op)
        if grant is None or grant.breaking_to is None:
            raise SmbError(NtStatus.INVALID_OPLOCK_PROTOCOL, "no oplock break in progress")
        if level not in (OplockLevel.NONE, OplockLevel.II):
            raise SmbError(NtStatus.INVALID_PARAMETER, "bad acknowledged oplock level")
        if grant.timer is not None:
            grant.timer.cancel()
            grant.timer = None
        if level == OplockLevel.II and grant.breaking_to == OplockLevel.II:
            # A break for a reader keeps a read lease on a read-only fd (the reader's
            # open(2) does not break it); after one for a writer no kernel lease stays.
            if grant.for_reader and not is_writable_fd(grant.fd) and take_lease(grant.fd, fcntl.F_RDLCK):
                grant.lease = fcntl.F_RDLCK
            elif grant.lease is not None:
                drop_lease(grant.fd)
                grant.lease = None
            grant.for_reader = False
            grant.level, grant.breaking_to = OplockLevel.II, None
            self._set_acked(grant)
            self._changed(grant.op)
            return OplockLevel.II
        self._end(grant, release=True)
        return OplockLevel.NONE

    @staticmethod
    def _set_acked(grant: Grant) -> None:
        event, grant.acked = grant.acked, None
        if event is not None:
            event.set()

    # -- teardown ------------------------------------------------------------------------------

    def forget(self, op: "Open") -> None:
        """The Open is closing: drop its lease now (so openers blocked on it go on even if the
        I/O threads are busy) and its bookkeeping. Safe from any thread."""
        if self._loop is not None and threading.get_ident() != self._thread:
            grant = self._grants.get(op.fd)
            if grant is not None and grant.op is op and not op.closed:
                drop_lease(op.fd)
            self._loop.call_soon_threadsafe(self._forget, op)
            return
        self._forget(op)

    def _forget(self, op: "Open") -> None:
        grant = self._grants.get(op.fd)
        if grant is not None and grant.op is op:
            self._end(grant, release=not op.closed)

    def _end(self, grant: Grant, *, release: bool) -> None:
        if grant.timer is not None:
            grant.timer.cancel()
            grant.timer = None
        self._set_acked(grant)
        if self._grants.get(grant.fd) is grant:
            del self._grants[grant.fd]
            if release and grant.lease is not None:
                drop_lease(grant.fd)
            self._changed(grant.op)


def _lease_break_time() -> int | None:
    try:
        with open("/proc/sys/fs/lease-break-time") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _has_data_access(access: int) -> bool:
    # FILE_READ_DATA, FILE_WRITE_DATA, FILE_APPEND_DATA, FILE_EXECUTE (MS-SMB2 2.2.13.1.1)
    return bool(access & (0x1 | 0x2 | 0x4 | 0x20))


def break_channels(op: "Open") -> list:
    """Where an oplock break for ``op`` may go (3.3.4.6): the connection the Open was made
    on, then the other channels of its session in the order they connected. Closed ones
    are skipped by the sender. (A lease break tries the client's connections in order
    instead: smbd.server.leases; smbtorture smb2.multichannel checks both.)"""
    others = sorted((c.connection for c in op.session.channels.values() if c.connection is not op.connection),
                    key=lambda conn: conn.serial)
    return ([op.connection] if op.connection is not None else []) + others


def send_break(loop: asyncio.AbstractEventLoop, channels: Callable[[], list], op: "Open", message: bytes,
               what: str) -> None:
    """Send an oplock or lease break notification in the background on the first of
    ``channels()`` whose transport acknowledges it (smbd.server.break_delivery), encrypted
    when the Open's session or tree requires it; a failure is logged, not raised."""
    session = op.session
    encrypt = bool(session.encrypt_data or (op.tree is not None and op.tree.encrypt))
    task = loop.create_task(deliver(channels, message, session, encrypt, what))
    task.add_done_callback(functools.partial(_log_send_failure, what))


def _log_send_failure(what: str, task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s break notification failed", what, exc_info=task.exception())
