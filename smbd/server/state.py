"""Per-worker global server state (MS-SMB2 3.3.1.5): sessions, opens, shares, the I/O pool."""
from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

from .config import ServerConfig
from .objects import Open, Session

if TYPE_CHECKING:
    from smbd.vfs.posix import Share as VfsShare

    from .connection import SmbConnection
    from .handlers import HandlerTable

log = logging.getLogger("smbd.server")


class ServerState:
    """Everything a worker process shares between the connections (channels) it serves."""

    def __init__(self, config: ServerConfig, handlers: "HandlerTable | None" = None):
        from .handlers import HandlerTable

        self.config = config
        self.handlers = handlers or HandlerTable()
        self.sessions: dict[int, Session] = {}
        self.opens: dict[int, Open] = {}  # by volatile id
        self.connections: set["SmbConnection"] = set()
        self.start_time = time.time()
        self.io_pool = ThreadPoolExecutor(max_workers=config.io_threads, thread_name_prefix="smbd-io")
        self._vfs: dict[str, "VfsShare"] = {}
        self._volatile = itertools.count(1)
        self._persistent = itertools.count(1)
        self._opens_by_file: dict[int, int] = {}  # file key (inode) -> local open count
        self._delete_pending: set[int] = set()
        from .locks import ByteRangeLocks
        from .oplocks import OplockManager
        self.byte_locks = ByteRangeLocks()
        # Grants nothing until the worker starts it on its event loop (smbd.worker).
        self.oplocks = OplockManager()

    def new_session_id(self) -> int:
        while True:
            sid = secrets.randbits(63) | 1
            if sid not in self.sessions:
                return sid

    def new_volatile_id(self) -> int:
        return next(self._volatile)

    def persistent_ids(self) -> int:
        return next(self._persistent)

    def register_open(self, op: Open) -> None:
        self.opens[op.volatile_id] = op
        if op.file_key is not None:
            self._opens_by_file[op.file_key] = self._opens_by_file.get(op.file_key, 0) + 1

    def unregister_open(self, op: Open) -> None:
        self.opens.pop(op.volatile_id, None)
        self.byte_locks.release_all(op)
        key = op.file_key
        if key is not None:
            left = self._opens_by_file.get(key, 1) - 1
            if left <= 0:
                self._opens_by_file.pop(key, None)
            else:
                self._opens_by_file[key] = left

    def last_open_of(self, key: int | None) -> bool:
        """True once no other Open of the file is left in this worker (called after unregister)."""
        return key is None or key not in self._opens_by_file

    def opens_of(self, key: int) -> list[Open]:
        return [o for o in self.opens.values() if o.file_key == key]

    def delete_pending(self, key: int | None) -> bool:
        return key in self._delete_pending

    def set_delete_pending(self, key: int) -> None:
        self._delete_pending.add(key)

    def clear_delete_pending(self, key: int) -> None:
        self._delete_pending.discard(key)

    def vfs_for(self, share_name: str) -> "VfsShare":
        """The VFS root of a share, opened once per worker."""
        from smbd.vfs.posix import Share as VfsShare

        vfs = self._vfs.get(share_name)
        if vfs is None:
            share = self.config.share(share_name)
            assert share is not None
            vfs = VfsShare(share.path, read_only=share.read_only)
            self._vfs[share_name] = vfs
        return vfs

    async def io(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run blocking file-system work on the helper threads, never on the event loop."""
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.io_pool, fn, *args)

    def connection_lost(self, conn: "SmbConnection") -> None:
        """Drop the channel; sessions with no channel left lose their trees and opens (3.3.7.1)."""
        self.connections.discard(conn)
        for session in list(self.sessions.values()):
            session.channels.pop(id(conn), None)
            if not session.channels:
                self.logoff(session)

    def logoff(self, session: Session) -> None:
        from .handlers.files import close_open

        self.sessions.pop(session.session_id, None)
        for op in [o for o in self.opens.values() if o.session is session]:
            close_open(self, op)
        session.trees.clear()

    def close_tree(self, tree) -> None:
        from .handlers.files import close_open

        for op in [o for o in self.opens.values() if o.tree is tree]:
            close_open(self, op)
        tree.session.trees.pop(tree.tree_id, None)

    def shutdown(self) -> None:
        for session in list(self.sessions.values()):
            self.logoff(session)
        self.oplocks.stop()
        self.io_pool.shutdown(wait=True)
        for vfs in self._vfs.values():
            try:
                vfs.close()
            except OSError:
                pass


def filetime_now() -> int:
    """Current time as FILETIME (100 ns since 1601), MS-DTYP 2.3.3."""
    return (time.time_ns() // 100) + 116444736000000000


def pid() -> int:
    return os.getpid()
