"""SMB2 IOCTL handler (smbd.server.handlers.ioctl): MS-SMB2 3.3.5.15 and its FSCTLs.

The handler runs for real against temp files through a minimal connection/server double;
requests are built with impacket's structures where it has them (an independent encoder),
and the peer test compares our statuses with Samba 4.17's for the same FSCTLs.
"""
from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
import uuid

import pytest

from smbd.rpc.pdu import BindAckPdu, ContextResult
from smbd.server import ipc
from smbd.server.config import ServerConfig, ShareConfig
from smbd.server.connection import Request
from smbd.server.handlers import ioctl as ioctl_mod
from smbd.server.handlers.ioctl import (INTERFACE_INFO_SIZE, Fsctl, InterfaceAddress, ValidateNegotiateRequest,
                                        check_validate_negotiate, encode_interface_info, handle_ioctl)
from smbd.server.locks import ByteRangeLocks
from smbd.server.objects import Open, Session, TreeConnect
from smbd.status import NtStatus, ProtocolViolation, SmbError
from smbd.wire.header import Header

smb3structs = pytest.importorskip("impacket.smb3structs")

ALL_ONES = (0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF)
_HDR = struct.Struct("<4sHHIHHIIQIIQ16s")
_IOCTL = struct.Struct("<HHI16sIIIIIIII")
CLIENT_GUID = uuid.UUID("9feffe12-340b-4cf3-9990-4fadc938f4d7")
FULL = 0x001F01FF


class FakeServer:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.opens: dict[int, Open] = {}
        self.byte_locks = ByteRangeLocks()
        self._ids = iter(range(1, 1 << 30))

    async def io(self, fn, *args):
        return fn(*args)

    def new_volatile_id(self) -> int:
        return next(self._ids)

    def persistent_ids(self) -> int:
        return next(self._ids)

    def register_open(self, op: Open) -> None:
        self.opens[op.volatile_id] = op


class FakeConn:
    def __init__(self, server, dialect=0x0302):
        self.server = server
        self.dialect = dialect
        self.client_guid = CLIENT_GUID
        self.client_capabilities = 0x7F
        self.client_security_mode = 1
        self.server_capabilities = 0x48
        self.multi_credit = True


@pytest.fixture
def env(tmp_path):
    share = ShareConfig("x", str(tmp_path))
    server = FakeServer(ServerConfig((share,), (), rdma_interfaces=("lo",)))
    conn = FakeConn(server)
    session = Session(1, conn.dialect)
    tree = TreeConnect(1, session, share, None, FULL)
    ipc_tree = TreeConnect(2, session, None, None, FULL)

    class Env:
        pass

    e = Env()
    e.server, e.conn, e.session, e.tree, e.ipc_tree, e.dir = server, conn, session, tree, ipc_tree, tmp_path
    fds = []

    def open_file(name: str, data: bytes = b"", access: int = FULL, size: int | None = None) -> Open:
        path = tmp_path / name
        if not path.exists():
            path.write_bytes(data)
        if size is not None:
            os.truncate(path, size)
        fd = os.open(path, os.O_RDWR)
        fds.append(fd)
        op = Open(server.persistent_ids(), server.new_volatile_id(), session, tree, access, 7, (name,), fd, False, 0)
        op.file_key = os.fstat(fd).st_ino
        server.register_open(op)
        return op

    e.open_file = open_file
    yield e
    for fd in fds:
        os.close(fd)


def ioctl_message(code: int, file_id=ALL_ONES, data: bytes = b"", max_out: int = 65536, flags: int = 1,
                  max_in: int = 0, credit_charge: int = 1) -> bytes:
    hdr = _HDR.pack(b"\xfeSMB", 64, credit_charge, 0, 0x0B, 1, 0, 0, 5, 0, 1, 1, b"\0" * 16)
    body = _IOCTL.pack(57, 0, code, struct.pack("<QQ", *file_id), 120 if data else 0, len(data), max_in,
                       0, 0, max_out, flags, 0)
    return hdr + body + (data or b"\0")


def run(env, tree, msg: bytes) -> tuple[int, bytes]:
    """Run handle_ioctl as the connection would: (status, output buffer) or SmbError raised."""
    view = memoryview(msg)
    req = Request(env.conn, Header.parse(view), view, session=env.session, tree=tree)
    resp = asyncio.run(handle_ioctl(req))
    out_off, out_len = struct.unpack_from("<II", resp, 32)
    return req.status, resp[out_off - 64:out_off - 64 + out_len]


