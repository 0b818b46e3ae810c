"""The srvsvc interface (MS-SRVS): the calls a client needs to list and describe shares.

Served: NetrShareEnum (opnum 15, MS-SRVS 3.1.4.8), NetrShareGetInfo (16, 3.1.4.10),
NetrShareCheck (20, 3.1.4.15), NetrServerGetInfo (21, 3.1.4.17), NetrRemoteTOD (28,
3.1.4.21) and NetrShareEnumSticky (36, 3.1.4.9). Levels 2 and 502 carry local paths and are refused to anonymous and guest
callers (MS-SRVS 3.1.4.8/3.1.4.10 reserve them to administrators). Every other opnum is answered with nca_s_op_rng_error.
Decoding and encoding follow the MS-SRVS IDL (appendix A) marshalled as NDR 2.0; the
data comes from a :class:`ServerIdentity` snapshot, so this module does no I/O.
"""
from __future__ import annotations

import datetime
import enum
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from .association import RpcFault
from .ndr import NdrReader, NdrWriter
from .errors import NdrError
from .pdu import FaultStatus, SyntaxId

SRVSVC_SYNTAX = SyntaxId(uuid.UUID("4b324fc8-1670-01d3-1278-5a47bf6ee188"), 3)  # v3.0


class Opnum(enum.IntEnum):
    NETR_SHARE_ENUM = 15
    NETR_SHARE_GET_INFO = 16
    NETR_SHARE_CHECK = 20
    NETR_SERVER_GET_INFO = 21
    NETR_REMOTE_TOD = 28
    NETR_SHARE_ENUM_STICKY = 36


# Levels the IDL unions know (MS-SRVS 2.2.3.x, appendix A). An arm we do not serve is still
# marshalled as a NULL pointer so that the client's decoder finds the status where it looks;
# a level outside the union has the empty [default] arm: the discriminant alone.
SHARE_ENUM_UNION_LEVELS = frozenset({0, 1, 2, 501, 502, 503})
SHARE_INFO_UNION_LEVELS = frozenset({0, 1, 2, 501, 502, 503, 1004, 1005, 1006, 1501})
SERVER_INFO_UNION_LEVELS = frozenset({
    100, 101, 102, 103, 502, 503, 599, 1005, 1107, 1010, 1016, 1017, 1018, 1501, 1502, 1503, 1506, 1510,
    1511, 1512, 1513, 1514, 1515, 1516, 1518, 1523, 1528, 1529, 1530, 1533, 1534, 1535, 1536, 1538, 1539,
    1540, 1541, 1542, 1543, 1544, 1545, 1546, 1547, 1548, 1549, 1550, 1552, 1553, 1554, 1555, 1556})


class WinError(enum.IntEnum):
    """Win32/NERR codes returned as NET_API_STATUS (MS-ERREF 2.2)."""

    SUCCESS = 0
    ACCESS_DENIED = 5
    INVALID_LEVEL = 124
    MORE_DATA = 234
    NERR_NET_NAME_NOT_FOUND = 2310
    NERR_DEVICE_NOT_SHARED = 2311


class ShareType(enum.IntFlag):
    """shi*_type values (MS-SRVS 2.2.2.4)."""

    DISKTREE = 0x00000000
    PRINTQ = 0x00000001
    DEVICE = 0x00000002
    IPC = 0x00000003
    CLUSTER_FS = 0x02000000
    TEMPORARY = 0x40000000
    SPECIAL = 0x80000000  # administrative shares: IPC$, C$, names ending in $


SV_TYPE_WORKSTATION = 0x00000001  # MS-SRVS 2.2.2.7 / MS-RAP
SV_TYPE_SERVER = 0x00000002
SV_TYPE_NT = 0x00001000
SV_TYPE_SERVER_NT = 0x00008000
PLATFORM_ID_NT = 500  # MS-SRVS 2.2.2.6
SHI1005_FLAGS_ENCRYPT_DATA = 0x00008000  # MS-SRVS 2.2.4.29


