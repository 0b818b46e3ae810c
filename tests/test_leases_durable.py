"""SMB2 leases (smbd.server.leases) and durable handles (smbd.server.durable).

The wire tests check our codecs against layouts written out here again from MS-SMB2; the
peer tests drive a real smbdd with tests/smb2client.py, whose contexts and break messages
are built and parsed in this file from the spec, not with the server's codecs. Two clients
with different ClientGUIDs are served by two worker processes, so a break between them can
only have travelled through the kernel.
"""
from __future__ import annotations

import socket
import struct
import time
import uuid

import pytest

from smbd.status import NtStatus, SmbError
from smbd.wire import durable as wdurable
from smbd.wire import lease as wlease
from tests import smb2client as c
from tests.smbdd_process import PASSWORD, USER, Smbdd
from tests.test_oplocks import _leases_work

OPLOCK_BREAK, LOCK = 0x12, 0x0A
OPLOCK_LEVEL_BATCH, OPLOCK_LEVEL_LEASE = 0x09, 0xFF
R, H, W = 0x1, 0x2, 0x4
ACK_REQUIRED = 0x1
CAP_LEASING = 0x2
FLAG_REPLAY = 0x20000000
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_DUPLICATE_OBJECTID = 0xC000022A
STATUS_LOCK_NOT_GRANTED = 0xC0000055
STATUS_UNSUCCESSFUL = 0xC0000001
STATUS_SHARING_VIOLATION = 0xC0000043
SHARE_NONE = 0


# ---- contexts and messages, from MS-SMB2 ------------------------------------------------------

def rqls_v1(key: bytes, state: int) -> bytes:
    """SMB2_CREATE_REQUEST_LEASE, 2.2.13.2.8: LeaseKey(16) LeaseState(4) LeaseFlags(4) LeaseDuration(8)."""
    return c.create_context(b"RqLs", key + struct.pack("<IIQ", state, 0, 0))


def rqls_v2(key: bytes, state: int, epoch: int = 0, parent: bytes | None = None) -> bytes:
    """SMB2_CREATE_REQUEST_LEASE_V2, 2.2.13.2.10: ... ParentLeaseKey(16) Epoch(2) Reserved(2)."""
    flags = 0x4 if parent else 0
    return c.create_context(b"RqLs", key + struct.pack("<IIQ", state, flags, 0) + (parent or b"\0" * 16)
                            + struct.pack("<HH", epoch, 0))


def dhnq() -> bytes:
    return c.create_context(b"DHnQ", b"\0" * 16)  # 2.2.13.2.3


def dhnc(file_id: bytes) -> bytes:
    return c.create_context(b"DHnC", file_id)  # 2.2.13.2.4


def dh2q(create_guid: uuid.UUID, timeout_ms: int = 0) -> bytes:
    return c.create_context(b"DH2Q", struct.pack("<II8s", timeout_ms, 0, b"\0" * 8) + create_guid.bytes_le)


def dh2c(file_id: bytes, create_guid: uuid.UUID) -> bytes:
    return c.create_context(b"DH2C", file_id + create_guid.bytes_le + struct.pack("<I", 0))  # 2.2.13.2.12


def chain(*contexts: bytes) -> bytes:
    """Link contexts (2.2.13.2): each Next is the 8-aligned offset of the following one."""
    out = b""
    for i, ctx in enumerate(contexts):
        if i < len(contexts) - 1:
            size = (len(ctx) + 7) & ~7
            ctx = struct.pack("<I", size) + ctx[4:] + b"\0" * (size - len(ctx))
        out += ctx
    return out


def response_contexts(r: c.Response) -> dict[bytes, bytes]:
    """The create contexts of a CREATE response (2.2.14: offset/length at body 80/84)."""
    off, length = struct.unpack_from("<II", r.body, 80)
    out = {}
    pos = off
    while length:
        nxt, name_off, name_len, _, data_off, data_len = struct.unpack_from("<IHHHHI", r.raw, pos)
        out[r.raw[pos + name_off:pos + name_off + name_len]] = r.raw[pos + data_off:pos + data_off + data_len]
        if not nxt:
            break
        pos += nxt
    return out


def lease_of(r: c.Response) -> tuple[bytes, int, int]:
    """(LeaseKey, LeaseState, Epoch or -1 for v1) from a CREATE response's RqLs context."""
    data = response_contexts(r)[b"RqLs"]
    key, state = data[:16], struct.unpack_from("<I", data, 16)[0]
    epoch = struct.unpack_from("<H", data, 48)[0] if len(data) == 52 else -1
    return key, state, epoch


