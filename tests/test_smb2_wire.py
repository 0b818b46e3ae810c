"""The MS-SMB2 codecs of smbd/wire fed with bytes.

Expectations come from the spec layouts (written out by hand here or by tests/smb2client.py,
which shares no code with the server) and from a real peer's encoder (smbprotocol), never
from the code under test's own output.
"""
from __future__ import annotations

import struct
import uuid

import pytest

from smbd.status import NtStatus, ProtocolViolation, SmbError
from smbd.wire import control, create, fileio, negotiate, session
from smbd.wire.header import Command, Flags, Header
from tests import smb2client as raw


def msg(data: bytes) -> memoryview:
    return memoryview(data)


def status_of(fn, *args) -> int:
    with pytest.raises(SmbError) as e:
        fn(*args)
    return e.value.status


# --- header, MS-SMB2 2.2.1 --------------------------------------------------------------------------

# A sync request header written byte by byte from the 2.2.1.2 table (offsets in comments).
SYNC_HEADER = (
    b"\xfeSMB"                      # 0  ProtocolId
    + b"\x40\x00"                   # 4  StructureSize 64
    + b"\x02\x00"                   # 6  CreditCharge 2
    + b"\x05\x00\x00\x00"           # 8  ChannelSequence/Reserved
    + b"\x08\x00"                   # 12 Command READ
    + b"\x20\x00"                   # 14 CreditRequest 32
    + b"\x0c\x00\x00\x00"           # 16 Flags RELATED|SIGNED
    + b"\x00\x00\x00\x00"           # 20 NextCommand
    + b"\x07\x00\x00\x00\x00\x00\x00\x00"  # 24 MessageId 7
    + b"\xfe\xff\x00\x00"           # 32 Reserved (ProcessId)
    + b"\x03\x00\x00\x00"           # 36 TreeId 3
    + b"\x88\x77\x66\x55\x44\x33\x22\x11"  # 40 SessionId
    + bytes(range(16))              # 48 Signature
)


def test_header_parse_sync_layout():
    h = Header.parse(SYNC_HEADER)
    assert (h.credit_charge, h.status, h.command, h.credits) == (2, 5, Command.READ, 32)
    assert h.flags == Flags.RELATED_OPERATIONS | Flags.SIGNED
    assert (h.next_command, h.message_id, h.tree_id, h.async_id) == (0, 7, 3, 0)
    assert h.session_id == 0x1122334455667788
    assert h.signature == bytes(range(16))
    assert h.channel_sequence == 5
    assert not h.is_async


def test_header_parse_async_layout():
    # 2.2.1.1: with SMB2_FLAGS_ASYNC_COMMAND the 8 bytes at offset 32 are the AsyncId.
    data = bytearray(SYNC_HEADER)
    data[16:20] = struct.pack("<I", Flags.ASYNC_COMMAND)
    data[32:40] = struct.pack("<Q", 0xAABBCCDD00112233)
    h = Header.parse(bytes(data))
    assert h.is_async and h.async_id == 0xAABBCCDD00112233 and h.tree_id == 0


def test_header_round_trip_is_byte_exact():
    # pack() writes 0 in the Reserved/ProcessId field; everything else must survive.
    expected = bytearray(SYNC_HEADER)
    expected[32:36] = b"\0\0\0\0"
    assert Header.parse(SYNC_HEADER).pack() == bytes(expected)
    built = raw.header(raw.WRITE, 99, credit_charge=16, credits=7, flags=4, tree_id=9, session_id=5)
    assert Header.parse(built).pack() == built


def test_header_response_fields():
    h = Header.parse(SYNC_HEADER)
    r = Header.parse(h.response(NtStatus.ACCESS_DENIED, 10).pack())
    assert r.status == NtStatus.ACCESS_DENIED and r.credits == 10
    assert r.flags & Flags.SERVER_TO_REDIR
    assert not r.flags & Flags.SIGNED  # the signer sets it again (3.3.4.1.1)
    assert r.flags & Flags.RELATED_OPERATIONS
    assert (r.message_id, r.session_id, r.tree_id, r.next_command) == (7, h.session_id, 3, 0)
    assert r.signature == b"\0" * 16