def status_of(env, tree, msg: bytes) -> int:
    try:
        return run(env, tree, msg)[0]
    except SmbError as e:
        return e.status


# ---- generic checks (3.3.5.15) --------------------------------------------------------------


def test_generic_checks(env):
    op = env.open_file("a", b"x")
    assert status_of(env, env.tree, ioctl_message(Fsctl.GET_COMPRESSION, op.file_id, flags=0)) == \
        NtStatus.NOT_SUPPORTED
    assert status_of(env, env.tree, ioctl_message(Fsctl.GET_COMPRESSION, op.file_id, max_out=9 << 20,
                                                  credit_charge=200)) == NtStatus.INVALID_PARAMETER
    assert status_of(env, env.tree, ioctl_message(Fsctl.GET_COMPRESSION, op.file_id, max_out=200000)) == \
        NtStatus.INVALID_PARAMETER  # CreditCharge 1 does not cover 200000 bytes
    assert status_of(env, env.tree, ioctl_message(Fsctl.QUERY_NETWORK_INTERFACE_INFO, op.file_id)) == \
        NtStatus.INVALID_PARAMETER  # needs FileId 0xFFFF...
    assert status_of(env, env.tree, ioctl_message(0x00090284, op.file_id)) == NtStatus.INVALID_DEVICE_REQUEST
    assert status_of(env, env.tree, ioctl_message(Fsctl.GET_COMPRESSION, (77, 77))) == NtStatus.FILE_CLOSED
    assert status_of(env, env.ipc_tree, ioctl_message(Fsctl.DFS_GET_REFERRALS, data=b"\x04\0a\0\0\0")) == \
        NtStatus.NOT_FOUND


# ---- VALIDATE_NEGOTIATE_INFO (3.3.5.15.12) -----------------------------------------------------


def _validate_input(conn, dialects=(0x0202, 0x0210, 0x0300, 0x0302), guid=CLIENT_GUID, mode=None, caps=None):
    vn = smb3structs.VALIDATE_NEGOTIATE_INFO()
    vn["Capabilities"] = conn.client_capabilities if caps is None else caps
    vn["Guid"] = guid.bytes_le
    vn["SecurityMode"] = conn.client_security_mode if mode is None else mode
    vn["Dialects"] = list(dialects)
    return vn.getData()


def test_validate_negotiate_answers_what_was_negotiated(env):
    status, out = run(env, env.ipc_tree, ioctl_message(Fsctl.VALIDATE_NEGOTIATE_INFO,
                                                       data=_validate_input(env.conn), max_out=24))
    resp = smb3structs.VALIDATE_NEGOTIATE_INFO_RESPONSE(out)
    assert status == NtStatus.SUCCESS
    assert resp["Capabilities"] == env.conn.server_capabilities
    assert uuid.UUID(bytes_le=resp["Guid"]) == env.server.config.server_guid
    assert resp["SecurityMode"] == 1  # signing enabled, not required
    assert resp["Dialect"] == 0x0302


@pytest.mark.parametrize("change", ["guid", "mode", "caps", "dialects", "no_common"])
def test_validate_negotiate_mismatch_drops_connection(env, change):
    kwargs = {"guid": dict(guid=uuid.uuid4()), "mode": dict(mode=3), "caps": dict(caps=0x1),
              "dialects": dict(dialects=(0x0202, 0x0300)), "no_common": dict(dialects=(0x0999,))}[change]
    with pytest.raises(ProtocolViolation):
        run(env, env.ipc_tree, ioctl_message(Fsctl.VALIDATE_NEGOTIATE_INFO,
                                             data=_validate_input(env.conn, **kwargs), max_out=24))


def test_validate_negotiate_recorded_dialect_list_must_match(env):
    env.conn.dialect = 0x0300
    env.conn.client_dialects = (0x0300, 0x0202)
    # Same dialects, other order: "not equal to Connection.ClientDialects".
    vn = ValidateNegotiateRequest.parse(_validate_input(env.conn, dialects=(0x0202, 0x0300)))
    with pytest.raises(ProtocolViolation):
        check_validate_negotiate(env.conn, vn)
    check_validate_negotiate(env.conn, ValidateNegotiateRequest.parse(
        _validate_input(env.conn, dialects=env.conn.client_dialects)))


