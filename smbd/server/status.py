"""What one worker serves right now, for `smbdd status` (smbdd.status): its channels with the
bytes they carried, sessions, tree connects, open files with share modes, leases and
oplocks, byte-range locks and durable handles waiting for a reconnect.

Plain data only (JSON-ready), read on the event loop, where this state lives; signing and
encryption keys never leave the worker.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from smbd.crypto import constants as c
from smbd.wire.create import ShareAccess

from .objects import SessionState

if TYPE_CHECKING:
    from .state import ServerState

CIPHERS = {c.CIPHER_AES_128_CCM: "AES-128-CCM", c.CIPHER_AES_128_GCM: "AES-128-GCM",
           c.CIPHER_AES_256_CCM: "AES-256-CCM", c.CIPHER_AES_256_GCM: "AES-256-GCM"}
SIGNING = {c.SIGNING_HMAC_SHA256: "HMAC-SHA256", c.SIGNING_AES_CMAC: "AES-CMAC", c.SIGNING_AES_GMAC: "AES-GMAC"}
OPLOCKS = {0x00: "none", 0x01: "level II", 0x08: "exclusive", 0x09: "batch"}


def dialect_name(dialect: int) -> str:
    return {0x0202: "2.0.2", 0x0210: "2.1", 0x0300: "3.0", 0x0302: "3.0.2", 0x0311: "3.1.1"}.get(dialect, hex(dialect))


def share_letters(share_access: int) -> str:
    """FILE_SHARE_* as smbstatus shows a deny mode: R, W, D or -."""
    return "".join(letter if share_access & bit else "-" for letter, bit in
                   (("R", ShareAccess.READ), ("W", ShareAccess.WRITE), ("D", ShareAccess.DELETE)))


def lease_letters(state: int) -> str:
    return "".join(letter for letter, bit in (("R", 1), ("H", 2), ("W", 4)) if state & bit) or "none"


def snapshot(server: "ServerState", pid: int) -> dict:
    channels = []
    for conn in sorted(server.connections, key=lambda c: c.serial):
        peer = conn.transport.peer
        channels.append({"peer": peer, "transport": "smbdirect" if peer.startswith("rdma:") else "tcp",
                         "dialect": dialect_name(conn.dialect) if conn.dialect else None,
                         "client_guid": str(conn.client_guid) if conn.client_guid else None,
                         "bytes_in": conn.bytes_in, "bytes_out": conn.bytes_out, "serial": conn.serial,
                         # of bytes_out, the READ data a TCP channel sent straight from files
                         "sendfile_bytes": getattr(conn.transport, "sendfile_bytes", 0)})
    serials = {id(conn): conn.serial for conn in server.connections}
    peers = {id(conn): conn.transport.peer for conn in server.connections}
    sessions = []
    for s in server.sessions.values():
        if s.state != SessionState.VALID:
            continue
        sessions.append({
            "session_id": f"0x{s.session_id:x}", "user": s.user, "domain": s.domain,
            "unix_user": s.creds.name if s.creds is not None else None,
            "guest": s.is_guest, "anonymous": s.is_anonymous, "dialect": dialect_name(s.dialect),
            "client_guid": str(s.client_guid) if s.client_guid else None,
            "signing": SIGNING.get(s.signing_algorithm) if s.signing_required or s.keys else None,
            "signing_required": s.signing_required,
            "encryption": CIPHERS.get(s.cipher) if s.encrypt_data or s.client_encrypts else None,
            "encryption_required": s.encrypt_data,
            "channels": sorted(serials[key] for key in s.channels if key in serials),
            "client": next((peers[key] for key in s.channels if key in peers), None),
            "trees": [{"tree_id": t.tree_id, "share": t.share.name if t.share else "IPC$", "read_only": t.read_only}
                      for t in s.trees.values()]})
    opens, locks, waiting = [], [], []
    for op in server.opens.values():
        if op.closed or op.pipe is not None:
            continue
        path = "\\".join(op.components) + (f":{op.stream}" if op.stream else "")
        entry = {"path": path, "share": op.tree.share.name if op.tree.share else "", "session": f"0x{op.session.session_id:x}",
                 "access": f"0x{op.granted_access:08x}", "share_mode": share_letters(op.share_access),
                 "directory": op.is_dir,
                 "oplock": OPLOCKS.get(server.oplocks.level(op), hex(server.oplocks.level(op))) if op.lease is None
                 else "lease", "lease": lease_letters(op.lease.state) if op.lease is not None else None,
                 "durable": "persistent" if op.persistent else "v2" if op.durable_v2 else "v1" if op.durable else None}
        (waiting if op.disconnected else opens).append(entry)
        for lock in server.byte_locks.held_by(op):
            locks.append({"path": path, "offset": lock.offset, "length": lock.length,
                          "kind": "exclusive" if lock.exclusive else "shared", "session": entry["session"]})
    return {"pid": pid, "channels": channels, "sessions": sessions, "opens": opens, "locks": locks,
            "durable_waiting": waiting}
