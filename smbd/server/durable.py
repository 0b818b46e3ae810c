"""Durable handles, v1 and v2 (MS-SMB2 3.3.5.9.6 DHnQ, 3.3.5.9.7 DHnC, 3.3.5.9.10 DH2Q,
3.3.5.9.12 DH2C; 3.3.7.1 what a dropped connection does to them; 3.3.2.? the durable timer).

An Open is made durable at CREATE when the client asks and it holds a batch oplock or a
lease with handle caching. When its last channel drops, such an Open is not closed: it is
kept here, with its descriptor and so its share-mode and byte-range OFD locks, its kernel
lease and its SMB2 lease, for its timeout. A CREATE with DHnC/DH2C from the same user (and,
for v2, the same ClientGUID and CreateGuid) on a new session reclaims it. It is closed when
the timeout passes, or when another open conflicts with it (a break it cannot hear).

One worker serves one ClientGUID, and a reconnect may come with another ClientGUID (v1 allows
it; for v2 Samba does not check it either, and smbtorture reconnects so): it then reaches a
worker that does not hold the Open. So a kept Open is also a record in the state store's
``opens`` table (MS-SMB2 3.3.1.5 GlobalOpenTable): the worker the reconnect reaches checks
the request against that record, and if it passes, asks the holder to hand the Open over
(smbd.server.handoff), its descriptors and with them its locks.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable

from smbd.status import NtStatus, SmbError
from smbd.wire.create import CreateRequest, OplockLevel
from smbd.wire.durable import (DH2C, DH2Q, DHANDLE_FLAG_PERSISTENT, DHNC, DHNQ, DurableV2Reconnect,
                               DurableV2Request, dh2q_response, dhnq_response, parse_dhnc, parse_dhnq)
from smbd.wire.header import Flags
from smbd.wire.lease import LEASE_CONTEXT, LeaseRequest, LeaseState

from . import persistent
from .leases import lease_manager

if TYPE_CHECKING:
    from .connection import Request, SmbConnection
    from .objects import Open
    from .state import ServerState

log = logging.getLogger("smbd.durable")

V1_TIMEOUT = 60.0  # seconds; implementation-specific for v1 (Samba: 60 s)
V2_DEFAULT_TIMEOUT_MS = 60_000  # a DH2Q Timeout of 0 (3.3.5.9.10: implementation-specific)
V2_MAX_TIMEOUT_MS = 300_000  # Windows and Samba cap the requested timeout at 300 s


class DurableTable:
    """Disconnected durable Opens of one worker, by persistent id, with their expiry timers."""

    def __init__(self, server: "ServerState"):
        self.server = server
        self._kept: dict[int, "Open"] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self.on_empty: Callable[[], None] | None = None  # the worker may retire when nothing is kept
        self.creating: set[tuple[Any, uuid.UUID]] = set()  # (ClientGuid, CreateGuid) of CREATEs in progress
        server.oplocks.on_disconnected_break = self.close_kept
        lease_manager(server).on_disconnected = self.close_kept

    def __len__(self) -> int:
        return len(self._kept)

    def kept(self, persistent_id: int) -> "Open | None":
        return self._kept.get(persistent_id)

    def keep(self, op: "Open") -> None:
        """3.3.7.1: the Open's last channel is gone: keep it for its timeout."""
        op.disconnected = True
        op.connection = None
        self.server.opens.pop(op.volatile_id, None)
        self._kept[op.persistent_id] = op
        loop = asyncio.get_running_loop()
        self._timers[op.persistent_id] = loop.call_later(op.durable_timeout, self._expire, op)
        self._publish(op)
        log.debug("%s: durable open kept for %.0f s", op.display_name, op.durable_timeout)
        if (op.lease is not None and op.lease.breaking) or self.server.oplocks.breaking(op):
            # A break was on its way to the client, and now nobody can acknowledge it: the
            # opener it holds up must not wait for the timer (3.3.4.6/3.3.4.7).
            self.close_kept(op)

    def _publish(self, op: "Open") -> None:
        try:
            self.server.store.put(OPENS, open_key(op.persistent_id), global_record(op))
        except Exception as e:  # without the record only this worker can reconnect it
            log.warning("%s: cannot publish durable open: %s", op.display_name, e)

    def reclaim(self, op: "Open") -> None:
        if self._kept.pop(op.persistent_id, None) is not None:
            pid = os.getpid()
            self.server.store.update(OPENS, open_key(op.persistent_id),
                                     lambda old: None if old is not None and old.get("pid") == pid else old)
        timer = self._timers.pop(op.persistent_id, None)
        if timer is not None:
            timer.cancel()
        op.disconnected = False

    def handed_over(self, op: "Open") -> None:
        """The Open went to another worker (smbd.server.handoff): nothing of it is ours."""
        self.reclaim(op)
        if not self._kept and self.on_empty is not None:
            self.on_empty()

    def _expire(self, op: "Open") -> None:
        self._timers.pop(op.persistent_id, None)
        if self._kept.get(op.persistent_id) is op:
            log.debug("%s: durable open expired", op.display_name)
            self.close_kept(op)

    def close_kept(self, op: "Open") -> None:
        """Close a kept Open (timeout, or a conflicting open it cannot be told about)."""
        from .handlers.files import close_open

        if self._kept.get(op.persistent_id) is not op:
            return
        self.reclaim(op)
        op.disconnected = True  # still nobody's: close it as such
        lease_manager(self.server).forget(op)
        close_open(self.server, op)
        if not self._kept and self.on_empty is not None:
            self.on_empty()

    def find_replayable(self, client_guid: Any, create_guid: uuid.UUID) -> "Open | None":
        """The Open a replay of this CreateGuid would get back: one whose replay cache is
        still there. Several Opens may carry the CreateGuid (a replay after the first was
        used makes a new Open, smbtorture smb2.replay.replay6); only the newest has it."""
        for op in list(self._kept.values()) + list(self.server.opens.values()):
            if (op.create_guid == create_guid and op.client_guid == client_guid and op.replay_cached
                    and not op.closed):
                return op
        return None

    def close_all(self) -> None:
        for op in list(self._kept.values()):
            self.close_kept(op)