@dataclass(frozen=True, slots=True)
class ShareEntry:
    """What srvsvc tells about one share (the fields of SHARE_INFO_0/1/2/501/502/1005)."""

    name: str
    type: int
    remark: str = ""
    path: str = ""  # as Windows shows it, e.g. "C:\\srv\\data"
    flags: int = 0  # shi501_flags / shi1005_flags
    max_uses: int = 0xFFFFFFFF
    current_uses: int = 0


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """What srvsvc tells about the server (SERVER_INFO_100/101/102) and its shares."""

    name: str
    comment: str
    shares: tuple[ShareEntry, ...]
    version_major: int = 10
    version_minor: int = 0
    server_type: int = SV_TYPE_WORKSTATION | SV_TYPE_SERVER | SV_TYPE_NT | SV_TYPE_SERVER_NT

    def share(self, name: str) -> ShareEntry | None:
        low = name.lower()
        return next((s for s in self.shares if s.name.lower() == low), None)


# ---- requests (decoded from the input stub) --------------------------------------------


@dataclass(frozen=True, slots=True)
class ShareEnumRequest:
    """NetrShareEnum [in] parameters (MS-SRVS 3.1.4.8)."""

    server_name: str | None
    level: int
    prefered_maximum_length: int
    resume_handle: int | None

    @classmethod
    def decode(cls, stub: bytes) -> "ShareEnumRequest":
        r = NdrReader(stub)
        server = r.top_pointer(NdrReader.wstring)
        # InfoStruct is a [ref] pointer: its SHARE_ENUM_STRUCT is inline, its union arm
        # (a pointer to the container) deferred to the end of that structure.
        box: dict = {}
        r.pointee(lambda rr: _read_enum_struct(rr, box))
        maxlen = r.u32()
        resume = r.top_pointer(NdrReader.u32)
        return cls(server, box["level"], maxlen, resume)


def _read_enum_struct(r: NdrReader, box: dict) -> None:
    level = r.u32()
    if r.u32() != level:
        raise NdrError("union discriminant differs from Level")
    box["level"] = level
    if level in _ENUM_ITEM_READERS:
        r.pointer(lambda rr: _read_container(rr, level), lambda _: None)


def _read_container(r: NdrReader, level: int) -> None:
    """SHARE_INFO_x_CONTAINER: clients send an empty one, but whatever they send must parse."""
    r.u32()  # EntriesRead
    r.pointer(lambda rr: _read_info_array(rr, level), lambda _: None)


def _read_info_array(r: NdrReader, level: int) -> None:
    count = r.conformance()
    reader = _ENUM_ITEM_READERS[level]
    for _ in range(count):
        reader(r)


def _skip_string_ptr(r: NdrReader) -> None:
    r.pointer(NdrReader.wstring, lambda _: None)


def _read_info0(r: NdrReader) -> None:
    _skip_string_ptr(r)


def _read_info1(r: NdrReader) -> None:
    _skip_string_ptr(r)
    r.u32()
    _skip_string_ptr(r)


def _read_info2(r: NdrReader) -> None:
    _read_info1(r)
    r.u32(), r.u32(), r.u32()
    _skip_string_ptr(r)
    _skip_string_ptr(r)


def _read_info501(r: NdrReader) -> None:
    _read_info1(r)
    r.u32()


def _read_info502(r: NdrReader) -> None:
    _read_info2(r)
    r.u32()  # shi502_reserved: the descriptor's length
    r.pointer(lambda rr: rr.raw(rr.conformance()), lambda _: None)


_ENUM_ITEM_READERS: dict[int, Callable[[NdrReader], None]] = {
    0: _read_info0, 1: _read_info1, 2: _read_info2, 501: _read_info501, 502: _read_info502}


