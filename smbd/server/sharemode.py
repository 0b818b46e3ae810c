"""Share modes that hold across worker processes (MS-FSA 2.1.5.1.2.1 "Check Sharing Access").

Each client has its own worker process, so two clients opening one file meet only in
the kernel. Every Open owns an open file description; we record its access and share
mode as OFD read locks on a few bytes at the top of the off_t range, where no file data
lives: one byte per "has READ/WRITE/DELETE access" and per "denies READ/WRITE/DELETE".
A new open tests the bytes that would conflict (F_OFD_GETLK with a write lock) and then
takes its own. The kernel drops an OFD's locks when its last fd closes, so a crashed
worker can never leave a file locked. A flock() on the new fd serialises check-and-set
between processes; flock and fcntl locks do not interact on Linux.
"""
from __future__ import annotations

import fcntl
import os
import struct

from smbd.status import NtStatus, SmbError
from smbd.wire.create import Access, ShareAccess

F_OFD_GETLK = 36
F_OFD_SETLK = 37
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on x86_64/aarch64: type, whence, start, len, pid

BASE = (1 << 63) - 64
HAS_READ, HAS_WRITE, HAS_DELETE, DENY_READ, DENY_WRITE, DENY_DELETE = range(6)
# Held on the *base file* by every open of one of its named streams (smbd.vfs.streams keeps each
# stream in a file of its own, whose fd carries the stream's own share modes above): a file
# with an open stream cannot be renamed, and one whose stream is open without FILE_SHARE_DELETE
# cannot be opened for DELETE (smbtorture smb2.streams.delete, basefile-rename-with-open-stream).
HAS_STREAM_OPEN, STREAM_DENIES_DELETE = 6, 7

READ_BITS = Access.FILE_READ_DATA | Access.FILE_EXECUTE
WRITE_BITS = Access.FILE_WRITE_DATA | Access.FILE_APPEND_DATA
DELETE_BITS = Access.DELETE


class SharingViolation(SmbError):
    """STATUS_SHARING_VIOLATION on an existing file (or stream), naming it by ``file_key`` so
    CREATE can break the handle caching of the leases that hold it open (MS-SMB2 3.3.4.7)."""

    def __init__(self, file_key: int):
        super().__init__(NtStatus.SHARING_VIOLATION)
        self.file_key = file_key


def _lock(fd: int, cmd: int, ltype: int, slot: int) -> int:
    req = _FLOCK.pack(ltype, os.SEEK_SET, BASE + slot, 1, 0)
    res = fcntl.fcntl(fd, cmd, req)
    return _FLOCK.unpack(res)[0]


def _held_by_other(fd: int, slot: int) -> bool:
    return _lock(fd, F_OFD_GETLK, fcntl.F_WRLCK, slot) != fcntl.F_UNLCK


# For READ, WRITE and DELETE: the access bits that count as using it, the share flag that
# allows others to use it, and the bytes that record "has it" and "denies it" (MS-FSA 2.1.5.1.2.1).
_KINDS = ((READ_BITS, ShareAccess.READ, HAS_READ, DENY_READ),
          (WRITE_BITS, ShareAccess.WRITE, HAS_WRITE, DENY_WRITE),
          (DELETE_BITS, ShareAccess.DELETE, HAS_DELETE, DENY_DELETE))


def conflicts(access: int, share: int) -> list[int]:
    """The bytes another open must not hold for this one to be allowed: the "denies" byte of
    what we use, and the "has" byte of what we do not share."""
    slots = ([deny for bits, _, _, deny in _KINDS if access & bits]
             + [has for _, flag, has, _ in _KINDS if not share & flag])
    if access & DELETE_BITS:
        slots.append(STREAM_DENIES_DELETE)
    return slots


def own_slots(access: int, share: int) -> list[int]:
    """The bytes this open holds: "has" for what it uses, "denies" for what it does not share."""
    return ([has for bits, _, has, _ in _KINDS if access & bits]
            + [deny for _, flag, _, deny in _KINDS if not share & flag])


def would_conflict(access: int, share: int, other_access: int, other_share: int) -> bool:
    """The same check without the kernel: would a new open (access, share) meet a sharing
    violation against an existing one? For deciding breaks before the open (smbd.server.caching)."""
    data = READ_BITS | WRITE_BITS | DELETE_BITS
    if not access & data or not other_access & data:
        return False
    return bool(set(conflicts(access, share)) & set(own_slots(other_access, other_share)))


def acquire(fd: int, access: int, share: int) -> None:
    """Check the new open against all others on the same file and record it, or raise
    STATUS_SHARING_VIOLATION. Opens asking only for attributes take part in neither side
    of the check, as in MS-FSA."""
    if not access & (READ_BITS | WRITE_BITS | DELETE_BITS):
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        for slot in conflicts(access, share):
            if _held_by_other(fd, slot):
                raise SmbError(NtStatus.SHARING_VIOLATION)
        for slot in own_slots(access, share):
            _lock(fd, F_OFD_SETLK, fcntl.F_RDLCK, slot)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def others_hold(fd: int, slot: int) -> bool:
    """Whether another open of the file holds ``slot`` (e.g. HAS_DELETE before a rename)."""
    return _held_by_other(fd, slot)


def hold_for_stream(base_fd: int, share: int) -> None:
    """Mark the base file as having an open stream (and one that denies delete when ``share``
    lacks FILE_SHARE_DELETE); the marks go with ``base_fd``'s open file description."""
    _lock(base_fd, F_OFD_SETLK, fcntl.F_RDLCK, HAS_STREAM_OPEN)
    if not share & ShareAccess.DELETE:
        _lock(base_fd, F_OFD_SETLK, fcntl.F_RDLCK, STREAM_DENIES_DELETE)
