"""Directory change watches for CHANGE_NOTIFY, on Linux inotify (MS-SMB2 3.3.5.19, MS-FSA 2.1.5.11).

inotify reports changes made by any process, so a client is told of changes made through
another client's worker too (and of changes made on the server outside SMB).

Two parts:

* :func:`changes_for` (pure) turns a batch of inotify events into the change records Windows
  reports (MS-FSCC 2.7.1 actions, MS-SMB2 2.2.35 filter bits): a rename within one directory is
  OLD_NAME + NEW_NAME, a move between directories REMOVED + ADDED, a file that moved or was
  renamed is also MODIFIED for a watcher of ATTRIBUTES alone (NTFS changes its ChangeTime).
* Named streams are files of the stream depot (smbd.vfs.streams): a watch whose filter asks
  for stream changes also watches the stream folders of the files it covers and reports
  ADDED_STREAM, REMOVED_STREAM and MODIFIED_STREAM as ``file:stream``.  A file gets its folder
  with its first stream, which writes its folder id (an IN_ATTRIB on the file): that is when
  the watch finds the folder, and reports the streams already in it as added.
* :class:`Watch` holds one handle's inotify instance.  The first CHANGE_NOTIFY fixes the filter
  and WATCH_TREE for the life of the handle, as Windows does (smbtorture smb2.notify.mask-change).
  Each change goes to the oldest pending request, alone; with none pending it is buffered for
  the next.  The buffer holds what the first request's OutputBufferLength holds: past that,
  the changes are dropped and the next answer is STATUS_NOTIFY_ENUM_DIR (a first request of
  one byte makes every answer ENUM_DIR: smbtorture smb2.notify.valid-req).  Every pending
  request gets an answer: the changes, NOTIFY_ENUM_DIR, STATUS_DELETE_PENDING when the directory
  is deleted (here or by another worker), NOTIFY_CLEANUP when the handle closes.
"""
from __future__ import annotations

import asyncio
import collections
import os
import struct
from dataclasses import dataclass
from typing import Callable

from inotify_simple import INotify

from smbd.status import NtStatus

# inotify_simple looks libc up (ctypes.util.find_library, which runs ldconfig in a subprocess)
# on its first INotify(). Done here, at import, it happens once in the zygote and not in each
# worker's first watch: there it took milliseconds, long enough for another client's change to
# land before the watch was in place (smbtorture smb2.notify.basedir then waited forever).
try:
    INotify().close()
except OSError:  # no inotify instance to spare now: the first watch pays the look-up instead
    pass

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
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
_MASK = (IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
         | IN_MOVE_SELF)

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
CHANGE_STREAM_NAME = 0x200
CHANGE_STREAM_SIZE = 0x400
CHANGE_STREAM_WRITE = 0x800
_STREAM_FILTERS = CHANGE_STREAM_NAME | CHANGE_STREAM_SIZE | CHANGE_STREAM_WRITE
ACTION_ADDED = 1
ACTION_REMOVED = 2
ACTION_MODIFIED = 3
ACTION_RENAMED_OLD_NAME = 4
ACTION_RENAMED_NEW_NAME = 5
ACTION_ADDED_STREAM = 6
ACTION_REMOVED_STREAM = 7
ACTION_MODIFIED_STREAM = 8

# An IN_ATTRIB is a change of times, mode, owner or xattrs (which hold attributes, EAs, the
# security descriptor and the creation time): inotify does not say which.
_ATTRIB_FILTER = (CHANGE_ATTRIBUTES | CHANGE_LAST_WRITE | CHANGE_LAST_ACCESS | CHANGE_SECURITY | CHANGE_EA
                  | CHANGE_CREATION)
_MODIFY_FILTER = CHANGE_SIZE | CHANGE_LAST_WRITE

MAX_BUFFERED = 4096  # changes kept per handle before we only say "enumerate again"
MAX_SUBTREE_WATCHES = 4096  # WATCH_TREE adds one watch per directory, bounded
UNPAIRED_MOVE_WAIT = 0.02  # seconds an IN_MOVED_FROM waits for its IN_MOVED_TO in a later read


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One inotify event, its watch already turned into the directory's relative path."""

    rel: str  # the watched directory, relative to the watch's root ("" for the root)
    mask: int
    cookie: int
    name: str
    streams_of: bool = False  # an event in the stream folder of the file ``rel``; ``name`` is a stream


