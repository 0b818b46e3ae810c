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
* ``:`` starts a stream name (MS-FSCC 2.1.5.3), allowed in the last component only:
  ``file:name[:$DATA]``.  ``file::$DATA`` is the file's unnamed data stream, i.e. ``file``.  A
  stream name may hold any character but NUL, ``\\``, ``/`` and ``:`` (control characters and
  wildcards included, as NTFS allows and smbtorture smb2.streams.names2 checks), up to 255 UTF-16
  units; the only stream type is ``$DATA`` (any case).  ``file:`` , ``file:s:``, ``file:s:$FOO``
  and a third ``:`` are STATUS_OBJECT_NAME_INVALID.  :func:`parse_stream_name` returns the
  stream; :func:`parse_name` is for callers that handle no streams and answers a named stream
  with STATUS_OBJECT_NAME_NOT_FOUND, what Samba and ksmbd say on a share without streams.
* A component longer than 255 UTF-16 code units (MS-FSCC 2.1.5.2 limit of NTFS and of Linux
  filesystems) or one that is not valid Unicode is STATUS_OBJECT_NAME_INVALID.
"""
from __future__ import annotations

from dataclasses import dataclass

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
    _check_unicode_and_length(component, "name component")


def _check_unicode_and_length(name: str, what: str) -> None:
    """Valid Unicode (no lone surrogate) of at most 255 UTF-16 units (MS-FSCC 2.1.5.2)."""
    try:
        utf16_units = len(name.encode("utf-16-le")) // 2
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(f"{what} is not valid Unicode") from None
    if utf16_units > MAX_COMPONENT_UTF16_UNITS:
        raise _invalid(f"{what} longer than 255 UTF-16 units")


@dataclass(frozen=True, slots=True)
class StreamName:
    """A CREATE name split after MS-FSCC 2.1.5: the file's components and which data stream.

    ``stream`` is None for the unnamed data stream; ``default_spelled`` says the name said so
    with ``::$DATA`` (a directory has no unnamed data stream: FILE_IS_A_DIRECTORY)."""

    components: tuple[str, ...]
    stream: str | None = None
    default_spelled: bool = False


def check_stream_name(name: str) -> None:
    """STATUS_OBJECT_NAME_INVALID unless ``name`` is a valid named-stream name (MS-FSCC 2.1.5.3)."""
    if not name or "\0" in name or "\\" in name or "/" in name or ":" in name:
        raise _invalid("invalid stream name")
    if name in (".", ".."):
        raise _invalid("stream name '.' or '..'")  # also no file name a depot could hold
    _check_unicode_and_length(name, "stream name")


def split_stream(component: str) -> tuple[str, str | None, bool]:
    """``base[:stream[:type]]`` -> (base, stream or None, whether ``::$DATA`` was spelled)."""
    base, _, rest = component.partition(":")
    parts = rest.split(":")
    if not base or len(parts) > 2:
        raise _invalid("malformed stream name")
    stream = parts[0]
    stream_type = parts[1] if len(parts) == 2 else None
    if stream_type is not None and stream_type.upper() != "$DATA":
        raise _invalid("unknown stream type")
    if stream == "":
        if stream_type is None:
            raise _invalid("empty stream name")
        return base, None, True  # "name::$DATA" is the file's own data
    check_stream_name(stream)
    return base, stream, False


def parse_stream_name(name: str) -> StreamName:
    """Split an SMB2 path name into validated components and its stream (see the module docstring)."""
    if name == "":
        return StreamName(())
    if name[0] == "\\":
        raise SmbError(NtStatus.INVALID_PARAMETER, "name starts with a path separator")
    if name.endswith("\\"):
        name = name[:-1]
    raw = name.split("\\")
    out: list[str] = []
    last = len(raw) - 1
    stream: str | None = None
    spelled = False
    for i, component in enumerate(raw):
        if component == "..":
            if not out:
                raise SmbError(NtStatus.OBJECT_PATH_SYNTAX_BAD, "'..' above the share root")
            out.pop()
            continue
        if ":" in component:
            if i != last:
                raise _invalid("stream name in a directory component")
            component, stream, spelled = split_stream(component)
        check_component(component)
        out.append(component)
    return StreamName(tuple(out), stream, spelled)


def parse_name(name: str) -> tuple[str, ...]:
    """The components of a name that must not name a stream (a rename target, say)."""
    parsed = parse_stream_name(name)
    if parsed.stream is not None:
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "a named stream where a file is expected")
    return parsed.components
