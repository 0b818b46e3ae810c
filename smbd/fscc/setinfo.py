"""Decoders for the SET_INFO input buffers (MS-FSCC 2.4; MS-SMB2 2.2.39, 3.3.5.21.1).

Each structure is a frozen dataclass with ``parse(buf)``.  A buffer shorter than the fixed part
is STATUS_INFO_LENGTH_MISMATCH (MS-FSA 2.1.5.14: "InputBufferSize is less than the size of the
structure"); a value the spec forbids is STATUS_INVALID_PARAMETER.  Both are
:class:`~smbd.status.SmbError`: a bad SET_INFO fails that request, not the connection.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from smbd.status import NtStatus, SmbError

from .constants import VALID_FILE_MODE_BITS, DispositionFlags, FileInfoClass

_BASIC = struct.Struct("<qqqqI")              # 2.4.7 without the trailing Reserved
_RENAME_HEAD = struct.Struct("<B7xQI")        # 2.4.37.2 / 2.4.27.2: 20 bytes
_I64 = struct.Struct("<q")
_U32 = struct.Struct("<I")

_VALID_DISPOSITION_EX = int(DispositionFlags.DELETE | DispositionFlags.POSIX_SEMANTICS
                         | DispositionFlags.FORCE_IMAGE_SECTION_CHECK | DispositionFlags.ON_CLOSE
                         | DispositionFlags.IGNORE_READONLY_ATTRIBUTE)


def _need(buf: memoryview | bytes, size: int, what: str) -> memoryview:
    view = memoryview(buf)
    if len(view) < size:
        raise SmbError(NtStatus.INFO_LENGTH_MISMATCH, f"{what}: {len(view)} < {size} bytes")
    return view


@dataclass(frozen=True, slots=True)
class BasicInformation:
    """FileBasicInformation as set by a client (MS-FSCC 2.4.7).

    Times are signed FILETIMEs: 0 = leave unchanged, -1 = leave unchanged and stop updating it
    for this handle, -2 = resume updating (MS-FSA 2.1.5.14.2); anything below -2 is
    STATUS_INVALID_PARAMETER.  FileAttributes 0 = leave unchanged.  We accept 36 bytes (without
    the 4 Reserved bytes), as Samba does for older clients.
    """

    creation_time: int
    last_access_time: int
    last_write_time: int
    change_time: int
    file_attributes: int

    @classmethod
    def parse(cls, buf: memoryview | bytes) -> "BasicInformation":
        view = _need(buf, _BASIC.size, "FileBasicInformation")
        ct, at, wt, cht, attrs = _BASIC.unpack_from(view, 0)
        if min(ct, at, wt, cht) < -2:
            raise SmbError(NtStatus.INVALID_PARAMETER, "time below -2")
        return cls(ct, at, wt, cht, attrs)


def _decode_name(view: memoryview, offset: int, length: int, what: str) -> str:
    if length % 2 or offset + length > len(view):
        raise SmbError(NtStatus.INVALID_PARAMETER, f"{what}: bad FileNameLength {length}")
    if length == 0:
        raise SmbError(NtStatus.INVALID_PARAMETER, f"{what}: empty file name")
    try:
        return bytes(view[offset:offset + length]).decode("utf-16-le")
    except UnicodeDecodeError:
        raise SmbError(NtStatus.OBJECT_NAME_INVALID, f"{what}: name is not valid UTF-16") from None


@dataclass(frozen=True, slots=True)
class RenameInformation:
    """FileRenameInformation, SMB2 form (MS-FSCC 2.4.37.2): ReplaceIfExists, Reserved,
    RootDirectory (MUST be 0 over SMB2, MS-SMB2 2.2.39), FileNameLength, FileName (the full
    target path from the share root)."""

    replace_if_exists: bool
    file_name: str

    @classmethod
    def parse(cls, buf: memoryview | bytes) -> "RenameInformation":
        replace, name = _parse_rename_like(buf, "FileRenameInformation")
        return cls(replace, name)


@dataclass(frozen=True, slots=True)
class LinkInformation:
    """FileLinkInformation, SMB2 form (MS-FSCC 2.4.27.2): same layout as the rename form."""

    replace_if_exists: bool
    file_name: str

    @classmethod
    def parse(cls, buf: memoryview | bytes) -> "LinkInformation":
        replace, name = _parse_rename_like(buf, "FileLinkInformation")
        return cls(replace, name)


def _parse_rename_like(buf: memoryview | bytes, what: str) -> tuple[bool, str]:
    view = _need(buf, _RENAME_HEAD.size, what)
    replace, root_directory, name_len = _RENAME_HEAD.unpack_from(view, 0)
    if root_directory != 0:
        raise SmbError(NtStatus.INVALID_PARAMETER, f"{what}: RootDirectory must be 0")
    return replace != 0, _decode_name(view, _RENAME_HEAD.size, name_len, what)


@dataclass(frozen=True, slots=True)
class DispositionInformation:
    """FileDispositionInformation (MS-FSCC 2.4.11): DeletePending (1 byte)."""

    delete_pending: bool

    @classmethod
    def parse(cls, buf: memoryview | bytes) -> "DispositionInformation":
        view = _need(buf, 1, "FileDispositionInformation")
        return cls(view[0] != 0)


@dataclass(frozen=True, slots=True)
class DispositionInformationEx:
    """FileDispositionInformationEx (MS-FSCC 2.4.12): Flags (FILE_DISPOSITION_*)."""

    flags: int

    @property
    def delete_pending(self) -> bool:
        return bool(self.flags & DispositionFlags.DELETE)

    @classmethod
    def parse(cls, buf: memoryview | bytes) -> "DispositionInformationEx":
        view = _need(buf, 4, "FileDispositionInformationEx")
        (flags,) = _U32.unpack_from(view, 0)
        if flags & ~_VALID_DISPOSITION_EX:
            raise SmbError(NtStatus.INVALID_PARAMETER, f"unknown disposition flags {flags:#x}")
        return cls(flags)


def _non_negative_i64(buf: memoryview | bytes, what: str) -> int:
    view = _need(buf, 8, what)
    (value,) = _I64.unpack_from(view, 0)
    if value < 0:
        raise SmbError(NtStatus.INVALID_PARAMETER, f"{what}: negative value")
    return value


@dataclass(frozen=True, slots=True)
class EndOfFileInformation:
    """FileEndOfFileInformation (MS-FSCC 2.4.14): EndOfFile (signed; negative is invalid)."""

    end_of_file: int

    @classmethod
    def parse(cls, buf: memoryview | bytes) -> "EndOfFileInformation":
        return cls(_non_negative_i64(buf, "FileEndOfFileInformation"))


@dataclass(frozen=True, slots=True)
class AllocationInformation:
    """FileAllocationInformation (MS-FSCC 2.4.4): AllocationSize."""

    allocation_size: int

    @classmethod
    def parse(cls, buf: memoryview | bytes) -> "AllocationInformation":
        return cls(_non_negative_i64(buf, "FileAllocationInformation"))


@dataclass(frozen=True, slots=True)
class PositionInformation:
    """FilePositionInformation (MS-FSCC 2.4.35): CurrentByteOffset."""

    current_byte_offset: int

    @classmethod
    def parse(cls, buf: memoryview | bytes) -> "PositionInformation":
        return cls(_non_negative_i64(buf, "FilePositionInformation"))


@dataclass(frozen=True, slots=True)
class ModeInformation:
    """FileModeInformation (MS-FSCC 2.4.26): Mode; bits outside the defined set are
    STATUS_INVALID_PARAMETER (MS-FSA 2.1.5.14.8)."""

    mode: int

    @classmethod
    def parse(cls, buf: memoryview | bytes) -> "ModeInformation":
        view = _need(buf, 4, "FileModeInformation")
        (mode,) = _U32.unpack_from(view, 0)
        if mode & ~VALID_FILE_MODE_BITS:
            raise SmbError(NtStatus.INVALID_PARAMETER, f"invalid mode bits {mode:#x}")
        return cls(mode)


_DECODERS = {
    FileInfoClass.FileBasicInformation: BasicInformation,
    FileInfoClass.FileRenameInformation: RenameInformation,
    FileInfoClass.FileLinkInformation: LinkInformation,
    FileInfoClass.FileDispositionInformation: DispositionInformation,
    FileInfoClass.FileDispositionInformationEx: DispositionInformationEx,
    FileInfoClass.FileEndOfFileInformation: EndOfFileInformation,
    FileInfoClass.FileAllocationInformation: AllocationInformation,
    FileInfoClass.FilePositionInformation: PositionInformation,
    FileInfoClass.FileModeInformation: ModeInformation,
}


def decode_set_info(info_class: int, buf: memoryview | bytes):
    """Parse a SET_INFO buffer of a file information class; unknown classes are
    STATUS_INVALID_INFO_CLASS."""
    try:
        decoder = _DECODERS[info_class]
    except KeyError:
        raise SmbError(NtStatus.INVALID_INFO_CLASS, f"set info class {info_class}") from None
    return decoder.parse(buf)
