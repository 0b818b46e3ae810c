"""NEGOTIATE (MS-SMB2 3.3.5.4) and the SMB2 answer to an SMB1 negotiate (3.3.5.3.1)."""
from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

from smbd import crypto
from smbd.auth.spnego import initial_token
from smbd.status import NtStatus, ProtocolViolation, SmbError
from smbd.wire.header import Command, Flags, Header
from smbd.wire.negotiate import (HASH_SHA512, RDMA_TRANSFORM_NONE, Capabilities, ContextType, Dialect,
                                 NegotiateRequest, NegotiateResponse, SecurityMode, cipher_ids,
                                 preauth_context, preauth_hash_ids, rdma_transform_context,
                                 rdma_transform_ids, signing_ids, single_id_context)

from ..config import EncryptPolicy
from ..state import filetime_now

if TYPE_CHECKING:
    from ..connection import Request, SmbConnection

SUPPORTED = (Dialect.SMB_3_1_1, Dialect.SMB_3_0_2, Dialect.SMB_3_0, Dialect.SMB_2_1, Dialect.SMB_2_0_2)
# Our preference when the client offers several (GCM is the fastest here; CCM for older peers).
CIPHER_PREFERENCE = (crypto.CIPHER_AES_128_GCM, crypto.CIPHER_AES_128_CCM,
                     crypto.CIPHER_AES_256_GCM, crypto.CIPHER_AES_256_CCM)
SIGNING_PREFERENCE = (crypto.SIGNING_AES_GMAC, crypto.SIGNING_AES_CMAC, crypto.SIGNING_HMAC_SHA256)
SMB2_0_2_MAX_IO = 65536


def security_mode(conn: "SmbConnection") -> int:
    mode = SecurityMode.SIGNING_ENABLED
    if conn.server.config.signing_required:
        mode |= SecurityMode.SIGNING_REQUIRED
    return int(mode)


def _pick(preference: tuple[int, ...], offered: list[int]) -> int | None:
    """Our most preferred id the client offered, or None (0 is a real id: HMAC-SHA256)."""
    for ident in preference:
        if ident in offered:
            return ident
    return None


async def handle_negotiate(req: "Request") -> bytes:
    conn = req.conn
    if conn.negotiated:
        # 3.3.5.4: a second NEGOTIATE on a connection is a protocol error.
        raise ProtocolViolation("second NEGOTIATE")
    neg = NegotiateRequest.parse(req.msg)
    dialect = next((d for d in SUPPORTED if d in neg.dialects), None)
    if dialect is None:
        raise SmbError(NtStatus.NOT_SUPPORTED, "no common dialect")
    cfg = conn.server.config
    contexts: list[bytes] = []
    if dialect == Dialect.SMB_3_1_1:
        contexts = _negotiate_contexts(conn, neg)
        conn.preauth.update(bytes(req.msg))
        req.on_response = conn.preauth.update
    conn.dialect = int(dialect)
    conn.client_guid = neg.client_guid if dialect != Dialect.SMB_2_0_2 else None
    conn.client_capabilities = neg.capabilities
    conn.client_security_mode = neg.security_mode
    conn.client_dialects = neg.dialects  # FSCTL_VALIDATE_NEGOTIATE_INFO compares them (3.3.5.15.12)
    caps = 0
    if dialect >= Dialect.SMB_2_1:
        caps |= Capabilities.LARGE_MTU | Capabilities.LEASING  # leases: smbd.server.leases
        conn.multi_credit = True
    if dialect >= Dialect.SMB_3_0:
        caps |= Capabilities.MULTI_CHANNEL
        if cfg.continuous_availability:
            caps |= Capabilities.PERSISTENT_HANDLES  # 3.3.5.4; smbd.server.persistent
        if dialect < Dialect.SMB_3_1_1 and cfg.encrypt != EncryptPolicy.OFF and \
                neg.capabilities & Capabilities.ENCRYPTION:
            caps |= Capabilities.ENCRYPTION
            conn.cipher = crypto.CIPHER_AES_128_CCM
    if dialect < Dialect.SMB_3_0:
        conn.signing_algorithm = crypto.SIGNING_HMAC_SHA256
    conn.server_capabilities = caps
    conn.negotiated = True
    max_io = cfg.max_io_size if dialect >= Dialect.SMB_2_1 else SMB2_0_2_MAX_IO
    resp = NegotiateResponse(security_mode(conn), int(dialect), cfg.server_guid, caps, max_io, max_io,
                             max_io, filetime_now(),
                             initial_token(bool(cfg.kerberos_keytab)), tuple(contexts))
    return resp.pack()


