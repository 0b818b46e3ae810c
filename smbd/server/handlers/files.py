"""CREATE (3.3.5.9), CLOSE (3.3.5.10), FLUSH (3.3.5.11), READ (3.3.5.12), WRITE (3.3.5.13)
and the oplock break acknowledgement (3.3.5.22.1; oplocks themselves: smbd.server.oplocks)."""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import struct
from typing import TYPE_CHECKING

from smbd import identity
from smbd.core.credits import required_charge
from smbd.fscc.constants import FileAttributes
from smbd.security.access import maximal_access, narrow_by_stored_dacl
from smbd.security.store import create_context_descriptor, parent_stored, secure_new_file
from smbd.status import NtStatus, SmbError
from smbd.transport.tcp import FileSpan
from smbd.vfs.errors import translate_oserror
from smbd.vfs.metadata import attributes_for_new
from smbd.vfs.eas import set_eas
from smbd.wire import fileio
from smbd.wire.create import (VALID_ACCESS, WRITE_ACCESS, Access, CreateAction, CreateOptions, CreateRequest,
                              CreateResponse, Disposition, OplockLevel, encode_contexts, map_generic)
from smbd.wire.ea import EaListError, FullEa, parse_full_ea_list
from smbd.wire.lease import BREAK_ACK_SIZE, LEASE_CONTEXT, LeaseBreakAck, LeaseRequest, break_structure_size
from smbd.wire.oplock import OplockBreakAck, oplock_break_response

from .. import caching, durable, persistent, sharemode, streams
from ..objects import Open
from ..leases import is_oplock_stat_open, is_stat_open, lease_manager
from ..oplocks import BREAK_ACK_TIMEOUT

if TYPE_CHECKING:
    from smbd.vfs.names import StreamName

    from ..connection import Request
    from ..state import ServerState

log = logging.getLogger("smbd.files")

_OPTIONS_NOT_SUPPORTED = CreateOptions.OPEN_BY_FILE_ID | CreateOptions.RESERVE_OPFILTER
_OPTIONS_RESERVED = 0xFF000000
_ATTRIBUTES_VALID = 0x00007FB7  # FILE_ATTRIBUTE_* bits a client may pass (MS-FSCC 2.6)
# MS-FSA 2.1.5.3: no write may end beyond this offset (16 TiB - 64 KiB); Samba enforces it too.
MAX_FILE_SIZE = 0xFFFFFFF0000
_MXAC = b"MxAc"
_EXTA = b"ExtA"
_QFID = b"QFid"
# How long a CREATE waits for oplock breaks to finish before failing: the acknowledgment
# timer (3.3.2.1) plus slack; the kernel itself gives up on a lease after
# /proc/sys/fs/lease-break-time (45 s by default).
_BREAK_WAIT_LIMIT = BREAK_ACK_TIMEOUT + 15.0


class _LeaseBreakPending(Exception):
    """open(2) met a kernel lease (an oplock held by any client, or a local program's
    lease): the VFS opens with O_NONBLOCK, so the kernel started the break and failed the
    open with EWOULDBLOCK instead of blocking an I/O thread. The open is tried again."""


def _granted_access(req: "Request", create: CreateRequest) -> int:
    """Desired access, expanded and checked against what the share allows (3.3.5.9)."""
    desired = create.desired_access
    if desired & ~VALID_ACCESS:
        raise SmbError(NtStatus.ACCESS_DENIED, "reserved access bits")
    maximal = req.tree.maximal_access
    if desired & Access.MAXIMUM_ALLOWED:
        return maximal | (map_generic(desired & ~Access.MAXIMUM_ALLOWED) & maximal)
    access = map_generic(desired)
    if access & ~maximal & ~Access.ACCESS_SYSTEM_SECURITY:
        raise SmbError(NtStatus.ACCESS_DENIED, "access beyond the share's maximal access")
    if access & Access.ACCESS_SYSTEM_SECURITY:
        raise SmbError(NtStatus.PRIVILEGE_NOT_HELD, "SACL access")
    return access


