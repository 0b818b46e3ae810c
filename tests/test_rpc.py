"""DCE/RPC PDU codec, NDR marshaller and srvsvc (smbd.rpc), and the IPC$ pipe endpoint.

Independent checks: impacket's DCE/RPC client and srvsvc structures encode the requests
and decode our answers, and bytes captured from Samba 4.17 (smbclient -L against a
private smbd, debug level 10; FSCTL_PIPE_TRANSCEIVE probes with impacket) pin the layout.
"""
from __future__ import annotations

import random
import struct
import uuid

import pytest

from smbd.rpc import NdrError, PduFramer, RpcAssociation, RpcProtocolError, ServerIdentity, ShareEntry
from smbd.rpc.ndr import NdrReader, NdrWriter
from smbd.rpc.pdu import (NDR64_SYNTAX, NDR_SYNTAX, BindAckPdu, ContextResult, FaultPdu, FaultStatus, PfcFlags,
                          ProviderReason, PType, RequestPdu, ResponsePdu, SyntaxId)
from smbd.rpc.srvsvc import (SRVSVC_SYNTAX, ShareEnumRequest, ShareGetInfoRequest, SrvsvcInterface, WinError,
                             encode_share_enum)
from smbd.server.ipc import PipeEndpoint
from smbd.status import SmbError

srvsvc = pytest.importorskip("impacket.dcerpc.v5.srvs")
from impacket.dcerpc.v5 import transport as rpc_transport  # noqa: E402
from impacket.dcerpc.v5.dtypes import NULL  # noqa: E402
from impacket.dcerpc.v5.rpcrt import DCERPCException  # noqa: E402

SHARES = (ShareEntry("share", 0, "my comment", "C:\\srv\\share"),
          ShareEntry("data$", 0x80000000, "hidden", "C:\\srv\\data", 0x8000),
          ShareEntry("IPC$", 0x80000003, "Remote IPC"))
IDENTITY = ServerIdentity("SMBDD", "test server", SHARES)

# smbclient -L against Samba 4.17.12: NetShareEnumAll level 1 response stub for the shares
# "share" ("my comment") and IPC$. Referent ids are Samba's own numbering.
SAMBA_ENUM_LEVEL1 = bytes.fromhex(
    "01000000010000000c0002000200000010000200020000001400020000000000"
    "180002001c0002000300008020000200060000000000000006000000730068006100720065000000"
    "0b000000000000000b0000006d007900200063006f006d006d0065006e007400000000000500000000"
    "0000000500000049005000430024000000000023000000000000002300000049005000430020005300"
    "65007200760069006300650020002800530061006d0062006100200034002e00310037002e00310032"
    "002d00440065006200690061006e00290000000000020000002400020000000000 00000000".replace(" ", ""))
# Samba's FAULT for opnum 200 on context 1, call 2 (FSCTL_PIPE_TRANSCEIVE probe).
SAMBA_FAULT_OP_RNG = bytes.fromhex("0500032310000000200000000200000018000000010000000200011c00000000")


def _syntax(u: str, v: int) -> bytes:
    return uuid.UUID(u).bytes_le + struct.pack("<I", v)


def bind_pdu(contexts, call_id=1, max_frag=4280, auth=b"") -> bytes:
    body = struct.pack("<HHIB3x", max_frag, max_frag, 0, len(contexts))
    for cid, abstract, transfers in contexts:
        body += struct.pack("<HBB", cid, len(transfers), 0) + abstract + b"".join(transfers)
    flags = PfcFlags.FIRST_FRAG | PfcFlags.LAST_FRAG
    return struct.pack("<BBBB4sHHI", 5, 0, 11, flags, b"\x10\0\0\0", 16 + len(body) + len(auth),
                       max(len(auth) - 8, 0), call_id) + body + auth


SRVSVC_RAW = _syntax("4b324fc8-1670-01d3-1278-5a47bf6ee188", 3)
NDR_RAW = _syntax("8a885d04-1ceb-11c9-9fe8-08002b104860", 2)
NDR64_RAW = _syntax("71710533-beba-4937-8319-b5dbef9ccc36", 1)
BTFN_RAW = _syntax("6cb71c2c-9812-4540-0300-000000000000", 1)
OTHER_RAW = _syntax("12345678-1234-1234-1234-123456789abc", 1)


