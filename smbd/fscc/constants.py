"""Numeric constants of MS-FSCC used by the encoders and the VFS.

Sections: 2.6 (file attributes), 2.4 (file information classes), 2.5 (file system information
classes), 2.1.2.1 (reparse tags), 2.5.1 (file system attribute flags).
"""
from __future__ import annotations

from enum import IntEnum, IntFlag


class FileAttributes(IntFlag):
    """FILE_ATTRIBUTE_* (MS-FSCC 2.6)."""

    READONLY = 0x00000001
    HIDDEN = 0x00000002
    SYSTEM = 0x00000004
    DIRECTORY = 0x00000010
    ARCHIVE = 0x00000020
    NORMAL = 0x00000080
    TEMPORARY = 0x00000100
    SPARSE_FILE = 0x00000200
    REPARSE_POINT = 0x00000400
    COMPRESSED = 0x00000800
    OFFLINE = 0x00001000
    NOT_CONTENT_INDEXED = 0x00002000
    ENCRYPTED = 0x00004000


#: The attribute bits a client may set and we keep (in our own xattr): MS-FSA 2.1.5.14.2 lets a
#: client change READONLY, HIDDEN, SYSTEM, ARCHIVE, TEMPORARY, OFFLINE, NOT_CONTENT_INDEXED.
SETTABLE_ATTRIBUTES = int(
    FileAttributes.READONLY
    | FileAttributes.HIDDEN
    | FileAttributes.SYSTEM
    | FileAttributes.ARCHIVE
    | FileAttributes.TEMPORARY
    | FileAttributes.OFFLINE
    | FileAttributes.NOT_CONTENT_INDEXED
)


class FileInfoClass(IntEnum):
    """FileInformationClass values (MS-FSCC 2.4), used by QUERY_INFO, SET_INFO and
    QUERY_DIRECTORY."""

    FileDirectoryInformation = 1
    FileFullDirectoryInformation = 2
    FileBothDirectoryInformation = 3
    FileBasicInformation = 4
    FileStandardInformation = 5
    FileInternalInformation = 6
    FileEaInformation = 7
    FileAccessInformation = 8
    FileNameInformation = 9
    FileRenameInformation = 10
    FileLinkInformation = 11
    FileNamesInformation = 12
    FileDispositionInformation = 13
    FilePositionInformation = 14
    FileFullEaInformation = 15
    FileModeInformation = 16
    FileAlignmentInformation = 17
    FileAllInformation = 18
    FileAllocationInformation = 19
    FileEndOfFileInformation = 20
    FileAlternateNameInformation = 21
    FileStreamInformation = 22
    FilePipeInformation = 23
    FileCompressionInformation = 28
    FileNetworkOpenInformation = 34
    FileAttributeTagInformation = 35
    FileIdBothDirectoryInformation = 37
    FileIdFullDirectoryInformation = 38
    FileValidDataLengthInformation = 39
    FileShortNameInformation = 40
    FileNormalizedNameInformation = 48
    FileIdInformation = 59
    FileIdExtdDirectoryInformation = 60
    FileDispositionInformationEx = 64


class FsInfoClass(IntEnum):
    """FsInformationClass values (MS-FSCC 2.5)."""

    FileFsVolumeInformation = 1
    FileFsLabelInformation = 2
    FileFsSizeInformation = 3
    FileFsDeviceInformation = 4
    FileFsAttributeInformation = 5
    FileFsControlInformation = 6
    FileFsFullSizeInformation = 7
    FileFsObjectIdInformation = 8
    FileFsDriverPathInformation = 9
    FileFsVolumeFlagsInformation = 10
    FileFsSectorSizeInformation = 11


class FsAttributes(IntFlag):
    """FileSystemAttributes of FileFsAttributeInformation (MS-FSCC 2.5.1)."""

    CASE_SENSITIVE_SEARCH = 0x00000001
    CASE_PRESERVED_NAMES = 0x00000002
    UNICODE_ON_DISK = 0x00000004
    PERSISTENT_ACLS = 0x00000008
    FILE_COMPRESSION = 0x00000010
    VOLUME_QUOTAS = 0x00000020
    SUPPORTS_SPARSE_FILES = 0x00000040
    SUPPORTS_REPARSE_POINTS = 0x00000080
    SUPPORTS_OBJECT_IDS = 0x00010000
    NAMED_STREAMS = 0x00040000
    SUPPORTS_HARD_LINKS = 0x00400000


class FileMode(IntFlag):
    """FileModeInformation.Mode bits (MS-FSCC 2.4.26)."""

    WRITE_THROUGH = 0x00000002
    SEQUENTIAL_ONLY = 0x00000004
    NO_INTERMEDIATE_BUFFERING = 0x00000008
    SYNCHRONOUS_IO_ALERT = 0x00000010
    SYNCHRONOUS_IO_NONALERT = 0x00000020
    DELETE_ON_CLOSE = 0x00001000


# Plain ints: "~" on an IntFlag complements within the defined members only, which would make
# "value & ~VALID" blind to undefined bits.
VALID_FILE_MODE_BITS = int(
    FileMode.WRITE_THROUGH
    | FileMode.SEQUENTIAL_ONLY
    | FileMode.NO_INTERMEDIATE_BUFFERING
    | FileMode.SYNCHRONOUS_IO_ALERT
    | FileMode.SYNCHRONOUS_IO_NONALERT
    | FileMode.DELETE_ON_CLOSE
)


class DispositionFlags(IntFlag):
    """FileDispositionInformationEx.Flags (MS-FSCC 2.4.12)."""

    DO_NOT_DELETE = 0x00000000
    DELETE = 0x00000001
    POSIX_SEMANTICS = 0x00000002
    FORCE_IMAGE_SECTION_CHECK = 0x00000004
    ON_CLOSE = 0x00000008
    IGNORE_READONLY_ATTRIBUTE = 0x00000010


#: FileFsDeviceInformation.DeviceType for a disk (MS-FSCC 2.5.10).
FILE_DEVICE_DISK = 0x00000007
#: FileFsDeviceInformation.Characteristics: FILE_DEVICE_IS_MOUNTED (MS-FSCC 2.5.10), what Samba
#: reports for a disk share.
FILE_DEVICE_IS_MOUNTED = 0x00000020

#: FileFsSectorSizeInformation.Flags (MS-FSCC 2.5.7).
SSINFO_FLAGS_ALIGNED_DEVICE = 0x00000001
SSINFO_FLAGS_PARTITION_ALIGNED_ON_DEVICE = 0x00000002
SSINFO_FLAGS_NO_SEEK_PENALTY = 0x00000004
SSINFO_FLAGS_TRIM_ENABLED = 0x00000008

#: FILE_ALL_ACCESS (MS-SMB2 2.2.13.1.1: all file-specific rights plus the standard rights).
FILE_ALL_ACCESS = 0x001F01FF