def lease_break(msg: c.Response) -> dict:
    """Lease Break Notification, 2.2.23.2."""
    size, epoch, flags, key, current, new = struct.unpack_from("<HHI16sII", msg.body)
    assert size == 44
    return {"epoch": epoch, "flags": flags, "key": key, "current": current, "new": new}


def lease_ack(client: c.RawClient, key: bytes, state: int) -> c.Response:
    """Lease Break Acknowledgment, 2.2.24.2: StructureSize 36, Reserved, Flags, LeaseKey, LeaseState, Duration."""
    return client.call(OPLOCK_BREAK, struct.pack("<HHI16sIQ", 36, 0, 0, key, state, 0))


def create_msg(client: c.RawClient, name: str, *, oplock: int = OPLOCK_LEVEL_LEASE, flags: int = 0,
               **kw) -> bytes:
    body = bytearray(c.create_body(name, **kw))
    body[3] = oplock  # RequestedOplockLevel, 2.2.13
    return client.build(c.CREATE, bytes(body), flags=flags)


def create(client: c.RawClient, name: str, **kw) -> c.Response:
    client.send_message(create_msg(client, name, **kw))
    return client.recv_final()


def expect_break(client: c.RawClient, timeout: float = 10) -> c.Response:
    client.sock.settimeout(timeout)
    msg = client.recv()
    assert msg.command == OPLOCK_BREAK and msg.message_id == 0xFFFFFFFFFFFFFFFF, msg
    return msg


def no_message(client: c.RawClient, timeout: float) -> bool:
    client.sock.settimeout(timeout)
    try:
        client.recv()
    except (socket.timeout, TimeoutError):
        return True
    finally:
        client.sock.settimeout(15)
    return False


# ---- wire ------------------------------------------------------------------------------------------

def test_lease_request_v1_and_v2_parse():
    key = bytes(range(16))
    v1 = wlease.LeaseRequest.parse(key + struct.pack("<IIQ", 7, 0, 0))
    assert (v1.key, v1.state, v1.version) == (key, 7, 1)
    parent = b"\xaa" * 16
    v2 = wlease.LeaseRequest.parse(key + struct.pack("<IIQ", 3, 4, 0) + parent + struct.pack("<HH", 9, 0))
    assert (v2.version, v2.state, v2.epoch, v2.parent_key, v2.has_parent) == (2, 3, 9, parent, True)
    for bad in (b"", key, key + b"\0" * 17, key + b"\0" * 40):
        with pytest.raises(SmbError) as e:
            wlease.LeaseRequest.parse(bad)
        assert e.value.status == NtStatus.INVALID_PARAMETER


def test_lease_break_notification_layout_follows_2_2_23_2():
    key = b"K" * 16
    msg = wlease.lease_break_notification(key, R | H | W, R | H, epoch=5, ack_required=True)
    hdr, body = msg[:64], msg[64:]
    assert struct.unpack_from("<H", hdr, 12)[0] == OPLOCK_BREAK
    assert struct.unpack_from("<Q", hdr, 24)[0] == 0xFFFFFFFFFFFFFFFF  # MessageId of a notification
    assert struct.unpack_from("<Q", hdr, 40)[0] == 0  # SessionId
    assert len(body) == 44
    assert struct.unpack("<HHI16sIIIII", body) == (44, 5, ACK_REQUIRED, key, 7, 3, 0, 0, 0)


def test_lease_ack_parse_and_response():
    key = b"Q" * 16
    msg = memoryview(b"\0" * 64 + struct.pack("<HHI16sIQ", 36, 0, 0, key, R, 0))
    ack = wlease.LeaseBreakAck.parse(msg)
    assert (ack.key, ack.state) == (key, R)
    with pytest.raises(SmbError):
        wlease.LeaseBreakAck.parse(memoryview(b"\0" * 64 + struct.pack("<HHI16sIQ", 24, 0, 0, key, R, 0)))
    assert wlease.lease_break_response(key, R) == struct.pack("<HHI16sIQ", 36, 0, 0, key, R, 0)