def test_validate_negotiate_refused_on_311_and_bad_sizes(env):
    good = _validate_input(env.conn)
    with pytest.raises(ProtocolViolation):
        run(env, env.ipc_tree, ioctl_message(Fsctl.VALIDATE_NEGOTIATE_INFO, data=good, max_out=23))
    for cut in (0, 10, 24, len(good) - 1):
        with pytest.raises(ProtocolViolation):
            ValidateNegotiateRequest.parse(good[:cut])
    env.conn.dialect = 0x0311
    with pytest.raises(ProtocolViolation):
        run(env, env.ipc_tree, ioctl_message(Fsctl.VALIDATE_NEGOTIATE_INFO, data=good, max_out=24))


# ---- QUERY_NETWORK_INTERFACE_INFO (3.3.5.15.11) --------------------------------------------------


def test_interface_info_encoding_parsed_by_impacket():
    addrs = [InterfaceAddress(2, 0x3, 25_000_000_000, ipaddress.IPv4Address("10.77.0.1")),
             InterfaceAddress(2, 0x1, 1_000_000_000, ipaddress.IPv6Address("fd00::2"), 0)]
    data = encode_interface_info(addrs)
    assert len(data) == 2 * INTERFACE_INFO_SIZE
    first = smb3structs.NETWORK_INTERFACE_INFO(data)
    assert (first["Next"], first["IfIndex"], first["Capability"], first["LinkSpeed"]) == \
        (INTERFACE_INFO_SIZE, 2, 3, 25_000_000_000)
    sa = first["SockAddr_Storage"]
    assert struct.unpack_from("<H", sa)[0] == socket.AF_INET and sa[2:4] == b"\0\0"
    assert socket.inet_ntop(socket.AF_INET, sa[4:8]) == "10.77.0.1"
    second = smb3structs.NETWORK_INTERFACE_INFO(data[first["Next"]:])
    assert second["Next"] == 0
    sa6 = second["SockAddr_Storage"]
    assert struct.unpack_from("<H", sa6)[0] == 0x17
    assert socket.inet_ntop(socket.AF_INET6, sa6[8:24]) == "fd00::2"


def test_enumerate_interfaces_on_this_host():
    """Every address reported is really configured here (checked by binding to it)."""
    addrs = ioctl_mod.enumerate_interfaces(("lo",))
    assert addrs
    names = dict(socket.if_nameindex())
    for a in addrs:
        assert a.if_index in names and a.link_speed > 0
        family = socket.AF_INET if a.address.version == 4 else socket.AF_INET6
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((str(a.address), 0))
        assert bool(a.capability & 0x2) == (names[a.if_index] == "lo")
        assert not a.address.is_link_local


def test_query_interfaces_through_handler(env, monkeypatch):
    addrs = [InterfaceAddress(i, 0, 10**10, ipaddress.IPv4Address(f"192.0.2.{i}")) for i in range(1, 4)]
    monkeypatch.setattr(ioctl_mod, "enumerate_interfaces", lambda rdma: addrs)
    monkeypatch.setattr(ioctl_mod, "_iface_cache", None)
    status, out = run(env, env.ipc_tree, ioctl_message(Fsctl.QUERY_NETWORK_INTERFACE_INFO))
    assert status == NtStatus.SUCCESS and len(out) == 3 * INTERFACE_INFO_SIZE
    status, out = run(env, env.ipc_tree, ioctl_message(Fsctl.QUERY_NETWORK_INTERFACE_INFO, max_out=400))
    assert status == NtStatus.BUFFER_OVERFLOW and len(out) == 2 * INTERFACE_INFO_SIZE
    assert status_of(env, env.ipc_tree, ioctl_message(Fsctl.QUERY_NETWORK_INTERFACE_INFO, max_out=100)) == \
        NtStatus.BUFFER_TOO_SMALL


# ---- pipes ------------------------------------------------------------------------------------