OPENS = "opens"  # the state store's table of kept durable Opens (smbd.store)


def open_key(persistent_id: int) -> str:
    return f"{persistent_id:016x}"


def global_record(op: "Open") -> dict:
    """What the other workers need to check a reconnect of a kept Open (3.3.5.9.7/12)."""
    return {"pid": os.getpid(), "persistent_id": op.persistent_id, "v2": op.durable_v2,
            "create_guid": str(op.create_guid) if op.create_guid else None,
            "owner": list(op.owner), "share": op.tree.share.name if op.tree.share else None,
            "components": list(op.components), "stream": op.stream,
            "lease_key": op.lease.key.hex() if op.lease is not None else None,
            "client_guid": str(op.client_guid) if op.client_guid is not None else None,
            "persistent": op.persistent, "expires": time.time() + op.durable_timeout}


def durable_table(server: "ServerState") -> DurableTable:
    table = getattr(server, "durable", None)
    if table is None:
        table = DurableTable(server)
        server.durable = table
    return table


def preserve_on_disconnect(server: "ServerState", conn: "SmbConnection") -> None:
    """Before a dropped connection's sessions close their Opens (3.3.7.1): keep the durable
    Opens of the sessions that lose their last channel."""
    for session in [s for s in server.sessions.values() if set(s.channels) <= {id(conn)}]:
        preserve_session(server, session)


def preserve_session(server: "ServerState", session) -> None:
    """Keep the durable Opens of a session about to end without a LOGOFF: its last channel
    dropped, or a new session named it as PreviousSessionId (3.3.5.5.3)."""
    for op in list(server.opens.values()):
        if op.session is session and op.durable and not op.closed and _still_durable(server, op):
            durable_table(server).keep(op)


def _still_durable(server: "ServerState", op: "Open") -> bool:
    """3.3.7.1: kept only with a batch oplock or a lease with handle caching, or persistent."""
    if op.persistent:
        return True
    if op.lease is not None:
        return bool(op.lease.state & LeaseState.HANDLE) or bool(
            op.lease.breaking and op.lease.breaking_to & LeaseState.HANDLE)
    return server.oplocks.level(op) == OplockLevel.BATCH


# ---- CREATE: granting (DHnQ, DH2Q) -------------------------------------------------------------

def requested(create: CreateRequest) -> bool:
    return DHNQ in create.contexts or DH2Q in create.contexts