def test_durable_contexts_parse():
    guid = uuid.uuid4()
    req = wdurable.DurableV2Request.parse(struct.pack("<II8s", 1234, 0, b"\0" * 8) + guid.bytes_le)
    assert (req.timeout_ms, req.flags, req.create_guid) == (1234, 0, guid)
    rc = wdurable.DurableV2Reconnect.parse(struct.pack("<QQ", 1, 2) + guid.bytes_le + struct.pack("<I", 2))
    assert (rc.file_id, rc.create_guid, rc.flags) == ((1, 2), guid, 2)
    assert wdurable.parse_dhnc(struct.pack("<QQ", 5, 6)) == (5, 6)
    for fn, data in ((wdurable.DurableV2Request.parse, b"\0" * 31), (wdurable.DurableV2Reconnect.parse, b"\0" * 35),
                     (wdurable.parse_dhnc, b"\0" * 15), (wdurable.parse_dhnq, b"\0" * 8)):
        with pytest.raises(SmbError) as e:
            fn(data)
        assert e.value.status == NtStatus.INVALID_PARAMETER
    assert wdurable.dh2q_response(60000) == struct.pack("<II", 60000, 0)


# ---- against smbdd ---------------------------------------------------------------------------------

@pytest.fixture
def server(tmp_path):
    if not _leases_work(tmp_path):
        pytest.skip("kernel leases unavailable here")
    srv = Smbdd(tmp_path)
    yield srv
    srv.stop()


def client(server: Smbdd, guid: uuid.UUID | None = None) -> c.RawClient:
    return c.RawClient("127.0.0.1", server.port, timeout=15, client_guid=guid or uuid.uuid4()).login(
        USER, PASSWORD, "data")


RW_OPEN = dict(access=c.READ_WRITE_ACCESS, disposition=c.FILE_OPEN_IF)


@pytest.mark.peer
def test_negotiate_advertises_leasing(server):
    cl = c.RawClient("127.0.0.1", server.port, timeout=15)
    r = cl.negotiate()
    assert r.status == 0
    assert struct.unpack_from("<I", r.body, 24)[0] & CAP_LEASING  # 2.2.4 Capabilities
    cl.close()
    old = c.RawClient("127.0.0.1", server.port, timeout=15)
    r = old.negotiate(dialects=(0x0202,))
    assert r.status == 0 and not struct.unpack_from("<I", r.body, 24)[0] & CAP_LEASING
    old.close()


@pytest.mark.peer
def test_same_key_shares_the_lease_and_never_breaks_itself(server):
    a = client(server)
    key = uuid.uuid4().bytes
    r1 = create(a, "shared.dat", contexts=rqls_v1(key, R | H | W), **RW_OPEN)
    assert r1.status == 0 and r1.body[2] == OPLOCK_LEVEL_LEASE
    assert lease_of(r1)[:2] == (key, R | H | W)
    r2 = create(a, "shared.dat", contexts=rqls_v1(key, R | H | W), **RW_OPEN)
    assert r2.status == 0 and lease_of(r2)[:2] == (key, R | H | W)
    assert no_message(a, 0.5), "an open under the same key must not break its own lease"
    # 3.3.5.9.8: the same key on another file is refused.
    r3 = create(a, "other.dat", contexts=rqls_v1(key, R | H), **RW_OPEN)
    assert r3.status == STATUS_INVALID_PARAMETER


@pytest.mark.peer
def test_request_masks_ungrantable_states(server):
    a = client(server)
    for asked, granted in ((H, 0), (W, 0), (H | W, 0), (R, R), (R | H, R | H), (R | W, R | W)):
        key = uuid.uuid4().bytes
        r = create(a, f"mask{asked}.dat", contexts=rqls_v1(key, asked), **RW_OPEN)
        assert r.status == 0 and r.body[2] == OPLOCK_LEVEL_LEASE, hex(r.status)
        assert lease_of(r)[1] == granted, (asked, lease_of(r))
        assert a.call(c.CLOSE, c.close_body(r.file_id)).status == 0
    # No directory leases: no lease context, no oplock.
    r = create(a, "adir", contexts=rqls_v1(uuid.uuid4().bytes, R | H), access=c.READ_ACCESS,
               disposition=c.FILE_CREATE, options=0x1)
    assert r.status == 0 and r.body[2] == 0 and b"RqLs" not in response_contexts(r)


