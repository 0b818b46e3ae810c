"""SESSION_SETUP (3.3.5.5), LOGOFF (3.3.5.6), TREE_CONNECT (3.3.5.7), TREE_DISCONNECT (3.3.5.8), ECHO (3.3.5.15).

SESSION_SETUP comes in three kinds (3.3.5.5):

- a new session (SessionId 0);
- re-authentication of a valid session on one of its channels (3.3.5.5.3 on an existing
  Session): the NTLM exchange runs again, the identity may change, the keys stay;
- binding another connection to a session as a further channel (SMB2_SESSION_FLAG_BINDING,
  3.3.5.5.2): the request must be signed with Session.SigningKey, and a successful
  exchange gives the channel its own signing key.

An exchange in progress lives in the connection's table keyed by SessionId (3.3.1.7
Connection.PreauthSessionTable): it holds the SPNEGO state and, for 3.1.1, this
connection's preauth integrity hash for the session, so a bind and the session's own
setup never share one.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smbd import crypto, identity, metrics
from smbd.auth.ntlm import AuthError, AuthResult, NtlmServer
from smbd.auth.spnego import SpnegoServer, StepResult
from smbd.status import NtStatus, SmbError
from smbd.wire.create import FILE_ALL_ACCESS, FILE_GENERIC_EXECUTE, FILE_GENERIC_READ
from smbd.wire.header import Flags
from smbd.wire.negotiate import Capabilities, Dialect, SecurityMode
from smbd.wire.session import (SESSION_FLAG_BINDING, SessionFlags, SessionSetupRequest, ShareCaps, ShareFlags,
                               ShareType, TreeConnectRequest, empty_response, parse_empty, session_setup_response,
                               tree_connect_response)

from .. import access, channel_move
from ..config import EncryptPolicy
from ..objects import Channel, Session, SessionState, TreeConnect
from ..state import SessionRecord

if TYPE_CHECKING:
    from ..connection import Request

log = logging.getLogger("smbd.session")
READ_ONLY_ACCESS = FILE_GENERIC_READ | FILE_GENERIC_EXECUTE
# Channels per session: Windows allows 32 and answers INSUFFICIENT_RESOURCES beyond
# (3.3.5.5.2 leaves the limit to the implementation; smbtorture multichannel num_channels).
MAX_CHANNELS = 32
IPC_ACCESS = 0x001F01FF


@dataclass(eq=False)
class SessionAuth:
    """One authentication exchange in progress on one connection (3.3.1.7
    Connection.PreauthSessionTable entry, plus the security context)."""

    spnego: SpnegoServer
    preauth: crypto.PreauthHash | None  # 3.1.1 only
    binding: bool = False


@dataclass(frozen=True)
class Signer:
    """The key, algorithm and dialect a SESSION_SETUP response is signed with."""

    key: bytes
    algorithm: int
    dialect: int


def _new_spnego(req: "Request") -> SpnegoServer:
    cfg = req.server.config
    guest_ok = any(s.guest_ok for s in cfg.shares)
    # Anonymous logons are accepted as Samba does: they reach only IPC$ and guest shares
    # (handle_tree_connect), and a re-authentication may turn a session anonymous
    # (smbtorture smb2.session.reauth2).
    accounts = req.server.accounts
    ntlm = NtlmServer(lambda user, domain: accounts.nt_hash(user), netbios_name=cfg.netbios_name,
                      domain=cfg.domain, allow_guest=guest_ok, allow_anonymous=True)
    kerberos = None
    if cfg.kerberos_keytab:
        from smbd.auth.kerberos import KerberosAcceptor

        def known(user: str) -> bool:  # a principal's user logs on if it is one of ours
            return accounts.lookup(user) is not None or identity.Credentials.of_account(user) is not None

        kerberos = lambda: KerberosAcceptor(cfg.kerberos_keytab, known)  # noqa: E731
    return SpnegoServer(ntlm, kerberos)


async def handle_session_setup(req: "Request") -> bytes:
    conn = req.conn
    setup = SessionSetupRequest.parse(req.msg)
    server = req.server
    sid = req.header.session_id
    binding = bool(setup.flags & SESSION_FLAG_BINDING)
    if binding:
        session = _check_bind(req, sid)
        if isinstance(session, SessionRecord):  # checked against its record: go to its worker
            await channel_move.move_to(req, session.pid)
    elif sid == 0:
        session = Session(server.new_session_id(), conn.dialect, client_guid=conn.client_guid)
        server.sessions[session.session_id] = session
        req.session = session
    else:
        session = server.sessions.get(sid)
        if session is None or (session.state == SessionState.VALID and session.channel_for(conn) is None):
            # Not a session of this connection. When the request is signed with the
            # session's key the refusal is signed too, as the client insists (Samba does so).
            _sign_with_session_key(req, session, sid)
            raise SmbError(NtStatus.USER_SESSION_DELETED)
        req.session = session
        if session.state == SessionState.VALID:
            _check_reauth(req, session)
        elif session.session_id not in conn.session_auths:
            raise SmbError(NtStatus.USER_SESSION_DELETED, "session is being set up on another connection")
    auths = conn.session_auths
    auth = auths.get(session.session_id)
    if auth is None:
        preauth = conn.preauth.copy() if conn.dialect == Dialect.SMB_3_1_1 else None
        auth = auths[session.session_id] = SessionAuth(_new_spnego(req), preauth, binding)
    if auth.preauth is not None:
        auth.preauth.update(bytes(req.msg))
    try:
        token, result = auth.spnego.step(setup.token)
        if result == StepResult.MORE_PROCESSING:
            req.status = NtStatus.MORE_PROCESSING_REQUIRED
            if auth.preauth is not None:
                req.on_response = auth.preauth.update
            return session_setup_response(0, token)
        auths.pop(session.session_id, None)
        res = auth.spnego.result
        if auth.binding:
            return _complete_bind(req, session, auth, res, token)
        if session.state == SessionState.VALID:
            return _complete_reauth(req, session, auth, res, setup, token)
        response = _complete_new(req, session, auth, res, setup, token)
        prev = setup.previous_session_id
        if prev and prev != session.session_id and prev not in server.sessions:
            from ..handoff import close_previous_elsewhere
            await close_previous_elsewhere(req, prev)  # before the answer: see smbd.server.handoff
        return response
    except SmbError as e:
        auths.pop(session.session_id, None)
        if isinstance(e, AuthError):
            log.info("%s: logon failed: %s", conn.transport.peer, e)
        if not auth.binding:
            # 3.3.5.5.3: a failed logon ends the session, a re-authenticated one too
            # (Samba shuts it down); a failed bind leaves the session alone.
            _drop_session(req, session)
        raise


def _check_reauth(req: "Request", session: Session) -> None:
    """Re-authentication must come on one of the session's channels, signed with that
    channel's key when signed or when the session requires signing (3.3.5.2.4)."""
    conn = req.conn
    channel = session.channel_for(conn)
    if channel is None:
        raise SmbError(NtStatus.USER_SESSION_DELETED, "session belongs to another connection")
    signed = bool(req.header.flags & Flags.SIGNED)
    if req.encrypted or not channel.signing_key or not (signed or session.signing_required):
        return  # an encrypted request is protected by its transform header (3.3.5.2.1.1)
    if not signed or not _verify(req, Signer(channel.signing_key, conn.signing_algorithm, conn.dialect)):
        raise SmbError(NtStatus.ACCESS_DENIED, "re-authentication not signed with the channel key")


