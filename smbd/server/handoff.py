"""What one worker asks of another (smbd.server.messaging) to make one server of them.

- ``close_session``: a SESSION_SETUP naming a PreviousSessionId that another worker holds
  (3.3.5.5.3): that worker ends the session, keeping its durable Opens for the reconnect
  that follows, and only then is the new session's answer sent, so that the old
  connection's next request already gets USER_SESSION_DELETED (smbtorture
  durable-open.reopen1a).
- ``hand_over_durable``: a durable reconnect (DHnC/DH2C) that reached a worker without the
  Open, after the checks against the Open's global record passed (smbd.server.durable):
  the holder gives up the Open and sends its descriptors and its state. The descriptors
  carry the OFD share-mode and byte-range locks; the SMB view of the byte-range locks, the
  oplock level or the lease travel as state, and the kernel lease behind them is dropped
  by the holder and taken again by the new one (it must signal the new process).
"""
from __future__ import annotations

import logging
import os
import uuid
from typing import TYPE_CHECKING

from smbd.status import NtStatus, SmbError

from .durable import durable_table
from .leases import lease_manager
from .messaging import MessageError
from .objects import Open, SessionState
from . import persistent
from .oplocks import drop_lease

if TYPE_CHECKING:
    from .connection import Request
    from .state import ServerState

log = logging.getLogger("smbd.handoff")


def serve_requests(server: "ServerState") -> None:
    server.messenger.handlers.update({
        "close_session": lambda body, fds: _close_session(server, body),
        "hand_over_durable": lambda body, fds: _hand_over_durable(server, body),
    })


# ---- PreviousSessionId ---------------------------------------------------------------------

async def close_previous_elsewhere(req: "Request", prev: int) -> None:
    """Ask the worker holding session ``prev`` to end it, if the same user owns it."""
    server, session = req.server, req.session
    record = server.global_sessions.lookup(prev) if server.messenger is not None else None
    if record is None or record.is_anonymous or session.is_anonymous:
        return
    if (record.user.lower(), record.domain.lower()) != (session.user.lower(), session.domain.lower()):
        return
    try:
        await server.messenger.ask(record.pid, "close_session", {"session_id": prev, "user": session.user,
                                                                  "domain": session.domain})
    except MessageError as e:
        log.warning("previous session %x not closed: %s", prev, e)


def _close_session(server: "ServerState", body: dict) -> tuple[dict, list[int]]:
    from .durable import preserve_session

    old = server.sessions.get(body.get("session_id"))
    if (old is None or old.state != SessionState.VALID or old.is_anonymous
            or (old.user.lower(), old.domain.lower()) != (str(body.get("user")).lower(),
                                                        str(body.get("domain")).lower())):
        return {"closed": False}, []
    log.info("session %x replaced by a session of another connection", old.session_id)
    preserve_session(server, old)  # its durable Opens wait for the client's reconnect
    old.state = SessionState.EXPIRED
    server.logoff(old)
    return {"closed": True}, []


# ---- durable reconnect -----------------------------------------------------------------------

async def claim_durable(req: "Request", record: dict) -> Open:
    """The Open of a checked global record, from the worker that keeps it."""
    server = req.server
    try:
        state, fds = await server.messenger.ask(record["pid"], "hand_over_durable",
                                                {"persistent_id": record["persistent_id"]})
    except MessageError as e:
        log.info("durable open %x not handed over: %s", record["persistent_id"], e)
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "durable handle not available") from e
    if not state.get("open") or not fds:
        for fd in fds:
            os.close(fd)
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, state.get("why", "durable handle gone"))
    return _adopt(req, state["open"], fds)


def _hand_over_durable(server: "ServerState", body: dict) -> tuple[dict, list[int]]:
    table = durable_table(server)
    op = table.kept(body.get("persistent_id"))
    if op is None or op.closed:
        return {"why": "not kept here"}, []
    if (op.lease is not None and op.lease.breaking) or server.oplocks.breaking(op):
        return {"why": "a break is in progress"}, []
    state = export_state(server, op)
    fds = [op.fd] + ([op.base_fd] if op.stream is not None and op.base_fd >= 0 else [])
    _detach(server, op)
    log.debug("%s: durable open handed to another worker", op.display_name)
    return {"open": state}, fds  # the messenger closes our copies once they are sent