def validate_contexts(create: CreateRequest) -> None:
    """3.3.5.9.6/10/12: contexts that may not be combined."""
    c = create.contexts
    v1 = DHNQ in c or DHNC in c
    v2 = DH2Q in c or DH2C in c
    if v1 and v2:
        raise SmbError(NtStatus.INVALID_PARAMETER, "durable v1 and v2 contexts together")
    if DH2Q in c and DH2C in c:
        raise SmbError(NtStatus.INVALID_PARAMETER, "durable request and reconnect together")
    # 3.3.5.9.7: a DHnQ beside DHnC is ignored (smbtorture durable-open.reopen2).
    if DHNQ in c:
        parse_dhnq(c[DHNQ])


def v2_request(req: "Request", create: CreateRequest) -> DurableV2Request | None:
    data = create.contexts.get(DH2Q)
    if data is None or req.conn.dialect < 0x0300:
        return None
    return DurableV2Request.parse(data)


def replayed_open(req: "Request", dh2q: DurableV2Request | None) -> "Open | None":
    """3.3.5.9.10: an Open already created with this CreateGuid. A replay (the client resends
    after losing a connection) gets it back; a fresh request with a CreateGuid in use fails."""
    if dh2q is None:
        return None
    table = durable_table(req.server)
    op = table.find_replayable(req.conn.client_guid, dh2q.create_guid)
    if op is None:
        return None
    if not req.header.flags & Flags.REPLAY_OPERATION:
        raise SmbError(NtStatus.DUPLICATE_OBJECTID, "CreateGuid in use")
    return op


@contextlib.contextmanager
def creating(req: "Request", dh2q: DurableV2Request | None):
    """Bracket a DH2Q CREATE that makes a new Open. The same CreateGuid arriving while it is
    still in progress (a replay sent on another channel while the first waits for a break)
    gets FILE_NOT_AVAILABLE, so the client retries once the first has an answer; as Samba
    answers it from its replay cache (smbtorture smb2.replay.dhv2-pending*)."""
    if dh2q is None:
        yield
        return
    key = (req.conn.client_guid, dh2q.create_guid)
    table = durable_table(req.server)
    if key in table.creating:
        raise SmbError(NtStatus.FILE_NOT_AVAILABLE, "a CREATE with this CreateGuid is in progress")
    table.creating.add(key)
    try:
        yield
    finally:
        table.creating.discard(key)


def grant(req: "Request", op: "Open", create: CreateRequest, dh2q: DurableV2Request | None,
          oplock: int) -> list[tuple[bytes, bytes]]:
    """Make the Open durable if asked and allowed; the response contexts to add."""
    if op.is_dir or op.pipe is not None:
        return []
    if req.conn.dialect < 0x0300:
        dh2q = None
    op.client_guid = req.conn.client_guid
    if dh2q is not None:
        # Replays find the Open by its CreateGuid whether or not it became durable
        # (3.3.5.9.10; smbtorture smb2.replay.dhv2-pending1n: no oplock, same handle back).
        op.create_guid = dh2q.create_guid
        op.replay_cached = True
    op.owner = (req.session.domain.upper(), req.session.user.lower())
    if dh2q is not None and dh2q.flags & DHANDLE_FLAG_PERSISTENT and persistent.offered(req):
        # 3.3.5.9.10: persistent whatever the oplock or lease; on disk before the answer.
        timeout = min(dh2q.timeout_ms or V2_DEFAULT_TIMEOUT_MS, V2_MAX_TIMEOUT_MS)
        op.durable = op.durable_v2 = op.persistent = True
        op.durable_timeout = timeout / 1000.0
        persistent.save(req.server, op)
        return [(DH2Q, dh2q_response(timeout, DHANDLE_FLAG_PERSISTENT))]
    has_handle = op.lease is not None and bool(op.lease.state & LeaseState.HANDLE)
    if not (has_handle or oplock == OplockLevel.BATCH):
        return []
    if dh2q is not None:
        timeout = dh2q.timeout_ms or V2_DEFAULT_TIMEOUT_MS
        timeout = min(timeout, V2_MAX_TIMEOUT_MS)
        op.durable, op.durable_v2 = True, True
        op.durable_timeout = timeout / 1000.0
        return [(DH2Q, dh2q_response(timeout, 0))]
    if DHNQ in create.contexts:
        op.durable = True
        op.durable_timeout = V1_TIMEOUT
        return [(DHNQ, dhnq_response())]
    return []


def _same_name(req: "Request", create: CreateRequest, record: dict) -> bool:
    try:
        parsed = req.tree.vfs.parse_stream_name(create.name)
    except SmbError:
        return False
    return (tuple(c.casefold() for c in parsed.components) == tuple(c.casefold() for c in record["components"])
            and (parsed.stream or "").casefold() == (record["stream"] or "").casefold())


