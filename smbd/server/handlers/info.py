"""QUERY_DIRECTORY (3.3.5.18), QUERY_INFO (3.3.5.20) and SET_INFO (3.3.5.21)."""
from __future__ import annotations

import os
import struct
import zlib
from typing import TYPE_CHECKING

from smbd.fscc import dirinfo, fileinfo, fsinfo, setinfo, wildcard
from smbd.fscc.constants import FileAttributes, FileInfoClass, FsAttributes
from smbd.security.sd import SecurityInformation
from smbd.security.store import effective_descriptor, parse_or_error, set_descriptor
from smbd.status import NtStatus, SmbError
from smbd.vfs.errors import translate_oserror
from smbd.vfs.eas import list_eas, set_eas
from smbd.wire import ea
from smbd.wire.control import (InfoType, QueryDirectoryFlags, QueryDirectoryRequest, QueryInfoRequest,
                               SetInfoRequest, output_response, set_info_response)
from smbd.wire.create import Access

from .. import caching, sharemode, streams
from ..objects import Open
from .files import _check_charge

if TYPE_CHECKING:
    from ..connection import Request

# The fixed part of each class's answer (3.3.5.20.1/2): an OutputBufferLength below it is
# refused with INFO_LENGTH_MISMATCH; one at or above it but short of the whole answer gets
# the answer cut short and STATUS_BUFFER_OVERFLOW. The sizes are those Windows and Samba
# use (smbtorture smb2.getinfo.qfile_buffercheck/qfs_buffercheck); a class missing here is
# all-or-nothing.
_FILE_FIXED = {
    FileInfoClass.FileBasicInformation: 40, FileInfoClass.FileStandardInformation: 24,
    FileInfoClass.FileInternalInformation: 8, FileInfoClass.FileEaInformation: 4,
    FileInfoClass.FileAccessInformation: 4, FileInfoClass.FileNameInformation: 0,
    FileInfoClass.FilePositionInformation: 8, FileInfoClass.FileModeInformation: 4,
    FileInfoClass.FileAlignmentInformation: 4, FileInfoClass.FileAllInformation: 104,
    FileInfoClass.FileAlternateNameInformation: 8, FileInfoClass.FileStreamInformation: 32,
    FileInfoClass.FileCompressionInformation: 16, FileInfoClass.FileNetworkOpenInformation: 56,
    FileInfoClass.FileAttributeTagInformation: 8, FileInfoClass.FileNormalizedNameInformation: 8,
}
_FS_FIXED = {1: 24, 3: 24, 4: 8, 5: 16, 6: 48, 7: 32, 11: 28}  # MS-FSCC 2.5 classes
# Classes anyone holding the handle may query; the others need FILE_READ_ATTRIBUTES
# (MS-FSA 2.1.5.12; smbtorture smb2.getinfo.getinfo_access lists the same set).
_NEEDS_NOTHING = {FileInfoClass.FileAccessInformation, FileInfoClass.FileModeInformation,
                  FileInfoClass.FilePositionInformation, FileInfoClass.FileAlignmentInformation,
                  FileInfoClass.FileNameInformation, FileInfoClass.FileStandardInformation,
                  FileInfoClass.FileInternalInformation, FileInfoClass.FileEaInformation,
                  FileInfoClass.FileStreamInformation, FileInfoClass.FileAlternateNameInformation,
                  FileInfoClass.FileCompressionInformation,
                  FileInfoClass.FileNormalizedNameInformation}
FILE_FULL_EA_INFORMATION = 15


def _name(op: Open) -> str:
    return "\\" + op.display_name


# ---- QUERY_DIRECTORY ---------------------------------------------------------------------

