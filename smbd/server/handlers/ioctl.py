"""IOCTL (MS-SMB2 3.3.5.15): the FSCTLs an SMB3 server is expected to answer.

One dispatch table maps each FSCTL to a coroutine ``(req, ioctl, open) -> output bytes``;
the checks common to all (3.3.5.15: Flags, sizes against MaxTransactSize, the FileId rule)
run once in :func:`handle_ioctl`. Statuses are those Windows and Samba 4.17 answer (each
probed against Samba on loopback). Any file work runs on the I/O threads.

Sections: wire structures of the FSCTL payloads (MS-FSCC 2.3, MS-SMB2 2.2.31.x/2.2.32.x),
local network interfaces, then the handlers.
"""
from __future__ import annotations

import ctypes
import enum
import errno
import hashlib
import hmac
import ipaddress
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

from smbd.core.credits import required_charge
from smbd.status import NtStatus, ProtocolViolation, SmbError
from smbd.vfs.errors import translate_oserror
from smbd.wire.control import IOCTL_IS_FSCTL, IoctlRequest, ioctl_response
from smbd.wire.create import Access
from smbd.wire.negotiate import Dialect

from .negotiate import SMB2_0_2_MAX_IO, SUPPORTED, security_mode

if TYPE_CHECKING:
    from ..connection import Request
    from ..objects import Open

log = logging.getLogger("smbd.ioctl")

NO_FILE_ID = (0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


class Fsctl(enum.IntEnum):
    """FSCTL codes (MS-FSCC 2.3, MS-SMB2 2.2.31)."""

    DFS_GET_REFERRALS = 0x00060194
    DFS_GET_REFERRALS_EX = 0x000601B0
    PIPE_PEEK = 0x0011400C
    PIPE_WAIT = 0x00110018
    PIPE_TRANSCEIVE = 0x0011C017
    SRV_COPYCHUNK = 0x001440F2
    SRV_COPYCHUNK_WRITE = 0x001480F2
    SRV_REQUEST_RESUME_KEY = 0x00140078
    SRV_ENUMERATE_SNAPSHOTS = 0x00144064
    QUERY_NETWORK_INTERFACE_INFO = 0x001401FC
    VALIDATE_NEGOTIATE_INFO = 0x00140204
    GET_COMPRESSION = 0x0009003C
    SET_COMPRESSION = 0x0009C040
    GET_OBJECT_ID = 0x0009009C
    CREATE_OR_GET_OBJECT_ID = 0x000900C0
    GET_REPARSE_POINT = 0x000900A8
    SET_SPARSE = 0x000900C4
    QUERY_ALLOCATED_RANGES = 0x000940CF
    SET_ZERO_DATA = 0x000980C8
    # Samba's test-only codes (libcli/smb/smb_constants.h), for smbtorture's multichannel and
    # replay tests; answered only with the smbtorture_fsctl option.
    SMBTORTURE_FORCE_UNACKED_TIMEOUT = 0x83848003


# 3.3.5.15: these take no open; FileId must be all ones.
_NO_FILE_FSCTLS = {Fsctl.DFS_GET_REFERRALS, Fsctl.DFS_GET_REFERRALS_EX, Fsctl.QUERY_NETWORK_INTERFACE_INFO,
                   Fsctl.VALIDATE_NEGOTIATE_INFO, Fsctl.PIPE_WAIT, Fsctl.SMBTORTURE_FORCE_UNACKED_TIMEOUT}
# These change only the connection they arrive on and need no session or tree (Samba runs
# them before its session checks); smbd.server.connection asks here.
CONNECTION_FSCTLS = {Fsctl.SMBTORTURE_FORCE_UNACKED_TIMEOUT}

# ---- wire structures -----------------------------------------------------------------------

_VALIDATE_REQ = struct.Struct("<I16sHH")  # Capabilities, Guid, SecurityMode, DialectCount
_VALIDATE_RESP = struct.Struct("<I16sHH")  # Capabilities, Guid, SecurityMode, Dialect
_IFACE = struct.Struct("<IIIIQ")  # Next, IfIndex, Capability, Reserved, LinkSpeed
_SOCKADDR_STORAGE_SIZE = 128
_COPYCHUNK_HDR = struct.Struct("<24sII")  # SourceKey, ChunkCount, Reserved
_CHUNK = struct.Struct("<QQII")  # SourceOffset, TargetOffset, Length, Reserved
_COPYCHUNK_RESP = struct.Struct("<III")  # ChunksWritten, ChunkBytesWritten, TotalBytesWritten
_RANGE = struct.Struct("<qq")  # FILE_ALLOCATED_RANGE_BUFFER / FILE_ZERO_DATA_INFORMATION
_PIPE_WAIT = struct.Struct("<qIBB")  # Timeout, NameLength, TimeoutSpecified, Padding
_PIPE_PEEK = struct.Struct("<IIII")  # NamedPipeState, ReadDataAvailable, NumberOfMessages, MessageLength
_U16 = struct.Struct("<H")
_MAX_FILE_OFFSET = 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True, slots=True)
class ValidateNegotiateRequest:
    """VALIDATE_NEGOTIATE_INFO request, MS-SMB2 2.2.31.4.

    A short buffer raises ProtocolViolation: 3.3.5.15.12 ends the connection for it."""

    capabilities: int
    guid: bytes  # 16 bytes as on the wire (little-endian GUID)
    security_mode: int
    dialects: tuple[int, ...]

    @classmethod
    def parse(cls, data: bytes) -> "ValidateNegotiateRequest":
        if len(data) < _VALIDATE_REQ.size:
            raise ProtocolViolation("VALIDATE_NEGOTIATE_INFO request truncated")
        caps, guid, mode, count = _VALIDATE_REQ.unpack_from(data, 0)
        if count == 0 or len(data) < _VALIDATE_REQ.size + 2 * count:
            raise ProtocolViolation("VALIDATE_NEGOTIATE_INFO dialect list truncated")
        dialects = struct.unpack_from(f"<{count}H", data, _VALIDATE_REQ.size)
        return cls(caps, guid, mode, dialects)


