"""The worker's end of the SMB Direct relay, driven by a stand-in proxy on the host.

The real proxy needs an RDMA device (the lab VM covers it end to end). Here the test plays
the proxy over the relay socket: it answers ALLOC, RELEASE, RDMA_READ and RDMA_WRITE by
copying between the shared-memory pool and a bytearray standing for the client's
registered memory, so the worker's side of the protocol (slot keeping, READ responses
that do not wait for the RDMA write, prefetched WRITEs, RECLAIM) runs for real against a
real SmbConnection and share.
"""
from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import types
import uuid

import pytest

from shm.pool import BufferPool
from smbd.auth.ntlm import nt_hash
from smbd.server.config import ServerConfig, ShareConfig, UserEntry
from smbd.server import channel_move
from smbd.status import ProtocolViolation
from smbd.server.state import ServerState
from smbd.transport import relay
from smbd.transport.proxy import KEEP_IDLE_SLOTS, serve_proxy_channel
from tests import smb2client as c

SLOT = 1024 * 1024
SLOTS = 8
TOKEN = 0x5A5A
MEM = 4 * SLOT  # the "client's" registered memory
CHANNEL_RDMA_V1 = 1


def rdma_write_body(file_id: bytes, length: int, offset: int, mem_offset: int) -> bytes:
    """WRITE request, MS-SMB2 2.2.21, data by RDMA: Length 0, RemainingBytes = length, one
    SMB2_BUFFER_DESCRIPTOR_V1 (MS-SMBD 2.2.3.1) right after the fixed part."""
    desc = struct.pack("<QII", mem_offset, TOKEN, length)
    return struct.pack("<HHIQ16sIIHHI", 49, 0, 0, offset, file_id, CHANNEL_RDMA_V1, length,
                       c.HEADER_SIZE + 48, len(desc), 0) + desc


def rdma_read_body(file_id: bytes, length: int, offset: int, mem_offset: int) -> bytes:
    """READ request, MS-SMB2 2.2.19, with the client's buffer as one descriptor."""
    desc = struct.pack("<QII", mem_offset, TOKEN, length)
    return struct.pack("<HBBIQ16sIIIHH", 49, 0, 0, length, offset, file_id, 0, CHANNEL_RDMA_V1, 0,
                       c.HEADER_SIZE + 48, len(desc)) + desc