@dataclass(frozen=True, slots=True)
class Change:
    """One FILE_NOTIFY_INFORMATION record (MS-FSCC 2.7.1) and the filter bits that report it:
    a watch sees it when its filter has one of ``filter`` and none of ``unless``."""

    action: int
    name: str  # relative to the watched directory, backslash separated
    filter: int
    unless: int = 0

    def seen_by(self, completion_filter: int) -> bool:
        return bool(self.filter & completion_filter) and not self.unless & completion_filter


def _join(rel: str, name: str) -> str:
    return f"{rel}\\{name}" if rel else name


def _name_filter(mask: int) -> int:
    return CHANGE_DIR_NAME if mask & IN_ISDIR else CHANGE_FILE_NAME


def changes_for(events: list[RawEvent]) -> list[list[Change]]:
    """The change records of a batch of events, in order, grouped as they must be delivered
    (a rename's two names go together).  IN_MOVED_FROM without its IN_MOVED_TO in the batch
    is a REMOVED (moved out of the watched tree), IN_MOVED_TO alone an ADDED."""
    groups: list[list[Change]] = []
    used: set[int] = set()
    for i, ev in enumerate(events):
        if i in used:
            continue
        if ev.streams_of:
            stream = f"{ev.rel}:{ev.name}"
            if ev.mask & (IN_CREATE | IN_MOVED_TO):
                groups.append([Change(ACTION_ADDED_STREAM, stream, CHANGE_STREAM_NAME)])
            elif ev.mask & (IN_DELETE | IN_MOVED_FROM):
                groups.append([Change(ACTION_REMOVED_STREAM, stream, CHANGE_STREAM_NAME)])
            elif ev.mask & IN_MODIFY:
                groups.append([Change(ACTION_MODIFIED_STREAM, stream, CHANGE_STREAM_SIZE | CHANGE_STREAM_WRITE)])
            continue
        name = _join(ev.rel, ev.name)
        names = _name_filter(ev.mask)
        if ev.mask & IN_CREATE:
            groups.append([Change(ACTION_ADDED, name, names)])
        elif ev.mask & IN_DELETE:
            groups.append([Change(ACTION_REMOVED, name, names)])
        elif ev.mask & IN_MOVED_FROM:
            j = next((k for k in range(i + 1, len(events)) if k not in used
                      and events[k].mask & IN_MOVED_TO and events[k].cookie == ev.cookie), None)
            if j is None:
                groups.append([Change(ACTION_REMOVED, name, names)])
                continue
            used.add(j)
            new = _join(events[j].rel, events[j].name)
            if events[j].rel == ev.rel:
                group = [Change(ACTION_RENAMED_OLD_NAME, name, names), Change(ACTION_RENAMED_NEW_NAME, new, names)]
            else:
                group = [Change(ACTION_REMOVED, name, names), Change(ACTION_ADDED, new, names)]
            if not ev.mask & IN_ISDIR:
                group.append(Change(ACTION_MODIFIED, new, CHANGE_ATTRIBUTES, unless=CHANGE_FILE_NAME))
            groups.append(group)
        elif ev.mask & IN_MOVED_TO:
            group = [Change(ACTION_ADDED, name, names)]
            if not ev.mask & IN_ISDIR:
                group.append(Change(ACTION_MODIFIED, name, CHANGE_ATTRIBUTES, unless=CHANGE_FILE_NAME))
            groups.append(group)
        elif ev.mask & IN_MODIFY:
            groups.append([Change(ACTION_MODIFIED, name, _MODIFY_FILTER)])
        elif ev.mask & IN_ATTRIB:
            groups.append([Change(ACTION_MODIFIED, name, _ATTRIB_FILTER)])
    return groups


def _record_size(change: Change) -> int:
    """Bytes one FILE_NOTIFY_INFORMATION takes, padding included."""
    size = 12 + len(change.name.encode("utf-16-le"))
    return size + (-size % 4)


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