def _validate(create: CreateRequest) -> None:
    if create.impersonation_level > 3:
        raise SmbError(NtStatus.BAD_IMPERSONATION_LEVEL)
    if create.disposition > Disposition.OVERWRITE_IF:
        raise SmbError(NtStatus.INVALID_PARAMETER, "bad disposition")
    opts = create.options
    if opts & _OPTIONS_RESERVED:
        raise SmbError(NtStatus.INVALID_PARAMETER, "reserved create options")
    if opts & CreateOptions.DIRECTORY_FILE and opts & CreateOptions.NON_DIRECTORY_FILE:
        raise SmbError(NtStatus.INVALID_PARAMETER, "both DIRECTORY and NON_DIRECTORY")
    if opts & _OPTIONS_NOT_SUPPORTED:
        raise SmbError(NtStatus.NOT_SUPPORTED, "unsupported create option")
    if create.file_attributes & ~_ATTRIBUTES_VALID:
        raise SmbError(NtStatus.INVALID_PARAMETER, "bad file attributes")
    if opts & CreateOptions.DIRECTORY_FILE and create.disposition not in (
            Disposition.CREATE, Disposition.OPEN, Disposition.OPEN_IF):
        raise SmbError(NtStatus.INVALID_PARAMETER, "bad disposition for a directory")
    if create.oplock_level not in (0, 1, 8, 9, 0xFF):
        raise SmbError(NtStatus.INVALID_PARAMETER, "bad oplock level")


async def handle_create(req: "Request") -> bytes:
    create = CreateRequest.parse(req.msg)
    tree = req.tree
    if not tree.is_ipc:
        durable.validate_contexts(create)
        if durable.is_reconnect(create):
            # 3.3.5.9.7/12: only the reconnect context counts; name and other fields are ignored.
            return await _reconnect(req, create)
    _validate(create)
    if tree.is_ipc:
        from ..ipc import open_pipe
        return await open_pipe(req, create)
    dh2q = durable.v2_request(req, create)
    replayed = durable.replayed_open(req, dh2q)
    if replayed is not None and replayed.session is req.session and not replayed.disconnected:
        contexts, oplock = durable.replay_answer(req, replayed, create)
        return await _answer_existing(req, replayed, contexts, oplock, replayed.create_action)
    with durable.creating(req, dh2q):
        return await _create_new(req, create, dh2q)


async def _create_new(req: "Request", create: CreateRequest, dh2q) -> bytes:
    server, tree = req.server, req.tree
    lease_request = _lease_request(req, create)
    vfs = tree.vfs
    parsed = vfs.parse_stream_name(create.name)
    access = _granted_access(req, create)
    opts = create.options
    if opts & CreateOptions.DELETE_ON_CLOSE and not access & Access.DELETE:
        raise SmbError(NtStatus.ACCESS_DENIED, "delete-on-close without DELETE access")
    eas = _requested_eas(create)
    create_context_descriptor(create.contexts)  # a malformed SecD fails before anything is created
    op = await _open_after_breaks(req, create, parsed, access, eas, lease_request)
    op.open.create_action = op.action
    oplock, contexts = await _grant_caching(req, create, op.open, lease_request, dh2q)
    if _MXAC in create.contexts:
        mxac = await server.io(maximal_access, op.open.meta_fd, tree.maximal_access,  # narrowed by a stored DACL
                               anonymous=req.session.is_anonymous, guest=req.session.is_guest)
        contexts.append((_MXAC, struct.pack("<II", 0, mxac)))
    if _QFID in create.contexts:
        contexts.append((_QFID, struct.pack("<QQ16x", op.info.file_id, op.info.volume_id)))
    req.created_file_id = op.open.file_id
    info = op.info
    return CreateResponse(oplock, 0, op.action, info.creation_time, info.last_access_time,
                          info.last_write_time, info.change_time, info.allocation_size, info.size,
                          info.attributes, op.open.file_id, encode_contexts(contexts) if contexts else b"").pack()


async def open_for_restore(req: "Request", create: CreateRequest, restoring: int) -> Open:
    """The file of a persistent Open again (smbd.server.persistent): the Open it was, as a
    plain open of the existing file with the access already granted then; breaks and share
    modes apply as to any open."""
    parsed = req.tree.vfs.parse_stream_name(create.name)
    return (await _open_after_breaks(req, create, parsed, create.desired_access, (), restoring=restoring)).open


