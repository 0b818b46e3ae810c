"""Tests of the sans-IO [MS-SMBD] core: wire golden bytes, negotiation, credits,
fragmentation/reassembly, keepalive timers, and a client/server pair property test.

Golden hex strings below were derived by hand from the field layouts of [MS-SMBD]
2.2.1/2.2.2/2.2.3/2.2.3.1 (little-endian), field by field, and from the example
values of [MS-SMBD] 4.1 and of the Linux cifs.ko client (LAB.md).
"""
from __future__ import annotations

import math
import struct
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smbd.status import NtStatus, ProtocolViolation
from smbdd.smbdirect import (SMB_DIRECT_RESPONSE_REQUESTED, BufferDescriptorV1,
                             CloseConnection, DataTransferHeader, MessageReceived,
                             NegotiateDone, NegotiateRequest, NegotiateResponse,
                             PostReceives, PostSend,
                             SmbdConfig, SmbdConnection, SmbdLocalError, SmbdProtocolError,
                             State, build_data_transfer, pack_buffer_descriptor_list,
                             parse_buffer_descriptor_list)

# cifs.ko's negotiate request: Min=Max=0x0100, Reserved 0, CreditsRequested 255,
# PreferredSendSize 1364, MaxReceiveSize 1364, MaxFragmentedSize 1048576.
LINUX_NEGOTIATE_REQUEST = bytes.fromhex(
    "0001" "0001" "0000" "ff00" "54050000" "54050000" "00001000")

# [MS-SMBD] 4.1 example request: CreditsRequested 10, 1 KiB sizes, 128 KiB fragmented.
SPEC_NEGOTIATE_REQUEST = bytes.fromhex(
    "0001" "0001" "0000" "0a00" "00040000" "00040000" "00000200")
# [MS-SMBD] 4.1 example response: 10 requested, 10 granted, STATUS_SUCCESS, MaxReadWrite 1 MiB.
SPEC_NEGOTIATE_RESPONSE = bytes.fromhex(
    "0001" "0001" "0001" "0000" "0a00" "0a00" "00000000"
    "00001000" "00040000" "00040000" "00000200")
# [MS-SMBD] 3.1.5.3 failure response: versions 0x0100, Status STATUS_NOT_SUPPORTED, rest zero.
NOT_SUPPORTED_RESPONSE = bytes.fromhex(
    "0001" "0001" "0000" "0000" "0000" "0000" "bb0000c0"
    "00000000" "00000000" "00000000" "00000000")


# ---------------------------------------------------------------- wire golden bytes

def test_negotiate_request_golden_linux_client():
    req = NegotiateRequest.parse(LINUX_NEGOTIATE_REQUEST)
    assert (req.min_version, req.max_version, req.reserved) == (0x0100, 0x0100, 0)
    assert req.credits_requested == 255
    assert req.preferred_send_size == 1364 and req.max_receive_size == 1364
    assert req.max_fragmented_size == 1048576
    assert req.pack() == LINUX_NEGOTIATE_REQUEST


def test_negotiate_request_golden_spec_example():
    req = NegotiateRequest(0x0100, 0x0100, 10, 1024, 1024, 131072)
    assert req.pack() == SPEC_NEGOTIATE_REQUEST
    assert NegotiateRequest.parse(SPEC_NEGOTIATE_REQUEST) == req


def test_negotiate_response_golden_spec_example():
    resp = NegotiateResponse(0x0100, 0x0100, 0x0100, 10, 10, 0, 0x100000, 1024, 1024, 131072)
    assert resp.pack() == SPEC_NEGOTIATE_RESPONSE
    assert NegotiateResponse.parse(SPEC_NEGOTIATE_RESPONSE) == resp


def test_negotiate_failure_response_golden():
    assert NegotiateResponse.failure(NtStatus.NOT_SUPPORTED).pack() == NOT_SUPPORTED_RESPONSE