def replay_answer(req: "Request", op: "Open", create: CreateRequest) -> tuple[list[tuple[bytes, bytes]], int]:
    """The contexts and oplock level of a replayed CREATE's answer (3.3.5.9.10; smbtorture
    smb2.replay.replay-dhv2-*, answered as Samba does).

    The replay must ask for the same kind of caching as the original: a lease with the
    same key for an Open holding a lease, no lease for one that does not; else
    ACCESS_DENIED. A replay that asks for no oplock is answered with none and without
    durability, as if granted afresh; otherwise it gets what the Open holds."""
    lease_data = create.contexts.get(LEASE_CONTEXT)
    asks_lease = create.oplock_level == OplockLevel.LEASE and lease_data is not None
    if op.lease is not None:
        if not asks_lease or LeaseRequest.parse(lease_data).key != op.lease.key:
            raise SmbError(NtStatus.ACCESS_DENIED, "replay with another lease")
        out = [(LEASE_CONTEXT, lease_manager(req.server).response_context(op))]
        level = OplockLevel.LEASE
        durable = bool(op.lease.state & LeaseState.HANDLE)
    else:
        if asks_lease:
            raise SmbError(NtStatus.ACCESS_DENIED, "replay of an oplock open with a lease")
        out = []
        level = req.server.oplocks.level(op) if create.oplock_level != OplockLevel.NONE else OplockLevel.NONE
        durable = level == OplockLevel.BATCH
    if durable and op.durable:
        out.append((DH2Q, dh2q_response(int(op.durable_timeout * 1000), 0)))
    return out, level


# ---- CREATE: reconnecting (DHnC, DH2C) ----------------------------------------------------------

def is_reconnect(create: CreateRequest) -> bool:
    return DHNC in create.contexts or DH2C in create.contexts


async def reconnect(req: "Request", create: CreateRequest) -> tuple["Open", list[tuple[bytes, bytes]], int]:
    """3.3.5.9.7 / 3.3.5.9.12: give a kept Open to the new session. Returns the Open, the
    response contexts and the oplock level to answer with. Every mismatch is
    OBJECT_NAME_NOT_FOUND, as if there were no such handle."""
    try:
        return await _reconnect(req, create)
    except SmbError as e:
        if _asks_persistent(create):
            # A client that loses its persistent handle loses what it was writing: say why.
            log.info("persistent reconnect of %s refused: %s", create.name or "(share root)", e)
        raise


def _asks_persistent(create: CreateRequest) -> bool:
    try:
        return DH2C in create.contexts and bool(DurableV2Reconnect.parse(create.contexts[DH2C]).flags
                                                 & DHANDLE_FLAG_PERSISTENT)
    except SmbError:
        return False


async def _reconnect(req: "Request", create: CreateRequest) -> tuple["Open", list[tuple[bytes, bytes]], int]:
    server = req.server
    contexts = create.contexts
    v2 = None
    if DH2C in contexts:
        if req.conn.dialect < 0x0300:
            raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "DH2C below SMB 3")
        v2 = DurableV2Reconnect.parse(contexts[DH2C])
        if v2.flags & DHANDLE_FLAG_PERSISTENT and not persistent.offered(req):
            raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "no persistent handles on this share")
        file_id = v2.file_id
    else:
        file_id = parse_dhnc(contexts[DHNC])
    lease_data = contexts.get(LEASE_CONTEXT)
    lease_request = None
    if lease_data is not None and req.conn.dialect >= 0x0210:
        # RequestedOplockLevel is ignored on a reconnect, like every field but the name, the
        # reconnect context and the lease key (smbtorture durable-v2-open.reopen2-lease).
        lease_request = LeaseRequest.parse(lease_data)
    table = durable_table(server)
    op = table.kept(file_id[0])
    orphan = None
    if op is not None and not op.closed:
        record = global_record(op)
    else:
        op = None
        record = server.store.get(OPENS, open_key(file_id[0])) if server.messenger is not None else None
        if record is None or record.get("pid") == os.getpid() or record.get("expires", 0) < time.time():
            # No live holder: a persistent Open whose worker (or smbdd) died is on disk.
            record = orphan = (await persistent.reclaimable(server, file_id[0])
                               if v2 is not None and v2.flags & DHANDLE_FLAG_PERSISTENT else None)
            if record is None:
                raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "no such durable handle")
    if v2 is not None and bool(v2.flags & DHANDLE_FLAG_PERSISTENT) != bool(record.get("persistent")):
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "persistent flag does not match the handle")
    check_reconnect(req, create, record, v2, lease_request)
    if orphan is not None:
        op = await persistent.restore(req, orphan)
    elif op is None:
        from .handoff import claim_durable  # the Open is another worker's: it hands it over
        op = await claim_durable(req, record)
    else:
        table.reclaim(op)
        op.session, op.tree, op.connection = req.session, req.tree, req.conn
        server.opens[op.volatile_id] = op
    out: list[tuple[bytes, bytes]] = []
    if op.lease is not None:
        out.append((LEASE_CONTEXT, lease_manager(server).response_context(op, lease_request.version)))
        level = OplockLevel.LEASE
    else:
        level = server.oplocks.level(op)
    log.debug("%s: durable open reconnected", op.display_name)
    return op, out, level


