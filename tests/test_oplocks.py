"""Oplocks backed by kernel leases (smbd.server.oplocks): wire layouts, the kernel facts the
design rests on, the manager on its own, and real clients against smbdd.

The client side is tests/smb2client.py, which spells every layout out from MS-SMB2 again;
two connections with different ClientGUIDs are served by two worker processes, so a break
between them can only have travelled through the kernel.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import signal
import socket
import struct
import threading
import time
import uuid

import pytest

from smbd.server.oplocks import (LEASE_SIGNAL, OVERFLOW_SIGNAL, OplockManager, SignalFd, drop_lease,
                                   take_lease)
from smbd.status import NtStatus, SmbError
from tests import smb2client as c
from tests.smbdd_process import PASSWORD, USER, Smbdd

OPLOCK_BREAK = 0x12
LEVEL_NONE, LEVEL_II, LEVEL_EXCLUSIVE, LEVEL_BATCH = 0x00, 0x01, 0x08, 0x09
STATUS_SUCCESS = 0
STATUS_PENDING = 0x00000103
STATUS_FILE_CLOSED = 0xC0000128
STATUS_INVALID_OPLOCK_PROTOCOL = 0xC00000E3
STATUS_INVALID_PARAMETER = 0xC000000D


def _leases_work(path) -> bool:
    """Kernel leases need fs.leases-enable and a filesystem that has them (tmpfs, ext4...)."""
    try:
        if open("/proc/sys/fs/leases-enable").read().strip() != "1":
            return False
    except OSError:
        return False
    probe = path / "lease-probe"
    probe.write_bytes(b"")
    fd = os.open(probe, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()


@pytest.fixture
def lease_dir(tmp_path):
    if not _leases_work(tmp_path):
        pytest.skip("kernel leases unavailable here")
    return tmp_path


@pytest.fixture
def lease_signals_blocked():
    """Block the lease signals in this thread (and threads it starts) for one test, as
    smbd.worker does for the whole process; drain what is left before unblocking, since
    a pending real-time signal would kill the test process once unblocked."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {LEASE_SIGNAL, OVERFLOW_SIGNAL})
    try:
        yield
    finally:
        while signal.sigtimedwait({LEASE_SIGNAL, OVERFLOW_SIGNAL}, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ---- wire: MS-SMB2 2.2.23.1, 2.2.24.1, 2.2.25.1 ------------------------------------------------

def test_notification_layout_follows_2_2_23_1():
    from smbd.wire.oplock import oplock_break_notification

    msg = oplock_break_notification(LEVEL_II, (0x1122334455667788, 0x99))
    assert len(msg) == 64 + 24
    # 2.2.1.2 header: ProtocolId, StructureSize 64, Command OPLOCK_BREAK, Flags SERVER_TO_REDIR,
    # MessageId all ones, TreeId 0, SessionId 0, no signature.
    assert msg[:4] == b"\xfeSMB" and struct.unpack_from("<H", msg, 4)[0] == 64
    assert struct.unpack_from("<H", msg, 12)[0] == OPLOCK_BREAK
    assert struct.unpack_from("<I", msg, 16)[0] == 0x1
    assert struct.unpack_from("<Q", msg, 24)[0] == 0xFFFFFFFFFFFFFFFF
    assert struct.unpack_from("<I", msg, 36)[0] == 0 and struct.unpack_from("<Q", msg, 40)[0] == 0
    assert msg[48:64] == b"\0" * 16
    # body: StructureSize 24, OplockLevel, Reserved, Reserved2, FileId (Persistent, Volatile)
    assert msg[64:] == (b"\x18\x00" + b"\x01" + b"\x00" + b"\0" * 4
                        + bytes.fromhex("8877665544332211") + bytes.fromhex("9900000000000000"))


def test_ack_parse_and_response_layout():
    from smbd.wire.oplock import OplockBreakAck, oplock_break_response

    fid = bytes(range(16))
    msg = memoryview(b"\0" * 64 + b"\x18\x00\x01\x00" + b"\0" * 4 + fid)
    ack = OplockBreakAck.parse(msg)
    assert ack.oplock_level == LEVEL_II
    assert ack.file_id == struct.unpack("<QQ", fid)
    assert oplock_break_response(LEVEL_NONE, ack.file_id) == b"\x18\x00\x00\x00" + b"\0" * 4 + fid


@pytest.mark.parametrize("raw", [
    b"\x18\x00\x01\x00" + b"\0" * 4 + b"\0" * 15,  # cut short
    b"\x24\x00\x01\x00" + b"\0" * 32,  # a lease break acknowledgment (36): no leases granted
    b"",
])
def test_malformed_ack_is_invalid_parameter(raw):
    from smbd.wire.oplock import OplockBreakAck

    with pytest.raises(SmbError) as e:
        OplockBreakAck.parse(memoryview(b"\0" * 64 + raw))
    assert e.value.status == NtStatus.INVALID_PARAMETER


# ---- the kernel facts the design rests on --------------------------------------------------------

def test_write_lease_only_without_other_opens(lease_dir, lease_signals_blocked):
    path = lease_dir / "f"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDWR)
    other = os.open(path, os.O_RDONLY)
    try:
        assert not take_lease(fd, fcntl.F_WRLCK)  # another open file description exists
        os.close(other)
        other = -1
        assert take_lease(fd, fcntl.F_WRLCK)
        assert fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_WRLCK
    finally:
        if other >= 0:
            os.close(other)
        os.close(fd)