def test_data_transfer_golden_with_payload():
    # CreditsRequested 255, CreditsGranted 1, Flags RESPONSE_REQUESTED, Reserved 0,
    # RemainingDataLength 0, DataOffset 24, DataLength 4, Padding 0, then 4 data bytes.
    expected = bytes.fromhex("ff00" "0100" "0100" "0000" "00000000" "18000000" "04000000" "00000000" "fe534d42")
    assert build_data_transfer(255, 1, SMB_DIRECT_RESPONSE_REQUESTED, 0, b"\xfeSMB") == expected
    hdr = DataTransferHeader.parse(expected)
    assert (hdr.credits_requested, hdr.credits_granted, hdr.flags) == (255, 1, 1)
    assert (hdr.remaining_data_length, hdr.data_offset, hdr.data_length) == (0, 24, 4)
    assert hdr.response_requested
    assert bytes(hdr.payload(expected)) == b"\xfeSMB"


def test_data_transfer_golden_empty_is_20_bytes():
    # An empty message stops before Padding, as cifs.ko and ksmbd send it; DataOffset 0.
    expected = bytes.fromhex("ff00" "0500" "0000" "0000" "00000000" "00000000" "00000000")
    assert build_data_transfer(255, 5, 0, 0) == expected
    hdr = DataTransferHeader.parse(expected)
    assert hdr.credits_granted == 5 and hdr.data_length == 0 and bytes(hdr.payload(expected)) == b""


def test_data_transfer_golden_fragment_remaining():
    # A middle fragment: RemainingDataLength 0x00010000 still to come.
    expected = bytes.fromhex("0a00" "0000" "0000" "0000" "00000100" "18000000" "02000000" "00000000" "abcd")
    assert build_data_transfer(10, 0, 0, 0x10000, b"\xab\xcd") == expected


def test_buffer_descriptor_golden_and_list():
    d = BufferDescriptorV1(offset=0x1122334455667788, token=0xAABBCCDD, length=0x100000)
    golden = bytes.fromhex("8877665544332211" "ddccbbaa" "00001000")
    assert d.pack() == golden
    assert BufferDescriptorV1.parse(golden) == d
    two = pack_buffer_descriptor_list([d, BufferDescriptorV1(0x1000, 7, 4096)])
    assert len(two) == 32
    assert parse_buffer_descriptor_list(two) == (d, BufferDescriptorV1(0x1000, 7, 4096))


@pytest.mark.parametrize("blob", [b"", b"\x00" * 15, b"\x00" * 17, b"\x00" * 33])
def test_buffer_descriptor_list_rejects_partial(blob):
    with pytest.raises(SmbdProtocolError):
        parse_buffer_descriptor_list(blob)


def test_buffer_descriptor_list_max_count():
    with pytest.raises(SmbdProtocolError):
        parse_buffer_descriptor_list(b"\x00" * 48, max_count=2)


# ---------------------------------------------------------------- malformed wire input

def _dt(cr=1, cg=0, flags=0, remaining=0, offset=24, length=0, total=None, data=b""):
    head = struct.pack("<HHHHIIII", cr, cg, flags, 0, remaining, offset, length, 0)
    msg = head + data
    if total is not None:
        msg = (msg + b"\x00" * total)[:total]
    return msg


@pytest.mark.parametrize("msg, why", [
    (b"\x01\x00" * 9, "shorter than 20 bytes"),
    (_dt(offset=28, length=4, total=40), "DataOffset not 8-byte aligned"),
    (_dt(offset=16, length=4, total=40), "DataOffset inside the header"),
    (_dt(offset=24, length=100, total=64), "DataLength past the end"),
    (_dt(offset=0xFFFFFFF8, length=16, total=64), "DataOffset far past the end"),
    (_dt(cr=0, offset=24, length=4, total=28), "CreditsRequested 0"),
])
def test_data_transfer_rejects_malformed(msg, why):
    with pytest.raises(SmbdProtocolError):
        DataTransferHeader.parse(msg)


def test_data_transfer_rejects_total_over_max_fragmented():
    msg = _dt(remaining=200_000, offset=24, length=4, total=28)
    DataTransferHeader.parse(msg)  # fine without a limit
    with pytest.raises(SmbdProtocolError):
        DataTransferHeader.parse(msg, max_fragmented_size=131072)