def test_pipe_transceive_through_ioctl(env):
    endpoint = ipc.PipeEndpoint("srvsvc", ipc._srvsvc(env.server.config))
    op = Open(env.server.persistent_ids(), env.server.new_volatile_id(), env.session, env.ipc_tree, FULL, 3,
              ("srvsvc",), -1, False, 0)
    op.pipe = endpoint
    env.server.register_open(op)
    ctx = uuid.UUID("4b324fc8-1670-01d3-1278-5a47bf6ee188").bytes_le + struct.pack("<I", 3)
    ndr = uuid.UUID("8a885d04-1ceb-11c9-9fe8-08002b104860").bytes_le + struct.pack("<I", 2)
    body = struct.pack("<HHIB3x", 4280, 4280, 0, 1) + struct.pack("<HBB", 0, 1, 0) + ctx + ndr
    bind = struct.pack("<BBBB4sHHI", 5, 0, 11, 3, b"\x10\0\0\0", 16 + len(body), 0, 1) + body
    status, out = run(env, env.ipc_tree, ioctl_message(Fsctl.PIPE_TRANSCEIVE, op.file_id, bind, max_out=20))
    assert status == NtStatus.BUFFER_OVERFLOW and len(out) == 20
    rest, more = endpoint.read(4280)
    assert not more and BindAckPdu.parse(out + rest).results[0].result == ContextResult.ACCEPTANCE
    # A file is not a pipe.
    f = env.open_file("plain", b"x")
    assert status_of(env, env.tree, ioctl_message(Fsctl.PIPE_TRANSCEIVE, f.file_id, bind)) == \
        NtStatus.INVALID_DEVICE_REQUEST


# ---- server-side copy (3.3.5.15.6) ------------------------------------------------------------


def _copychunk_input(key: bytes, chunks) -> bytes:
    cc = smb3structs.SRV_COPYCHUNK_COPY()
    cc["SourceKey"] = key
    cc["ChunkCount"] = len(chunks)
    data = b""
    for src, dst, length in chunks:
        c = smb3structs.SRV_COPYCHUNK()
        c["SourceOffset"], c["TargetOffset"], c["Length"] = src, dst, length
        data += c.getData()
    cc["Chunks"] = data
    return cc.getData()


def _resume_key(env, op) -> bytes:
    status, out = run(env, env.tree, ioctl_message(Fsctl.SRV_REQUEST_RESUME_KEY, op.file_id, max_out=32))
    key = smb3structs.SRV_REQUEST_RESUME_KEY(out)
    assert status == NtStatus.SUCCESS and len(out) == 32 and key["ContextLength"] == 0
    return key["ResumeKey"]


def test_copychunk_copies(env):
    payload = os.urandom(3 * 65536 + 123)
    src = env.open_file("src", payload)
    dst = env.open_file("dst", b"")
    key = _resume_key(env, src)
    chunks = [(0, 0, 65536), (65536, 65536, 2 * 65536 + 123), (0, 500000, 10)]
    status, out = run(env, env.tree, ioctl_message(Fsctl.SRV_COPYCHUNK_WRITE, dst.file_id,
                                                   _copychunk_input(key, chunks), max_out=12))
    resp = smb3structs.SRV_COPYCHUNK_RESPONSE(out)
    assert status == NtStatus.SUCCESS
    assert (resp["ChunksWritten"], resp["TotalBytesWritten"]) == (3, len(payload) + 10)
    written = (env.dir / "dst").read_bytes()
    assert written[:len(payload)] == payload and written[500000:500010] == payload[:10]


def test_copychunk_limits_and_errors(env):
    src = env.open_file("src", b"abc" * 1000)
    dst = env.open_file("dst", b"")
    key = _resume_key(env, src)
    # 257 chunks: INVALID_PARAMETER *with* the server's limits in the output (3.3.5.15.6).
    status, out = run(env, env.tree, ioctl_message(Fsctl.SRV_COPYCHUNK_WRITE, dst.file_id,
                                                   _copychunk_input(key, [(0, 0, 1)] * 257), max_out=12))
    resp = smb3structs.SRV_COPYCHUNK_RESPONSE(out)
    assert status == NtStatus.INVALID_PARAMETER
    assert (resp["ChunksWritten"], resp["ChunkBytesWritten"], resp["TotalBytesWritten"]) == \
        (256, 1 << 20, 16 << 20)
    status, _ = run(env, env.tree, ioctl_message(Fsctl.SRV_COPYCHUNK_WRITE, dst.file_id,
                                                 _copychunk_input(key, [(0, 0, (1 << 20) + 1)]), max_out=12))
    assert status == NtStatus.INVALID_PARAMETER
    # Past the end of the source; a forged key; a target opened without write access.
    assert status_of(env, env.tree, ioctl_message(Fsctl.SRV_COPYCHUNK_WRITE, dst.file_id,
                                                  _copychunk_input(key, [(2990, 0, 100)]), max_out=12)) == \
        NtStatus.INVALID_VIEW_SIZE
    forged = key[:16] + bytes(8)
    assert status_of(env, env.tree, ioctl_message(Fsctl.SRV_COPYCHUNK_WRITE, dst.file_id,
                                                  _copychunk_input(forged, [(0, 0, 1)]), max_out=12)) == \
        NtStatus.OBJECT_NAME_NOT_FOUND
    ro = env.open_file("ro", b"", access=0x00120089)
    assert status_of(env, env.tree, ioctl_message(Fsctl.SRV_COPYCHUNK_WRITE, ro.file_id,
                                                  _copychunk_input(key, [(0, 0, 1)]), max_out=12)) == \
        NtStatus.ACCESS_DENIED
    wo = env.open_file("wo", b"", access=0x00120116)  # write without read: only _WRITE allows it
    assert status_of(env, env.tree, ioctl_message(Fsctl.SRV_COPYCHUNK, wo.file_id,
                                                  _copychunk_input(key, [(0, 0, 1)]), max_out=12)) == \
        NtStatus.ACCESS_DENIED
    assert status_of(env, env.tree, ioctl_message(Fsctl.SRV_COPYCHUNK_WRITE, wo.file_id,
                                                  _copychunk_input(key, [(0, 0, 1)]), max_out=12)) == \
        NtStatus.SUCCESS


