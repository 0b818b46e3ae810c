"""Encoders for the file system information classes of QUERY_INFO (MS-FSCC 2.5).

Inputs are a :class:`~smbd.vfs.types.FsInfo` from ``Share.statvfs()`` plus the few values a
share decides itself (label, creation time, object id).
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from smbd.status import NtStatus, SmbError

from ._util import utf16
from .constants import (
    FILE_DEVICE_DISK,
    FILE_DEVICE_IS_MOUNTED,
    SSINFO_FLAGS_ALIGNED_DEVICE,
    SSINFO_FLAGS_PARTITION_ALIGNED_ON_DEVICE,
    FsAttributes,
    FsInfoClass,
)

if TYPE_CHECKING:
    from smbd.vfs.types import FsInfo

_VOLUME = struct.Struct("<QIIBx")      # 2.5.9: 18 bytes fixed + VolumeLabel
_SIZE = struct.Struct("<QQII")         # 2.5.8: 24 bytes
_DEVICE = struct.Struct("<II")         # 2.5.10: 8 bytes
_ATTRIBUTE = struct.Struct("<IiI")     # 2.5.1: 12 bytes fixed + FileSystemName
_FULL_SIZE = struct.Struct("<QQQII")   # 2.5.4: 32 bytes
_OBJECT_ID = struct.Struct("<16s48s")  # 2.5.6: 64 bytes
_SECTOR_SIZE = struct.Struct("<7I")    # 2.5.7: 28 bytes

#: What we announce in FileFsAttributeInformation: the flags Samba reports for a POSIX share
#: (case-sensitive search and case-preserved names from vfs_default, Unicode names).
DEFAULT_FS_ATTRIBUTES = (FsAttributes.CASE_SENSITIVE_SEARCH | FsAttributes.CASE_PRESERVED_NAMES
                         | FsAttributes.UNICODE_ON_DISK)


def file_fs_volume_information(*, creation_time: int, serial_number: int, label: str = "",
                               supports_objects: bool = False) -> bytes:
    """FileFsVolumeInformation (MS-FSCC 2.5.9): VolumeCreationTime, VolumeSerialNumber,
    VolumeLabelLength, SupportsObjects, Reserved, VolumeLabel."""
    raw = utf16(label)
    return _VOLUME.pack(creation_time, serial_number & 0xFFFFFFFF, len(raw),
                        int(supports_objects)) + raw


def file_fs_size_information(fs: "FsInfo") -> bytes:
    """FileFsSizeInformation (MS-FSCC 2.5.8): TotalAllocationUnits, AvailableAllocationUnits
    (what the caller may use), SectorsPerAllocationUnit, BytesPerSector."""
    return _SIZE.pack(fs.total_units, fs.caller_available_units, fs.sectors_per_unit,
                      fs.bytes_per_sector)


def file_fs_device_information(device_type: int = FILE_DEVICE_DISK,
                               characteristics: int = FILE_DEVICE_IS_MOUNTED) -> bytes:
    """FileFsDeviceInformation (MS-FSCC 2.5.10): DeviceType, Characteristics."""
    return _DEVICE.pack(device_type, characteristics)


def file_fs_attribute_information(*, attributes: int = DEFAULT_FS_ATTRIBUTES,
                                  max_component_name_length: int = 255,
                                  fs_name: str = "NTFS") -> bytes:
    """FileFsAttributeInformation (MS-FSCC 2.5.1): FileSystemAttributes,
    MaximumComponentNameLength, FileSystemNameLength, FileSystemName."""
    raw = utf16(fs_name)
    return _ATTRIBUTE.pack(int(attributes), max_component_name_length, len(raw)) + raw


def file_fs_full_size_information(fs: "FsInfo") -> bytes:
    """FileFsFullSizeInformation (MS-FSCC 2.5.4): TotalAllocationUnits,
    CallerAvailableAllocationUnits, ActualAvailableAllocationUnits, SectorsPerAllocationUnit,
    BytesPerSector."""
    return _FULL_SIZE.pack(fs.total_units, fs.caller_available_units, fs.actual_available_units,
                           fs.sectors_per_unit, fs.bytes_per_sector)


def file_fs_object_id_information(object_id: bytes = bytes(16)) -> bytes:
    """FileFsObjectIdInformation (MS-FSCC 2.5.6): ObjectId (16 bytes), ExtendedInfo (48 zero
    bytes)."""
    if len(object_id) != 16:
        raise ValueError("object id must be 16 bytes")
    return _OBJECT_ID.pack(object_id, b"")


def file_fs_sector_size_information(bytes_per_sector: int = 512) -> bytes:
    """FileFsSectorSizeInformation (MS-FSCC 2.5.7): logical and physical sector sizes, Flags
    (aligned device and partition, as Samba reports), and the two alignment offsets (0)."""
    flags = SSINFO_FLAGS_ALIGNED_DEVICE | SSINFO_FLAGS_PARTITION_ALIGNED_ON_DEVICE
    b = bytes_per_sector
    return _SECTOR_SIZE.pack(b, b, b, b, flags, 0, 0)


def encode_fs_info(info_class: int, fs: "FsInfo", *, volume_creation_time: int = 0,
                   label: str = "", object_id: bytes = bytes(16),
                   attributes: int = DEFAULT_FS_ATTRIBUTES) -> bytes:
    """Encode one FileFs* class; others are STATUS_INVALID_INFO_CLASS."""
    c = FsInfoClass
    match info_class:
        case c.FileFsVolumeInformation:
            return file_fs_volume_information(creation_time=volume_creation_time,
                                              serial_number=fs.serial_number, label=label)
        case c.FileFsSizeInformation:
            return file_fs_size_information(fs)
        case c.FileFsDeviceInformation:
            return file_fs_device_information()
        case c.FileFsAttributeInformation:
            return file_fs_attribute_information(attributes=attributes,
                                                 max_component_name_length=fs.max_name_length,
                                                 fs_name=fs.fs_type)
        case c.FileFsFullSizeInformation:
            return file_fs_full_size_information(fs)
        case c.FileFsObjectIdInformation:
            return file_fs_object_id_information(object_id)
        case c.FileFsSectorSizeInformation:
            return file_fs_sector_size_information(fs.bytes_per_sector)
    raise SmbError(NtStatus.INVALID_INFO_CLASS, f"fs info class {info_class}")
