"""Encoders for the file information classes of QUERY_INFO (MS-FSCC 2.4; MS-SMB2 2.2.37).

Pure functions from a :class:`~smbd.vfs.types.FileInfo` (plus the per-open extras the VFS cannot
know: name, granted access, position, mode, delete-pending) to the little-endian wire bytes.
Truncating to the client's OutputBufferLength (and answering STATUS_BUFFER_OVERFLOW) is the
handler's job.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smbd.status import NtStatus, SmbError

from ._util import utf16
from .constants import FileInfoClass

if TYPE_CHECKING:
    from smbd.vfs.types import FileInfo

_BASIC = struct.Struct("<QQQQI4x")          # 2.4.7, 40 bytes
_STANDARD = struct.Struct("<QQIBB2x")       # 2.4.41, 24 bytes
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_NAME_HEAD = struct.Struct("<I")            # FileNameLength
_STREAM = struct.Struct("<IIQQ")            # 2.4.44 fixed part, 24 bytes
_COMPRESSION = struct.Struct("<QHBBB3x")    # 2.4.9, 16 bytes
_NETWORK_OPEN = struct.Struct("<QQQQQQI4x")  # 2.4.29, 56 bytes
_ATTRIBUTE_TAG = struct.Struct("<II")       # 2.4.6, 8 bytes
_FILE_ID = struct.Struct("<QQQ")            # 2.4.21: VolumeSerialNumber + 128-bit FileId

#: The stream name NTFS reports for a file's unnamed data stream (MS-FSCC 2.4.44).
DEFAULT_DATA_STREAM = "::$DATA"


def file_basic_information(info: "FileInfo") -> bytes:
    """FileBasicInformation (MS-FSCC 2.4.7): four times, FileAttributes, Reserved."""
    return _BASIC.pack(info.creation_time, info.last_access_time, info.last_write_time,
                       info.change_time, info.attributes)


def file_standard_information(info: "FileInfo", *, delete_pending: bool = False) -> bytes:
    """FileStandardInformation (MS-FSCC 2.4.41): AllocationSize, EndOfFile, NumberOfLinks,
    DeletePending, Directory, Reserved."""
    return _STANDARD.pack(info.allocation_size, info.size, info.nlink, int(delete_pending),
                          int(info.is_dir))


def file_internal_information(info: "FileInfo") -> bytes:
    """FileInternalInformation (MS-FSCC 2.4.22): IndexNumber, the 64-bit file id."""
    return _U64.pack(info.file_id & 0xFFFFFFFFFFFFFFFF)


def file_ea_information(ea_size: int = 0) -> bytes:
    """FileEaInformation (MS-FSCC 2.4.13): EaSize (we keep no extended attributes: 0)."""
    return _U32.pack(ea_size)


def file_access_information(access_mask: int) -> bytes:
    """FileAccessInformation (MS-FSCC 2.4.1): AccessFlags, the access granted to this open."""
    return _U32.pack(access_mask)


def _name_information(name: str) -> bytes:
    raw = utf16(name)
    return _NAME_HEAD.pack(len(raw)) + raw


def file_name_information(name: str) -> bytes:
    """FileNameInformation (MS-FSCC 2.4.28): FileNameLength + FileName.  ``name`` is the path
    as the handler wants to show it (Windows: from the share root with a leading backslash)."""
    return _name_information(name)


def file_position_information(position: int) -> bytes:
    """FilePositionInformation (MS-FSCC 2.4.35): CurrentByteOffset."""
    return _U64.pack(position)


def file_mode_information(mode: int) -> bytes:
    """FileModeInformation (MS-FSCC 2.4.26): Mode."""
    return _U32.pack(mode)


def file_alignment_information(alignment: int = 0) -> bytes:
    """FileAlignmentInformation (MS-FSCC 2.4.3): AlignmentRequirement (0 = FILE_BYTE_ALIGNMENT,
    what Samba reports)."""
    return _U32.pack(alignment)


def file_all_information(info: "FileInfo", *, name: str, access_mask: int, position: int = 0,
                         mode: int = 0, delete_pending: bool = False, ea_size: int = 0,
                         alignment: int = 0) -> bytes:
    """FileAllInformation (MS-FSCC 2.4.2): Basic, Standard, Internal, Ea, Access, Position, Mode,
    Alignment and Name information back to back (100 fixed bytes, then the name)."""
    return b"".join((
        file_basic_information(info),
        file_standard_information(info, delete_pending=delete_pending),
        file_internal_information(info),
        file_ea_information(ea_size),
        file_access_information(access_mask),
        file_position_information(position),
        file_mode_information(mode),
        file_alignment_information(alignment),
        _name_information(name),
    ))


def file_alternate_name_information(short_name: str) -> bytes:
    """FileAlternateNameInformation (MS-FSCC 2.4.5): the 8.3 name, same layout as
    FileNameInformation.  (We generate no short names; a handler may answer
    STATUS_OBJECT_NAME_NOT_FOUND as Windows does with 8.3 names disabled.)"""
    return _name_information(short_name)


def file_stream_information(info: "FileInfo", named: tuple = ()) -> bytes:
    """FileStreamInformation (MS-FSCC 2.4.44): the unnamed data stream "::$DATA" of a file (a
    directory has none), then each named stream as ":name:$DATA" (``named``: objects with
    ``name``, ``size`` and ``allocation_size``). Entries are 8-byte aligned, NextEntryOffset
    0 in the last."""
    entries = [] if info.is_dir else [(DEFAULT_DATA_STREAM, info.size, info.allocation_size)]
    entries += [(f":{s.name}:$DATA", s.size, s.allocation_size) for s in named]
    out = bytearray()
    last = end = -1
    for name, size, allocation in entries:
        start = len(out)
        if last >= 0:
            struct.pack_into("<I", out, last, start - last)
        raw = utf16(name)
        out += _STREAM.pack(0, len(raw), size, allocation) + raw
        end = len(out)
        out += b"\0" * (-len(out) % 8)
        last = start
    return bytes(out[:end]) if last >= 0 else b""  # no padding after the last entry


def file_compression_information(info: "FileInfo") -> bytes:
    """FileCompressionInformation (MS-FSCC 2.4.9): CompressedFileSize = EndOfFile,
    CompressionFormat = COMPRESSION_FORMAT_NONE, shifts 0."""
    return _COMPRESSION.pack(info.size, 0, 0, 0, 0)


def file_network_open_information(info: "FileInfo") -> bytes:
    """FileNetworkOpenInformation (MS-FSCC 2.4.29): times, AllocationSize, EndOfFile,
    FileAttributes, Reserved."""
    return _NETWORK_OPEN.pack(info.creation_time, info.last_access_time, info.last_write_time,
                              info.change_time, info.allocation_size, info.size, info.attributes)


def file_attribute_tag_information(info: "FileInfo", reparse_tag: int = 0) -> bytes:
    """FileAttributeTagInformation (MS-FSCC 2.4.6): FileAttributes, ReparseTag."""
    return _ATTRIBUTE_TAG.pack(info.attributes, reparse_tag)


def file_normalized_name_information(name: str) -> bytes:
    """FileNormalizedNameInformation (MS-FSCC 2.4.30): same layout as FileNameInformation."""
    return _name_information(name)


def file_id_information(info: "FileInfo") -> bytes:
    """FileIdInformation (MS-FSCC 2.4.21): VolumeSerialNumber (8 bytes) and a 128-bit FileId
    (the inode in the low 64 bits)."""
    return _FILE_ID.pack(info.volume_id & 0xFFFFFFFFFFFFFFFF, info.file_id & 0xFFFFFFFFFFFFFFFF, 0)


@dataclass(frozen=True, slots=True)
class OpenContext:
    """What an open knows beyond the file's own metadata, for QUERY_INFO."""

    name: str = ""
    access_mask: int = 0
    position: int = 0
    mode: int = 0
    delete_pending: bool = False
    short_name: str | None = None
    ea_size: int = 0  # FileEaInformation.EaSize of the file's extended attributes
    streams: tuple = ()  # smbd.vfs.streams.StreamEntry: the named streams, for FileStreamInformation