def _sign_with_session_key(req: "Request", session: Session | None, sid: int) -> None:
    """Sign the answer with Session.SigningKey (of this worker's session or another's)
    when the request verifies with it: a client that signed insists on a signed answer."""
    info = _record_of(session) if session is not None and session.keys else \
        req.server.global_sessions.lookup(sid) if session is None and sid else None
    if info is not None and info.signing_key:
        _verify(req, Signer(info.signing_key, info.signing_algorithm, info.dialect))


def _verify(req: "Request", signer: Signer) -> bool:
    """Whether the request is signed with ``signer``; if so its answer is signed with it too.

    Only then: answering an unverified request with a signature would let anyone who
    knows a SessionId have messages of their choosing signed with that session's key
    (with AES-GMAC, whose nonce is the MessageId, a nonce-reuse oracle). An unverified
    signed request gets its own signature echoed instead (connection._send_responses)."""
    if not req.header.flags & Flags.SIGNED:
        return False
    try:
        ok = crypto.verify_signature(signer.algorithm, signer.key, req.msg, dialect=signer.dialect)
    except ValueError:
        ok = False  # an algorithm/dialect pair that cannot sign: not verified
    if ok:
        req.setup_signer = signer
    return ok


def _check_bind(req: "Request", sid: int) -> Session | SessionRecord:
    """The checks for binding this connection to a session, in the order Windows and
    Samba apply them (3.3.5.5.2; smbtorture smb2.session.bind_negative_*).

    The session may live in another worker (another or no ClientGUID): it is then
    checked against its record in the global table, which is returned, and the
    connection moves there (smbd.server.channel_move); a refusal is signed with the
    session's key."""
    conn, server = req.conn, req.server
    if sid == 0:
        raise SmbError(NtStatus.INVALID_PARAMETER, "binding without a SessionId")
    session = server.sessions.get(sid)
    if session is not None and session.state != SessionState.VALID:
        session = None
    remote = server.global_sessions.lookup(sid) if session is None else None
    if session is None and remote is None:
        raise SmbError(NtStatus.USER_SESSION_DELETED)
    info = remote if remote is not None else _record_of(session)
    channel = session.channel_for(conn) if session is not None else None
    if channel is not None and channel.signing_key:
        # Already a channel: the request is checked with its key, and a bad signature
        # is refused at once (3.3.5.2.4; smbtorture bind_negative_smb3signCtoHs).
        if not _verify(req, Signer(channel.signing_key, conn.signing_algorithm, conn.dialect)):
            raise SmbError(NtStatus.ACCESS_DENIED, "bad signature on a bound channel")
        raise SmbError(NtStatus.REQUEST_NOT_ACCEPTED, "connection already bound to the session")
    # 3.3.5.2.4: a binding request is verified with Session.SigningKey. A bad or missing
    # signature is not refused at once: the status below says what the client got wrong.
    verified = bool(info.signing_key) and _verify(req, Signer(info.signing_key, info.signing_algorithm,
                                                             info.dialect))
    if info.signing_algorithm >= crypto.SIGNING_AES_GMAC and conn.signing_algorithm != info.signing_algorithm:
        raise SmbError(NtStatus.REQUEST_OUT_OF_SEQUENCE, "session signs with GMAC, this connection does not")
    if conn.signing_algorithm >= crypto.SIGNING_AES_GMAC and info.signing_algorithm != conn.signing_algorithm:
        raise SmbError(NtStatus.NOT_SUPPORTED, "this connection signs with GMAC, the session does not")
    if conn.dialect < Dialect.SMB_3_0:
        raise SmbError(NtStatus.REQUEST_NOT_ACCEPTED, "no multichannel below SMB 3.0")
    if not verified:
        raise SmbError(NtStatus.INVALID_PARAMETER, "binding request not signed with the session key")
    if info.dialect != conn.dialect:
        raise SmbError(NtStatus.INVALID_PARAMETER, "binding from another dialect")
    if info.cipher != conn.cipher:
        raise SmbError(NtStatus.INVALID_PARAMETER, "binding with another cipher")
    if remote is not None:
        if remote.is_guest or remote.is_anonymous:
            raise SmbError(NtStatus.NOT_SUPPORTED, "guest and anonymous sessions cannot bind")
        return remote  # opens and trees live in the session's own worker: the channel goes there
    if session.is_guest or session.is_anonymous:
        raise SmbError(NtStatus.NOT_SUPPORTED, "guest and anonymous sessions cannot bind")
    if len(session.channels) >= MAX_CHANNELS:
        raise SmbError(NtStatus.INSUFFICIENT_RESOURCES, "channel limit reached")
    req.session = session
    return session


