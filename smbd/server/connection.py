"""One SMB2 connection (MS-SMB2 3.3.1.7) and its request pipeline (3.3.5.2).

The transport hands in whole SMB2 messages (already unframed) and takes whole messages
back; it may also offer RDMA reads/writes. Everything between (decrypting, splitting
compounds, the credit window, signature checks, dispatching to the command handlers,
async responses, signing and encrypting replies) is here.

Handlers raise SmbError; it becomes an ERROR response here, in one place. Only
ProtocolViolation (framing, the message-id window, broken compounds) ends the connection.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import struct
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from smbd import crypto, identity, metrics
from smbd.core import compound
from smbd.core.credits import CreditWindow, required_charge
from smbd.status import NtStatus, ProtocolViolation, SmbError, status_name
from smbd.transport.tcp import FileSpan
from smbd.wire import control
from smbd.wire.header import (HEADER_SIZE, PROTOCOL_ID, SIGNATURE_OFFSET, SMB1_ID, TRANSFORM_ID,
                              Command, Flags, Header)

from . import channel_sequence
from .objects import Open, Session, SessionState, TreeConnect

if TYPE_CHECKING:
    from .state import ServerState

log = logging.getLogger("smbd.conn")

Body = bytes | list  # a response body: bytes, or a list of buffers sent without joining

# Commands that need no session (3.3.5.2.9) and the ones that need a tree (3.3.5.2.11).
_NO_SESSION = {Command.NEGOTIATE, Command.SESSION_SETUP, Command.ECHO, Command.CANCEL}
_NO_TREE = _NO_SESSION | {Command.LOGOFF, Command.TREE_CONNECT, Command.OPLOCK_BREAK}


def _command_name(command: int) -> str:
    try:
        return Command(command).name
    except ValueError:
        return f"command 0x{command:04x}"


class Transport(Protocol):
    """What a connection needs from below: whole messages out, and maybe RDMA."""

    peer: str
    rdma: Any  # an RDMA channel (smbd.transport.proxy) or None for TCP

    async def send(self, parts: list) -> None: ...

    def close(self) -> None: ...


@dataclass(eq=False)
class Request:
    """One request of a (possibly compounded) message, as handlers see it."""

    conn: "SmbConnection"
    header: Header
    msg: memoryview
    session: Session | None = None
    tree: TreeConnect | None = None
    encrypted: bool = False
    is_last: bool = True
    async_id: int = 0
    interim_sent: bool = False
    related_file_id: tuple[int, int] | None = None
    on_response: Callable[[bytes], None] | None = None  # sees the final response (preauth hash)
    created_file_id: tuple[int, int] | None = None  # a CREATE's handle, for related requests
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    status: int = NtStatus.SUCCESS  # a handler may answer with a non-error status and a body
    invalidate_token: int | None = None  # SMB Direct: send the response with SEND_WITH_INVALIDATE
    compound: "_CompoundReply | None" = None  # the responses of the message this request came in
    # SESSION_SETUP only: what its handler decided the response is signed with (a bind is
    # answered with Session.SigningKey until the channel has its own; see handlers.session).
    setup_signer: Any = None
    counted: tuple | None = None  # (Open, ChannelSequence, generation) this request is counted on

    @property
    def server(self) -> "ServerState":
        return self.conn.server

    def resolve_file_id(self, file_id: tuple[int, int]) -> tuple[int, int]:
        """In a related compound, FileId 0xFFFF... means the previous request's handle
        (3.3.5.2.7.2). Anywhere else it names no open, and the lookup answers
        FILE_CLOSED, as Windows and Samba do (smbtorture smb2.compound.related5,
        unrelated1, invalid3)."""
        if file_id == (0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF) and self.related_file_id is not None:
            return self.related_file_id
        return file_id

    def open_for(self, file_id: tuple[int, int]) -> Open:
        """The Open named by a request's FileId, checked against its session and tree (3.3.5.x)."""
        op = self.server.opens.get(self.resolve_file_id(file_id)[1])
        if (op is None or op.closed or op.session is not self.session or op.tree is not self.tree
                or op.persistent_id != self.resolve_file_id(file_id)[0]):
            raise SmbError(NtStatus.FILE_CLOSED)
        op.replay_cached = False
        if self.conn.dialect >= 0x0300 and self.counted is None:
            hdr = self.header
            seq = hdr.channel_sequence
            generation = channel_sequence.admit(op.sequence, seq, replay=bool(hdr.flags & Flags.REPLAY_OPERATION),
                                                modifying=hdr.command in channel_sequence.MODIFYING)
            if generation is not None:
                self.counted = (op, seq, generation)
        return op

    async def go_async(self) -> None:
        """Send the interim STATUS_PENDING response (3.3.4.2); the final one follows later.

        Only the last request of a compound may go async: the responses before it leave
        with its interim response, so the client sees them without waiting (smbtorture
        smb2.compound.interim1). One in the middle would hold back the rest; Windows
        (MS-SMB2 <162>) and Samba fail it with INTERNAL_ERROR instead.
        """
        if self.interim_sent:
            return
        if not self.is_last:
            raise SmbError(NtStatus.INTERNAL_ERROR, "async request inside a compound")
        self.async_id = next(self.conn.async_ids)
        self.conn.async_requests[self.async_id] = self
        self.interim_sent = True
        await self.conn.send_interim(self)