async def handle_query_directory(req: "Request") -> bytes:
    qd = QueryDirectoryRequest.parse(req.msg)
    op = req.open_for(qd.file_id)
    if not op.is_dir or op.pipe is not None:
        raise SmbError(NtStatus.INVALID_PARAMETER, "not a directory")
    if not op.granted_access & Access.FILE_READ_DATA:
        raise SmbError(NtStatus.ACCESS_DENIED)
    if qd.output_length > req.server.config.max_io_size or qd.output_length == 0:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    _check_charge(req, qd.output_length)
    cursor = op.cursor
    restart = qd.flags & (QueryDirectoryFlags.RESTART_SCANS | QueryDirectoryFlags.REOPEN)
    if restart or cursor.entries is None:
        pattern = qd.pattern or "*"
        if pattern == "*.*":
            pattern = "*"  # the DOS spelling of "everything", as Windows and Samba treat it
        if "\\" in pattern or "/" in pattern:
            raise SmbError(NtStatus.OBJECT_NAME_INVALID)
        with translate_oserror():
            listing = await req.server.io(op.tree.vfs.list_dir, op.fd, include_dots=True)
        cursor.pattern = pattern
        cursor.entries = [e for e in listing if wildcard.match(pattern, e.name)]
        cursor.position = 0
        first = True
    else:
        first = False
        # Names removed since the scan began are not returned (smbtorture smb2.dir.fixed):
        # Windows and Samba read the directory as it is now, not a snapshot.
        with translate_oserror():
            present = await req.server.io(_names_in, op.fd)
        cursor.entries[cursor.position:] = [e for e in cursor.entries[cursor.position:]
                                            if e.name in present or e.name in (".", "..")]
    remaining = cursor.entries[cursor.position:]
    if not remaining:
        raise SmbError(NtStatus.NO_SUCH_FILE if first else NtStatus.NO_MORE_FILES)
    data, count = dirinfo.encode_dir_entries(qd.info_class, remaining, qd.output_length,
                                             single=bool(qd.flags & QueryDirectoryFlags.RETURN_SINGLE_ENTRY))
    if count == 0:
        raise SmbError(NtStatus.INFO_LENGTH_MISMATCH, "first entry does not fit")
    cursor.position += count
    return output_response(data)


def _names_in(dir_fd: int) -> set[str]:
    return set(os.listdir(dir_fd))


# ---- QUERY_INFO ----------------------------------------------------------------------------

async def handle_query_info(req: "Request") -> bytes:
    qi = QueryInfoRequest.parse(req.msg)
    op = req.open_for(qi.file_id)
    if qi.output_length > req.server.config.max_io_size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    _check_charge(req, max(qi.output_length, len(qi.input), 1))
    if op.pipe is not None:
        raise SmbError(NtStatus.INVALID_PARAMETER, "query info on a pipe")
    vfs = op.tree.vfs
    if qi.info_type == InfoType.FILE:
        if qi.info_class == FILE_FULL_EA_INFORMATION:
            return await _query_eas(req, op, qi)
        if qi.info_class not in _NEEDS_NOTHING and not op.granted_access & Access.FILE_READ_ATTRIBUTES:
            raise SmbError(NtStatus.ACCESS_DENIED)
        if qi.info_class == FileInfoClass.FileNormalizedNameInformation and req.conn.dialect < 0x0311:
            # MS-SMB2 3.3.5.20.1: only SMB 3.1.1 offers it (smbtorture smb2.getinfo.normalized).
            raise SmbError(NtStatus.NOT_SUPPORTED, "FileNormalizedNameInformation before SMB 3.1.1")
        with translate_oserror():
            info = await req.server.io(streams.info_of, op)
        name = _name(op)
        if qi.info_class == FileInfoClass.FileNormalizedNameInformation:
            # MS-FSCC 2.4.30: the path from the share root without the leading backslash, each
            # name as stored on disk whatever case the client opened it with, a stream's name
            # as created; empty for the root itself (smbtorture smb2.getinfo.normalized).
            real = await req.server.io(vfs.real_names, op.meta_fd)
            name = "\\".join(real if real is not None else op.components)
            if op.stream is not None:
                name += f":{op.stream}"
        ea_size = 0
        if qi.info_class in (FileInfoClass.FileEaInformation, FileInfoClass.FileAllInformation):
            with translate_oserror():
                stored = await req.server.io(list_eas, op.meta_fd)
            ea_size = ea.ea_size([ea.FullEa(n, v) for n, v in stored])
        named_streams = ()
        if qi.info_class == FileInfoClass.FileStreamInformation:
            named_streams = await req.server.io(vfs.streams.list, op.meta_fd)
        ctx = fileinfo.OpenContext(name=name, access_mask=op.granted_access, position=op.position,
                                   mode=op.mode, delete_pending=req.server.delete_pending(op.file_key),
                                   short_name=short_name(op.components[-1]) if op.components else "",
                                   ea_size=ea_size, streams=tuple(named_streams))
        data = fileinfo.encode_file_info(qi.info_class, info, ctx)
        return _fit(req, data, qi.output_length, _FILE_FIXED.get(qi.info_class))
    if qi.info_type == InfoType.FILESYSTEM:
        with translate_oserror():
            fs = await req.server.io(vfs.statvfs)
        attributes = fsinfo.DEFAULT_FS_ATTRIBUTES
        if vfs.streams.supported:
            attributes |= FsAttributes.NAMED_STREAMS
        data = fsinfo.encode_fs_info(qi.info_class, fs, volume_creation_time=vfs.volume_creation_time(),
                                     label=op.tree.share.name, attributes=attributes)
        return _fit(req, data, qi.output_length, _FS_FIXED.get(qi.info_class))
    if qi.info_type == InfoType.SECURITY:
        return await _query_security(req, op, qi)
    if qi.info_type == InfoType.QUOTA:
        raise SmbError(NtStatus.NOT_SUPPORTED, "quotas")
    raise SmbError(NtStatus.INVALID_PARAMETER, "bad InfoType")