# ---- sparse files, zeroing, misc ----------------------------------------------------------------


def _sparse_file(env):
    op = env.open_file("sparse", b"", size=8 << 20)
    os.pwrite(op.fd, b"D" * 4096, 0)
    os.pwrite(op.fd, b"E" * 8192, 4 << 20)
    return op


def test_query_allocated_ranges(env):
    op = _sparse_file(env)
    query = struct.pack("<qq", 0, 16 << 20)
    status, out = run(env, env.tree, ioctl_message(Fsctl.QUERY_ALLOCATED_RANGES, op.file_id, query))
    ranges = [struct.unpack_from("<qq", out, i) for i in range(0, len(out), 16)]
    assert status == NtStatus.SUCCESS
    assert ranges == [(0, 4096), (4 << 20, 8192)]
    status, out = run(env, env.tree, ioctl_message(Fsctl.QUERY_ALLOCATED_RANGES, op.file_id, query, max_out=16))
    assert status == NtStatus.BUFFER_OVERFLOW and struct.unpack("<qq", out) == (0, 4096)
    assert status_of(env, env.tree, ioctl_message(Fsctl.QUERY_ALLOCATED_RANGES, op.file_id, query,
                                                  max_out=8)) == NtStatus.BUFFER_TOO_SMALL
    assert status_of(env, env.tree, ioctl_message(Fsctl.QUERY_ALLOCATED_RANGES, op.file_id,
                                                  struct.pack("<qq", -1, 5))) == NtStatus.INVALID_PARAMETER
    # A window in the middle clips the extent to the window.
    status, out = run(env, env.tree, ioctl_message(Fsctl.QUERY_ALLOCATED_RANGES, op.file_id,
                                                   struct.pack("<qq", 100, 1000)))
    assert struct.unpack("<qq", out) == (100, 1000)


def test_set_zero_data_punches_without_resizing(env):
    op = env.open_file("z", b"\xAA" * 100000)
    status, _ = run(env, env.tree, ioctl_message(Fsctl.SET_ZERO_DATA, op.file_id,
                                                 struct.pack("<qq", 10, 70000)))
    data = (env.dir / "z").read_bytes()
    assert status == NtStatus.SUCCESS
    assert len(data) == 100000 and data[:10] == b"\xAA" * 10 and data[10:70000] == bytes(69990)
    assert data[70000:] == b"\xAA" * 30000
    run(env, env.tree, ioctl_message(Fsctl.SET_ZERO_DATA, op.file_id, struct.pack("<qq", 99990, 1 << 30)))
    assert os.path.getsize(env.dir / "z") == 100000  # zeroing past the end never extends
    assert status_of(env, env.tree, ioctl_message(Fsctl.SET_ZERO_DATA, op.file_id,
                                                  struct.pack("<qq", 50, 10))) == NtStatus.INVALID_PARAMETER
    ro = env.open_file("z", access=0x00120089)
    assert status_of(env, env.tree, ioctl_message(Fsctl.SET_ZERO_DATA, ro.file_id,
                                                  struct.pack("<qq", 0, 10))) == NtStatus.ACCESS_DENIED