def _record_of(session: Session) -> SessionRecord:
    return SessionRecord(session.session_id, os.getpid(), session.dialect, session.signing_algorithm,
                         session.cipher, session.keys.signing if session.keys else b"", session.is_guest,
                         session.is_anonymous, session.user, session.domain)


def _same_user(session: Session, res: AuthResult) -> bool:
    return (res.user.lower(), res.domain.lower()) == (session.user.lower(), session.domain.lower()) \
        and not res.is_guest and not res.is_anonymous


def _complete_bind(req: "Request", session: Session, auth: SessionAuth, res: AuthResult, token: bytes) -> bytes:
    """3.3.5.5.3 with BINDING: the channel's signing key comes from this exchange's own
    session key and (3.1.1) this connection's preauth hash."""
    conn = req.conn
    if session.state != SessionState.VALID or req.server.sessions.get(session.session_id) is not session:
        raise SmbError(NtStatus.USER_SESSION_DELETED, "session ended during the bind")
    if not _same_user(session, res):
        raise SmbError(NtStatus.ACCESS_DENIED, "binding as another user")
    if not res.session_key:
        raise SmbError(NtStatus.NOT_SUPPORTED, "no session key to sign the channel with")
    keys = crypto.derive_session_keys(conn.dialect, res.session_key,
                                      auth.preauth.value if auth.preauth else None, conn.cipher or None)
    session.channels[id(conn)] = Channel(conn, keys.signing)
    req.setup_signer = Signer(keys.signing, conn.signing_algorithm, conn.dialect)
    log.info("%s: connection bound to session %x", conn.transport.peer, session.session_id)
    return session_setup_response(0, token)