@pytest.mark.parametrize("data", [b"", SYNC_HEADER[:63], b"\xfeSMB"])
def test_header_truncated(data):
    with pytest.raises(ProtocolViolation):
        Header.parse(data)


def test_header_bad_protocol_id_and_structure_size():
    with pytest.raises(ProtocolViolation):
        Header.parse(b"\xffSMB" + SYNC_HEADER[4:])
    with pytest.raises(ProtocolViolation):
        Header.parse(SYNC_HEADER[:4] + b"\x41\x00" + SYNC_HEADER[6:])


# --- NEGOTIATE, 2.2.3 and 2.2.3.1 -------------------------------------------------------------------

def smbprotocol_negotiate() -> bytes:
    """A NEGOTIATE as smbprotocol (a real client) encodes it, with four contexts."""
    from smbprotocol.connection import (HashAlgorithms, NegotiateContextType, SMB2EncryptionCapabilities,
                                        SMB2NegotiateContextRequest, SMB2NetnameNegotiateContextId,
                                        SMB2PreauthIntegrityCapabilities, SMB2SigningCapabilities,
                                        SMB3NegotiateRequest)
    from smbprotocol.header import Commands, SMB2HeaderRequest

    req = SMB3NegotiateRequest()
    req["dialects"] = [0x0202, 0x0210, 0x0300, 0x0302, 0x0311]
    req["security_mode"] = 1
    req["capabilities"] = 0x40
    req["client_guid"] = uuid.UUID("11223344-5566-7788-99aa-bbccddeeff00")
    pre = SMB2NegotiateContextRequest()
    pre["context_type"] = NegotiateContextType.SMB2_PREAUTH_INTEGRITY_CAPABILITIES
    pre["data"] = SMB2PreauthIntegrityCapabilities()
    pre["data"]["hash_algorithms"] = [HashAlgorithms.SHA_512]
    pre["data"]["salt"] = b"\x5a" * 32
    enc = SMB2NegotiateContextRequest()
    enc["context_type"] = NegotiateContextType.SMB2_ENCRYPTION_CAPABILITIES
    enc["data"] = SMB2EncryptionCapabilities()
    enc["data"]["ciphers"] = [0x0004, 0x0002, 0x0001]
    net = SMB2NegotiateContextRequest()
    net["context_type"] = NegotiateContextType.SMB2_NETNAME_NEGOTIATE_CONTEXT_ID
    net["data"] = SMB2NetnameNegotiateContextId()
    net["data"]["net_name"] = "server"
    sig = SMB2NegotiateContextRequest()
    sig["context_type"] = NegotiateContextType.SMB2_SIGNING_CAPABILITIES
    sig["data"] = SMB2SigningCapabilities()
    sig["data"]["signing_algorithms"] = [0x0002, 0x0001]
    sig["padding"].size = 0
    sig["padding"] = b""
    req["negotiate_context_list"] = [pre, enc, net, sig]
    hdr = SMB2HeaderRequest()
    hdr["command"] = Commands.SMB2_NEGOTIATE
    hdr["data"] = req
    return hdr.pack()


def test_negotiate_from_real_client():
    wire = smbprotocol_negotiate()
    neg = negotiate.NegotiateRequest.parse(msg(wire))
    assert neg.dialects == (0x0202, 0x0210, 0x0300, 0x0302, 0x0311)
    assert neg.security_mode == 1 and neg.capabilities == 0x40
    # ClientGuid is at body offset 12 (2.2.3), an MS-DTYP GUID (little-endian first fields).
    assert neg.client_guid.bytes_le == wire[64 + 12:64 + 28]
    assert set(neg.contexts) == {1, 2, 5, 8}
    assert negotiate.preauth_hash_ids(neg.contexts[1]) == [0x0001]
    assert negotiate.cipher_ids(neg.contexts[2]) == [0x0004, 0x0002, 0x0001]
    assert negotiate.signing_ids(neg.contexts[8]) == [0x0002, 0x0001]
    assert neg.contexts[5] == "server".encode("utf-16-le")