def test_compression_sparse_reparse_object_id(env):
    op = env.open_file("m", b"x")
    status, out = run(env, env.tree, ioctl_message(Fsctl.GET_COMPRESSION, op.file_id))
    assert (status, out) == (NtStatus.SUCCESS, b"\0\0")
    assert status_of(env, env.tree, ioctl_message(Fsctl.SET_COMPRESSION, op.file_id, b"\0\0")) == NtStatus.SUCCESS
    assert status_of(env, env.tree, ioctl_message(Fsctl.SET_COMPRESSION, op.file_id, b"\2\0")) == \
        NtStatus.NOT_SUPPORTED
    assert status_of(env, env.tree, ioctl_message(Fsctl.SET_SPARSE, op.file_id, b"\1")) == NtStatus.SUCCESS
    assert status_of(env, env.tree, ioctl_message(Fsctl.GET_REPARSE_POINT, op.file_id)) == \
        NtStatus.NOT_A_REPARSE_POINT
    _, first = run(env, env.tree, ioctl_message(Fsctl.CREATE_OR_GET_OBJECT_ID, op.file_id))
    _, again = run(env, env.tree, ioctl_message(Fsctl.GET_OBJECT_ID, op.file_id))
    other = env.open_file("n", b"y")
    _, different = run(env, env.tree, ioctl_message(Fsctl.GET_OBJECT_ID, other.file_id))
    assert len(first) == 64 and first == again and first[:16] != different[:16]


# ---- real peers: the same FSCTLs against Samba 4.17 and smbdd ---------------------------------

pytest_plugins = ["tests.peers.fixtures"]

# (name, on IPC$?, code, input, MaxOutputResponse). Differences from Samba that are on
# purpose are left out: GET_OBJECT_ID (we derive an id, Samba refuses), PIPE_WAIT (Samba:
# FS_DRIVER_REQUIRED, we implement it).
_PEER_CASES = [
    ("dfs referral", True, Fsctl.DFS_GET_REFERRALS, "dfs", 4096),
    ("dfs referral ex", True, Fsctl.DFS_GET_REFERRALS_EX, "dfsex", 4096),
    ("resume key", False, Fsctl.SRV_REQUEST_RESUME_KEY, b"", 32),
    ("reparse point", False, Fsctl.GET_REPARSE_POINT, b"", 4096),
    ("create or get object id", False, Fsctl.CREATE_OR_GET_OBJECT_ID, b"", 4096),
    ("get compression", False, Fsctl.GET_COMPRESSION, b"", 4096),
    ("set compression lznt1", False, Fsctl.SET_COMPRESSION, b"\x02\x00", 4096),
    ("set compression none", False, Fsctl.SET_COMPRESSION, b"\x00\x00", 4096),
    ("set sparse", False, Fsctl.SET_SPARSE, b"\x01", 4096),
    ("allocated ranges", False, Fsctl.QUERY_ALLOCATED_RANGES, struct.pack("<qq", 0, 1 << 20), 1024),
    ("allocated ranges too small", False, Fsctl.QUERY_ALLOCATED_RANGES, struct.pack("<qq", 0, 1 << 20), 8),
    ("zero data", False, Fsctl.SET_ZERO_DATA, struct.pack("<qq", 100, 200), 4096),
    ("query file regions", False, 0x00090284, b"", 4096),
    ("unknown fsctl", False, 0x12345678, b"", 4096),
    ("interfaces", True, Fsctl.QUERY_NETWORK_INTERFACE_INFO, b"", 65536),
    ("interfaces with a file id", False, Fsctl.QUERY_NETWORK_INTERFACE_INFO, b"", 65536),
    ("pipe peek on a file", False, Fsctl.PIPE_PEEK, b"", 1024),
]


def _peer_statuses(server) -> dict[str, int]:
    from impacket.smbconnection import SMBConnection

    conn = SMBConnection(server.host, server.host, sess_port=server.port)
    conn.login(server.user, server.password)
    smb = conn.getSMBServer()
    ipc_tid = conn.connectTree("IPC$")
    tid = conn.connectTree(server.share_name)
    fid = conn.createFile(tid, "fsctl-probe.bin", desiredAccess=FULL, shareMode=7, creationDisposition=5)
    conn.writeFile(tid, fid, b"x" * 5000)
    unc = f"\\{server.host}\\{server.share_name}\0".encode("utf-16-le")
    inputs = {"dfs": struct.pack("<H", 4) + unc, "dfsex": struct.pack("<HHI", 4, 0, len(unc)) + unc}
    out = {}
    for name, on_ipc, code, data, max_out in _PEER_CASES:
        data = inputs.get(data, data) if isinstance(data, str) else data
        try:
            smb.ioctl(ipc_tid if on_ipc else tid, None if on_ipc else fid, code, 1, data,
                      maxOutputResponse=max_out)
            out[name] = 0
        except Exception as e:  # impacket raises SessionError carrying the NTSTATUS
            out[name] = e.get_error_code()
    conn.close()
    return out