def _credentials(req: "Request", res: AuthResult) -> identity.Credentials | None:
    """The Unix account the session's file operations run as (smbd.identity): the
    user's ``unix_user`` or the account of the same name, the guest account for guest and
    anonymous logons. No such account: the logon fails, as in Samba. None (the server's own
    identity) with ``unix_identity = "daemon"`` or when the server is not root."""
    cfg = req.server.config
    if cfg.unix_identity != "users" or not identity.supported():
        return None
    if res.is_guest or res.is_anonymous:
        name = cfg.guest_account
    else:
        account = req.server.accounts.lookup(res.user)
        name = account.unix_name if account is not None else res.user
    creds = identity.Credentials.of_account(name)
    if creds is None:
        log.warning("%s: logon of %s refused: no Unix account %r", req.conn.transport.peer,
                    res.user or "(anonymous)", name)
        raise SmbError(NtStatus.LOGON_FAILURE, f"no Unix account {name!r}")
    return creds


def _complete_reauth(req: "Request", session: Session, auth: SessionAuth, res: AuthResult,
                     setup: SessionSetupRequest, token: bytes) -> bytes:
    """Re-authentication: the session takes the new identity and keeps its keys (the
    keys are derived once, 3.3.5.5.3); opens and trees stay (smbtorture reauth1-3)."""
    session.creds = _credentials(req, res)
    session.user, session.domain = res.user, res.domain
    session.is_guest, session.is_anonymous = res.is_guest, res.is_anonymous
    if session.keys is None and res.session_key and not (res.is_guest or res.is_anonymous):
        # A guest session that logs on as a user gets keys now, as a new one would.
        return _complete_new(req, session, auth, res, setup, token)
    if session.keys is not None and req.setup_signer is None:
        channel = session.channel_for(req.conn)
        if channel is not None and channel.signing_key and not (res.is_guest or res.is_anonymous):
            req.setup_signer = Signer(channel.signing_key, req.conn.signing_algorithm, req.conn.dialect)
    req.server.global_sessions.publish(_record_of(session))
    _close_previous(req, session, setup)
    log.info("%s: session %x re-authenticated as %s\\%s", req.conn.transport.peer, session.session_id,
             res.domain, res.user or "(anonymous)")
    return session_setup_response(0, token)


def _complete_new(req: "Request", session: Session, auth: SessionAuth, res: AuthResult,
                  setup: SessionSetupRequest, token: bytes) -> bytes:
    """A new session is authenticated: keys, signing and encryption policy (3.3.5.5.3)."""
    conn = req.conn
    cfg = req.server.config
    session.creds = _credentials(req, res)
    session.user, session.domain = res.user, res.domain
    session.is_guest, session.is_anonymous = res.is_guest, res.is_anonymous
    flags = 0
    if res.is_anonymous:
        flags |= SessionFlags.IS_NULL
    elif res.is_guest:
        flags |= SessionFlags.IS_GUEST
    session.session_key = res.session_key
    preauth = auth.preauth
    if session.session_key:
        session.keys = crypto.derive_session_keys(
            conn.dialect, session.session_key, preauth.value if preauth is not None else None,
            conn.cipher or None)
    session.cipher = conn.cipher
    session.signing_algorithm = conn.signing_algorithm
    has_key = bool(session.session_key) and not (res.is_guest or res.is_anonymous)
    session.signing_required = has_key and bool(
        cfg.signing_required or setup.security_mode & SecurityMode.SIGNING_REQUIRED)
    can_encrypt = has_key and conn.dialect >= Dialect.SMB_3_0 and bool(conn.cipher)
    if cfg.encrypt == EncryptPolicy.REQUIRED and not can_encrypt:
        raise SmbError(NtStatus.ACCESS_DENIED, "encryption required but not possible")
    if cfg.encrypt in (EncryptPolicy.REQUIRED, EncryptPolicy.DESIRED) and can_encrypt:
        session.encrypt_data = True
        flags |= SessionFlags.ENCRYPT_DATA
    session.channels[id(conn)] = Channel(conn, session.keys.signing if session.keys else b"")
    session.state = SessionState.VALID
    metrics.sessions_now(len(req.server.sessions))
    req.server.global_sessions.publish(_record_of(session))
    _close_previous(req, session, setup)
    log.info("%s: session %x for %s\\%s%s", conn.transport.peer, session.session_id, res.domain, res.user,
             " (guest)" if res.is_guest else "")
    return session_setup_response(flags, token)