Handler = Callable[[Request], Awaitable[Body]]


class SmbConnection:
    """3.3.1.7 Per Connection."""

    _serials = itertools.count(1)

    def __init__(self, server: "ServerState", transport: Transport):
        self.server = server
        self.transport = transport
        # Order of arrival: breaks try a client's channels in this order, as Samba's
        # ChannelId (smbd.server.break_delivery).
        self.serial = next(SmbConnection._serials)
        self.bytes_in = self.bytes_out = 0  # SMB2 messages as they crossed the transport (smbdd status)
        self.dialect = 0
        self.client_guid = None
        self.client_capabilities = 0
        self.client_security_mode = 0
        self.client_dialects: tuple[int, ...] = ()
        self.server_capabilities = 0
        self.cipher = 0
        self.signing_algorithm = crypto.SIGNING_AES_CMAC
        self.rdma_transforms: list[int] = []
        self.preauth = crypto.PreauthHash()
        # 3.3.1.7 PreauthSessionTable: SESSION_SETUP exchanges in progress here, by SessionId.
        self.session_auths: dict[int, Any] = {}
        self.credits = CreditWindow(server.config.max_credits)
        self.negotiated = False
        self.multi_credit = False
        self.async_ids = itertools.count(1)
        self.async_requests: dict[int, Request] = {}
        self.sync_requests: dict[int, Request] = {}  # by MessageId, for CANCEL
        self.tasks: set[asyncio.Task] = set()
        self.task_requests: dict[asyncio.Task, list[Request]] = {}
        self.closed = False
        self.send_lock = asyncio.Lock()
        # Test-only: bytes of padding before READ response data, set by smbtorture's
        # FSCTL_SMBTORTURE_GLOBAL_READ_RESPONSE_BODY_PADDING8 (see wire.fileio).
        self.read_body_padding = 0
        # Test-only: set by FSCTL_SMBTORTURE_FORCE_UNACKED_TIMEOUT (smbd.server.break_delivery).
        self.force_unacked = False

    # ---- a channel that moves to another worker (smbd.server.channel_move) -----------

    def negotiated_state(self) -> dict:
        """What NEGOTIATE decided (3.3.5.4) and the credit window, as JSON."""
        return {"dialect": self.dialect, "client_guid": str(self.client_guid) if self.client_guid else None,
                "client_capabilities": self.client_capabilities,
                "client_security_mode": self.client_security_mode, "client_dialects": list(self.client_dialects),
                "server_capabilities": self.server_capabilities, "cipher": self.cipher,
                "signing_algorithm": self.signing_algorithm, "rdma_transforms": list(self.rdma_transforms),
                "preauth": self.preauth.value.hex(), "multi_credit": self.multi_credit,
                "credits": self.credits.state()}

    def restore_negotiated(self, state: dict) -> None:
        self.dialect = int(state["dialect"])
        self.client_guid = uuid.UUID(state["client_guid"]) if state["client_guid"] else None
        self.client_capabilities = int(state["client_capabilities"])
        self.client_security_mode = int(state["client_security_mode"])
        self.client_dialects = tuple(int(d) for d in state["client_dialects"])
        self.server_capabilities = int(state["server_capabilities"])
        self.cipher, self.signing_algorithm = int(state["cipher"]), int(state["signing_algorithm"])
        self.rdma_transforms = [int(t) for t in state["rdma_transforms"]]
        self.preauth = crypto.PreauthHash(bytes.fromhex(state["preauth"]))
        self.multi_credit = bool(state["multi_credit"])
        self.credits = CreditWindow.from_state(state["credits"])
        self.negotiated = True

    def handed_off(self) -> None:
        """The channel now lives in another worker: forget it here without a word to the
        client (its socket lives on there; closing ours sends nothing)."""
        self.closed = True
        self.server.connection_lost(self)
        self.transport.close()

    # ---- entry point from the transport ----------------------------------------------

    def receive(self, raw: bytes, charged: bool = False) -> None:
        """A whole message arrived. Checks that must follow arrival order run now;
        the handlers then run as a task so that slow I/O does not hold up the next one.
        ``charged``: its MessageId was consumed where it first arrived (a moved channel)."""
        if self.closed:
            return
        self.bytes_in += len(raw)
        if metrics.enabled():  # not even the transport's kind on this path when metrics are off
            metrics.bytes_moved(self.transport_kind, "in", len(raw))
        msg = memoryview(raw)
        if raw[:4] == SMB1_ID:
            if self.negotiated:
                raise ProtocolViolation("SMB1 after negotiation")
            self._spawn(self.server.handlers.smb1_negotiate(self, msg))
            return
        encrypted_session = None
        if raw[:4] == TRANSFORM_ID:
            encrypted_session, msg = self._decrypt(raw)
            encrypted_session.client_encrypts = True  # for smbdd status, when not required
        elif raw[:4] != PROTOCOL_ID:
            raise ProtocolViolation(f"unknown protocol id {raw[:4].hex()}")
        parts = compound.split(msg)
        requests = []
        for i, part in enumerate(parts):
            hdr = Header.parse(part)
            if hdr.flags & Flags.SERVER_TO_REDIR:
                raise ProtocolViolation("response sent to the server")
            if hdr.command == Command.CANCEL:
                self._cancel(hdr)
                continue
            if not self.negotiated and hdr.command != Command.NEGOTIATE:
                raise ProtocolViolation("request before NEGOTIATE")
            if not charged:
                self.credits.consume(hdr.message_id, hdr.credit_charge if self.multi_credit else 1)
            req = Request(self, hdr, part, encrypted=encrypted_session is not None,
                          is_last=(i == len(parts) - 1))
            if encrypted_session is not None and hdr.session_id != encrypted_session.session_id and not (
                    hdr.flags & Flags.RELATED_OPERATIONS):
                req.session = None  # mismatch handled in _prepare
            requests.append(req)
        if requests:
            for r in requests:
                self.sync_requests[r.header.message_id] = r
            self._spawn(self._process(requests, encrypted_session), requests)

    def _spawn(self, coro, requests: list[Request] = ()) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        self.task_requests[task] = requests
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        self.task_requests.pop(task, None)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, ProtocolViolation):
            log.warning("%s: protocol violation: %s", self.transport.peer, exc)
            self.close()
        elif exc is not None and not isinstance(exc, (ConnectionError, asyncio.CancelledError)):
            log.error("%s: internal error", self.transport.peer, exc_info=exc)
            self.close()

    def _decrypt(self, raw: bytes) -> tuple[Session, memoryview]:
        """3.3.5.2.1.1: find the session by the transform header, decrypt, check the inner header."""
        try:
            th = crypto.parse_transform_header(raw)
        except ValueError as e:
            raise ProtocolViolation(f"bad transform header: {e}") from e
        session = self.server.sessions.get(th.session_id)
        if session is None or session.keys is None or not session.keys.decrypting or not self.cipher:
            raise ProtocolViolation("encrypted message for an unknown session")
        try:
            plain = crypto.decrypt_message(self.cipher, session.keys.decrypting, raw)
        except ValueError as e:
            raise ProtocolViolation(f"decryption failed: {e}") from e
        if plain[:4] != PROTOCOL_ID:
            raise ProtocolViolation("decrypted message is not SMB2")
        return session, memoryview(plain)

    # ---- per message ------------------------------------------------------------------

    async def _process(self, requests: list[Request], encrypted_session: Session | None) -> None:
        reply = _CompoundReply(requests, encrypted_session)
        prev: Request | None = None
        prev_status = NtStatus.SUCCESS
        try:
            for req in requests:
                req.compound = reply
                related = bool(req.header.flags & Flags.RELATED_OPERATIONS)
                if related and prev is not None:
                    # 3.3.5.2.7.2: inherit the session, tree and file of the previous request.
                    req.session, req.tree = prev.session, prev.tree
                    req.related_file_id = prev.created_file_id or prev.related_file_id
                status, body = await self._execute(req, related, prev, prev_status, encrypted_session)
                prev, prev_status = req, status
                if status == NtStatus.SUCCESS and req.created_file_id is None:
                    req.created_file_id = req.related_file_id
                reply.responses.append(self._build_response(req, status, body))
        finally:
            for req in requests:
                self.sync_requests.pop(req.header.message_id, None)
                if req.async_id:
                    self.async_requests.pop(req.async_id, None)
        await self._send_responses(requests[reply.sent:], reply.responses[reply.sent:], encrypted_session)

    async def _execute(self, req: Request, related: bool, prev: Request | None, prev_status: int,
                       encrypted_session: Session | None) -> tuple[int, Body]:
        """Run one request's checks and handler; return (status, response body)."""
        try:
            if related and (prev is None or prev.session is None):
                # 3.3.5.2.7.2: the first request of a compound cannot be related, and a
                # related one has no session to inherit after a request that had none
                # (smbtorture smb2.compound.invalid1/2, related9).
                raise SmbError(NtStatus.INVALID_PARAMETER, "related request without a session to inherit")
            if related and prev_status != NtStatus.SUCCESS and req.related_file_id is None \
                    and req.header.command in _FILE_COMMANDS:
                # 3.3.5.2.7.2: a related request after a failed CREATE fails the same way.
                raise SmbError(prev_status)
            handler = self.server.handlers.table.get(req.header.command)
            if handler is None:  # before the session checks, as Windows and Samba answer it
                raise SmbError(NtStatus.INVALID_PARAMETER, "unknown command")
            self._prepare(req, related, encrypted_session)
            # The file operations of this request run as the session's Unix account
            # (smbd.identity); this task's own copy of the variable.
            identity.current.set(req.session.creds if req.session is not None else None)
            started = time.perf_counter() if metrics.enabled() else 0.0
            try:
                body = await handler(req)
            finally:
                if started:
                    metrics.request_done(_command_name(req.header.command), time.perf_counter() - started)
                if req.counted is not None:
                    op, seq, generation = req.counted
                    channel_sequence.finish(op.sequence, seq, generation)
            return req.status, body
        except SmbError as e:
            if e.status not in _QUIET:
                log.debug("%s: %s -> %s (%s)", self.transport.peer, _command_name(req.header.command),
                          status_name(e.status), e)
            return e.status, control.error_response(e.data)
        except asyncio.CancelledError:
            if req.cancelled.is_set():
                return NtStatus.CANCELLED, control.error_response()
            raise
        except ProtocolViolation:
            raise
        except Exception:
            # A bug of ours: answer this request with an error, keep the connection.
            log.exception("%s: %s failed", self.transport.peer, _command_name(req.header.command))
            return NtStatus.INTERNAL_ERROR, control.error_response()

    def _prepare(self, req: Request, related: bool, encrypted_session: Session | None) -> None:
        """Session, channel, signature, encryption and tree checks (3.3.5.2.4, .9, .11)."""
        hdr = req.header
        cmd = hdr.command
        if not related:
            if hdr.session_id:
                req.session = self.server.sessions.get(hdr.session_id)
            if req.session is None and cmd not in _NO_SESSION and not _is_connection_fsctl(req):
                raise SmbError(NtStatus.USER_SESSION_DELETED)
        session = req.session
        if session is not None and cmd != Command.SESSION_SETUP:
            if session.state != SessionState.VALID:
                raise SmbError(NtStatus.USER_SESSION_DELETED)
            if session.channel_for(self) is None:
                raise SmbError(NtStatus.USER_SESSION_DELETED)
        if encrypted_session is not None:
            if session is not None and session is not encrypted_session:
                raise SmbError(NtStatus.ACCESS_DENIED, "encrypted for another session")
        elif session is not None and cmd != Command.SESSION_SETUP:
            self._check_signature(req, session)
            if session.encrypt_data and cmd not in (Command.NEGOTIATE,):
                raise SmbError(NtStatus.ACCESS_DENIED, "session requires encryption")
        if cmd in _NO_TREE or (session is None and _is_connection_fsctl(req)):
            return
        if not related:
            req.tree = session.trees.get(hdr.tree_id) if session else None
        if req.tree is None:
            raise SmbError(NtStatus.NETWORK_NAME_DELETED)
        if req.tree.encrypt and encrypted_session is None:
            raise SmbError(NtStatus.ACCESS_DENIED, "share requires encryption")
        if req.tree.sign and encrypted_session is None and not hdr.flags & Flags.SIGNED:
            raise SmbError(NtStatus.ACCESS_DENIED, "share requires signing")

    def _check_signature(self, req: Request, session: Session) -> None:
        signed = bool(req.header.flags & Flags.SIGNED)
        if not signed:
            if session.signing_required and not session.is_guest and not session.is_anonymous:
                raise SmbError(NtStatus.ACCESS_DENIED, "unsigned request on a signing session")
            return
        channel = session.channel_for(self)
        key = channel.signing_key if channel else b""
        if not key:
            return  # guest/anonymous sessions have no key; nothing to check
        if not crypto.verify_signature(self.signing_algorithm, key, req.msg, dialect=self.dialect):
            log.debug("%s: bad signature on %d-byte %s (message id %d)", self.transport.peer, len(req.msg),
                      _command_name(req.header.command), req.header.message_id)
            raise SmbError(NtStatus.ACCESS_DENIED, "bad signature")

    # ---- responses ----------------------------------------------------------------------

    def _build_response(self, req: Request, status: int, body: Body) -> list:
        hdr = req.header
        if req.interim_sent:
            credits = 0  # credits were granted by the interim response (3.3.4.2)
            # It travels alone, so it is no longer part of a related chain.
            flags_hdr = replace(hdr, flags=(hdr.flags | Flags.ASYNC_COMMAND) & ~Flags.RELATED_OPERATIONS,
                                async_id=req.async_id)
        else:
            credits = self.credits.grant(hdr.credits, hdr.credit_charge)
            flags_hdr = hdr
        sid = req.session.session_id if req.session else hdr.session_id
        if hdr.command == Command.SESSION_SETUP and req.session is not None:
            sid = req.session.session_id
        tree_id = req.tree.tree_id if req.tree and hdr.command == Command.TREE_CONNECT else None
        out = flags_hdr.response(status, credits, session_id=sid, tree_id=tree_id)
        if isinstance(body, (bytes, bytearray)):
            parts = [bytearray(out.pack()) + body]
        else:
            parts = [bytearray(out.pack()) + body[0], *body[1:]]
        return parts

    def _signer(self, req: Request, status: int) -> tuple[bytes, int, int] | None:
        """(key, algorithm, dialect) to sign a response with, or None (3.3.4.1.1)."""
        if req.setup_signer is not None:
            s = req.setup_signer
            return s.key, s.algorithm, s.dialect
        session = req.session
        if session is None or session.keys is None:
            return None
        if req.header.command == Command.SESSION_SETUP and status != NtStatus.SUCCESS:
            return None
        if not (req.header.flags & Flags.SIGNED or session.signing_required
                or req.header.command == Command.SESSION_SETUP):
            return None
        channel = session.channel_for(self)
        if channel is None and req.header.flags & Flags.SIGNED:
            # A signed request naming a session this connection is no channel of (it gets
            # USER_SESSION_DELETED): answered with Session.SigningKey, as Samba does, for a
            # client that signed with it insists on a signed answer. Only if it verifies:
            # else anyone could have messages signed with the session's key.
            main = (session.keys.signing, session.signing_algorithm, session.dialect)
            try:
                ok = crypto.verify_signature(main[1], main[0], req.msg, dialect=main[2])
            except ValueError:
                ok = False
            return main if ok else None
        if channel is None or not channel.signing_key:
            return None
        return channel.signing_key, self.signing_algorithm, self.dialect

    def plain_reply(self, req: Request) -> bool:
        """True when ``req``'s response will go out as its handler returns it: alone (no
        compound), unsigned and unencrypted. Then a READ's data may stay in the file for
        the transport to send (FileSpan), since nothing has to read it."""
        return (req.compound is not None and len(req.compound.requests) == 1 and not req.encrypted
                and self._signer(req, NtStatus.SUCCESS) is None and self._encrypting_session([req]) is None)

    async def _send_responses(self, requests: list[Request], responses: list[list],
                              encrypted_session: Session | None) -> None:
        try:
            await self._send_now(requests, responses, encrypted_session)
        finally:
            for parts in responses:  # sent or not, a response's file descriptors go
                if parts and isinstance(parts[-1], FileSpan):
                    parts[-1].close()

    async def _send_now(self, requests: list[Request], responses: list[list],
                        encrypted_session: Session | None) -> None:
        if self.closed or not responses:
            return
        answered = [r for r in requests]
        flat: list[bytearray] = []
        for req, parts in zip(answered, responses):
            status = struct.unpack_from("<I", parts[0], 8)[0]
            signer = self._signer(req, status)
            if signer or len(parts) > 1 and len(responses) > 1:
                parts = [bytearray(b"".join(bytes(p) for p in parts))]
            flat.append(parts)  # type: ignore[arg-type]
        if len(flat) > 1:
            heads = [p[0] for p in flat]
            compound.join(heads)
        for req, parts in zip(answered, flat):
            status = struct.unpack_from("<I", parts[0], 8)[0]
            signer = self._signer(req, status)
            if signer:
                key, algorithm, dialect = signer
                head = parts[0]
                struct.pack_into("<I", head, 16, struct.unpack_from("<I", head, 16)[0] | Flags.SIGNED)
                head[SIGNATURE_OFFSET:SIGNATURE_OFFSET + 16] = crypto.sign(algorithm, key, head, dialect=dialect)
            elif req.header.flags & Flags.SIGNED and _is_error(status) and (
                    status == NtStatus.USER_SESSION_DELETED or req.header.command == Command.SESSION_SETUP):
                # An error we cannot (no session left) or will not (the request did not
                # verify) sign: like Samba, echo the request's SIGNED flag and signature,
                # which Samba's client insists on and then accepts for these statuses
                # (smbtorture smb2.session.bind_invalid_auth, bind_negative_*).
                head = parts[0]
                struct.pack_into("<I", head, 16, struct.unpack_from("<I", head, 16)[0] | Flags.SIGNED)
                head[SIGNATURE_OFFSET:SIGNATURE_OFFSET + 16] = req.msg[SIGNATURE_OFFSET:SIGNATURE_OFFSET + 16]
        for req, parts in zip(answered, flat):
            if req.on_response is not None:
                # The preauth hash covers the response as sent: signed, when a bind's is.
                req.on_response(b"".join(bytes(p) for p in parts))
        message = [p for parts in flat for p in parts]
        session = encrypted_session or self._encrypting_session(requests)
        if session is not None and session.keys is not None and session.keys.encrypting:
            plain = b"".join(bytes(p) for p in message)
            message = [crypto.encrypt_message(self.cipher, session.keys.encrypting, session.session_id, plain)]
        token = next((r.invalidate_token for r in requests if r.invalidate_token is not None), None)
        self._count_out(message)
        async with self.send_lock:
            if token is None:
                await self.transport.send(message)
            else:
                await self.transport.send(message, invalidate_token=token)

    def _encrypting_session(self, requests: list[Request]) -> Session | None:
        """Responses on a session or share that requires encryption are encrypted (3.3.4.1.4)."""
        for req in requests:
            s = req.session
            if req.header.command == Command.SESSION_SETUP and not req.encrypted:
                continue  # the client has no keys until it reads this response
            if s is not None and s.state == SessionState.VALID and s.keys and s.keys.encrypting and (
                    s.encrypt_data or (req.tree is not None and req.tree.encrypt)):
                return s
        return None

    async def send_interim(self, req: Request) -> None:
        """Interim response for an async operation: STATUS_PENDING with the AsyncId (3.3.4.2).

        In a compound, the responses to the requests before this one go out with it,
        compounded, as Windows sends them (3.3.4.1.3).
        """
        hdr = req.header
        credits = self.credits.grant(hdr.credits, hdr.credit_charge)
        out = replace(hdr, flags=hdr.flags | Flags.ASYNC_COMMAND, async_id=req.async_id)
        out = out.response(NtStatus.PENDING, credits)
        reply = req.compound
        if reply is not None and len(reply.responses) > reply.sent:
            earlier = reply.requests[reply.sent:len(reply.responses)]
            parts = reply.responses[reply.sent:]
            reply.sent = len(reply.responses)  # this request's final response is still to come
            interim = [bytearray(out.pack()) + control.error_response()]
            await self._send_responses([*earlier, req], [*parts, interim], reply.encrypted_session)
            return
        body = bytearray(out.pack()) + control.error_response()
        signer = self._signer(req, NtStatus.PENDING)
        if signer:
            key, algorithm, dialect = signer
            struct.pack_into("<I", body, 16, struct.unpack_from("<I", body, 16)[0] | Flags.SIGNED)
            body[SIGNATURE_OFFSET:SIGNATURE_OFFSET + 16] = crypto.sign(algorithm, key, body, dialect=dialect)
        message: list = [body]
        session = self._encrypting_session([req]) if not req.encrypted else req.session
        if session is not None and session.keys and session.keys.encrypting:
            message = [crypto.encrypt_message(self.cipher, session.keys.encrypting, session.session_id, bytes(body))]
        self._count_out(message)
        async with self.send_lock:
            await self.transport.send(message)

    async def send_unsolicited(self, message: bytes, session: Session | None, encrypt: bool) -> None:
        """Send a whole server-initiated message, e.g. an Oplock Break Notification (3.3.4.6).

        It carries SessionId 0 (2.2.23.1), so it is never signed; when the session or share
        requires encryption it is encrypted with that session's key (3.3.4.1.4), the
        transform header naming the session."""
        if self.closed:
            return
        parts: list = [message]
        if (encrypt and session is not None and self.dialect >= 0x0300 and session.keys is not None
                and session.keys.encrypting and self.cipher):
            parts = [crypto.encrypt_message(self.cipher, session.keys.encrypting, session.session_id, message)]
        # SMB Direct: the proxy confirms the break's sending (smbd.server.break_delivery).
        send = getattr(self.transport, "send_tracked", None) or self.transport.send
        self._count_out(parts)
        async with self.send_lock:
            await send(parts)

    @property
    def transport_kind(self) -> str:
        return "smbdirect" if self.transport.peer.startswith("rdma:") else "tcp"

    def _count_out(self, parts: list) -> None:
        n = sum(len(p) for p in parts)
        self.bytes_out += n
        if metrics.enabled():
            metrics.bytes_moved(self.transport_kind, "out", n)

    def _cancel(self, hdr: Header) -> None:
        """CANCEL (3.3.5.16): find the pending request by AsyncId or MessageId; no response."""
        if hdr.flags & Flags.ASYNC_COMMAND:
            req = self.async_requests.get(hdr.async_id)
        else:
            req = self.sync_requests.get(hdr.message_id)
        if req is not None and req.session is not None and hdr.session_id not in (0, req.session.session_id):
            return
        if req is not None:
            req.cancelled.set()

    # ---- teardown -----------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in list(self.tasks):
            session = self._surviving_session(task)
            if session is None:
                task.cancel()
                continue
            # The session goes on in another channel: what this request does (a CREATE
            # waiting for a break, say) still happens, only its answer is lost, and a
            # replay on another channel finds it in progress or done (3.3.5.9,
            # smbtorture smb2.replay.dhv2-pending*). It ends with the session if sooner.
            session.orphaned.add(task)
            task.add_done_callback(session.orphaned.discard)
        from .durable import preserve_on_disconnect
        preserve_on_disconnect(self.server, self)  # 3.3.7.1: durable Opens outlive the channel
        self.server.connection_lost(self)
        self.transport.close()


    def _surviving_session(self, task: asyncio.Task) -> Session | None:
        for req in self.task_requests.get(task, ()):
            s = req.session
            if s is not None and s.state == SessionState.VALID and s.other_live_channel(self):
                return s
        return None


