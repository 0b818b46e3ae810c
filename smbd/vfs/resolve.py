"""Path resolution that can never leave the share root.

Two ways to the same answer:

* **Fast path**: one openat2(2) call with ``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`` on the
  share's root fd.  The kernel follows symlinks that stay inside and fails with EXDEV for any
  that would leave (including every absolute symlink), and ENOENT for names that differ only in
  case.
* **Slow path** (openat2 failed with ENOENT/EXDEV/ENOTDIR/ELOOP, or the kernel lacks it): a walk
  one component at a time.  Each component is looked up with ``fstatat(AT_SYMLINK_NOFOLLOW)``
  and opened with ``O_PATH | O_NOFOLLOW`` relative to the previous directory's fd; a symlink is
  read with readlinkat and its target is interpreted *here*, on a stack of directory fds: ``..``
  pops the stack (never below the root), an absolute target is accepted only when it lies under
  the root's real path.  The kernel never sees ``..`` or a multi-component path, so a concurrent
  rename or symlink swap cannot carry the walk outside.  The walk also does the case-insensitive
  fallback: when the exact name is missing it scans the directory for a ``casefold`` match.

Wide links: a symlink pointing outside the share (or nowhere) is treated as if the name did
not exist, as Samba does with ``wide links = no`` (its symlink-traversal test expects
STATUS_OBJECT_NAME_NOT_FOUND for the link itself and STATUS_OBJECT_PATH_NOT_FOUND for a path
through it).  That reveals nothing about the outside.
"""
from __future__ import annotations

import errno
import os
import stat
from collections import deque
from dataclasses import dataclass

from smbd.status import NtStatus, SmbError

from . import syscalls
from .names import check_component

MAX_SYMLINK_HOPS = 40
O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_FAST_PATH_FALLBACK = frozenset({errno.ENOENT, errno.EXDEV, errno.ENOTDIR, errno.ELOOP, errno.EAGAIN})
_RESOLVE = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_MAGICLINKS


@dataclass(slots=True)
class Walked:
    """Result of a walk: the parent directory (an O_PATH fd the caller must close), the real
    on-disk names leading to it, the final entry's real name (the client's spelling when it does
    not exist) and its lstat (None when it does not exist)."""

    parent_fd: int
    parent_names: tuple[str, ...]
    # name is "." when the path ends on parent_fd's directory itself (a link to "." or "..").
    name: str
    st: os.stat_result | None


class _NotFound(Exception):
    """Internal: the walk hit a missing, non-directory or out-of-share component."""


