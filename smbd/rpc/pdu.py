"""Connection-oriented DCE/RPC PDUs (C706 chapter 12.6, with MS-RPCE 2.2.2 extensions).

Parsing takes whole PDUs (``frag_length`` bytes) and validates every count and length
against the buffer; malformed input raises :class:`~smbd.rpc.errors.RpcProtocolError`.
Only little-endian integer representation with ASCII characters (drep 0x10) is accepted:
every Windows, Samba and impacket client sends it, and answering big-endian peers would
need a second marshaller for no real user.
"""
from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass

from .errors import RpcProtocolError

_COMMON = struct.Struct("<BBBB4sHHI")  # C706 12.6.3.1, 16 bytes
_BIND = struct.Struct("<HHIB3x")  # max_xmit_frag, max_recv_frag, assoc_group_id, n_context_elem
_BIND_ACK = struct.Struct("<HHIH")  # max_xmit_frag, max_recv_frag, assoc_group_id, sec_addr length
_CONTEXT_ELEM = struct.Struct("<HBx")  # p_cont_id, n_transfer_syn, reserved
_SYNTAX = struct.Struct("<16sI")  # p_syntax_id_t: if_uuid, if_version
_RESULT = struct.Struct("<HH")  # p_result_t: result, reason (transfer syntax follows)
_REQUEST = struct.Struct("<IHH")  # alloc_hint, p_cont_id, opnum
_RESPONSE = struct.Struct("<IHBB")  # alloc_hint, p_cont_id, cancel_count, reserved
_FAULT = struct.Struct("<IHBBII")  # alloc_hint, p_cont_id, cancel_count, reserved, status, reserved
_U16 = struct.Struct("<H")
_SEC_TRAILER_SIZE = 8  # auth_verifier_co_t header (C706 13.2.6.1)

COMMON_HEADER_SIZE = _COMMON.size
RESPONSE_HEADER_SIZE = _COMMON.size + _RESPONSE.size  # 24
RPC_VERSION = 5
RPC_VERSION_MINOR = 0
DREP_LITTLE_ENDIAN = b"\x10\x00\x00\x00"
FAULT_ALLOC_HINT = 24  # what Samba 4.17 puts in a FAULT's alloc_hint (probed); clients ignore it
MIN_FRAG_SIZE = 1432  # C706 12.6.3.1: every implementation must accept fragments this large


class PType(enum.IntEnum):
    """PDU types, C706 12.6.3.1 / MS-RPCE 2.2.2.1 (those of the connection-oriented protocol)."""

    REQUEST = 0
    RESPONSE = 2
    FAULT = 3
    BIND = 11
    BIND_ACK = 12
    BIND_NAK = 13
    ALTER_CONTEXT = 14
    ALTER_CONTEXT_RESP = 15
    AUTH3 = 16
    SHUTDOWN = 17
    CO_CANCEL = 18
    ORPHANED = 19


class PfcFlags(enum.IntFlag):
    FIRST_FRAG = 0x01
    LAST_FRAG = 0x02
    PENDING_CANCEL = 0x04  # in BIND: PFC_SUPPORT_HEADER_SIGN (MS-RPCE 2.2.2.3)
    CONC_MPX = 0x10
    DID_NOT_EXECUTE = 0x20
    MAYBE = 0x40
    OBJECT_UUID = 0x80