def test_protocol_error_is_a_protocol_violation():
    assert issubclass(SmbdProtocolError, ProtocolViolation)
    assert issubclass(SmbdLocalError, RuntimeError)


@pytest.mark.parametrize("blob", [b"", b"\x00\x01" * 9 + b"\x00"])
def test_negotiate_messages_reject_short(blob):
    with pytest.raises(SmbdProtocolError):
        NegotiateRequest.parse(blob)
    with pytest.raises(SmbdProtocolError):
        NegotiateResponse.parse(blob + b"\x00" * 12)  # still < 32


# ---------------------------------------------------------------- negotiation

def negotiated(config=None, posted=255, request=LINUX_NEGOTIATE_REQUEST, now=0.0):
    conn = SmbdConnection(config, now=now)
    conn.receive_reposted(posted)
    conn.receive(request, now)
    return conn, conn.events()


def test_negotiate_linux_client_response_satisfies_cifs_checks():
    conn, events = negotiated()
    assert isinstance(events[0], PostSend) and isinstance(events[1], NegotiateDone)
    resp = NegotiateResponse.parse(events[0].payload)
    # What cifs.ko requires (LAB.md / [MS-SMBD] 3.1.5.7).
    assert resp.negotiated_version == 0x0100 and resp.status == 0
    assert resp.credits_requested == 255 and resp.credits_granted > 0
    assert resp.preferred_send_size <= 1364
    assert resp.max_receive_size >= 128 and resp.max_fragmented_size >= 131072
    # 254: one of the 255 posted receives carried the request itself.
    assert resp.credits_granted == 254 == conn.receive_credits
    assert conn.state is State.ESTABLISHED and conn.send_credits == 0


def test_negotiate_reproduces_spec_example_response():
    cfg = SmbdConfig(send_credit_target=10, max_send_size=1024, max_receive_size=1024,
                     max_fragmented_size=131072, max_read_write_size=0x100000)
    _, events = negotiated(cfg, posted=11, request=SPEC_NEGOTIATE_REQUEST)
    assert events[0].payload == SPEC_NEGOTIATE_RESPONSE


def test_negotiate_sizes_are_clamped_to_the_peer():
    req = NegotiateRequest(0x0100, 0x0100, 16, preferred_send_size=600,
                           max_receive_size=512, max_fragmented_size=131072).pack()
    conn, events = negotiated(request=req)
    resp = NegotiateResponse.parse(events[0].payload)
    assert resp.preferred_send_size == 512      # never more than the peer receives
    assert resp.max_receive_size == 600         # 3.1.5.6: min(ours, its PreferredSendSize)
    assert resp.credits_granted == 16           # capped by what the peer asked for
    assert events[1].params.max_fragmented_send_size == 131072


def test_negotiate_waits_for_a_reposted_receive_before_granting():
    conn = SmbdConnection(now=0.0)
    conn.receive_reposted(1)                    # only the buffer the request lands in
    conn.receive(LINUX_NEGOTIATE_REQUEST, 0.0)
    assert conn.events() == [] and conn.state is State.NEGOTIATE_RESPONDING
    conn.receive_reposted(1)
    events = conn.events()
    assert NegotiateResponse.parse(events[0].payload).credits_granted == 1
    assert conn.state is State.ESTABLISHED


@pytest.mark.parametrize("fields, why", [
    ((0x0200, 0x0200, 255, 1364, 1364, 1048576), "version range excludes 0x0100"),
    ((0x0100, 0x0100, 0, 1364, 1364, 1048576), "zero credits requested"),
    ((0x0100, 0x0100, 255, 1364, 127, 1048576), "MaxReceiveSize < 128"),
    ((0x0100, 0x0100, 255, 1364, 1364, 131071), "MaxFragmentedSize < 131072"),
])
def test_negotiate_rejects_bad_requests(fields, why):
    conn = SmbdConnection(now=0.0)
    conn.receive_reposted(10)
    with pytest.raises(SmbdProtocolError):
        conn.receive(NegotiateRequest(*fields).pack(), 0.0)
    events = conn.events()
    assert isinstance(events[-1], CloseConnection)
    assert conn.state is State.CLOSED
    if fields[0] == 0x0200:
        # 3.1.5.6: a version mismatch is answered with STATUS_NOT_SUPPORTED first.
        assert events[0] == PostSend(NOT_SUPPORTED_RESPONSE)
    else:
        assert len(events) == 1