class BeneathResolver:
    """Resolves component tuples below ``root_fd`` (an O_PATH directory fd it does not own)."""

    def __init__(self, root_fd: int, root_real_path: str, *, use_openat2: bool | None = None,
                 case_insensitive: bool = True):
        self.root_fd = root_fd
        self.case_insensitive = case_insensitive
        self.root_real_path = root_real_path.rstrip("/") or "/"
        self.use_openat2 = syscalls.HAVE_OPENAT2 if use_openat2 is None else use_openat2

    # -- fast path ---------------------------------------------------------------------------
    def open_beneath(self, components: tuple[str, ...], flags: int) -> int | None:
        """openat2 of the whole path; None means "take the slow path" (including ENOSYS)."""
        if not self.use_openat2:
            return None
        for c in components:
            check_component(c)
        path = "/".join(components) if components else "."
        try:
            return syscalls.openat2(self.root_fd, path, flags | os.O_CLOEXEC, 0, _RESOLVE)
        except OSError as e:
            if e.errno == errno.ENOSYS:
                self.use_openat2 = False  # old kernel: stop trying
                return None
            if e.errno in _FAST_PATH_FALLBACK:
                return None
            raise

    # -- slow path ---------------------------------------------------------------------------
    def match_name(self, dirfd: int, name: str) -> tuple[str, os.stat_result] | None:
        """The entry called ``name`` in ``dirfd``: exact hit first, then a casefold scan."""
        try:
            return name, os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            if not self.case_insensitive:
                return None
        wanted = name.casefold()
        try:
            scan_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError:
            return None
        try:
            with os.scandir(scan_fd) as it:
                candidates = sorted(e.name for e in it if e.name.casefold() == wanted)
        finally:
            os.close(scan_fd)
        for real in candidates:
            try:
                return real, os.stat(real, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
        return None

    def _open_root(self) -> int:
        return os.open(".", O_PATH_DIR, dir_fd=self.root_fd)

    def _absolute_target(self, target: str) -> list[str]:
        """Components (relative to the root) of an absolute symlink target under the root."""
        root = self.root_real_path
        norm = os.path.normpath(target)
        if root == "/":
            rel = norm.lstrip("/")
        elif norm == root:
            rel = ""
        elif norm.startswith(root + "/"):
            rel = norm[len(root) + 1:]
        else:
            raise _NotFound("absolute symlink outside the share")
        return [p for p in rel.split("/") if p]

    def walk(self, components: tuple[str, ...], *, follow_final: bool) -> Walked:
        """Resolve ``components`` one by one (see the module docstring).

        Every component but the last must resolve to a directory inside the share, else
        STATUS_OBJECT_PATH_NOT_FOUND.  The last may be missing (``Walked.st is None``).  With
        ``follow_final`` a final symlink is followed; if its target is missing or outside the
        share the result is STATUS_OBJECT_NAME_NOT_FOUND.
        """
        for c in components:
            check_component(c)
        if not components:
            raise ValueError("walk() needs at least one component")
        # Each pending item: (name, spelled_by_client).  Only the client's spelling gets the
        # case-insensitive fallback; symlink targets are POSIX names, matched exactly.
        pending: deque[tuple[str, bool]] = deque((c, True) for c in components)
        fds = [self._open_root()]
        names: list[str] = []
        hops = 0
        in_final_link = False  # resolving the target of the client's final component
        try:
            while True:
                comp, from_client = pending.popleft()
                is_last = not pending
                if comp == "..":  # only ever from a symlink target: parse_name removed the rest
                    if len(fds) == 1:
                        raise _NotFound("symlink climbs above the share root")
                    os.close(fds.pop())
                    names.pop()
                    comp = "."
                if comp in ("", "."):
                    if is_last:
                        # The path ends on the directory we stand in: report it as "." inside
                        # itself, which openat/fstatat understand.
                        return self._result(fds, names, ".", os.fstat(fds[-1]))
                    continue
                found = self.match_name(fds[-1], comp) if from_client else self._exact(fds[-1], comp)
                if found is None:
                    if is_last and not in_final_link:
                        return self._result(fds, names, comp, None)
                    raise _NotFound(comp)
                real, st = found
                if stat.S_ISLNK(st.st_mode):
                    if is_last and not follow_final:
                        return self._result(fds, names, real, st)
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise _NotFound("too many symlinks")
                    target = os.readlink(real, dir_fd=fds[-1])
                    if is_last:
                        in_final_link = True
                    if target.startswith("/"):
                        parts = self._absolute_target(target)
                        for fd in fds[1:]:
                            os.close(fd)
                        del fds[1:]
                        names.clear()
                    else:
                        parts = target.split("/")
                    if not parts:
                        parts = ["."]
                    pending.extendleft((p, False) for p in reversed(parts))
                    continue
                if is_last:
                    return self._result(fds, names, real, st)
                if not stat.S_ISDIR(st.st_mode):
                    raise _NotFound("not a directory")
                fds.append(self._open_dir_nofollow(fds[-1], real))
                names.append(real)
        except _NotFound:
            for fd in fds:
                os.close(fd)
            raise SmbError(
                NtStatus.OBJECT_NAME_NOT_FOUND if in_final_link else NtStatus.OBJECT_PATH_NOT_FOUND
            ) from None
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    @staticmethod
    def _exact(dirfd: int, name: str) -> tuple[str, os.stat_result] | None:
        if "\0" in name:
            return None
        try:
            return name, os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None

    @staticmethod
    def _open_dir_nofollow(dirfd: int, name: str) -> int:
        """Open a directory we just lstat'ed; O_NOFOLLOW plus the fstat check catch a swap to a
        symlink or a file between the two calls."""
        try:
            fd = os.open(name, O_PATH_DIR | os.O_NOFOLLOW, dir_fd=dirfd)
        except (FileNotFoundError, NotADirectoryError):
            raise _NotFound(name) from None
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            raise _NotFound(name)
        return fd

    @staticmethod
    def _result(fds: list[int], names: list[str], name: str, st: os.stat_result | None) -> Walked:
        parent = fds.pop()
        for fd in fds:
            os.close(fd)
        return Walked(parent, tuple(names), name, st)

    def open_dir(self, components: tuple[str, ...]) -> tuple[int, tuple[str, ...] | None]:
        """O_PATH fd of the directory ``components`` (followed through inside links), plus its
        real names when the slow path computed them.  Missing -> OBJECT_PATH_NOT_FOUND."""
        fd = self.open_beneath(components, O_PATH_DIR)
        if fd is not None:
            return fd, None
        if not components:
            return self._open_root(), ()
        try:
            w = self.walk(components, follow_final=True)
        except SmbError as e:
            raise SmbError(NtStatus.OBJECT_PATH_NOT_FOUND) from e
        if w.name == "." and w.st is not None:
            return w.parent_fd, w.parent_names
        try:
            if w.st is None or not stat.S_ISDIR(w.st.st_mode):
                raise SmbError(NtStatus.OBJECT_PATH_NOT_FOUND)
            try:
                fd = self._open_dir_nofollow(w.parent_fd, w.name)
            except _NotFound:
                raise SmbError(NtStatus.OBJECT_PATH_NOT_FOUND) from None
            return fd, w.parent_names + (w.name,)
        finally:
            os.close(w.parent_fd)

    def real_names_of(self, fd: int) -> tuple[str, ...] | None:
        """The names from the root to the object ``fd`` refers to (via /proc), or None when it
        is not under the root any more."""
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        try:
            return tuple(self._absolute_target(path))
        except _NotFound:
            return None
