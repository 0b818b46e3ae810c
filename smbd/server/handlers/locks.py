"""LOCK (MS-SMB2 3.3.5.14): byte-range lock and unlock, blocking locks answered async."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from smbd.status import NtStatus, SmbError
from smbd.wire.fileio import LockElement, LockFlags, LockRequest
from smbd.wire.session import empty_response

from .. import caching, persistent
from ..durable import lock_done, lock_replayed
from ..locks import range_valid

if TYPE_CHECKING:
    from ..connection import Request

STATUS_INVALID_LOCK_RANGE = 0xC00001A1
_BLOCKING = {LockFlags.SHARED, LockFlags.EXCLUSIVE}
_IMMEDIATE = {LockFlags.SHARED | LockFlags.FAIL_IMMEDIATELY, LockFlags.EXCLUSIVE | LockFlags.FAIL_IMMEDIATELY}
# A blocking lock that waits on another worker's lock cannot be woken by it, so it re-checks.
CROSS_PROCESS_RECHECK = 0.2


def classify(lock: LockRequest) -> bool:
    """Validate the flags of a LOCK request (3.3.5.14); True for an unlock request.

    The first element decides: unlock, a single blocking lock, or fail-immediately
    locks. A lock request with any UNLOCK element, or with several elements of which
    one could block, is refused before anything happens. An unlock request is checked
    element by element while it runs (``unlock``), as Windows and Samba do: the
    unlocks before a bad element stay done.
    """
    first = lock.locks[0].flags
    if first == LockFlags.UNLOCK:
        return True
    if first in _BLOCKING:
        if len(lock.locks) > 1:
            raise SmbError(NtStatus.INVALID_PARAMETER, "several locks, one blocking")
    elif first not in _IMMEDIATE:
        raise SmbError(NtStatus.INVALID_PARAMETER, "bad lock flags")
    for el in lock.locks[1:]:
        if el.flags not in _IMMEDIATE:
            raise SmbError(NtStatus.INVALID_PARAMETER, "bad or blocking lock among several")
    return False


async def handle_lock(req: "Request") -> bytes:
    lock = LockRequest.parse(req.msg)
    op = req.open_for(lock.file_id)
    if op.pipe is not None:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if op.is_dir:
        raise SmbError(NtStatus.INVALID_DEVICE_REQUEST, "lock on a directory")
    if lock_replayed(op, req.conn, lock.sequence):
        return empty_response()  # 3.3.5.14: a replay of a LOCK already done
    if classify(lock):
        _unlock(req, op, lock.locks)
    else:
        # MS-FSA 2.1.5.7 with 2.1.4.12 (LOCK_CONTROL): a lock request first breaks every level
        # II oplock of the file, the locker's own included, and other keys' R, as a write
        # would, granted or not (smbtorture smb2.oplock.brl1-3).
        caching.data_changing(req.server, op)
        await _lock(req, op, lock.locks)
    lock_done(op, req.conn, lock.sequence)
    persistent.changed(req.server, op)  # a persistent Open's locks outlive the worker
    return empty_response()


def _unlock(req: "Request", op, elements: tuple[LockElement, ...]) -> None:
    """MS-FSA 2.1.5.8, in element order; stop at the first failure."""
    table = req.server.byte_locks
    for el in elements:
        if el.flags != LockFlags.UNLOCK:
            raise SmbError(NtStatus.INVALID_PARAMETER, "lock element in an unlock request")
        table.remove(op, el.offset, el.length)


async def _lock(req: "Request", op, elements: tuple[LockElement, ...]) -> None:
    """MS-FSA 2.1.5.7 for each element; all or nothing."""
    table = req.server.byte_locks
    granted: list[LockElement] = []
    try:
        for el in elements:
            if not range_valid(el.offset, el.length):
                raise SmbError(STATUS_INVALID_LOCK_RANGE)
            exclusive = bool(el.flags & LockFlags.EXCLUSIVE)
            if table.conflict(op, el.offset, el.length, exclusive):
                if el.flags & LockFlags.FAIL_IMMEDIATELY:
                    raise SmbError(NtStatus.LOCK_NOT_GRANTED)
                await _wait_for_lock(req, op, el, exclusive)
            table.add(op, el.offset, el.length, exclusive)
            granted.append(el)
    except BaseException:
        if not op.closed:
            for el in reversed(granted):  # undo what this request took
                table.remove(op, el.offset, el.length)
        raise


async def _wait_for_lock(req: "Request", op, el: LockElement, exclusive: bool) -> None:
    """Pend until the range is free, the request is cancelled or the handle closes.

    A handle closed under a pending lock (CLOSE, TREE_DISCONNECT, LOGOFF) fails it with
    RANGE_NOT_LOCKED, as Windows answers (smbtorture smb2.lock.cancel-tdis/-logoff).
    """
    await req.go_async()
    table = req.server.byte_locks
    while True:
        if op.closed:
            raise SmbError(NtStatus.RANGE_NOT_LOCKED, "handle closed while waiting")
        if req.cancelled.is_set():
            raise SmbError(NtStatus.CANCELLED)
        if not table.conflict(op, el.offset, el.length, exclusive):
            return
        await _wait_changed_or_cancelled(req, table)


async def _wait_changed_or_cancelled(req: "Request", table) -> None:
    changed = asyncio.ensure_future(table.wait_changed(CROSS_PROCESS_RECHECK))
    cancelled = asyncio.ensure_future(req.cancelled.wait())
    try:
        await asyncio.wait({changed, cancelled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        changed.cancel()
        cancelled.cancel()
