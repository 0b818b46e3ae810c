"""The sans-IO SMB2 core: compound split/join, the credit window, direct-TCP framing, and the
request pipeline of SmbConnection driven with bytes through a fake transport.

Expected values come from MS-SMB2 (3.1.5.2 credit charge formula, 3.3.4.1.3 compound padding,
2.1 transport header, 3.3.5.2.3 message id rules), not from the code's own output.
"""
from __future__ import annotations

import asyncio
import struct

import pytest

from smbd.core import compound
from smbd.core.credits import CreditWindow, required_charge
from smbd.core.framing import MAX_FRAME, FrameBuffer, frame
from smbd.server.config import ServerConfig
from smbd.server.connection import SmbConnection
from smbd.server.state import ServerState
from smbd.status import NtStatus, ProtocolViolation
from tests import smb2client as raw


# --- compound.split / join (MS-SMB2 3.3.5.2.7, 3.3.4.1.3) ------------------------------------------

def chain(*bodies: bytes, pad: bool = True) -> bytes:
    """Header+body elements linked by NextCommand, each but the last padded to 8 (3.2.4.1.4)."""
    out = b""
    for i, body in enumerate(bodies):
        element = raw.header(raw.ECHO, i) + body
        if i < len(bodies) - 1:
            if pad:
                element += b"\0" * (-len(element) % 8)
            element = element[:20] + struct.pack("<I", len(element)) + element[24:]
        out += element
    return out


def test_split_single_and_compound():
    single = raw.header(raw.ECHO, 0) + raw.echo_body()
    parts = compound.split(memoryview(single))
    assert [bytes(p) for p in parts] == [single]
    msg = chain(raw.echo_body(), b"x" * 13, raw.echo_body())
    parts = compound.split(memoryview(msg))
    assert [len(p) for p in parts] == [72, 80, 68]
    assert bytes(parts[1][64:77]) == b"x" * 13
    assert b"".join(bytes(p) for p in parts) == msg


def _with_next(msg: bytes, at: int, value: int) -> memoryview:
    data = bytearray(msg)
    struct.pack_into("<I", data, at + 20, value)
    return memoryview(bytes(data))


@pytest.mark.parametrize("value, why", [
    (68, "not 8-byte aligned"),
    (4, "smaller than a header (and a loop back into itself)"),
    (8, "aligned but inside the header"),
    (0xFFFFFFF8, "far past the end"),
    (1 << 31, "past the end"),
])
def test_split_bad_next_command(value, why):
    msg = chain(raw.echo_body(), raw.echo_body())
    with pytest.raises(ProtocolViolation):
        compound.split(_with_next(msg, 0, value))


def test_split_last_element_shorter_than_header():
    msg = chain(raw.echo_body(), raw.echo_body())
    with pytest.raises(ProtocolViolation):
        compound.split(memoryview(msg[:72 + 40]))
    with pytest.raises(ProtocolViolation):
        compound.split(memoryview(b"\xfeSMB" + b"\0" * 20))


def test_split_cannot_loop_and_is_bounded():
    # NextCommand is unsigned and must be >= 64, so every hop moves forward: a message of
    # n bytes has at most n // 64 elements.  A chain of 1000 minimal headers splits into 1000.
    element = bytearray(raw.header(raw.ECHO, 0))
    struct.pack_into("<I", element, 20, 64)
    msg = bytes(element) * 999 + raw.header(raw.ECHO, 0)
    assert len(compound.split(memoryview(msg))) == 1000


def test_join_pads_and_links():
    a, b, c = bytearray(raw.header(0, 0) + b"\1" * 9), bytearray(raw.header(0, 1) + b"\2" * 16), \
        bytearray(raw.header(0, 2) + b"\3" * 5)
    compound.join([a, b, c])
    assert (len(a), len(b), len(c)) == (80, 80, 72)  # 73 -> 80, 80 stays, the last padded too
    assert struct.unpack_from("<I", a, 20)[0] == 80 and a[73:] == b"\0" * 7
    assert struct.unpack_from("<I", b, 20)[0] == 80
    assert struct.unpack_from("<I", c, 20)[0] == 0 and c[69:] == b"\0" * 3
    assert len(compound.split(memoryview(bytes(a + b + c)))) == 3
    single = bytearray(raw.header(0, 3) + b"\4" * 3)
    compound.join([single])
    assert len(single) == 67  # not a compound: as it is