def test_negotiate_short_request():
    conn = SmbdConnection(now=0.0)
    conn.receive_reposted(2)
    with pytest.raises(SmbdProtocolError):
        conn.receive(LINUX_NEGOTIATE_REQUEST[:19], 0.0)


def test_negotiate_timeout():
    conn = SmbdConnection(SmbdConfig(negotiate_timeout=5.0), now=100.0)
    assert conn.next_deadline() == 105.0
    conn.timer(104.9)
    assert conn.events() == []
    conn.timer(105.0)
    assert [type(e) for e in conn.events()] == [CloseConnection]


def test_local_misuse():
    conn = SmbdConnection(now=0.0)
    with pytest.raises(SmbdLocalError):
        conn.send_message(b"x")                 # before negotiation
    with pytest.raises(SmbdLocalError):
        conn.receive(LINUX_NEGOTIATE_REQUEST, 0.0)  # no receive posted
    conn, _ = negotiated()
    with pytest.raises(SmbdLocalError):
        conn.send_completed(5)                  # only the negotiate response is in flight
    with pytest.raises(SmbdLocalError):
        conn.send_message(b"x" * (1048576 + 1))  # over the peer's MaxFragmentedSize


# ---------------------------------------------------------------- credits

def grant(n, *, flags=0, data=b"", remaining=0, requested=255):
    """A message from the peer granting ``n`` credits to the server."""
    return build_data_transfer(requested, n, flags, remaining, data)


def decode(ev: PostSend):
    hdr = DataTransferHeader.parse(ev.payload)
    return hdr, bytes(hdr.payload(ev.payload))


def test_peer_without_grants_means_we_queue():
    conn, _ = negotiated()
    conn.send_message(b"A" * 100)
    assert conn.events() == [] and conn.send_queue_length == 1
    conn.receive(grant(3), 1.0)
    conn.receive_reposted(1)
    (ev,) = conn.events()
    hdr, data = decode(ev)
    assert data == b"A" * 100 and hdr.remaining_data_length == 0
    assert conn.send_credits == 2


def test_last_credit_only_carries_a_grant():
    # 2 receives: one takes the request, one is granted in the response.
    conn, _ = negotiated(posted=2)
    assert conn.receive_credits == 1
    conn.receive(grant(1), 1.0)                 # peer spends its only credit, gives us 1
    assert conn.send_credits == 1 and conn.posted_receives == 0
    conn.send_message(b"B" * 10)
    # Not sent: the last credit needs a grant, and every posted receive is granted,
    # so the core asks for one more receive ([MS-SMBD] 3.1.5.9).
    assert conn.events() == [PostReceives(1)]
    conn.send_message(b"C")
    assert conn.events() == [], "asks only once per stall"
    conn.receive_reposted(1)                    # now a credit can be granted with it
    (ev,) = conn.events()
    hdr, data = decode(ev)
    assert hdr.credits_granted == 1 and data == b"B" * 10
    assert conn.send_credits == 0 and conn.receive_credits == 1 and conn.send_queue_length == 1


def test_grants_never_exceed_posted_receives():
    conn, _ = negotiated(posted=5)              # 4 granted in the response
    assert conn.receive_credits == 4
    conn.receive(grant(50), 1.0)
    for i in range(20):
        conn.send_message(b"m%d" % i)
    granted = sum(decode(e)[0].credits_granted for e in conn.events() if isinstance(e, PostSend))
    assert granted == 0                          # nothing reposted yet: nothing to grant
    assert conn.receive_credits == conn.posted_receives == 3
    conn.receive_reposted(1)
    conn.send_message(b"after repost")
    granted = sum(decode(e)[0].credits_granted for e in conn.events() if isinstance(e, PostSend))
    assert granted == 1 and conn.receive_credits == conn.posted_receives == 4


