"""errno -> NTSTATUS, in one table.

The mapping follows what Samba does (``map_nt_error_from_unix``, source3/lib/errmap_unix.c) and
the MS-ERREF meanings, with one twist every caller needs: a missing *middle* component of a path
is STATUS_OBJECT_PATH_NOT_FOUND, while a missing *last* component is
STATUS_OBJECT_NAME_NOT_FOUND (MS-FSA 2.1.5.1.1, and what smbtorture checks).
"""
from __future__ import annotations

import contextlib
import errno

from smbd.status import NtStatus, SmbError

_ERRNO_TO_STATUS: dict[int, int] = {
    errno.ENOENT: NtStatus.OBJECT_NAME_NOT_FOUND,
    errno.EEXIST: NtStatus.OBJECT_NAME_COLLISION,
    errno.EACCES: NtStatus.ACCESS_DENIED,
    errno.EPERM: NtStatus.ACCESS_DENIED,
    errno.ENOTEMPTY: NtStatus.DIRECTORY_NOT_EMPTY,
    errno.ENOTDIR: NtStatus.OBJECT_PATH_NOT_FOUND,
    errno.EISDIR: NtStatus.FILE_IS_A_DIRECTORY,
    errno.ENOSPC: NtStatus.DISK_FULL,
    errno.EDQUOT: NtStatus.DISK_FULL,
    errno.EFBIG: NtStatus.DISK_FULL,
    errno.EROFS: NtStatus.MEDIA_WRITE_PROTECTED,
    errno.ENAMETOOLONG: NtStatus.OBJECT_NAME_INVALID,
    errno.EXDEV: NtStatus.NOT_SAME_DEVICE,
    errno.EINVAL: NtStatus.INVALID_PARAMETER,
    errno.EBADF: NtStatus.INVALID_HANDLE,
    errno.EMFILE: NtStatus.TOO_MANY_OPENED_FILES,
    errno.ENFILE: NtStatus.TOO_MANY_OPENED_FILES,
    errno.ENOMEM: NtStatus.NO_MEMORY,
    errno.EBUSY: NtStatus.SHARING_VIOLATION,
    errno.ETXTBSY: NtStatus.SHARING_VIOLATION,
    errno.EOPNOTSUPP: NtStatus.NOT_SUPPORTED,
    errno.ENOSYS: NtStatus.NOT_IMPLEMENTED,
    # A symlink met where none may be followed (O_NOFOLLOW): to the client the name simply
    # does not resolve, as Samba answers for links it refuses to follow.
    errno.ELOOP: NtStatus.OBJECT_NAME_NOT_FOUND,
    errno.EMLINK: NtStatus.ACCESS_DENIED,
    errno.EAGAIN: NtStatus.SHARING_VIOLATION,
}


def status_from_oserror(e: OSError, *, last_component: bool = True) -> int:
    """The NTSTATUS for an OSError raised while working on a path or an fd.

    ``last_component=False`` says the failing lookup was for a directory on the way, which turns
    "not found" into STATUS_OBJECT_PATH_NOT_FOUND.
    """
    code = e.errno
    if code in (errno.ENOENT, errno.ELOOP) and not last_component:
        return NtStatus.OBJECT_PATH_NOT_FOUND
    return _ERRNO_TO_STATUS.get(code, NtStatus.UNSUCCESSFUL)


class translate_oserror(contextlib.ContextDecorator):
    """Turn any OSError raised inside into :class:`SmbError` (context manager or decorator).

    ``SmbError`` raised inside passes through untouched.
    """

    __slots__ = ("last_component",)

    def __init__(self, *, last_component: bool = True):
        self.last_component = last_component

    def __enter__(self) -> "translate_oserror":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None and isinstance(exc, OSError):
            status = status_from_oserror(exc, last_component=self.last_component)
            raise SmbError(status, f"{exc.strerror or exc}") from exc
        return False