def bound_association(max_frag=4280) -> RpcAssociation:
    assoc = RpcAssociation(SrvsvcInterface(lambda: IDENTITY), "\\PIPE\\srvsvc")
    ack = BindAckPdu.parse(assoc.receive(bind_pdu([(0, SRVSVC_RAW, [NDR_RAW])], max_frag=max_frag))[0])
    assert ack.results[0].result == ContextResult.ACCEPTANCE
    return assoc


def call(assoc: RpcAssociation, opnum: int, stub: bytes, call_id: int = 2) -> bytes:
    replies = assoc.receive(RequestPdu.build(call_id, 0, opnum, stub))
    stub_out = b""
    for r in replies:
        resp = ResponsePdu.parse(r)
        assert resp.call_id == call_id
        stub_out += resp.stub
    assert ResponsePdu.parse(replies[-1]).pfc_flags & PfcFlags.LAST_FRAG
    return stub_out


# ---- NDR ---------------------------------------------------------------------------------


def test_ndr_wstring_roundtrip_and_alignment():
    w = NdrWriter()
    w.u8(7)
    w.wstring("héllo")
    w.u16(3)
    w.u64(1 << 40)
    data = w.getvalue()
    assert len(data) % 8 == 0  # u64 aligned to 8
    r = NdrReader(data)
    assert r.u8() == 7
    assert r.wstring() == "héllo"
    assert r.u16() == 3
    assert r.u64() == 1 << 40
    assert r.remaining() == 0


def test_ndr_reader_rejects_truncation_and_bad_counts():
    w = NdrWriter()
    w.wstring("abc")
    data = w.getvalue()
    for cut in range(len(data)):
        with pytest.raises(NdrError):
            NdrReader(data[:cut]).wstring()
    # actual_count larger than max_count
    with pytest.raises(NdrError):
        NdrReader(struct.pack("<III", 1, 0, 2) + b"a\0b\0").wstring()
    with pytest.raises(NdrError):
        NdrReader(struct.pack("<I", 0xFFFFFFFF)).conformance()


def test_share_enum_matches_samba_layout():
    """Our NetrShareEnum level-1 stub is Samba's, byte for byte, except the referent ids."""
    shares = (ShareEntry("share", 0, "my comment"),
              ShareEntry("IPC$", 0x80000003, "IPC Service (Samba 4.17.12-Debian)"))
    ours = encode_share_enum(1, shares, 0)
    assert len(ours) == len(SAMBA_ENUM_LEVEL1)
    for off in range(0, len(ours), 4):
        a, b = SAMBA_ENUM_LEVEL1[off:off + 4], ours[off:off + 4]
        if a[2:] == b"\x02\x00" and a[:2] != b"\0\0" and off not in (0, 4):  # a referent id
            assert b[2:] == b"\x02\x00" and b != b"\0" * 4
        else:
            assert a == b, f"offset {off}: samba {a.hex()} ours {b.hex()}"


# ---- srvsvc decoded by impacket ------------------------------------------------------------


def _enum_request(level: int, resume=NULL) -> bytes:
    req = srvsvc.NetrShareEnum()
    req["ServerName"] = "127.0.0.1\x00"
    req["InfoStruct"]["Level"] = level
    req["InfoStruct"]["ShareInfo"]["tag"] = level
    req["InfoStruct"]["ShareInfo"][f"Level{level}"]["Buffer"] = NULL
    req["PreferedMaximumLength"] = 0xFFFFFFFF
    req["ResumeHandle"] = resume
    return req.getData()


def test_share_enum_request_from_impacket_decodes():
    req = ShareEnumRequest.decode(_enum_request(1, 0))
    assert (req.server_name, req.level, req.prefered_maximum_length, req.resume_handle) == \
        ("127.0.0.1", 1, 0xFFFFFFFF, 0)
    assert ShareEnumRequest.decode(_enum_request(0)).resume_handle is None