def validate_negotiate_response(capabilities: int, server_guid: bytes, security_mode: int, dialect: int) -> bytes:
    """VALIDATE_NEGOTIATE_INFO response, MS-SMB2 2.2.32.6 (24 bytes)."""
    return _VALIDATE_RESP.pack(capabilities, server_guid, security_mode, dialect)


class InterfaceCapability(enum.IntFlag):
    RSS_CAPABLE = 0x1
    RDMA_CAPABLE = 0x2


@dataclass(frozen=True, slots=True)
class InterfaceAddress:
    """One address of one local interface, as NETWORK_INTERFACE_INFO reports it."""

    if_index: int
    capability: int
    link_speed: int  # bits per second
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    scope_id: int = 0


def _sockaddr_storage(addr: InterfaceAddress) -> bytes:
    """SOCKADDR_STORAGE (MS-SMB2 2.2.32.5.1): family little-endian, then sockaddr_in(6) in network order."""
    if addr.address.version == 4:
        # Family 0x0002, Port 0, IPv4Address, Reserved (8 bytes)
        body = struct.pack("<H", socket.AF_INET) + struct.pack(">H", 0) + addr.address.packed + b"\0" * 8
    else:
        # Family 0x0017, Port 0, FlowInfo 0, IPv6Address, ScopeId
        body = (struct.pack("<H", 0x17) + struct.pack(">HI", 0, 0) + addr.address.packed
                + struct.pack("<I", addr.scope_id))
    return body + b"\0" * (_SOCKADDR_STORAGE_SIZE - len(body))


def encode_interface_info(addrs: list[InterfaceAddress]) -> bytes:
    """A chain of NETWORK_INTERFACE_INFO entries (MS-SMB2 2.2.32.5), one per address."""
    out = bytearray()
    for i, a in enumerate(addrs):
        nxt = 0 if i == len(addrs) - 1 else _IFACE.size + _SOCKADDR_STORAGE_SIZE
        out += _IFACE.pack(nxt, a.if_index, a.capability, 0, a.link_speed) + _sockaddr_storage(a)
    return bytes(out)


INTERFACE_INFO_SIZE = _IFACE.size + _SOCKADDR_STORAGE_SIZE  # 152


# ---- local interfaces ------------------------------------------------------------------------

