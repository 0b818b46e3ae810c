"""Byte-range locks with SMB semantics (MS-FSA 2.1.5.7, MS-SMB2 3.3.5.14).

SMB locks differ from POSIX ones: they stack, never merge, and an unlock must name a
lock exactly. So each worker keeps the SMB view in a table, and mirrors every Open's
locks into OFD locks on its own file description, so that workers serving other clients
see them (F_OFD_GETLK) and the kernel drops them if this worker dies.
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


@dataclass(frozen=True, slots=True)
class Lock:
    owner: "Open"
    offset: int
    length: int
    exclusive: bool

    def overlaps(self, offset: int, length: int) -> bool:
        if self.length == 0 or length == 0:
            return False  # zero-length ranges never conflict (MS-FSA 2.1.5.7)
        return offset < self.offset + self.length and self.offset < offset + length


def _posix_range(offset: int, length: int) -> tuple[int, int] | None:
    """The part of an SMB range that POSIX off_t can express below the share-mode bytes."""
    if length == 0 or offset >= MAX_POSIX:
        return None
    return offset, min(length, MAX_POSIX - offset)


def _ofd(fd: int, cmd: int, ltype: int, start: int, length: int) -> int:
    res = fcntl.fcntl(fd, cmd, _FLOCK.pack(ltype, os.SEEK_SET, start, length, 0))
    return _FLOCK.unpack(res)[0]


class ByteRangeLocks:
    """All SMB byte-range locks held through this worker, by file (inode)."""

    def __init__(self):
        self._by_file: dict[int, list[Lock]] = {}
        self.changed = asyncio.Event()

    def _locks(self, op: "Open") -> list[Lock]:
        return self._by_file.get(op.file_key, [])

    def conflict(self, op: "Open", offset: int, length: int, exclusive: bool) -> bool:
        for lk in self._locks(op):
            if lk.overlaps(offset, length) and (exclusive or lk.exclusive):
                return True
        rng = _posix_range(offset, length)
        if rng is not None:
            ltype = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
            if _ofd(op.fd, F_OFD_GETLK, ltype, *rng) != fcntl.F_UNLCK:
                return True
        return False

    def add(self, op: "Open", offset: int, length: int, exclusive: bool) -> None:
        self._by_file.setdefault(op.file_key, []).append(Lock(op, offset, length, exclusive))
        self._mirror(op)

    def remove(self, op: "Open", offset: int, length: int) -> None:
        locks = self._locks(op)
        for i, lk in enumerate(locks):
            if lk.owner is op and lk.offset == offset and lk.length == length:
                del locks[i]
                self._mirror(op)
                self._wake()
                return
        raise SmbError(NtStatus.RANGE_NOT_LOCKED)

    def release_all(self, op: "Open") -> None:
        locks = self._by_file.get(op.file_key)
        if not locks:
            return
        kept = [lk for lk in locks if lk.owner is not op]
        if len(kept) != len(locks):
            if kept:
                self._by_file[op.file_key] = kept
            else:
                del self._by_file[op.file_key]
            self._wake()  # the fd closes next, which drops the OFD mirror

    def check_io(self, op: "Open", offset: int, length: int, *, write: bool) -> None:
        """READ/WRITE against locks held by other opens (MS-FSA 2.1.4.10)."""
        if length == 0:
            return
        for lk in self._locks(op):
            if not lk.overlaps(offset, length):
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

    def _mirror(self, op: "Open") -> None:
        """Re-apply this Open's locks as OFD locks (POSIX merges ranges, so rebuild)."""
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
        self.changed.set()
        self.changed = asyncio.Event()
