"""A small NDR 2.0 marshaller (C706 chapter 14, little-endian, as MS-RPCE 2.2.5 uses it).

Only what the calls we serve need: primitive integers with natural alignment, unique and
full pointers with referent ids, conformant (varying) arrays and conformant varying
UTF-16 strings (the ``[string] wchar_t*`` of the IDL).

Deferred pointees (C706 14.3.12.3): a pointer embedded in a structure or array is written
as its referent id in place; the data it points to follows the whole enclosing construct.
:meth:`NdrWriter.pointer` implements that with a stack of "deferral scopes": a pointee is
written by :meth:`NdrWriter.pointee`, which opens a scope, runs the writer function, and
then writes every pointee deferred within it, depth first (what MIDL and Samba's
``NDR_SCALARS``/``NDR_BUFFERS`` passes produce). A pointer met at the top level of the stub
(an operation parameter, no scope open) has its pointee written at once.
:class:`NdrReader` mirrors the same rule for decoding.
"""
from __future__ import annotations

import struct
from typing import Any, Callable

from .errors import NdrError

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

FIRST_REFERENT_ID = 0x00020000  # what Windows and Samba start with; any non-zero value is valid
MAX_ELEMENTS = 1 << 20  # refuse absurd conformance counts before allocating anything


class _DeferredReferents:
    """Where embedded pointers' referents go (C706 14.3.12.3): after the structure that holds
    them, depth first. Writer and reader share this so both walk referents in one order."""

    _scopes: list

    def pointee(self, job: Callable) -> None:
        """Run one referent, then the referents it deferred (depth first)."""
        self._scopes.append([])
        try:
            job(self)
            # Each deferred referent runs in a scope of its own, so what *it* defers
            # follows it directly rather than joining this list.
            for inner in self._scopes[-1]:
                self.pointee(inner)
        finally:
            self._scopes.pop()


class NdrWriter(_DeferredReferents):
    """Builds one stub (request or response body). Alignment is relative to the stub start."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self._next_referent = FIRST_REFERENT_ID
        self._scopes: list[list[Callable[["NdrWriter"], None]]] = []

    def getvalue(self) -> bytes:
        if self._scopes:
            raise RuntimeError("NDR deferral scope left open")
        return bytes(self.buf)

    # ---- primitives -------------------------------------------------------------------

    def align(self, n: int) -> None:
        self.buf += b"\0" * (-len(self.buf) % n)

    def u8(self, v: int) -> None:
        self.buf += _U8.pack(v)

    def u16(self, v: int) -> None:
        self.align(2)
        self.buf += _U16.pack(v)

    def u32(self, v: int) -> None:
        self.align(4)
        self.buf += _U32.pack(v)

    def u64(self, v: int) -> None:
        self.align(8)
        self.buf += _U64.pack(v)

    def raw(self, data: bytes) -> None:
        self.buf += data

    # ---- pointers ---------------------------------------------------------------------

    def pointer(self, value: Any, write: Callable[["NdrWriter", Any], None]) -> None:
        """A unique pointer: 0 for None, else a fresh referent id and (now or deferred) the pointee."""
        if value is None:
            self.u32(0)
            return
        self.u32(self._next_referent)
        self._next_referent += 4
        job = lambda w: write(w, value)  # noqa: E731 - a closure is the natural deferral unit
        if self._scopes:
            self._scopes[-1].append(job)
        else:
            self.pointee(job)


    # ---- constructed types ------------------------------------------------------------

    def wstring(self, text: str) -> None:
        """Conformant varying string of UTF-16 units with a terminating NUL (C706 14.3.4.2)."""
        data = text.encode("utf-16-le") + b"\0\0"
        count = len(data) // 2
        self.u32(count)  # maximum count
        self.u32(0)  # offset
        self.u32(count)  # actual count
        self.raw(data)

    def conformant_array(self, items: list, write_item: Callable[["NdrWriter", Any], None]) -> None:
        """A conformant array: max count, then the elements (their embedded pointees deferred)."""
        self.u32(len(items))
        for item in items:
            write_item(self, item)


class NdrReader(_DeferredReferents):
    """Decodes one stub; every read is bounds-checked and raises :class:`NdrError`."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self._scopes: list[list[Callable[["NdrReader"], None]]] = []

    def _take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise NdrError(f"stub truncated: need {n} bytes at {self.pos}, have {len(self.data) - self.pos}")
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def align(self, n: int) -> None:
        self._take(-self.pos % n)

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        self.align(2)
        return _U16.unpack(self._take(2))[0]

    def u32(self) -> int:
        self.align(4)
        return _U32.unpack(self._take(4))[0]

    def u64(self) -> int:
        self.align(8)
        return _U64.unpack(self._take(8))[0]

    def raw(self, n: int) -> bytes:
        return bytes(self._take(n))

    def remaining(self) -> int:
        return len(self.data) - self.pos

    # ---- pointers ---------------------------------------------------------------------

    def pointer(self, read: Callable[["NdrReader"], Any], store: Callable[[Any], None]) -> bool:
        """A unique pointer. Returns False for NULL; else the pointee is read now (top level)
        or after the enclosing construct, and handed to *store*."""
        referent = self.u32()
        if referent == 0:
            return False
        job = lambda r: store(read(r))  # noqa: E731
        if self._scopes:
            self._scopes[-1].append(job)
        else:
            self.pointee(job)
        return True

    def top_pointer(self, read: Callable[["NdrReader"], Any]) -> Any:
        """A top-level unique pointer parameter: its value, or None for NULL."""
        box: list = []
        self.pointer(read, box.append)
        return box[0] if box else None


    # ---- constructed types ------------------------------------------------------------

    def wstring(self) -> str:
        """Conformant varying UTF-16 string; the terminating NUL (if any) is dropped."""
        maximum = self.u32()
        offset = self.u32()
        actual = self.u32()
        if offset != 0 or actual > maximum or maximum > MAX_ELEMENTS:
            raise NdrError("bad conformant varying string header")
        raw = bytes(self._take(2 * actual))
        try:
            text = raw.decode("utf-16-le")
        except UnicodeDecodeError as e:
            raise NdrError("string is not valid UTF-16") from e
        return text[:-1] if text.endswith("\0") else text

    def conformance(self) -> int:
        count = self.u32()
        if count > MAX_ELEMENTS:
            raise NdrError("array conformance too large")
        return count