def test_dropping_a_lease_twice_is_quiet(lease_dir, lease_signals_blocked, caplog):
    """The second F_UNLCK finds no lease (EAGAIN): nothing to warn about."""
    path = lease_dir / "f"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDWR)
    try:
        assert take_lease(fd, fcntl.F_WRLCK)
        with caplog.at_level(logging.WARNING, logger="smbd.oplocks"):
            drop_lease(fd)
            assert fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_UNLCK
            with pytest.raises(OSError) as e:
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            assert e.value.errno == errno.EAGAIN  # the kernel fact the quiet drop rests on
            drop_lease(fd)
        assert not [r for r in caplog.records if "F_SETLEASE" in r.getMessage()]
    finally:
        os.close(fd)


def test_read_lease_refused_on_writable_fd(lease_dir, lease_signals_blocked):
    path = lease_dir / "f"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDWR)
    try:
        assert not take_lease(fd, fcntl.F_RDLCK)
    finally:
        os.close(fd)


def test_signalfd_names_the_leased_fd_and_opener_waits(lease_dir, lease_signals_blocked):
    """Another open of the file (our own process too) blocks until the lease is dropped,
    and the signal read from the signalfd names our fd (ssi_fd)."""
    path = lease_dir / "f"
    path.write_bytes(b"x")
    sfd = SignalFd((LEASE_SIGNAL, OVERFLOW_SIGNAL))
    fd = os.open(path, os.O_RDWR)
    done = threading.Event()
    try:
        assert take_lease(fd, fcntl.F_WRLCK)
        t = threading.Thread(target=lambda: (os.close(os.open(path, os.O_RDONLY)), done.set()))
        t.start()
        signals = []
        deadline = time.monotonic() + 10
        while not signals and time.monotonic() < deadline:
            signals = sfd.read()
            time.sleep(0.01)
        assert (int(LEASE_SIGNAL), fd) in signals
        # The kernel says what the opener needs: it only reads, so a read lease would do.
        assert fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_RDLCK
        assert not done.wait(0.3), "the opener must wait for the lease holder"
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        assert done.wait(10)
        t.join()
    finally:
        os.close(fd)
        sfd.close()


# ---- the manager on its own ---------------------------------------------------------------------

class _FakeConnection:
    closed = False

    def __init__(self):
        self.sent: list[tuple[bytes, bool]] = []
        self.event = asyncio.Event()

    async def send_unsolicited(self, message: bytes, session, encrypt: bool) -> None:
        self.sent.append((message, encrypt))
        self.event.set()


def _make_open(fd: int, conn, access: int = 0x1 | 0x2):
    from smbd.server.objects import Open, Session, TreeConnect

    session = Session(session_id=7, dialect=0x311)
    tree = TreeConnect(tree_id=1, session=session, share=None, vfs=None, maximal_access=0x1F01FF)
    return Open(1, 42, session, tree, access, 7, ("f",), fd, False, 0, connection=conn)