class StandInProxy(c.RawClient):
    """A RawClient whose transport is the relay socket, and the proxy's side of the relay."""

    def __init__(self, sock: socket.socket, pool: BufferPool):
        self.sock = sock
        self.sock.settimeout(10)
        self.host, self.port = "127.0.0.1", 0
        self.client_guid = uuid.uuid4()
        self.next_mid = 0
        self.session_id = self.tree_id = 0
        self.granted = 1
        self.dialect = 0
        self._rx = bytearray()
        self.pool = pool
        self.mem = bytearray(MEM)
        self.free = list(range(SLOTS))
        self.held: set[int] = set()
        self.log: list[tuple] = []  # every frame from the worker, in order
        self.hold_done = False  # keep RDMA_WRITE completions back (test: the reply does not wait)
        self.held_done: list[bytes] = []
        self._decoder = relay.FrameDecoder()
        self._frames: list[relay.Frame] = []
        sock.sendall(relay.setup({"pool": pool.name, "slot_size": SLOT, "peer": "stand-in",
                                  "max_read_write_size": SLOT, "max_message": 2 * SLOT}))

    # relay transport for RawClient
    def send_message(self, message: bytes) -> None:
        self.sock.sendall(relay.message(len(message)) + message)

    def send_prefetched(self, message: bytes, request_id: int, slot: int) -> None:
        self.sock.sendall(relay.prefetched_message(len(message), request_id, slot) + message)

    def _next_frame(self) -> relay.Frame:
        while not self._frames:
            data = self.sock.recv(1 << 20)
            if not data:
                raise c.ConnectionClosed("EOF")
            self._frames.extend(self._decoder.feed(data))
        return self._frames.pop(0)

    def recv(self) -> c.Response:
        """Serve the worker's requests until the next SMB2 message comes."""
        while True:
            fr = self._next_frame()
            if fr.type == relay.FrameType.MESSAGE:
                smb2, _ = fr.message()
                self.log.append(("MESSAGE",))
                r = c.Response.parse(smb2)
                self.granted += r.credits
                return r
            self.serve(fr)

    def serve(self, fr: relay.Frame) -> None:
        if fr.type == relay.FrameType.ALLOC:
            slot = self.free.pop()
            self.held.add(slot)
            self.log.append(("ALLOC", slot))
            self.sock.sendall(relay.alloc_done(fr.u32(), slot))
        elif fr.type == relay.FrameType.RELEASE:
            slot = fr.u32()
            assert slot in self.held, f"worker released slot {slot} it does not hold"
            self.held.discard(slot)
            self.free.append(slot)
            self.log.append(("RELEASE", slot))
        elif fr.type in (relay.FrameType.RDMA_READ, relay.FrameType.RDMA_WRITE):
            rid, slot, length, descs = fr.rdma()
            assert slot in self.held
            view = self.pool.slot_view(slot)
            (d,) = descs
            assert d.token == TOKEN and d.length >= length
            if fr.type == relay.FrameType.RDMA_READ:
                view[:length] = self.mem[d.offset:d.offset + length]
                self.log.append(("RDMA_READ", slot))
            else:
                self.mem[d.offset:d.offset + length] = view[:length]
                self.log.append(("RDMA_WRITE", slot))
            del view
            done = relay.rdma_done(rid, 0, length)
            if self.hold_done and fr.type == relay.FrameType.RDMA_WRITE:
                self.held_done.append(done)
            else:
                self.sock.sendall(done)
        else:
            raise AssertionError(f"unexpected frame {fr.type}")

    def prefetch(self, message: bytes, mem_offset: int, length: int, request_id: int) -> int:
        """What the proxy does with an RDMA WRITE: take a slot, RDMA-read into it, pass the
        WRITE on marked PREFETCHED, then report the read done."""
        slot = self.free.pop()
        self.held.add(slot)
        view = self.pool.slot_view(slot)
        view[:length] = self.mem[mem_offset:mem_offset + length]
        del view
        self.send_prefetched(message, request_id, slot)
        self.sock.sendall(relay.rdma_done(request_id, 0, length))
        return slot

    def quiet(self, seconds: float = 0.3) -> None:
        """Serve whatever the worker sends for a moment (RELEASEs after a RECLAIM)."""
        self.sock.settimeout(seconds)
        try:
            while True:
                self.serve(self._next_frame())
        except (socket.timeout, TimeoutError):
            pass
        finally:
            self.sock.settimeout(10)


