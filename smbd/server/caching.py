"""Oplocks and leases across the workers of one smbdd: who caches which file, and the
requests that break caching held in another worker.

Each worker decides the oplocks and leases of its own client (smbd.server.oplocks,
smbd.server.leases), but a file may be cached by clients that other workers serve. The
kernel lease behind an oplock cannot carry what Windows grants (level II or R on a
writable handle, a break to level II or RH rather than to none), so the workers tell each
other, the way Samba's smbd processes consult locking.tdb and message the holder:

- The state store's ``caching`` table has one record per (file, worker) while that worker
  caches the file: ``{"pid", "read", "write", "handle", "oplock"}`` (level II or R; batch,
  exclusive or W; batch or H; any oplock rather than a lease). A worker keeps its own
  records current (``publish``); smbdd removes those of a worker that died.
- Before an open of an existing file, the opener asks every other worker that caches it
  (``caching_open``) to break what the open conflicts with, as MS-FSA 2.1.5.1.2 does for
  one process: batch and exclusive go to level II (none for an overwrite), W goes (RH
  stays), and the holder answers once the client has acknowledged, so its cached writes
  are on disk before the open goes on. The holder also drops the kernel leases of that
  file, which the open would otherwise break to none behind its back.
- An open that meets a sharing violation asks the workers holding H to break it
  (``caching_handles``), so that their clients may close handles they only kept cached.
- A write tells the workers caching reads (``caching_write``) that level II and R are
  stale; those breaks need no acknowledgment and the write does not wait.

What the kernel lease still does: it guards the caching of a file no other process has
open against local programs (and NFS) that do not ask us. Caching granted while another
worker has the file open (level II, RH on a writable handle) has no kernel lease behind
it, as in Samba with its default ``kernel oplocks = no``.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from smbd.wire.create import OplockLevel
from smbd.wire.lease import LeaseState

from . import sharemode
from .messaging import MessageError
from .oplocks import BREAK_ACK_TIMEOUT

if TYPE_CHECKING:
    from .connection import Request
    from .state import ServerState

log = logging.getLogger("smbd.caching")

TABLE = "caching"
_ASK_TIMEOUT = BREAK_ACK_TIMEOUT + 5.0  # the holder may wait for its client's acknowledgment
_INTERIM_AFTER = 0.05  # seconds a CREATE waits for other workers before it goes async


def _prefix(file_key: int) -> str:
    return f"{file_key}/"


def summary(server: "ServerState", file_key: int) -> dict | None:
    """What this worker caches of the file, or None for nothing."""
    read = write = handle = oplock = False
    for level in server.oplocks.levels_of(file_key):
        read = oplock = True
        write |= level in (OplockLevel.BATCH, OplockLevel.EXCLUSIVE)
        handle |= level == OplockLevel.BATCH
    for lease in server.leases.leases_of(file_key):
        state = lease.state | (lease.breaking_to or 0)
        read |= bool(state & LeaseState.READ)
        write |= bool(state & LeaseState.WRITE)
        handle |= bool(state & LeaseState.HANDLE)
    if not (read or write or handle):
        return None
    opens = sorted([o.granted_access, o.share_access] for o in server.opens_of(file_key) if not o.closed)
    return {"pid": os.getpid(), "read": read, "write": write, "handle": handle, "oplock": oplock, "opens": opens}


def handle_lease_held(server: "ServerState", file_key: int) -> bool:
    """Whether a lease with H is held on the file, here or in another worker. Called after
    the open broke other workers' batch oplocks, so H elsewhere is a lease's."""
    if any(lease.state & LeaseState.HANDLE for lease in server.leases.leases_of(file_key)):
        return True
    return bool(holders_elsewhere(server, file_key, "handle"))


def oplock_held(server: "ServerState", file_key: int) -> bool:
    """Whether an oplock (not a lease) is held on the file, here or in another worker."""
    return bool(server.oplocks.levels_of(file_key)) or any(r.get("oplock") for r in records_elsewhere(server, file_key))


def publish(server: "ServerState", file_key: int | None) -> None:
    """Bring this worker's record of the file up to date (only a change writes the store)."""
    if file_key is None:
        return
    record = summary(server, file_key)
    published = server.caching_published
    if published.get(file_key) == record:
        return
    key = f"{file_key}/{os.getpid()}"
    try:
        if record is None:
            server.store.delete(TABLE, key)
            published.pop(file_key, None)
        else:
            server.store.put(TABLE, key, record)
            published[file_key] = record
    except Exception as e:  # the store gone: our own caching still holds, others may miss it
        log.warning("caching record of file %d not written: %s", file_key, e)