@pytest.mark.peer
def test_other_key_breaks_write_caching_and_waits_for_the_ack(server):
    """Within one client (one worker): key 2 opening breaks key 1 from RWH to RH, the
    CREATE waits for the acknowledgment, then key 2 gets RH (MS-SMB2 3.3.4.7)."""
    a = client(server)
    k1, k2 = uuid.uuid4().bytes, uuid.uuid4().bytes
    r1 = create(a, "brk.dat", contexts=rqls_v1(k1, R | H | W), **RW_OPEN)
    assert lease_of(r1)[1] == R | H | W
    a.send_message(create_msg(a, "brk.dat", contexts=rqls_v1(k2, R | H | W), **RW_OPEN))
    msgs = []
    a.sock.settimeout(10)
    while True:  # the interim response and the break may come in either order
        m = a.recv()
        msgs.append(m)
        if m.command == OPLOCK_BREAK:
            break
    brk = lease_break(msgs[-1])
    assert brk == {"epoch": 0, "flags": ACK_REQUIRED, "key": k1, "current": R | H | W, "new": R | H}
    assert all(m.status == c.STATUS_PENDING for m in msgs[:-1])
    ack = lease_ack(a, k1, R | H)
    assert ack.status == 0 and struct.unpack_from("<16sI", ack.body, 8) == (k1, R | H)
    r2 = a.recv_final()
    assert r2.status == 0 and lease_of(r2)[:2] == (k2, R | H)
    # The break is over: another acknowledgment is refused (3.3.5.22.2).
    assert lease_ack(a, k1, R | H).status == STATUS_UNSUCCESSFUL
    assert lease_ack(a, uuid.uuid4().bytes, 0).status == STATUS_OBJECT_NAME_NOT_FOUND


@pytest.mark.peer
def test_v2_lease_epoch_counts_changes(server):
    a = client(server)
    k1, k2 = uuid.uuid4().bytes, uuid.uuid4().bytes
    r1 = create(a, "epoch.dat", contexts=rqls_v2(k1, R | H | W, epoch=0), **RW_OPEN)
    assert lease_of(r1) == (k1, R | H | W, 1)
    a.send_message(create_msg(a, "epoch.dat", contexts=rqls_v2(k2, R | H), **RW_OPEN))
    while True:
        m = a.recv()
        if m.command == OPLOCK_BREAK:
            break
    brk = lease_break(m)
    assert (brk["epoch"], brk["current"], brk["new"]) == (2, R | H | W, R | H)
    assert lease_ack(a, k1, R | H).status == 0
    assert lease_of(a.recv_final())[1] == R | H


@pytest.mark.peer
def test_open_from_another_client_breaks_through_the_kernel(server):
    """Client A's lease (worker 1) is broken by client B's open (worker 2): A must flush
    and acknowledge before B's CREATE completes, and B then reads what A wrote."""
    a, b = client(server), client(server)
    key = uuid.uuid4().bytes
    r = create(a, "cross.dat", contexts=rqls_v1(key, R | H | W), **RW_OPEN)
    assert lease_of(r)[1] == R | H | W
    assert a.call(c.WRITE, c.write_body(r.file_id, b"cached by A")).status == 0
    b.send_message(create_msg(b, "cross.dat", oplock=0, access=c.READ_ACCESS))
    brk = lease_break(expect_break(a))
    assert brk["key"] == key and brk["flags"] == ACK_REQUIRED and brk["current"] == R | H | W
    assert not brk["new"] & W
    interim = b.recv()
    assert interim.status == c.STATUS_PENDING
    assert no_message(b, 0.5), "B's open must wait for A's acknowledgment"
    assert lease_ack(a, key, brk["new"]).status == 0
    b.sock.settimeout(10)
    done = b.recv_final()
    assert done.status == 0
    rd = b.call(c.READ, c.read_body(done.file_id, 100))
    assert rd.status == 0 and rd.body[16:] == b"cached by A"


def _reconnect(server: Smbdd, guid: uuid.UUID, contexts: bytes, name: str = "ignored") -> tuple[c.RawClient, c.Response]:
    cl = client(server, guid)
    return cl, create(cl, name, oplock=OPLOCK_LEVEL_LEASE if b"RqLs" in contexts else OPLOCK_LEVEL_BATCH,
                      contexts=contexts)


