"""Fewer wake-ups on the relay socket: what each side holds back and sends together.

Under the lab's emulation every send(2) between the proxy and a worker costs about a
millisecond of CPU on each side, so both batch: the proxy writes everything one batch of
completions produces in one go (RelayProtocol.cork/uncork/flush), and the worker sends a
READ's RDMA_WRITE frame with the response behind it (ProxyTransport.write_with_next).
Order matters: the RDMA_WRITE must reach the proxy before the response it belongs to.
"""
from __future__ import annotations

import asyncio

from smbd.transport import relay
from smbd.transport.proxy import ProxyTransport
from smbdd.proxy.connection import RelayProtocol


class RecordingTransport:
    """An asyncio transport that records each write call (one call = one send(2))."""

    def __init__(self):
        self.calls: list[bytes] = []

    def writelines(self, parts):
        self.calls.append(b"".join(bytes(p) for p in parts))

    def write(self, data):
        self.calls.append(bytes(data))

    def close(self):
        pass


class FakeConn:
    peer = "rdma:test"
    closed = False


def frames(data: bytes) -> list[tuple[int, bytes]]:
    return [(f.type, bytes(f.payload)) for f in relay.FrameDecoder().feed(data)]


def test_proxy_corked_writes_leave_in_one_call_in_order():
    proto = RelayProtocol(FakeConn())
    out = RecordingTransport()
    proto.connection_made(out)
    proto.cork()
    proto.send_message(b"first")
    proto.write(relay.rdma_done(7, 0, 4096))
    proto.send_message(b"second")
    assert out.calls == []  # nothing leaves while corked
    proto.uncork()
    assert len(out.calls) == 1
    got = frames(out.calls[0])
    assert [t for t, _ in got] == [relay.FrameType.MESSAGE, relay.FrameType.RDMA_DONE, relay.FrameType.MESSAGE]
    assert got[0][1] == b"first" and got[2][1] == b"second"
    proto.send_message(b"after")  # uncorked: written at once
    assert len(out.calls) == 2 and frames(out.calls[1])[0][1] == b"after"


def test_proxy_flush_writes_now_and_stays_corked():
    """A prefetched WRITE must reach the worker before the RDMA read is posted."""
    proto = RelayProtocol(FakeConn())
    out = RecordingTransport()
    proto.connection_made(out)
    proto.cork()
    proto.send_prefetched(b"write-request", 0x80000001, 3)
    proto.flush()
    assert len(out.calls) == 1 and frames(out.calls[0])[0][1].endswith(b"write-request")
    proto.write(relay.rdma_done(0x80000001, 0, 10))
    assert len(out.calls) == 1  # still corked
    proto.uncork()
    assert [t for t, _ in frames(out.calls[1])] == [relay.FrameType.RDMA_DONE]


def test_proxy_drops_corked_writes_of_a_closed_connection():
    conn = FakeConn()
    proto = RelayProtocol(conn)
    out = RecordingTransport()
    proto.connection_made(out)
    proto.cork()
    proto.send_message(b"late")
    conn.closed = True
    proto.uncork()
    assert out.calls == []


def test_worker_rdma_write_frame_rides_with_the_response():
    async def main():
        t = ProxyTransport("rdma:test", on_message=lambda m: None, on_lost=lambda: None)
        out = RecordingTransport()
        t.connection_made(out)
        rdma_frame = relay.rdma(relay.FrameType.RDMA_WRITE, 5, 2, 4096, [])
        t.write_with_next([rdma_frame])
        assert out.calls == []
        await t.send([b"\xfeSMB-read-response"])
        assert len(out.calls) == 1  # one send(2): the frame first, then the response
        got = frames(out.calls[0])
        assert [ty for ty, _ in got] == [relay.FrameType.RDMA_WRITE, relay.FrameType.MESSAGE]
        await asyncio.sleep(0)  # the end-of-iteration flush finds nothing left to send
        assert len(out.calls) == 1

        # With no response following in this iteration, the frame still goes, on its own.
        t.write_with_next([rdma_frame])
        await asyncio.sleep(0)
        assert len(out.calls) == 2 and [ty for ty, _ in frames(out.calls[1])] == [relay.FrameType.RDMA_WRITE]

    asyncio.run(main())
