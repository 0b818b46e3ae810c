"""Directory information classes for QUERY_DIRECTORY (MS-FSCC 2.4; MS-SMB2 3.3.5.18).

Each entry starts with NextEntryOffset (the byte distance to the next entry, 0 in the last one)
and FileIndex (0: meaningless on this filesystem, as MS-FSCC allows).  Entries are 8-byte
aligned; :func:`encode_dir_entries` packs as many as fit in the client's OutputBufferLength.
We keep no EAs (EaSize 0) and generate no 8.3 names (ShortNameLength 0).
"""
from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from smbd.status import NtStatus, SmbError

from ._util import align8, utf16
from .constants import FileInfoClass

if TYPE_CHECKING:
    from smbd.vfs.types import DirEntry, FileInfo

# The common head of the directory classes that carry times and sizes:
# NextEntryOffset, FileIndex, CreationTime, LastAccessTime, LastWriteTime, ChangeTime,
# EndOfFile, AllocationSize, FileAttributes, FileNameLength.
_HEAD_FMT = "<IIQQQQQQII"

#: FileDirectoryInformation (MS-FSCC 2.4.10): the head, then FileName.  64 bytes fixed.
DIRECTORY = struct.Struct(_HEAD_FMT)
#: FileFullDirectoryInformation (MS-FSCC 2.4.15): + EaSize.  68 bytes fixed.
FULL_DIRECTORY = struct.Struct(_HEAD_FMT + "I")
#: FileBothDirectoryInformation (MS-FSCC 2.4.8): + EaSize, ShortNameLength, Reserved,
#: ShortName[24].  94 bytes fixed.
BOTH_DIRECTORY = struct.Struct(_HEAD_FMT + "IBx24s")
#: FileIdBothDirectoryInformation (MS-FSCC 2.4.18): + EaSize, ShortNameLength, Reserved1,
#: ShortName[24], Reserved2, FileId.  104 bytes fixed.
ID_BOTH_DIRECTORY = struct.Struct(_HEAD_FMT + "IBx24s2xQ")
#: FileIdFullDirectoryInformation (MS-FSCC 2.4.20): + EaSize, Reserved, FileId.  80 bytes.
ID_FULL_DIRECTORY = struct.Struct(_HEAD_FMT + "I4xQ")
#: FileIdExtdDirectoryInformation (MS-FSCC 2.4.19): + EaSize, ReparsePointTag, FileId[16].
#: 88 bytes fixed.
ID_EXTD_DIRECTORY = struct.Struct(_HEAD_FMT + "IIQQ")
#: FileNamesInformation (MS-FSCC 2.4.29 in older revisions): NextEntryOffset, FileIndex,
#: FileNameLength, FileName.  12 bytes fixed.
NAMES = struct.Struct("<III")


def _head(info: "FileInfo", name_len: int) -> tuple:
    return (0, 0, info.creation_time, info.last_access_time, info.last_write_time,
            info.change_time, info.size, info.allocation_size, info.attributes, name_len)


def _directory(e: "DirEntry", raw: bytes) -> bytes:
    return DIRECTORY.pack(*_head(e.info, len(raw))) + raw


def _full(e: "DirEntry", raw: bytes) -> bytes:
    return FULL_DIRECTORY.pack(*_head(e.info, len(raw)), 0) + raw


def _both(e: "DirEntry", raw: bytes) -> bytes:
    return BOTH_DIRECTORY.pack(*_head(e.info, len(raw)), 0, 0, b"") + raw


def _id_both(e: "DirEntry", raw: bytes) -> bytes:
    return ID_BOTH_DIRECTORY.pack(*_head(e.info, len(raw)), 0, 0, b"", e.info.file_id) + raw


def _id_full(e: "DirEntry", raw: bytes) -> bytes:
    return ID_FULL_DIRECTORY.pack(*_head(e.info, len(raw)), 0, e.info.file_id) + raw


def _id_extd(e: "DirEntry", raw: bytes) -> bytes:
    return ID_EXTD_DIRECTORY.pack(*_head(e.info, len(raw)), 0, 0, e.info.file_id, 0) + raw


def _names(e: "DirEntry", raw: bytes) -> bytes:
    return NAMES.pack(0, 0, len(raw)) + raw


_ENCODERS: dict[int, Callable[["DirEntry", bytes], bytes]] = {
    FileInfoClass.FileDirectoryInformation: _directory,
    FileInfoClass.FileFullDirectoryInformation: _full,
    FileInfoClass.FileBothDirectoryInformation: _both,
    FileInfoClass.FileNamesInformation: _names,
    FileInfoClass.FileIdBothDirectoryInformation: _id_both,
    FileInfoClass.FileIdFullDirectoryInformation: _id_full,
    FileInfoClass.FileIdExtdDirectoryInformation: _id_extd,
}

_NEXT = struct.Struct("<I")


def encode_dir_entry(info_class: int, entry: "DirEntry") -> bytes:
    """One entry (NextEntryOffset 0, unpadded)."""
    try:
        encoder = _ENCODERS[info_class]
    except KeyError:
        raise SmbError(NtStatus.INVALID_INFO_CLASS, f"directory info class {info_class}") from None
    return encoder(entry, utf16(entry.name))


def encode_dir_entries(info_class: int, entries: Sequence["DirEntry"], max_bytes: int, *,
                       single: bool = False) -> tuple[bytes, int]:
    """Pack ``entries`` in order into at most ``max_bytes``.

    Every entry but the last is zero-padded to a multiple of 8 bytes and its NextEntryOffset
    points at the next; the last entry has NextEntryOffset 0 and no padding.  Packing stops at
    the first entry that does not fit (entries are never split) or after one entry with
    ``single`` (SMB2_RETURN_SINGLE_ENTRY).  Returns the bytes and how many entries they hold;
    ``(b"", 0)`` when not even the first fits, which the handler reports as
    STATUS_INFO_LENGTH_MISMATCH (MS-SMB2 3.3.5.18).  An unknown class is
    STATUS_INVALID_INFO_CLASS.
    """
    try:
        encoder = _ENCODERS[info_class]
    except KeyError:
        raise SmbError(NtStatus.INVALID_INFO_CLASS, f"directory info class {info_class}") from None
    out = bytearray()
    last_start = -1
    count = 0
    for entry in entries:
        data = encoder(entry, utf16(entry.name))
        start = align8(len(out)) if count else 0
        if start + len(data) > max_bytes:
            break
        if count:
            out.extend(bytes(start - len(out)))
            _NEXT.pack_into(out, last_start, start - last_start)
        out.extend(data)
        last_start = start
        count += 1
        if single:
            break
    return bytes(out), count