def test_response_requested_is_answered_promptly():
    conn, _ = negotiated()
    conn.receive(grant(10, flags=SMB_DIRECT_RESPONSE_REQUESTED), 1.0)
    (ev,) = conn.events()
    hdr, data = decode(ev)
    assert data == b"" and len(ev.payload) == 20
    assert not hdr.response_requested
    assert conn.send_credits == 9


def test_empty_message_carries_grants_when_peer_runs_out():
    conn, _ = negotiated(posted=3)              # peer holds 2
    conn.receive(grant(10), 1.0)
    conn.receive(grant(0), 1.0)                 # peer holds 0; we have nothing to send
    assert conn.events() == [] and conn.receive_credits == 0
    conn.receive_reposted(1)
    (ev,) = conn.events()
    hdr, data = decode(ev)
    assert data == b"" and hdr.credits_granted == 1 and conn.receive_credits == 1


def test_empty_grant_when_peer_low_only_if_it_refills():
    conn, _ = negotiated(posted=80)             # peer holds 79; low watermark 31
    conn.receive(grant(10), 1.0)
    for _ in range(49):
        conn.receive(grant(0), 1.0)             # peer down to 29 credits
    conn.receive_reposted(1)                    # granting 1 would be a dribble: wait
    assert conn.events() == []
    conn.receive_reposted(39)                   # 29 + 40 > 2 * 31: worth a message
    (ev,) = conn.events()
    hdr, data = decode(ev)
    assert data == b"" and hdr.credits_granted == 40 and conn.receive_credits == 69


def test_no_empty_grant_while_peer_has_plenty():
    conn, _ = negotiated()                       # peer holds 254
    conn.receive(grant(10), 1.0)
    conn.receive_reposted(1)
    assert conn.events() == []                   # the grant rides on the next response


def test_we_ask_for_credits_when_about_to_run_out():
    conn, _ = negotiated()
    conn.receive(grant(3), 1.0)
    conn.receive_reposted(1)
    conn.send_message(b"x" * 3000)               # 3 fragments, only 3 credits
    events = [e for e in conn.events() if isinstance(e, PostSend)]
    flags = [decode(e)[0].flags for e in events]
    # first fragment (3 -> 2 credits) plain; second leaves 1 credit: ask the peer.
    assert flags[0] == 0 and flags[1] == SMB_DIRECT_RESPONSE_REQUESTED
    assert conn.send_queue_length == 1           # third waits for a grant


def test_peer_sending_without_credit_is_an_error():
    conn, _ = negotiated(posted=2)               # peer holds 1 credit
    conn.receive_reposted(5)                     # posted, but we hold no credit to grant them
    conn.receive(grant(0), 1.0)
    assert conn.events() == [] and conn.receive_credits == 0
    with pytest.raises(SmbdProtocolError):
        conn.receive(grant(0), 1.0)              # second message, no credit left
    assert isinstance(conn.events()[-1], CloseConnection)


def test_receive_without_posted_buffer_is_local_misuse():
    conn = SmbdConnection(now=0.0)
    conn.receive_reposted(1)
    conn.receive(LINUX_NEGOTIATE_REQUEST, 0.0)   # waits: nothing left to grant
    with pytest.raises(SmbdLocalError):
        conn.receive(grant(1), 0.0)              # a completion for a receive never posted


def test_send_queue_depth_is_bounded():
    cfg = SmbdConfig(max_sends_in_flight=4)
    conn, events = negotiated(cfg)
    conn.send_completed(1)                        # the negotiate response
    conn.receive(grant(100), 1.0)
    conn.send_message(b"z" * 20000)
    assert len(conn.events()) == 4
    conn.send_completed(2)
    assert len(conn.events()) == 2


def test_invalidate_token_goes_with_the_last_fragment():
    conn, _ = negotiated()
    conn.receive(grant(100), 1.0)
    conn.send_message(b"r" * 3000, invalidate_token=0x1234)
    rkeys = [e.invalidate_rkey for e in conn.events()]
    assert rkeys == [None, None, 0x1234]


