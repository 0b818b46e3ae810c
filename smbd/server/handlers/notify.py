"""CHANGE_NOTIFY (MS-SMB2 3.3.5.19): pends until the directory changes, is cancelled or closed."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from smbd.status import NtStatus, SmbError
from smbd.wire.control import WATCH_TREE, ChangeNotifyRequest, output_response
from smbd.wire.create import Access

from ..notify import Answer, Watch

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
        # The first request's filter, WATCH_TREE and buffer size hold until the handle closes.
        op.notify = Watch(op.fd, bool(cn.flags & WATCH_TREE), cn.completion_filter, cn.output_length,
                          streams=op.tree.vfs.streams)
        if req.server.delete_pending(op.file_key):
            op.notify.directory_deleted()
    watch = op.notify
    answer = watch.poll(cn.output_length)
    if answer is None:
        waiter = watch.wait(cn.output_length)
        await req.go_async()
        cancelled = asyncio.ensure_future(req.cancelled.wait())
        try:
            await asyncio.wait({waiter, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
        if not waiter.done():
            watch.forget(waiter)
            waiter.cancel()
            raise SmbError(NtStatus.CANCELLED)
        answer = waiter.result()
    return _respond(req, answer)


def _respond(req: "Request", answer: Answer) -> bytes:
    if answer.status == NtStatus.SUCCESS:
        return output_response(answer.data)
    if answer.status in (NtStatus.NOTIFY_ENUM_DIR, NtStatus.NOTIFY_CLEANUP):
        # Success-class statuses with an empty buffer: "changed, enumerate again" and "the
        # handle was closed" (3.3.5.19).
        req.status = answer.status
        return output_response(b"")
    raise SmbError(answer.status)