DEFAULT_LINK_SPEED = 10_000_000_000  # virtual links report no speed; say 10 Gb/s as Samba does
_INTERFACE_CACHE_SECONDS = 10.0
_iface_cache: tuple[float, tuple[str, ...], list[InterfaceAddress]] | None = None


def _rss_capable(name: str) -> bool:
    """Several receive queues: what ksmbd takes as RSS capability (a Linux stand-in for RSS).
    No library reports the queue count; sysfs does."""
    try:
        return sum(1 for q in os.listdir(f"/sys/class/net/{name}/queues") if q.startswith("rx-")) > 1
    except OSError:
        return False


def enumerate_interfaces(rdma_interfaces: tuple[str, ...]) -> list[InterfaceAddress]:
    """Every address of the interfaces that are up (psutil: their IPv4 and IPv6 addresses,
    state, flags and link speed), in interface-index order. Blocking: call off the loop.

    Link-local IPv6 is left out (a client cannot use it without our scope id; Samba skips it
    too), and so is loopback, as Windows does, unless nothing else has an address: a server
    reachable only on 127.0.0.1 (tests, the lab) still answers with the address it is on.
    """
    import psutil

    stats = psutil.net_if_stats()
    found: list[InterfaceAddress] = []
    loopback: list[InterfaceAddress] = []
    for name, addresses in psutil.net_if_addrs().items():
        st = stats.get(name)
        if st is None or not st.isup:
            continue
        try:
            index = socket.if_nametoindex(name)
        except OSError:
            continue  # gone since it was listed
        caps = InterfaceCapability(0)
        if _rss_capable(name):
            caps |= InterfaceCapability.RSS_CAPABLE
        if name in rdma_interfaces:
            caps |= InterfaceCapability.RDMA_CAPABLE
        speed = st.speed * 1_000_000 if st.speed > 0 else DEFAULT_LINK_SPEED  # psutil: Mb/s, 0 if unknown
        addrs: list[InterfaceAddress] = []
        for a in addresses:
            if a.family == socket.AF_INET:
                addrs.append(InterfaceAddress(index, int(caps), speed, ipaddress.IPv4Address(a.address)))
            elif a.family == socket.AF_INET6:
                addr6 = ipaddress.IPv6Address(a.address.split("%")[0])
                if not addr6.is_link_local:
                    addrs.append(InterfaceAddress(index, int(caps), speed, addr6))
        is_loopback = "loopback" in getattr(st, "flags", "") or (addrs and all(x.address.is_loopback for x in addrs))
        (loopback if is_loopback else found).extend(addrs)
    return sorted(found or loopback, key=lambda x: (x.if_index, x.address.version))


async def local_interfaces(req: "Request") -> list[InterfaceAddress]:
    """enumerate_interfaces, cached for a few seconds and run off the event loop."""
    global _iface_cache
    rdma = tuple(req.server.config.rdma_interfaces)
    now = time.monotonic()
    cached = _iface_cache
    if cached is not None and cached[1] == rdma and now - cached[0] < _INTERFACE_CACHE_SECONDS:
        return cached[2]
    addrs = await req.server.io(enumerate_interfaces, rdma)
    _iface_cache = (now, rdma, addrs)
    return addrs


# ---- the handler -----------------------------------------------------------------------------

FsctlHandler = Callable[["Request", IoctlRequest, "Open | None"], Awaitable[bytes]]


def max_transact_size(req: "Request") -> int:
    return req.server.config.max_io_size if req.conn.dialect >= Dialect.SMB_2_1 else SMB2_0_2_MAX_IO


