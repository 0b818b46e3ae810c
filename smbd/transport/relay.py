"""The relay protocol between the SMB Direct proxy (smbdd) and a worker, no I/O.

One Unix stream socket per SMB Direct connection. Whole SMB2 messages cross it, plus
the requests a worker makes for RDMA data movement, which only the proxy can do (it
holds the queue pairs). Payloads of RDMA reads and writes never cross the socket: they
sit in slots of the shared-memory pool, named by integer.

Frame: type u8, flags u8, reserved u16, length u32, then ``length`` bytes.
  SETUP      proxy->worker  JSON: pool name, slot size, peer, negotiated sizes
  MESSAGE    both ways      an SMB2 message; flag INVALIDATE (worker->proxy): a u32 token
                            precedes it (send the response as SEND_WITH_INVALIDATE of that
                            token); flag PREFETCHED (proxy->worker, a WRITE with an RDMA
                            channel): u32 request id, u32 slot precede it: the proxy already
                            started the RDMA read of the WRITE's buffers into that slot, now
                            the worker's, and an RDMA_DONE with that id follows
  ALLOC      worker->proxy  u32 request id: asks for a pool slot
  ALLOC_DONE proxy->worker  u32 request id, u32 slot (the proxy queues ALLOC when the
                            pool is exhausted: clients slow down, memory does not grow)
  RELEASE    worker->proxy  u32 slot
  RDMA_WRITE worker->proxy  u32 id, u32 slot, u32 length, then buffer descriptors:
                            copy slot bytes into the client's buffers (a READ)
  RDMA_READ  worker->proxy  same layout: fill the slot from the client's buffers (a WRITE)
  RDMA_DONE  proxy->worker  u32 id, i32 status (0 or -errno), u32 bytes moved
  RECLAIM    proxy->worker  no payload: the pool ran dry, give back the slots kept idle
  SENT       proxy->worker  u32 tag: the MESSAGE sent with flag TRACKED and that tag (a u32
                            before the SMB2 bytes) has left in full: the send completion of
                            its last fragment came, so the client's RDMA NIC acknowledged it
                            (reliable connection). Only oplock and lease breaks ask for it
                            (smbd.server.break_delivery); nothing else pays for the frame.

Slots a worker receives stay its own until it RELEASEs them, so it may keep a few idle
for its next I/O (one ALLOC round trip fewer each); RECLAIM takes them back for
connections that wait. A worker does not wait for the RDMA_DONE of an RDMA_WRITE before
sending the READ response behind it: the queue pair executes the write before the send
(reliable connection ordering), and a failed write breaks the connection anyway.
Request ids of the worker's requests have the top bit clear, the proxy's prefetches set.
"""
from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass

from smbd.status import ProtocolViolation
from smbd.wire.fileio import BufferDescriptor

_FRAME = struct.Struct("<BBHI")
_U32 = struct.Struct("<I")
_IDS = struct.Struct("<II")
_RDMA = struct.Struct("<III")
_DONE = struct.Struct("<IiI")
_DESC = struct.Struct("<QII")  # SMB2_BUFFER_DESCRIPTOR_V1, MS-SMBD 2.2.3.1
MAX_FRAME = 16 * 1024 * 1024
FLAG_INVALIDATE = 0x01
FLAG_PREFETCHED = 0x02
FLAG_TRACKED = 0x04
PROXY_REQUEST_ID = 0x80000000  # top bit of the proxy's own request ids


class FrameType(enum.IntEnum):
    SETUP = 1
    MESSAGE = 2
    ALLOC = 3
    ALLOC_DONE = 4
    RELEASE = 5
    RDMA_WRITE = 6
    RDMA_READ = 7
    RDMA_DONE = 8
    RECLAIM = 9
    SENT = 10


def frame(ftype: int, payload_len: int, flags: int = 0) -> bytes:
    return _FRAME.pack(ftype, flags, 0, payload_len)


def message(smb2_len: int, invalidate_token: int | None = None) -> bytes:
    """Header for a MESSAGE frame; the SMB2 bytes follow (sent without joining them)."""
    if invalidate_token is None:
        return frame(FrameType.MESSAGE, smb2_len)
    return frame(FrameType.MESSAGE, smb2_len + 4, FLAG_INVALIDATE) + _U32.pack(invalidate_token)


def tracked_message(smb2_len: int, tag: int) -> bytes:
    """Header for a MESSAGE frame whose complete sending the proxy reports with SENT(tag)."""
    return frame(FrameType.MESSAGE, smb2_len + 4, FLAG_TRACKED) + _U32.pack(tag)