class ContextResult(enum.IntEnum):
    """p_cont_def_result_t (C706 12.6.3.1) plus negotiate_ack (MS-RPCE 2.2.2.4)."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    PROVIDER_REJECTION = 2
    NEGOTIATE_ACK = 3


class ProviderReason(enum.IntEnum):
    """p_provider_reason_t (C706 12.6.3.1)."""

    NOT_SPECIFIED = 0
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 1
    PROPOSED_TRANSFER_SYNTAXES_NOT_SUPPORTED = 2
    LOCAL_LIMIT_EXCEEDED = 3


class RejectReason(enum.IntEnum):
    """p_reject_reason_t of BIND_NAK (C706 12.6.3.1, MS-RPCE 2.2.2.5)."""

    NOT_SPECIFIED = 0
    TEMPORARY_CONGESTION = 1
    LOCAL_LIMIT_EXCEEDED = 2
    PROTOCOL_VERSION_NOT_SUPPORTED = 4
    AUTHENTICATION_TYPE_NOT_RECOGNIZED = 8


class FaultStatus(enum.IntEnum):
    """Fault codes sent in FAULT PDUs (C706 appendix E, MS-RPCE 3.1.1.5.5 / 2.2.2.11)."""

    OP_RNG_ERROR = 0x1C010002  # nca_s_op_rng_error: unknown opnum
    UNK_IF = 0x1C010003  # nca_s_unk_if: no such presentation context
    PROTO_ERROR = 0x1C01000B  # nca_proto_error
    BAD_STUB_DATA = 0x000006F7  # RPC_X_BAD_STUB_DATA (Windows' answer to undecodable NDR)
    REMOTE_NO_MEMORY = 0x1C000012  # nca_s_fault_remote_no_memory: request over our bound


@dataclass(frozen=True, slots=True)
class SyntaxId:
    """p_syntax_id_t (C706 12.6.3.1): an interface or transfer syntax UUID and version.

    ``version`` is the 32-bit if_version as sent: major in the low 16 bits, minor above.
    """

    uuid: uuid.UUID
    version: int

    def pack(self) -> bytes:
        return _SYNTAX.pack(self.uuid.bytes_le, self.version)

    @classmethod
    def unpack_from(cls, buf: memoryview, pos: int) -> "SyntaxId":
        raw, version = _SYNTAX.unpack_from(buf, pos)
        return cls(uuid.UUID(bytes_le=bytes(raw)), version)


NULL_SYNTAX = SyntaxId(uuid.UUID(int=0), 0)
NDR_SYNTAX = SyntaxId(uuid.UUID("8a885d04-1ceb-11c9-9fe8-08002b104860"), 2)
NDR64_SYNTAX = SyntaxId(uuid.UUID("71710533-beba-4937-8319-b5dbef9ccc36"), 1)
# Bind time feature negotiation (MS-RPCE 3.3.1.5.3): the first 8 bytes are fixed, the next
# two carry the feature bitmask, the rest is zero.
BTFN_PREFIX = uuid.UUID("6cb71c2c-9812-4540-0000-000000000000").bytes_le[:8]
BTFN_SECURITY_CONTEXT_MULTIPLEXING = 0x0001
BTFN_KEEP_CONNECTION_ON_ORPHAN = 0x0002


def btfn_features(syntax: SyntaxId) -> int | None:
    """The feature bitmask if *syntax* is a bind-time-feature-negotiation UUID, else None."""
    raw = syntax.uuid.bytes_le
    if raw[:8] != BTFN_PREFIX or raw[10:] != b"\0" * 6:
        return None
    return _U16.unpack_from(raw, 8)[0]


@dataclass(frozen=True, slots=True)
class CommonHeader:
    """The 16-byte header every connection-oriented PDU starts with (C706 12.6.3.1)."""

    ptype: int
    pfc_flags: int
    frag_length: int
    auth_length: int
    call_id: int
    drep: bytes = DREP_LITTLE_ENDIAN

    def pack(self) -> bytes:
        return _COMMON.pack(RPC_VERSION, RPC_VERSION_MINOR, self.ptype, self.pfc_flags, self.drep,
                            self.frag_length, self.auth_length, self.call_id)

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> "CommonHeader":
        if len(buf) < _COMMON.size:
            raise RpcProtocolError("PDU shorter than the common header")
        vers, minor, ptype, flags, drep, frag_length, auth_length, call_id = _COMMON.unpack_from(buf, 0)
        if vers != RPC_VERSION or minor > 1:
            raise RpcProtocolError(f"unsupported RPC version {vers}.{minor}")
        if drep[0] != 0x10:
            raise RpcProtocolError(f"unsupported data representation {bytes(drep).hex()}")
        if frag_length < _COMMON.size:
            raise RpcProtocolError("frag_length smaller than the header")
        return cls(ptype, flags, frag_length, auth_length, call_id, bytes(drep))


def peek_frag_length(buf: bytes | memoryview) -> int | None:
    """frag_length of the PDU at the start of *buf*, or None while fewer than 10 bytes arrived."""
    if len(buf) < 10:
        return None
    return _U16.unpack_from(buf, 8)[0]


def _body(pdu: memoryview, header: CommonHeader) -> memoryview:
    """The PDU body between the common header and the auth verifier (C706 12.6.4)."""
    if header.frag_length != len(pdu):
        raise RpcProtocolError("frag_length does not match the PDU size")
    end = len(pdu)
    if header.auth_length:
        end -= header.auth_length + _SEC_TRAILER_SIZE
        if end < _COMMON.size:
            raise RpcProtocolError("auth_length larger than the PDU")
    return pdu[_COMMON.size:end]


@dataclass(frozen=True, slots=True)
class PresentationContext:
    """p_cont_elem_t (C706 12.6.3.1): one abstract syntax with its proposed transfer syntaxes."""

    context_id: int
    abstract_syntax: SyntaxId
    transfer_syntaxes: tuple[SyntaxId, ...]


@dataclass(frozen=True, slots=True)
class BindPdu:
    """BIND and ALTER_CONTEXT (C706 12.6.4.3 and 12.6.4.1; same layout)."""

    header: CommonHeader
    max_xmit_frag: int
    max_recv_frag: int
    assoc_group_id: int
    contexts: tuple[PresentationContext, ...]

    @classmethod
    def parse(cls, pdu: bytes | memoryview) -> "BindPdu":
        pdu = memoryview(pdu)
        header = CommonHeader.parse(pdu)
        if header.ptype not in (PType.BIND, PType.ALTER_CONTEXT):
            raise RpcProtocolError("not a BIND or ALTER_CONTEXT PDU")
        body = _body(pdu, header)
        if len(body) < _BIND.size:
            raise RpcProtocolError("BIND body truncated")
        max_xmit, max_recv, group, count = _BIND.unpack_from(body, 0)
        pos = _BIND.size
        contexts = []
        for _ in range(count):
            if pos + _CONTEXT_ELEM.size + _SYNTAX.size > len(body):
                raise RpcProtocolError("presentation context truncated")
            context_id, n_transfer = _CONTEXT_ELEM.unpack_from(body, pos)
            abstract = SyntaxId.unpack_from(body, pos + _CONTEXT_ELEM.size)
            pos += _CONTEXT_ELEM.size + _SYNTAX.size
            if n_transfer == 0 or pos + n_transfer * _SYNTAX.size > len(body):
                raise RpcProtocolError("transfer syntax list truncated or empty")
            transfers = tuple(SyntaxId.unpack_from(body, pos + i * _SYNTAX.size) for i in range(n_transfer))
            pos += n_transfer * _SYNTAX.size
            contexts.append(PresentationContext(context_id, abstract, transfers))
        return cls(header, max_xmit, max_recv, group, tuple(contexts))


@dataclass(frozen=True, slots=True)
class ContextResultEntry:
    """p_result_t (C706 12.6.3.1): the answer to one presentation context."""

    result: int
    reason: int
    transfer_syntax: SyntaxId = NULL_SYNTAX


@dataclass(frozen=True, slots=True)
class BindAckPdu:
    """BIND_ACK and ALTER_CONTEXT_RESP (C706 12.6.4.4 and 12.6.4.2)."""

    call_id: int
    max_xmit_frag: int
    max_recv_frag: int
    assoc_group_id: int
    secondary_address: str  # "\\PIPE\\srvsvc"; empty in ALTER_CONTEXT_RESP
    results: tuple[ContextResultEntry, ...]
    ptype: int = PType.BIND_ACK

    def pack(self) -> bytes:
        # port_any_t: u16 length including the NUL, then the ASCII string.
        addr = self.secondary_address.encode("ascii") + b"\0" if self.secondary_address else b""
        body = bytearray(_BIND_ACK.pack(self.max_xmit_frag, self.max_recv_frag, self.assoc_group_id, len(addr)))
        body += addr
        # The result list is 4-byte aligned relative to the PDU start.
        body += b"\0" * (-(_COMMON.size + len(body)) % 4)
        body += struct.pack("<B3x", len(self.results))
        for r in self.results:
            body += _RESULT.pack(r.result, r.reason) + r.transfer_syntax.pack()
        header = CommonHeader(self.ptype, PfcFlags.FIRST_FRAG | PfcFlags.LAST_FRAG,
                              _COMMON.size + len(body), 0, self.call_id)
        return header.pack() + bytes(body)

    @classmethod
    def parse(cls, pdu: bytes | memoryview) -> "BindAckPdu":
        """For tests and clients: the inverse of :meth:`pack`."""
        pdu = memoryview(pdu)
        header = CommonHeader.parse(pdu)
        if header.ptype not in (PType.BIND_ACK, PType.ALTER_CONTEXT_RESP):
            raise RpcProtocolError("not a BIND_ACK PDU")
        body = _body(pdu, header)
        if len(body) < _BIND_ACK.size:
            raise RpcProtocolError("BIND_ACK truncated")
        max_xmit, max_recv, group, addr_len = _BIND_ACK.unpack_from(body, 0)
        pos = _BIND_ACK.size + addr_len
        if pos > len(body):
            raise RpcProtocolError("secondary address truncated")
        addr = bytes(body[_BIND_ACK.size:pos]).rstrip(b"\0").decode("ascii", "replace")
        pos += -(_COMMON.size + pos) % 4
        if pos + 4 > len(body):
            raise RpcProtocolError("result list truncated")
        count = body[pos]
        pos += 4
        if pos + count * (_RESULT.size + _SYNTAX.size) > len(body):
            raise RpcProtocolError("result list truncated")
        results = []
        for _ in range(count):
            result, reason = _RESULT.unpack_from(body, pos)
            results.append(ContextResultEntry(result, reason, SyntaxId.unpack_from(body, pos + _RESULT.size)))
            pos += _RESULT.size + _SYNTAX.size
        return cls(header.call_id, max_xmit, max_recv, group, addr, tuple(results), header.ptype)


def bind_nak(call_id: int, reason: int) -> bytes:
    """BIND_NAK (C706 12.6.4.5): the reason and the one protocol version we speak, 5.0."""
    body = struct.pack("<HBBB", reason, 1, RPC_VERSION, RPC_VERSION_MINOR)
    body += b"\0" * (-(len(body) + _COMMON.size) % 4)
    header = CommonHeader(PType.BIND_NAK, PfcFlags.FIRST_FRAG | PfcFlags.LAST_FRAG,
                          _COMMON.size + len(body), 0, call_id)
    return header.pack() + body


@dataclass(frozen=True, slots=True)
class RequestPdu:
    """REQUEST (C706 12.6.4.9): one fragment of a call's input stub."""

    header: CommonHeader
    alloc_hint: int
    context_id: int
    opnum: int
    object_uuid: uuid.UUID | None
    stub: bytes

    @classmethod
    def parse(cls, pdu: bytes | memoryview) -> "RequestPdu":
        pdu = memoryview(pdu)
        header = CommonHeader.parse(pdu)
        if header.ptype != PType.REQUEST:
            raise RpcProtocolError("not a REQUEST PDU")
        body = _body(pdu, header)
        if len(body) < _REQUEST.size:
            raise RpcProtocolError("REQUEST body truncated")
        alloc_hint, context_id, opnum = _REQUEST.unpack_from(body, 0)
        pos = _REQUEST.size
        obj = None
        if header.pfc_flags & PfcFlags.OBJECT_UUID:
            if len(body) < pos + 16:
                raise RpcProtocolError("object UUID truncated")
            obj = uuid.UUID(bytes_le=bytes(body[pos:pos + 16]))
            pos += 16
        return cls(header, alloc_hint, context_id, opnum, obj, bytes(body[pos:]))

    @staticmethod
    def build(call_id: int, context_id: int, opnum: int, stub: bytes,
              flags: int = PfcFlags.FIRST_FRAG | PfcFlags.LAST_FRAG, alloc_hint: int | None = None) -> bytes:
        """One REQUEST fragment (used by tests and by anything acting as a client)."""
        header = CommonHeader(PType.REQUEST, flags, _COMMON.size + _REQUEST.size + len(stub), 0, call_id)
        hint = len(stub) if alloc_hint is None else alloc_hint
        return header.pack() + _REQUEST.pack(hint, context_id, opnum) + stub