async def handle_ioctl(req: "Request") -> bytes:
    """MS-SMB2 3.3.5.15."""
    io = IoctlRequest.parse(req.msg)
    if io.flags != IOCTL_IS_FSCTL:
        raise SmbError(NtStatus.NOT_SUPPORTED, "IOCTL that is not an FSCTL")
    limit = max_transact_size(req)
    if len(io.input) > limit or io.max_input_response > limit or io.max_output_response > limit:
        raise SmbError(NtStatus.INVALID_PARAMETER, "IOCTL sizes beyond MaxTransactSize")
    if req.conn.multi_credit and req.header.credit_charge < required_charge(
            max(len(io.input), io.max_input_response + io.max_output_response, 1)):
        raise SmbError(NtStatus.INVALID_PARAMETER, "CreditCharge too small")
    op = None
    if io.ctl_code in _NO_FILE_FSCTLS:
        if io.file_id != NO_FILE_ID:
            raise SmbError(NtStatus.INVALID_PARAMETER, "this FSCTL takes FileId 0xFFFF...")
        file_id = io.file_id
    else:
        op = req.open_for(io.file_id)
        file_id = op.file_id
    handler = _HANDLERS.get(io.ctl_code)
    if handler is None:
        # What Windows and Samba answer for an FSCTL the file system does not know.
        raise SmbError(NtStatus.INVALID_DEVICE_REQUEST, f"FSCTL 0x{io.ctl_code:08x}")
    output = await handler(req, io, op)
    if len(output) > io.max_output_response:
        raise SmbError(NtStatus.INTERNAL_ERROR, "FSCTL output larger than MaxOutputResponse")
    return ioctl_response(io.ctl_code, file_id, output)


def _file(op: "Open | None") -> "Open":
    """The open of a file FSCTL: not a pipe, not a directory."""
    if op is None or op.pipe is not None:
        raise SmbError(NtStatus.INVALID_DEVICE_REQUEST)
    if op.is_dir:
        raise SmbError(NtStatus.INVALID_PARAMETER, "FSCTL on a directory")
    return op


def _require_access(op: "Open", mask: int) -> None:
    if not op.granted_access & mask:
        raise SmbError(NtStatus.ACCESS_DENIED)


# ---- session and transport FSCTLs ------------------------------------------------------------


async def _validate_negotiate(req: "Request", io: IoctlRequest, _op) -> bytes:
    """3.3.5.15.12: repeat the NEGOTIATE values under signing; any mismatch ends the connection."""
    conn = req.conn
    if conn.dialect == Dialect.SMB_3_1_1:
        raise ProtocolViolation("VALIDATE_NEGOTIATE_INFO on a 3.1.1 connection")
    if io.max_output_response < _VALIDATE_RESP.size:
        raise ProtocolViolation("VALIDATE_NEGOTIATE_INFO with MaxOutputResponse below 24")
    vn = ValidateNegotiateRequest.parse(io.input)
    check_validate_negotiate(conn, vn)
    return validate_negotiate_response(conn.server_capabilities, conn.server.config.server_guid.bytes_le,
                                       security_mode(conn), conn.dialect)


def check_validate_negotiate(conn, vn: ValidateNegotiateRequest) -> None:
    """The comparisons of 3.3.5.15.12 against what NEGOTIATE recorded on *conn*."""
    client_dialects = getattr(conn, "client_dialects", None)  # recorded by NEGOTIATE when available
    if client_dialects is not None and tuple(client_dialects) != vn.dialects:
        raise ProtocolViolation("validate negotiate: dialect list differs")
    chosen = next((d for d in SUPPORTED if d in vn.dialects), None)
    if chosen is None or int(chosen) != conn.dialect:
        raise ProtocolViolation("validate negotiate: dialect differs")
    if conn.client_guid is not None and vn.guid != conn.client_guid.bytes_le:
        raise ProtocolViolation("validate negotiate: ClientGuid differs")
    if vn.security_mode != conn.client_security_mode:
        raise ProtocolViolation("validate negotiate: SecurityMode differs")
    if vn.capabilities != conn.client_capabilities:
        raise ProtocolViolation("validate negotiate: Capabilities differ")


async def _query_network_interfaces(req: "Request", io: IoctlRequest, _op) -> bytes:
    """3.3.5.15.11: as many NETWORK_INTERFACE_INFO entries as fit (BUFFER_OVERFLOW if not all)."""
    addrs = await local_interfaces(req)
    fit = io.max_output_response // INTERFACE_INFO_SIZE
    if addrs and fit == 0:
        raise SmbError(NtStatus.BUFFER_TOO_SMALL)
    if len(addrs) > fit:
        req.status = NtStatus.BUFFER_OVERFLOW
        addrs = addrs[:fit]
    return encode_interface_info(addrs)