def _negotiate_contexts(conn: "SmbConnection", neg: NegotiateRequest) -> list[bytes]:
    """3.3.5.4 for 3.1.1: preauth integrity is mandatory; encryption, signing and RDMA
    transforms are answered when offered; compression and others are not negotiated."""
    ctx = neg.contexts
    if ContextType.PREAUTH_INTEGRITY not in ctx:
        raise SmbError(NtStatus.INVALID_PARAMETER, "3.1.1 without preauth integrity context")
    if HASH_SHA512 not in preauth_hash_ids(ctx[ContextType.PREAUTH_INTEGRITY]):
        raise SmbError(NtStatus.SMB_NO_PREAUTH_INTEGRITY_HASH_OVERLAP)
    out = [preauth_context(os.urandom(32))]
    if ContextType.ENCRYPTION in ctx and conn.server.config.encrypt != EncryptPolicy.OFF:
        conn.cipher = _pick(CIPHER_PREFERENCE, cipher_ids(ctx[ContextType.ENCRYPTION])) or 0
        out.append(single_id_context(ContextType.ENCRYPTION, conn.cipher))
    if ContextType.SIGNING in ctx:
        # 3.3.5.4: none in common leaves the 3.1.1 default, AES-CMAC. Only HMAC-SHA256
        # offered selects it (its id is 0, so "nothing picked" is None, not 0).
        alg = _pick(SIGNING_PREFERENCE, signing_ids(ctx[ContextType.SIGNING]))
        if alg is None:
            alg = crypto.SIGNING_AES_CMAC
        conn.signing_algorithm = alg
        out.append(single_id_context(ContextType.SIGNING, alg))
    if ContextType.RDMA_TRANSFORM in ctx:
        rdma_transform_ids(ctx[ContextType.RDMA_TRANSFORM])  # validated; we apply no transform
        conn.rdma_transforms = [RDMA_TRANSFORM_NONE]
        out.append(rdma_transform_context([RDMA_TRANSFORM_NONE]))
    return out


_SMB1_HEADER = struct.Struct("<4sBIBHH8sHHHHH")  # MS-CIFS 2.2.3.1, 32 bytes


async def handle_smb1_negotiate(conn: "SmbConnection", msg: memoryview) -> None:
    """An SMB1 NEGOTIATE naming SMB2 dialects gets an SMB2 NEGOTIATE response (3.3.5.3.1).

    With "SMB 2.???" offered the answer is the wildcard dialect 0x02FF and the client then
    sends an SMB2 NEGOTIATE; with only "SMB 2.002" the connection is at 2.0.2 at once.
    """
    if len(msg) < _SMB1_HEADER.size + 3 or msg[4] != 0x72:
        raise ProtocolViolation("SMB1 message other than NEGOTIATE")
    byte_count = struct.unpack_from("<H", msg, _SMB1_HEADER.size + 1)[0]
    raw = bytes(msg[_SMB1_HEADER.size + 3:_SMB1_HEADER.size + 3 + byte_count])
    names = [d[1:].decode("ascii", "replace") for d in raw.split(b"\0") if d.startswith(b"\x02")]
    if "SMB 2.???" in names:
        dialect = Dialect.WILDCARD
    elif "SMB 2.002" in names:
        dialect = Dialect.SMB_2_0_2
    else:
        raise ProtocolViolation("SMB1 negotiate without SMB2 dialects")
    conn.credits.consume(0, 1)
    credits = conn.credits.grant(1, 1)
    cfg = conn.server.config
    if dialect == Dialect.SMB_2_0_2:
        conn.dialect = int(dialect)
        conn.negotiated = True
        conn.signing_algorithm = crypto.SIGNING_HMAC_SHA256
    resp = NegotiateResponse(security_mode(conn), int(dialect), cfg.server_guid, 0, SMB2_0_2_MAX_IO,
                             SMB2_0_2_MAX_IO, SMB2_0_2_MAX_IO, filetime_now(), initial_token(bool(cfg.kerberos_keytab)))
    hdr = Header(0, NtStatus.SUCCESS, Command.NEGOTIATE, credits, Flags.SERVER_TO_REDIR, 0, 0, 0, 0, 0,
                 b"\0" * 16)
    if dialect == Dialect.WILDCARD:
        conn.negotiated = False
    async with conn.send_lock:
        await conn.transport.send([hdr.pack() + resp.pack()])