def _lease_request(req: "Request", create: CreateRequest) -> LeaseRequest | None:
    """3.3.5.9.8/11: RqLs counts with RequestedOplockLevel LEASE on SMB 2.1 and later;
    otherwise it is ignored (and LEASE without RqLs means no oplock)."""
    data = create.contexts.get(LEASE_CONTEXT)
    if data is None or create.oplock_level != OplockLevel.LEASE or req.conn.dialect < 0x0210:
        return None
    request = LeaseRequest.parse(data)
    if request.version == 2 and req.conn.dialect < 0x0300:
        return LeaseRequest(request.key, request.state, 0, 1)  # v2 needs SMB 3 (3.3.5.9.11)
    return request


async def _grant_caching(req: "Request", create: CreateRequest, op: Open, lease_request: LeaseRequest | None,
                         dh2q) -> tuple[int, list[tuple[bytes, bytes]]]:
    """After the open: break what it conflicts with in this worker, then grant the lease
    or oplock and durability. Returns the OplockLevel and the response contexts."""
    server = req.server
    leases = lease_manager(server)
    try:
        if lease_request is not None:
            leases.check_request(req, lease_request, op.file_key)
        if not op.is_dir:
            await leases.break_for_open(req, op.file_key, create.disposition,
                                        lease_request.key if lease_request else None, op.granted_access)
    except BaseException:
        await server.io(close_open, server, op)
        raise
    contexts: list[tuple[bytes, bytes]] = []
    if op.closed:
        raise SmbError(NtStatus.FILE_CLOSED)
    if lease_request is not None and not op.is_dir:
        contexts.append((LEASE_CONTEXT, leases.grant(req, op, lease_request)))
        oplock = OplockLevel.LEASE
    elif lease_request is not None:
        oplock = OplockLevel.NONE  # no directory leases (we do not offer DIRECTORY_LEASING)
    else:
        level = create.oplock_level
        if level != OplockLevel.NONE and caching.handle_lease_held(server, op.file_key):
            # Beside a lease with H, Windows and Samba grant no oplock (smbtorture
            # smb2.lease.oplock); beside an oplock a lease gets no H (LeaseManager.grant).
            level = OplockLevel.NONE
        oplock = server.oplocks.grant(op, level)
    contexts += durable.grant(req, op, create, dh2q, oplock)
    return oplock, contexts


async def _reconnect(req: "Request", create: CreateRequest) -> bytes:
    """DHnC / DH2C: answer with the kept Open (3.3.5.9.7, 3.3.5.9.12)."""
    op, contexts, oplock = await durable.reconnect(req, create)
    return await _answer_existing(req, op, contexts, oplock)


async def _answer_existing(req: "Request", op: Open, contexts: list, oplock: int,
                           action: int = CreateAction.OPENED) -> bytes:
    """A CREATE response for an Open that already exists: a durable reconnect (OPENED), a
    replay (what the original CREATE did)."""
    info = await req.server.io(streams.info_of, op)
    req.created_file_id = op.file_id
    return CreateResponse(oplock, 0, action, info.creation_time, info.last_access_time,
                          info.last_write_time, info.change_time, info.allocation_size, info.size,
                          info.attributes, op.file_id, encode_contexts(contexts) if contexts else b"").pack()