def test_message_over_max_receive_size_is_an_error():
    conn, _ = negotiated()
    with pytest.raises(SmbdProtocolError):
        conn.receive(grant(1, data=b"q" * 1400), 1.0)


# ---------------------------------------------------------------- fragmentation

def test_fragment_100k_and_reassemble():
    conn, _ = negotiated()
    conn.receive(grant(255), 1.0)
    message = bytes(range(256)) * 400           # 102400 bytes
    conn.send_message(message)
    events = conn.events()
    assert len(events) == math.ceil(len(message) / (1364 - 24)) == 77
    out = bytearray()
    expected_remaining = len(message)
    for ev in events:
        assert len(ev.payload) <= 1364
        hdr, data = decode(ev)
        expected_remaining -= len(data)
        assert hdr.remaining_data_length == expected_remaining
        out += data
    assert expected_remaining == 0 and bytes(out) == message

    # And the other direction: the peer's fragments reassemble into one MessageReceived.
    conn.receive_reposted(1)
    pieces = [message[i:i + 1340] for i in range(0, len(message), 1340)]
    left = len(message)
    delivered = []
    for piece in pieces:
        left -= len(piece)
        conn.receive(grant(0, data=piece, remaining=left), 2.0)
        conn.receive_reposted(1)
        delivered += [e for e in conn.events() if isinstance(e, MessageReceived)]
    assert delivered == [MessageReceived(message)]


def test_reassembly_over_max_fragmented_size():
    conn, _ = negotiated(SmbdConfig(max_fragmented_size=131072))
    with pytest.raises(SmbdProtocolError):
        conn.receive(grant(0, data=b"a" * 1000, remaining=131072), 1.0)


def test_reassembly_inconsistent_train():
    conn, _ = negotiated()
    conn.receive(grant(0, data=b"a" * 1000, remaining=5000), 1.0)
    with pytest.raises(SmbdProtocolError):
        conn.receive(grant(0, data=b"a" * 1000, remaining=3000), 1.0)  # should say 4000


def test_empty_messages_inside_a_train_are_fine():
    conn, _ = negotiated()
    conn.receive(grant(0, data=b"a" * 100, remaining=50), 1.0)
    conn.receive(grant(2), 1.0)
    conn.receive(grant(0, data=b"b" * 50, remaining=0), 1.0)
    got = [e for e in conn.events() if isinstance(e, MessageReceived)]
    assert got == [MessageReceived(b"a" * 100 + b"b" * 50)]


# ---------------------------------------------------------------- keepalive (fake clock)

def test_keepalive_sent_after_idle_then_close_without_answer():
    cfg = SmbdConfig(keepalive_interval=120.0, keepalive_timeout=5.0)
    conn, _ = negotiated(cfg, now=0.0)
    conn.receive(grant(10), 2.0)
    assert conn.next_deadline() == 122.0
    conn.timer(121.9)
    assert conn.events() == []
    conn.timer(122.0)
    (ev,) = conn.events()
    hdr, data = decode(ev)
    assert hdr.response_requested and data == b""
    assert conn.next_deadline() == 127.0
    conn.timer(126.9)
    assert conn.events() == []
    conn.timer(127.0)
    (close,) = conn.events()
    assert isinstance(close, CloseConnection) and conn.state is State.CLOSED


def test_keepalive_answered_keeps_connection():
    conn, _ = negotiated(now=0.0)
    conn.receive(grant(10), 0.0)
    conn.timer(120.0)
    assert decode(conn.events()[0])[0].response_requested
    conn.receive(grant(1), 121.0)               # the peer's answer
    conn.timer(126.0)
    assert conn.events() == [] and conn.state is State.ESTABLISHED
    assert conn.next_deadline() == 241.0


def test_keepalive_without_credits_still_times_out():
    conn, _ = negotiated(now=0.0)               # no send credits at all
    conn.timer(120.0)
    assert conn.events() == []
    conn.timer(125.0)
    assert isinstance(conn.events()[0], CloseConnection)