async def _query_security(req: "Request", op: Open, qi: QueryInfoRequest) -> bytes:
    """SMB2_0_INFO_SECURITY (3.3.5.20.3): the parts AdditionalInformation names, from the
    descriptor a client stored (smbd.security.store) over the POSIX default. The SACL
    needs ACCESS_SYSTEM_SECURITY, owner/group/DACL need READ_CONTROL; asking for none of
    them needs nothing (as Samba, smbtorture smb2.getinfo.qsec_buffercheck)."""
    wanted = qi.additional_information
    if wanted & SecurityInformation.SACL and not op.granted_access & Access.ACCESS_SYSTEM_SECURITY:
        raise SmbError(NtStatus.ACCESS_DENIED, "SACL without ACCESS_SYSTEM_SECURITY")
    if (wanted & (SecurityInformation.OWNER | SecurityInformation.GROUP | SecurityInformation.DACL)
            and not op.granted_access & Access.READ_CONTROL):
        raise SmbError(NtStatus.ACCESS_DENIED)
    with translate_oserror():
        sd = await req.server.io(effective_descriptor, op.meta_fd, is_dir=op.is_dir)
    data = sd.select(wanted).pack()
    if len(data) > qi.output_length:
        # 3.3.5.20.3: tell the client how much it needs, in a ULONG of ErrorData.
        raise SmbError(NtStatus.BUFFER_TOO_SMALL, data=struct.pack("<I", len(data)))
    return output_response(data)


async def _query_eas(req: "Request", op: Open, qi: QueryInfoRequest) -> bytes:
    """FileFullEaInformation (MS-FSA 2.1.5.12.x; MS-SMB2 3.3.5.20.1): all the EAs, or those
    the input FILE_GET_EA_INFORMATION list names (absent ones with an empty value). Whole
    entries only: those that fit, with BUFFER_OVERFLOW if some are left out,
    BUFFER_TOO_SMALL if not even the first fits. Like Samba, no per-handle EA index is
    kept, so every query starts from the first EA."""
    if not op.granted_access & Access.FILE_READ_EA:
        raise SmbError(NtStatus.ACCESS_DENIED)
    with translate_oserror():
        stored = await req.server.io(list_eas, op.meta_fd)
    if qi.input:
        try:
            wanted = ea.parse_get_ea_list(qi.input)
        except ea.EaListError as e:
            raise SmbError(e.status, str(e)) from e
        by_name = {n.upper(): (n, v) for n, v in stored}
        stored = [by_name.get(w.upper(), (w, b"")) for w in wanted]
    if not stored:
        raise SmbError(NtStatus.NO_EAS_ON_FILE)
    entries = [ea.FullEa(n, v) for n, v in stored]
    for count in range(len(entries), 0, -1):
        data = ea.encode_full_ea_list(entries[:count])
        if len(data) <= qi.output_length:
            if count < len(entries):
                req.status = NtStatus.BUFFER_OVERFLOW
            return output_response(data)
    raise SmbError(NtStatus.BUFFER_TOO_SMALL)