async def _open_after_breaks(req: "Request", create: CreateRequest, parsed: "StreamName",
                             access: int, eas: tuple[FullEa, ...],
                             lease_request: LeaseRequest | None = None, restoring: int | None = None) -> "_Opened":
    """Open, and while an oplock break holds the file (3.3.4.6), wait and try again.

    The wait is on the event loop, not on an I/O thread: the break's acknowledgment (or
    the holder's CLOSE) must get through even when every I/O thread is busy. While it
    lasts the request goes async (interim STATUS_PENDING, 3.3.4.2), as Windows answers a
    CREATE that waits for a break, so the client does not time it out; only the last
    request of a compound may (see Request.go_async).

    A sharing violation against Opens holding leases with handle caching in this worker
    first breaks their H (MS-SMB2 3.3.4.7, as Windows does): the client may close the
    handles it kept open only for caching, and the open is tried once more."""
    server = req.server
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _BREAK_WAIT_LIMIT
    delay = 0.002
    handles_broken = False
    leases = lease_manager(server)
    own_key = lease_request.key if lease_request else None
    truncating = create.disposition in (Disposition.SUPERSEDE, Disposition.OVERWRITE, Disposition.OVERWRITE_IF)
    if parsed.stream is None and caching.may_be_cached(server):
        existing = await server.brief_io(req.tree.vfs.lookup, parsed.components)
        if existing is not None and create.disposition != Disposition.CREATE and server.delete_pending(
                existing.file_id):
            # Before any break: an open that can only fail breaks nobody's caching
            # (smbtorture smb2.oplock.doc). _open_once checks it again, for the race.
            raise SmbError(NtStatus.DELETE_PENDING)
        if existing is not None and not existing.is_dir:
            if truncating and leases.active:
                # Cached writes of this worker's leases must reach the file before it is truncated.
                await leases.break_for_open(req, existing.file_id, create.disposition, own_key, access)
            # Oplocks here and caching in other workers: broken before the open, to the
            # level Windows would keep (smbd.server.caching); a stat open breaks nothing.
            await caching.prepare_open(req, existing.file_id, access=access, share=create.share_access,
                                       truncating=truncating, stat=is_stat_open(access) and not truncating,
                                       oplock_stat=is_oplock_stat_open(access) and not truncating,
                                       lease_key=own_key)
            await server.closes_finished(existing.file_id)  # a client closing on the break
    while True:
        try:
            try:
                return await server.brief_io(_open_file, server, req, create, parsed, access, eas, restoring)
            finally:
                leases.restore_released()
        except _LeaseBreakPending:
            pass
        except sharemode.SharingViolation as e:
            elsewhere = caching.holders_elsewhere(server, e.file_key, "handle")
            if handles_broken or not (leases.has_leases(e.file_key) or elsewhere):
                raise
            handles_broken = True
            broke = await leases.break_handles(req, e.file_key, own_key)
            if elsewhere:
                broke = await caching.break_handles_elsewhere(req, e.file_key, elsewhere) or broke
            if not broke:
                raise
            continue
        if req.cancelled.is_set():
            raise SmbError(NtStatus.CANCELLED)
        if loop.time() > deadline:
            raise SmbError(NtStatus.SHARING_VIOLATION, "oplock break did not complete")
        if req.is_last and not req.interim_sent:
            await req.go_async()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def _requested_eas(create: CreateRequest) -> tuple[FullEa, ...]:
    """The ExtA create context (MS-SMB2 2.2.13.2.1): EAs to give a new or overwritten file."""
    data = create.contexts.get(_EXTA)
    if not data:
        return ()
    try:
        return parse_full_ea_list(data)
    except EaListError as e:
        raise SmbError(e.status, str(e)) from e


class _Opened:
    __slots__ = ("open", "info", "action")

    def __init__(self, open_: Open, info, action: int):
        self.open, self.info, self.action = open_, info, action


def _open_file(server: "ServerState", req: "Request", create: CreateRequest, parsed: "StreamName",
               access: int, eas: tuple[FullEa, ...] = (), restoring: int | None = None) -> _Opened:
    """The blocking part of CREATE, on an I/O thread: look up, check, open, share-mode.

    Another worker (another client) may create the name between our lookup and our
    exclusive create; for the dispositions that accept an existing file the open is then
    simply tried again, now finding it (smbtorture smb2.create.mkdir-dup)."""
    if parsed.stream is not None:
        try:
            return _Opened(*streams.open_stream(server, req, create, parsed, access))
        except SmbError as e:
            cause = e.__cause__
            if isinstance(cause, OSError) and cause.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise _LeaseBreakPending() from e  # another process's lease on the file: wait
            raise
    components = parsed.components
    try:
        return _open_once(server, req, create, components, access, eas, parsed.default_spelled, restoring)
    except SmbError as e:
        if e.status != NtStatus.OBJECT_NAME_COLLISION or create.disposition not in (
                Disposition.OPEN_IF, Disposition.OVERWRITE_IF, Disposition.SUPERSEDE):
            raise
    return _open_once(server, req, create, components, access, eas, parsed.default_spelled, restoring)