# --- the credit window (3.3.1.1, 3.3.1.2, 3.3.5.2.3, 3.3.5.2.5) ------------------------------------

@pytest.mark.parametrize("size, charge", [(0, 1), (1, 1), (65536, 1), (65537, 2), (1 << 20, 16),
                                          ((1 << 20) + 1, 17), (8 << 20, 128)])
def test_required_charge_is_the_spec_formula(size, charge):
    # 3.1.5.2: CreditCharge = (max(SendPayloadSize, ExpectedResponsePayloadSize) - 1) / 65536 + 1
    assert required_charge(size) == charge


def test_window_starts_with_message_id_zero_only():
    w = CreditWindow()
    with pytest.raises(ProtocolViolation):
        w.consume(1, 1)
    w.consume(0, 1)
    with pytest.raises(ProtocolViolation):
        w.consume(0, 1)  # reused
    with pytest.raises(ProtocolViolation):
        w.consume(1, 1)  # not granted yet


def test_window_out_of_order_reuse_and_outside():
    w = CreditWindow()
    w.consume(0, 1)
    assert w.grant(10, 1) == 10  # ids 1..10
    w.consume(5, 1)
    with pytest.raises(ProtocolViolation):
        w.consume(5, 1)
    w.consume(1, 4)  # 1,2,3,4 in one multi-credit request
    assert w.low == 6
    with pytest.raises(ProtocolViolation):
        w.consume(3, 1)  # below the window
    with pytest.raises(ProtocolViolation):
        w.consume(9, 3)  # 9,10,11: 11 was never granted
    with pytest.raises(ProtocolViolation):
        w.consume(4, 3)  # overlaps ids already used
    w.consume(9, 2)
    with pytest.raises(ProtocolViolation):
        w.consume(1 << 62, 1)
    assert w.outstanding == 3  # 6, 7, 8


def test_window_charge_zero_counts_as_one():
    # 3.3.5.2.3: CreditCharge 0 (2.0.2 style) consumes one id.
    w = CreditWindow()
    w.consume(0, 0)
    with pytest.raises(ProtocolViolation):
        w.consume(0, 0)


def test_grant_bounded_by_max_credits():
    w = CreditWindow(max_credits=100)
    total = 1  # id 0
    for _ in range(50):
        total += w.grant(65535, 1)
    assert w.outstanding <= 100 and total <= 100
    # consuming frees room again, but never past the bound
    for mid in range(0, 60):
        w.consume(mid, 1)
        w.grant(65535, 1)
        assert w.outstanding <= 100


def test_grant_never_starves_a_client_holding_nothing():
    w = CreditWindow(max_credits=10)
    w.consume(0, 1)
    assert w.grant(0, 1) == 1  # CreditRequest 0 still yields one credit


def test_skipped_ids_do_not_grow_the_window():
    # A client that never uses id `low` pins the window's lower edge; the bookkeeping of used
    # ids must stay bounded (3.3.1.1 lets the server bound the CommandSequenceWindow).
    w = CreditWindow(max_credits=64)
    w.consume(0, 1)
    w.grant(64, 1)
    skipped = w.low
    for _ in range(10000):
        top = w.high - 1
        if top == skipped or top in w.used:
            break
        w.consume(top, 1)
        w.grant(64, 1)
    assert w.high - w.low <= 2 * 64
    assert len(w.used) <= 2 * 64
    # the skipped id is still usable, and using it lets the window slide again
    w.consume(skipped, 1)
    assert w.low > skipped


# --- direct TCP framing (2.1) -------------------------------------------------------------------------

def test_frame_header_is_big_endian_24_bit():
    assert frame(0x123456) == b"\x00\x12\x34\x56"
    assert frame(0) == b"\0\0\0\0"
    with pytest.raises(ValueError):
        frame(MAX_FRAME + 1)


def test_decoder_reassembles_across_feeds():
    m1, m2 = b"A" * 70, b"B" * 300
    stream = raw.nbss(m1) + raw.nbss(m2) + raw.nbss(b"C")
    d = FrameBuffer(1024)
    out = []
    for i in range(len(stream)):
        out += d.feed(stream[i:i + 1])
        if i == 2:
            assert d.needed() == 0  # length not known yet
        if i == 10:
            assert d.needed() == 4 + 70 - 11
    assert out == [m1, m2, b"C"]
    assert FrameBuffer(1024).feed(stream) == [m1, m2, b"C"]