@dataclass(frozen=True, slots=True)
class ResponsePdu:
    """RESPONSE (C706 12.6.4.10): one fragment of a call's output stub."""

    call_id: int
    context_id: int
    alloc_hint: int
    stub: bytes
    pfc_flags: int = PfcFlags.FIRST_FRAG | PfcFlags.LAST_FRAG

    def pack(self) -> bytes:
        header = CommonHeader(PType.RESPONSE, self.pfc_flags, RESPONSE_HEADER_SIZE + len(self.stub), 0,
                              self.call_id)
        return header.pack() + _RESPONSE.pack(self.alloc_hint, self.context_id, 0, 0) + self.stub

    @classmethod
    def parse(cls, pdu: bytes | memoryview) -> "ResponsePdu":
        pdu = memoryview(pdu)
        header = CommonHeader.parse(pdu)
        if header.ptype != PType.RESPONSE:
            raise RpcProtocolError("not a RESPONSE PDU")
        body = _body(pdu, header)
        if len(body) < _RESPONSE.size:
            raise RpcProtocolError("RESPONSE body truncated")
        alloc_hint, context_id, _, _ = _RESPONSE.unpack_from(body, 0)
        return cls(header.call_id, context_id, alloc_hint, bytes(body[_RESPONSE.size:]), header.pfc_flags)