def test_negotiate_without_311_ignores_context_fields():
    # 2.2.3: NegotiateContextOffset/Count are reserved unless 3.1.1 is offered.
    body = raw.negotiate_body((0x0202, 0x0300), contexts=[])
    body = body[:28] + struct.pack("<IH", 0xFFFF, 7) + body[34:]
    neg = negotiate.NegotiateRequest.parse(msg(raw.header(0, 0) + body))
    assert neg.dialects == (0x0202, 0x0300) and neg.contexts == {}


def test_negotiate_duplicate_context_refused():
    # 3.3.5.4: more than one PREAUTH_INTEGRITY (or ENCRYPTION...) context -> STATUS_INVALID_PARAMETER.
    body = raw.negotiate_body((0x0311,), contexts=[raw.preauth_context(), raw.preauth_context()])
    assert status_of(negotiate.NegotiateRequest.parse, msg(raw.header(0, 0) + body)) == NtStatus.INVALID_PARAMETER


def test_negotiate_truncated_context():
    good = raw.header(0, 0) + raw.negotiate_body((0x0311,))
    for cut in (1, 8, 20):  # inside the data, inside the 8-byte context header, ...
        assert status_of(negotiate.NegotiateRequest.parse, msg(good[:-cut])) == NtStatus.INVALID_PARAMETER
    # DataLength larger than what follows
    data = bytearray(good)
    ctx_at = struct.unpack_from("<I", data, 64 + 28)[0]
    struct.pack_into("<H", data, ctx_at + 2, 0x4000)
    assert status_of(negotiate.NegotiateRequest.parse, msg(bytes(data))) == NtStatus.INVALID_PARAMETER


def test_negotiate_context_count_beyond_list():
    body = raw.negotiate_body((0x0311,), contexts=[raw.preauth_context()], context_count=5)
    assert status_of(negotiate.NegotiateRequest.parse, msg(raw.header(0, 0) + body)) == NtStatus.INVALID_PARAMETER


def test_negotiate_context_offset_inside_header():
    body = bytearray(raw.negotiate_body((0x0311,)))
    struct.pack_into("<I", body, 28, 8)
    assert status_of(negotiate.NegotiateRequest.parse, msg(raw.header(0, 0) + bytes(body))) \
        == NtStatus.INVALID_PARAMETER


@pytest.mark.parametrize("mutate, expected", [
    (lambda b: b[:2] + b"\0\0" + b[4:], NtStatus.INVALID_PARAMETER),                 # DialectCount 0
    (lambda b: b[:2] + b"\x40\x00" + b[4:], NtStatus.INVALID_PARAMETER),             # dialects past the end
    (lambda b: b"\x25\x00" + b[2:], NtStatus.INVALID_PARAMETER),                     # StructureSize 37
    (lambda b: b[:20], NtStatus.INVALID_PARAMETER),                                  # fixed part cut
])
def test_negotiate_malformed_body(mutate, expected):
    body = raw.negotiate_body((0x0202, 0x0210), contexts=[])
    assert status_of(negotiate.NegotiateRequest.parse, msg(raw.header(0, 0) + mutate(body))) == expected


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x00\x00", b"\x02\x00\x00\x00\x01\x00"])
def test_preauth_context_lists_truncated_or_empty(data):
    with pytest.raises(SmbError) as e:
        negotiate.preauth_hash_ids(data)
    assert e.value.status == NtStatus.INVALID_PARAMETER


def test_negotiate_response_layout():
    # 2.2.4: StructureSize 65, SecurityBufferOffset 128, contexts 8-aligned after the buffer.
    resp = negotiate.NegotiateResponse(1, 0x0311, uuid.UUID(int=1), 0x4, 1 << 20, 1 << 20, 1 << 20, 5,
                                       b"TOKEN", (raw.preauth_context(),)).pack()
    (size, mode, dialect, ctx_count, guid, caps, mt, mr, mw, _, _, sec_off, sec_len,
     ctx_off) = struct.unpack_from("<HHHH16sIIIIQQHHI", resp)
    assert (size, mode, dialect, ctx_count, caps) == (65, 1, 0x0311, 1, 4)
    assert (sec_off, sec_len, ctx_off) == (128, 5, 136)
    assert resp[sec_off - 64:sec_off - 64 + 5] == b"TOKEN"
    assert resp[ctx_off - 64:] == raw.preauth_context()