def records_elsewhere(server: "ServerState", file_key: int | None) -> list[dict]:
    """The records of the other workers caching the file."""
    if file_key is None or server.messenger is None:
        return []
    me = os.getpid()
    try:
        records = server.store.scan(TABLE, _prefix(file_key))
    except Exception as e:
        log.warning("caching records of file %d not read: %s", file_key, e)
        return []
    return [r for _, r in records if isinstance(r.get("pid"), int) and r["pid"] != me]


def holders_elsewhere(server: "ServerState", file_key: int | None, what: str | None = None) -> list[int]:
    """The other workers caching the file (``what``: only those holding read/write/handle)."""
    return [r["pid"] for r in records_elsewhere(server, file_key) if what is None or r.get(what)]


def _violates(server: "ServerState", file_key: int, access: int, share: int, records: list[dict]) -> bool:
    """Whether the open will meet a sharing violation, as far as this worker's opens and
    those of the caching workers tell."""
    opens = [(o.granted_access, o.share_access) for o in server.opens_of(file_key) if not o.closed]
    opens += [tuple(pair) for r in records for pair in r.get("opens", ()) if len(pair) == 2]
    return any(sharemode.would_conflict(access, share, a, s) for a, s in opens)


def may_be_cached(server: "ServerState") -> bool:
    """Whether an open needs to look for caching to break: any here, or any record at all."""
    if server.oplocks.has_grants or server.leases.active:
        return True
    if server.messenger is None:
        return False
    try:
        return server.store.count(TABLE) > 0
    except Exception:
        return False


# ---- the opener's side ------------------------------------------------------------------------

async def prepare_open(req: "Request", file_key: int, *, access: int, share: int, truncating: bool,
                       stat: bool, oplock_stat: bool, lease_key: bytes | None) -> None:
    """Before open(2) of an existing file: break the oplocks this open conflicts with, here
    and in other workers, and wait for the acknowledgments that are due.

    An open that will meet a sharing violation breaks only batch oplocks (to level II),
    whose holder may close the handle it kept for caching (Samba and Windows do the same;
    smbtorture smb2.oplock.exclusive1 vs batch: the leases' H is broken after the
    violation, see ``break_handles_elsewhere``). A stat open (attributes only) breaks no
    caching, but its open(2) would still break a kernel lease: the holders let those go.
    ``oplock_stat``: whether it is a stat open for oplocks (a narrower mask, see
    leases.is_oplock_stat_open)."""
    server = req.server
    records = records_elsewhere(server, file_key)
    if not records and not server.oplocks.has_grants:
        return
    writing = bool(access & sharemode.WRITE_BITS) or truncating
    handles_only = not oplock_stat and _violates(server, file_key, access, share, records)
    body = {"file_key": file_key, "truncating": truncating, "writing": writing, "stat": stat,
            "oplock_stat": oplock_stat,
            "handles_only": handles_only,
            "client_guid": str(req.conn.client_guid), "lease_key": lease_key.hex() if lease_key else None}
    waits: list[asyncio.Future] = [
        asyncio.ensure_future(ev.wait()) for ev in
        server.oplocks.break_for_open(file_key, truncating=truncating, writing=writing, stat=oplock_stat,
                                      handles_only=handles_only)]
    for r in records:
        waits.append(asyncio.ensure_future(_ask(server, r["pid"], "caching_open", body)))
    await _wait_all(req, waits)