def _open_once(server: "ServerState", req: "Request", create: CreateRequest, components: tuple[str, ...],
               access: int, eas: tuple[FullEa, ...], default_spelled: bool = False,
               restoring: int | None = None) -> _Opened:
    tree = req.tree
    vfs = tree.vfs
    opts = create.options
    disp = create.disposition
    existing = vfs.lookup(components)
    want_dir = bool(opts & CreateOptions.DIRECTORY_FILE)
    if default_spelled and want_dir:
        raise SmbError(NtStatus.NOT_A_DIRECTORY, "::$DATA names a data stream")
    if default_spelled and existing is not None and existing.is_dir:
        raise SmbError(NtStatus.FILE_IS_A_DIRECTORY, "a directory has no unnamed data stream")
    if existing is not None:
        if disp == Disposition.CREATE:
            raise SmbError(NtStatus.OBJECT_NAME_COLLISION)
        if existing.is_dir and opts & CreateOptions.NON_DIRECTORY_FILE:
            raise SmbError(NtStatus.FILE_IS_A_DIRECTORY)
        if not existing.is_dir and want_dir:
            raise SmbError(NtStatus.NOT_A_DIRECTORY)
        if existing.is_dir and disp in (Disposition.OVERWRITE, Disposition.OVERWRITE_IF, Disposition.SUPERSEDE):
            raise SmbError(NtStatus.INVALID_PARAMETER, "cannot overwrite a directory")
        if server.delete_pending(existing.file_id):
            raise SmbError(NtStatus.DELETE_PENDING)
        if existing.attributes & FileAttributes.READONLY and (
                access & (Access.FILE_WRITE_DATA | Access.FILE_APPEND_DATA)
                or opts & CreateOptions.DELETE_ON_CLOSE):
            raise SmbError(NtStatus.ACCESS_DENIED if not opts & CreateOptions.DELETE_ON_CLOSE
                           else NtStatus.CANNOT_DELETE)
        if not components and opts & CreateOptions.DELETE_ON_CLOSE:
            raise SmbError(NtStatus.CANNOT_DELETE, "the share root")
        truncate = disp in (Disposition.OVERWRITE, Disposition.OVERWRITE_IF, Disposition.SUPERSEDE)
        if truncate and tree.read_only:
            raise SmbError(NtStatus.ACCESS_DENIED)
        action = {Disposition.SUPERSEDE: CreateAction.SUPERSEDED,
                  Disposition.OVERWRITE: CreateAction.OVERWRITTEN,
                  Disposition.OVERWRITE_IF: CreateAction.OVERWRITTEN}.get(disp, CreateAction.OPENED)
        is_dir = existing.is_dir
        create_new = False
    else:
        if disp in (Disposition.OPEN, Disposition.OVERWRITE):
            raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)
        if tree.read_only:
            raise SmbError(NtStatus.ACCESS_DENIED, "read-only share")
        if not components:
            raise SmbError(NtStatus.ACCESS_DENIED)
        truncate = False
        action = CreateAction.CREATED
        is_dir = want_dir
        create_new = True
    write = bool(access & (Access.FILE_WRITE_DATA | Access.FILE_APPEND_DATA)) or truncate
    if write and is_dir:
        write = False
    if existing is not None:
        # Our own open must not break the kernel leases behind this worker's SMB2 leases:
        # conflicts between our opens are decided by smbd.server.leases.
        leases = getattr(server, "leases", None)
        if leases is not None:
            leases.release_kernel_for(existing.file_id)
    try:
        # Truncation waits until the DACL and share modes have been checked (below).
        opened = vfs.open(components, create=create_new, exclusive=create_new, truncate=False,
                          directory=is_dir, write=write and not tree.read_only)
    except SmbError as e:
        cause = e.__cause__
        if isinstance(cause, OSError) and cause.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise _LeaseBreakPending() from e
        raise
    fd = opened.fd
    try:
        if not create_new:  # a client-stored DACL can only narrow access (smbd.security.access)
            access = narrow_by_stored_dacl(fd, access, create.desired_access, truncate=truncate,
                                           anonymous=req.session.is_anonymous, guest=req.session.is_guest)
            if access & Access.DELETE and components and req.session.creds is not None and not identity.may_delete(
                    req.session.creds, vfs.stat_parent(components), os.fstat(fd)):
                if not create.desired_access & Access.MAXIMUM_ALLOWED:
                    raise SmbError(NtStatus.ACCESS_DENIED, "the user may not delete in the directory")
                access &= ~Access.DELETE  # MAXIMUM_ALLOWED: all but what POSIX refuses
        try:
            sharemode.acquire(fd, access, create.share_access)
        except SmbError as e:
            if e.status == NtStatus.SHARING_VIOLATION and existing is not None:
                raise sharemode.SharingViolation(existing.file_id) from e
            raise
        if existing is not None and persistent.orphan_conflicts(server, existing.file_id, access,
                                                                create.share_access, restoring):
            raise SmbError(NtStatus.SHARING_VIOLATION, "a persistent handle waiting for its client")
        if truncate:  # only now: an open refused by the DACL or a share mode keeps the data
            vfs.truncate(fd, 0)
            vfs.streams.remove_all(fd)  # overwritten or superseded: only the unnamed stream stays
        if create_new:
            secure_new_file(fd, create.contexts, is_dir=is_dir,  # SecD context, else inherited DACL
                            parent=lambda: parent_stored(vfs, opened.components))
        if create_new or truncate:
            attrs = attributes_for_new(create.file_attributes, is_dir=is_dir)
            if attrs:
                vfs.set_dos_attributes(fd, attrs)
            if eas:
                try:
                    set_eas(fd, [(ea.name, ea.value) for ea in eas])
                except OSError as e:
                    raise SmbError(NtStatus.EAS_NOT_SUPPORTED, f"EAs: {e}") from e
        info = vfs.stat_fd(fd, components[-1] if components else "")
    except BaseException:
        os.close(fd)
        if create_new:
            _remove_quietly(vfs, components, is_dir)
        raise
    op = Open(server.persistent_ids(), server.new_volatile_id(), req.session, tree, access,
              create.share_access, opened.components, fd, is_dir, opts, connection=req.conn)
    op.file_key = info.file_id
    op.delete_on_close = bool(opts & CreateOptions.DELETE_ON_CLOSE)
    server.register_open(op)
    return _Opened(op, info, action)