# --- CREATE and create contexts, 2.2.13 / 2.2.13.2 ---------------------------------------------------

def smbprotocol_create() -> bytes:
    from smbprotocol.create_contexts import (CreateContextName, SMB2CreateContextRequest,
                                             SMB2CreateQueryMaximalAccessRequest)
    from smbprotocol.header import Commands, SMB2HeaderRequest
    from smbprotocol.open import SMB2CreateRequest

    c = SMB2CreateRequest()
    c["impersonation_level"] = 2
    c["desired_access"] = 0x00120089
    c["file_attributes"] = 0x80
    c["share_access"] = 7
    c["create_disposition"] = 3
    c["create_options"] = 0x40
    c["buffer_path"] = "dir\\file.txt".encode("utf-16-le")
    mx = SMB2CreateContextRequest()
    mx["buffer_name"] = CreateContextName.SMB2_CREATE_QUERY_MAXIMAL_ACCESS_REQUEST
    mx["buffer_data"] = SMB2CreateQueryMaximalAccessRequest()
    qf = SMB2CreateContextRequest()
    qf["buffer_name"] = CreateContextName.SMB2_CREATE_QUERY_ON_DISK_ID
    c["buffer_contexts"] = SMB2CreateContextRequest.pack_multiple([mx, qf])
    hdr = SMB2HeaderRequest()
    hdr["command"] = Commands.SMB2_CREATE
    hdr["data"] = c
    return hdr.pack()


def test_create_from_real_client():
    c = create.CreateRequest.parse(msg(smbprotocol_create()))
    assert c.name == "dir\\file.txt"
    assert (c.impersonation_level, c.desired_access, c.file_attributes) == (2, 0x00120089, 0x80)
    assert (c.share_access, c.disposition, c.options) == (7, 3, 0x40)
    assert set(c.contexts) == {b"MxAc", b"QFid"}
    assert len(c.contexts[b"MxAc"]) == 8 and c.contexts[b"QFid"] == b""


def test_create_contexts_hand_built_chain():
    first = raw.create_context(b"AAAA", b"12345")
    first += b"\0" * (-len(first) % 8)
    first = struct.pack("<I", len(first)) + first[4:]
    chain = first + raw.create_context(b"BBBB", b"xy")
    assert create.parse_contexts(memoryview(chain)) == {b"AAAA": b"12345", b"BBBB": b"xy"}


def _ctx(next_=0, name_off=16, name_len=4, data_off=24, data_len=4, total=32) -> bytes:
    out = bytearray(total)
    struct.pack_into("<IHHHHI", out, 0, next_, name_off, name_len, 0, data_off, data_len)
    out[16:20] = b"NAME"
    return bytes(out)


@pytest.mark.parametrize("blob, why", [
    (_ctx()[:15], "shorter than the fixed part"),
    (_ctx(next_=12) + b"\0" * 40, "Next not a multiple of 8"),
    (_ctx(next_=64), "Next past the end"),
    (_ctx(next_=8) + _ctx(), "Next inside the current context: its name runs past Next"),
    (_ctx(name_len=0), "empty name"),
    (_ctx(name_off=30), "name past the end"),
    (_ctx(data_off=28, data_len=8), "data past the end"),
    (_ctx(data_off=16, data_len=4), "data overlapping the name"),
    (_ctx(next_=32) + _ctx(), "the same name twice"),
])
def test_create_contexts_malformed(blob, why):
    assert status_of(create.parse_contexts, memoryview(blob)) == NtStatus.INVALID_PARAMETER, why


def test_create_context_name_overlapping_its_header_refused():
    assert status_of(create.parse_contexts, memoryview(_ctx(name_off=0, name_len=4, data_len=0))) \
        == NtStatus.INVALID_PARAMETER


def test_create_context_odd_data_offset_refused():
    assert status_of(create.parse_contexts, memoryview(_ctx(data_off=21, data_len=4))) == NtStatus.INVALID_PARAMETER


