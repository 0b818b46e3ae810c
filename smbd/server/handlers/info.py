"""QUERY_DIRECTORY (3.3.5.18), QUERY_INFO (3.3.5.20) and SET_INFO (3.3.5.21)."""
from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

from smbd.fscc import dirinfo, fileinfo, fsinfo, security, setinfo, wildcard
from smbd.fscc.constants import FileAttributes, FileInfoClass
from smbd.status import NtStatus, SmbError
from smbd.vfs.errors import translate_oserror
from smbd.wire.control import (InfoType, QueryDirectoryFlags, QueryDirectoryRequest, QueryInfoRequest,
                               SetInfoRequest, output_response, set_info_response)
from smbd.wire.create import Access

from .. import sharemode
from ..objects import Open
from .files import _check_charge

if TYPE_CHECKING:
    from ..connection import Request

# Classes whose answer may be cut short with STATUS_BUFFER_OVERFLOW (3.3.5.20.1), and the
# size of their fixed part that must fit for that.
_VARIABLE = {FileInfoClass.FileAllInformation: 100, FileInfoClass.FileNameInformation: 4,
             FileInfoClass.FileStreamInformation: 24, FileInfoClass.FileNormalizedNameInformation: 4,
             FileInfoClass.FileAlternateNameInformation: 4}
# Classes that read attributes need FILE_READ_ATTRIBUTES on the handle (MS-FSA 2.1.5.12).
_NEEDS_NOTHING = {FileInfoClass.FileAccessInformation, FileInfoClass.FileModeInformation,
                  FileInfoClass.FilePositionInformation, FileInfoClass.FileAlignmentInformation,
                  FileInfoClass.FileNameInformation, FileInfoClass.FileStandardInformation,
                  FileInfoClass.FileInternalInformation, FileInfoClass.FileEaInformation,
                  FileInfoClass.FileStreamInformation}
FILE_FULL_EA_INFORMATION = 15
MAX_SECURITY_DESCRIPTOR = 64 * 1024


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
    remaining = cursor.entries[cursor.position:]
    if not remaining:
        raise SmbError(NtStatus.NO_SUCH_FILE if first else NtStatus.NO_MORE_FILES)
    data, count = dirinfo.encode_dir_entries(qd.info_class, remaining, qd.output_length,
                                             single=bool(qd.flags & QueryDirectoryFlags.RETURN_SINGLE_ENTRY))
    if count == 0:
        raise SmbError(NtStatus.INFO_LENGTH_MISMATCH, "first entry does not fit")
    cursor.position += count
    return output_response(data)


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
            raise SmbError(NtStatus.NO_EAS_ON_FILE)
        if qi.info_class not in _NEEDS_NOTHING and not op.granted_access & Access.FILE_READ_ATTRIBUTES:
            raise SmbError(NtStatus.ACCESS_DENIED)
        with translate_oserror():
            info = await req.server.io(vfs.stat_fd, op.fd, op.components[-1] if op.components else "")
        ctx = fileinfo.OpenContext(name=_name(op), access_mask=op.granted_access, position=op.position,
                                   mode=op.mode, delete_pending=req.server.delete_pending(op.file_key))
        data = fileinfo.encode_file_info(qi.info_class, info, ctx)
        return _fit(req, data, qi.output_length, _VARIABLE.get(qi.info_class))
    if qi.info_type == InfoType.FILESYSTEM:
        with translate_oserror():
            fs = await req.server.io(vfs.statvfs)
        data = fsinfo.encode_fs_info(qi.info_class, fs, volume_creation_time=vfs.volume_creation_time(),
                                     label=op.tree.share.name)
        return _fit(req, data, qi.output_length, 18 if qi.info_class == 1 else 12 if qi.info_class == 5 else None)
    if qi.info_type == InfoType.SECURITY:
        if not op.granted_access & Access.READ_CONTROL:
            raise SmbError(NtStatus.ACCESS_DENIED)
        st = await req.server.io(os.fstat, op.fd)
        data = security.build_security_descriptor(st.st_uid, st.st_gid, qi.additional_information,
                                                  is_dir=op.is_dir)
        if len(data) > qi.output_length:
            # 3.3.5.20.3: tell the client how much it needs.
            raise SmbError(NtStatus.BUFFER_TOO_SMALL, data=struct.pack("<I", len(data)))
        return output_response(data)
    if qi.info_type == InfoType.QUOTA:
        raise SmbError(NtStatus.NOT_SUPPORTED, "quotas")
    raise SmbError(NtStatus.INVALID_PARAMETER, "bad InfoType")


