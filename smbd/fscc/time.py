"""FILETIME conversion (MS-DTYP 2.3.3 FILETIME; MS-FSCC 2.1.1 time fields).

A FILETIME counts 100-nanosecond intervals since 1601-01-01 00:00:00 UTC.  Unix time counts
nanoseconds since 1970-01-01; the two epochs are 11 644 473 600 seconds apart.
"""
from __future__ import annotations

#: 100 ns intervals between 1601-01-01 and 1970-01-01.
FILETIME_UNIX_EPOCH = 116_444_736_000_000_000

_FILETIME_MAX = (1 << 64) - 1


def unix_ns_to_filetime(ns: int) -> int:
    """Unix nanoseconds -> FILETIME, clamped to 0..2**64-1 (times before 1601 become 0)."""
    ft = ns // 100 + FILETIME_UNIX_EPOCH
    if ft < 0:
        return 0
    if ft > _FILETIME_MAX:
        return _FILETIME_MAX
    return ft


def filetime_to_unix_ns(ft: int) -> int:
    """FILETIME -> Unix nanoseconds (may be negative for dates before 1970)."""
    return (ft - FILETIME_UNIX_EPOCH) * 100