async def _dfs_referrals(req: "Request", io: IoctlRequest, _op) -> bytes:
    # We have no DFS namespace: Samba answers NOT_FOUND ("no referral for this path").
    raise SmbError(NtStatus.NOT_FOUND, "no DFS")


async def _dfs_referrals_ex(req: "Request", io: IoctlRequest, _op) -> bytes:
    # Samba 4.17 implements only the non-EX form and answers FS_DRIVER_REQUIRED here.
    raise SmbError(NtStatus.FS_DRIVER_REQUIRED, "no DFS")


# ---- pipes -----------------------------------------------------------------------------------


async def _pipe_transceive(req: "Request", io: IoctlRequest, op) -> bytes:
    from ..ipc import transceive

    return transceive(req, op, io.input, io.max_output_response)


async def _pipe_peek(req: "Request", io: IoctlRequest, op) -> bytes:
    """FSCTL_PIPE_PEEK (MS-FSCC 2.3.46/47): report what is waiting, without data."""
    if op is None or op.pipe is None:
        raise SmbError(NtStatus.INVALID_DEVICE_REQUEST)
    if io.max_output_response < _PIPE_PEEK.size:
        raise SmbError(NtStatus.BUFFER_TOO_SMALL)
    pending = op.pipe.pending
    connected = 3  # FILE_PIPE_CONNECTED_STATE
    return _PIPE_PEEK.pack(connected, pending, 1 if pending else 0, pending)


async def _pipe_wait(req: "Request", io: IoctlRequest, _op) -> bytes:
    """FSCTL_PIPE_WAIT (MS-FSCC 2.3.49): our pipes are always available to connect."""
    from ..ipc import PIPES, pipe_name

    if len(io.input) < _PIPE_WAIT.size:
        raise SmbError(NtStatus.INVALID_PARAMETER, "FSCTL_PIPE_WAIT request truncated")
    _, length, _, _ = _PIPE_WAIT.unpack_from(io.input, 0)
    raw = io.input[_PIPE_WAIT.size:_PIPE_WAIT.size + length]
    if length % 2 or len(raw) != length:
        raise SmbError(NtStatus.INVALID_PARAMETER, "bad pipe name")
    name = raw.decode("utf-16-le", "replace")
    if pipe_name(name) not in PIPES:
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)
    return b""


# ---- server-side copy (3.3.5.15.6, 3.3.5.15.7) ------------------------------------------------

COPYCHUNK_MAX_CHUNKS = 256
COPYCHUNK_MAX_CHUNK_SIZE = 1 << 20
COPYCHUNK_MAX_TOTAL = 16 << 20
_RESUME_SECRET = os.urandom(32)  # a worker's resume keys are meaningless to any other process


def resume_key(op: "Open") -> bytes:
    """A 24-byte key naming *op*: its FileId and a MAC so that keys cannot be forged."""
    ident = struct.pack("<QQ", op.persistent_id, op.volatile_id)
    return ident + hmac.new(_RESUME_SECRET, ident, hashlib.sha256).digest()[:8]


def open_for_resume_key(req: "Request", key: bytes) -> "Open":
    ident, tag = key[:16], key[16:24]
    if not hmac.compare_digest(tag, hmac.new(_RESUME_SECRET, ident, hashlib.sha256).digest()[:8]):
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "unknown resume key")
    persistent, volatile = struct.unpack("<QQ", ident)
    op = req.server.opens.get(volatile)
    if op is None or op.closed or op.persistent_id != persistent or op.session is not req.session:
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "resume key of a closed file")
    return op


async def _request_resume_key(req: "Request", io: IoctlRequest, op) -> bytes:
    """SRV_REQUEST_RESUME_KEY response (2.2.32.3): key, ContextLength 0, and 4 bytes of
    padding, 32 bytes as Windows and Samba send."""
    op = _file(op)
    if io.max_output_response < 32:
        raise SmbError(NtStatus.INVALID_PARAMETER, "MaxOutputResponse below 32")
    return resume_key(op) + b"\0" * 8


@dataclass(frozen=True, slots=True)
class Chunk:
    """SRV_COPYCHUNK (2.2.31.1.1)."""

    source_offset: int
    target_offset: int
    length: int