@pytest.mark.peer
def test_fsctl_statuses_match_samba(samba_server, smbdd_server):
    assert _peer_statuses(smbdd_server) == _peer_statuses(samba_server)


def test_pipe_peek_and_wait(env):
    endpoint = ipc.PipeEndpoint("srvsvc", ipc._srvsvc(env.server.config))
    op = Open(env.server.persistent_ids(), env.server.new_volatile_id(), env.session, env.ipc_tree, FULL, 3,
              ("srvsvc",), -1, False, 0)
    op.pipe = endpoint
    env.server.register_open(op)
    status, out = run(env, env.ipc_tree, ioctl_message(Fsctl.PIPE_PEEK, op.file_id, max_out=16))
    assert struct.unpack("<IIII", out) == (3, 0, 0, 0)
    endpoint.write(bytes.fromhex("05000b03100000004800000001000000b810b81000000000010000000000010"
                                 "0c84f324b7016d30112785a47bf6ee18803000000045d888aeb1cc9119fe80800"
                                 "2b10486002000000"))
    _, out = run(env, env.ipc_tree, ioctl_message(Fsctl.PIPE_PEEK, op.file_id, max_out=16))
    state, available, messages, length = struct.unpack("<IIII", out)
    assert available == length == endpoint.pending > 0 and messages == 1
    # A transaction while that answer is unread: STATUS_PIPE_BUSY.
    assert status_of(env, env.ipc_tree, ioctl_message(Fsctl.PIPE_TRANSCEIVE, op.file_id, b"\x05\0" * 8)) == \
        NtStatus.PIPE_BUSY
    wait = struct.pack("<qIBB", 0, 12, 0, 0)
    assert status_of(env, env.ipc_tree, ioctl_message(Fsctl.PIPE_WAIT, data=wait + "SRVSVC".encode("utf-16-le"))) \
        == NtStatus.SUCCESS
    assert status_of(env, env.ipc_tree, ioctl_message(Fsctl.PIPE_WAIT, data=wait + "nosuch".encode("utf-16-le"))) \
        == NtStatus.OBJECT_NAME_NOT_FOUND


def test_enumeration_lists_every_address_of_each_up_interface(monkeypatch):
    """psutil's view, made up: a second IPv4 address is listed too, link-local IPv6, a down
    interface and (with others present) loopback are not; the order follows the index."""
    import psutil
    from types import SimpleNamespace as NS

    def addr(family, address):
        return NS(family=family, address=address)

    monkeypatch.setattr(psutil, "net_if_addrs", lambda: {
        "lo": [addr(socket.AF_INET, "127.0.0.1")],
        "eth1": [addr(socket.AF_INET, "192.0.2.7"), addr(socket.AF_INET, "192.0.2.8"),
                 addr(socket.AF_INET6, "fe80::1%eth1"), addr(socket.AF_INET6, "2001:db8::7")],
        "eth9": [addr(socket.AF_INET, "198.51.100.1")]})
    monkeypatch.setattr(psutil, "net_if_stats", lambda: {
        "lo": NS(isup=True, speed=0, flags="up,loopback"), "eth1": NS(isup=True, speed=25000, flags="up"),
        "eth9": NS(isup=False, speed=1000, flags="")})
    monkeypatch.setattr(socket, "if_nametoindex", {"lo": 1, "eth1": 3, "eth9": 5}.__getitem__)
    monkeypatch.setattr(ioctl_mod, "_rss_capable", lambda name: name == "eth1")
    got = ioctl_mod.enumerate_interfaces(("eth1",))
    assert [(a.if_index, str(a.address)) for a in got] == [(3, "192.0.2.7"), (3, "192.0.2.8"), (3, "2001:db8::7")]
    assert all(a.link_speed == 25_000_000_000 and a.capability == 0x3 for a in got)  # RSS and RDMA
