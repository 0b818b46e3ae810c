"""Byte-range locks with SMB semantics (MS-FSA 2.1.4.10, 2.1.5.7, 2.1.5.8; MS-SMB2 3.3.5.14).

SMB locks differ from POSIX ones: they stack, never merge, and an unlock must name a
lock exactly. So each worker keeps the SMB view in a table, and mirrors every Open's
locks into OFD locks on its own file description, so that workers serving other clients
see them (F_OFD_GETLK) and the kernel drops them if this worker dies.

The conflict rules are pure functions (``ranges_overlap``, ``lock_conflicts``) so they
can be tested without files.
"""
from __future__ import annotations

import asyncio
import fcntl
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smbd.status import NtStatus, SmbError

from .sharemode import BASE, F_OFD_GETLK, F_OFD_SETLK

if TYPE_CHECKING:
    from .objects import Open

_FLOCK = struct.Struct("hhqqi4x")
MAX_POSIX = BASE - 1  # the share-mode bytes live above this
UINT64_MAX = (1 << 64) - 1


def range_valid(offset: int, length: int) -> bool:
    """MS-FSA 2.1.5.7: (FileOffset + Length - 1) must not wrap past 2**64 - 1."""
    return length == 0 or offset + length - 1 <= UINT64_MAX


def ranges_overlap(offset1: int, length1: int, offset2: int, length2: int) -> bool:
    """MS-FSA 2.1.4.10: do two byte ranges touch?

    A range covers [offset, offset + length - 1]. A zero-length range at offset X is thus
    the empty interval [X, X - 1]: it touches a range that starts before X and ends at or
    after X, but never another zero-length range; {0, 0} touches nothing at all. This is
    what Windows does and what smbtorture's smb2.lock.zerobytelength checks.
    """
    if (offset1 == 0 and length1 == 0) or (offset2 == 0 and length2 == 0):
        return False
    last1 = offset1 + length1 - 1 if range_valid(offset1, length1) else UINT64_MAX
    last2 = offset2 + length2 - 1 if range_valid(offset2, length2) else UINT64_MAX
    return not (offset1 > last2 or offset2 > last1)


@dataclass(frozen=True, slots=True)
class Lock:
    """One granted byte-range lock (MS-FSA 2.1.1.4 ByteRangeLock)."""

    owner: "Open"
    offset: int
    length: int
    exclusive: bool


def lock_conflicts(held: Lock, owner: "Open", offset: int, length: int, exclusive: bool) -> bool:
    """MS-FSA 2.1.5.7: may a new lock be granted next to a lock already held?

    Shared locks never conflict with each other. A shared lock may stack on an exclusive
    lock held through the same Open; everything else that overlaps conflicts, including
    an exclusive lock on top of the same Open's own exclusive or shared lock.
    """
    if not held.exclusive and not exclusive:
        return False
    if held.exclusive and not exclusive and held.owner is owner:
        return False
    return ranges_overlap(held.offset, held.length, offset, length)


def _posix_range(offset: int, length: int) -> tuple[int, int] | None:
    """The part of an SMB range that POSIX off_t can express below the share-mode bytes."""
    if length == 0 or offset >= MAX_POSIX:
        return None
    return offset, min(length, MAX_POSIX - offset)


def _ofd(fd: int, cmd: int, ltype: int, start: int, length: int) -> int:
    res = fcntl.fcntl(fd, cmd, _FLOCK.pack(ltype, os.SEEK_SET, start, length, 0))
    return _FLOCK.unpack(res)[0]