def _remove_quietly(vfs, components, is_dir: bool) -> None:
    try:
        (vfs.rmdir if is_dir else vfs.unlink)(components)
    except (OSError, SmbError):
        pass


def close_open(server: "ServerState", op: Open) -> None:
    """Release an Open: its fd (and with it every OFD lock), delete-on-close, watches."""
    if op.closed:
        return
    server.oplocks.forget(op)
    if op.lease is not None:
        lease_manager(server).forget(op)
    op.closed = True
    server.unregister_open(op)
    if op.persistent and not getattr(server, "shutting_down", False):
        try:
            persistent.forget(server, op)
        except Exception as e:  # closing goes on; the record expires on its own
            log.error("%s: persistent record not removed: %s", op.display_name, e)
    if op.notify is not None:
        op.notify.close()  # thread-safe; wakes a pending CHANGE_NOTIFY with NOTIFY_CLEANUP
    if op.pipe is not None:
        op.pipe = None
        return
    last = server.last_open_of(op.file_key)
    pending = op.delete_on_close or server.delete_pending(op.file_key)
    if op.stream is not None:
        if pending and last:
            server.clear_delete_pending(op.file_key)
        elif op.delete_on_close:
            server.set_delete_pending(op.file_key)
        streams.close_stream(server, op, delete=pending and last)
        return
    try:
        if pending and last and streams.base_in_use(server, op.file_key, leaving=op):
            server.set_delete_pending(op.file_key)  # a stream of it is open here: it goes last
        elif pending and last:
            server.clear_delete_pending(op.file_key)
            try:
                streams.delete_file(op.tree.vfs, op.components, op.fd, is_dir=op.is_dir)
            except (OSError, SmbError) as e:
                log.info("delete on close of %s failed: %s", op.display_name, e)
        elif op.delete_on_close:
            server.set_delete_pending(op.file_key)
    finally:
        try:
            os.close(op.fd)
        except OSError:
            pass


async def handle_close(req: "Request") -> bytes:
    close = fileio.CloseRequest.parse(req.msg)
    op = req.open_for(close.file_id)
    server = req.server
    done = server.close_begins(op.file_key)  # see ServerState.close_begins
    try:
        # Drop the lease here, on the loop: an opener blocked on it holds an I/O thread, and
        # closing instead of acknowledging a break must free it even if all of them are busy.
        server.oplocks.forget(op)
        if op.lease is not None:
            lease_manager(server).forget(op)
        if close.flags & fileio.CLOSE_FLAG_POSTQUERY_ATTRIB and op.pipe is None:
            info = await server.io(streams.info_of, op)
            await server.io(close_open, server, op)
            return fileio.close_response(fileio.CLOSE_FLAG_POSTQUERY_ATTRIB,
                                         (info.creation_time, info.last_access_time, info.last_write_time,
                                          info.change_time), info.allocation_size, info.size, info.attributes)
        if op.delete_on_close or server.delete_pending(op.file_key):
            await server.io(close_open, server, op)  # a delete may take a while (a directory tree)
        else:
            await server.brief_io(close_open, server, op)
        return fileio.close_response(0)
    finally:
        server.close_ends(op.file_key, done)