@pytest.mark.peer
def test_durable_v2_lease_survives_a_dropped_connection(server):
    guid, cguid, key = uuid.uuid4(), uuid.uuid4(), uuid.uuid4().bytes
    a = client(server, guid)
    r = create(a, "dur2.dat", contexts=chain(rqls_v2(key, R | H | W), dh2q(cguid, 30000)), **RW_OPEN)
    assert r.status == 0 and lease_of(r)[1] == R | H | W
    assert response_contexts(r)[b"DH2Q"] == struct.pack("<II", 30000, 0)
    fid = r.file_id
    assert a.call(c.WRITE, c.write_body(fid, b"before the drop")).status == 0
    # A byte-range lock must stay with the kept handle.
    lock = struct.pack("<HHIQQQQI4x", 48, 1, 0, *struct.unpack("<QQ", fid), 0, 5, 0x2 | 0x10)
    assert a.call(LOCK, lock).status == 0
    a.close()
    time.sleep(0.5)
    # The wrong CreateGuid finds nothing; the right one on a new session gets the handle back.
    b, bad = _reconnect(server, guid, chain(rqls_v2(key, R | H | W), dh2c(fid, uuid.uuid4())))
    assert bad.status == STATUS_OBJECT_NAME_NOT_FOUND
    # With a lease the name must match (3.3.5.9.12): another one is INVALID_PARAMETER.
    wrong = create(b, "other.dat", contexts=chain(rqls_v2(key, R | H | W), dh2c(fid, cguid)))
    assert wrong.status == STATUS_INVALID_PARAMETER
    good = create(b, "dur2.dat", contexts=chain(rqls_v2(key, R | H | W), dh2c(fid, cguid)))
    assert good.status == 0, hex(good.status)
    assert good.file_id == fid and lease_of(good)[:2] == (key, R | H | W)
    assert b"DH2Q" not in response_contexts(good)
    rd = b.call(c.READ, c.read_body(fid, 100))
    assert rd.status == 0 and rd.body[16:] == b"before the drop"
    # The byte-range lock came back with the handle: another client (after breaking the
    # lease, acknowledged by the reconnected client) cannot take the range.
    other = client(server)
    other.send_message(create_msg(other, "dur2.dat", oplock=0, access=c.READ_ACCESS))
    brk = lease_break(expect_break(b))
    assert lease_ack(b, key, brk["new"]).status == 0
    ro = other.recv_final()
    assert ro.status == 0
    olock = struct.pack("<HHIQQQQI4x", 48, 1, 0, *struct.unpack("<QQ", ro.file_id), 0, 5, 0x2 | 0x10)
    assert other.call(LOCK, olock).status == STATUS_LOCK_NOT_GRANTED
    assert b.call(c.CLOSE, c.close_body(fid)).status == 0


@pytest.mark.peer
def test_durable_v1_batch_oplock_reconnect(server):
    guid = uuid.uuid4()
    a = client(server, guid)
    r = create(a, "dur1.dat", oplock=OPLOCK_LEVEL_BATCH, contexts=dhnq(), **RW_OPEN)
    assert r.status == 0 and r.body[2] == OPLOCK_LEVEL_BATCH
    assert response_contexts(r)[b"DHnQ"] == b"\0" * 8
    fid = r.file_id
    # 3.3.5.9.7: not while the handle is still connected.
    assert create(a, "dur1.dat", oplock=OPLOCK_LEVEL_BATCH, contexts=dhnc(fid)).status == STATUS_OBJECT_NAME_NOT_FOUND
    a.close()
    time.sleep(0.3)
    b, again = _reconnect(server, guid, dhnc(fid))
    assert again.status == 0 and again.file_id == fid and again.body[2] == OPLOCK_LEVEL_BATCH
    assert b.call(c.CLOSE, c.close_body(fid)).status == 0
    b.close()
    time.sleep(0.3)
    c2, gone = _reconnect(server, guid, dhnc(fid))
    assert gone.status == STATUS_OBJECT_NAME_NOT_FOUND  # closed for good


@pytest.mark.peer
def test_no_durability_without_handle_caching(server):
    a = client(server)
    r = create(a, "nodur.dat", contexts=chain(rqls_v1(uuid.uuid4().bytes, R | W), dhnq()), **RW_OPEN)
    assert r.status == 0 and lease_of(r)[1] == R | W
    assert b"DHnQ" not in response_contexts(r)


@pytest.mark.peer
def test_durable_handle_expires(server):
    """Two kept handles with a 1 s timeout: one reclaimed at once comes back, the other,
    reclaimed after its timeout, is gone (and its share mode with it)."""
    guid = uuid.uuid4()
    a = client(server, guid)
    handles = {}
    for name in ("keep.dat", "expire.dat"):
        cguid, key = uuid.uuid4(), uuid.uuid4().bytes
        r = create(a, name, contexts=chain(rqls_v2(key, R | H), dh2q(cguid, 1000)), share=SHARE_NONE, **RW_OPEN)
        assert r.status == 0 and response_contexts(r)[b"DH2Q"][:4] == struct.pack("<I", 1000)
        handles[name] = (r.file_id, cguid, key)
    a.close()
    time.sleep(0.3)
    fid, cguid, key = handles["keep.dat"]
    b, back = _reconnect(server, guid, chain(rqls_v2(key, R | H), dh2c(fid, cguid)), "keep.dat")
    assert back.status == 0 and back.file_id == fid
    time.sleep(2.5)
    fid, cguid, key = handles["expire.dat"]
    gone = create(b, "expire.dat", contexts=chain(rqls_v2(key, R | H), dh2c(fid, cguid)))
    assert gone.status == STATUS_OBJECT_NAME_NOT_FOUND
    other = client(server)
    assert create(other, "expire.dat", oplock=0, access=c.READ_ACCESS).status == 0  # no share mode left


