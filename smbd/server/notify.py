"""Directory change watches for CHANGE_NOTIFY, on Linux inotify (MS-SMB2 3.3.5.19, MS-FSA 2.1.5.11).

inotify reports changes made by any process, so a client is told of changes made through
another client's worker too. Events are buffered per Open between requests, as Windows
does after the first CHANGE_NOTIFY on a handle; an overflowing buffer turns into
STATUS_NOTIFY_ENUM_DIR ("something changed, enumerate again").
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_MASK = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
_EVENT = struct.Struct("iIII")

# FILE_NOTIFY_CHANGE_* completion filter bits (MS-SMB2 2.2.35) and actions (MS-FSCC 2.7.1).
CHANGE_FILE_NAME = 0x001
CHANGE_DIR_NAME = 0x002
CHANGE_ATTRIBUTES = 0x004
CHANGE_SIZE = 0x008
CHANGE_LAST_WRITE = 0x010
CHANGE_LAST_ACCESS = 0x020
CHANGE_CREATION = 0x040
CHANGE_EA = 0x080
CHANGE_SECURITY = 0x100
ACTION_ADDED = 1
ACTION_REMOVED = 2
ACTION_MODIFIED = 3
ACTION_RENAMED_OLD_NAME = 4
ACTION_RENAMED_NEW_NAME = 5

MAX_BUFFERED = 4096  # events kept per handle before we only say "enumerate again"
MAX_SUBTREE_WATCHES = 4096  # WATCH_TREE adds one watch per directory, bounded


@dataclass(frozen=True, slots=True)
class Change:
    action: int
    name: str  # relative to the watched directory, backslash separated


def _filter_for(mask: int) -> int:
    """The completion-filter bits an inotify event can satisfy."""
    isdir = bool(mask & IN_ISDIR)
    name_bit = CHANGE_DIR_NAME if isdir else CHANGE_FILE_NAME
    if mask & (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO):
        return name_bit
    if mask & IN_MODIFY:
        return CHANGE_SIZE | CHANGE_LAST_WRITE
    if mask & IN_ATTRIB:
        return CHANGE_ATTRIBUTES | CHANGE_LAST_WRITE | CHANGE_SECURITY | CHANGE_EA | CHANGE_CREATION
    return 0


def _action_for(mask: int) -> int:
    if mask & IN_CREATE:
        return ACTION_ADDED
    if mask & IN_DELETE:
        return ACTION_REMOVED
    if mask & IN_MOVED_FROM:
        return ACTION_RENAMED_OLD_NAME
    if mask & IN_MOVED_TO:
        return ACTION_RENAMED_NEW_NAME
    return ACTION_MODIFIED


def encode_changes(changes: list[Change], max_bytes: int) -> bytes | None:
    """FILE_NOTIFY_INFORMATION entries (MS-FSCC 2.7.1), 4-byte aligned; None if they do not fit."""
    out = bytearray()
    last = -1
    for ch in changes:
        name = ch.name.encode("utf-16-le")
        start = len(out)
        if last >= 0:
            struct.pack_into("<I", out, last, start - last)
        out += struct.pack("<III", 0, ch.action, len(name)) + name
        out += b"\0" * (-len(out) % 4)
        last = start
    if len(out) > max_bytes:
        return None
    return bytes(out)


class Watch:
    """inotify watches on one open directory (and its subtree for WATCH_TREE)."""

    def __init__(self, dir_path: str, recursive: bool, completion_filter: int):
        self.filter = completion_filter
        self.recursive = recursive
        self.changes: list[Change] = []
        self.overflow = False
        self.closed = False
        self.event = asyncio.Event()
        self._fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._paths: dict[int, str] = {}
        self.root = dir_path
        self._loop = asyncio.get_running_loop()
        self._add(dir_path, "")
        if recursive:
            self._add_subtree(dir_path, "")
        asyncio.get_running_loop().add_reader(self._fd, self._readable)

    def _add(self, path: str, rel: str) -> None:
        if len(self._paths) >= MAX_SUBTREE_WATCHES:
            self.overflow = True
            return
        wd = _libc.inotify_add_watch(self._fd, os.fsencode(path), _MASK)
        if wd >= 0:
            self._paths[wd] = rel

    def _add_subtree(self, path: str, rel: str) -> None:
        try:
            with os.scandir(path) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        sub_rel = f"{rel}\\{entry.name}" if rel else entry.name
                        self._add(entry.path, sub_rel)
                        self._add_subtree(entry.path, sub_rel)
        except OSError:
            pass

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except OSError as e:
            if e.errno != errno.EAGAIN:
                self.close()
            return
        pos = 0
        while pos + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
            raw = data[pos + _EVENT.size:pos + _EVENT.size + length].split(b"\0", 1)[0]
            pos += _EVENT.size + length
            self._event(wd, mask, os.fsdecode(raw))
        self.event.set()

    def _event(self, wd: int, mask: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            self.overflow = True
            return
        if mask & IN_IGNORED:
            self._paths.pop(wd, None)
            return
        rel = self._paths.get(wd)
        if rel is None or not name:
            return
        full = f"{rel}\\{name}" if rel else name
        if self.recursive and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
            base = self._base_path(wd)
            if base is not None:
                self._add(os.path.join(base, name), full)
        if not _filter_for(mask) & self.filter:
            return
        if len(self.changes) >= MAX_BUFFERED:
            self.overflow = True
            return
        self.changes.append(Change(_action_for(mask), full))

    def _base_path(self, wd: int) -> str | None:
        # inotify does not tell the path of a watch; keep the root to rebuild it.
        rel = self._paths.get(wd)
        if rel is None or self.root is None:
            return None
        return os.path.join(self.root, *rel.split("\\")) if rel else self.root

    def take(self, max_bytes: int) -> tuple[bool, bytes]:
        """(enum_dir, data): the buffered changes, or enum_dir=True when they were lost or do not fit."""
        changes, self.changes = self.changes, []
        overflow, self.overflow = self.overflow, False
        self.event.clear()
        if overflow:
            return True, b""
        data = encode_changes(changes, max_bytes)
        if data is None:
            return True, b""
        return False, data

    def has_news(self) -> bool:
        return bool(self.changes) or self.overflow

    def close(self) -> None:
        """Safe from any thread: the handle may be closed on an I/O thread."""
        if self.closed:
            return
        self.closed = True
        try:
            self._loop.call_soon_threadsafe(self._close_on_loop)
        except RuntimeError:  # the loop is gone (shutdown): nothing to unregister from
            os.close(self._fd)

    def _close_on_loop(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self.event.set()