async def handle_flush(req: "Request") -> bytes:
    from smbd.wire.session import empty_response

    op = req.open_for(fileio.parse_flush(req.msg))
    if op.pipe is not None:
        return empty_response()
    if not op.granted_access & (Access.FILE_WRITE_DATA | Access.FILE_APPEND_DATA):
        raise SmbError(NtStatus.ACCESS_DENIED, "flush without write access")
    with translate_oserror():
        await req.server.io(os.fsync, op.fd)
    return empty_response()


# SMB2 header, READ response, transform header and alignment around inline read data.
INLINE_READ_OVERHEAD = 64 + 16 + 52 + 64
# Reads from this size on go out by sendfile where they may (handle_read): below it the
# copy costs less than the hand-off to the thread that sends.
SENDFILE_MIN = 64 * 1024


def _invalidate_on_reply(req: "Request", channel: int, descriptors) -> None:
    """With RDMA_V1_INVALIDATE the client leaves invalidating its buffer to our reply
    (SEND_WITH_INVALIDATE, MS-SMB2 3.3.5.12/13): every reply, an error one too, or the
    client's memory region stays registered and its next registration of it fails."""
    if channel == fileio.Channel.RDMA_V1_INVALIDATE and descriptors and req.conn.transport.rdma is not None:
        req.invalidate_token = descriptors[0].token


def _check_charge(req: "Request", size: int) -> None:
    """3.3.5.2.5: with multi-credit, CreditCharge must cover the payload."""
    if req.conn.multi_credit and req.header.credit_charge < required_charge(size):
        raise SmbError(NtStatus.INVALID_PARAMETER, "CreditCharge too small")


async def handle_read(req: "Request") -> list:
    rd = fileio.ReadRequest.parse(req.msg)
    _invalidate_on_reply(req, rd.channel, rd.descriptors)
    op = req.open_for(rd.file_id)
    if op.pipe is not None:
        from ..ipc import read_pipe
        return await read_pipe(req, op, rd)
    if op.is_dir:
        raise SmbError(NtStatus.INVALID_DEVICE_REQUEST)
    if not op.granted_access & (Access.FILE_READ_DATA | Access.FILE_EXECUTE):
        raise SmbError(NtStatus.ACCESS_DENIED)
    length = rd.length
    if length > req.server.config.max_io_size:
        raise SmbError(NtStatus.INVALID_PARAMETER, "read larger than MaxReadSize")
    _check_charge(req, max(length, 1))
    if rd.offset > 0x7FFFFFFFFFFFFFFF:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    req.server.byte_locks.check_io(op, rd.offset, length, write=False)
    rdma = req.conn.transport.rdma
    if rd.channel != fileio.Channel.NONE:
        if rdma is None:
            raise SmbError(NtStatus.INVALID_PARAMETER, "RDMA channel on a non-RDMA connection")
        return await rdma.read_to_client(req, op, rd)
    cap = getattr(req.conn.transport, "max_message", None)
    if cap is not None and length > cap - INLINE_READ_OVERHEAD:
        # An inline reply must fit the peer's SMB Direct reassembly limit; a short read is a
        # valid answer (DataLength < Length, MS-SMB2 3.3.5.12) and the client reads on. cifs.ko
        # 6.1 asks sealed sessions for 1 MiB inline reads against its own 170 KB limit.
        length = max(cap - INLINE_READ_OVERHEAD, 0)
    # From SENDFILE_MIN on, a reply nothing has to read (no signature, no seal, no compound)
    # leaves its data in the file: the transport sendfile()s it from the page cache
    # (smbd.transport.tcp.FileSpan) instead of copying it into a buffer; DataLength is then
    # fixed now, from the size.
    by_sendfile = (length >= SENDFILE_MIN and getattr(req.conn.transport, "sends_file_spans", False)
                   and req.conn.plain_reply(req))
    with translate_oserror():
        if by_sendfile:
            n = max(0, min(length, os.fstat(op.fd).st_size - rd.offset))  # an open file's inode is in memory
        else:
            buf = bytearray(length)
            n = await req.server.read_into(op.tree.vfs, op.fd, memoryview(buf), rd.offset)
    if n < rd.minimum_count or (n == 0 and length > 0):
        raise SmbError(NtStatus.END_OF_FILE)
    # FilePositionInformation follows reads, as Samba keeps it (smbtorture smb2.read.position).
    op.position = rd.offset + n
    data = FileSpan(op.fd, rd.offset, n) if by_sendfile else memoryview(buf)[:n]
    return [fileio.read_response_header(n, padding=req.conn.read_body_padding), data]