@pytest.mark.peer
def test_kept_handle_closes_on_a_conflicting_open(server):
    """A disconnected durable handle cannot hear a break: another client's open closes it
    (and only it: another kept handle of the same client survives)."""
    guid = uuid.uuid4()
    a = client(server, guid)
    handles = {}
    for name in ("conflict.dat", "bystander.dat"):
        cguid, key = uuid.uuid4(), uuid.uuid4().bytes
        r = create(a, name, contexts=chain(rqls_v2(key, R | H | W), dh2q(cguid, 60000)), **RW_OPEN)
        assert r.status == 0 and b"DH2Q" in response_contexts(r)
        handles[name] = (r.file_id, cguid, key)
    a.close()
    time.sleep(0.5)
    other = client(server)
    got = create(other, "conflict.dat", oplock=0, access=c.READ_WRITE_ACCESS)
    assert got.status == 0, hex(got.status)
    other.close()
    fid, cguid, key = handles["conflict.dat"]
    b, gone = _reconnect(server, guid, chain(rqls_v2(key, R | H | W), dh2c(fid, cguid)), "conflict.dat")
    assert gone.status == STATUS_OBJECT_NAME_NOT_FOUND
    fid, cguid, key = handles["bystander.dat"]
    back = create(b, "bystander.dat", contexts=chain(rqls_v2(key, R | H | W), dh2c(fid, cguid)))
    assert back.status == 0 and back.file_id == fid


@pytest.mark.peer
def test_create_guid_replay(server):
    """3.3.5.9.10: a CreateGuid in use is refused, unless the request is a replay, which
    gets the same handle back."""
    a = client(server)
    cguid = uuid.uuid4()
    ctx = chain(rqls_v2(uuid.uuid4().bytes, R | H), dh2q(cguid))
    first = create(a, "replay.dat", contexts=ctx, **RW_OPEN)
    assert first.status == 0
    assert create(a, "replay.dat", contexts=ctx, **RW_OPEN).status == STATUS_DUPLICATE_OBJECTID
    again = create(a, "replay.dat", contexts=ctx, flags=FLAG_REPLAY, **RW_OPEN)
    assert again.status == 0 and again.file_id == first.file_id


@pytest.mark.peer
def test_lock_sequence_replay_on_a_durable_handle(server):
    """3.3.5.14: a LOCK repeating the LockSequence (index 1..64) of the last successful one
    in its bucket is a replay: SUCCESS without doing anything (the range stays locked)."""
    a = client(server)
    r = create(a, "lockseq.dat", oplock=OPLOCK_LEVEL_BATCH, contexts=dhnq(), **RW_OPEN)
    assert r.status == 0 and b"DHnQ" in response_contexts(r)
    fid = struct.unpack("<QQ", r.file_id)

    def lock(sequence: int, flags: int) -> int:
        body = struct.pack("<HHIQQQQI4x", 48, 1, sequence, *fid, 100, 100, flags)
        return a.call(LOCK, body).status

    exclusive, unlock = 0x2 | 0x10, 0x4
    assert lock(0x11, exclusive) == 0
    assert lock(0x11, exclusive) == 0  # replay: not a second (conflicting) lock
    assert lock(0x11, unlock) == 0  # replay too: nothing is unlocked
    assert lock(0x12, exclusive) == STATUS_LOCK_NOT_GRANTED  # new number: really done, and refused
    assert lock(0x21, exclusive) == STATUS_LOCK_NOT_GRANTED  # another bucket
    assert lock(0x01, exclusive) == STATUS_LOCK_NOT_GRANTED  # index 0: no replay detection
    assert lock(0x22, unlock) == 0
    assert lock(0x22, unlock) == 0  # replayed unlock
    assert lock(0x23, unlock) == 0xC000007E  # STATUS_RANGE_NOT_LOCKED: a real second unlock


def _collect_until_break(cl: c.RawClient) -> tuple[list[c.Response], c.Response]:
    """Read messages until a break notification: (what came before it, the break)."""
    before = []
    cl.sock.settimeout(10)
    while True:
        m = cl.recv()
        if m.command == OPLOCK_BREAK:
            return before, m
        before.append(m)


