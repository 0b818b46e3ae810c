"""CHANGE_NOTIFY (MS-SMB2 3.3.5.19): pends until the directory changes, is cancelled or closed."""
from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from smbd.status import NtStatus, SmbError
from smbd.wire.control import WATCH_TREE, ChangeNotifyRequest, output_response
from smbd.wire.create import Access

from ..notify import Watch

if TYPE_CHECKING:
    from ..connection import Request


async def handle_change_notify(req: "Request") -> bytes:
    cn = ChangeNotifyRequest.parse(req.msg)
    op = req.open_for(cn.file_id)
    if not op.is_dir or op.pipe is not None:
        raise SmbError(NtStatus.INVALID_PARAMETER, "not a directory")
    if not op.granted_access & Access.FILE_READ_DATA:  # FILE_LIST_DIRECTORY
        raise SmbError(NtStatus.ACCESS_DENIED)
    if cn.output_length > req.server.config.max_io_size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if op.notify is None:
        path = os.readlink(f"/proc/self/fd/{op.fd}")
        op.notify = Watch(path, bool(cn.flags & WATCH_TREE), cn.completion_filter)
    watch = op.notify
    if not watch.has_news():
        await req.go_async()
        waiter = asyncio.ensure_future(watch.event.wait())
        cancelled = asyncio.ensure_future(req.cancelled.wait())
        try:
            while not watch.has_news() and not watch.closed and not req.cancelled.is_set():
                watch.event.clear()
                await asyncio.wait({waiter, cancelled}, return_when=asyncio.FIRST_COMPLETED)
                if waiter.done() and not watch.has_news():
                    waiter = asyncio.ensure_future(watch.event.wait())
        finally:
            waiter.cancel()
            cancelled.cancel()
        if req.cancelled.is_set():
            raise SmbError(NtStatus.CANCELLED)
        if watch.closed or op.closed:
            req.status = NtStatus.NOTIFY_CLEANUP
            return output_response(b"")
    enum_dir, data = watch.take(cn.output_length)
    if enum_dir:
        # A success-class status with an empty buffer: "changed, enumerate again" (3.3.5.19).
        req.status = NtStatus.NOTIFY_ENUM_DIR
        return output_response(b"")
    return output_response(data)