def _fit(req: "Request", data: bytes, limit: int, fixed: int | None) -> bytes:
    """Answer within OutputBufferLength (3.3.5.20.1/2): below the class's fixed part,
    INFO_LENGTH_MISMATCH; otherwise as much as fits, with BUFFER_OVERFLOW if cut short."""
    if fixed is None:
        fixed = len(data)
    if limit < fixed:
        raise SmbError(NtStatus.INFO_LENGTH_MISMATCH)
    if len(data) <= limit:
        return output_response(data)
    req.status = NtStatus.BUFFER_OVERFLOW
    return output_response(data[:limit])


_SHORT_NAME_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'()-@^_`{}~")


def short_name(name: str) -> str:
    """An 8.3 name for FileAlternateNameInformation (MS-FSCC 2.1.5.2.1).

    A name that already is a valid 8.3 name is its own short name, upper-cased; any other
    gets a stable mangled one, BASE~N.EXT style, derived from a hash of the long name (no
    table is kept, so two long names could in principle map to the same short name;
    nothing here resolves a short name back)."""
    upper = name.upper()
    base, dot, ext = upper.rpartition(".") if "." in upper else (upper, "", "")
    if (0 < len(base) <= 8 and len(ext) <= 3 and "." not in base
            and set(base + ext) <= _SHORT_NAME_CHARS and not (dot and not ext)):
        return upper
    clean_base = "".join(ch for ch in base if ch in _SHORT_NAME_CHARS)[:2] or "_"
    clean_ext = "".join(ch for ch in ext if ch in _SHORT_NAME_CHARS)[:3]
    digest = zlib.crc32(name.encode("utf-8"))
    tag = "".join("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[(digest >> (5 * i)) % 36] for i in range(4))
    return f"{clean_base}{tag}~1" + (f".{clean_ext}" if clean_ext else "")


# ---- SET_INFO ------------------------------------------------------------------------------

async def handle_set_info(req: "Request") -> bytes:
    si = SetInfoRequest.parse(req.msg)
    op = req.open_for(si.file_id)
    if len(si.buffer) > req.server.config.max_io_size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    _check_charge(req, max(len(si.buffer), 1))
    if op.pipe is not None:
        raise SmbError(NtStatus.INVALID_PARAMETER, "set info on a pipe")
    if si.info_type == InfoType.FILE:
        await _set_file_info(req, op, si)
        return set_info_response()
    if si.info_type == InfoType.SECURITY:
        await _set_security(req, op, si)
        return set_info_response()
    if si.info_type == InfoType.FILESYSTEM:
        raise SmbError(NtStatus.ACCESS_DENIED if si.info_class in (2, 6) else NtStatus.INVALID_INFO_CLASS)
    if si.info_type == InfoType.QUOTA:
        raise SmbError(NtStatus.NOT_SUPPORTED, "quotas")
    raise SmbError(NtStatus.INVALID_PARAMETER, "bad InfoType")


async def _set_security(req: "Request", op: Open, si: SetInfoRequest) -> None:
    """SMB2_0_INFO_SECURITY (3.3.5.21.3; MS-FSA 2.1.5.16): store the parts
    AdditionalInformation names. Owner and group need WRITE_OWNER, the DACL WRITE_DAC, the
    SACL ACCESS_SYSTEM_SECURITY (which no handle gets: no privileges here). The owner SID is
    stored, never applied to the Unix owner (smbd.security.store)."""
    info = si.additional_information
    if op.tree.read_only:
        raise SmbError(NtStatus.ACCESS_DENIED, "read-only share")
    if not si.buffer:
        raise SmbError(NtStatus.INVALID_PARAMETER, "no security descriptor")
    sd = parse_or_error(si.buffer, NtStatus.INVALID_SECURITY_DESCR)
    # A part named but not given (no owner SID) is left alone, as Samba does.
    if sd.owner is None:
        info &= ~SecurityInformation.OWNER
    if sd.group is None:
        info &= ~SecurityInformation.GROUP
    if info & (SecurityInformation.OWNER | SecurityInformation.GROUP):
        _need(op, Access.WRITE_OWNER)
    if info & SecurityInformation.DACL:
        _need(op, Access.WRITE_DAC)
    if info & SecurityInformation.SACL:
        _need(op, Access.ACCESS_SYSTEM_SECURITY)
    with translate_oserror():
        await req.server.io(set_descriptor, op.meta_fd, sd, info)


def _need(op: Open, bits: int) -> None:
    if not op.granted_access & bits:
        raise SmbError(NtStatus.ACCESS_DENIED)


async def _set_file_info(req: "Request", op: Open, si: SetInfoRequest) -> None:
    cls = si.info_class
    server = req.server
    vfs = op.tree.vfs
    if cls == FILE_FULL_EA_INFORMATION:
        # MS-FSA 2.1.5.14.4: set (or, with an empty value, delete) each EA of the list.
        _need(op, Access.FILE_WRITE_EA)
        try:
            eas = ea.parse_full_ea_list(si.buffer)
        except ea.EaListError as e:
            raise SmbError(e.status, str(e)) from e
        try:
            await server.io(set_eas, op.meta_fd, [(e.name, e.value) for e in eas])
        except OSError as e:
            raise SmbError(NtStatus.EAS_NOT_SUPPORTED, f"EAs: {e}") from e
        return
    value = setinfo.decode_set_info(cls, si.buffer)
    with translate_oserror():
        if cls == FileInfoClass.FileBasicInformation:
            _need(op, Access.FILE_WRITE_ATTRIBUTES)
            attrs = value.file_attributes
            if attrs & FileAttributes.DIRECTORY and not op.is_dir:
                raise SmbError(NtStatus.INVALID_PARAMETER, "DIRECTORY attribute on a file")
            if attrs & FileAttributes.TEMPORARY and op.is_dir:
                raise SmbError(NtStatus.INVALID_PARAMETER, "TEMPORARY attribute on a directory")
            await server.io(lambda: vfs.set_basic_info(
                op.meta_fd, creation_time=value.creation_time, last_access_time=value.last_access_time,
                last_write_time=value.last_write_time, attributes=attrs & ~int(FileAttributes.DIRECTORY)))
        elif cls == FileInfoClass.FileRenameInformation:
            await _rename(req, op, value)
        elif cls in (FileInfoClass.FileDispositionInformation, FileInfoClass.FileDispositionInformationEx):
            _need(op, Access.DELETE)
            await _set_disposition(req, op, value.delete_pending)
        elif cls == FileInfoClass.FileEndOfFileInformation:
            _need(op, Access.FILE_WRITE_DATA)
            if op.is_dir:
                raise SmbError(NtStatus.INVALID_PARAMETER)
            caching.data_changing(server, op)
            await server.io(vfs.truncate, op.fd, value.end_of_file)
        elif cls == FileInfoClass.FileAllocationInformation:
            _need(op, Access.FILE_WRITE_DATA)
            if op.is_dir:
                raise SmbError(NtStatus.INVALID_PARAMETER)
            caching.data_changing(server, op)
            await server.io(vfs.allocate, op.fd, value.allocation_size)
        elif cls == FileInfoClass.FilePositionInformation:
            op.position = value.current_byte_offset
        elif cls == FileInfoClass.FileModeInformation:
            op.mode = value.mode
        elif cls == FileInfoClass.FileLinkInformation:
            raise SmbError(NtStatus.NOT_SUPPORTED, "hard links")
        else:
            raise SmbError(NtStatus.INVALID_INFO_CLASS)


async def _set_disposition(req: "Request", op: Open, delete: bool) -> None:
    """FileDispositionInformation: delete when the last handle closes (MS-FSA 2.1.5.14.3)."""
    server = req.server
    if not delete:
        op.delete_on_close = False
        server.clear_delete_pending(op.file_key)
        return
    if not op.components:
        raise SmbError(NtStatus.CANNOT_DELETE, "the share root")
    info = await server.io(streams.info_of, op)
    if info.attributes & FileAttributes.READONLY:
        raise SmbError(NtStatus.CANNOT_DELETE)
    if op.is_dir and not await server.io(op.tree.vfs.is_empty_dir, op.fd):
        raise SmbError(NtStatus.DIRECTORY_NOT_EMPTY)
    op.delete_on_close = True
    server.set_delete_pending(op.file_key)


async def _rename(req: "Request", op: Open, value) -> None:
    """FileRenameInformation (MS-FSA 2.1.5.14.11): needs DELETE access; other opens of the
    file must share delete; a directory with open files below it cannot move."""
    _need(op, Access.DELETE)
    server = req.server
    vfs = op.tree.vfs
    if not op.components:
        raise SmbError(NtStatus.ACCESS_DENIED, "the share root")
    if value.file_name.startswith(":"):
        # A stream rename within the same file (MS-FSA 2.1.5.15.11.1).
        if op.stream is None:
            raise SmbError(NtStatus.INVALID_PARAMETER, "a stream name for the file's own handle")
        if sharemode.others_hold(op.fd, sharemode.DENY_DELETE):
            raise SmbError(NtStatus.SHARING_VIOLATION)
        await server.io(streams.rename_stream, server, op, value.file_name, value.replace_if_exists)
        return
    if op.stream is not None:
        # A stream's handle cannot move the stream to another file, nor rename its file: the
        # file is open (this very handle holds it), as Windows answers.
        raise SmbError(NtStatus.SHARING_VIOLATION, "rename of a stream to a path")
    target = value.file_name.lstrip("\\")
    dst = vfs.parse_name(target)
    if not dst:
        raise SmbError(NtStatus.OBJECT_NAME_INVALID)
    src = op.components
    parent = await server.io(vfs.lookup, dst[:-1])
    if parent is not None and any(o.is_dir and o.file_key == parent.file_id and o.granted_access & Access.DELETE
                                  and not o.closed for o in server.opens.values()):
        # The target directory is open for DELETE: Windows refuses the rename, and Samba does
        # for its own process's opens, as here (smbtorture smb2.oplock.batch19, exclusive6).
        raise SmbError(NtStatus.SHARING_VIOLATION, "the target directory is open for DELETE")
    for other in server.opens.values():
        if other is op or other.tree.vfs is not vfs or other.closed:
            continue
        if other.file_key == op.file_key and not other.share_access & 0x4:
            raise SmbError(NtStatus.SHARING_VIOLATION)
        if op.is_dir and other.components[:len(src)] == src and len(other.components) > len(src):
            raise SmbError(NtStatus.ACCESS_DENIED, "open files below the directory")
    if sharemode.others_hold(op.fd, sharemode.DENY_DELETE):
        raise SmbError(NtStatus.SHARING_VIOLATION)
    if sharemode.others_hold(op.fd, sharemode.HAS_STREAM_OPEN):
        # A file with an open stream keeps its name, in any worker (smbtorture
        # smb2.streams.basefile-rename-with-open-stream).
        raise SmbError(NtStatus.ACCESS_DENIED, "a stream of the file is open")
    from ..leases import lease_manager
    await lease_manager(server).break_for_namespace_change(req, op)  # other keys lose H first
    await server.io(lambda: vfs.rename(src, dst, replace=value.replace_if_exists))
    for other in server.opens.values():
        if other.tree.vfs is vfs and other.components[:len(src)] == src:
            other.components = dst + other.components[len(src):]