def test_large_messages_are_read_into_their_own_buffer():
    """A message of direct_min bytes or more: the socket's reads go straight into the
    message's buffer (get_buffer hands out its unfilled tail), not through staging."""
    big = bytes(range(256)) * 40  # 10240 bytes
    stream = raw.nbss(b"small") + raw.nbss(big) + raw.nbss(b"after")
    fb = FrameBuffer(1 << 20, staging=4096, direct_min=1024)
    out, pos, direct_reads = [], 0, 0
    while pos < len(stream):
        buf = fb.get_buffer()
        n = min(len(buf), 3000, len(stream) - pos)
        buf[:n] = stream[pos:pos + n]
        if len(buf.obj) == len(big):  # a view of the message's own bytearray
            direct_reads += 1
        del buf
        out += fb.advance(n)
        pos += n
    assert out == [b"small", big, b"after"]
    assert isinstance(out[1], bytearray) and direct_reads >= 3


def test_decoder_oversize_and_bad_first_byte():
    with pytest.raises(ProtocolViolation):
        FrameBuffer(1000).feed(b"\x00\x00\x03\xe9")  # 1001 bytes announced; refused before arriving
    with pytest.raises(ProtocolViolation):
        FrameBuffer(1 << 24).feed(b"\x01\x00\x00\x10" + b"x" * 16)  # > 16 MiB / not a session message
    with pytest.raises(ProtocolViolation):
        FrameBuffer(1 << 20).feed(b"\x00\xff\xff\xff")
    d = FrameBuffer(100)
    assert d.feed(b"\x00\x00\x00\x64") == [] and d.needed() == 100


# --- the request pipeline (3.3.5.2) through a fake transport --------------------------------------

class FakeTransport:
    """Collects what the connection sends; records close()."""

    peer = "fake"
    rdma = None

    def __init__(self):
        self.sent: list[bytes] = []
        self.closed = False

    async def send(self, parts, **_kw):
        self.sent.append(b"".join(bytes(p) for p in parts))

    def close(self):
        self.closed = True


def new_connection(max_credits: int = 8192) -> tuple[SmbConnection, FakeTransport]:
    server = ServerState(ServerConfig(shares=(), users=(), max_credits=max_credits, io_threads=1))
    transport = FakeTransport()
    conn = SmbConnection(server, transport)
    server.connections.add(conn)
    return conn, transport


async def settle(conn: SmbConnection) -> None:
    for _ in range(20):
        if not conn.tasks:
            return
        await asyncio.gather(*list(conn.tasks), return_exceptions=True)


def drive(messages: list[bytes], max_credits: int = 8192):
    """Feed messages to a fresh connection; returns (responses, transport, exception from receive)."""
    async def run():
        conn, transport = new_connection(max_credits)
        error = None
        try:
            for m in messages:
                conn.receive(m)
                await settle(conn)
        except ProtocolViolation as e:
            error = e
        await settle(conn)
        conn.server.io_pool.shutdown(wait=False)
        return [raw.Response.parse(s) for s in transport.sent], transport, error
    return asyncio.run(run())


NEG = raw.header(raw.NEGOTIATE, 0, credits=10) + raw.negotiate_body((0x0210, 0x0302))


def echo(mid: int, **kw) -> bytes:
    return raw.header(raw.ECHO, mid, **kw) + raw.echo_body()


def test_pipeline_negotiate_then_echo():
    resps, transport, err = drive([NEG, echo(1), echo(2, credits=5)])
    assert err is None and not transport.closed
    assert [(r.command, r.status, r.message_id) for r in resps] == [(0, 0, 0), (raw.ECHO, 0, 1), (raw.ECHO, 0, 2)]
    assert resps[0].flags & raw.FLAG_SERVER_TO_REDIR
    assert struct.unpack_from("<H", resps[0].body, 4)[0] == 0x0302


def test_pipeline_request_before_negotiate():
    _, _, err = drive([echo(0)])
    assert isinstance(err, ProtocolViolation)