@pytest.mark.peer
def test_overwrite_waits_for_cached_writes(server):
    """An overwrite breaks another key's RWH lease to none and is held until the holder has
    acknowledged (flushed): it must not truncate under cached data (3.3.4.7)."""
    a = client(server)
    k1 = uuid.uuid4().bytes
    r1 = create(a, "ow.dat", contexts=rqls_v1(k1, R | H | W), **RW_OPEN)
    assert lease_of(r1)[1] == R | H | W
    a.send_message(create_msg(a, "ow.dat", oplock=0, access=c.READ_WRITE_ACCESS, disposition=c.FILE_OVERWRITE_IF))
    before, m = _collect_until_break(a)
    brk = lease_break(m)
    assert (brk["current"], brk["new"], brk["flags"]) == (R | H | W, 0, ACK_REQUIRED)
    assert all(x.status == c.STATUS_PENDING for x in before)
    assert no_message(a, 0.3), "the overwrite must wait for the acknowledgment"
    assert lease_ack(a, k1, 0).status == 0
    assert a.recv_final().status == 0


@pytest.mark.peer
def test_sharing_violation_breaks_handle_caching_first(server):
    """A sharing violation against a lease with H breaks H (RH -> R) and waits: a client
    that closes its cached handle on the break lets the new open succeed."""
    a = client(server)
    k1, k2 = uuid.uuid4().bytes, uuid.uuid4().bytes
    r1 = create(a, "sv.dat", contexts=rqls_v1(k1, R | H), share=0x1, **RW_OPEN)  # shares READ only
    assert lease_of(r1)[1] == R | H
    a.send_message(create_msg(a, "sv.dat", contexts=rqls_v1(k2, R | H), **RW_OPEN))
    before, m = _collect_until_break(a)
    brk = lease_break(m)
    assert (brk["key"], brk["current"], brk["new"], brk["flags"]) == (k1, R | H, R, ACK_REQUIRED)
    # The cached handle is closed in answer to the break; then the open goes through.
    a.send_message(a.build(c.CLOSE, c.close_body(r1.file_id)))
    closed = a.recv()
    assert closed.command == c.CLOSE and closed.status == 0
    done = a.recv_final()
    assert done.status == 0 and lease_of(done)[:2] == (k2, R | H)


# ---- reconnects that reach another worker (issue 11) ---------------------------------------------

def _served_by_two_workers(server: Smbdd) -> bool:
    return len(set(server.worker_pids())) >= 2


NIL_GUID = uuid.UUID(int=0)  # as smbtorture sends: smbdd gives each such connection its own worker


@pytest.mark.peer
def test_durable_v2_lease_reconnects_from_another_worker(server):
    """A client without a ClientGUID gets a new worker per connection: the Open, its data,
    its lease and its byte-range lock come over from the worker that kept it."""
    cguid, key = uuid.uuid4(), uuid.uuid4().bytes
    a = client(server, NIL_GUID)
    r = create(a, "moved.dat", contexts=chain(rqls_v2(key, R | H | W), dh2q(cguid, 30000)), **RW_OPEN)
    assert r.status == 0 and lease_of(r)[1] == R | H | W
    fid = r.file_id
    assert a.call(c.WRITE, c.write_body(fid, b"written on worker one")).status == 0
    lock = struct.pack("<HHIQQQQI4x", 48, 1, 0, *struct.unpack("<QQ", fid), 0, 5, 0x2 | 0x10)
    assert a.call(LOCK, lock).status == 0
    a.close()
    time.sleep(0.5)
    b, bad = _reconnect(server, NIL_GUID, chain(rqls_v2(key, R | H | W), dh2c(fid, uuid.uuid4())))
    assert bad.status == STATUS_OBJECT_NAME_NOT_FOUND  # the global record's checks apply
    # A lease is its client's: another ClientGUID does not get the Open (reopen1a-lease).
    stranger, foreign = _reconnect(server, uuid.uuid4(), chain(rqls_v2(key, R | H | W), dh2c(fid, cguid)),
                                   "moved.dat")
    assert foreign.status == STATUS_OBJECT_NAME_NOT_FOUND
    good = create(b, "moved.dat", contexts=chain(rqls_v2(key, R | H | W), dh2c(fid, cguid)))
    assert good.status == 0, hex(good.status)
    assert _served_by_two_workers(server), server.worker_pids()
    assert good.file_id[:8] == fid[:8] and lease_of(good)[:2] == (key, R | H | W)
    new_fid = good.file_id
    rd = b.call(c.READ, c.read_body(new_fid, 100))
    assert rd.status == 0 and rd.body[16:] == b"written on worker one"
    # The lease is backed here now: a third client's open breaks it through this worker.
    other = client(server)
    other.send_message(create_msg(other, "moved.dat", oplock=0, access=c.READ_ACCESS))
    brk = lease_break(expect_break(b))
    assert brk["key"] == key
    assert lease_ack(b, key, brk["new"]).status == 0
    ro = other.recv_final()
    assert ro.status == 0
    olock = struct.pack("<HHIQQQQI4x", 48, 1, 0, *struct.unpack("<QQ", ro.file_id), 0, 5, 0x2 | 0x10)
    assert other.call(LOCK, olock).status == STATUS_LOCK_NOT_GRANTED  # the lock came along
    # A lock request breaks other keys' R to none, granted or not (MS-FSA 2.1.5.7).
    brk = lease_break(expect_break(b))
    assert brk["key"] == key and brk["new"] == 0
    assert b.call(c.CLOSE, c.close_body(new_fid)).status == 0
    assert other.call(LOCK, olock).status == 0  # and went with the close