def _close_previous(req: "Request", session: Session, setup: SessionSetupRequest) -> None:
    """PreviousSessionId (3.3.5.5.3): a client that reconnects names its old session; the
    server logs it off, with its trees and non-durable opens, if the same user owns it
    (smbtorture smb2.session.reconnect1/2). A session of another worker is that worker's
    to end (smbd.server.handoff.close_previous_elsewhere)."""
    prev = setup.previous_session_id
    if not prev or prev == session.session_id:
        return
    old = req.server.sessions.get(prev)
    if old is None or old.state != SessionState.VALID or old.is_anonymous or session.is_anonymous:
        return
    if (old.user.lower(), old.domain.lower()) != (session.user.lower(), session.domain.lower()):
        return
    log.info("%s: session %x replaces previous session %x", req.conn.transport.peer, session.session_id, prev)
    from ..durable import preserve_session
    preserve_session(req.server, old)  # its durable Opens wait for the client's reconnect
    old.state = SessionState.EXPIRED
    req.server.logoff(old)


def _drop_session(req: "Request", session: Session) -> None:
    if req.server.sessions.get(session.session_id) is session:
        session.state = SessionState.EXPIRED
        req.server.logoff(session)


async def handle_logoff(req: "Request") -> bytes:
    parse_empty(req.msg)
    session = req.session
    session.state = SessionState.EXPIRED
    # Like Samba (smbtorture durable-open.reopen4), a LOGOFF leaves durable Opens waiting
    # for a reconnect, as a dropped connection does.
    from ..durable import preserve_session
    preserve_session(req.server, session)
    req.server.logoff(session)
    return empty_response()


async def handle_echo(req: "Request") -> bytes:
    parse_empty(req.msg)
    return empty_response()


async def handle_tree_connect(req: "Request") -> bytes:
    tc = TreeConnectRequest.parse(req.msg, req.conn.dialect)
    name = tc.share_name
    session = req.session
    cfg = req.server.config
    tree_id = next(session.next_tree_id)
    if name.upper() == "IPC$":
        tree = TreeConnect(tree_id, session, None, None, IPC_ACCESS)
        session.trees[tree_id] = tree
        req.tree = tree
        return tree_connect_response(ShareType.PIPE, ShareFlags.NO_CACHING, 0, IPC_ACCESS)
    share = cfg.share(name)
    if share is None:
        raise SmbError(NtStatus.BAD_NETWORK_NAME, name)
    if (session.is_guest or session.is_anonymous) and not share.guest_ok:
        raise SmbError(NtStatus.ACCESS_DENIED, "guest access not allowed on this share")
    if not access.host_allowed(access.peer_address(req.conn.transport.peer), share.hosts_allow, share.hosts_deny):
        raise SmbError(NtStatus.ACCESS_DENIED, f"share {share.name}: host {req.conn.transport.peer} not allowed")
    nobody = session.is_guest or session.is_anonymous
    account = None if nobody else req.server.accounts.lookup(session.user)
    decision = access.share_decision(share, None if nobody else session.user,
                                     account.unix_name if account else session.user or None)
    if not decision.allowed:
        raise SmbError(NtStatus.ACCESS_DENIED, f"share {share.name}: {decision.why}")
    encrypt = share.encrypt or cfg.encrypt == EncryptPolicy.REQUIRED
    if encrypt and not (session.keys and session.keys.encrypting):
        raise SmbError(NtStatus.ACCESS_DENIED, "share requires encryption")
    try:
        vfs = await req.server.io(req.server.vfs_for, share.name, decision.read_only)
        if session.creds is not None:
            await req.server.io(vfs.check_entry)  # as the user: SmbError ACCESS_DENIED if not
    except OSError as e:
        log.error("share %s: cannot open %s: %s", share.name, share.path, e)
        raise SmbError(NtStatus.BAD_NETWORK_NAME, "share path unavailable") from e
    maximal = READ_ONLY_ACCESS if decision.read_only else FILE_ALL_ACCESS
    tree = TreeConnect(tree_id, session, share, vfs, maximal, encrypt=encrypt and not session.encrypt_data,
                       sign=share.sign and not nobody, read_only=decision.read_only)
    session.trees[tree_id] = tree
    req.tree = tree
    flags = ShareFlags.MANUAL_CACHING
    if tree.encrypt:
        flags |= ShareFlags.ENCRYPT_DATA
    caps = 0
    if share.continuous_availability and req.conn.server_capabilities & Capabilities.PERSISTENT_HANDLES:
        caps |= ShareCaps.CONTINUOUS_AVAILABILITY  # 3.3.5.7
    return tree_connect_response(ShareType.DISK, flags, caps, maximal)


async def handle_tree_disconnect(req: "Request") -> bytes:
    parse_empty(req.msg)
    req.server.close_tree(req.tree)
    return empty_response()