def test_manager_grant_break_ack(lease_dir, lease_signals_blocked):
    """Batch on a read-only handle, a reader opens: break to level II, ack II, lease downgraded."""
    path = lease_dir / "f"
    path.write_bytes(b"x")

    async def scenario():
        mgr = OplockManager(ack_timeout=10)
        assert mgr.start(asyncio.get_running_loop())
        conn = _FakeConnection()
        fd = os.open(path, os.O_RDONLY)
        op = _make_open(fd, conn, access=0x1)
        try:
            assert mgr.grant(op, LEVEL_BATCH) == LEVEL_BATCH
            opened = asyncio.get_running_loop().run_in_executor(None, lambda: os.close(os.open(path, os.O_RDONLY)))
            await asyncio.wait_for(conn.event.wait(), 10)
            message, encrypt = conn.sent[0]
            assert message[64 + 2] == LEVEL_II and message[72:88] == struct.pack("<QQ", 1, 42)
            assert not encrypt
            assert mgr.breaking(op)
            await asyncio.sleep(0.2)
            assert not opened.done()
            with pytest.raises(SmbError) as e:
                mgr.acknowledge(op, LEVEL_BATCH)
            assert e.value.status == NtStatus.INVALID_PARAMETER
            assert mgr.acknowledge(op, LEVEL_II) == LEVEL_II
            await asyncio.wait_for(opened, 10)
            assert fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_RDLCK
            assert mgr.level(op) == LEVEL_II
            with pytest.raises(SmbError) as e:
                mgr.acknowledge(op, LEVEL_NONE)  # no break in progress any more
            assert e.value.status == NtStatus.INVALID_OPLOCK_PROTOCOL
        finally:
            mgr.stop()
            os.close(fd)

    asyncio.run(scenario())


def test_manager_ack_timeout_releases(lease_dir, lease_signals_blocked):
    """A client that never acknowledges loses the oplock when the timer fires (3.3.2.1)."""
    path = lease_dir / "f"
    path.write_bytes(b"x")

    async def scenario():
        mgr = OplockManager(ack_timeout=0.5)
        assert mgr.start(asyncio.get_running_loop())
        conn = _FakeConnection()
        fd = os.open(path, os.O_RDWR)
        op = _make_open(fd, conn)
        try:
            assert mgr.grant(op, LEVEL_EXCLUSIVE) == LEVEL_EXCLUSIVE
            started = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, lambda: os.close(os.open(path, os.O_RDWR)))
            waited = time.monotonic() - started
            assert conn.sent and conn.sent[0][0][64 + 2] == LEVEL_NONE  # writable handle: to none
            assert 0.4 < waited < 5, waited
            assert mgr.level(op) == LEVEL_NONE
            assert fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_UNLCK
        finally:
            mgr.stop()
            os.close(fd)

    asyncio.run(scenario())


def test_manager_grants_nothing_unless_started(lease_dir):
    path = lease_dir / "f"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDWR)
    try:
        assert OplockManager().grant(_make_open(fd, _FakeConnection()), LEVEL_BATCH) == LEVEL_NONE
        assert fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_UNLCK
    finally:
        os.close(fd)


# ---- real clients against smbdd -----------------------------------------------------------------

@pytest.fixture
def server(lease_dir):
    srv = Smbdd(lease_dir)
    yield srv
    srv.stop()


def _client(server: Smbdd) -> c.RawClient:
    return c.RawClient("127.0.0.1", server.port, timeout=15, client_guid=uuid.uuid4()).login(
        USER, PASSWORD, "data")


def _create(client: c.RawClient, name: str, oplock: int, **kw) -> bytes:
    """A CREATE message asking for ``oplock`` (RequestedOplockLevel is byte 3 of 2.2.13)."""
    body = bytearray(c.create_body(name, **kw))
    body[3] = oplock
    return client.build(c.CREATE, bytes(body))


def _open(client: c.RawClient, name: str, oplock: int, **kw) -> tuple[bytes, int]:
    client.send_message(_create(client, name, oplock, **kw))
    r = client.recv_final()
    assert r.status == STATUS_SUCCESS, hex(r.status)
    return r.file_id, r.body[2]  # CREATE response 2.2.14: OplockLevel at body offset 2


def _ack(client: c.RawClient, file_id: bytes, level: int) -> c.Response:
    return client.call(OPLOCK_BREAK, struct.pack("<HBBI", 24, level, 0, 0) + file_id)


def _expect_break(client: c.RawClient, timeout: float = 10) -> c.Response:
    client.sock.settimeout(timeout)
    msg = client.recv()
    assert msg.command == OPLOCK_BREAK and msg.message_id == 0xFFFFFFFFFFFFFFFF, msg
    assert msg.session_id == 0 and msg.tree_id == 0
    return msg


