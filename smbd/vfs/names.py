"""Validation of the path names clients send in SMB2 CREATE / SET_INFO rename (pure, no I/O).

Rules (MS-FSCC 2.1.5 "Pathname", MS-SMB2 3.3.5.9, and what Samba and ksmbd answer):

* The name is relative to the share root and uses ``\\`` as separator; the empty name is the
  root itself.
* A leading ``\\`` is STATUS_INVALID_PARAMETER: MS-SMB2 3.3.5.9 ("Path Name Validation") makes
  the server fail a create whose name starts with a path separator that way, and ksmbd
  (``smb2_get_name`` -> -EINVAL) does the same.
* One trailing ``\\`` is dropped (a directory may be named so); an empty component elsewhere
  (``a\\\\b``) is STATUS_OBJECT_NAME_INVALID.
* ``..`` removes the previous component, as Samba's ``check_path_syntax`` does; a ``..`` that
  would climb above the share root is STATUS_OBJECT_PATH_SYNTAX_BAD (Samba's answer).  The
  result therefore never contains ``..``: resolution below never has to interpret it.
* ``.`` as a component is STATUS_OBJECT_NAME_INVALID (smbtorture's symlink-traversal test expects
  that for ``get .``).
* Characters below 0x20 and ``" * < > ? | /`` are STATUS_OBJECT_NAME_INVALID (MS-FSCC 2.1.5.2;
  wildcards are invalid in a name to open).
* ``:`` starts a stream name (MS-FSCC 2.1.5.3), allowed in the last component only.  Streams are
  not supported: ``file::$DATA`` (the default data stream) means ``file``; any other well-formed
  stream name is STATUS_OBJECT_NAME_NOT_FOUND, which is what Samba and ksmbd return on a share
  without stream support; a malformed one is STATUS_OBJECT_NAME_INVALID.
* A component longer than 255 UTF-16 code units (MS-FSCC 2.1.5.2 limit of NTFS and of Linux
  filesystems) or one that is not valid Unicode is STATUS_OBJECT_NAME_INVALID.
"""
from __future__ import annotations

from smbd.status import NtStatus, SmbError

MAX_COMPONENT_UTF16_UNITS = 255

_INVALID_CHARS = frozenset('"*<>?|/') | frozenset(chr(c) for c in range(0x20))


def _invalid(message: str) -> SmbError:
    return SmbError(NtStatus.OBJECT_NAME_INVALID, message)


def check_component(component: str) -> None:
    """Raise STATUS_OBJECT_NAME_INVALID unless ``component`` is one valid file name.

    Used for every component of a parsed name and again, as a defence in depth, by the path
    resolver before it hands a name to the kernel.
    """
    if not component or component in (".", ".."):
        raise _invalid("empty, '.' or '..' component")
    if not _INVALID_CHARS.isdisjoint(component) or ":" in component or "\\" in component:
        raise _invalid("invalid character in name")
    try:
        utf16_units = len(component.encode("utf-16-le")) // 2
        component.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid("name is not valid Unicode") from None
    if utf16_units > MAX_COMPONENT_UTF16_UNITS:
        raise _invalid("name component longer than 255 UTF-16 units")


def _strip_stream(component: str) -> str:
    """The base name of a last component that may carry ``:stream[:type]``."""
    base, _, stream = component.partition(":")
    parts = stream.split(":")
    if not base or len(parts) > 2:
        raise _invalid("malformed stream name")
    stream_name = parts[0]
    stream_type = parts[1] if len(parts) == 2 else None
    if stream_type is not None and stream_type.upper() != "$DATA":
        raise _invalid("unknown stream type")
    if stream_name == "":
        if stream_type is None:
            raise _invalid("empty stream name")
        return base  # "name::$DATA" is the file's own data
    if "/" in stream_name or any(ord(c) < 0x20 for c in stream_name):
        raise _invalid("invalid character in stream name")
    check_component(base)
    raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "named streams are not supported")


def parse_name(name: str) -> tuple[str, ...]:
    """Split an SMB2 path name into validated components (see the module docstring)."""
    if name == "":
        return ()
    if name[0] == "\\":
        raise SmbError(NtStatus.INVALID_PARAMETER, "name starts with a path separator")
    if name.endswith("\\"):
        name = name[:-1]
    raw = name.split("\\")
    out: list[str] = []
    last = len(raw) - 1
    for i, component in enumerate(raw):
        if component == "..":
            if not out:
                raise SmbError(NtStatus.OBJECT_PATH_SYNTAX_BAD, "'..' above the share root")
            out.pop()
            continue
        if ":" in component:
            if i != last:
                raise _invalid("stream name in a directory component")
            component = _strip_stream(component)
        check_component(component)
        out.append(component)
    return tuple(out)
