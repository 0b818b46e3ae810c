"""SESSION_SETUP (3.3.5.5), LOGOFF (3.3.5.6), TREE_CONNECT (3.3.5.7), TREE_DISCONNECT (3.3.5.8), ECHO (3.3.5.15)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from smbd import crypto
from smbd.auth.ntlm import AuthError, NtlmServer
from smbd.auth.spnego import SpnegoServer, StepResult
from smbd.status import NtStatus, SmbError
from smbd.wire.create import FILE_ALL_ACCESS, FILE_GENERIC_EXECUTE, FILE_GENERIC_READ
from smbd.wire.negotiate import Dialect, SecurityMode
from smbd.wire.session import (SESSION_FLAG_BINDING, SessionFlags, SessionSetupRequest, ShareFlags, ShareType,
                               TreeConnectRequest, empty_response, parse_empty, session_setup_response,
                               tree_connect_response)

from ..config import EncryptPolicy
from ..objects import Channel, Session, SessionState, TreeConnect

if TYPE_CHECKING:
    from ..connection import Request

log = logging.getLogger("smbd.session")
READ_ONLY_ACCESS = FILE_GENERIC_READ | FILE_GENERIC_EXECUTE
IPC_ACCESS = 0x001F01FF


def _new_auth(req: "Request") -> SpnegoServer:
    cfg = req.server.config
    guest_ok = any(s.guest_ok for s in cfg.shares)
    ntlm = NtlmServer(lambda user, domain: cfg.user_hash(user), netbios_name=cfg.netbios_name,
                      domain=cfg.domain, allow_guest=guest_ok)
    return SpnegoServer(ntlm)


async def handle_session_setup(req: "Request") -> bytes:
    conn = req.conn
    setup = SessionSetupRequest.parse(req.msg)
    server = req.server
    session = req.session
    if setup.flags & SESSION_FLAG_BINDING and conn.dialect >= Dialect.SMB_3_0:
        session = _bind(req, session)
    elif req.header.session_id == 0:
        session = Session(server.new_session_id(), conn.dialect, client_guid=conn.client_guid)
        if conn.dialect == Dialect.SMB_3_1_1:
            session.preauth = conn.preauth.copy()
        server.sessions[session.session_id] = session
        req.session = session
    elif session is None:
        raise SmbError(NtStatus.USER_SESSION_DELETED)
    elif session.channel_for(conn) is None and session.state == SessionState.VALID:
        raise SmbError(NtStatus.USER_SESSION_DELETED, "session belongs to another connection")
    if session.auth is None:
        session.auth = _new_auth(req)  # a new session, or re-authentication of a valid one
    if session.preauth is not None and conn.dialect == Dialect.SMB_3_1_1:
        session.preauth.update(bytes(req.msg))
    try:
        token, result = session.auth.step(setup.token)
    except AuthError as e:
        log.info("%s: logon failed: %s", conn.transport.peer, e)
        _drop_failed(req, session)
        raise SmbError(getattr(e, "status", NtStatus.LOGON_FAILURE)) from e
    if result == StepResult.MORE_PROCESSING:
        req.status = NtStatus.MORE_PROCESSING_REQUIRED
        if session.preauth is not None:
            req.on_response = session.preauth.update
        return session_setup_response(0, token)
    return _complete(req, session, setup, token)


def _complete(req: "Request", session: Session, setup: SessionSetupRequest, token: bytes) -> bytes:
    """Authentication succeeded: keys, signing and encryption policy (3.3.5.5.3)."""
    conn = req.conn
    cfg = req.server.config
    res = session.auth.result
    session.auth = None
    binding = bool(setup.flags & SESSION_FLAG_BINDING) and session.state == SessionState.VALID
    if binding:
        if res.user.lower() != session.user.lower():
            raise SmbError(NtStatus.ACCESS_DENIED, "binding as another user")
        keys = crypto.derive_session_keys(conn.dialect, session.session_key,
                                          session.preauth.value if session.preauth else None, conn.cipher)
        session.channels[id(conn)] = Channel(conn, keys.signing)
        return session_setup_response(0, token)
    session.user, session.domain = res.user, res.domain
    session.is_guest, session.is_anonymous = res.is_guest, res.is_anonymous
    flags = 0
    if res.is_anonymous:
        flags |= SessionFlags.IS_NULL
    elif res.is_guest:
        flags |= SessionFlags.IS_GUEST
    session.session_key = res.session_key
    if session.session_key:
        session.keys = crypto.derive_session_keys(
            conn.dialect, session.session_key,
            session.preauth.value if session.preauth is not None else None, conn.cipher or None)
    session.cipher = conn.cipher
    session.signing_algorithm = conn.signing_algorithm
    has_key = bool(session.session_key) and not (res.is_guest or res.is_anonymous)
    session.signing_required = has_key and bool(
        cfg.signing_required or setup.security_mode & SecurityMode.SIGNING_REQUIRED)
    can_encrypt = has_key and conn.dialect >= Dialect.SMB_3_0 and bool(conn.cipher)
    if cfg.encrypt == EncryptPolicy.REQUIRED and not can_encrypt:
        _drop_failed(req, session)
        raise SmbError(NtStatus.ACCESS_DENIED, "encryption required but not possible")
    if cfg.encrypt in (EncryptPolicy.REQUIRED, EncryptPolicy.DESIRED) and can_encrypt:
        session.encrypt_data = True
        flags |= SessionFlags.ENCRYPT_DATA
    session.channels[id(conn)] = Channel(conn, session.keys.signing if session.keys else b"")
    session.state = SessionState.VALID
    log.info("%s: session %x for %s\\%s%s", conn.transport.peer, session.session_id, res.domain, res.user,
             " (guest)" if res.is_guest else "")
    return session_setup_response(flags, token)


def _bind(req: "Request", session: Session | None) -> Session:
    """Checks for binding a further channel to an existing session (3.3.5.5.2)."""
    conn = req.conn
    if session is None or session.state != SessionState.VALID:
        raise SmbError(NtStatus.USER_SESSION_DELETED)
    if session.dialect != conn.dialect or session.client_guid != conn.client_guid:
        raise SmbError(NtStatus.INVALID_PARAMETER, "binding from another client or dialect")
    if session.is_guest or session.is_anonymous:
        raise SmbError(NtStatus.NOT_SUPPORTED, "guest sessions cannot bind")
    if conn.dialect == Dialect.SMB_3_1_1 and session.preauth is not None and session.auth is None:
        session.preauth = conn.preauth.copy()
    return session


def _drop_failed(req: "Request", session: Session) -> None:
    """A failed logon ends a new session; a failed re-authentication ends the old one too."""
    session.auth = None
    req.server.sessions.pop(session.session_id, None)
    if session.state == SessionState.VALID:
        req.server.logoff(session)


async def handle_logoff(req: "Request") -> bytes:
    parse_empty(req.msg)
    session = req.session
    session.state = SessionState.EXPIRED
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
    encrypt = share.encrypt or cfg.encrypt == EncryptPolicy.REQUIRED
    if encrypt and not (session.keys and session.keys.encrypting):
        raise SmbError(NtStatus.ACCESS_DENIED, "share requires encryption")
    try:
        vfs = await req.server.io(req.server.vfs_for, share.name)
    except OSError as e:
        log.error("share %s: cannot open %s: %s", share.name, share.path, e)
        raise SmbError(NtStatus.BAD_NETWORK_NAME, "share path unavailable") from e
    access = READ_ONLY_ACCESS if share.read_only else FILE_ALL_ACCESS
    tree = TreeConnect(tree_id, session, share, vfs, access, encrypt=encrypt and not session.encrypt_data,
                       sign=share.sign and not (session.is_guest or session.is_anonymous))
    session.trees[tree_id] = tree
    req.tree = tree
    flags = ShareFlags.MANUAL_CACHING
    if tree.encrypt:
        flags |= ShareFlags.ENCRYPT_DATA
    return tree_connect_response(ShareType.DISK, flags, 0, access)


async def handle_tree_disconnect(req: "Request") -> bytes:
    parse_empty(req.msg)
    req.server.close_tree(req.tree)
    return empty_response()