@pytest.mark.parametrize("level", [0, 1, 2, 501, 502])
def test_share_enum_response_decoded_by_impacket(level):
    assoc = bound_association()
    stub = call(assoc, 15, _enum_request(level, 0))
    resp = srvsvc.NetrShareEnumResponse()
    resp.fromString(stub)
    assert resp["ErrorCode"] == 0
    assert resp["TotalEntries"] == len(SHARES)
    assert resp["InfoStruct"]["Level"] == level
    entries = resp["InfoStruct"]["ShareInfo"][f"Level{level}"]["Buffer"]
    assert [e[f"shi{level}_netname"][:-1] for e in entries] == [s.name for s in SHARES]
    if level in (1, 2, 501, 502):
        assert [e[f"shi{level}_type"] for e in entries] == [s.type for s in SHARES]
        assert [e[f"shi{level}_remark"][:-1] for e in entries] == [s.remark for s in SHARES]
    if level in (2, 502):
        assert entries[0][f"shi{level}_path"][:-1] == "C:\\srv\\share"
    if level == 501:
        assert entries[1]["shi501_flags"] == 0x8000


def test_share_enum_unknown_level_is_invalid_level():
    # Level 3 does not exist: only the union discriminant comes back, with ERROR_INVALID_LEVEL.
    stub = struct.pack("<IIII", 0, 3, 3, 0) + struct.pack("<II", 0xFFFFFFFF, 0)
    out = call(bound_association(), 15, stub)
    assert struct.unpack("<I", out[-4:])[0] == WinError.INVALID_LEVEL


@pytest.mark.parametrize("level", [0, 1, 2, 501, 502, 1005])
def test_share_get_info_decoded_by_impacket(level):
    req = srvsvc.NetrShareGetInfo()
    req["ServerName"] = NULL
    req["NetName"] = "DATA$\x00"  # case-insensitive match
    req["Level"] = level
    assert ShareGetInfoRequest.decode(req.getData()).net_name == "DATA$"
    stub = call(bound_association(), 16, req.getData())
    resp = srvsvc.NetrShareGetInfoResponse()
    resp.fromString(stub)
    assert resp["ErrorCode"] == 0
    info = resp["InfoStruct"][f"ShareInfo{level}"]
    if level == 1005:
        assert info["shi1005_flags"] == 0x8000
    else:
        assert info[f"shi{level}_netname"] == "data$\x00"


def test_share_get_info_unknown_share():
    req = srvsvc.NetrShareGetInfo()
    req["ServerName"] = NULL
    req["NetName"] = "nosuch\x00"
    req["Level"] = 1
    stub = call(bound_association(), 16, req.getData())
    assert struct.unpack("<I", stub[-4:])[0] == WinError.NERR_NET_NAME_NOT_FOUND == 2310


@pytest.mark.parametrize("level", [100, 101, 102])
def test_server_get_info_decoded_by_impacket(level):
    req = srvsvc.NetrServerGetInfo()
    req["ServerName"] = "\\\\SMBDD\x00"
    req["Level"] = level
    stub = call(bound_association(), 21, req.getData())
    resp = srvsvc.NetrServerGetInfoResponse()
    resp.fromString(stub)
    assert resp["ErrorCode"] == 0
    info = resp["InfoStruct"][f"ServerInfo{level}"]
    assert info[f"sv{level}_platform_id"] == 500
    assert info[f"sv{level}_name"] == "SMBDD\x00"
    if level >= 101:
        assert (info[f"sv{level}_version_major"], info[f"sv{level}_version_minor"]) == (10, 0)
        assert info[f"sv{level}_type"] & 0x8003 == 0x8003
        assert info[f"sv{level}_comment"] == "test server\x00"


# ---- PDUs and the association ----------------------------------------------------------------


