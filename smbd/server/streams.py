"""Opens of named streams (MS-SMB2 3.3.5.9 with MS-FSA 2.1.5.1 "Open of a Stream"), their close,
rename and what QUERY_INFO reports for them.  The streams themselves are files kept by
:mod:`smbd.vfs.streams`; this module gives them Windows' semantics:

* Each stream has its own share modes, byte-range locks, leases and delete-on-close: an Open of
  a stream has the stream's fd (share modes as OFD locks on it, so they hold across workers)
  and the stream's inode as its ``file_key``.
* Times, attributes, EAs and the security descriptor belong to the file: the Open keeps the
  base file open (``base_fd``) and QUERY_INFO / SET_INFO of those go there.
* The base file knows its streams are open: every stream Open holds the HAS_STREAM_OPEN slot on
  the base (and STREAM_DENIES_DELETE without FILE_SHARE_DELETE), so in any worker the base
  cannot be renamed (ACCESS_DENIED) or opened for DELETE (SHARING_VIOLATION) under them,
  while the base's own share modes do not restrict its streams (smbtorture smb2.streams.delete).
* A stream's CREATE makes its file when missing (an empty regular file, as NTFS does), and a
  directory may have named streams too; ``dir::$DATA`` is FILE_IS_A_DIRECTORY.
* Deleting the base while one of its streams is open in this worker waits for the last of them
  (DELETE_PENDING for name-based opens meanwhile); a stream open in another worker keeps its
  data (the fd stays valid) but not the deferral: delete-pending state is per worker today.
"""
from __future__ import annotations

import dataclasses
import os
import stat
from typing import TYPE_CHECKING

from smbd.fscc.constants import FileAttributes
from smbd.security.access import narrow_by_stored_dacl
from smbd.security.store import parent_stored, secure_new_file
from smbd.status import NtStatus, SmbError
from smbd.vfs.errors import translate_oserror
from smbd.vfs.metadata import attributes_for_new
from smbd.vfs.types import FileInfo
from smbd.wire.create import Access, CreateAction, CreateOptions, Disposition

from . import sharemode
from .objects import Open

if TYPE_CHECKING:
    from smbd.vfs.names import StreamName

    from .connection import Request
    from .state import ServerState

_WRITE_DATA = Access.FILE_WRITE_DATA | Access.FILE_APPEND_DATA

# What each disposition does to a stream: (create if missing, fail if present, truncate).
_DISPOSITIONS = {
    Disposition.SUPERSEDE: (True, False, True),
    Disposition.OPEN: (False, False, False),
    Disposition.CREATE: (True, True, False),
    Disposition.OPEN_IF: (True, False, False),
    Disposition.OVERWRITE: (False, False, True),
    Disposition.OVERWRITE_IF: (True, False, True),
}


def stream_info(base: FileInfo, stream_fd: int) -> FileInfo:
    """What a stream's handle reports: its file's metadata with the stream's own sizes. A stream
    is never a directory, even one of a directory (FileStandardInformation.Directory FALSE)."""
    st = os.fstat(stream_fd)
    attributes = base.attributes & ~int(FileAttributes.DIRECTORY) or int(FileAttributes.NORMAL)
    return dataclasses.replace(base, is_dir=False, size=st.st_size, allocation_size=st.st_blocks * 512,
                               attributes=attributes)


def info_of(op: Open) -> FileInfo:
    """FileInfo for QUERY_INFO / CLOSE of any Open (blocking)."""
    vfs = op.tree.vfs
    name = op.components[-1] if op.components else ""
    if op.stream is None:
        return vfs.stat_fd(op.fd, name)
    return stream_info(vfs.stat_fd(op.base_fd, name), op.fd)