@dataclass(frozen=True, slots=True)
class ShareGetInfoRequest:
    """NetrShareGetInfo [in] parameters (MS-SRVS 3.1.4.10)."""

    server_name: str | None
    net_name: str
    level: int

    @classmethod
    def decode(cls, stub: bytes) -> "ShareGetInfoRequest":
        r = NdrReader(stub)
        server = r.top_pointer(NdrReader.wstring)
        name = r.wstring()  # [in, string] WCHAR* is a top-level [ref] pointer: no referent id
        return cls(server, name, r.u32())


@dataclass(frozen=True, slots=True)
class ShareCheckRequest:
    """NetrShareCheck [in] parameters (MS-SRVS 3.1.4.15)."""

    server_name: str | None
    device: str

    @classmethod
    def decode(cls, stub: bytes) -> "ShareCheckRequest":
        r = NdrReader(stub)
        server = r.top_pointer(NdrReader.wstring)
        return cls(server, r.wstring())


@dataclass(frozen=True, slots=True)
class ServerGetInfoRequest:
    """NetrServerGetInfo [in] parameters (MS-SRVS 3.1.4.17)."""

    server_name: str | None
    level: int

    @classmethod
    def decode(cls, stub: bytes) -> "ServerGetInfoRequest":
        r = NdrReader(stub)
        server = r.top_pointer(NdrReader.wstring)
        return cls(server, r.u32())


# ---- responses -------------------------------------------------------------------------


def _string_ptr(w: NdrWriter, text: str | None) -> None:
    w.pointer(text, NdrWriter.wstring)


def _write_info0(w: NdrWriter, s: ShareEntry) -> None:
    """SHARE_INFO_0 (MS-SRVS 2.2.4.22)."""
    _string_ptr(w, s.name)


def _write_info1(w: NdrWriter, s: ShareEntry) -> None:
    """SHARE_INFO_1 (MS-SRVS 2.2.4.23)."""
    _string_ptr(w, s.name)
    w.u32(s.type)
    _string_ptr(w, s.remark)


def _write_info2(w: NdrWriter, s: ShareEntry) -> None:
    """SHARE_INFO_2 (MS-SRVS 2.2.4.24): no password (share-level security is gone)."""
    _write_info1(w, s)
    w.u32(0)  # shi2_permissions: ignored with user-level security
    w.u32(s.max_uses)
    w.u32(s.current_uses)
    _string_ptr(w, s.path)
    _string_ptr(w, None)


def _write_info501(w: NdrWriter, s: ShareEntry) -> None:
    """SHARE_INFO_501 (MS-SRVS 2.2.4.25)."""
    _write_info1(w, s)
    w.u32(s.flags)


def _write_info502(w: NdrWriter, s: ShareEntry) -> None:
    """SHARE_INFO_502_I (MS-SRVS 2.2.4.26) without a security descriptor."""
    _write_info2(w, s)
    w.u32(0)
    w.pointer(None, lambda *_: None)


def _write_info1005(w: NdrWriter, s: ShareEntry) -> None:
    """SHARE_INFO_1005 (MS-SRVS 2.2.4.29)."""
    w.u32(s.flags)


SHARE_INFO_WRITERS: dict[int, Callable[[NdrWriter, ShareEntry], None]] = {
    0: _write_info0, 1: _write_info1, 2: _write_info2, 501: _write_info501, 502: _write_info502}
SHARE_GET_INFO_WRITERS = {**SHARE_INFO_WRITERS, 1005: _write_info1005}


def encode_share_enum(level: int, shares: tuple[ShareEntry, ...], resume_in: int | None) -> bytes:
    """NetrShareEnum [out] parameters: InfoStruct, TotalEntries, ResumeHandle, status.

    Everything from the resume index on is returned at once: share lists are short, so
    PreferedMaximumLength never forces paging and the resume handle comes back as 0.
    """
    w = NdrWriter()
    writer = SHARE_INFO_WRITERS.get(level)
    start = resume_in or 0
    entries = list(shares[start:]) if writer else []

    def enum_struct(ww: NdrWriter) -> None:
        ww.u32(level)
        ww.u32(level)  # union discriminant
        if writer is not None:
            ww.pointer(entries, lambda w3, items: _container(w3, items, writer))
        elif level in SHARE_ENUM_UNION_LEVELS:
            ww.u32(0)  # a container pointer we do not fill

    w.pointee(enum_struct)
    w.u32(len(shares))  # TotalEntries
    w.pointer(None if resume_in is None else 0, NdrWriter.u32)
    w.u32(WinError.SUCCESS if writer else WinError.INVALID_LEVEL)
    return w.getvalue()