def _no_message(client: c.RawClient, timeout: float) -> bool:
    client.sock.settimeout(timeout)
    try:
        client.recv()
    except (socket.timeout, TimeoutError):
        return True
    return False


@pytest.mark.peer
def test_break_between_two_workers(server):
    """Client A (worker 1) holds a batch oplock and has written; client B (worker 2) opens:
    A is told to break to level II (as Windows breaks it for another client's open), B's
    CREATE waits (interim STATUS_PENDING only) until A acknowledges, and B then reads what
    A wrote."""
    a, b = _client(server), _client(server)
    fid_a, level = _open(a, "shared.txt", LEVEL_BATCH, access=c.READ_WRITE_ACCESS, disposition=c.FILE_OPEN_IF)
    assert level == LEVEL_BATCH
    assert a.call(c.WRITE, c.write_body(fid_a, b"written by A before the break")).status == STATUS_SUCCESS
    assert len(set(server.worker_pids())) == 2

    b.send_message(_create(b, "shared.txt", LEVEL_BATCH))
    brk = _expect_break(a)
    assert brk.body[:2] == b"\x18\x00" and brk.body[8:24] == fid_a
    assert brk.body[2] == LEVEL_II  # decided by the workers (smbd.server.caching), not the kernel
    interim = b.recv()
    assert interim.status == STATUS_PENDING and interim.flags & c.FLAG_ASYNC
    assert _no_message(b, 0.5), "B's open must wait for A's acknowledgment"

    resp = _ack(a, fid_a, LEVEL_NONE)
    assert resp.status == STATUS_SUCCESS and resp.body[:3] == b"\x18\x00\x00" and resp.body[8:24] == fid_a
    b.sock.settimeout(10)
    done = b.recv_final()
    assert done.status == STATUS_SUCCESS
    assert done.body[2] == LEVEL_II  # A still has the file open: no batch for B, level II
    r = b.call(c.READ, c.read_body(done.file_id, 100))
    assert r.status == STATUS_SUCCESS and r.body[16:] == b"written by A before the break"
    # The break is over: acknowledging again is a protocol error (3.3.5.22.1).
    assert _ack(a, fid_a, LEVEL_NONE).status == STATUS_INVALID_OPLOCK_PROTOCOL


@pytest.mark.peer
def test_local_process_open_breaks_oplock(server):
    client = _client(server)
    fid, level = _open(client, "local.txt", LEVEL_BATCH, access=c.READ_WRITE_ACCESS, disposition=c.FILE_OPEN_IF)
    assert level == LEVEL_BATCH
    assert client.call(c.WRITE, c.write_body(fid, b"cached by the client")).status == STATUS_SUCCESS
    result = {}

    def local_open():
        with open(server.share / "local.txt", "rb") as f:
            result["data"] = f.read()

    t = threading.Thread(target=local_open)
    t.start()
    brk = _expect_break(client)
    assert brk.body[8:24] == fid
    time.sleep(0.3)
    assert "data" not in result, "the local open must wait for the acknowledgment"
    assert _ack(client, fid, brk.body[2]).status == STATUS_SUCCESS
    t.join(10)
    assert result.get("data") == b"cached by the client"


@pytest.mark.peer
def test_close_instead_of_ack_releases(server):
    a, b = _client(server), _client(server)
    fid_a, level = _open(a, "closeme.txt", LEVEL_EXCLUSIVE, access=c.READ_WRITE_ACCESS,
                         disposition=c.FILE_OPEN_IF)
    assert level == LEVEL_EXCLUSIVE
    b.send_message(_create(b, "closeme.txt", LEVEL_NONE))
    _expect_break(a)
    assert a.call(c.CLOSE, c.close_body(fid_a)).status == STATUS_SUCCESS
    b.sock.settimeout(10)
    assert b.recv_final().status == STATUS_SUCCESS