@dataclass(frozen=True, slots=True)
class Answer:
    """What a CHANGE_NOTIFY gets: ``data`` with NT_STATUS ``status`` (SUCCESS with records,
    NOTIFY_ENUM_DIR or NOTIFY_CLEANUP with none, DELETE_PENDING as an error)."""

    status: int
    data: bytes = b""


class Watch:
    """inotify watches on one open directory (and its subtree for WATCH_TREE).

    Lives on the event loop; :meth:`close` and :meth:`directory_deleted` may be called from any
    thread (a handle is closed on an I/O thread)."""

    def __init__(self, dir_fd: int, recursive: bool, completion_filter: int, buffer_size: int,
                 streams=None):
        self.filter = completion_filter
        self.recursive = recursive
        self.buffer_size = buffer_size
        self.closed = False
        self._buffer: list[Change] = []
        self._buffered_bytes = 0
        self._overflow = False
        self._gone: int | None = None  # the status every request gets once the directory is deleted
        self._waiters: collections.deque[tuple[asyncio.Future, int]] = collections.deque()
        self._held: list[RawEvent] = []  # an IN_MOVED_FROM waiting for its IN_MOVED_TO
        self._held_timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._root_fd = os.dup(dir_fd)  # the directory itself: its path, even after a rename
        try:  # the inotify_simple binding: one instance per watched handle
            self._inotify = INotify(nonblocking=True)
        except OSError:
            os.close(self._root_fd)
            raise
        self._fd = self._inotify.fileno()
        self._rel: dict[int, str] = {}
        # Stream folders watched for stream changes: wd -> the file's relative name.
        self._streams = streams if completion_filter & _STREAM_FILTERS else None
        self._stream_wds: dict[int, str] = {}
        self._stream_folders: dict[int, str] = {}  # wd -> folder path
        self._root_wd = self._add(f"/proc/self/fd/{self._root_fd}", "")
        # IN_DELETE_SELF only comes once the last fd of the directory is closed, and this
        # handle holds one: the parent's IN_DELETE (or a move away) tells of a delete at once.
        self._parent_wd = -1
        self._watch_parent()
        if os.fstat(self._root_fd).st_nlink == 0:  # deleted before the watches were in place
            self._gone = NtStatus.DELETE_PENDING
        if recursive:
            self._add_subtree("")
        if self._streams is not None:
            self._watch_stream_folders("", self.recursive)
        self._loop.add_reader(self._fd, self._readable)

    # -- requests ------------------------------------------------------------------------------
    def poll(self, max_bytes: int) -> Answer | None:
        """The answer a new request gets at once, or None when it has to wait."""
        if self.closed:
            return Answer(NtStatus.NOTIFY_CLEANUP)
        if self._buffer or self._overflow:
            changes, self._buffer = self._buffer, []
            overflow, self._overflow = self._overflow, False
            self._buffered_bytes = 0
            data = None if overflow else encode_changes(changes, max_bytes)
            return Answer(NtStatus.NOTIFY_ENUM_DIR) if data is None else Answer(NtStatus.SUCCESS, data)
        if self._gone is not None:
            return Answer(self._gone)
        return None

    def wait(self, max_bytes: int) -> asyncio.Future:
        """A future for the next change (call after :meth:`poll` said None)."""
        fut = self._loop.create_future()
        self._waiters.append((fut, max_bytes))
        return fut

    def forget(self, fut: asyncio.Future) -> None:
        """A cancelled request: it takes no change."""
        self._waiters = collections.deque((f, n) for f, n in self._waiters if f is not fut)

    def _deliver(self, group: list[Change]) -> None:
        seen = [c for c in group if c.seen_by(self.filter)]
        if not seen:
            return
        while self._waiters:
            fut, max_bytes = self._waiters.popleft()
            if fut.done():
                continue
            data = encode_changes(seen, max_bytes)
            fut.set_result(Answer(NtStatus.NOTIFY_ENUM_DIR) if data is None else Answer(NtStatus.SUCCESS, data))
            return
        if self._overflow:
            return
        size = sum(_record_size(c) for c in seen)
        if len(self._buffer) + len(seen) > MAX_BUFFERED or self._buffered_bytes + size > self.buffer_size:
            self._overflow = True
            self._buffer.clear()
            self._buffered_bytes = 0
            return
        self._buffer.extend(seen)
        self._buffered_bytes += size

    def _answer_all(self, answer: Answer) -> None:
        while self._waiters:
            fut, _ = self._waiters.popleft()
            if not fut.done():
                fut.set_result(answer)

    # -- inotify -------------------------------------------------------------------------------
    def _add(self, path: str, rel: str) -> int:
        if len(self._rel) >= MAX_SUBTREE_WATCHES:
            self._overflow = True
            return -1
        wd = self._add_watch(path, _MASK)
        if wd >= 0:
            self._rel[wd] = rel
        return wd

    def _add_watch(self, path: str, mask: int) -> int:
        """The watch descriptor, or -1 if the path cannot be watched (gone, not a folder,
        the user's watch limit reached): a watch missed only means changes not reported."""
        try:
            return self._inotify.add_watch(path, mask)
        except OSError:
            return -1

    def _path(self, rel: str) -> str:
        base = f"/proc/self/fd/{self._root_fd}"
        return os.path.join(base, *rel.split("\\")) if rel else base

    def _entries(self, rel: str) -> list[tuple[str, bool]]:
        """(name, is a directory) of each entry of the directory ``rel``; none if it is gone."""
        try:
            with os.scandir(self._path(rel)) as it:
                return [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        except OSError:
            return []

    def _add_subtree(self, rel: str, report: Callable[[str, bool], None] | None = None) -> None:
        """Watch every directory below ``rel``; ``report`` is told of each entry found (a
        directory made just now may have gained entries before its watch existed)."""
        for name, is_dir in self._entries(rel):
            sub = _join(rel, name)
            if report is not None:
                report(sub, is_dir)
            if is_dir:
                self._add(self._path(sub), sub)
                self._add_subtree(sub, report)

    def _watch_stream_folder(self, rel: str, report: list[RawEvent] | None = None) -> None:
        """Watch the stream folder of the file ``rel`` if it has one not yet watched; with
        ``report``, what is in it already is reported as added (the folder is new)."""
        folder = self._streams.folder_path(self._path(rel))
        if (folder is None or folder in self._stream_folders.values()
                or len(self._rel) + len(self._stream_wds) >= MAX_SUBTREE_WATCHES):
            return
        wd = self._add_watch(folder, IN_CREATE | IN_DELETE | IN_MODIFY | IN_MOVED_FROM | IN_MOVED_TO | IN_ONLYDIR)
        if wd < 0:
            return
        self._stream_wds[wd] = rel
        self._stream_folders[wd] = folder
        if report is not None:
            try:
                report += [RawEvent(rel, IN_CREATE, 0, name, streams_of=True) for name in os.listdir(folder)]
            except OSError:
                pass

    def _watch_stream_folders(self, rel: str, recursive: bool) -> None:
        for name, is_dir in self._entries(rel):
            sub = _join(rel, name)
            self._watch_stream_folder(sub)
            if is_dir and recursive:
                self._watch_stream_folders(sub, recursive)

    def _watch_parent(self) -> None:
        try:
            parent = os.path.dirname(os.readlink(f"/proc/self/fd/{self._root_fd}"))
        except OSError:
            return
        wd = self._add_watch(parent, IN_DELETE | IN_MOVED_FROM | IN_ONLYDIR)
        self._parent_wd = wd if wd >= 0 else -1

    def _check_deleted(self) -> None:
        try:
            if os.fstat(self._root_fd).st_nlink == 0:
                self.directory_deleted()
                return
        except OSError:
            return
        self._watch_parent()  # moved: the new parent is the one to watch

    def _rename_subtree(self, old: str, new: str) -> None:
        for table in (self._rel, self._stream_wds):
            for wd, rel in list(table.items()):
                if rel == old or rel.startswith(old + "\\"):
                    table[wd] = new + rel[len(old):]

    def _readable(self) -> None:
        try:
            batch = self._inotify.read(timeout=0)  # what FIONREAD says is there; never blocks
        except OSError:
            self._overflow = True
            return
        if not batch:
            return  # nothing read: a held IN_MOVED_FROM keeps waiting for its pair
        events: list[RawEvent] = self._held
        self._held = []
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None
        found: list[tuple[str, bool]] = []  # entries of directories that appeared in the tree
        for wd, mask, cookie, name in batch:
            if mask & IN_Q_OVERFLOW:
                self._overflow = True
                continue
            if mask & IN_IGNORED:
                self._rel.pop(wd, None)
                self._stream_wds.pop(wd, None)
                self._stream_folders.pop(wd, None)
                continue
            if wd == self._root_wd and mask & IN_DELETE_SELF:
                self.directory_deleted()
                continue
            if wd == self._parent_wd and wd not in self._rel:
                self._check_deleted()
                continue
            stream_of = self._stream_wds.get(wd)
            if stream_of is not None:
                if name:
                    events.append(RawEvent(stream_of, mask, cookie, name, streams_of=True))
                continue
            rel = self._rel.get(wd)
            if rel is None or not name:
                continue
            events.append(RawEvent(rel, mask, cookie, name))
            if self._streams is not None and mask & (IN_ATTRIB | IN_CREATE | IN_MOVED_TO):
                # A folder found through the id's IN_ATTRIB is new: its streams were just added.
                # A file moved in brings its streams along: nothing to report for them.
                self._watch_stream_folder(_join(rel, name), events if mask & IN_ATTRIB else None)
            if mask & IN_MOVED_TO and not mask & IN_ISDIR:
                moved = next((e for e in events if e.mask & IN_MOVED_FROM and e.cookie == cookie), None)
                if moved is not None:  # a file renamed in the tree: its stream folder follows
                    self._rename_subtree(_join(moved.rel, moved.name), _join(rel, name))
            if self.recursive and mask & IN_ISDIR and mask & IN_MOVED_TO:
                moved = next((e for e in events if e.mask & IN_MOVED_FROM and e.cookie == cookie), None)
                if moved is not None:  # renamed inside the tree: its watches keep going
                    self._rename_subtree(_join(moved.rel, moved.name), _join(rel, name))
                    continue
            if self.recursive and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                sub = _join(rel, name)
                if self._add(self._path(sub), sub) >= 0:
                    self._add_subtree(sub, lambda n, d: found.append((n, d)))
        if events and events[-1].mask & IN_MOVED_FROM and not self._overflow:
            # Its IN_MOVED_TO may be in the next read: hold it a moment.
            self._held = [events.pop()]
            self._held_timer = self._loop.call_later(UNPAIRED_MOVE_WAIT, self._flush_held)
        self._apply(events, found)

    def _apply(self, events: list[RawEvent], found: list[tuple[str, bool]] = ()) -> None:
        if self._overflow:
            # Changes were lost: the next answer says "enumerate again" (3.3.5.19).
            self._buffer.clear()
            self._buffered_bytes = 0
            if self._waiters:
                self._answer_all(Answer(NtStatus.NOTIFY_ENUM_DIR))
                self._overflow = False
            return
        for group in changes_for(events):
            self._deliver(group)
        for rel, is_dir in found:
            self._deliver([Change(ACTION_ADDED, rel, CHANGE_DIR_NAME if is_dir else CHANGE_FILE_NAME)])

    def _flush_held(self) -> None:
        self._held_timer = None
        held, self._held = self._held, []
        if held and not self.closed:
            self._apply(held)

    # -- the end of the watch ------------------------------------------------------------------
    def directory_deleted(self) -> None:
        """The directory is deleted (or delete-pending): every request now gets DELETE_PENDING.
        Safe from any thread."""
        def on_loop() -> None:
            if self._gone is None:
                self._gone = NtStatus.DELETE_PENDING
                self._answer_all(Answer(NtStatus.DELETE_PENDING))
        if self._on_loop_thread():
            on_loop()
        else:
            self._loop.call_soon_threadsafe(on_loop)

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def close(self) -> None:
        """Safe from any thread: the handle may be closed on an I/O thread."""
        if self.closed:
            return
        self.closed = True
        try:
            self._loop.call_soon_threadsafe(self._close_on_loop)
        except RuntimeError:  # the loop is gone (shutdown): nothing to unregister from
            self._inotify.close()
            os.close(self._root_fd)

    def _close_on_loop(self) -> None:
        if self._held_timer is not None:
            self._held_timer.cancel()
        self._loop.remove_reader(self._fd)
        self._inotify.close()
        os.close(self._root_fd)
        self._answer_all(Answer(NtStatus.NOTIFY_CLEANUP))