def _fit(req: "Request", data: bytes, limit: int, fixed: int | None) -> bytes:
    """Answer within OutputBufferLength: truncate variable classes with BUFFER_OVERFLOW,
    refuse fixed ones with INFO_LENGTH_MISMATCH (3.3.5.20.1/2)."""
    if len(data) <= limit:
        return output_response(data)
    if fixed is not None and limit >= fixed:
        req.status = NtStatus.BUFFER_OVERFLOW
        return output_response(data[:limit])
    raise SmbError(NtStatus.INFO_LENGTH_MISMATCH)


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
        if not op.granted_access & (Access.WRITE_DAC | Access.WRITE_OWNER):
            raise SmbError(NtStatus.ACCESS_DENIED)
        raise SmbError(NtStatus.NOT_SUPPORTED, "security descriptors are not stored")
    if si.info_type == InfoType.FILESYSTEM:
        raise SmbError(NtStatus.ACCESS_DENIED if si.info_class in (2, 6) else NtStatus.INVALID_INFO_CLASS)
    if si.info_type == InfoType.QUOTA:
        raise SmbError(NtStatus.NOT_SUPPORTED, "quotas")
    raise SmbError(NtStatus.INVALID_PARAMETER, "bad InfoType")


def _need(op: Open, bits: int) -> None:
    if not op.granted_access & bits:
        raise SmbError(NtStatus.ACCESS_DENIED)


async def _set_file_info(req: "Request", op: Open, si: SetInfoRequest) -> None:
    cls = si.info_class
    server = req.server
    vfs = op.tree.vfs
    if cls == FILE_FULL_EA_INFORMATION:
        raise SmbError(NtStatus.EAS_NOT_SUPPORTED)
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
                op.fd, creation_time=value.creation_time, last_access_time=value.last_access_time,
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
            await server.io(vfs.truncate, op.fd, value.end_of_file)
        elif cls == FileInfoClass.FileAllocationInformation:
            _need(op, Access.FILE_WRITE_DATA)
            if op.is_dir:
                raise SmbError(NtStatus.INVALID_PARAMETER)
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
    info = await server.io(op.tree.vfs.stat_fd, op.fd, op.components[-1])
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
    target = value.file_name.lstrip("\\")
    dst = vfs.parse_name(target)
    if not dst:
        raise SmbError(NtStatus.OBJECT_NAME_INVALID)
    src = op.components
    for other in server.opens.values():
        if other is op or other.tree.vfs is not vfs or other.closed:
            continue
        if other.file_key == op.file_key and not other.share_access & 0x4:
            raise SmbError(NtStatus.SHARING_VIOLATION)
        if op.is_dir and other.components[:len(src)] == src and len(other.components) > len(src):
            raise SmbError(NtStatus.ACCESS_DENIED, "open files below the directory")
    if sharemode.others_hold(op.fd, sharemode.DENY_DELETE):
        raise SmbError(NtStatus.SHARING_VIOLATION)
    await server.io(lambda: vfs.rename(src, dst, replace=value.replace_if_exists))
    for other in server.opens.values():
        if other.tree.vfs is vfs and other.components[:len(src)] == src:
            other.components = dst + other.components[len(src):]