@pytest.mark.peer
def test_level_ii_between_readers_and_break_on_write(server):
    """Read-only handles: the first gets batch, a second reader breaks it to level II (ack II
    keeps a kernel read lease) and gets level II itself; a local writer then breaks both to
    none, and a level II break needs no acknowledgment (2.2.24.1)."""
    (server.share / "ro.txt").write_bytes(b"shared data")
    a, b = _client(server), _client(server)
    fid_a, level = _open(a, "ro.txt", LEVEL_BATCH)
    assert level == LEVEL_BATCH
    b.send_message(_create(b, "ro.txt", LEVEL_BATCH))
    brk = _expect_break(a)
    assert brk.body[2] == LEVEL_II
    resp = _ack(a, fid_a, LEVEL_II)
    assert resp.status == STATUS_SUCCESS and resp.body[2] == LEVEL_II
    b.sock.settimeout(10)
    done = b.recv_final()
    assert done.status == STATUS_SUCCESS and done.body[2] == LEVEL_II

    started = time.monotonic()
    fd = os.open(server.share / "ro.txt", os.O_RDWR)  # blocks until both read leases are gone
    os.close(fd)
    assert time.monotonic() - started < 5
    assert _expect_break(a).body[2] == LEVEL_NONE
    assert _expect_break(b).body[2] == LEVEL_NONE


@pytest.mark.peer
def test_self_break_on_one_connection(server):
    """The holder itself opens the file again on the same connection: it gets the break
    while its own CREATE waits, acknowledges, and the CREATE completes (no deadlock)."""
    a = _client(server)
    fid, level = _open(a, "self.txt", LEVEL_BATCH, access=c.READ_WRITE_ACCESS, disposition=c.FILE_OPEN_IF)
    assert level == LEVEL_BATCH
    a.send_message(_create(a, "self.txt", LEVEL_NONE))
    a.sock.settimeout(10)
    seen = []
    while True:
        msg = a.recv()
        if msg.command == OPLOCK_BREAK and msg.message_id == 0xFFFFFFFFFFFFFFFF:
            assert _ack(a, fid, LEVEL_NONE).status == STATUS_SUCCESS
        elif msg.status != STATUS_PENDING:
            seen.append(msg)
            break
    assert seen[0].command == c.CREATE and seen[0].status == STATUS_SUCCESS


@pytest.mark.peer
def test_ack_errors(server):
    a = _client(server)
    fid, level = _open(a, "plain.txt", LEVEL_NONE, access=c.READ_WRITE_ACCESS, disposition=c.FILE_OPEN_IF)
    assert level == LEVEL_NONE
    assert _ack(a, fid, LEVEL_NONE).status == STATUS_INVALID_OPLOCK_PROTOCOL
    assert _ack(a, b"\x55" * 16, LEVEL_NONE).status == STATUS_FILE_CLOSED
    # A 36-byte body is a Lease Break Acknowledgment (2.2.24.2) for a lease that does not
    # exist (3.3.5.22.2); any other size than 24 or 36 is malformed.
    lease_ack = a.call(OPLOCK_BREAK, struct.pack("<HBBI", 36, 0, 0, 0) + fid + b"\0" * 12)
    assert lease_ack.status == 0xC0000034  # STATUS_OBJECT_NAME_NOT_FOUND
    bad_size = a.call(OPLOCK_BREAK, struct.pack("<HBBI", 30, 0, 0, 0) + fid + b"\0" * 6)
    assert bad_size.status == STATUS_INVALID_PARAMETER



@pytest.mark.peer
def test_write_breaks_level_ii_to_none_unacknowledged(server):
    """Like smbtorture smb2.oplock.levelii500: a level II holder writes through its own
    handle; the oplock goes to none with a notification that needs no acknowledgment, so
    acknowledging it anyway is STATUS_INVALID_OPLOCK_PROTOCOL."""
    a = _client(server)
    fid, level = _open(a, "l2.txt", LEVEL_II, access=c.READ_WRITE_ACCESS, disposition=c.FILE_OPEN_IF)
    assert level == LEVEL_II
    a.send_message(a.build(c.WRITE, c.write_body(fid, b"x")))
    a.sock.settimeout(10)
    got = [a.recv(), a.recv()]
    breaks = [m for m in got if m.command == OPLOCK_BREAK and m.message_id == 0xFFFFFFFFFFFFFFFF]
    writes = [m for m in got if m.command == c.WRITE]
    assert len(breaks) == 1 and breaks[0].body[2] == LEVEL_NONE and breaks[0].body[8:24] == fid
    assert len(writes) == 1 and writes[0].status == STATUS_SUCCESS
    assert _ack(a, fid, LEVEL_NONE).status == STATUS_INVALID_OPLOCK_PROTOCOL
    # The lease is gone with the oplock: a local writer is not held up.
    started = time.monotonic()
    os.close(os.open(server.share / "l2.txt", os.O_RDWR))
    assert time.monotonic() - started < 1


