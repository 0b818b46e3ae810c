"""File operations as the session's Unix account: uid, gid and groups, per thread and per call.

A worker can serve several users (a client may set up sessions as different users), and its
I/O threads and event loop run requests of all of them, so the credentials cannot be the
process's. Linux checks file access against a thread's filesystem uid and gid and its
supplementary groups, and all three can be set per thread: setfsuid(2) and setfsgid(2) are
per thread by definition, and the raw setgroups system call changes only the calling
thread (glibc's setgroups() would signal every thread to follow, which is what we must
avoid). Samba switches the same three around each operation (become_user).

Changing the filesystem uid from 0 drops the capabilities that override file permissions
(CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_CHOWN, ...) from the thread's effective set, and changing
it back to 0 restores them (capabilities(7)), so the kernel enforces the user's POSIX
permissions and a file the user creates is theirs. CAP_SYS_ADMIN stays, so the security
descriptors smbd keeps in ``security.*`` xattrs are still written (smbd.security.store).

``run_as(creds, fn, ...)`` wraps one call; ``as_server()`` is for what smbd keeps for itself
inside a user's operation (the stream depot, smbd.vfs.streams). The request's credentials
travel in a context variable: set for each request's task (SmbConnection), read by
ServerState.io and brief_io on the loop and applied on whichever thread runs the call.
"""
from __future__ import annotations

import contextvars
import ctypes
import functools
import os
import platform
import pwd
import stat
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159}.get(platform.machine())


@dataclass(frozen=True)
class Credentials:
    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str

    @classmethod
    def of_account(cls, name: str) -> "Credentials | None":
        """The Unix account's uid, primary gid and every group it is a member of; None if
        the account does not exist."""
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            return None
        try:
            groups = tuple(os.getgrouplist(name, pw.pw_gid))
        except OSError:
            groups = (pw.pw_gid,)
        return cls(pw.pw_uid, pw.pw_gid, groups, name)


current: contextvars.ContextVar[Credentials | None] = contextvars.ContextVar("smbd_credentials", default=None)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setfsuid.argtypes = [ctypes.c_uint]
_libc.setfsgid.argtypes = [ctypes.c_uint]
_libc.syscall.restype = ctypes.c_long
_thread = threading.local()  # .creds: what this thread runs as now (None: the server's own)
_SERVER_UID, _SERVER_GID = os.geteuid(), os.getegid()
_SERVER_GROUPS = tuple(os.getgroups())


def supported() -> bool:
    """Only a root server can take on another account, on a machine whose setgroups
    system call number we know."""
    return _SERVER_UID == 0 and _SYS_SETGROUPS is not None


def _set_groups(groups: tuple[int, ...]) -> None:
    array = (ctypes.c_uint * max(1, len(groups)))(*groups)
    if _libc.syscall(_SYS_SETGROUPS, len(groups), array) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setgroups: {os.strerror(err)}")


def _switch(creds: Credentials | None) -> None:
    """Make this thread's filesystem identity ``creds`` (None: the server's own)."""
    if creds is None:
        _libc.setfsuid(_SERVER_UID)  # first: capabilities come back with fsuid 0
        _libc.setfsgid(_SERVER_GID)
        _set_groups(_SERVER_GROUPS)
    else:
        _set_groups(creds.groups)
        _libc.setfsgid(creds.gid)
        _libc.setfsuid(creds.uid)
    _thread.creds = creds


@contextmanager
def acting_as(creds: Credentials | None) -> Iterator[None]:
    before = getattr(_thread, "creds", None)
    if creds == before or not supported():
        yield
        return
    _switch(creds)
    try:
        yield
    finally:
        _switch(before)


def thread_credentials() -> Credentials | None:
    """Whom this thread acts as now (None: the server's own identity)."""
    return getattr(_thread, "creds", None)


def as_server() -> Any:
    """For smbd's own files inside a user's operation (the stream depot)."""
    return acting_as(None)


def _permits(creds: Credentials, st: os.stat_result, want: int) -> bool:
    """Whether the mode bits give ``creds`` all of ``want`` (rwx as 4/2/1), as the kernel
    decides it for an object without an access ACL."""
    if creds.uid == 0:
        return True
    if creds.uid == st.st_uid:
        bits = st.st_mode >> 6
    elif st.st_gid in creds.groups:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & want & 7 == want


def may_delete(creds: Credentials | None, directory: os.stat_result, target: os.stat_result) -> bool:
    """Whether ``creds`` may unlink or rename ``target`` out of ``directory``: write and search
    permission on the directory and, if it is sticky, owning one of the two (unlink(2)).
    Asked when an open asks for DELETE, as Windows checks it then and not at the delete
    (Samba's can_delete_file_in_directory)."""
    if creds is None:
        return True
    if not _permits(creds, directory, 0o3):
        return False
    return not directory.st_mode & stat.S_ISVTX or creds.uid in (0, directory.st_uid, target.st_uid)


def run_as(creds: Credentials | None, fn: Callable[..., Any], *args: Any) -> Any:
    if creds is None and getattr(_thread, "creds", None) is None:
        return fn(*args)
    with acting_as(creds):
        return fn(*args)


def bound(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` to run on another thread with the caller's request credentials."""
    creds = current.get()
    return functools.partial(run_as, creds, fn) if creds is not None else fn
