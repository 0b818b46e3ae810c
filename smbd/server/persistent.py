"""Persistent handles on continuously available shares (MS-SMB2 3.3.5.9.10 with
SMB2_DHANDLE_FLAG_PERSISTENT, 3.3.5.9.12, 3.3.7.1; a share with ``continuous_availability``).

A persistent Open is a durable Open whose state also reaches the persistent store (on disk,
synced) before the CREATE's answer, and again after every change the client relies on:
its byte-range locks, its lease. So it outlives not only its connection (a durable Open
does that in its worker's memory) but the worker itself (``kill -9``) and smbdd: the
reconnect (DH2C with the persistent flag) then reaches a worker that does not have it,
finds no live holder, and opens the file again from the record, taking back the share
mode, the locks and the lease it had. Data the client was told was written is in the
kernel's page cache, which a process crash does not lose (a WRITE_THROUGH one is on disk).

While nobody holds it, the record waits for its timeout: smbdd stamps the records of a
worker that died, and of every holder that is gone when it starts and at each sweep, with
when they expire, and deletes the expired ones (``orphan``, ``expire``). A record names its
holder by pid and start time, and the run of smbdd it belongs to (its runtime directory):
after smbdd itself was killed, its workers see their control socket close and wind down
on their own, still holding their Opens for a moment; a reconnect that reaches the new run
first waits for such a holder to exit (``reclaimable``) rather than missing the record or
racing the old worker's last writes. Meanwhile no descriptor holds its share mode, so
every open of the file checks the orphaned records itself (``orphan_conflicts``) and is
refused as the Open's descriptor would refuse it, as Windows refuses it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING

from smbd.store import StateStore, holder_alive, process_started
from smbd.wire.create import CreateRequest, Disposition, OplockLevel
from smbd.wire.negotiate import Capabilities

from . import sharemode

if TYPE_CHECKING:
    from .connection import Request
    from .objects import Open
    from .state import ServerState

log = logging.getLogger("smbd.persistent")

TABLE = "persistent_opens"  # a table of the persistent store (smbd.store.PERSISTENT_TABLES)
# How long a reconnect waits for a worker of an earlier run of smbdd to let go of the Open:
# it finishes its in-flight requests (smbd.worker.SHUTDOWN_GRACE, 10 s) and then exits.
FORMER_HOLDER_WAIT = 30.0

_started: dict[int, float | None] = {}  # this process's start time, by pid (workers are forked)


def _own_start() -> float | None:
    pid = os.getpid()
    if pid not in _started:
        _started[pid] = process_started(pid)
    return _started[pid]


def key_of(persistent_id: int) -> str:
    return f"{persistent_id:016x}"


def offered(req: "Request") -> bool:
    """3.3.5.9.10: persistence only on a CA share of a connection that was offered it."""
    share = req.tree.share if req.tree is not None else None
    return bool(share is not None and share.continuous_availability
                and req.conn.server_capabilities & Capabilities.PERSISTENT_HANDLES)


def record_of(server: "ServerState", op: "Open") -> dict:
    """The global record the reconnect is checked against (smbd.server.durable) plus the
    state to open the file again (smbd.server.handoff's export)."""
    from .durable import global_record
    from .handoff import export_state

    record = global_record(op)
    record.update(persistent=True, timeout=op.durable_timeout, expires=None, state=export_state(server, op),
                  started=_own_start(), run=server.config.runtime_dir or None)
    return record


def save(server: "ServerState", op: "Open") -> None:
    """Write (or rewrite) the Open's record; on disk when this returns."""
    record = record_of(server, op)
    server.persistent_store.update(TABLE, key_of(op.persistent_id), lambda _old: record)


def changed(server: "ServerState", op: "Open") -> None:
    """After a change the client relies on (a lock taken or released, a lease acknowledged)."""
    if op.persistent and not op.closed:
        try:
            save(server, op)
        except Exception as e:  # the store full or gone: the Open goes on, less safe
            log.error("%s: persistent record not updated: %s", op.display_name, e)


def forget(server: "ServerState", op: "Open") -> None:
    """The Open is closed for good (CLOSE, timeout, a conflicting open)."""
    if op.persistent:
        server.persistent_store.update(TABLE, key_of(op.persistent_id), lambda _old: None)


def _held(record: dict) -> bool:
    return holder_alive(record.get("pid"), record.get("started"))


def _orphaned(record: dict, now: float) -> bool:
    """No live worker holds the record's Open (else that worker's descriptor, the volatile
    ``opens`` table and handoff apply), and its timeout has not passed."""
    if _held(record):
        return False
    expires = record.get("expires")
    return expires is None or expires >= now


def orphaned_record(store: StateStore, persistent_id: int, now: float | None = None) -> dict | None:
    """The record of an Open no live worker holds, if it has not expired."""
    record = store.get(TABLE, key_of(persistent_id))
    if record is None or not _orphaned(record, time.time() if now is None else now):
        return None
    return record


async def reclaimable(server: "ServerState", persistent_id: int) -> dict | None:
    """The orphaned record of a reconnect (``orphaned_record``). If a worker of an earlier run
    of smbdd still holds it (winding down after smbdd was killed), first wait for that worker
    to exit, so that its descriptor and its last writes are gone before the file is opened
    again here."""
    store = server.persistent_store
    record = store.get(TABLE, key_of(persistent_id))
    run = server.config.runtime_dir or None
    if record is not None and record.get("run") != run and _held(record):
        log.info("persistent open %s: waiting for worker %d of an earlier run to exit",
                 key_of(persistent_id), record["pid"])
        if not await _exited(record["pid"], FORMER_HOLDER_WAIT):
            log.warning("persistent open %s: worker %d of an earlier run still holds it after %.0f s",
                        key_of(persistent_id), record["pid"], FORMER_HOLDER_WAIT)
            return None
    return orphaned_record(store, persistent_id)


async def _exited(pid: int, timeout: float) -> bool:
    """Wait until process ``pid`` (not our child) ends: its pidfd becomes readable."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(pidfd, lambda: done.done() or done.set_result(None))
    try:
        await asyncio.wait_for(done, timeout)
        return True
    except asyncio.TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def orphan_conflicts(server: "ServerState", file_key: int, access: int, share: int,
                     restoring: int | None = None) -> bool:
    """Whether an Open no worker holds (its client has yet to reconnect) conflicts with an open
    of the file's unnamed stream, as its share mode would (``sharemode.would_conflict``).
    ``restoring``: the PersistentFileId being reopened from its own record, which does not count.
    Only servers with a continuously available share have such records to read."""
    if not any(s.continuous_availability for s in server.config.shares):
        return False
    now = time.time()
    for _key, record in server.persistent_store.items(TABLE):
        state = record.get("state") or {}
        if state.get("file_key") != file_key or state.get("stream") or state.get("persistent_id") == restoring:
            continue
        if _orphaned(record, now) and sharemode.would_conflict(access, share, state["granted_access"],
                                                               state["share_access"]):
            return True
    return False


# ---- smbdd's side: records of dead workers and of an earlier run -----------------------------

def orphan(store: StateStore, pid: int | None, now: float) -> int:
    """Start the timeout of every record of worker ``pid``, which died (None: of every record
    whose holder is gone, at a start of smbdd and at each sweep: a worker of an earlier run
    may outlive smbdd for a while). Returns how many."""
    count = 0
    for key, record in list(store.items(TABLE)):
        if record.get("expires") is not None:
            continue
        if (record.get("pid") == pid) if pid is not None else not _held(record):
            stamped = {**record, "pid": None, "expires": now + float(record.get("timeout") or 60.0)}
            store.update(TABLE, key, lambda _old, r=stamped: r)
            count += 1
    return count


def expire(store: StateStore, now: float) -> int:
    """Delete the records whose timeout has passed; how many."""
    gone = 0
    for key, record in list(store.items(TABLE)):
        if record.get("expires") is not None and record["expires"] < now:
            store.update(TABLE, key, lambda _old: None)
            gone += 1
    return gone


# ---- reconnect from the record -------------------------------------------------------------

async def restore(req: "Request", record: dict) -> "Open":
    """Open the file of a checked orphaned record again for this session (3.3.5.9.12),
    with the access, share mode, locks, lease or oplock it had."""
    from .handlers.files import open_for_restore
    from .handoff import apply_state

    server, state = req.server, record["state"]
    name = "\\".join(state["components"]) + (f":{state['stream']}" if state["stream"] else "")
    create = CreateRequest(OplockLevel.NONE, 2, state["granted_access"], 0, state["share_access"],
                           Disposition.OPEN, state["create_options"], name, {})
    op = await open_for_restore(req, create, state["persistent_id"])
    server.unregister_open(op)
    op.persistent_id = state["persistent_id"]  # the FileId the client knows
    try:
        apply_state(req, op, state)
    except Exception:
        from .handlers.files import close_open
        close_open(server, op)
        raise
    save(server, op)  # this worker's again, with no expiry while it is connected
    log.info("%s: persistent open restored from the store", op.display_name)
    return op