FSCTL_SMBTORTURE_FORCE_UNACKED_TIMEOUT = 0x83848003
STATUS_INVALID_DEVICE_REQUEST = 0xC0000010


def _force_unacked(client: c.RawClient, data: bytes = b"") -> c.Response:
    """As smbtorture sends it (source4/torture/smb2/block.c): no session, no tree."""
    return client.call(c.IOCTL, c.ioctl_body(b"\xff" * 16, FSCTL_SMBTORTURE_FORCE_UNACKED_TIMEOUT, data, max_output=0),
                       session_id=0, tree_id=0)


@pytest.fixture
def torture_server(lease_dir):
    srv = Smbdd(lease_dir, "--smbtorture-fsctl")
    yield srv
    srv.stop()


@pytest.mark.peer
def test_smbtorture_fsctl_is_off_by_default(server):
    a = _client(server)
    assert _force_unacked(a).status == STATUS_INVALID_DEVICE_REQUEST
    assert a.echo().status == STATUS_SUCCESS  # the connection goes on as before


@pytest.mark.peer
def test_channel_that_never_acknowledges_a_break_is_closed(torture_server):
    """A break whose bytes the client's transport does not acknowledge within six
    retransmission timeouts means a dead channel (MS-SMB2 3.3.4.6; Samba does the same):
    the server closes it, A's open goes with it, and B's open, which waited for the break,
    completes in seconds rather than after the 35 s acknowledgment timer. smbtorture's
    FSCTL makes A's transport look dead although the bytes arrive."""
    a, b = _client(torture_server), _client(torture_server)
    assert _force_unacked(a, b"x").status == STATUS_INVALID_PARAMETER  # takes no input
    fid_a, level = _open(a, "dead.txt", LEVEL_BATCH, access=c.READ_WRITE_ACCESS, disposition=c.FILE_OPEN_IF)
    assert level == LEVEL_BATCH
    assert _force_unacked(a).status == STATUS_SUCCESS
    started = time.monotonic()
    b.send_message(_create(b, "dead.txt", LEVEL_BATCH))
    brk = _expect_break(a)
    assert brk.body[8:24] == fid_a
    assert a.is_closed(timeout=10)
    b.sock.settimeout(15)
    done = b.recv_final()
    assert done.status == STATUS_SUCCESS
    assert time.monotonic() - started < 10


def test_unsolicited_break_is_encrypted_for_an_encrypting_session():
    """3.3.4.6: the notification (SessionId 0, unsigned) is encrypted with the session's
    key when the session requires encryption. Decrypted here independently, following the
    SMB2 TRANSFORM_HEADER layout (2.2.41) and AES-128-GCM (3.1.4.3), not with smbd.crypto."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from smbd.crypto import CIPHER_AES_128_GCM, SessionKeys
    from smbd.server.config import ServerConfig
    from smbd.server.connection import SmbConnection
    from smbd.server.objects import Session
    from smbd.server.state import ServerState
    from smbd.wire.oplock import oplock_break_notification

    class Transport:
        peer, rdma = "test", None

        def __init__(self):
            self.sent = []

        async def send(self, parts):
            self.sent.append(b"".join(bytes(p) for p in parts))

        def close(self):
            pass

    server = ServerState(ServerConfig(shares=(), users=(), io_threads=1))
    transport = Transport()
    conn = SmbConnection(server, transport)
    conn.dialect, conn.cipher = 0x0311, CIPHER_AES_128_GCM
    key = bytes(range(16))
    session = Session(session_id=0x1122334455667788, dialect=0x0311, encrypt_data=True,
                      keys=SessionKeys(signing=b"\1" * 16, encrypting=key, decrypting=b"\2" * 16,
                                       application=b"\3" * 16))
    message = oplock_break_notification(LEVEL_NONE, (5, 6))

    asyncio.run(conn.send_unsolicited(message, session, encrypt=True))
    asyncio.run(conn.send_unsolicited(message, session, encrypt=False))
    server.shutdown()
    sealed, plain = transport.sent
    assert plain == message
    assert sealed[:4] == b"\xfdSMB"
    signature, nonce = sealed[4:20], sealed[20:32]
    size, _, algorithm, session_id = struct.unpack_from("<IHHQ", sealed, 36)
    assert size == len(message) and algorithm == 1 and session_id == session.session_id
    assert AESGCM(key).decrypt(nonce, sealed[52:] + signature, sealed[20:52]) == message
