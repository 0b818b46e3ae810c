"""The VFS: what SMB handlers call to reach files (POSIX backend in :mod:`.posix`)."""
from .errors import status_from_oserror, translate_oserror
from .names import parse_name
from .posix import OpenedFile, Share
from .types import DirEntry, FileInfo, FsInfo

__all__ = [
    "DirEntry", "FileInfo", "FsInfo", "OpenedFile", "Share", "parse_name",
    "status_from_oserror", "translate_oserror",
]