@pytest.fixture
def relay_channel(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    pool = BufferPool.create(f"smbdd-test-{os.getpid()}-{uuid.uuid4().hex[:8]}", SLOT, SLOTS)
    config = ServerConfig((ShareConfig("share", str(share)),), (UserEntry("alice", nt_hash("pw")),))
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    holder = {}

    def run():
        asyncio.set_event_loop(loop)

        async def start():
            server = ServerState(config)
            holder["server"] = server
            worker = types.SimpleNamespace(server=server, check_idle=lambda: None)
            await serve_proxy_channel(worker, theirs.detach(), {"peer": "stand-in"})
            ready.set()

        loop.create_task(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    proxy = StandInProxy(ours, pool)
    proxy.loop = loop
    proxy.login("alice", "pw", "share")
    yield proxy, share, holder["server"]
    ours.close()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    holder["server"].io_pool.shutdown(wait=True)
    from smbd.transport import proxy as worker_side
    worker_side._pools.pop(pool.name).close()
    pool.close()


def _open_rw(proxy: StandInProxy, name: str) -> bytes:
    return proxy.open_file(name, access=c.READ_WRITE_ACCESS, disposition=c.FILE_OVERWRITE_IF)


def test_rdma_write_and_read_are_byte_identical_and_keep_their_slot(relay_channel):
    proxy, share, _ = relay_channel
    data = os.urandom(SLOT)
    proxy.mem[:SLOT] = data
    fid = _open_rw(proxy, "f.bin")
    for i in range(4):
        r = proxy.call(c.WRITE, rdma_write_body(fid, SLOT, i * SLOT, 0), credit_charge=16)
        assert r.status == c.STATUS_SUCCESS
        assert struct.unpack_from("<I", r.body, 4)[0] == SLOT
    assert (share / "f.bin").read_bytes() == data * 4
    for i in range(4):
        r = proxy.call(c.READ, rdma_read_body(fid, SLOT, i * SLOT, SLOT + i * 4096 % SLOT), credit_charge=16)
        assert r.status == c.STATUS_SUCCESS
        # RDMA READ response: DataLength 0, DataRemaining = bytes written to the client (2.2.20)
        assert struct.unpack_from("<BBII", r.body, 2)[2:] == (0, SLOT)
    assert bytes(proxy.mem[SLOT + 12288:2 * SLOT + 12288]) == data
    # Eight 1 MiB I/Os, one after the other: one ALLOC, the slot kept in between.
    assert [e[0] for e in proxy.log].count("ALLOC") == 1
    assert "RELEASE" not in [e[0] for e in proxy.log]


def test_read_response_does_not_wait_for_the_rdma_write(relay_channel):
    proxy, share, _ = relay_channel
    (share / "r.bin").write_bytes(b"x" * 5000)
    fid = proxy.open_file("r.bin")
    proxy.hold_done = True
    r = proxy.call(c.READ, rdma_read_body(fid, 5000, 0, 0))
    assert r.status == c.STATUS_SUCCESS
    # The response came with the RDMA write's completion still held back by us, and after
    # the RDMA_WRITE frame (the queue pair runs them in that order).
    kinds = [e[0] for e in proxy.log]
    assert kinds.index("RDMA_WRITE") < len(kinds) - 1 and kinds[-1] == "MESSAGE"
    assert len(proxy.held_done) == 1
    assert bytes(proxy.mem[:5000]) == b"x" * 5000
    # Until that completion arrives the slot is busy: the next READ needs a second one.
    r = proxy.call(c.READ, rdma_read_body(fid, 100, 0, SLOT))
    assert r.status == c.STATUS_SUCCESS
    assert [e[0] for e in proxy.log].count("ALLOC") == 2


def test_prefetched_write_needs_no_request_from_the_worker(relay_channel):
    proxy, share, _ = relay_channel
    data = os.urandom(300_000)
    proxy.mem[SLOT:SLOT + len(data)] = data
    fid = _open_rw(proxy, "p.bin")
    msg = proxy.build(c.WRITE, rdma_write_body(fid, len(data), 0, SLOT), credit_charge=5)
    slot = proxy.prefetch(msg, SLOT, len(data), relay.PROXY_REQUEST_ID | 1)
    r = proxy.recv_final()
    assert r.status == c.STATUS_SUCCESS and struct.unpack_from("<I", r.body, 4)[0] == len(data)
    assert (share / "p.bin").read_bytes() == data
    assert not [e for e in proxy.log if e[0] in ("ALLOC", "RDMA_READ")]
    # The worker keeps the prefetched slot for its next I/O: a READ uses it, no ALLOC.
    r = proxy.call(c.READ, rdma_read_body(fid, len(data), 0, 2 * SLOT), credit_charge=5)
    assert r.status == c.STATUS_SUCCESS
    assert bytes(proxy.mem[2 * SLOT:2 * SLOT + len(data)]) == data
    assert ("RDMA_WRITE", slot) in proxy.log and not [e for e in proxy.log if e[0] == "ALLOC"]


def test_refused_prefetched_write_returns_its_slot_and_reclaim_takes_idle_ones(relay_channel):
    proxy, _, _ = relay_channel
    bogus = b"\x01" * 16
    msg = proxy.build(c.WRITE, rdma_write_body(bogus, 4096, 0, 0))
    slot = proxy.prefetch(msg, 0, 4096, relay.PROXY_REQUEST_ID | 7)
    r = proxy.recv_final()
    assert r.status == 0xC0000128  # STATUS_FILE_CLOSED: no such open
    assert slot in proxy.held  # kept idle by the worker, not lost
    proxy.sock.sendall(relay.reclaim())
    proxy.quiet()
    assert ("RELEASE", slot) in proxy.log
    assert not proxy.held


def test_worker_keeps_at_most_a_few_idle_slots(relay_channel):
    proxy, share, _ = relay_channel
    fid = _open_rw(proxy, "q.bin")
    n = KEEP_IDLE_SLOTS + 3
    # n WRITEs in flight at once: each needs its own slot.
    msgs = [proxy.build(c.WRITE, rdma_write_body(fid, 4096, i * 4096, 0)) for i in range(n)]
    slots = [proxy.prefetch(m, 0, 4096, relay.PROXY_REQUEST_ID | (100 + i)) for i, m in enumerate(msgs)]
    for _ in range(n):
        assert proxy.recv_final().status == c.STATUS_SUCCESS
    proxy.quiet()
    released = [e[1] for e in proxy.log if e[0] == "RELEASE"]
    assert len(released) == n - KEEP_IDLE_SLOTS and set(released) <= set(slots)
    assert len(proxy.held) == KEEP_IDLE_SLOTS


def test_relay_channel_moves_to_another_connection_and_goes_on(relay_channel):
    """What smbd.server.channel_move does with an SMB Direct channel, here within one worker:
    the relay socket of a channel that has only negotiated is detached, taken up by a new
    connection with the negotiated state and the SESSION_SETUP request, and the client goes
    on through it as if nothing happened: logon, tree connect, a WRITE and a READ by RDMA
    through the same pool. Closing the old connection's copy of the socket ends nothing."""
    spnego = pytest.importorskip("spnego")
    first, share, server = relay_channel
    worker = types.SimpleNamespace(server=server, check_idle=lambda: None)

    def run(coro):
        return asyncio.run_coroutine_threadsafe(coro, first.loop).result(10)

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    old = run(serve_proxy_channel(worker, theirs.detach(), {"peer": "second"}))
    proxy = StandInProxy(ours, first.pool)
    assert proxy.negotiate().status == c.STATUS_SUCCESS
    ctx = spnego.client("alice", "pw", hostname="localhost", service="cifs", protocol="ntlm")
    request = proxy.build(c.SESSION_SETUP, c.session_setup_body(ctx.step()))

    async def move():
        fd, pending = old.transport.detach()
        body = {"transport": "rdma", "peer": "second", "setup": old.transport.setup_info,
                "negotiated": old.negotiated_state(), "request": request.hex(), "pending": pending.hex()}
        old.handed_off()
        return await channel_move._adopt(body, [fd], lambda kind, fd, peer, setup: serve_proxy_channel(
            worker, fd, {"peer": peer}, setup, paused=True))

    assert run(move()) == ({"adopted": True}, [])
    assert old.closed and old not in server.connections
    r = proxy.recv_final()
    while r.status == c.STATUS_MORE_PROCESSING_REQUIRED:
        proxy.session_id = r.session_id
        off, length = struct.unpack_from("<HH", r.body, 4)
        r = proxy.call(c.SESSION_SETUP, c.session_setup_body(ctx.step(r.raw[off:off + length])))
    assert r.status == c.STATUS_SUCCESS
    assert proxy.tree_connect("share").status == c.STATUS_SUCCESS
    data = os.urandom(SLOT // 2)
    proxy.mem[:len(data)] = data
    fid = _open_rw(proxy, "moved.bin")
    assert proxy.call(c.WRITE, rdma_write_body(fid, len(data), 0, 0), credit_charge=8).status == c.STATUS_SUCCESS
    assert (share / "moved.bin").read_bytes() == data
    assert proxy.call(c.READ, rdma_read_body(fid, len(data), 0, SLOT), credit_charge=8).status == c.STATUS_SUCCESS
    assert bytes(proxy.mem[SLOT:SLOT + len(data)]) == data
    ours.close()


def test_relay_channel_does_not_move_with_rdma_in_flight(relay_channel):
    """A prefetched WRITE not yet answered would complete in the wrong process: no move."""
    proxy, _, server = relay_channel
    conn = next(iter(server.connections))
    fid = _open_rw(proxy, "busy.bin")
    proxy.hold_done = True
    msg = proxy.build(c.WRITE, rdma_write_body(fid, 4096, 0, 0))
    slot = proxy.free.pop()
    proxy.held.add(slot)
    proxy.send_prefetched(msg, relay.PROXY_REQUEST_ID | 9, slot)  # its RDMA_DONE is held back

    async def try_detach():
        await asyncio.sleep(0.2)
        try:
            conn.transport.detach()
        except BlockingIOError as e:
            return str(e)
        return "detached"

    assert asyncio.run_coroutine_threadsafe(try_detach(), proxy.loop).result(10) == "RDMA I/O in progress"
    proxy.sock.sendall(relay.rdma_done(relay.PROXY_REQUEST_ID | 9, 0, 4096))
    assert proxy.recv_final().status == c.STATUS_SUCCESS


def test_tracked_message_counts_as_delivered_only_once_the_proxy_reports_it_sent(relay_channel):
    """A break over SMB Direct (smbd.server.break_delivery): the worker sends it TRACKED and
    counts it delivered when the proxy's SENT comes, i.e. the send completion of its last
    fragment. With no SENT, deliver gives up after the RC budget and closes the channel."""
    from smbd.server import break_delivery

    proxy, _, server = relay_channel
    conn = next(iter(server.connections))
    notice = c.header(0x12, 0xFFFFFFFFFFFFFFFF) + b"\x18\x00" + b"\x00" * 22  # OPLOCK_BREAK (2.2.23.1)
    clock = [0.0]

    async def sleep(seconds):
        clock[0] += seconds
        await asyncio.sleep(0.01)

    def deliver():
        coro = break_delivery.deliver(lambda: [conn], notice, None, False, "test",
                                      clock=lambda: clock[0], sleep=sleep)
        return asyncio.run_coroutine_threadsafe(coro, proxy.loop)

    answer = deliver()
    fr = proxy._next_frame()
    assert fr.type == relay.FrameType.MESSAGE and fr.flags & relay.FLAG_TRACKED
    assert fr.message()[0] == notice
    assert conn.transport.delivered() == conn.transport.written - len(notice)  # not yet
    proxy.sock.sendall(relay.sent(fr.tracked()))
    assert answer.result(10) is True
    assert conn.transport.delivered() == conn.transport.written

    answer = deliver()
    fr = proxy._next_frame()  # never reported SENT: the client's NIC never acknowledged it
    assert answer.result(10) is False
    assert clock[0] >= 6 * conn.transport.retransmit_timeout()
    assert conn.closed


def test_a_message_frame_is_either_invalidating_or_tracked():
    both = relay.frame(relay.FrameType.MESSAGE, 8, relay.FLAG_INVALIDATE | relay.FLAG_TRACKED) + b"\x01\0\0\0SMB2"
    (fr,) = relay.FrameDecoder().feed(both)
    with pytest.raises(ProtocolViolation):
        fr.message()
    (fr,) = relay.FrameDecoder().feed(relay.tracked_message(4, 9) + b"SMB2")
    assert fr.message() == (b"SMB2", None) and fr.tracked() == 9


def test_one_session_mixes_a_tcp_channel_and_an_smb_direct_channel(relay_channel):
    """MS-SMB2 3.3.5.5.2 binding is transport-blind, and so is smbd: a session set up over TCP
    takes an SMB Direct channel (a relay from the proxy), which writes by RDMA read what the
    TCP channel then reads back, each request signed with its own channel's key."""
    pytest.importorskip("spnego")
    from smbd.worker import Worker
    from tests.test_session_binding import SigningClient, _bind, signature, signing_key

    class RelaySigningClient(SigningClient, StandInProxy):
        """The stand-in proxy's relay with the signing client's steps."""

    _, share, server = relay_channel
    loop = relay_channel[0].loop
    worker = types.SimpleNamespace(server=server, loop=loop, check_idle=lambda: None)

    def run(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(10)

    listener = socket.create_server(("127.0.0.1", 0))
    guid = uuid.uuid4()
    tcp = SigningClient("127.0.0.1", listener.getsockname()[1], client_guid=guid)
    accepted, addr = listener.accept()
    listener.close()
    run(Worker._serve_tcp(worker, accepted.detach(), f"{addr[0]}:{addr[1]}", b""))
    tcp.connect().login("alice", "pw", share="share")

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    run(serve_proxy_channel(worker, theirs.detach(), {"peer": "second"}))
    direct = RelaySigningClient(ours, relay_channel[0].pool)
    direct.client_guid = guid
    direct.connect()
    r, key, preauth = _bind(tcp, direct, user="alice", password="pw")
    assert r.status == c.STATUS_SUCCESS and r.session_id == tcp.session_id, f"0x{r.status:08X}"
    direct.session_id, direct.tree_id = tcp.session_id, tcp.tree_id
    direct.key = signing_key(direct.dialect, key, preauth)
    assert r.raw[48:64] == signature(direct.algorithm, direct.key, r.raw)
    (session,) = [s for s in server.sessions.values() if s.session_id == tcp.session_id]
    kinds = sorted(type(ch.connection.transport).__name__ for ch in session.channels.values())
    assert kinds == ["ProxyTransport", "TcpTransport"]

    fid = tcp.call_signed(c.CREATE, c.create_body("mixed.bin", access=c.READ_WRITE_ACCESS,
                                                  disposition=c.FILE_OVERWRITE_IF)).file_id
    data = os.urandom(SLOT // 4)
    direct.mem[:len(data)] = data
    assert direct.call_signed(c.WRITE, rdma_write_body(fid, len(data), 0, 0), credit_charge=4).status == \
        c.STATUS_SUCCESS
    r = tcp.call_signed(c.READ, c.read_body(fid, len(data)), credit_charge=4)
    assert r.status == c.STATUS_SUCCESS and r.raw[16 + 64:16 + 64 + len(data)] == data
    tcp.close()
    ours.close()