def parse_copychunk(data: bytes) -> tuple[bytes, list[Chunk]]:
    """SRV_COPYCHUNK_COPY (2.2.31.1): source key and chunk list, lengths checked."""
    if len(data) < _COPYCHUNK_HDR.size:
        raise SmbError(NtStatus.INVALID_PARAMETER, "SRV_COPYCHUNK_COPY truncated")
    key, count, _ = _COPYCHUNK_HDR.unpack_from(data, 0)
    if count > COPYCHUNK_MAX_CHUNKS:
        raise _CopyLimits()
    if len(data) < _COPYCHUNK_HDR.size + count * _CHUNK.size:
        raise SmbError(NtStatus.INVALID_PARAMETER, "chunk list truncated")
    chunks = [Chunk(*_CHUNK.unpack_from(data, _COPYCHUNK_HDR.size + i * _CHUNK.size)[:3]) for i in range(count)]
    return key, chunks


class _CopyLimits(Exception):
    """A copy beyond the server's limits: answered with the limits (3.3.5.15.6)."""


def copychunk_limits_response() -> bytes:
    return _COPYCHUNK_RESP.pack(COPYCHUNK_MAX_CHUNKS, COPYCHUNK_MAX_CHUNK_SIZE, COPYCHUNK_MAX_TOTAL)


async def _copychunk(req: "Request", io: IoctlRequest, op) -> bytes:
    target = _file(op)
    if io.max_output_response < _COPYCHUNK_RESP.size:
        raise SmbError(NtStatus.INVALID_PARAMETER, "MaxOutputResponse below 12")
    try:
        key, chunks = parse_copychunk(io.input)
        if any(c.length == 0 or c.length > COPYCHUNK_MAX_CHUNK_SIZE for c in chunks) or \
                sum(c.length for c in chunks) > COPYCHUNK_MAX_TOTAL:
            raise _CopyLimits()
    except _CopyLimits:
        req.status = NtStatus.INVALID_PARAMETER  # with a body: the limits, as 3.3.5.15.6 says
        return copychunk_limits_response()
    source = _file(open_for_resume_key(req, key))
    _require_access(source, Access.FILE_READ_DATA)
    _require_access(target, Access.FILE_WRITE_DATA)
    if io.ctl_code == Fsctl.SRV_COPYCHUNK:
        _require_access(target, Access.FILE_READ_DATA)  # only _WRITE waives read access (2.2.31)
    if target.tree.read_only:
        raise SmbError(NtStatus.ACCESS_DENIED)
    for c in chunks:
        if c.source_offset + c.length > _MAX_FILE_OFFSET or c.target_offset + c.length > _MAX_FILE_OFFSET:
            raise SmbError(NtStatus.INVALID_PARAMETER, "chunk beyond the largest file offset")
        req.server.byte_locks.check_io(source, c.source_offset, c.length, write=False)
        req.server.byte_locks.check_io(target, c.target_offset, c.length, write=True)
    total = await req.server.io(copy_chunks, source.fd, target.fd, chunks)
    return _COPYCHUNK_RESP.pack(len(chunks), 0, total)


def copy_chunks(src_fd: int, dst_fd: int, chunks: list[Chunk]) -> int:
    """Copy each chunk in the kernel (copy_file_range; reflinks where the file system can),
    falling back to read/write. Reading past the source's end is an error (Samba:
    STATUS_INVALID_VIEW_SIZE), not a short copy."""
    total = 0
    with translate_oserror():
        size = os.fstat(src_fd).st_size
        for c in chunks:
            if c.source_offset + c.length > size:
                raise SmbError(NtStatus.INVALID_VIEW_SIZE, "chunk beyond the source's end")
            done = 0
            while done < c.length:
                try:
                    n = os.copy_file_range(src_fd, dst_fd, c.length - done,
                                           c.source_offset + done, c.target_offset + done)
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    n = _copy_by_hand(src_fd, dst_fd, c.length - done, c.source_offset + done,
                                      c.target_offset + done)
                if n == 0:
                    raise SmbError(NtStatus.INVALID_VIEW_SIZE, "source shrank during the copy")
                done += n
            total += c.length
    return total


