"""Extended attributes (MS-FSA 2.1.1.5 File.ExtendedAttributes) kept as user xattrs.

Each EA lives in the xattr ``user.smbdd.ea.<NAME>``; EA names are case-insensitive on
Windows, so a set replaces any EA whose name differs only in case. A filesystem without
user xattrs has no EAs: reads answer an empty list and writes raise OSError(ENOTSUP),
which the handlers turn into STATUS_EAS_NOT_SUPPORTED.
"""
from __future__ import annotations

import errno
import os

PREFIX = "user.smbdd.ea."
_NO_XATTR = {errno.ENOTSUP, errno.EOPNOTSUPP}


def list_eas(fd: int) -> list[tuple[str, bytes]]:
    """(name, value) of every EA of the open file, in name order."""
    try:
        names = sorted(n for n in os.listxattr(fd) if n.startswith(PREFIX))
    except OSError as e:
        if e.errno in _NO_XATTR:
            return []
        raise
    out = []
    for full in names:
        try:
            out.append((full[len(PREFIX):], os.getxattr(fd, full)))
        except OSError as e:
            if e.errno != errno.ENODATA:  # removed meanwhile
                raise
    return out


def set_eas(fd: int, eas: list[tuple[str, bytes]]) -> None:
    """Set each EA; an empty value deletes it (MS-FSA 2.1.5.14.4)."""
    existing = {n.upper(): n for n, _ in list_eas(fd)}
    for name, value in eas:
        old = existing.pop(name.upper(), None)
        if old is not None and (old != name or not value):
            os.removexattr(fd, PREFIX + old)
        if value:
            os.setxattr(fd, PREFIX + name, value)
            existing[name.upper()] = name