def check_reconnect(req: "Request", create: CreateRequest, record: dict, v2: DurableV2Reconnect | None,
                    lease_request: LeaseRequest | None) -> None:
    """MS-SMB2's checks of a reconnect against the kept Open's global record, in the order
    that gives Windows' and Samba's statuses. Unlike 3.3.5.9.12 says, and like Samba, a v2
    reconnect need not come with the Open's ClientGuid (smbtorture durable-v2-open.reopen2),
    unless the Open holds a lease."""
    not_found = SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "no such durable handle")
    # As in Samba: a DH2C names the Open's CreateGuid, which a v1 Open has as all zeros
    # (durable-open.reopen2-lease reconnects a v1 handle with DH2C); a DHnC may reconnect a
    # v2 handle too.
    if v2 is not None and (record["create_guid"] or str(uuid.UUID(int=0))) != str(v2.create_guid):
        raise not_found
    lease_key = record.get("lease_key")
    if lease_key is not None:
        # A lease belongs to its client (3.3.1.4: a client's leases are found by ClientGuid
        # and LeaseKey): only that client reconnects an Open holding one (reopen1a-lease).
        if lease_request is None or lease_request.key.hex() != lease_key:
            raise not_found
        if record.get("client_guid") != str(req.conn.client_guid):
            raise not_found
    elif lease_request is not None:
        raise not_found
    share = req.tree.share.name if req.tree.share is not None else None
    if record["share"] is not None and share is not None and record["share"] != share:
        raise not_found
    if lease_key is not None and not _same_name(req, create, record):
        # 3.3.5.9.7/12: with a lease the name must match too; unlike everything else a
        # mismatch here is INVALID_PARAMETER (as Windows and Samba answer).
        raise SmbError(NtStatus.INVALID_PARAMETER, "durable reconnect under another name")
    if tuple(record["owner"]) != (req.session.domain.upper(), req.session.user.lower()):
        raise SmbError(NtStatus.ACCESS_DENIED, "durable handle of another user")


# ---- LOCK replay detection (3.3.5.14, LockSequenceNumber/LockSequenceIndex) ----------------------

def _lock_bucket(op: "Open", conn: Any, sequence: int) -> tuple[int, int] | None:
    """(index, number) of a LOCK's LockSequence when replay detection applies, else None:
    on a durable (or resilient) Open from SMB 2.1 on, and on every Open of an SMB 3
    connection whose server offers multichannel (a channel may fail and the client replay
    on another); index 1..64 only."""
    multichannel = conn.dialect >= 0x0300 and conn.server_capabilities & 0x08  # GLOBAL_CAP_MULTI_CHANNEL
    if conn.dialect < 0x0210 or not (op.durable or multichannel):
        return None
    index, number = sequence >> 4, sequence & 0xF
    return (index, number) if 1 <= index <= 64 else None


def lock_replayed(op: "Open", conn: Any, sequence: int) -> bool:
    """3.3.5.14: a LOCK whose LockSequence matches the valid entry of its bucket was already
    done (the client resends after a lost connection): answer SUCCESS without doing it.
    Otherwise the bucket is invalidated until the request succeeds (``lock_done``)."""
    bucket = _lock_bucket(op, conn, sequence)
    if bucket is None:
        return False
    index, number = bucket
    if op.lock_sequences.get(index) == number:
        return True
    op.lock_sequences.pop(index, None)
    return False


def lock_done(op: "Open", conn: Any, sequence: int) -> None:
    bucket = _lock_bucket(op, conn, sequence)
    if bucket is not None:
        op.lock_sequences[bucket[0]] = bucket[1]
