"""LOCK (MS-SMB2 3.3.5.14): byte-range lock and unlock, blocking locks answered async."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from smbd.status import NtStatus, SmbError
from smbd.wire.fileio import LockElement, LockFlags, LockRequest
from smbd.wire.session import empty_response

if TYPE_CHECKING:
    from ..connection import Request

STATUS_INVALID_LOCK_RANGE = 0xC00001A1
_VALID = {LockFlags.SHARED, LockFlags.EXCLUSIVE, LockFlags.SHARED | LockFlags.FAIL_IMMEDIATELY,
          LockFlags.EXCLUSIVE | LockFlags.FAIL_IMMEDIATELY, LockFlags.UNLOCK}
# A blocking lock that waits on another worker's lock cannot be woken by it, so it re-checks.
CROSS_PROCESS_RECHECK = 0.2


def _validate(lock: LockRequest) -> bool:
    """Returns True for an unlock request. 3.3.5.14.1/2: all elements unlock or all lock;
    several locks only with FAIL_IMMEDIATELY."""
    unlock = lock.locks[0].flags == LockFlags.UNLOCK
    for el in lock.locks:
        if el.flags not in _VALID or (el.flags == LockFlags.UNLOCK) != unlock:
            raise SmbError(NtStatus.INVALID_PARAMETER, "bad lock flags")
        if el.length and el.offset + el.length - 1 > 0xFFFFFFFFFFFFFFFF:
            raise SmbError(STATUS_INVALID_LOCK_RANGE)
    if not unlock and len(lock.locks) > 1 and any(
            not el.flags & LockFlags.FAIL_IMMEDIATELY for el in lock.locks):
        raise SmbError(NtStatus.INVALID_PARAMETER, "several blocking locks")
    return unlock


async def handle_lock(req: "Request") -> bytes:
    lock = LockRequest.parse(req.msg)
    op = req.open_for(lock.file_id)
    if op.pipe is not None or op.is_dir:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    table = req.server.byte_locks
    if _validate(lock):
        for el in lock.locks:
            table.remove(op, el.offset, el.length)
        return empty_response()
    granted: list[LockElement] = []
    try:
        for el in lock.locks:
            exclusive = bool(el.flags & LockFlags.EXCLUSIVE)
            if table.conflict(op, el.offset, el.length, exclusive):
                if el.flags & LockFlags.FAIL_IMMEDIATELY:
                    raise SmbError(NtStatus.LOCK_NOT_GRANTED)
                await _wait_for_lock(req, op, el, exclusive)
            table.add(op, el.offset, el.length, exclusive)
            granted.append(el)
    except BaseException:
        for el in granted:  # all or nothing: undo what this request took
            table.remove(op, el.offset, el.length)
        raise
    return empty_response()


async def _wait_for_lock(req: "Request", op, el: LockElement, exclusive: bool) -> None:
    """Pend until the range is free, the request is cancelled or the handle closes."""
    await req.go_async()
    table = req.server.byte_locks
    while table.conflict(op, el.offset, el.length, exclusive):
        if op.closed:
            raise SmbError(NtStatus.RANGE_NOT_LOCKED)
        changed = asyncio.ensure_future(table.changed.wait())
        cancelled = asyncio.ensure_future(req.cancelled.wait())
        try:
            await asyncio.wait({changed, cancelled}, timeout=CROSS_PROCESS_RECHECK,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            cancelled.cancel()
        if req.cancelled.is_set():
            raise SmbError(NtStatus.CANCELLED)