def test_bind_results_match_samba():
    """NDR64 and unknown interfaces are provider-rejected, BTFN gets negotiate_ack with
    the offered bits, NDR is accepted: the same four results Samba 4.17 answered."""
    assoc = RpcAssociation(SrvsvcInterface(lambda: IDENTITY), "\\PIPE\\srvsvc")
    out = assoc.receive(bind_pdu([(0, SRVSVC_RAW, [NDR64_RAW]), (1, SRVSVC_RAW, [NDR_RAW]),
                                  (2, SRVSVC_RAW, [BTFN_RAW]), (3, OTHER_RAW, [NDR_RAW])]))
    ack = BindAckPdu.parse(out[0])
    assert ack.secondary_address == "\\PIPE\\srvsvc"
    assert (ack.max_xmit_frag, ack.max_recv_frag) == (4280, 4280)
    assert ack.assoc_group_id != 0
    # Samba's results section for this bind, from the probe (everything after the secondary address).
    samba_results = bytes.fromhex(
        "04000000" "02000200" + "00" * 20 + "00000000" + NDR_RAW.hex() + "03000300" + "00" * 20
        + "02000100" + "00" * 20)
    assert out[0].endswith(samba_results)
    assert [r.result for r in ack.results] == [ContextResult.PROVIDER_REJECTION, ContextResult.ACCEPTANCE,
                                               ContextResult.NEGOTIATE_ACK, ContextResult.PROVIDER_REJECTION]
    assert ack.results[0].reason == ProviderReason.PROPOSED_TRANSFER_SYNTAXES_NOT_SUPPORTED
    assert ack.results[3].reason == ProviderReason.ABSTRACT_SYNTAX_NOT_SUPPORTED
    # Calls on the rejected context fail with nca_s_unk_if, as Samba answers.
    fault = FaultPdu.parse(assoc.receive(RequestPdu.build(3, 0, 15, b""))[0])
    assert fault.status == FaultStatus.UNK_IF


def test_unknown_opnum_fault_is_samba_bytes():
    assoc = RpcAssociation(SrvsvcInterface(lambda: IDENTITY), "\\PIPE\\srvsvc")
    assoc.receive(bind_pdu([(1, SRVSVC_RAW, [NDR_RAW])]))
    out = assoc.receive(RequestPdu.build(2, 1, 200, b""))
    assert out == [SAMBA_FAULT_OP_RNG]


def test_bad_stub_data_faults_without_killing_the_association():
    assoc = bound_association()
    fault = FaultPdu.parse(assoc.receive(RequestPdu.build(2, 0, 15, b"\x01\x02"))[0])
    assert fault.status == FaultStatus.BAD_STUB_DATA
    assert call(assoc, 15, _enum_request(1), call_id=3)  # still usable


def test_request_before_bind_and_second_bind():
    assoc = RpcAssociation(SrvsvcInterface(lambda: IDENTITY), "\\PIPE\\srvsvc")
    assert FaultPdu.parse(assoc.receive(RequestPdu.build(1, 0, 15, b""))[0]).status == FaultStatus.PROTO_ERROR
    assoc.receive(bind_pdu([(0, SRVSVC_RAW, [NDR_RAW])]))
    nak = assoc.receive(bind_pdu([(0, SRVSVC_RAW, [NDR_RAW])], call_id=2))[0]
    assert nak[2] == PType.BIND_NAK


def test_bind_with_auth_is_refused():
    assoc = RpcAssociation(SrvsvcInterface(lambda: IDENTITY), "\\PIPE\\srvsvc")
    nak = assoc.receive(bind_pdu([(0, SRVSVC_RAW, [NDR_RAW])], auth=b"\x0a\x06\0\0\0\0\0\0" + b"N" * 16))[0]
    assert nak[2] == PType.BIND_NAK and struct.unpack_from("<H", nak, 16)[0] == 8


def test_fragmented_request_is_reassembled():
    assoc = bound_association()
    stub = _enum_request(1, 0)
    pieces = [stub[i:i + 8] for i in range(0, len(stub), 8)]
    replies = []
    for i, piece in enumerate(pieces):
        flags = (PfcFlags.FIRST_FRAG if i == 0 else 0) | (PfcFlags.LAST_FRAG if i == len(pieces) - 1 else 0)
        replies += assoc.receive(RequestPdu.build(9, 0, 15, piece, flags, alloc_hint=len(stub)))
    assert len(replies) == 1
    resp = srvsvc.NetrShareEnumResponse()
    resp.fromString(ResponsePdu.parse(replies[0]).stub)
    assert resp["TotalEntries"] == 3


