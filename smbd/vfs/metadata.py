"""Building :class:`FileInfo` from stat(2) data, and keeping what POSIX lacks in xattrs.

POSIX has no creation ("birth") time one can set and no DOS attributes, both of which SMB
clients set and read back.  We keep them in user xattrs of our own names, as Samba keeps
``user.DOSATTRIB``:

* ``user.smbdd.btime``: the creation time, a FILETIME as 8 bytes little-endian;
* ``user.smbdd.dosattr``: the settable FILE_ATTRIBUTE_* bits (MS-FSCC 2.6), 4 bytes LE.

Without the xattr (never set, or a filesystem without user xattrs such as tmpfs before Linux
6.6) the creation time is statx's birth time, else the oldest of mtime/ctime/atime (Samba's
fallback), and the attributes are derived from the mode: ARCHIVE for files, READONLY when the
owner may not write.  HIDDEN is set for dot-files, following Samba's default
``hide dot files = yes``.
"""
from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Callable

from smbd.fscc.constants import SETTABLE_ATTRIBUTES, FileAttributes
from smbd.fscc.time import unix_ns_to_filetime

from . import syscalls
from .types import FileInfo

XATTR_BTIME = "user.smbdd.btime"
XATTR_DOSATTR = "user.smbdd.dosattr"

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")

#: errno values that mean "this filesystem (or this file) has no user xattrs": not an error.
_NO_XATTR = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES,
                       errno.ERANGE, errno.ENOENT, errno.ELOOP})


def _read_xattr(target: int | str, name: str, follow: bool) -> bytes | None:
    try:
        if isinstance(target, int):
            return os.getxattr(target, name)
        return os.getxattr(target, name, follow_symlinks=follow)
    except OSError as e:
        if e.errno in _NO_XATTR:
            return None
        raise


def write_xattr(fd: int, name: str, value: bytes) -> bool:
    """Store an xattr on an open (non-O_PATH) fd; False when the filesystem refuses xattrs."""
    try:
        os.setxattr(fd, name, value)
        return True
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.ENOSPC):
            return False
        raise


def store_birth_time(fd: int, filetime: int) -> bool:
    return write_xattr(fd, XATTR_BTIME, _U64.pack(filetime))


def store_dos_attributes(fd: int, attributes: int) -> bool:
    return write_xattr(fd, XATTR_DOSATTR, _U32.pack(attributes & SETTABLE_ATTRIBUTES))


def attributes_for_new(requested: int, *, is_dir: bool) -> int:
    """The FILE_ATTRIBUTE_* bits to store for a file a CREATE makes or overwrites: what the
    client asked, less DIRECTORY and NORMAL (not stored), and for a file ARCHIVE, which NTFS
    sets on every file it creates or overwrites (MS-FSA 2.1.5.1.2.1; smbtorture
    smb2.streams.attributes2 reads HIDDEN|ARCHIVE back from a file created HIDDEN).  0 means
    there is nothing to store: the defaults (ARCHIVE for files) already say it."""
    attrs = requested & ~int(FileAttributes.DIRECTORY | FileAttributes.NORMAL)
    if attrs and not is_dir:
        attrs |= FileAttributes.ARCHIVE
    return attrs


def is_hidden_name(name: str) -> bool:
    """Samba's ``hide dot files``: names starting with '.' except '.' and '..' are hidden."""
    return name.startswith(".") and name not in (".", "..")


def file_info_from_stat(
    st: os.stat_result,
    *,
    name: str,
    xattr_target: int | str | None,
    birth_ns: "Callable[[], int | None]",
    follow: bool = False,
) -> FileInfo:
    """Combine stat data, our xattrs (read from ``xattr_target``: an fd or a path, whose last
    symlink is followed only with ``follow``) and the statx birth time (``birth_ns``, called
    only when the xattr is absent) into a :class:`FileInfo`."""
    is_dir = stat.S_ISDIR(st.st_mode)
    btime_raw = dos_raw = None
    if xattr_target is not None:
        btime_raw = _read_xattr(xattr_target, XATTR_BTIME, follow)
        dos_raw = _read_xattr(xattr_target, XATTR_DOSATTR, follow)

    if btime_raw is not None and len(btime_raw) == 8:
        creation = _U64.unpack(btime_raw)[0]
    elif (born := birth_ns()) is not None:
        creation = unix_ns_to_filetime(born)
    else:
        creation = unix_ns_to_filetime(min(st.st_mtime_ns, st.st_ctime_ns, st.st_atime_ns))

    if dos_raw is not None and len(dos_raw) == 4:
        attributes = _U32.unpack(dos_raw)[0] & SETTABLE_ATTRIBUTES
    else:
        attributes = 0 if is_dir else FileAttributes.ARCHIVE
        if not st.st_mode & stat.S_IWUSR:
            attributes |= FileAttributes.READONLY
    if is_dir:
        attributes |= FileAttributes.DIRECTORY
    if is_hidden_name(name):
        attributes |= FileAttributes.HIDDEN
    if attributes == 0:
        attributes = FileAttributes.NORMAL

    return FileInfo(
        file_id=st.st_ino,
        volume_id=st.st_dev,
        is_dir=is_dir,
        size=0 if is_dir else st.st_size,
        allocation_size=0 if is_dir else st.st_blocks * 512,
        nlink=st.st_nlink,
        creation_time=creation,
        last_access_time=unix_ns_to_filetime(st.st_atime_ns),
        last_write_time=unix_ns_to_filetime(st.st_mtime_ns),
        change_time=unix_ns_to_filetime(st.st_ctime_ns),
        attributes=int(attributes),
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
    )


def info_for_fd(fd: int, name: str) -> FileInfo:
    """FileInfo of an open fd (not O_PATH: xattrs can't be read through those)."""
    st = os.fstat(fd)
    return file_info_from_stat(st, name=name, xattr_target=fd,
                               birth_ns=lambda: syscalls.birth_time_ns(fd))


def info_at(dirfd: int, name: str) -> FileInfo:
    """FileInfo of ``name`` inside directory ``dirfd`` without following a final symlink.

    The xattrs are read through ``/proc/self/fd/<dirfd>/<name>``: that path starts at our own
    directory fd (a magic link we made) and ``name`` is one validated component, so it reaches
    exactly the entry stat saw.
    """
    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    return file_info_from_stat(
        st,
        name=name,
        xattr_target=f"/proc/self/fd/{dirfd}/{name}",
        birth_ns=lambda: syscalls.birth_time_ns(dirfd, name),
    )


def info_for_path_fd(path_fd: int, name: str) -> FileInfo:
    """FileInfo of an O_PATH fd: fstat and statx work on it directly; xattrs are read through
    its ``/proc/self/fd`` magic link (fgetxattr refuses O_PATH fds)."""
    st = os.fstat(path_fd)
    return file_info_from_stat(
        st,
        name=name,
        xattr_target=f"/proc/self/fd/{path_fd}",
        birth_ns=lambda: syscalls.birth_time_ns(path_fd),
        follow=True,
    )
