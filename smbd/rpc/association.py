"""The server side of one connection-oriented DCE/RPC association over a named pipe.

Sans-IO: :meth:`RpcAssociation.receive` takes one whole PDU and returns the PDUs to send
back (each one pipe message). :class:`PduFramer` cuts a byte stream written to the pipe
into whole PDUs. C706 chapter 12 (the connection-oriented protocol), MS-RPCE 3.3.1.5
(bind time feature negotiation) and 3.3.3.5 (server behaviour on ncacn_np).
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Protocol

from .errors import NdrError, RpcProtocolError
from .pdu import (MIN_FRAG_SIZE, NDR_SYNTAX, NULL_SYNTAX, BindAckPdu, BindPdu, CommonHeader,
                  ContextResult, ContextResultEntry, FaultPdu, FaultStatus, PfcFlags, PresentationContext,
                  ProviderReason, PType, RejectReason, RequestPdu, SyntaxId, bind_nak, btfn_features,
                  fragment_response, peek_frag_length)

log = logging.getLogger("smbd.rpc")

SERVER_MAX_FRAG = 4280  # what Windows and Samba offer on ncacn_np
MAX_REQUEST_STUB = 1 << 20  # reassembly bound for a fragmented request; our calls need < 1 KiB
MAX_PDU = 0xFFFF  # frag_length is 16 bits
SUPPORTED_FEATURES = 0x0003  # both BTFN bits, as Samba 4.17 answers (verified against it)
_assoc_groups = itertools.count(0x5301)


class RpcFault(Exception):
    """An operation failed at the RPC level; the caller gets a FAULT PDU with *status*."""

    def __init__(self, status: int, message: str = ""):
        super().__init__(message or f"RPC fault 0x{status:08x}")
        self.status = status


class RpcInterface(Protocol):
    """What the association needs from an interface implementation (e.g. srvsvc)."""

    syntax: SyntaxId

    def call(self, opnum: int, stub: bytes) -> bytes:
        """Decode the input stub, run the operation, return the output stub.
        Raises RpcFault (e.g. OP_RNG_ERROR) or NdrError."""


@dataclass
class _PartialCall:
    call_id: int
    context_id: int
    opnum: int
    stub: bytearray


class RpcAssociation:
    """One pipe's association: presentation contexts, fragment reassembly, dispatch."""

    def __init__(self, interface: RpcInterface, secondary_address: str):
        self.interface = interface
        self.secondary_address = secondary_address
        self.contexts: dict[int, SyntaxId] = {}  # accepted context id -> abstract syntax
        self.bound = False
        self.assoc_group_id = 0
        self.max_xmit_frag = SERVER_MAX_FRAG  # our limit for PDUs we send
        self.max_recv_frag = SERVER_MAX_FRAG
        self._partial: _PartialCall | None = None
        self._discarding: int | None = None  # call id whose remaining fragments are dropped

    # ---- entry point -------------------------------------------------------------------

    def receive(self, pdu: bytes) -> list[bytes]:
        """Handle one whole PDU; return the PDUs to send (possibly none)."""
        header = CommonHeader.parse(pdu)
        if header.frag_length != len(pdu):
            raise RpcProtocolError("PDU length does not match frag_length")
        if header.frag_length > self.max_recv_frag and header.ptype == PType.REQUEST:
            raise RpcProtocolError("fragment larger than the negotiated max_recv_frag")
        if header.ptype == PType.BIND:
            return [self._bind(BindPdu.parse(pdu))]
        if header.ptype == PType.ALTER_CONTEXT:
            return [self._alter_context(BindPdu.parse(pdu))]
        if header.ptype == PType.REQUEST:
            return self._request(RequestPdu.parse(pdu))
        if header.ptype in (PType.AUTH3, PType.CO_CANCEL, PType.ORPHANED):
            # No authentication is negotiated; cancel/orphan of a call already answered
            # (calls run to completion synchronously) has nothing left to stop.
            if header.ptype == PType.ORPHANED:
                self._partial = None
            return []
        raise RpcProtocolError(f"unexpected PDU type {header.ptype} from a client")

    # ---- binding -----------------------------------------------------------------------

    def _bind(self, bind: BindPdu) -> bytes:
        call_id = bind.header.call_id
        if self.bound:
            return bind_nak(call_id, RejectReason.NOT_SPECIFIED)  # C706: one BIND per association
        if bind.header.auth_length:
            # We offer no RPC-level authentication; srvsvc over an authenticated SMB session needs none.
            return bind_nak(call_id, RejectReason.AUTHENTICATION_TYPE_NOT_RECOGNIZED)
        if bind.max_recv_frag < MIN_FRAG_SIZE or bind.max_xmit_frag < MIN_FRAG_SIZE:
            return bind_nak(call_id, RejectReason.LOCAL_LIMIT_EXCEEDED)
        self.max_xmit_frag = min(SERVER_MAX_FRAG, bind.max_recv_frag)
        self.max_recv_frag = min(SERVER_MAX_FRAG, bind.max_xmit_frag)
        # A client joining an existing group keeps its id; ours has only this association.
        self.assoc_group_id = bind.assoc_group_id or next(_assoc_groups)
        results = self._negotiate_contexts(bind.contexts)
        self.bound = True
        return BindAckPdu(call_id, self.max_xmit_frag, self.max_recv_frag, self.assoc_group_id,
                          self.secondary_address, results).pack()

    def _alter_context(self, alter: BindPdu) -> bytes:
        if not self.bound:
            raise RpcProtocolError("ALTER_CONTEXT before BIND")
        results = self._negotiate_contexts(alter.contexts)
        # ALTER_CONTEXT_RESP carries an empty secondary address (C706 12.6.4.2).
        return BindAckPdu(alter.header.call_id, self.max_xmit_frag, self.max_recv_frag, self.assoc_group_id,
                          "", results, PType.ALTER_CONTEXT_RESP).pack()

    def _negotiate_contexts(self, contexts: tuple[PresentationContext, ...]) -> tuple[ContextResultEntry, ...]:
        """One result per proposed context (C706 12.6.4.4; MS-RPCE 3.3.1.5.3 for BTFN)."""
        results = []
        for ctx in contexts:
            features = btfn_features(ctx.transfer_syntaxes[0]) if len(ctx.transfer_syntaxes) == 1 else None
            if features is not None:
                results.append(ContextResultEntry(ContextResult.NEGOTIATE_ACK, features & SUPPORTED_FEATURES,
                                                  NULL_SYNTAX))
            elif ctx.abstract_syntax != self.interface.syntax:
                results.append(ContextResultEntry(ContextResult.PROVIDER_REJECTION,
                                                  ProviderReason.ABSTRACT_SYNTAX_NOT_SUPPORTED))
            elif NDR_SYNTAX in ctx.transfer_syntaxes:
                self.contexts[ctx.context_id] = ctx.abstract_syntax
                results.append(ContextResultEntry(ContextResult.ACCEPTANCE, 0, NDR_SYNTAX))
            else:  # NDR64 and anything else: we marshal NDR 2.0 only
                results.append(ContextResultEntry(ContextResult.PROVIDER_REJECTION,
                                                  ProviderReason.PROPOSED_TRANSFER_SYNTAXES_NOT_SUPPORTED))
        return tuple(results)

    # ---- calls -------------------------------------------------------------------------

    def _request(self, req: RequestPdu) -> list[bytes]:
        call_id = req.header.call_id
        if not self.bound:
            return [FaultPdu(call_id, req.context_id, FaultStatus.PROTO_ERROR).pack()]
        flags = req.header.pfc_flags
        if self._discarding == call_id and not flags & PfcFlags.FIRST_FRAG:
            # The rest of a call already refused: it was answered once, stay quiet.
            if flags & PfcFlags.LAST_FRAG:
                self._discarding = None
            return []
        self._discarding = None
        if flags & PfcFlags.FIRST_FRAG:
            self._partial = _PartialCall(call_id, req.context_id, req.opnum, bytearray())
        partial = self._partial
        if partial is None or partial.call_id != call_id:
            # A middle fragment of a call we never saw start: C706 treats it as a protocol error.
            self._partial = None
            return [FaultPdu(call_id, req.context_id, FaultStatus.PROTO_ERROR).pack()]
        partial.stub += req.stub
        if len(partial.stub) > MAX_REQUEST_STUB:
            self._partial = None
            self._discarding = None if flags & PfcFlags.LAST_FRAG else call_id
            return [FaultPdu(call_id, partial.context_id, FaultStatus.REMOTE_NO_MEMORY).pack()]
        if not flags & PfcFlags.LAST_FRAG:
            return []
        self._partial = None
        return self._dispatch(partial)

    def _dispatch(self, call: _PartialCall) -> list[bytes]:
        if call.context_id not in self.contexts:
            return [FaultPdu(call.call_id, call.context_id, FaultStatus.UNK_IF).pack()]
        try:
            out = self.interface.call(call.opnum, bytes(call.stub))
        except RpcFault as e:
            return [FaultPdu(call.call_id, call.context_id, e.status).pack()]
        except NdrError as e:
            log.debug("opnum %d: bad stub data: %s", call.opnum, e)
            return [FaultPdu(call.call_id, call.context_id, FaultStatus.BAD_STUB_DATA).pack()]
        return fragment_response(call.call_id, call.context_id, out, self.max_xmit_frag)


class PduFramer:
    """Cuts bytes written to a pipe into whole PDUs by their frag_length (C706 12.6.3.1)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        self._buf += data
        out = []
        while True:
            length = peek_frag_length(self._buf)
            if length is None:
                return out
            if length < 16:
                raise RpcProtocolError("frag_length smaller than the header")
            if len(self._buf) < length:
                return out
            out.append(bytes(self._buf[:length]))
            del self._buf[:length]

    @property
    def pending(self) -> int:
        return len(self._buf)