class ByteRangeLocks:
    """All SMB byte-range locks held through this worker, by file (inode).

    Waiters (blocking LOCK requests) wait on ``changed``; it is replaced after each
    wake-up. Opens may be closed on an I/O thread, so waking goes through the event
    loop that the waiters run on.
    """

    def __init__(self):
        self._by_file: dict[int, list[Lock]] = {}
        self.changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _locks(self, op: "Open") -> list[Lock]:
        return self._by_file.get(op.file_key, [])

    def held_by(self, op: "Open") -> list[Lock]:
        return [lk for lk in self._locks(op) if lk.owner is op]

    def conflict(self, op: "Open", offset: int, length: int, exclusive: bool) -> bool:
        if op.closed:
            raise SmbError(NtStatus.FILE_CLOSED)
        for lk in self._locks(op):
            if lock_conflicts(lk, op, offset, length, exclusive):
                return True
        rng = _posix_range(offset, length)
        if rng is not None:
            # Other workers' locks; our own file description's locks never show up here.
            ltype = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
            if _ofd(op.fd, F_OFD_GETLK, ltype, *rng) != fcntl.F_UNLCK:
                return True
        return False

    def add(self, op: "Open", offset: int, length: int, exclusive: bool) -> None:
        self._by_file.setdefault(op.file_key, []).append(Lock(op, offset, length, exclusive))
        self._mirror(op)

    def remove(self, op: "Open", offset: int, length: int) -> None:
        """MS-FSA 2.1.5.8: remove one lock of this Open with exactly this range; an
        exclusive one goes before shared ones stacked on the same range."""
        locks = self._locks(op)
        matches = [i for i, lk in enumerate(locks)
                   if lk.owner is op and lk.offset == offset and lk.length == length]
        if not matches:
            raise SmbError(NtStatus.RANGE_NOT_LOCKED)
        index = next((i for i in matches if locks[i].exclusive), matches[0])
        del locks[index]
        if not locks:
            self._by_file.pop(op.file_key, None)
        self._mirror(op)
        self._wake()

    def release_all(self, op: "Open") -> None:
        """The Open is closing: drop its locks and wake every waiter, including the ones
        waiting through this very Open (they must now fail)."""
        locks = self._by_file.get(op.file_key)
        if locks:
            kept = [lk for lk in locks if lk.owner is not op]
            if kept:
                self._by_file[op.file_key] = kept
            else:
                del self._by_file[op.file_key]
        self._wake()  # the fd closes next, which drops the OFD mirror

    def check_io(self, op: "Open", offset: int, length: int, *, write: bool) -> None:
        """READ/WRITE against byte-range locks (MS-FSA 2.1.4.10): a read conflicts with
        another Open's exclusive lock, a write with any lock except the Open's own
        exclusive ones."""
        if length == 0:
            return
        for lk in self._locks(op):
            if not ranges_overlap(lk.offset, lk.length, offset, length):
                continue
            if lk.owner is op and (lk.exclusive or not write):
                continue
            if lk.exclusive or write:
                raise SmbError(NtStatus.FILE_LOCK_CONFLICT)
        rng = _posix_range(offset, length)
        if rng is not None:
            ltype = fcntl.F_WRLCK if write else fcntl.F_RDLCK
            if _ofd(op.fd, F_OFD_GETLK, ltype, *rng) != fcntl.F_UNLCK:
                raise SmbError(NtStatus.FILE_LOCK_CONFLICT)

    async def wait_changed(self, timeout: float) -> None:
        """Sleep until a lock is released or an Open closes, at most *timeout* seconds."""
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _mirror(self, op: "Open") -> None:
        """Re-apply this Open's locks as OFD locks (POSIX merges ranges, so rebuild)."""
        if op.closed:
            return
        try:
            _ofd(op.fd, F_OFD_SETLK, fcntl.F_UNLCK, 0, MAX_POSIX)
            for lk in self._locks(op):
                if lk.owner is not op:
                    continue
                rng = _posix_range(lk.offset, lk.length)
                if rng is None:
                    continue
                ltype = fcntl.F_WRLCK if lk.exclusive else fcntl.F_RDLCK
                try:
                    _ofd(op.fd, F_OFD_SETLK, ltype, *rng)
                except OSError:
                    # A write lock needs a writable fd; the SMB table still enforces it here.
                    _ofd(op.fd, F_OFD_SETLK, fcntl.F_RDLCK, *rng)
        except OSError:
            pass

    def _wake(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._notify()
        else:
            loop.call_soon_threadsafe(self._notify)

    def _notify(self) -> None:
        old, self.changed = self.changed, asyncio.Event()
        old.set()
