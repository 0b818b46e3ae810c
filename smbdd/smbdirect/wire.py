"""[MS-SMBD] wire messages and the SMB2 RDMA buffer descriptor: parse and build, no I/O.

Every message is little-endian.  ``parse()`` accepts bytes, bytearray or memoryview,
checks every length and offset against the buffer *before* reading, and raises
:class:`~smbdd.smbdirect.errors.SmbdProtocolError` on anything malformed; struct.error
or IndexError never escape.  ``pack()`` produces the exact wire bytes.

Field names are the spec's, in snake_case (``CreditsRequested`` -> ``credits_requested``).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Union

from .errors import SmbdProtocolError

Buffer = Union[bytes, bytearray, memoryview]

#: [MS-SMBD] 1.7: the only protocol version defined.
SMBD_VERSION_1 = 0x0100
#: [MS-SMBD] 2.2.3 Flags: ask the peer to answer promptly (keepalive).
SMB_DIRECT_RESPONSE_REQUESTED = 0x0001

#: [MS-SMBD] 3.1.5.6/3.1.5.7: lower bounds a peer's sizes must respect.
MIN_RECEIVE_SIZE = 128
MIN_FRAGMENTED_SIZE = 131072

#: [MS-SMBD] 3.1.5.8: a data transfer message is at least 20 bytes (the header without
#: Padding); a message carrying data puts it at 24, the first 8-byte aligned offset after it.
DATA_TRANSFER_MIN_LENGTH = 20
DATA_TRANSFER_DATA_OFFSET = 24


def _check_length(buf: Buffer, need: int, what: str) -> None:
    if len(buf) < need:
        raise SmbdProtocolError(f"{what}: {len(buf)} bytes, need at least {need}")


@dataclass(frozen=True, slots=True)
class NegotiateRequest:
    """[MS-SMBD] 2.2.1 Negotiate Request Message (20 bytes), first message of the initiator.

    Only the framing is validated here; the value rules (version range, credits, sizes)
    belong to the receiver's processing, [MS-SMBD] 3.1.5.6, in connection.py.
    """

    min_version: int
    max_version: int
    credits_requested: int
    preferred_send_size: int
    max_receive_size: int
    max_fragmented_size: int
    reserved: int = 0

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<HHHHIII")

    @classmethod
    def parse(cls, buf: Buffer) -> "NegotiateRequest":
        # 3.1.5.6: "The length of the received message is at least 20 bytes"; extra
        # bytes are tolerated as the spec does not forbid them.
        _check_length(buf, cls.STRUCT.size, "SMBD negotiate request")
        (min_v, max_v, reserved, credits, pref_send, max_recv, max_frag) = cls.STRUCT.unpack_from(buf, 0)
        return cls(min_v, max_v, credits, pref_send, max_recv, max_frag, reserved)

    def pack(self) -> bytes:
        return self.STRUCT.pack(
            self.min_version, self.max_version, self.reserved, self.credits_requested,
            self.preferred_send_size, self.max_receive_size, self.max_fragmented_size,
        )


@dataclass(frozen=True, slots=True)
class NegotiateResponse:
    """[MS-SMBD] 2.2.2 Negotiate Response Message (32 bytes), the listener's answer.

    A failure response ([MS-SMBD] 3.1.5.3) carries MinVersion/MaxVersion 0x0100, the
    Status and zero everywhere else: build it with :meth:`failure`.
    """

    min_version: int
    max_version: int
    negotiated_version: int
    credits_requested: int
    credits_granted: int
    status: int
    max_read_write_size: int
    preferred_send_size: int
    max_receive_size: int
    max_fragmented_size: int
    reserved: int = 0

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<HHHHHHIIIII")

    @classmethod
    def failure(cls, status: int) -> "NegotiateResponse":
        return cls(SMBD_VERSION_1, SMBD_VERSION_1, 0, 0, 0, status, 0, 0, 0, 0)

    @classmethod
    def parse(cls, buf: Buffer) -> "NegotiateResponse":
        # 3.1.5.7: "The length of the received message is at least 32 bytes".
        _check_length(buf, cls.STRUCT.size, "SMBD negotiate response")
        (min_v, max_v, negotiated, reserved, cr_req, cr_granted, status, max_rw,
         pref_send, max_recv, max_frag) = cls.STRUCT.unpack_from(buf, 0)
        return cls(min_v, max_v, negotiated, cr_req, cr_granted, status, max_rw,
                   pref_send, max_recv, max_frag, reserved)

    def pack(self) -> bytes:
        return self.STRUCT.pack(
            self.min_version, self.max_version, self.negotiated_version, self.reserved,
            self.credits_requested, self.credits_granted, self.status,
            self.max_read_write_size, self.preferred_send_size, self.max_receive_size,
            self.max_fragmented_size,
        )


@dataclass(frozen=True, slots=True)
class DataTransferHeader:
    """[MS-SMBD] 2.2.3 Data Transfer Message header; the payload follows at ``data_offset``.

    Wire layout: CreditsRequested u16, CreditsGranted u16, Flags u16, Reserved u16,
    RemainingDataLength u32, DataOffset u32, DataLength u32, then an optional 4-byte
    Padding and the Buffer.  A message without payload may stop after DataLength
    (20 bytes, what Linux's cifs.ko and ksmbd send); one with payload is 24 + DataLength
    bytes as this module builds it.

    :meth:`parse` applies every structural rule of [MS-SMBD] 3.1.5.8 that does not
    depend on connection state:

    * the message is at least 20 bytes;
    * DataOffset is 8-byte aligned;
    * DataOffset + DataLength <= the message length;
    * a message with payload has DataOffset >= 24 (the data may not overlap the header);
    * DataLength == 0 means no payload (DataOffset is then not used);
    * CreditsRequested >= 1;
    * DataLength + RemainingDataLength <= MaxFragmentedSize, when the caller passes
      ``max_fragmented_size`` (connection.py always does).
    """

    credits_requested: int
    credits_granted: int
    flags: int
    remaining_data_length: int
    data_offset: int
    data_length: int
    reserved: int = 0
    padding: int = 0

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<HHHHIII")
    PADDING: ClassVar[struct.Struct] = struct.Struct("<I")

    @property
    def response_requested(self) -> bool:
        return bool(self.flags & SMB_DIRECT_RESPONSE_REQUESTED)

    @classmethod
    def parse(cls, buf: Buffer, *, max_fragmented_size: int | None = None) -> "DataTransferHeader":
        _check_length(buf, DATA_TRANSFER_MIN_LENGTH, "SMBD data transfer message")
        (cr_req, cr_granted, flags, reserved, remaining, offset, length) = cls.STRUCT.unpack_from(buf, 0)
        padding = cls.PADDING.unpack_from(buf, 20)[0] if len(buf) >= 24 else 0
        if cr_req == 0:
            raise SmbdProtocolError("SMBD data transfer: CreditsRequested is 0")
        if offset % 8:
            raise SmbdProtocolError(f"SMBD data transfer: DataOffset {offset} not 8-byte aligned")
        if offset + length > len(buf):
            raise SmbdProtocolError(
                f"SMBD data transfer: DataOffset {offset} + DataLength {length} "
                f"past the end of a {len(buf)}-byte message")
        if length and offset < DATA_TRANSFER_DATA_OFFSET:
            raise SmbdProtocolError(f"SMBD data transfer: DataOffset {offset} overlaps the header")
        if max_fragmented_size is not None and length + remaining > max_fragmented_size:
            raise SmbdProtocolError(
                f"SMBD data transfer: DataLength {length} + RemainingDataLength {remaining} "
                f"exceeds MaxFragmentedSize {max_fragmented_size}")
        return cls(cr_req, cr_granted, flags, remaining, offset, length, reserved, padding)

    def payload(self, buf: Buffer) -> memoryview:
        """The message's data as a zero-copy view of ``buf`` (empty if DataLength is 0)."""
        if not self.data_length:
            return memoryview(b"")
        return memoryview(buf)[self.data_offset:self.data_offset + self.data_length]

    def pack(self) -> bytes:
        """The header bytes: 24 (with Padding) when the message carries data, else 20."""
        head = self.STRUCT.pack(
            self.credits_requested, self.credits_granted, self.flags, self.reserved,
            self.remaining_data_length, self.data_offset, self.data_length,
        )
        if self.data_length:
            return head + self.PADDING.pack(self.padding)
        return head


def build_data_transfer(
    credits_requested: int, credits_granted: int, flags: int,
    remaining_data_length: int, data: Buffer = b"",
) -> bytes:
    """One complete [MS-SMBD] 2.2.3 message: header (+ Padding) + ``data``.

    DataOffset is 24 when there is data and 0 otherwise, as 2.2.3 requires ("If no data
    payload is associated with this message, this value MUST be 0").
    """
    length = len(data)
    header = DataTransferHeader(
        credits_requested, credits_granted, flags, remaining_data_length,
        DATA_TRANSFER_DATA_OFFSET if length else 0, length,
    )
    return header.pack() + bytes(data) if length else header.pack()


@dataclass(frozen=True, slots=True)
class BufferDescriptorV1:
    """[MS-SMBD] 2.2.3.1 Buffer Descriptor V1, used as SMB2_BUFFER_DESCRIPTOR_V1 by [MS-SMB2] 2.2.3.1.

    16 bytes: Offset u64 (the remote virtual address), Token u32 (the peer's RDMA
    steering tag / rkey), Length u32.  SMB2 READ/WRITE requests carry a list of them in
    their channel info when Channel is SMB2_CHANNEL_RDMA_V1(_INVALIDATE).
    """

    offset: int
    token: int
    length: int

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<QII")

    @classmethod
    def parse(cls, buf: Buffer, at: int = 0) -> "BufferDescriptorV1":
        if at < 0 or at + cls.STRUCT.size > len(buf):
            raise SmbdProtocolError(f"buffer descriptor at {at} runs past a {len(buf)}-byte buffer")
        return cls(*cls.STRUCT.unpack_from(buf, at))

    def pack(self) -> bytes:
        return self.STRUCT.pack(self.offset, self.token, self.length)


def parse_buffer_descriptor_list(buf: Buffer, *, max_count: int | None = None) -> tuple[BufferDescriptorV1, ...]:
    """An array of [MS-SMBD] 2.2.3.1 descriptors, e.g. an SMB2 READ's ReadChannelInfo.

    The length must be a whole, non-zero number of 16-byte descriptors (an empty
    channel info with an RDMA channel is malformed).  ``max_count`` bounds how many a
    peer may send.  The SMB2 layer catches :class:`SmbdProtocolError` here and answers
    STATUS_INVALID_PARAMETER rather than dropping the connection, if it prefers.
    """
    size = BufferDescriptorV1.STRUCT.size
    if not len(buf) or len(buf) % size:
        raise SmbdProtocolError(f"buffer descriptor list of {len(buf)} bytes is not a multiple of {size}")
    count = len(buf) // size
    if max_count is not None and count > max_count:
        raise SmbdProtocolError(f"{count} buffer descriptors, at most {max_count} accepted")
    return tuple(BufferDescriptorV1.parse(buf, i * size) for i in range(count))


def pack_buffer_descriptor_list(descriptors) -> bytes:
    return b"".join(d.pack() for d in descriptors)
