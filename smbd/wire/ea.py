"""Extended attributes on the wire: FILE_FULL_EA_INFORMATION (MS-FSCC 2.4.15) lists, as
carried by the ExtA create context (MS-SMB2 2.2.13.2.1), SET_INFO and QUERY_INFO of
FileFullEaInformation, and FILE_GET_EA_INFORMATION (MS-FSCC 2.4.15.1) query lists.

Malformed lists raise :class:`EaListError`, a ValueError subclass carrying the NTSTATUS a
server answers with (INVALID_PARAMETER for broken framing, MS-FSCC's
STATUS_INVALID_EA_NAME for a bad name).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from smbd.status import NtStatus

_FULL_EA = struct.Struct("<IBBH")  # NextEntryOffset, Flags, EaNameLength, EaValueLength
_GET_EA = struct.Struct("<IB")  # NextEntryOffset, EaNameLength
FILE_NEED_EA = 0x80
# MS-FSCC 2.4.15: EaName characters that are not allowed (besides control characters).
_BAD_NAME_CHARS = set(b'"*+,/:;<=>?[\\]|')


class EaListError(ValueError):
    """A malformed EA list; ``status`` is what to answer."""

    def __init__(self, message: str, status: int = NtStatus.INVALID_PARAMETER):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class FullEa:
    """One FILE_FULL_EA_INFORMATION entry, MS-FSCC 2.4.15."""

    name: str
    value: bytes
    flags: int = 0


def _check_name(raw: bytes) -> str:
    if not raw or any(b < 0x20 or b > 0x7E or b in _BAD_NAME_CHARS for b in raw):
        raise EaListError(f"bad EA name {raw!r}", NtStatus.INVALID_EA_NAME)
    return raw.decode("ascii")


def _walk(data: bytes | memoryview, fixed: struct.Struct):
    """Yield (offset, entry fields) along a NextEntryOffset chain, bounds checked."""
    data = memoryview(data)
    pos = 0
    while True:
        if pos + fixed.size > len(data):
            raise EaListError("EA entry truncated")
        fields = fixed.unpack_from(data, pos)
        yield pos, fields
        nxt = fields[0]
        if nxt == 0:
            return
        if nxt % 4 or nxt < fixed.size:
            raise EaListError(f"bad NextEntryOffset {nxt}")
        pos += nxt


def parse_full_ea_list(data: bytes | memoryview) -> tuple[FullEa, ...]:
    """A FILE_FULL_EA_INFORMATION chain (MS-FSCC 2.4.15)."""
    view = memoryview(data)
    out = []
    for pos, (nxt, flags, name_len, value_len) in _walk(view, _FULL_EA):
        start = pos + _FULL_EA.size
        end = start + name_len + 1 + value_len
        if end > len(view) or (nxt and pos + nxt < end):
            raise EaListError("EA entry overruns its buffer")
        if view[start + name_len] != 0:
            raise EaListError("EA name not NUL-terminated")
        if flags & ~FILE_NEED_EA:
            raise EaListError("bad EA flags")
        name = _check_name(bytes(view[start:start + name_len]))
        out.append(FullEa(name, bytes(view[start + name_len + 1:end]), flags))
    return tuple(out)


def parse_get_ea_list(data: bytes | memoryview) -> tuple[str, ...]:
    """A FILE_GET_EA_INFORMATION chain (MS-FSCC 2.4.15.1): the names a query asks for."""
    view = memoryview(data)
    out = []
    for pos, (nxt, name_len) in _walk(view, _GET_EA):
        start = pos + _GET_EA.size
        if start + name_len + 1 > len(view) or (nxt and pos + nxt < start + name_len + 1):
            raise EaListError("EA name overruns its buffer")
        out.append(_check_name(bytes(view[start:start + name_len])))
    return tuple(out)


def encode_full_ea(ea: FullEa, *, last: bool) -> bytes:
    """One entry; all but the last are padded so the next starts 4-byte aligned."""
    name = ea.name.encode("ascii")
    body = name + b"\0" + ea.value
    size = _FULL_EA.size + len(body)
    padded = size if last else (size + 3) & ~3
    return _FULL_EA.pack(0 if last else padded, ea.flags, len(name), len(ea.value)) + body + b"\0" * (padded - size)


def encode_full_ea_list(eas: list[FullEa] | tuple[FullEa, ...]) -> bytes:
    return b"".join(encode_full_ea(ea, last=i == len(eas) - 1) for i, ea in enumerate(eas))


def ea_size(eas: list[FullEa] | tuple[FullEa, ...]) -> int:
    """FileEaInformation.EaSize (MS-FSCC 2.4.13): the bytes the full list takes, each entry
    4-byte aligned (what Samba and Windows report)."""
    return sum((_FULL_EA.size + len(ea.name) + 1 + len(ea.value) + 3) & ~3 for ea in eas)