def _copy_by_hand(src: int, dst: int, length: int, src_off: int, dst_off: int) -> int:
    data = os.pread(src, length, src_off)
    view = memoryview(data)
    written = 0
    while written < len(view):
        written += os.pwrite(dst, view[written:], dst_off + written)
    return len(data)


# ---- file-system FSCTLs ---------------------------------------------------------------------


async def _get_reparse_point(req: "Request", io: IoctlRequest, op) -> bytes:
    # Symbolic links are never exposed as reparse points; every file is a plain one.
    _file_or_dir(op)
    raise SmbError(NtStatus.NOT_A_REPARSE_POINT)


def _file_or_dir(op) -> "Open":
    if op is None or op.pipe is not None:
        raise SmbError(NtStatus.INVALID_DEVICE_REQUEST)
    return op


async def _object_id(req: "Request", io: IoctlRequest, op) -> bytes:
    """FILE_OBJECTID_BUFFER (MS-FSCC 2.1.3), derived from (device, inode) so that every file
    has a stable id without storing one; GET and CREATE_OR_GET agree."""
    op = _file_or_dir(op)
    if io.max_output_response < 64:
        raise SmbError(NtStatus.BUFFER_TOO_SMALL)
    with translate_oserror():
        st = await req.server.io(os.fstat, op.fd)
    return object_id_buffer(st.st_dev, st.st_ino)


def object_id_buffer(dev: int, ino: int) -> bytes:
    object_id = struct.pack("<QQ", ino, dev)
    volume_id = struct.pack("<QQ", dev, 0)
    return object_id + volume_id + object_id + b"\0" * 16  # ObjectId, BirthVolumeId, BirthObjectId, DomainId


async def _get_compression(req: "Request", io: IoctlRequest, op) -> bytes:
    _file_or_dir(op)
    if io.max_output_response < 2:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    return _U16.pack(0)  # COMPRESSION_FORMAT_NONE (MS-FSCC 2.3.12)


async def _set_compression(req: "Request", io: IoctlRequest, op) -> bytes:
    """Only COMPRESSION_FORMAT_NONE is accepted; DEFAULT/LZNT1 are NOT_SUPPORTED as in Samba."""
    _file_or_dir(op)
    if len(io.input) < 2:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    fmt = _U16.unpack_from(io.input, 0)[0]
    if fmt == 0:
        return b""
    if fmt in (1, 2):
        raise SmbError(NtStatus.NOT_SUPPORTED, "compression")
    raise SmbError(NtStatus.INVALID_PARAMETER, "unknown compression format")


async def _set_sparse(req: "Request", io: IoctlRequest, op) -> bytes:
    """FSCTL_SET_SPARSE (MS-FSA 2.1.5.10.33): accepted; POSIX files are sparse already."""
    op = _file_or_dir(op)
    _require_access(op, Access.FILE_WRITE_DATA | Access.FILE_WRITE_ATTRIBUTES | Access.FILE_APPEND_DATA)
    return b""


async def _query_allocated_ranges(req: "Request", io: IoctlRequest, op) -> bytes:
    """FSCTL_QUERY_ALLOCATED_RANGES (MS-FSA 2.1.5.10.22) via SEEK_DATA/SEEK_HOLE."""
    op = _file(op)
    _require_access(op, Access.FILE_READ_DATA)
    if len(io.input) < _RANGE.size:
        raise SmbError(NtStatus.INVALID_PARAMETER, "FILE_ALLOCATED_RANGE_BUFFER truncated")
    offset, length = _RANGE.unpack_from(io.input, 0)
    if offset < 0 or length < 0 or offset > _MAX_FILE_OFFSET - length:
        raise SmbError(NtStatus.INVALID_PARAMETER, "bad range")
    if io.max_output_response < _RANGE.size:
        raise SmbError(NtStatus.BUFFER_TOO_SMALL)
    ranges = await req.server.io(allocated_ranges, op.fd, offset, length)
    fit = io.max_output_response // _RANGE.size
    if len(ranges) > fit:
        req.status = NtStatus.BUFFER_OVERFLOW
        ranges = ranges[:fit]
    return b"".join(_RANGE.pack(o, n) for o, n in ranges)