def _container(w: NdrWriter, items: list[ShareEntry], writer) -> None:
    """SHARE_INFO_x_CONTAINER (MS-SRVS 2.2.4.32 ff.): EntriesRead and a pointer to the array."""
    w.u32(len(items))
    w.pointer(items, lambda w2, xs: w2.conformant_array(xs, writer))


def encode_share_get_info(level: int, share: ShareEntry | None) -> bytes:
    """NetrShareGetInfo [out]: the LPSHARE_INFO union, then the status."""
    w = NdrWriter()
    writer = SHARE_GET_INFO_WRITERS.get(level)
    w.u32(level)
    if writer is None:
        if level in SHARE_INFO_UNION_LEVELS:
            w.u32(0)
        w.u32(WinError.INVALID_LEVEL)
    elif share is None:
        w.pointer(None, writer)
        w.u32(WinError.NERR_NET_NAME_NOT_FOUND)
    else:
        w.pointer(share, writer)
        w.u32(WinError.SUCCESS)
    return w.getvalue()


def encode_share_check(shares: tuple[ShareEntry, ...], device: str) -> bytes:
    """NetrShareCheck [out]: the type of the share whose path is *device*, then the status."""
    w = NdrWriter()
    low = device.lower()
    share = next((s for s in shares if s.path.lower() == low), None)
    w.u32(share.type if share else 0)
    w.u32(WinError.SUCCESS if share else WinError.NERR_DEVICE_NOT_SHARED)
    return w.getvalue()


def _denied(level: int) -> bytes:
    """A ShareEnum/GetInfo answer of ERROR_ACCESS_DENIED: discriminant, NULL arm, status."""
    w = NdrWriter()
    w.u32(level)
    w.u32(0)
    w.u32(WinError.ACCESS_DENIED)
    return w.getvalue()


PRIVILEGED_SHARE_LEVELS = frozenset({2, 502})


def _server_info_100(w: NdrWriter, ident: ServerIdentity) -> None:
    """SERVER_INFO_100 (MS-SRVS 2.2.4.40)."""
    w.u32(PLATFORM_ID_NT)
    _string_ptr(w, ident.name)


def _server_info_101(w: NdrWriter, ident: ServerIdentity) -> None:
    """SERVER_INFO_101 (MS-SRVS 2.2.4.41)."""
    _server_info_100(w, ident)
    w.u32(ident.version_major)
    w.u32(ident.version_minor)
    w.u32(ident.server_type)
    _string_ptr(w, ident.comment)


def _server_info_102(w: NdrWriter, ident: ServerIdentity) -> None:
    """SERVER_INFO_102 (MS-SRVS 2.2.4.42), with Windows' defaults for the tuning fields."""
    _server_info_101(w, ident)
    w.u32(0xFFFFFFFF)  # sv102_users: unlimited
    w.u32(15)  # sv102_disc: auto-disconnect minutes
    w.u32(0)  # sv102_hidden
    w.u32(240)  # sv102_announce
    w.u32(3000)  # sv102_anndelta
    w.u32(0)  # sv102_licenses
    _string_ptr(w, "C:\\")  # sv102_userpath


SERVER_INFO_WRITERS = {100: _server_info_100, 101: _server_info_101, 102: _server_info_102}