def open_stream(server: "ServerState", req: "Request", create, parsed: "StreamName",
                access: int) -> tuple[Open, FileInfo, int]:
    """The blocking part of a CREATE that names a stream: (Open, its FileInfo, CreateAction)."""
    tree = req.tree
    vfs = tree.vfs
    depot = vfs.streams
    if not depot.supported:
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "no named streams on this share")
    opts = create.options
    if opts & CreateOptions.DIRECTORY_FILE:
        raise SmbError(NtStatus.NOT_A_DIRECTORY, "a stream is not a directory")
    make, exclusive, truncate = _DISPOSITIONS[create.disposition]
    components = parsed.components
    if not components:
        raise SmbError(NtStatus.OBJECT_NAME_INVALID, "a stream of the share root")
    base = vfs.lookup(components)
    if base is None and not make:
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)
    read_only = tree.read_only
    if read_only and (base is None or truncate):
        raise SmbError(NtStatus.ACCESS_DENIED, "read-only share")
    if base is not None and server.delete_pending(base.file_id):
        raise SmbError(NtStatus.DELETE_PENDING)
    if base is not None:
        # Opening the file must not break this worker's own leases on it (a stream has leases
        # of its own); CREATE restores them afterwards (files._open_after_breaks).
        leases = getattr(server, "leases", None)
        if leases is not None:
            leases.release_kernel_for(base.file_id)
    write = bool(access & _WRITE_DATA) or truncate
    if base is not None and base.attributes & FileAttributes.READONLY and (write or opts & CreateOptions.DELETE_ON_CLOSE):
        raise SmbError(NtStatus.ACCESS_DENIED if not opts & CreateOptions.DELETE_ON_CLOSE else NtStatus.CANNOT_DELETE)
    try:
        base_file = vfs.open(components, create=base is None, exclusive=base is None, truncate=False,
                             directory=None, write=False)
    except SmbError as e:
        if e.status != NtStatus.OBJECT_NAME_COLLISION:
            raise
        # Another worker made the file since we looked (clients racing for its first stream).
        base_file = vfs.open(components, create=False, exclusive=False, truncate=False,
                             directory=None, write=False)
    base_created = base_file.created
    base_fd = base_file.fd
    stream = None
    try:
        if base_created:
            secure_new_file(base_fd, create.contexts, is_dir=False,
                            parent=lambda: parent_stored(vfs, base_file.components))
            attrs = attributes_for_new(create.file_attributes, is_dir=False)
            if attrs:
                vfs.set_dos_attributes(base_fd, attrs)
        else:
            access = narrow_by_stored_dacl(base_fd, access, create.desired_access, truncate=truncate,
                                           anonymous=req.session.is_anonymous, guest=req.session.is_guest)
        try:
            stream = depot.open(base_fd, parsed.stream, create=make and not read_only,
                                exclusive=exclusive, write=write and not read_only, truncate=False)
        except SmbError as e:
            if read_only and make and e.status == NtStatus.OBJECT_NAME_NOT_FOUND:
                raise SmbError(NtStatus.ACCESS_DENIED, "read-only share") from e
            raise
        try:
            key = os.fstat(stream.fd).st_ino
            try:
                sharemode.acquire(stream.fd, access, create.share_access)
            except SmbError as e:
                if e.status == NtStatus.SHARING_VIOLATION and not stream.created:
                    raise sharemode.SharingViolation(key) from e
                raise
            with translate_oserror():
                sharemode.hold_for_stream(base_fd, create.share_access)
                if truncate and not stream.created:
                    os.ftruncate(stream.fd, 0)
            info = stream_info(vfs.stat_fd(base_fd, components[-1]), stream.fd)
        except BaseException:
            os.close(stream.fd)
            if stream.created:
                depot.remove(base_fd, stream.name)
            raise
    except BaseException:
        if base_created:
            try:
                vfs.unlink(base_file.components)
            except (OSError, SmbError):
                pass
        os.close(base_fd)
        raise
    op = Open(server.persistent_ids(), server.new_volatile_id(), req.session, tree, access,
              create.share_access, base_file.components, stream.fd, False, opts, connection=req.conn)
    op.stream, op.base_fd, op.base_key = stream.name, base_fd, info.file_id
    op.file_key = key
    op.delete_on_close = bool(opts & CreateOptions.DELETE_ON_CLOSE)
    if stream.created:
        action = CreateAction.CREATED
    elif truncate:
        action = CreateAction.SUPERSEDED if create.disposition == Disposition.SUPERSEDE else CreateAction.OVERWRITTEN
    else:
        action = CreateAction.OPENED
    server.register_open(op)
    return op, info, action


def base_in_use(server: "ServerState", base_key: int, leaving: Open | None = None) -> bool:
    """Whether this worker still has an Open of the file or of one of its streams."""
    for other in server.opens.values():
        if other is leaving or other.closed:
            continue
        if other.file_key == base_key and other.stream is None or other.base_key == base_key:
            return True
    return False