def test_create_name_offsets():
    hdr = raw.header(raw.CREATE, 1)
    ok = create.CreateRequest.parse(msg(hdr + raw.create_body("a\\b")))
    assert ok.name == "a\\b" and ok.contexts == {}
    assert create.CreateRequest.parse(msg(hdr + raw.create_body(""))).name == ""
    for kw in ({"name_offset": 0}, {"name_offset": 200}, {"name_length": 400}):
        assert status_of(create.CreateRequest.parse, msg(hdr + raw.create_body("abc", **kw))) \
            == NtStatus.INVALID_PARAMETER, kw
    # An odd NameLength is not UTF-16.
    assert status_of(create.CreateRequest.parse, msg(hdr + raw.create_body("abc", name_length=5))) \
        == NtStatus.INVALID_PARAMETER
    # A lone surrogate is a name the server cannot represent.
    assert status_of(create.CreateRequest.parse, msg(hdr + raw.create_body(b"\x00\xd8a\x00"))) \
        == NtStatus.OBJECT_NAME_INVALID
    # Contexts claimed past the end.
    body = bytearray(raw.create_body("abc", contexts=raw.create_context(b"MxAc")))
    struct.pack_into("<I", body, 52, 4000)
    assert status_of(create.CreateRequest.parse, msg(hdr + bytes(body))) == NtStatus.INVALID_PARAMETER


def test_create_contexts_encode_round_trip():
    blob = create.encode_contexts([(b"MxAc", b"\1" * 8), (b"QFid", b"\2" * 32), (b"RqLs", b"")])
    assert create.parse_contexts(memoryview(blob)) == {b"MxAc": b"\1" * 8, b"QFid": b"\2" * 32, b"RqLs": b""}
    first_next = struct.unpack_from("<I", blob)[0]
    assert first_next % 8 == 0 and first_next >= 16 + 4 + 8


# --- READ / WRITE / LOCK / IOCTL / QUERY_INFO / SET_INFO / SESSION_SETUP ------------------------------

FID = struct.pack("<QQ", 0x1111, 0x2222)


def test_read_request_fields_and_errors():
    r = fileio.ReadRequest.parse(msg(raw.header(raw.READ, 1) + raw.read_body(FID, 4096, 8192, minimum=10)))
    assert (r.length, r.offset, r.file_id, r.minimum_count, r.channel) == (4096, 8192, (0x1111, 0x2222), 10, 0)
    bad = bytearray(raw.header(raw.READ, 1) + raw.read_body(FID, 1))
    struct.pack_into("<I", bad, 64 + 36, 5)  # Channel 5 does not exist
    assert status_of(fileio.ReadRequest.parse, msg(bytes(bad))) == NtStatus.INVALID_PARAMETER
    struct.pack_into("<IIHH", bad, 64 + 36, 1, 0, 200, 16)  # RDMA channel info past the end
    assert status_of(fileio.ReadRequest.parse, msg(bytes(bad))) == NtStatus.INVALID_PARAMETER
    assert status_of(fileio.ReadRequest.parse, msg(raw.header(raw.READ, 1) + raw.read_body(FID, 1)[:40])) \
        == NtStatus.INVALID_PARAMETER


def test_read_request_rdma_descriptors():
    body = bytearray(raw.read_body(FID, 8192))
    desc = struct.pack("<QII", 0xDEAD0000, 0x77, 8192)
    struct.pack_into("<IIHH", body, 36, 1, 0, 64 + 48, 16)
    r = fileio.ReadRequest.parse(msg(raw.header(raw.READ, 1) + bytes(body[:48]) + desc))
    assert r.descriptors == (fileio.BufferDescriptor(0xDEAD0000, 0x77, 8192),)
    # a partial descriptor is malformed
    struct.pack_into("<H", body, 46, 15)
    assert status_of(fileio.ReadRequest.parse, msg(raw.header(raw.READ, 1) + bytes(body[:48]) + desc)) \
        == NtStatus.INVALID_PARAMETER


def test_write_request_data_is_the_named_range():
    w = fileio.WriteRequest.parse(msg(raw.header(raw.WRITE, 1) + raw.write_body(FID, b"payload", 100)))
    assert bytes(w.data) == b"payload" and w.offset == 100 and w.length == 7
    for kw in ({"data_offset": 0}, {"data_offset": 500}, {"length": 8}, {"data_offset": 113, "length": 7}):
        assert status_of(fileio.WriteRequest.parse,
                         msg(raw.header(raw.WRITE, 1) + raw.write_body(FID, b"payload", **kw))) \
            == NtStatus.INVALID_PARAMETER, kw