@pytest.mark.peer
def test_durable_v2_oplock_reconnects_under_another_client_guid(server):
    """Without a lease the ClientGUID may change (as Samba allows, smbtorture
    durable-v2-open.reopen2): a batch-oplock v2 handle moves to the new client's worker."""
    cguid = uuid.uuid4()
    a = client(server, uuid.uuid4())
    r = create(a, "v2op.dat", oplock=OPLOCK_LEVEL_BATCH, contexts=dh2q(cguid, 30000), **RW_OPEN)
    assert r.status == 0 and r.body[2] == OPLOCK_LEVEL_BATCH
    assert a.call(c.WRITE, c.write_body(r.file_id, b"v2 data")).status == 0
    a.close()
    time.sleep(0.3)
    b, back = _reconnect(server, uuid.uuid4(), dh2c(r.file_id, cguid), "v2op.dat")
    assert back.status == 0 and back.body[2] == OPLOCK_LEVEL_BATCH, hex(back.status)
    assert _served_by_two_workers(server)
    rd = b.call(c.READ, c.read_body(back.file_id, 100))
    assert rd.status == 0 and rd.body[16:] == b"v2 data"


@pytest.mark.peer
def test_previous_session_of_another_worker_is_ended_and_its_handle_moves(server):
    """smbtorture durable-open.reopen1a: a new connection with another ClientGUID names the
    old session as PreviousSessionId; the old connection's session is gone at once, and its
    batch-oplock durable handle reconnects on the new session."""
    a = client(server, uuid.uuid4())
    r = create(a, "prev.dat", oplock=OPLOCK_LEVEL_BATCH, contexts=dhnq(), **RW_OPEN)
    assert r.status == 0 and r.body[2] == OPLOCK_LEVEL_BATCH
    fid = r.file_id
    b = c.RawClient("127.0.0.1", server.port, timeout=15, client_guid=uuid.uuid4())
    assert b.negotiate().status == 0
    assert b.session_setup(USER, PASSWORD, previous_session_id=a.session_id).status == 0
    assert b.tree_connect("data").status == 0
    assert create(a, "prev.dat", oplock=0).status == 0xC0000203  # USER_SESSION_DELETED
    again = create(b, "prev.dat", oplock=OPLOCK_LEVEL_BATCH, contexts=dhnc(fid))
    assert again.status == 0, hex(again.status)
    assert again.body[2] == OPLOCK_LEVEL_BATCH
    assert _served_by_two_workers(server)
    assert b.call(c.CLOSE, c.close_body(again.file_id)).status == 0


@pytest.mark.peer
def test_durable_record_of_a_killed_worker_is_gone(server):
    """A worker killed with -9 takes its kept handles with it (their descriptors, so their
    locks): the reconnect finds nothing, and nothing else is blocked."""
    import os
    import signal

    from tests.smbdd_process import wait_until

    a = client(server, uuid.uuid4())
    r = create(a, "killed.dat", oplock=OPLOCK_LEVEL_BATCH, contexts=dhnq(), share=SHARE_NONE, **RW_OPEN)
    assert r.status == 0
    fid = r.file_id
    a.close()
    time.sleep(0.3)
    victim = server.worker_pids()[-1]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: f"worker {victim} for client" in server.log(), 10)
    b, gone = _reconnect(server, uuid.uuid4(), dhnc(fid))
    assert gone.status == STATUS_OBJECT_NAME_NOT_FOUND
    assert create(b, "killed.dat", oplock=0, access=c.READ_ACCESS).status == 0