async def break_handles_elsewhere(req: "Request", file_key: int, pids: list[int]) -> bool:
    """A sharing violation: ask the workers ``pids`` (those holding H on the file, from
    ``holders_elsewhere``) to break it; True if any did."""
    server = req.server
    tasks = [asyncio.ensure_future(_ask(server, pid, "caching_handles", {"file_key": file_key}))
             for pid in pids]
    if not tasks:
        return False
    await _wait_all(req, tasks)
    return any(not t.cancelled() and t.exception() is None and (t.result() or {}).get("broke") for t in tasks)


def data_changing(server: "ServerState", op) -> None:
    """A write, or a change of size, through ``op``: every level II oplock of the file (the
    writer's own included) and the R of other keys' leases go to none, here and in the other
    workers (MS-FSA 2.1.4.12 via MS-SMB2 3.3.4.6/3.3.4.7). Nobody waits for those breaks."""
    server.oplocks.break_level_ii(op.file_key)
    if server.leases.has_leases(op.file_key):
        server.leases.break_on_write(op)
    break_reads_elsewhere(server, op.file_key)


def break_reads_elsewhere(server: "ServerState", file_key: int | None) -> None:
    """A write: level II and R caching of the file in other workers is stale. Not waited for."""
    for pid in holders_elsewhere(server, file_key, "read"):
        asyncio.ensure_future(_ask(server, pid, "caching_write", {"file_key": file_key}))


async def _ask(server: "ServerState", pid: int, kind: str, body: dict) -> dict | None:
    try:
        reply, fds = await server.messenger.ask(pid, kind, body, timeout=_ASK_TIMEOUT)
    except MessageError as e:
        log.info("%s to worker %d: %s", kind, pid, e)
        return None
    for fd in fds:
        os.close(fd)
    return reply


async def _wait_all(req: "Request", waits: list[asyncio.Future]) -> None:
    if not waits:
        return
    try:
        _, pending = await asyncio.wait(waits, timeout=_INTERIM_AFTER)
        if pending:
            if req.is_last and not req.interim_sent:
                await req.go_async()  # 3.3.4.2: the client would time a long CREATE out
            await asyncio.wait(pending, timeout=_ASK_TIMEOUT)
    finally:
        for w in waits:
            w.cancel()


# ---- the holder's side ----------------------------------------------------------------------------

def serve_requests(server: "ServerState") -> None:
    server.messenger.handlers.update({
        "caching_open": lambda body, fds: _serve_open(server, body),
        "caching_handles": lambda body, fds: _serve_handles(server, body),
        "caching_write": lambda body, fds: _serve_write(server, body),
    })


async def _serve_open(server: "ServerState", body: dict) -> tuple[dict, list[int]]:
    file_key, truncating, stat = int(body["file_key"]), bool(body["truncating"]), bool(body.get("stat"))
    oplock_stat = bool(body.get("oplock_stat", stat))
    handles_only = bool(body.get("handles_only"))
    waits = list(server.oplocks.break_for_open(file_key, truncating=truncating, writing=bool(body["writing"]),
                                               stat=oplock_stat, handles_only=handles_only))
    lease_key = bytes.fromhex(body["lease_key"]) if body.get("lease_key") else None
    waits += server.leases.break_for_remote_open(file_key, truncating, body.get("client_guid"), lease_key,
                                                 stat or handles_only)
    await _wait_events(waits)
    await server.closes_finished(file_key)  # a client that closes on the break: its share mode goes too
    publish(server, file_key)
    return {}, []


async def _serve_handles(server: "ServerState", body: dict) -> tuple[dict, list[int]]:
    file_key = int(body["file_key"])
    broke, waits = server.leases.break_handles_of(file_key, None, None)
    await _wait_events(waits)
    publish(server, file_key)
    return {"broke": broke}, []


def _serve_write(server: "ServerState", body: dict) -> tuple[dict, list[int]]:
    file_key = int(body["file_key"])
    server.oplocks.break_level_ii(file_key)
    server.leases.break_reads(file_key, None)
    publish(server, file_key)
    return {}, []


async def _wait_events(events: list[asyncio.Event]) -> None:
    tasks = [asyncio.ensure_future(ev.wait()) for ev in events if not ev.is_set()]
    if not tasks:
        return
    try:
        await asyncio.wait(tasks, timeout=BREAK_ACK_TIMEOUT + 1)
    finally:
        for t in tasks:
            t.cancel()
