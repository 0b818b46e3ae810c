"""Thin ctypes wrappers for the Linux calls Python's ``os`` module lacks.

openat2(2) (RESOLVE_BENEATH), renameat2(2) (RENAME_NOREPLACE), statx(2) (birth time),
futimens(2) (UTIME_OMIT) and fallocate(2) (FALLOC_FL_KEEP_SIZE).  Each wrapper raises OSError
with the real errno, like the ``os`` functions, and is ``None``-safe: where a call is missing on
this platform the module-level ``HAVE_*`` flag is False and the wrapper raises
OSError(ENOSYS), so callers need one fallback path only.  ctypes releases the GIL around the
calls, so the worker's I/O threads run them in parallel.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import struct
import threading

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

# openat2(2) resolve flags (include/uapi/linux/openat2.h).
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

RENAME_NOREPLACE = 0x1
FALLOC_FL_KEEP_SIZE = 0x1
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
STATX_BTIME = 0x800
UTIME_OMIT = (1 << 30) - 2

# Syscall numbers where glibc has no wrapper (openat2 never had one in glibc 2.36).
_SYSCALLS = {
    "x86_64": {"openat2": 437, "renameat2": 316},
    "aarch64": {"openat2": 437, "renameat2": 276},
}.get(platform.machine(), {})

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _raise_errno(what: str, path: str | None = None) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}", path)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


HAVE_OPENAT2 = "openat2" in _SYSCALLS


def openat2(dirfd: int, path: str, flags: int, mode: int, resolve: int) -> int:
    """openat2(2); raises OSError(ENOSYS) where the kernel or this platform lacks it."""
    if not HAVE_OPENAT2:
        raise OSError(errno.ENOSYS, "openat2 unavailable")
    how = _OpenHow(flags, mode, resolve)
    fd = _syscall(
        ctypes.c_long(_SYSCALLS["openat2"]),
        ctypes.c_int(dirfd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        _raise_errno("openat2", path)
    return fd


_renameat2 = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    _renameat2.restype = ctypes.c_int
HAVE_RENAMEAT2 = _renameat2 is not None or "renameat2" in _SYSCALLS


def renameat2(olddirfd: int, old: str, newdirfd: int, new: str, flags: int) -> None:
    """renameat2(2); EINVAL from a filesystem that can't honour ``flags`` is passed through."""
    o, n = os.fsencode(old), os.fsencode(new)
    if _renameat2 is not None:
        rc = _renameat2(olddirfd, o, newdirfd, n, flags)
    elif "renameat2" in _SYSCALLS:
        rc = _syscall(
            ctypes.c_long(_SYSCALLS["renameat2"]), ctypes.c_int(olddirfd), ctypes.c_char_p(o),
            ctypes.c_int(newdirfd), ctypes.c_char_p(n), ctypes.c_uint(flags),
        )
    else:
        raise OSError(errno.ENOSYS, "renameat2 unavailable")
    if rc != 0:
        _raise_errno("renameat2", old)


# struct statx (include/uapi/linux/stat.h) is 256 bytes; we read stx_mask (offset 0) and
# stx_btime (offset 0x50: s64 tv_sec, u32 tv_nsec) straight from a per-thread buffer, which is
# several times cheaper than building a ctypes.Structure per call.
_STATX_SIZE = 256
_STATX_MASK = struct.Struct("<I")
_STATX_BTIME = struct.Struct("<qI")
_STATX_BTIME_OFFSET = 0x50
_tls = threading.local()

_statx = getattr(_libc, "statx", None)
if _statx is not None:
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_char_p]
    _statx.restype = ctypes.c_int
HAVE_STATX = _statx is not None


def birth_time_ns(dirfd: int, path: str = "", *, follow_symlinks: bool = False) -> int | None:
    """The birth time in Unix ns from statx(2), or None when the filesystem doesn't keep one.

    ``path=""`` asks about ``dirfd`` itself (AT_EMPTY_PATH).
    """
    if _statx is None:
        return None
    buf = getattr(_tls, "statx_buf", None)
    if buf is None:
        buf = _tls.statx_buf = ctypes.create_string_buffer(_STATX_SIZE)
    flags = 0 if follow_symlinks else AT_SYMLINK_NOFOLLOW
    if path == "":
        flags |= AT_EMPTY_PATH
    if _statx(dirfd, os.fsencode(path), flags, STATX_BTIME, buf) != 0:
        return None
    if not _STATX_MASK.unpack_from(buf, 0)[0] & STATX_BTIME:
        return None
    sec, nsec = _STATX_BTIME.unpack_from(buf, _STATX_BTIME_OFFSET)
    return sec * 1_000_000_000 + nsec


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_futimens = _libc.futimens
_futimens.argtypes = [ctypes.c_int, ctypes.POINTER(_Timespec * 2)]
_futimens.restype = ctypes.c_int


def _timespec(ns: int | None) -> _Timespec:
    if ns is None:
        return _Timespec(0, UTIME_OMIT)
    sec, nsec = divmod(ns, 1_000_000_000)
    return _Timespec(sec, nsec)


def futimens(fd: int, atime_ns: int | None, mtime_ns: int | None) -> None:
    """Set access/modification times of ``fd``; ``None`` leaves that time alone (UTIME_OMIT)."""
    times = (_Timespec * 2)(_timespec(atime_ns), _timespec(mtime_ns))
    if _futimens(fd, ctypes.byref(times)) != 0:
        _raise_errno("futimens")


_fallocate = getattr(_libc, "fallocate64", None) or getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int


def fallocate_keep_size(fd: int, offset: int, length: int) -> None:
    """Reserve blocks without changing the file size (FALLOC_FL_KEEP_SIZE)."""
    if _fallocate is None:
        raise OSError(errno.EOPNOTSUPP, "fallocate unavailable")
    if _fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        _raise_errno("fallocate")