def close_stream(server: "ServerState", op: Open, *, delete: bool) -> None:
    """The last part of closing a stream's Open (blocking): delete the stream if it was the last
    Open of a stream with delete pending, then the file if its own delete waited for this."""
    vfs = op.tree.vfs
    try:
        if delete:
            try:
                vfs.streams.remove(op.base_fd, op.stream)
            except SmbError:
                pass
        if server.delete_pending(op.base_key) and not base_in_use(server, op.base_key):
            server.clear_delete_pending(op.base_key)
            try:
                delete_file(vfs, op.components, op.base_fd, is_dir=stat.S_ISDIR(os.fstat(op.base_fd).st_mode))
            except (OSError, SmbError):
                pass
    finally:
        for fd in (op.fd, op.base_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def delete_file(vfs, components: tuple[str, ...], fd: int, *, is_dir: bool) -> None:
    """Delete the file (or directory) open as ``fd``; if that was its last name, its named
    streams go too. Failing to remove the streams leaves them orphaned, never the file."""
    (vfs.rmdir if is_dir else vfs.unlink)(components)
    try:
        if os.fstat(fd).st_nlink == 0:
            vfs.streams.remove_all(fd)
    except (OSError, SmbError):
        pass


def rename_stream(server: "ServerState", op: Open, new_name: str, replace: bool) -> None:
    """FileRenameInformation with a name starting with ':' on a stream's handle (MS-FSA
    2.1.5.15.11.1): rename within the same file. Blocking."""
    from smbd.vfs.names import split_stream

    _, stream, _ = split_stream("x" + new_name)
    if stream is None:
        _rename_to_unnamed(server, op, replace)
        return
    for other in server.opens.values():
        if (other is not op and not other.closed and other.base_key == op.base_key
                and other.stream is not None and other.stream.casefold() == stream.casefold()
                and other.stream.casefold() != op.stream.casefold()):
            raise SmbError(NtStatus.ACCESS_DENIED if replace else NtStatus.OBJECT_NAME_COLLISION,
                           "the target stream is open")
    op.stream = op.tree.vfs.streams.rename(op.base_fd, op.stream, stream, replace=replace)


def _rename_to_unnamed(server: "ServerState", op: Open, replace: bool) -> None:
    """``:Name`` renamed to ``::$DATA``: the stream's data becomes the file's own, the named
    stream goes, and the handle now stands for the file's unnamed stream, as NTFS does it
    (smbtorture smb2.streams.rename2). Refused for a directory (it has no unnamed stream), over
    non-empty file data without ReplaceIfExists, and while another open uses the file's data."""
    from .handlers.ioctl import Chunk, copy_chunks
    from .leases import lease_manager
    from .oplocks import is_writable_fd

    vfs = op.tree.vfs
    with translate_oserror():
        st = os.fstat(op.base_fd)
        if stat.S_ISDIR(st.st_mode):
            raise SmbError(NtStatus.INVALID_PARAMETER, "a directory has no unnamed data stream")
        if st.st_size and not replace:
            raise SmbError(NtStatus.OBJECT_NAME_COLLISION)
        if any(o.file_key == op.base_key and o.stream is None and not o.closed for o in server.opens.values()):
            raise SmbError(NtStatus.SHARING_VIOLATION, "the file's data is open")
        mode = os.O_RDWR if is_writable_fd(op.fd) else os.O_RDONLY
        new_fd = os.open(f"/proc/self/fd/{op.base_fd}", mode | os.O_CLOEXEC | os.O_NOCTTY)
        try:
            for slot in (sharemode.HAS_READ, sharemode.HAS_WRITE, sharemode.HAS_DELETE):
                if sharemode.others_hold(new_fd, slot):  # another worker has the file's data open
                    raise SmbError(NtStatus.SHARING_VIOLATION, "the file's data is open")
            sharemode.acquire(new_fd, op.granted_access, op.share_access)
            writer = os.open(f"/proc/self/fd/{op.base_fd}", os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
            try:
                os.ftruncate(writer, 0)
                copy_chunks(op.fd, writer, [Chunk(0, 0, os.fstat(op.fd).st_size)])
            finally:
                os.close(writer)
        except BaseException:
            os.close(new_fd)
            raise
    server.oplocks.forget(op)
    if op.lease is not None:
        lease_manager(server).forget(op)
    vfs.streams.remove(op.base_fd, op.stream)
    server.unregister_open(op)
    for fd in (op.fd, op.base_fd):
        os.close(fd)
    op.fd, op.base_fd, op.stream = new_fd, -1, None
    op.file_key, op.base_key = op.base_key, None
    server.register_open(op)