def test_oversized_fragmented_request_is_refused():
    assoc = bound_association()
    out = assoc.receive(RequestPdu.build(4, 0, 15, b"\0" * 4000, PfcFlags.FIRST_FRAG))
    for _ in range(300):
        out += assoc.receive(RequestPdu.build(4, 0, 15, b"\0" * 4000, 0))
    out += assoc.receive(RequestPdu.build(4, 0, 15, b"\0" * 4000, PfcFlags.LAST_FRAG))
    # One fault for the whole call, however many fragments follow the refusal.
    assert [FaultPdu.parse(p).status for p in out] == [FaultStatus.REMOTE_NO_MEMORY]
    assert call(assoc, 15, _enum_request(1), call_id=5)


def test_large_response_is_fragmented():
    many = tuple(ShareEntry(f"share{i:03d}", 0, "x" * 40) for i in range(120))
    assoc = RpcAssociation(SrvsvcInterface(lambda: ServerIdentity("S", "", many)), "\\PIPE\\srvsvc")
    assoc.receive(bind_pdu([(0, SRVSVC_RAW, [NDR_RAW])], max_frag=1432))
    replies = assoc.receive(RequestPdu.build(2, 0, 15, _enum_request(1)))
    assert len(replies) > 5 and all(len(r) <= 1432 for r in replies)
    parsed = [ResponsePdu.parse(r) for r in replies]
    assert parsed[0].pfc_flags & PfcFlags.FIRST_FRAG and parsed[-1].pfc_flags & PfcFlags.LAST_FRAG
    assert all(len(p.stub) % 8 == 0 for p in parsed[:-1])
    resp = srvsvc.NetrShareEnumResponse()
    resp.fromString(b"".join(p.stub for p in parsed))
    assert len(resp["InfoStruct"]["ShareInfo"]["Level1"]["Buffer"]) == 120


def test_malformed_pdus_never_leak_index_or_struct_errors():
    rng = random.Random(1234)
    samples = [bind_pdu([(0, SRVSVC_RAW, [NDR_RAW, NDR64_RAW])]), RequestPdu.build(2, 0, 15, _enum_request(1))]
    for sample in samples:
        for _ in range(400):
            data = bytearray(sample)
            if rng.random() < 0.5:
                data = data[:rng.randrange(len(data))]
            for _ in range(rng.randrange(1, 4)):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            assoc = bound_association() if sample[2] == PType.REQUEST else \
                RpcAssociation(SrvsvcInterface(lambda: IDENTITY), "\\PIPE\\srvsvc")
            try:
                replies = assoc.receive(bytes(data))
            except RpcProtocolError:
                continue
            for reply in replies:  # whatever is answered is a well-formed PDU
                assert reply[:2] == b"\x05\x00" and struct.unpack_from("<H", reply, 8)[0] == len(reply)


def test_framer_splits_stream():
    a = bind_pdu([(0, SRVSVC_RAW, [NDR_RAW])])
    b = RequestPdu.build(2, 0, 15, b"abcd")
    framer = PduFramer()
    stream = a + b
    out = []
    for i in range(0, len(stream), 7):
        out += framer.feed(stream[i:i + 7])
    assert out == [a, b] and framer.pending == 0


# ---- the pipe endpoint, driven by impacket's own DCE/RPC client -------------------------------


class _PipeTransport(rpc_transport.DCERPCTransport):
    """impacket transport that writes to and reads from our PipeEndpoint in memory."""

    def __init__(self, endpoint: PipeEndpoint):
        super().__init__("127.0.0.1", 0)
        self.endpoint = endpoint

    def connect(self):
        return 1

    def disconnect(self):
        return 1

    def send(self, data, forceWriteAndx=0, forceRecv=0):
        self.endpoint.write(data)

    def recv(self, forceRecv=0, count=0):
        data, _ = self.endpoint.read(count or 4280)
        return data


