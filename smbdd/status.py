"""`smbdd status [--json]`: who is connected and what they hold, as smbstatus shows it for Samba.

The running smbdd answers on a Unix socket in its runtime folder (``/dev/shm/smbdd-run-<pid>/
status.sock``, mode 0600 in a 0700 folder: root's, as smbstatus needs root for Samba's
databases). For each question it gathers, at that moment:

- from every serving worker (over its control socket) its channels with the bytes each
  carried, sessions (user, Unix account, client address, ClientGUID, dialect, signing,
  encryption), tree connects, open files with share modes, leases and oplocks, byte-range
  locks, and durable handles waiting for their client (smbd.server.status);
- from the SMB Direct proxy, per connection, the messages and the bytes moved by RDMA read
  and write, beside what went inline;
- from the persistent store, the persistent handles no worker holds any more, waiting for
  their client's reconnect until their timeout.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from smbd.store import pid_alive

from .state import RUNTIME_PREFIX, RUNTIME_ROOT

log = logging.getLogger("smbdd.status")
SOCKET_NAME = "status.sock"


class StatusService:
    """The daemon's side: one JSON document per connection to the socket."""

    def __init__(self, runtime_dir: str, supervisor, proxy=None):
        self.path = Path(runtime_dir) / SOCKET_NAME
        self.supervisor = supervisor
        self.proxy = proxy
        self.started = time.time()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(await self.collect()).encode())
            await writer.drain()
        except (ConnectionError, OSError) as e:
            log.debug("status reader went away: %s", e)
        except Exception:
            log.exception("status failed")
        finally:
            writer.close()

    async def collect(self) -> dict:
        workers = await self.supervisor.status()
        rdma = self._rdma_channels()
        for worker in workers:
            for channel in worker.get("channels", ()):
                if channel["transport"] == "smbdirect":
                    channel["rdma"] = rdma.get(channel["peer"])
        return {"smbdd_pid": os.getpid(), "started": self.started, "workers": workers,
                "smbdirect": list(rdma.values()), "persistent_waiting": self._orphaned_persistent()}

    def _rdma_channels(self) -> dict[str, dict]:
        if self.proxy is None:
            return {}
        out = {}
        for conn in self.proxy.connections:
            c = conn.stats.own
            out[conn.peer] = {"peer": conn.peer, "messages_in": c["messages_in"], "messages_out": c["messages_out"],
                              "rdma_reads": c["rdma_reads"], "rdma_writes": c["rdma_writes"],
                              "rdma_bytes": c["rdma_bytes"], "send_with_invalidate": c["send_with_invalidate"]}
        return out

    def _orphaned_persistent(self) -> list[dict]:
        from smbd.server import persistent

        store = getattr(self.supervisor, "persistent_store", None)
        if store is None:
            return []
        now, out = time.time(), []
        for _, record in store.items(persistent.TABLE):
            if not persistent._orphaned(record, now):
                continue  # a worker holds it and lists it itself, or its timeout has passed
            state = record.get("state", {})
            out.append({"path": "\\".join(state.get("components", ())), "share": record.get("share"),
                        "expires_in": round(record["expires"] - now, 1) if record.get("expires") else None})
        return out


# ---- the command ------------------------------------------------------------------------------


def running_servers(root: Path = RUNTIME_ROOT) -> list[Path]:
    """The status sockets of the smbdd processes running on this machine."""
    found = []
    for folder in sorted(root.glob(f"{RUNTIME_PREFIX}*")):
        pid = folder.name[len(RUNTIME_PREFIX):]
        if pid.isdigit() and pid_alive(int(pid)) and (folder / SOCKET_NAME).exists():
            found.append(folder / SOCKET_NAME)
    return found


