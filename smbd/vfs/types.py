"""Plain data the VFS hands to the protocol layer: no I/O here.

Times are FILETIMEs (MS-DTYP 2.3.3) so the encoders of :mod:`smbd.fscc` can use them as they are;
attributes are FILE_ATTRIBUTE_* bits (MS-FSCC 2.6).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What QUERY_INFO and QUERY_DIRECTORY report about one file or directory.

    ``file_id`` is the inode number (stable for the life of the file, MS-FSCC 2.4.22
    IndexNumber); ``volume_id`` is ``st_dev`` (MS-FSCC 2.4.20 VolumeSerialNumber).  For a
    directory ``size`` and ``allocation_size`` are 0, as Windows and Samba report them.
    """

    file_id: int
    volume_id: int
    is_dir: bool
    size: int
    allocation_size: int
    nlink: int
    creation_time: int
    last_access_time: int
    last_write_time: int
    change_time: int
    attributes: int
    mode: int = 0
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One directory entry: its on-disk name and what it describes."""

    name: str
    info: FileInfo


@dataclass(frozen=True, slots=True)
class FsInfo:
    """Volume numbers for the FileFs* classes (MS-FSCC 2.5), in allocation units.

    ``caller_available_units`` is what an unprivileged user may still use (statvfs f_bavail);
    ``actual_available_units`` counts the root reserve too (f_bfree).
    """

    total_units: int
    caller_available_units: int
    actual_available_units: int
    sectors_per_unit: int
    bytes_per_sector: int
    serial_number: int
    max_name_length: int
    fs_type: str