@pytest.mark.parametrize("client_frag", [0, 24])
def test_impacket_client_lists_shares_through_pipe(client_frag):
    endpoint = PipeEndpoint("srvsvc", SrvsvcInterface(lambda: IDENTITY))
    trans = _PipeTransport(endpoint)
    if client_frag:
        trans.set_max_fragment_size(client_frag)  # impacket splits every request into tiny fragments
    dce = trans.get_dce_rpc()
    dce.connect()
    dce.bind(srvsvc.MSRPC_UUID_SRVS)
    resp = srvsvc.hNetrShareEnum(dce, 1)
    names = [e["shi1_netname"][:-1] for e in resp["InfoStruct"]["ShareInfo"]["Level1"]["Buffer"]]
    assert names == ["share", "data$", "IPC$"]
    info = srvsvc.hNetrServerGetInfo(dce, 101)
    assert info["InfoStruct"]["ServerInfo101"]["sv101_name"] == "SMBDD\x00"
    with pytest.raises(DCERPCException) as exc:
        srvsvc.hNetrShareGetInfo(dce, "nosuch", 1)
    assert exc.value.get_error_code() == 2310
    assert endpoint.pending == 0


def test_pipe_read_overflow_keeps_the_rest():
    endpoint = PipeEndpoint("srvsvc", SrvsvcInterface(lambda: IDENTITY))
    endpoint.write(bind_pdu([(0, SRVSVC_RAW, [NDR_RAW])]))
    whole = endpoint.pending
    first, overflow = endpoint.read(10)
    assert overflow and len(first) == 10
    rest, overflow = endpoint.read(4096)
    assert not overflow and len(first + rest) == whole
    assert BindAckPdu.parse(first + rest).results[0].result == ContextResult.ACCEPTANCE
    with pytest.raises(SmbError):
        endpoint.read(10)  # nothing pending: PIPE_EMPTY


def test_transceive_and_broken_pipe():
    endpoint = PipeEndpoint("srvsvc", SrvsvcInterface(lambda: IDENTITY))
    out, overflow = endpoint.transceive(bind_pdu([(0, SRVSVC_RAW, [NDR_RAW])]), 4280)
    assert not overflow and BindAckPdu.parse(out).call_id == 1
    out, overflow = endpoint.transceive(RequestPdu.build(2, 0, 15, _enum_request(1)), 64)
    assert overflow and len(out) == 64
    rest, more = endpoint.read(4280)
    assert not more
    assert ResponsePdu.parse(out + rest).call_id == 2
    with pytest.raises(SmbError):
        endpoint.write(b"\x04\x00" + b"\0" * 14)  # RPC version 4: protocol error, pipe gone
    assert endpoint.broken


def test_syntax_constants():
    assert SRVSVC_SYNTAX == SyntaxId(uuid.UUID("4b324fc8-1670-01d3-1278-5a47bf6ee188"), 3)
    assert NDR_SYNTAX.pack() == NDR_RAW and NDR64_SYNTAX.pack() == NDR64_RAW


# ---- real peers: smbclient -L and impacket's DCE/RPC over SMB, against Samba and smbdd ----------

pytest_plugins = ["tests.peers.fixtures"]


@pytest.fixture(params=["samba", "smbdd"])
def peer_server(request):
    return request.getfixturevalue(f"{request.param}_server")


