"""MS-FSCC information classes: pure encoders/decoders, no I/O."""
from .dirinfo import encode_dir_entries, encode_dir_entry
from .fileinfo import OpenContext, encode_file_info
from .fsinfo import encode_fs_info
from .setinfo import decode_set_info
from .time import filetime_to_unix_ns, unix_ns_to_filetime
from .wildcard import match as wildcard_match

__all__ = [
    "OpenContext", "decode_set_info", "encode_dir_entries",
    "encode_dir_entry", "encode_file_info", "encode_fs_info", "filetime_to_unix_ns",
    "unix_ns_to_filetime", "wildcard_match",
]