def sent(tag: int) -> bytes:
    return frame(FrameType.SENT, 4) + _U32.pack(tag)


def prefetched_message(smb2_len: int, request_id: int, slot: int) -> bytes:
    """Header for a MESSAGE frame of a WRITE whose RDMA read the proxy already started."""
    return frame(FrameType.MESSAGE, smb2_len + 8, FLAG_PREFETCHED) + _IDS.pack(request_id, slot)


def reclaim() -> bytes:
    return frame(FrameType.RECLAIM, 0)


def setup(info: dict) -> bytes:
    data = json.dumps(info).encode()
    return frame(FrameType.SETUP, len(data)) + data


def alloc(request_id: int) -> bytes:
    return frame(FrameType.ALLOC, 4) + _U32.pack(request_id)


def alloc_done(request_id: int, slot: int) -> bytes:
    return frame(FrameType.ALLOC_DONE, 8) + _IDS.pack(request_id, slot)


def release(slot: int) -> bytes:
    return frame(FrameType.RELEASE, 4) + _U32.pack(slot)


def rdma(ftype: int, request_id: int, slot: int, length: int, descriptors) -> bytes:
    body = _RDMA.pack(request_id, slot, length) + b"".join(
        _DESC.pack(d.offset, d.token, d.length) for d in descriptors)
    return frame(ftype, len(body)) + body


def rdma_done(request_id: int, status: int, moved: int) -> bytes:
    return frame(FrameType.RDMA_DONE, _DONE.size) + _DONE.pack(request_id, status, moved)


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    flags: int
    payload: memoryview

    def message(self) -> tuple[bytes, int | None]:
        """The SMB2 message and the INVALIDATE token (None without that flag)."""
        if self.flags & (FLAG_INVALIDATE | FLAG_TRACKED):
            if self.flags & FLAG_INVALIDATE and self.flags & FLAG_TRACKED:
                raise ProtocolViolation("MESSAGE frame both INVALIDATE and TRACKED")
            if len(self.payload) < 4:
                raise ProtocolViolation("MESSAGE frame too short for its token")
            token = _U32.unpack_from(self.payload)[0]
            return bytes(self.payload[4:]), token if self.flags & FLAG_INVALIDATE else None
        if self.flags & FLAG_PREFETCHED:
            return bytes(self.payload[_IDS.size:]), None
        return bytes(self.payload), None

    def tracked(self) -> int | None:
        """The tag of a TRACKED MESSAGE, else None."""
        return self._unpack(_U32)[0] if self.flags & FLAG_TRACKED else None

    def prefetch(self) -> tuple[int, int] | None:
        """(request id, slot) of a PREFETCHED MESSAGE, else None."""
        if not self.flags & FLAG_PREFETCHED:
            return None
        return self._unpack(_IDS)

    def u32(self) -> int:
        return self._unpack(_U32)[0]

    def ids(self) -> tuple[int, int]:
        return self._unpack(_IDS)

    def done(self) -> tuple[int, int, int]:
        return self._unpack(_DONE)

    def rdma(self) -> tuple[int, int, int, tuple[BufferDescriptor, ...]]:
        request_id, slot, length = self._unpack(_RDMA)
        rest = self.payload[_RDMA.size:]
        if len(rest) % _DESC.size:
            raise ProtocolViolation("RDMA frame with a partial descriptor")
        descs = tuple(BufferDescriptor(*_DESC.unpack_from(rest, i)) for i in range(0, len(rest), _DESC.size))
        return request_id, slot, length, descs

    def json(self) -> dict:
        return json.loads(bytes(self.payload))

    def _unpack(self, st: struct.Struct) -> tuple:
        if len(self.payload) < st.size:
            raise ProtocolViolation(f"relay frame {self.type} too short")
        return st.unpack_from(self.payload)


class FrameDecoder:
    """Bytes in, frames out."""

    def __init__(self, max_frame: int = MAX_FRAME):
        self.max_frame = max_frame
        self._buf = bytearray()

    def pending(self) -> bytes:
        """Bytes of frames not yet whole."""
        return bytes(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out = []
        pos = 0
        while len(self._buf) - pos >= _FRAME.size:
            ftype, flags, _, length = _FRAME.unpack_from(self._buf, pos)
            if length > self.max_frame or ftype not in FrameType._value2member_map_:
                raise ProtocolViolation(f"bad relay frame type {ftype} length {length}")
            end = pos + _FRAME.size + length
            if len(self._buf) < end:
                break
            out.append(Frame(ftype, flags, memoryview(bytes(self._buf[pos + _FRAME.size:end]))))
            pos = end
        if pos:
            del self._buf[:pos]
        return out