def test_pipeline_second_negotiate_drops_connection():
    resps, transport, err = drive([NEG, raw.header(raw.NEGOTIATE, 1) + raw.negotiate_body((0x0210,))])
    assert len(resps) == 1 and transport.closed


@pytest.mark.parametrize("mids", [[1, 1], [1, 500], [1, 0]])
def test_pipeline_message_id_violations(mids):
    resps, _, err = drive([NEG] + [echo(m) for m in mids])
    assert isinstance(err, ProtocolViolation)
    assert len(resps) == 2  # the NEGOTIATE and the first ECHO were answered


def test_pipeline_bad_compound():
    bad = bytearray(chain(raw.echo_body(), raw.echo_body()))
    struct.pack_into("<Q", bad, 24, 1)
    struct.pack_into("<Q", bad, 72 + 24, 2)
    struct.pack_into("<I", bad, 20, 68)
    _, _, err = drive([NEG, bytes(bad)])
    assert isinstance(err, ProtocolViolation)


def test_pipeline_compound_of_echoes_is_answered_compounded():
    msg = bytearray(chain(raw.echo_body(), raw.echo_body()))
    struct.pack_into("<Q", msg, 24, 1)
    struct.pack_into("<Q", msg, 72 + 24, 2)
    resps, _, err = drive([NEG, bytes(msg)])
    assert err is None and len(resps) == 2
    parts = resps[1].split()
    assert [(p.message_id, p.status) for p in parts] == [(1, 0), (2, 0)]
    assert resps[1].next_command % 8 == 0


def test_pipeline_grants_stay_bounded():
    msgs = [NEG]
    for mid in range(1, 200):
        msgs.append(echo(mid, credits=65535))
    resps, _, err = drive(msgs, max_credits=256)
    assert err is None
    held = 1
    for r in resps:
        held += r.credits - 1
        assert held <= 256


def test_pipeline_response_to_server_refused():
    _, _, err = drive([NEG, echo(1, flags=raw.FLAG_SERVER_TO_REDIR)])
    assert isinstance(err, ProtocolViolation)


def test_pipeline_unknown_command_is_invalid_parameter():
    resps, transport, err = drive([NEG, raw.header(0x99, 1) + raw.echo_body(), echo(2)])
    assert err is None and not transport.closed  # the connection survives (it did not before a fix)
    assert [(r.command, r.status) for r in resps[1:]] == [(0x99, NtStatus.INVALID_PARAMETER), (raw.ECHO, 0)]


def test_pipeline_session_less_request_is_user_session_deleted():
    # 3.3.5.2.9: a command needing a session, with an unknown SessionId.
    resps, _, err = drive([NEG, raw.header(raw.TREE_CONNECT, 1, session_id=0x1234)
                           + raw.tree_connect_body("\\\\h\\s")])
    assert err is None and resps[1].status == NtStatus.USER_SESSION_DELETED


def test_window_state_round_trips_and_inconsistent_state_is_refused():
    w = CreditWindow(max_credits=64)
    w.grant(10, 1)
    w.consume(0, 1)
    w.consume(3, 2)
    copy = CreditWindow.from_state(w.state())
    assert (copy.low, copy.high, copy.used, copy.max_credits) == (w.low, w.high, w.used, 64)
    with pytest.raises(ProtocolViolation):
        copy.consume(3, 1)  # used before the move: still used after it
    copy.consume(1, 2)
    assert copy.low == 5
    for bad in ({**w.state(), "low": 20}, {**w.state(), "used": [99]}):
        with pytest.raises(ValueError):
            CreditWindow.from_state(bad)


def test_pending_bytes_are_what_was_not_delivered():
    """A channel that moves takes along what its buffer holds, framed as it arrived."""
    fb = FrameBuffer(1 << 20, staging=4096, direct_min=1024)
    assert fb.feed(frame(3) + b"abc" + frame(5) + b"de") == [b"abc"]
    assert fb.pending() == frame(5) + b"de"
    fb2 = FrameBuffer(1 << 20, staging=4096, direct_min=1024)
    assert fb2.feed(frame(2000) + b"x" * 100) == []  # a large message, in its own buffer
    assert fb2.pending() == frame(2000) + b"x" * 100
    again = FrameBuffer(1 << 20)
    assert again.feed(fb2.pending() + b"y" * 1900) == [b"x" * 100 + b"y" * 1900]