def ask(path: Path, timeout: float = 10.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render(doc: dict) -> str:
    out = [f"smbdd {doc['smbdd_pid']}, up {time.time() - doc['started']:.0f} s"]
    sessions = [(w, s) for w in doc["workers"] for s in w.get("sessions", ())]
    out += ["", f"{'Session':<18} {'User':<20} {'Unix':<10} {'Client':<22} {'Dialect':<7} {'Signing':<11} "
                f"{'Encryption':<11} Channels"]
    for w, s in sessions:
        user = "(guest)" if s["guest"] else "(anonymous)" if s["anonymous"] else \
            f"{s['domain']}\\{s['user']}" if s["domain"] else s["user"]
        out.append(f"{s['session_id']:<18} {user:<20} {s['unix_user'] or '-':<10} {s['client'] or '-':<22} "
                   f"{s['dialect']:<7} {s['signing'] or '-':<11} {s['encryption'] or '-':<11} {len(s['channels'])}")
    out += ["", f"{'Channel':<34} {'Transport':<9} {'In':>10} {'Out':>10} {'RDMA':>10} {'RDMA ops':>14}  Worker"]
    for w in doc["workers"]:
        for ch in w.get("channels", ()):
            rdma = ch.get("rdma") or {}
            moved = _size(rdma["rdma_bytes"]) if rdma else "-"
            ops = f"{rdma['rdma_reads']} r / {rdma['rdma_writes']} w" if rdma else "-"
            out.append(f"{ch['peer']:<34} {ch['transport']:<9} {_size(ch['bytes_in']):>10} "
                       f"{_size(ch['bytes_out']):>10} {moved:>10} {ops:>14}  {w['pid']}")
    out += ["", f"{'Share':<12} {'Session':<18} Read-only"]
    for w, s in sessions:
        for t in s["trees"]:
            out.append(f"{t['share']:<12} {s['session_id']:<18} {'yes' if t['read_only'] else 'no'}")
    out += ["", f"{'Open file':<40} {'Share':<10} {'Access':<10} {'Deny':<5} {'Oplock/lease':<13} Durable"]
    for w in doc["workers"]:
        for o in w.get("opens", ()):
            caching = f"lease {o['lease']}" if o["lease"] else o["oplock"]
            out.append(f"{o['path'] or '.':<40} {o['share']:<10} {o['access']:<10} {o['share_mode']:<5} "
                       f"{caching:<13} {o['durable'] or '-'}")
    locks = [lk for w in doc["workers"] for lk in w.get("locks", ())]
    if locks:
        out += ["", f"{'Locked file':<40} {'Offset':>12} {'Length':>12} Kind"]
        out += [f"{lk['path']:<40} {lk['offset']:>12} {lk['length']:>12} {lk['kind']}" for lk in locks]
    waiting = [o for w in doc["workers"] for o in w.get("durable_waiting", ())] + doc.get("persistent_waiting", [])
    if waiting:
        out += ["", "Durable handles waiting for their client:"]
        out += [f"  {o['path']} ({o.get('share') or '?'})" for o in waiting]
    if any(w.get("error") for w in doc["workers"]):
        out += ["", *(f"worker {w['pid']}: {w['error']}" for w in doc["workers"] if w.get("error"))]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="smbdd status", description="Sessions, channels, shares, open files "
                                 "and locks of the running smbdd, as smbstatus shows Samba's.")
    ap.add_argument("--json", action="store_true", help="one JSON document per running smbdd")
    ap.add_argument("--pid", type=int, help="only the smbdd with this process id")
    args = ap.parse_args(argv)
    sockets = [p for p in running_servers() if args.pid is None or p.parent.name == f"{RUNTIME_PREFIX}{args.pid}"]
    if not sockets:
        print("smbdd status: no running smbdd found" + (f" with pid {args.pid}" if args.pid else "")
              + f" (looked in {RUNTIME_ROOT})", file=sys.stderr)
        return 1
    docs = []
    for path in sockets:
        try:
            docs.append(ask(path))
        except (OSError, ValueError) as e:
            print(f"smbdd status: {path}: {e}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(docs if len(docs) > 1 else docs[0], indent=1))
    else:
        sys.stdout.write("\n".join(render(d) for d in docs))
    return 0