def encode_file_info(info_class: int, info: "FileInfo", ctx: OpenContext = OpenContext()) -> bytes:
    """Encode one QUERY_INFO file information class; unknown or unsupported classes raise
    SmbError(STATUS_INVALID_INFO_CLASS) (MS-SMB2 3.3.5.20.1)."""
    c = FileInfoClass
    match info_class:
        case c.FileBasicInformation:
            return file_basic_information(info)
        case c.FileStandardInformation:
            return file_standard_information(info, delete_pending=ctx.delete_pending)
        case c.FileInternalInformation:
            return file_internal_information(info)
        case c.FileEaInformation:
            return file_ea_information(ctx.ea_size)
        case c.FileAccessInformation:
            return file_access_information(ctx.access_mask)
        case c.FileNameInformation:
            return file_name_information(ctx.name)
        case c.FilePositionInformation:
            return file_position_information(ctx.position)
        case c.FileModeInformation:
            return file_mode_information(ctx.mode)
        case c.FileAlignmentInformation:
            return file_alignment_information()
        case c.FileAllInformation:
            return file_all_information(info, name=ctx.name, access_mask=ctx.access_mask,
                                        position=ctx.position, mode=ctx.mode,
                                        delete_pending=ctx.delete_pending, ea_size=ctx.ea_size)
        case c.FileAlternateNameInformation:
            if ctx.short_name is None:
                raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "no 8.3 name")
            return file_alternate_name_information(ctx.short_name)
        case c.FileStreamInformation:
            return file_stream_information(info, ctx.streams)
        case c.FileCompressionInformation:
            return file_compression_information(info)
        case c.FileNetworkOpenInformation:
            return file_network_open_information(info)
        case c.FileAttributeTagInformation:
            return file_attribute_tag_information(info)
        case c.FileNormalizedNameInformation:
            return file_normalized_name_information(ctx.name)
        case c.FileIdInformation:
            return file_id_information(info)
    raise SmbError(NtStatus.INVALID_INFO_CLASS, f"file info class {info_class}")
