"""Breaks that fail over to another channel when a transport does not acknowledge them
(smbd.server.break_delivery), without a network and without sleeping: time is passed in.
The same behaviour against smbtorture's smb2.multichannel runs in tests/test_smbtorture.py,
and against a real socket in tests/test_oplocks.py."""
from __future__ import annotations

import asyncio

from smbd.server.break_delivery import RTO_FACTOR, Ack, TransportAck, deliver


def test_acknowledged_once_the_peer_has_everything_up_to_the_mark():
    wait = TransportAck(mark=1000, deadline=10.0)
    assert wait.check(delivered=999, now=1.0) is Ack.WAITING
    assert wait.check(delivered=1000, now=1.0) is Ack.ACKED
    assert wait.check(delivered=5000, now=99.0) is Ack.ACKED  # late, but there


def test_timed_out_at_the_deadline_and_unknown_counts_as_acknowledged():
    wait = TransportAck(mark=1000, deadline=10.0)
    assert wait.check(delivered=0, now=9.99) is Ack.WAITING
    assert wait.check(delivered=0, now=10.0) is Ack.TIMED_OUT
    assert wait.check(delivered=None, now=10.0) is Ack.ACKED  # a transport that cannot tell


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeTransport:
    """Counts what was written; the peer acknowledges ``acks`` of it."""

    def __init__(self, peer: str, acks: bool = True, rto: float = 0.25):
        self.peer, self.acks, self.rto = peer, acks, rto
        self.written = 0

    def delivered(self) -> int:
        return self.written if self.acks else 0

    def retransmit_timeout(self) -> float:
        return self.rto


class FakeConn:
    def __init__(self, peer: str, acks: bool = True, fails: bool = False):
        self.transport = FakeTransport(peer, acks)
        self.force_unacked = False
        self.closed = False
        self.fails = fails
        self.sent: list[bytes] = []

    async def send_unsolicited(self, message: bytes, session, encrypt: bool) -> None:
        if self.fails:
            raise ConnectionResetError("gone")
        self.sent.append(message)
        self.transport.written += 4 + len(message)

    def close(self) -> None:
        self.closed = True


def _deliver(channels, clock: Clock) -> bool:
    return asyncio.run(deliver(lambda: channels, b"BREAK", None, False, "oplock", clock=clock, sleep=clock.sleep))


def test_first_channel_that_acknowledges_gets_it_once():
    a, b = FakeConn("a"), FakeConn("b")
    assert _deliver([a, b], Clock())
    assert a.sent == [b"BREAK"] and b.sent == [] and not a.closed


def test_unacknowledged_channel_is_closed_after_six_rtos_and_the_next_one_gets_the_break():
    clock = Clock()
    dead, alive = FakeConn("dead", acks=False), FakeConn("alive")
    assert _deliver([dead, alive], clock)
    assert dead.sent == [b"BREAK"] and dead.closed  # Samba terminates the channel too
    assert alive.sent == [b"BREAK"]
    assert clock.now == RTO_FACTOR * 0.25  # gave up at the sixth timeout, not before


def test_smbtorture_forced_channel_counts_as_dead_even_if_tcp_acknowledged():
    forced, other = FakeConn("forced"), FakeConn("other")
    forced.force_unacked = True
    assert _deliver([forced, other], Clock())
    assert forced.closed and other.sent == [b"BREAK"]


def test_closed_and_failing_channels_are_skipped():
    closed, failing, good = FakeConn("closed"), FakeConn("failing", fails=True), FakeConn("good")
    closed.closed = True
    assert _deliver([closed, failing, good], Clock())
    assert closed.sent == [] and good.sent == [b"BREAK"]


def test_no_channel_acknowledges():
    clock = Clock()
    only = FakeConn("only", acks=False)
    assert not _deliver([only], clock)
    assert only.closed and only.sent == [b"BREAK"]  # tried once, not resent on the same channel
    assert not _deliver([], clock)


def test_channels_are_asked_again_after_a_failure():
    """A channel that joined while the first was timing out is used."""
    clock = Clock()
    dead, late = FakeConn("dead", acks=False), FakeConn("late")
    channels = [dead]

    async def sleep(seconds: float) -> None:
        await clock.sleep(seconds)
        if late not in channels:
            channels.append(late)

    assert asyncio.run(deliver(lambda: channels, b"BREAK", None, False, "lease", clock=clock, sleep=sleep))
    assert late.sent == [b"BREAK"]