# ---------------------------------------------------------------- client/server pair

class TinyClient:
    """A minimal [MS-SMBD] initiator for tests: negotiates, keeps the credit rules of
    3.1.5.1/3.1.5.9 (last credit only with a grant), fragments, reassembles."""

    def __init__(self, receives=255, send_size=1364, recv_size=1364, max_fragmented=1048576):
        self.posted = receives
        self.send_size = send_size
        self.recv_size = recv_size
        self.max_fragmented = max_fragmented
        self.granted = 0            # credits the server holds
        self.send_credits = 0
        self.target = 1
        self.queue: deque = deque()  # [bytes, sent]
        self.out: list[bytes] = []
        self.inbox: list[bytes] = []
        self.buf = bytearray()
        self.immediate = False
        self.established = False

    def negotiate_request(self) -> bytes:
        return NegotiateRequest(0x0100, 0x0100, 255, self.send_size, self.recv_size,
                                self.max_fragmented).pack()

    def on_message(self, data: bytes) -> None:
        assert self.posted > 0, "server sent into no posted receive"
        self.posted -= 1
        if not self.established:
            resp = NegotiateResponse.parse(data)
            assert resp.status == 0 and resp.credits_granted > 0 and resp.credits_requested > 0
            assert resp.preferred_send_size <= self.recv_size
            self.send_credits = resp.credits_granted
            self.target = resp.credits_requested
            self.send_size = min(self.send_size, resp.max_receive_size)
            self.established = True
            return
        assert self.granted > 0, "server sent without a credit"
        self.granted -= 1
        assert len(data) <= self.recv_size
        hdr = DataTransferHeader.parse(data, max_fragmented_size=self.max_fragmented)
        self.send_credits += hdr.credits_granted
        self.target = hdr.credits_requested
        if hdr.response_requested:
            self.immediate = True
        if hdr.data_length:
            self.buf += hdr.payload(data)
            if not hdr.remaining_data_length:
                self.inbox.append(bytes(self.buf))
                self.buf.clear()

    def repost(self, n: int) -> None:
        self.posted += n
        if self.granted == 0 and self._grantable():
            self.immediate = True               # the server holds nothing: grant at once

    def _grantable(self, stalled=False) -> int:
        if stalled:
            return max(0, self.posted - self.granted)
        return max(0, min(self.posted, self.target, 255) - self.granted)

    def send(self, msg: bytes) -> None:
        self.queue.append([msg, 0])

    def pump(self) -> None:
        while self.established and (self.queue or self.immediate) and self.send_credits:
            g = self._grantable(stalled=self.send_credits == 1)
            if self.send_credits == 1 and g == 0:
                self.posted += 1                # 3.1.5.9: post a spare receive to grant
                continue
            self.send_credits -= 1
            self.granted += g
            self.immediate = False
            if self.queue:
                item = self.queue[0]
                room = self.send_size - 24
                piece = item[0][item[1]:item[1] + room]
                item[1] += len(piece)
                remaining = len(item[0]) - item[1]
                if not remaining:
                    self.queue.popleft()
                self.out.append(build_data_transfer(255, g, 0, remaining, piece))
            else:
                self.out.append(build_data_transfer(255, g, 0, 0))