def test_lock_request():
    elements = struct.pack("<QQII", 10, 20, 2, 0) + struct.pack("<QQII", 50, 5, 4, 0)
    body = struct.pack("<HHI16s", 48, 2, 0x11, FID) + elements
    lk = fileio.LockRequest.parse(msg(raw.header(raw.LOCK, 1) + body))
    assert lk.locks == (fileio.LockElement(10, 20, 2), fileio.LockElement(50, 5, 4)) and lk.sequence == 0x11
    zero = struct.pack("<HHI16s", 48, 0, 0, FID) + elements
    assert status_of(fileio.LockRequest.parse, msg(raw.header(raw.LOCK, 1) + zero)) == NtStatus.INVALID_PARAMETER
    many = struct.pack("<HHI16s", 48, 0xFFFF, 0, FID) + elements
    assert status_of(fileio.LockRequest.parse, msg(raw.header(raw.LOCK, 1) + many)) == NtStatus.INVALID_PARAMETER


def test_ioctl_request():
    io = control.IoctlRequest.parse(msg(raw.header(raw.IOCTL, 1) + raw.ioctl_body(FID, 0x1401FC, b"abc")))
    assert (io.ctl_code, io.input, io.flags, io.file_id) == (0x1401FC, b"abc", 1, (0x1111, 0x2222))
    for kw in ({"input_offset": 10}, {"input_offset": 0x10000}, {"input_count": 4}):
        assert status_of(control.IoctlRequest.parse,
                         msg(raw.header(raw.IOCTL, 1) + raw.ioctl_body(FID, 1, b"abc", **kw))) \
            == NtStatus.INVALID_PARAMETER, kw


def test_query_and_set_info_requests():
    q = control.QueryInfoRequest.parse(msg(raw.header(raw.QUERY_INFO, 1) + raw.query_info_body(FID, 1, 18, 100)))
    assert (q.info_type, q.info_class, q.output_length, q.input) == (1, 18, 100, b"")
    body = struct.pack("<HBBIHHI16s", 33, 1, 20, 8, 96, 0, 0, FID) + struct.pack("<q", 4096)
    s = control.SetInfoRequest.parse(msg(raw.header(raw.SET_INFO, 1) + body))
    assert (s.info_type, s.info_class, s.buffer) == (1, 20, struct.pack("<q", 4096))
    bad = struct.pack("<HBBIHHI16s", 33, 1, 20, 9, 96, 0, 0, FID) + b"\0" * 8
    assert status_of(control.SetInfoRequest.parse, msg(raw.header(raw.SET_INFO, 1) + bad)) \
        == NtStatus.INVALID_PARAMETER


def test_session_setup_request():
    ss = session.SessionSetupRequest.parse(msg(raw.header(1, 1) + raw.session_setup_body(b"TOKEN", security_mode=2)))
    assert ss.token == b"TOKEN" and ss.security_mode == 2
    for kw in ({"offset": 4000}, {"length": 6}, {"offset": 30}, {"structure_size": 24}):
        assert status_of(session.SessionSetupRequest.parse,
                         msg(raw.header(1, 1) + raw.session_setup_body(b"TOKEN", **kw))) \
            == NtStatus.INVALID_PARAMETER, kw


def test_tree_connect_request():
    tc = session.TreeConnectRequest.parse(msg(raw.header(3, 1) + raw.tree_connect_body("\\\\host\\data")), 0x0311)
    assert tc.share_name == "data"
    bad = session.TreeConnectRequest.parse(msg(raw.header(3, 1) + raw.tree_connect_body("host\\data")), 0x0311)
    with pytest.raises(SmbError) as e:
        bad.share_name
    assert e.value.status == NtStatus.BAD_NETWORK_NAME


def test_error_response_layout():
    # 2.2.2: StructureSize 9, ErrorContextCount, Reserved, ByteCount, ErrorData (>= 1 byte).
    assert control.error_response() == b"\x09\x00\x00\x00\x00\x00\x00\x00\x00"
    assert control.error_response(b"abcd") == b"\x09\x00\x00\x00\x04\x00\x00\x00abcd"