def export_state(server: "ServerState", op: Open) -> dict:
    """What another process needs to hold the Open (a worker taking it over, or the
    persistent record, smbd.server.persistent)."""
    lease = op.lease
    return {
        "persistent_id": op.persistent_id, "granted_access": op.granted_access,
        "share_access": op.share_access, "components": list(op.components), "is_dir": op.is_dir,
        "create_options": op.create_options, "file_key": op.file_key, "stream": op.stream,
        "base_key": op.base_key, "mode": op.mode, "position": op.position,
        "delete_on_close": op.delete_on_close, "durable_v2": op.durable_v2, "persistent": op.persistent,
        "durable_timeout": op.durable_timeout,
        "create_guid": str(op.create_guid) if op.create_guid else None, "owner": list(op.owner),
        "lock_sequences": {str(k): v for k, v in op.lock_sequences.items()},
        "locks": [[lk.offset, lk.length, lk.exclusive] for lk in server.byte_locks.held_by(op)],
        "oplock": server.oplocks.level(op), "create_action": op.create_action,
        "channel_sequence": op.sequence.sequence,
        "lease": None if lease is None else {
            "key": lease.key.hex(), "version": lease.version, "state": lease.state, "epoch": lease.epoch,
            "parent_key": lease.parent_key.hex() if lease.parent_key else None},
    }


def _detach(server: "ServerState", op: Open) -> None:
    """Forget the Open as if closed, but leave its descriptors (and locks) to the new holder."""
    durable_table(server).handed_over(op)
    server.oplocks.forget(op)
    if op.lease is not None:
        lease_manager(server).forget(op)
    # The kernel lease is the open file description's and would keep signalling us.
    drop_lease(op.fd)
    op.closed = True
    server.unregister_open(op)
    if op.notify is not None:
        op.notify.close()


def _adopt(req: "Request", state: dict, fds: list[int]) -> Open:
    server = req.server
    op = Open(state["persistent_id"], server.new_volatile_id(), req.session, req.tree, state["granted_access"],
              state["share_access"], tuple(state["components"]), fds[0], state["is_dir"],
              state["create_options"], connection=req.conn)
    op.file_key, op.stream, op.base_key = state["file_key"], state["stream"], state["base_key"]
    op.base_fd = fds[1] if len(fds) > 1 else -1
    op.mode = state["mode"]
    apply_state(req, op, state)
    persistent.changed(server, op)  # the record names its new holder
    return op


def apply_state(req: "Request", op: Open, state: dict) -> None:
    """Give an Open (its file already open) what ``export_state`` recorded, and register
    it: durability, replay and lock bookkeeping, byte-range locks, lease or oplock. Shared
    by a handover between workers and by a persistent Open restored from disk."""
    server = req.server
    op.position, op.delete_on_close = state["position"], state["delete_on_close"]
    op.durable, op.durable_v2, op.durable_timeout = True, state["durable_v2"], state["durable_timeout"]
    op.persistent = bool(state.get("persistent"))
    op.create_guid = uuid.UUID(state["create_guid"]) if state["create_guid"] else None
    op.client_guid = req.conn.client_guid
    op.owner = tuple(state["owner"])
    op.lock_sequences = {int(k): v for k, v in state["lock_sequences"].items()}
    op.create_action, op.sequence.sequence = state["create_action"], state["channel_sequence"]
    server.register_open(op)
    for offset, length, exclusive in state["locks"]:
        server.byte_locks.add(op, offset, length, exclusive)
    lease = state["lease"]
    if lease is not None:
        lease_manager(server).adopt(op, req.conn.client_guid, bytes.fromhex(lease["key"]), lease["version"],
                                    lease["state"], lease["epoch"],
                                    bytes.fromhex(lease["parent_key"]) if lease["parent_key"] else None)
    elif state["oplock"]:
        server.oplocks.grant(op, state["oplock"])