@dataclass(frozen=True, slots=True)
class FaultPdu:
    """FAULT (C706 12.6.4.7; MS-RPCE 2.2.2.11). DID_NOT_EXECUTE tells the client no
    side effect happened, as Windows and Samba set it for an unknown opnum or interface."""

    call_id: int
    context_id: int
    status: int
    did_not_execute: bool = True

    def pack(self) -> bytes:
        flags = PfcFlags.FIRST_FRAG | PfcFlags.LAST_FRAG
        if self.did_not_execute:
            flags |= PfcFlags.DID_NOT_EXECUTE
        size = _COMMON.size + _FAULT.size
        header = CommonHeader(PType.FAULT, flags, size, 0, self.call_id)
        return header.pack() + _FAULT.pack(FAULT_ALLOC_HINT, self.context_id, 0, 0, self.status, 0)

    @classmethod
    def parse(cls, pdu: bytes | memoryview) -> "FaultPdu":
        pdu = memoryview(pdu)
        header = CommonHeader.parse(pdu)
        if header.ptype != PType.FAULT:
            raise RpcProtocolError("not a FAULT PDU")
        body = _body(pdu, header)
        if len(body) < _FAULT.size:
            raise RpcProtocolError("FAULT body truncated")
        _, context_id, _, _, status, _ = _FAULT.unpack_from(body, 0)
        return cls(header.call_id, context_id, status, bool(header.pfc_flags & PfcFlags.DID_NOT_EXECUTE))


def fragment_response(call_id: int, context_id: int, stub: bytes, max_frag: int) -> list[bytes]:
    """Split an output stub into RESPONSE fragments of at most *max_frag* bytes (C706 12.6.3.7).

    Each fragment but the last carries a multiple of 8 stub bytes, so the NDR alignment
    of the reassembled stub stays what the marshaller computed; alloc_hint is the stub
    length still to come, including this fragment.
    """
    room = (max_frag - RESPONSE_HEADER_SIZE) & ~7
    if room <= 0:
        raise ValueError("fragment size too small for a RESPONSE")
    out = []
    pos = 0
    while True:
        chunk = stub[pos:pos + room]
        flags = 0
        if pos == 0:
            flags |= PfcFlags.FIRST_FRAG
        if pos + len(chunk) >= len(stub):
            flags |= PfcFlags.LAST_FRAG
        out.append(ResponsePdu(call_id, context_id, len(stub) - pos, chunk, flags).pack())
        pos += len(chunk)
        if flags & PfcFlags.LAST_FRAG:
            return out