def allocated_ranges(fd: int, offset: int, length: int) -> list[tuple[int, int]]:
    """Data extents within [offset, offset+length), clipped to the end of file."""
    with translate_oserror():
        end = min(offset + length, os.fstat(fd).st_size)
        out: list[tuple[int, int]] = []
        pos = offset
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break  # no data after pos
                if e.errno == errno.EINVAL:  # no SEEK_DATA here: report it all as allocated
                    return out + [(pos, end - pos)]
                raise
            if data >= end:
                break
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
            out.append((data, hole - data))
            pos = hole
        return out


async def _set_zero_data(req: "Request", io: IoctlRequest, op) -> bytes:
    """FSCTL_SET_ZERO_DATA (MS-FSA 2.1.5.10.37): zero [FileOffset, BeyondFinalZero) without
    changing the size: punch a hole, or write zeros where holes are not supported."""
    op = _file(op)
    _require_access(op, Access.FILE_WRITE_DATA)
    if op.tree.read_only:
        raise SmbError(NtStatus.ACCESS_DENIED)
    if len(io.input) < _RANGE.size:
        raise SmbError(NtStatus.INVALID_PARAMETER, "FILE_ZERO_DATA_INFORMATION truncated")
    start, beyond = _RANGE.unpack_from(io.input, 0)
    if start < 0 or beyond < 0 or start > beyond:
        raise SmbError(NtStatus.INVALID_PARAMETER, "bad zero range")
    if beyond > start:
        req.server.byte_locks.check_io(op, start, beyond - start, write=True)
        await req.server.io(zero_range, op.fd, start, beyond)
    return b""


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def zero_range(fd: int, start: int, beyond: int) -> None:
    with translate_oserror():
        end = min(beyond, os.fstat(fd).st_size)
        if end <= start:
            return
        if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, start, end - start) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err))
        zeros = bytes(min(end - start, 1 << 20))
        pos = start
        while pos < end:
            pos += os.pwrite(fd, zeros[:end - pos], pos)


async def _force_unacked_timeout(req: "Request", io: IoctlRequest, _op) -> bytes:
    """Test-only: from now on nothing this connection sends counts as acknowledged by the
    client's transport, so the next break on it fails over to another channel
    (smbd.server.break_delivery), as if the channel had died."""
    if not req.server.config.smbtorture_fsctl:
        raise SmbError(NtStatus.INVALID_DEVICE_REQUEST, "smbtorture FSCTLs are off (smbtorture_fsctl)")
    if io.input:
        raise SmbError(NtStatus.INVALID_PARAMETER, "FORCE_UNACKED_TIMEOUT takes no input")
    log.info("%s: smbtorture: this channel's transport no longer acknowledges anything", req.conn.transport.peer)
    req.conn.force_unacked = True
    return b""


_HANDLERS: dict[int, FsctlHandler] = {
    Fsctl.SMBTORTURE_FORCE_UNACKED_TIMEOUT: _force_unacked_timeout,
    Fsctl.VALIDATE_NEGOTIATE_INFO: _validate_negotiate,
    Fsctl.QUERY_NETWORK_INTERFACE_INFO: _query_network_interfaces,
    Fsctl.DFS_GET_REFERRALS: _dfs_referrals,
    Fsctl.DFS_GET_REFERRALS_EX: _dfs_referrals_ex,
    Fsctl.PIPE_TRANSCEIVE: _pipe_transceive,
    Fsctl.PIPE_PEEK: _pipe_peek,
    Fsctl.PIPE_WAIT: _pipe_wait,
    Fsctl.SRV_REQUEST_RESUME_KEY: _request_resume_key,
    Fsctl.SRV_COPYCHUNK: _copychunk,
    Fsctl.SRV_COPYCHUNK_WRITE: _copychunk,
    Fsctl.GET_REPARSE_POINT: _get_reparse_point,
    Fsctl.GET_OBJECT_ID: _object_id,
    Fsctl.CREATE_OR_GET_OBJECT_ID: _object_id,
    Fsctl.GET_COMPRESSION: _get_compression,
    Fsctl.SET_COMPRESSION: _set_compression,
    Fsctl.SET_SPARSE: _set_sparse,
    Fsctl.QUERY_ALLOCATED_RANGES: _query_allocated_ranges,
    Fsctl.SET_ZERO_DATA: _set_zero_data,
}