@dataclass(eq=False)
class _CompoundReply:
    """The responses to one incoming message, built in request order. ``sent`` counts the
    leading ones already sent (before an interim response, see send_interim); the rest
    go out together when the last request finishes."""

    requests: list[Request]
    encrypted_session: Session | None
    responses: list[list] = field(default_factory=list)
    sent: int = 0


_FILE_COMMANDS = {Command.CLOSE, Command.FLUSH, Command.READ, Command.WRITE, Command.LOCK, Command.IOCTL,
                  Command.QUERY_DIRECTORY, Command.CHANGE_NOTIFY, Command.QUERY_INFO, Command.SET_INFO}
def _is_connection_fsctl(req: Request) -> bool:
    """An IOCTL of a code that acts on the connection alone (handlers.ioctl.CONNECTION_FSCTLS)."""
    from .handlers.ioctl import CONNECTION_FSCTLS

    if req.header.command != Command.IOCTL or len(req.msg) < HEADER_SIZE + 8:
        return False
    # SMB2 IOCTL Request (2.2.31): StructureSize, Reserved, then CtlCode.
    return int.from_bytes(req.msg[HEADER_SIZE + 4:HEADER_SIZE + 8], "little") in CONNECTION_FSCTLS


def _is_error(status: int) -> bool:
    """An NTSTATUS of error severity (MS-ERREF 2.3) other than MORE_PROCESSING_REQUIRED."""
    return status >= 0xC0000000 and status != NtStatus.MORE_PROCESSING_REQUIRED


_QUIET = {NtStatus.OBJECT_NAME_NOT_FOUND, NtStatus.NO_MORE_FILES, NtStatus.MORE_PROCESSING_REQUIRED}
