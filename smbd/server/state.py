"""Per-worker global server state (MS-SMB2 3.3.1.5): sessions, opens, shares, the I/O pool."""
from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from smbd import identity, metrics
from smbd.accounts import AccountDirectory
from smbd.store import MemoryStore, StateStore, open_persistent, open_volatile

from .config import ServerConfig
from .objects import Open, Session

if TYPE_CHECKING:
    from smbd.vfs.posix import Share as VfsShare

    from .connection import SmbConnection
    from .handlers import HandlerTable

log = logging.getLogger("smbd.server")
DELETE_PENDING_TABLE = "delete_pending"  # smbd.store.VOLATILE_TABLES


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What one worker tells the others about a valid session (MS-SMB2 3.3.1.5
    GlobalSessionTable): enough for a SESSION_SETUP naming it on another worker's
    connection to be answered with the status and signature Windows and Samba give
    (3.3.5.5.2: dialect, signing algorithm and cipher must match; the refusal of a request
    signed with Session.SigningKey is signed with it). The session itself, its trees and
    opens stay in its worker."""

    session_id: int
    pid: int
    dialect: int
    signing_algorithm: int
    cipher: int
    signing_key: bytes
    is_guest: bool
    is_anonymous: bool
    user: str
    domain: str

    def to_json(self) -> str:
        d = asdict(self)
        d["signing_key"] = self.signing_key.hex()
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> "SessionRecord | None":
        try:
            d = json.loads(text)
            d["signing_key"] = bytes.fromhex(d["signing_key"])
            record = cls(**d)
        except (ValueError, TypeError, KeyError):
            return None
        ints = (record.session_id, record.pid, record.dialect, record.signing_algorithm, record.cipher)
        return record if all(isinstance(i, int) for i in ints) else None


class GlobalSessionTable:
    """Sessions of every worker of one smbdd: the ``sessions`` table of the state store.

    Workers serve one ClientGUID each, so a second connection of another (or no) ClientGUID
    that binds to a session lands in a worker that does not hold it; like Samba's
    smbXsrv_session_global.tdb this lets that worker find the session and refuse the bind
    exactly as 3.3.5.5.2 says, instead of USER_SESSION_DELETED. The records hold signing
    keys: the store's folder is 0700 and its files 0600 (smbd.store). A record whose worker
    died is ignored and removed; smbdd removes a dead worker's records as it reaps it.
    """

    TABLE = "sessions"

    def __init__(self, store: StateStore):
        self.store = store
        self._own: set[int] = set()

    def publish(self, record: SessionRecord) -> None:
        try:
            self.store.put(self.TABLE, _session_key(record.session_id), json.loads(record.to_json()))
            self._own.add(record.session_id)
        except Exception as e:  # the store full or gone: this worker's own sessions still work
            log.warning("cannot publish session %x: %s", record.session_id, e)

    def withdraw(self, session_id: int) -> None:
        if session_id not in self._own:
            return
        self._own.discard(session_id)
        self.store.delete(self.TABLE, _session_key(session_id))

    def lookup(self, session_id: int) -> SessionRecord | None:
        """The record of a session another live worker holds, or None."""
        if session_id in self._own:
            return None
        key = _session_key(session_id)
        data = self.store.get(self.TABLE, key)
        record = SessionRecord.from_json(json.dumps(data)) if data is not None else None
        if record is None or record.session_id != session_id:
            return None
        if not _alive(record.pid):
            self.store.update(self.TABLE, key, lambda old: None if old == data else old)
            return None
        return record


def _session_key(session_id: int) -> str:
    return f"{session_id:016x}"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False  # 0 and negatives name process groups, not a worker
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        pass
    return True


class ServerState:
    """Everything a worker process shares between the connections (channels) it serves."""

    def __init__(self, config: ServerConfig, handlers: "HandlerTable | None" = None):
        from .handlers import HandlerTable

        self.config = config
        self.accounts = AccountDirectory(config.users, config.users_file)
        self.handlers = handlers or HandlerTable()
        self.sessions: dict[int, Session] = {}
        self.opens: dict[int, Open] = {}  # by volatile id
        self.connections: set["SmbConnection"] = set()
        self.start_time = time.time()
        self.io_pool = ThreadPoolExecutor(max_workers=config.io_threads, thread_name_prefix="smbd-io")
        self._vfs: dict[tuple[str, str, bool], "VfsShare"] = {}  # (share, path, read-only)
        self._volatile = itertools.count(1)
        self._opens_by_file: dict[int, int] = {}  # file key (inode) -> local open count
        self._delete_pending: set[int] = set()
        from .locks import ByteRangeLocks
        from .oplocks import OplockManager
        self.byte_locks = ByteRangeLocks()
        # Grants nothing until the worker starts it on its event loop (smbd.worker).
        self.oplocks = OplockManager()
        from .durable import DurableTable
        from .leases import LeaseManager
        self.leases = LeaseManager(self)  # SMB2 leases of this worker's client (3.3.1.13)
        self.durable = DurableTable(self)  # disconnected durable Opens awaiting a reconnect
        self.store = open_volatile(config.runtime_dir)  # shared with the other workers
        self._persistent_store: StateStore | None = None
        self.shutting_down = False
        self.global_sessions = GlobalSessionTable(self.store)
        self.messenger = None  # smbd.server.messaging.Messenger, in a worker of smbdd
        # What of this worker's caching the store's ``caching`` table says (smbd.server.caching).
        self.caching_published: dict[int, dict] = {}
        self._closing: dict[int, list[asyncio.Event]] = {}  # file key -> CLOSEs in flight
        self.oplocks.on_change = self.caching_changed

    def caching_changed(self, file_key: int | None) -> None:
        """Republish this worker's caching of the file (smbd.server.caching); from any thread
        (an Open is unregistered on an I/O thread), done on the loop."""
        from . import caching
        self.oplocks.run_on_loop(caching.publish, self, file_key)

    def new_session_id(self) -> int:
        while True:
            sid = secrets.randbits(63) | 1
            if sid not in self.sessions:
                return sid

    @property
    def persistent_store(self) -> StateStore:
        """The store on disk that persistent handles outlive us in (opened when first needed)."""
        if self._persistent_store is None:
            self._persistent_store = (open_persistent(Path(self.config.state_dir) / "store")
                                      if self.config.state_dir else MemoryStore())
        return self._persistent_store

    def new_volatile_id(self) -> int:
        return next(self._volatile)

    def persistent_ids(self) -> int:
        """Open.DurableFileId: unique in the server, not only in this worker, since a durable
        reconnect names it to whichever worker it reaches (smbd.server.durable); random, as
        session ids are, so no two workers need to agree on a counter."""
        return secrets.randbits(63) | 1

    def register_open(self, op: Open) -> None:
        self.opens[op.volatile_id] = op
        metrics.opens_now(len(self.opens))
        if op.file_key is not None:
            self._opens_by_file[op.file_key] = self._opens_by_file.get(op.file_key, 0) + 1
            if op.file_key in self.caching_published:  # its opens are part of the record
                self.caching_changed(op.file_key)

    def unregister_open(self, op: Open) -> None:
        self.opens.pop(op.volatile_id, None)
        metrics.opens_now(len(self.opens))
        self.byte_locks.release_all(op)
        key = op.file_key
        if key is not None:
            left = self._opens_by_file.get(key, 1) - 1
            if left <= 0:
                self._opens_by_file.pop(key, None)
            else:
                self._opens_by_file[key] = left
            if key in self.caching_published:
                self.caching_changed(key)

    # ---- CLOSEs in flight ----------------------------------------------------------------
    # A CLOSE drops the Open's oplock or lease on the loop first (an opener may be waiting for
    # exactly that) and closes the descriptor, which holds the share-mode lock, on an I/O
    # thread after. An opener that broke the oplock must not look at the share modes in
    # between, or it meets the lock of an Open that is already going (smbtorture
    # smb2.bench.oplock1, a client that closes on every break).

    def close_begins(self, key: int | None) -> asyncio.Event:
        done = asyncio.Event()
        if key is not None:
            self._closing.setdefault(key, []).append(done)
        return done

    def close_ends(self, key: int | None, done: asyncio.Event) -> None:
        done.set()
        waiting = self._closing.get(key)
        if waiting is not None:
            waiting.remove(done)
            if not waiting:
                del self._closing[key]

    async def closes_finished(self, key: int | None, timeout: float = 5.0) -> None:
        """Wait for the CLOSEs of the file now in flight in this worker (bounded)."""
        events = list(self._closing.get(key, ())) if key is not None else []
        if events:
            await asyncio.wait([asyncio.ensure_future(e.wait()) for e in events], timeout=timeout)

    def last_open_of(self, key: int | None) -> bool:
        """True once no other Open of the file is left in this worker (called after unregister)."""
        return key is None or key not in self._opens_by_file

    def opens_of(self, key: int) -> list[Open]:
        return [o for o in self.opens.values() if o.file_key == key]

    # Stream.DeletePending (MS-FSA 2.1.1.4): this worker's set, and the store's table for the
    # other workers (an open in another worker must get DELETE_PENDING too, smbtorture
    # smb2.oplock.doc); the row's key names the file and the worker that set it.

    def delete_pending(self, key: int | None) -> bool:
        if key in self._delete_pending:
            return True
        if key is None or self.messenger is None:
            return False  # no other worker to have set it
        try:
            return bool(self.store.scan(DELETE_PENDING_TABLE, f"{key}/"))
        except Exception as e:
            log.warning("delete-pending records of file %d not read: %s", key, e)
            return False

    def set_delete_pending(self, key: int) -> None:
        if key not in self._delete_pending:
            self._delete_pending.add(key)
            self._publish_delete_pending(key, True)
        # A directory with a pending CHANGE_NOTIFY: the request completes with
        # STATUS_DELETE_PENDING now (smbtorture smb2.notify.rmdir1/2); another worker's
        # watches learn it from inotify when the directory really goes.
        for op in self.opens.values():
            if op.file_key == key and op.notify is not None:
                op.notify.directory_deleted()

    def clear_delete_pending(self, key: int) -> None:
        if key in self._delete_pending:
            self._delete_pending.discard(key)
            self._publish_delete_pending(key, False)

    def _publish_delete_pending(self, key: int, pending: bool) -> None:
        if self.messenger is None:
            return
        row = f"{key}/{os.getpid()}"
        try:
            if pending:
                self.store.put(DELETE_PENDING_TABLE, row, {"pid": os.getpid()})
            else:
                self.store.delete(DELETE_PENDING_TABLE, row)
        except Exception as e:  # the store gone: this worker's own opens still see it
            log.warning("delete-pending record of file %d not written: %s", key, e)

    def reconfigure(self, config: ServerConfig) -> None:
        """A reload: shares, users and access lists count from the next logon and tree
        connect. Sessions, trees and opens stay as they are, with the VFS they have (a
        share whose path changed gets a new one for new trees)."""
        self.config = config
        self.accounts = AccountDirectory(config.users, config.users_file)
        log.info("configuration reloaded: shares %s", ", ".join(s.name for s in config.shares))

    def vfs_for(self, share_name: str, read_only: bool | None = None) -> "VfsShare":
        """The VFS root of a share, opened once per worker; a second, read-only (or writable)
        one for the users a read_list (write_list) sets apart (smbd.server.access)."""
        from smbd.vfs.posix import Share as VfsShare

        share = self.config.share(share_name)
        assert share is not None
        read_only = share.read_only if read_only is None else read_only
        key = (share.name, share.path, read_only)
        vfs = self._vfs.get(key)
        if vfs is None:
            with identity.as_server():  # shared by every user of the share
                vfs = VfsShare(share.path, read_only=read_only)
            self._vfs[key] = vfs
        return vfs

    async def io(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run blocking file-system work on the helper threads, never on the event loop."""
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.io_pool, identity.bound(fn), *args)

    async def brief_io(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a metadata call that takes microseconds while the file system's metadata is
        in memory (a lookup, an open, a close): on the event loop when the caller's request
        is this worker's only one, else on a helper thread.

        The hop to a helper thread and back costs two thread wake-ups, two passes of the
        GIL and a wake of the loop: more than such a call. smbtorture's open+close bench
        (smb2.bench.path-contention-shared) does three of them per pair. When nothing else
        waits for the loop, a call that does block delays only its own reply, as in
        write_from; with other requests in flight it goes to a thread as before."""
        if self.only_request_in_flight():
            return identity.run_as(identity.current.get(), fn, *args)
        return await self.io(fn, *args)

    async def read_into(self, vfs: "VfsShare", fd: int, buf: memoryview, offset: int) -> int:
        """File data into ``buf``: from the page cache on the loop, the rest on a helper
        thread (the disk is never waited for on the event loop)."""
        n, finished = vfs.pread_cached(fd, buf, offset)
        if finished:
            return n
        return n + await self.io(vfs.pread_into, fd, buf[n:], offset + n)

    def only_request_in_flight(self) -> bool:
        """True when the caller's request is the one thing this worker is handling: no other
        request of any of its connections, so nothing else waits for the event loop."""
        return sum(len(c.tasks) for c in self.connections) <= 1

    async def write_from(self, vfs: "VfsShare", fd: int, data: memoryview, offset: int,
                         write_through: bool) -> int:
        """Write all of ``data``: on the event loop when this is the worker's only request,
        else on a helper thread.

        A buffered write is a copy into the page cache; the hand-off to a helper thread and
        back costs two thread wake-ups and two passes of the GIL. In the lab (emulated CPU,
        SMB Direct) that was about 13 ms of a 1 MiB WRITE's 59 ms: dd went from 17.8 to
        22.8 MB/s when the write moved onto the loop. Unlike reads there is no
        RWF_NOWAIT to tell whether it would block (ext4 refuses it for buffered writes), so
        a write runs on the loop only when nothing else waits for the loop: then a write that
        does block (dirty-page throttling) delays no one but its own reply. Write-through
        waits for the disk by definition and always goes to a thread."""
        if not write_through and self.only_request_in_flight():
            return vfs.pwrite(fd, data, offset)
        return await self.io(_pwrite_all, vfs, fd, data, offset, write_through)

    def connection_lost(self, conn: "SmbConnection") -> None:
        """Drop the channel; sessions with no channel left lose their trees and opens (3.3.7.1).

        A session still being set up goes too when that setup ran on this connection;
        one another connection is setting up is not this connection's to end."""
        self.connections.discard(conn)
        setups = getattr(conn, "session_auths", {})
        for session in list(self.sessions.values()):
            had_channel = session.channels.pop(id(conn), None) is not None
            if not session.channels and (had_channel or session.session_id in setups):
                self.logoff(session)

    def logoff(self, session: Session) -> None:
        from .handlers.files import close_open

        self.sessions.pop(session.session_id, None)
        metrics.sessions_now(len(self.sessions))
        self.global_sessions.withdraw(session.session_id)
        for task in list(session.orphaned):  # requests of channels that failed earlier
            task.cancel()
        for op in [o for o in self.opens.values() if o.session is session]:
            close_open(self, op)
        session.trees.clear()

    def close_tree(self, tree) -> None:
        from .handlers.files import close_open

        for op in [o for o in self.opens.values() if o.tree is tree]:
            close_open(self, op)
        tree.session.trees.pop(tree.tree_id, None)

    def shutdown(self) -> None:
        # Persistent Opens close here but keep their records: a restart of smbdd, like a
        # crash, is what they are meant to outlive (smbd.server.persistent).
        self.shutting_down = True
        for session in list(self.sessions.values()):
            self.logoff(session)
        self.oplocks.stop()
        self.io_pool.shutdown(wait=True)
        for vfs in self._vfs.values():
            try:
                vfs.close()
            except OSError:
                pass
        self.store.close()
        if self._persistent_store is not None:
            self._persistent_store.close()


def filetime_now() -> int:
    """Current time as FILETIME (100 ns since 1601), MS-DTYP 2.3.3."""
    return (time.time_ns() // 100) + 116444736000000000


def pid() -> int:
    return os.getpid()


def _pwrite_all(vfs: "VfsShare", fd: int, data: memoryview, offset: int, write_through: bool) -> int:
    n = vfs.pwrite(fd, data, offset)
    if write_through:
        os.fdatasync(fd)
    return n