@pytest.mark.peer
@pytest.mark.parametrize("protocol", ["SMB2_10", "SMB3_00", "SMB3_11"])
def test_smbclient_lists_shares(peer_server, protocol):
    """`smbclient -L` binds srvsvc and calls NetShareEnumAll level 1 over FSCTL_PIPE_TRANSCEIVE."""
    import re
    import shutil
    import subprocess

    if shutil.which("smbclient") is None:
        pytest.skip("smbclient not installed")
    result = subprocess.run(
        ["smbclient", "-s", "/dev/null", "-L", f"//{peer_server.host}", "-p", str(peer_server.port),
         "-U", f"{peer_server.user}%{peer_server.password}", "--option", f"client max protocol={protocol}"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"^\s+{re.escape(peer_server.share_name)}\s+Disk\b", result.stdout, re.M), result.stdout
    assert re.search(r"^\s+IPC\$\s+IPC\b", result.stdout, re.M), result.stdout


@pytest.mark.peer
def test_impacket_srvsvc_over_smb(peer_server):
    """impacket's SMB transport: CREATE on IPC$, then WRITE/READ of the PDUs."""
    from impacket.dcerpc.v5 import transport as tr

    binding = f"ncacn_np:{peer_server.host}[\\pipe\\srvsvc]"
    trans = tr.DCERPCTransportFactory(binding)
    trans.set_dport(peer_server.port)
    trans.set_credentials(peer_server.user, peer_server.password)
    dce = trans.get_dce_rpc()
    dce.connect()
    try:
        dce.bind(srvsvc.MSRPC_UUID_SRVS)
        resp = srvsvc.hNetrShareEnum(dce, 1)
        entries = resp["InfoStruct"]["ShareInfo"]["Level1"]["Buffer"]
        by_name = {e["shi1_netname"][:-1].lower(): e["shi1_type"] for e in entries}
        assert by_name[peer_server.share_name.lower()] == 0
        assert by_name["ipc$"] == 0x80000003
        info = srvsvc.hNetrShareGetInfo(dce, peer_server.share_name + "\x00", 2)
        assert info["InfoStruct"]["ShareInfo2"]["shi2_netname"][:-1].lower() == peer_server.share_name.lower()
        server = srvsvc.hNetrServerGetInfo(dce, 101)["InfoStruct"]["ServerInfo101"]
        assert server["sv101_platform_id"] == 500
        with pytest.raises(DCERPCException) as exc:
            srvsvc.hNetrShareGetInfo(dce, "nosuchshare\x00", 1)
        # MS-SRVS 3.1.4.10 says NERR_NetNameNotFound; Samba 4.17 answers WERR_INVALID_NAME.
        assert exc.value.get_error_code() == (123 if peer_server.name == "samba" else 2310)
    finally:
        dce.disconnect()


def test_share_check_and_restricted_levels():
    assoc = bound_association()
    req = srvsvc.NetrShareCheck()
    req["ServerName"] = NULL
    req["Device"] = "c:\\SRV\\share\x00"
    resp = srvsvc.NetrShareCheckResponse()
    resp.fromString(call(assoc, 20, req.getData()))
    assert (resp["Type"], resp["ErrorCode"]) == (0, 0)
    req["Device"] = "C:\\elsewhere\x00"
    assert struct.unpack("<II", call(assoc, 20, req.getData(), call_id=3)) == (0, 2311)
    # Anonymous/guest callers get no paths: levels 2 and 502 are ACCESS_DENIED, 1 still works.
    anon = RpcAssociation(SrvsvcInterface(lambda: IDENTITY, restricted=True), "\\PIPE\\srvsvc")
    anon.receive(bind_pdu([(0, SRVSVC_RAW, [NDR_RAW])]))
    for level in (2, 502):
        enum = srvsvc.NetrShareEnumResponse()
        enum.fromString(call(anon, 15, _enum_request(level, 0)))
        assert (enum["ErrorCode"], enum["TotalEntries"]) == (5, 0)
        gi = srvsvc.NetrShareGetInfo()
        gi["ServerName"], gi["NetName"], gi["Level"] = NULL, "share\x00", level
        assert struct.unpack("<I", call(anon, 16, gi.getData())[-4:])[0] == 5
    enum = srvsvc.NetrShareEnumResponse()
    enum.fromString(call(anon, 15, _enum_request(1, 0)))
    assert enum["ErrorCode"] == 0 and enum["TotalEntries"] == 3


def test_remote_tod_decoded_by_impacket():
    moment = 1_795_000_000.25  # 2026-11-18 11:06:40.25 UTC, a Wednesday (tod_weekday 3)
    assoc = RpcAssociation(SrvsvcInterface(lambda: IDENTITY, clock=lambda: moment), "\\PIPE\\srvsvc")
    assoc.receive(bind_pdu([(0, SRVSVC_RAW, [NDR_RAW])]))
    req = srvsvc.NetrRemoteTOD()
    req["ServerName"] = NULL
    resp = srvsvc.NetrRemoteTODResponse()
    resp.fromString(call(assoc, 28, req.getData()))
    tod = resp["BufferPtr"]
    assert resp["ErrorCode"] == 0 and tod["tod_elapsedt"] == 1_795_000_000
    import datetime
    t = datetime.datetime.fromtimestamp(moment, datetime.timezone.utc)
    assert (tod["tod_year"], tod["tod_month"], tod["tod_day"], tod["tod_hours"], tod["tod_mins"],
            tod["tod_secs"], tod["tod_hunds"]) == (t.year, t.month, t.day, t.hour, t.minute, t.second, 25)
    assert tod["tod_weekday"] == 3