async def handle_write(req: "Request") -> bytes:
    wr = fileio.WriteRequest.parse(req.msg)
    _invalidate_on_reply(req, wr.channel, wr.descriptors)
    op = req.open_for(wr.file_id)
    if op.pipe is not None:
        from ..ipc import write_pipe
        return await write_pipe(req, op, wr)
    if op.is_dir:
        raise SmbError(NtStatus.INVALID_DEVICE_REQUEST)
    if not op.granted_access & (Access.FILE_WRITE_DATA | Access.FILE_APPEND_DATA):
        raise SmbError(NtStatus.ACCESS_DENIED)
    if op.tree.read_only:
        raise SmbError(NtStatus.ACCESS_DENIED)
    # Over RDMA, Length is 0 and RemainingBytes says how much to pull from the client (2.2.21).
    length = wr.length if wr.channel == fileio.Channel.NONE else wr.remaining_bytes
    if length > req.server.config.max_io_size:
        raise SmbError(NtStatus.INVALID_PARAMETER, "write larger than MaxWriteSize")
    _check_charge(req, max(length, 1))
    offset = wr.offset
    append_only = (op.granted_access & (Access.FILE_WRITE_DATA | Access.FILE_APPEND_DATA)
                   == Access.FILE_APPEND_DATA)
    if offset == 0xFFFFFFFFFFFFFFFF and append_only:
        offset = (await req.server.io(os.fstat, op.fd)).st_size  # write at end of file (MS-FSA 2.1.5.3)
    elif offset > 0x7FFFFFFFFFFFFFFF or offset + length > 0x7FFFFFFFFFFFFFFF:
        # Negative offsets, -1 included, on an ordinary handle: Windows and Samba refuse
        # them (smbtorture smb2.rw.invalid).
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if length and offset + length > MAX_FILE_SIZE:
        raise SmbError(NtStatus.INVALID_PARAMETER, "write beyond MAXFILESIZE")
    req.server.byte_locks.check_io(op, offset, length, write=True)
    caching.data_changing(req.server, op)
    if wr.channel != fileio.Channel.NONE:
        rdma = req.conn.transport.rdma
        if rdma is None:
            raise SmbError(NtStatus.INVALID_PARAMETER, "RDMA channel on a non-RDMA connection")
        n = await rdma.write_from_client(req, op, wr, offset)
    else:
        with translate_oserror():
            n = await req.server.write_from(op.tree.vfs, op.fd, wr.data, offset,
                                            bool(wr.flags & fileio.WRITEFLAG_WRITE_THROUGH))
    return fileio.write_response(n)


async def handle_oplock_break(req: "Request") -> bytes:
    """OPLOCK_BREAK acknowledgment (3.3.5.22.1): complete the break the client acknowledges.

    The tree is not checked against the Open (OPLOCK_BREAK needs none in the pipeline);
    the Open must belong to the request's session. A Lease Break Acknowledgment (2.2.24.2,
    3.3.5.22.2) comes as the same command with StructureSize 36."""
    if break_structure_size(req.msg) == BREAK_ACK_SIZE:
        if req.conn.dialect < 0x0210:
            raise SmbError(NtStatus.INVALID_PARAMETER, "lease break acknowledgment before SMB 2.1")
        return lease_manager(req.server).acknowledge(req, LeaseBreakAck.parse(req.msg))
    ack = OplockBreakAck.parse(req.msg)
    persistent, volatile = req.resolve_file_id(ack.file_id)
    op = req.server.opens.get(volatile)
    if op is None or op.closed or op.session is not req.session or op.persistent_id != persistent:
        raise SmbError(NtStatus.FILE_CLOSED)
    level = req.server.oplocks.acknowledge(op, ack.oplock_level)
    return oplock_break_response(level, op.file_id)