def run_pair(server_cfg, client, server_posted, to_server, to_client, choices):
    """Wire a SmbdConnection and a TinyClient together and run until nothing can move.

    ``choices`` (an iterator of ints) decides the interleaving: which wire delivers
    next, and whether a receiver reposts its buffer at once or some time later. Once they
    run out, held-back buffers are reposted first: a driver reposts each buffer in the end,
    and a scheduler that withheld one for ever would make the pair trade grant-only
    messages for ever (each side then has one usable receive, so each grant uses the
    other's last credit and must be answered by a grant: a livelock of the schedule, not of
    either peer; it ends at the first repost).
    """
    now = 0.0
    server = SmbdConnection(server_cfg, now=now)
    server.receive_reposted(server_posted)
    wire_to_server: deque[bytes] = deque([client.negotiate_request()])
    wire_to_client: deque[bytes] = deque()
    delayed = {"server": 0, "client": 0}
    got_by_server: list[bytes] = []
    pending_to_server, pending_to_client = list(to_server), list(to_client)

    exhausted = False

    def pick(n):
        nonlocal exhausted
        choice = next(choices, None)
        if choice is None:
            exhausted = True
            return 0
        return choice % n

    for _ in range(100_000):
        if server.state is State.ESTABLISHED:
            while pending_to_client:
                server.send_message(pending_to_client.pop(0))
        if client.established:
            while pending_to_server:
                client.send(pending_to_server.pop(0))
        for ev in server.events():
            if isinstance(ev, PostSend):
                wire_to_client.append(ev.payload)
                server.send_completed(1)
            elif isinstance(ev, PostReceives):
                server.receive_reposted(ev.count)
            elif isinstance(ev, MessageReceived):
                got_by_server.append(ev.smb2)
            elif isinstance(ev, CloseConnection):
                raise AssertionError(f"server closed: {ev.reason}")
        assert server.receive_credits <= server.posted_receives
        client.pump()
        wire_to_server.extend(client.out)
        client.out.clear()

        options = []
        if wire_to_server:
            options.append("to_server")
        if wire_to_client:
            options.append("to_client")
        if delayed["server"] or delayed["client"]:
            options.append("reposts")
        if not options:
            break
        step = options[pick(len(options))]
        if exhausted and "reposts" in options:
            step = "reposts"
        now += 0.001
        if step == "to_server":
            server.receive(wire_to_server.popleft(), now)
            if pick(2):
                delayed["server"] += 1
            else:
                server.receive_reposted(1)
        elif step == "to_client":
            client.on_message(wire_to_client.popleft())
            if pick(2):
                delayed["client"] += 1
            else:
                client.repost(1)
        else:
            if delayed["server"]:
                server.receive_reposted(delayed["server"])
            if delayed["client"]:
                client.repost(delayed["client"])
            delayed["server"] = delayed["client"] = 0
    else:
        raise AssertionError("pair did not settle")
    return server, got_by_server


def test_pair_smoke():
    client = TinyClient()
    msgs = [b"hello", bytes(5000), b"x" * 100_000]
    server, got = run_pair(None, client, 255, msgs, list(reversed(msgs)), iter([]))
    assert got == msgs
    assert client.inbox == list(reversed(msgs))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    to_server=st.lists(st.binary(min_size=1, max_size=20_000), max_size=5),
    to_client=st.lists(st.binary(min_size=1, max_size=20_000), max_size=5),
    server_posted=st.integers(min_value=2, max_value=40),
    client_receives=st.integers(min_value=2, max_value=40),
    server_send=st.integers(min_value=128, max_value=1364),
    client_send=st.integers(min_value=128, max_value=1364),
    choices=st.lists(st.integers(min_value=0, max_value=5), max_size=400),
)
def test_pair_roundtrip_property(to_server, to_client, server_posted, client_receives,
                                 server_send, client_send, choices):
    cfg = SmbdConfig(max_send_size=server_send, max_receive_size=1364, receive_credit_max=255,
                     grant_low_watermark=2)
    client = TinyClient(receives=client_receives, send_size=client_send)
    server, got = run_pair(cfg, client, server_posted, to_server, to_client, iter(choices))
    assert got == to_server
    assert client.inbox == to_client
    assert server.receive_credits <= server.posted_receives


def test_tag_rides_on_the_last_fragment_only():
    """A tracked message (an oplock break) is known to have arrived when its last fragment's
    send completes: only that PostSend carries the tag."""
    conn, _ = negotiated()
    conn.receive(grant(50), 1.0)
    conn.receive_reposted(1)
    conn.send_message(b"a" * 100)
    conn.send_message(b"x" * 3000, tag=7)         # 3 fragments
    sends = [e for e in conn.events() if isinstance(e, PostSend)]
    assert [e.tag for e in sends] == [None, None, None, 7]
    assert decode(sends[-1])[0].remaining_data_length == 0