def encode_server_get_info(level: int, ident: ServerIdentity) -> bytes:
    """NetrServerGetInfo [out]: the LPSERVER_INFO union, then the status."""
    w = NdrWriter()
    writer = SERVER_INFO_WRITERS.get(level)
    w.u32(level)
    if writer is None:
        if level in SERVER_INFO_UNION_LEVELS:
            w.u32(0)
        w.u32(WinError.INVALID_LEVEL)
    else:
        w.pointer(ident, writer)
        w.u32(WinError.SUCCESS)
    return w.getvalue()


def encode_remote_tod(now: float, monotonic_ms: int) -> bytes:
    """NetrRemoteTOD [out]: a pointer to TIME_OF_DAY_INFO (MS-SRVS 2.2.4.105), then the status.
    The time is given in UTC (tod_timezone 0)."""
    t = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)

    def tod(w: NdrWriter, _) -> None:
        for v in (int(now), monotonic_ms & 0xFFFFFFFF, t.hour, t.minute, t.second, t.microsecond // 10000,
                  0, 310, t.day, t.month, t.year, (t.weekday() + 1) % 7):  # weekday: Sunday is 0
            w.u32(v)

    w = NdrWriter()
    w.pointer(True, tod)
    w.u32(WinError.SUCCESS)
    return w.getvalue()


class SrvsvcInterface:
    """The srvsvc implementation bound to one pipe; *identity* is read at each call so that
    configuration changes show up without reopening the pipe."""

    syntax = SRVSVC_SYNTAX

    def __init__(self, identity: Callable[[], ServerIdentity], *, restricted: bool = False,
                 clock: Callable[[], float] = time.time):
        self._identity = identity
        self._clock = clock
        self.restricted = restricted  # an anonymous or guest caller: no paths

    def call(self, opnum: int, stub: bytes) -> bytes:
        if opnum == Opnum.NETR_SHARE_ENUM:
            req = ShareEnumRequest.decode(stub)
            if self.restricted and req.level in PRIVILEGED_SHARE_LEVELS:
                return _denied_enum(req)
            return encode_share_enum(req.level, self._identity().shares, req.resume_handle)
        if opnum == Opnum.NETR_SHARE_ENUM_STICKY:
            # Sticky shares are the configured (persistent) ones: all but the built-in IPC$.
            req = ShareEnumRequest.decode(stub)
            if self.restricted and req.level in PRIVILEGED_SHARE_LEVELS:
                return _denied_enum(req)
            sticky = tuple(s for s in self._identity().shares if s.type & 0xFF != ShareType.IPC)
            return encode_share_enum(req.level, sticky, req.resume_handle)
        if opnum == Opnum.NETR_SHARE_GET_INFO:
            req2 = ShareGetInfoRequest.decode(stub)
            if self.restricted and req2.level in PRIVILEGED_SHARE_LEVELS:
                return _denied(req2.level)
            return encode_share_get_info(req2.level, self._identity().share(req2.net_name))
        if opnum == Opnum.NETR_SHARE_CHECK:
            req4 = ShareCheckRequest.decode(stub)
            return encode_share_check(self._identity().shares, req4.device)
        if opnum == Opnum.NETR_REMOTE_TOD:
            ServerGetInfoRequest.decode(stub + b"\0" * 4)  # just the ServerName; checks the NDR
            return encode_remote_tod(self._clock(), time.monotonic_ns() // 1_000_000)
        if opnum == Opnum.NETR_SERVER_GET_INFO:
            req3 = ServerGetInfoRequest.decode(stub)
            return encode_server_get_info(req3.level, self._identity())
        raise RpcFault(FaultStatus.OP_RNG_ERROR, f"srvsvc opnum {opnum} not implemented")


def _denied_enum(req: ShareEnumRequest) -> bytes:
    """NetrShareEnum refused: empty InfoStruct, no entries, ERROR_ACCESS_DENIED."""
    w = NdrWriter()
    w.u32(req.level)
    w.u32(req.level)
    w.u32(0)  # no container
    w.u32(0)  # TotalEntries
    w.pointer(None if req.resume_handle is None else 0, NdrWriter.u32)
    w.u32(WinError.ACCESS_DENIED)
    return w.getvalue()
