"""The POSIX VFS backend: one :class:`Share` per exported directory.

Synchronous and thread-safe: the worker calls these methods from its I/O threads.  A Share holds
only its root directory fd (O_PATH, opened once); every operation opens what it needs relative
to that fd through :class:`~smbd.vfs.resolve.BeneathResolver`, so no path string is ever
resolved by the kernel from "/" and nothing can escape the root.

File data is never copied in user space here: reads land in the caller's memoryview (the
shared-memory pool, later) with preadv(2); writes go out of the caller's buffer with pwritev(2).

Errors: every method raises :class:`~smbd.status.SmbError` with the NTSTATUS a Windows server
would give (table in :mod:`smbd.vfs.errors`).
"""
from __future__ import annotations

import errno
import os
import stat
import time

from smbd.fscc.constants import FileAttributes
from smbd.fscc.time import filetime_to_unix_ns, unix_ns_to_filetime
from smbd.status import NtStatus, SmbError

from . import metadata, syscalls
from .errors import translate_oserror
from .names import parse_name, parse_stream_name
from .resolve import O_PATH_DIR, BeneathResolver
from .streams import DEPOT_NAME, StreamDepot
from .types import DirEntry, FileInfo, FsInfo

_OPEN_COMMON = os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class OpenedFile:
    """An open file or directory: a real fd (O_RDWR / O_RDONLY; directories
    O_RDONLY|O_DIRECTORY) plus the client's components and whether this open created it.

    ``close()`` is idempotent; the object is also a context manager.
    """

    __slots__ = ("fd", "components", "created", "is_dir", "writable")

    def __init__(self, fd: int, components: tuple[str, ...], *, created: bool, is_dir: bool,
                 writable: bool):
        self.fd = fd
        self.components = components
        self.created = created
        self.is_dir = is_dir
        self.writable = writable

    @property
    def name(self) -> str:
        return self.components[-1] if self.components else ""

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> "OpenedFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenedFile(fd={self.fd}, name={'/'.join(self.components)!r}, dir={self.is_dir})"


# statfs(2) f_type of the file systems whose file data always sits in memory.
_MEMORY_FS_MAGIC = (0x01021994, 0x858458F6)  # TMPFS_MAGIC, RAMFS_MAGIC (linux/magic.h)


def _fs_magic(fd: int) -> int:
    """statfs(2) f_type of the file system holding ``fd`` (0 if unknown). Python's os has
    no statfs; f_type is the first field of struct statfs on Linux."""
    import ctypes

    buf = ctypes.create_string_buffer(256)  # larger than struct statfs on any Linux ABI
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.fstatfs(fd, buf) != 0:
            return 0
    except (OSError, AttributeError):
        return 0
    return ctypes.c_long.from_buffer(buf).value


class Share:
    """A directory exported over SMB.

    ``fs_type`` is the name FileFsAttributeInformation reports; Samba's default ("NTFS") is
    what Windows applications expect.  ``case_sensitive=True`` turns off the case-insensitive
    fallback (a directory scan on every miss, which costs O(entries) per create in a big
    directory), like Samba's ``case sensitive = yes``.
    """

    parse_name = staticmethod(parse_name)
    parse_stream_name = staticmethod(parse_stream_name)

    def __init__(self, root: str, *, read_only: bool = False, fs_type: str = "NTFS",
                 case_sensitive: bool = False, use_openat2: bool | None = None):
        self.read_only = read_only
        self.fs_type = fs_type
        self.root_fd = os.open(root, O_PATH_DIR)
        real = os.path.realpath(root)
        self._root_st = os.fstat(self.root_fd)
        self._resolver = BeneathResolver(self.root_fd, real, use_openat2=use_openat2,
                                         case_insensitive=not case_sensitive)
        # How pread_cached may read on the event loop: memory file systems always (a read
        # is a copy from RAM), others with RWF_NOWAIT until the file system refuses it.
        # Decided by the root's file system: one mounted inside the share counts as its root.
        self._memory_fs = _fs_magic(self.root_fd) in _MEMORY_FS_MAGIC
        self._nowait_reads = True
        #: Named streams (smbd.vfs.streams): ``streams.supported`` is False where the file
        #: system keeps no user xattrs, and then no stream can be created.
        self.streams = StreamDepot(self.root_fd, real)

    def stat_parent(self, components: tuple[str, ...]) -> os.stat_result:
        """The directory holding ``components`` (not the share root itself)."""
        fd, _ = self._path_fd(tuple(components[:-1]))
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def check_entry(self) -> None:
        """That the calling thread's user (smbd.identity) may search and list the share's
        root, as Samba's chdir into it as the user checks. The directories above it are
        the server's business: the root itself is opened as the server, once."""
        with translate_oserror():
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.root_fd)
        os.close(fd)

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        fd, self.root_fd = self.root_fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> "Share":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers -----------------------------------------------------------------------------
    def _guard(self, components: tuple[str, ...]) -> None:
        """The stream depot is the server's: no client name may reach it."""
        if self.streams.is_reserved(components):
            raise SmbError(NtStatus.ACCESS_DENIED, "a name reserved by the server")

    def _refuse_depot_fd(self, fd: int) -> None:
        """A link inside the share that leads into the stream depot reads as absent."""
        if self.streams.holds(fd):
            os.close(fd)
            raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "a link into the stream depot")

    def _check_writable(self) -> None:
        if self.read_only:
            raise SmbError(NtStatus.ACCESS_DENIED, "read-only share")

    def _is_root(self, st: os.stat_result) -> bool:
        return st.st_dev == self._root_st.st_dev and st.st_ino == self._root_st.st_ino

    def _path_fd(self, components: tuple[str, ...]) -> tuple[int, str]:
        """O_PATH fd of the object named by ``components`` (following inside links) and the name
        to report for it.  Missing -> OBJECT_NAME_NOT_FOUND / OBJECT_PATH_NOT_FOUND."""
        name = components[-1] if components else ""
        self._guard(components)
        with translate_oserror():
            if not components:
                return os.open(".", O_PATH_DIR, dir_fd=self.root_fd), name
            fd = self._resolver.open_beneath(components, os.O_PATH)
            if fd is None:
                w = self._resolver.walk(components, follow_final=True)
                try:
                    if w.st is None:
                        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)
                    fd = self._open_nofollow(w.parent_fd, w.name, os.O_PATH)
                finally:
                    os.close(w.parent_fd)
            if stat.S_ISLNK(os.fstat(fd).st_mode):  # swapped in after the walk looked
                os.close(fd)
                raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)
            self._refuse_depot_fd(fd)
            return fd, name

    @staticmethod
    def _open_nofollow(dirfd: int, name: str, flags: int, mode: int = 0) -> int:
        """openat with O_NOFOLLOW; a symlink swapped in since the walk looked reads as absent."""
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dirfd)
        except OSError as e:
            if e.errno == errno.ELOOP or (e.errno == errno.ENOTDIR and flags & os.O_DIRECTORY
                                          and stat.S_ISLNK(os.stat(name, dir_fd=dirfd,
                                                                   follow_symlinks=False).st_mode)):
                raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "symlink appeared") from None
            raise

    @staticmethod
    def _reopen(path_fd: int, flags: int) -> int:
        """Turn an O_PATH fd into a real one through its /proc magic link (we made that link,
        so following it is safe; permissions are checked again by this open)."""
        return os.open(f"/proc/self/fd/{path_fd}", flags | _OPEN_COMMON)

    # -- queries -----------------------------------------------------------------------------
    def lookup(self, components: tuple[str, ...]) -> FileInfo | None:
        """FileInfo of an existing object, None when the last component does not exist.

        A missing directory on the way is STATUS_OBJECT_PATH_NOT_FOUND; a symlink leading
        outside the share counts as missing.
        """
        try:
            fd, name = self._path_fd(components)
        except SmbError as e:
            if e.status == NtStatus.OBJECT_NAME_NOT_FOUND:
                return None
            raise
        try:
            with translate_oserror():
                return metadata.info_for_path_fd(fd, name)
        finally:
            os.close(fd)

    def stat_fd(self, fd: int, name: str = "") -> FileInfo:
        """FileInfo of an open fd (``name`` decides only the dot-file HIDDEN bit)."""
        with translate_oserror():
            return metadata.info_for_fd(fd, name)

    def real_names(self, fd: int) -> tuple[str, ...] | None:
        """The on-disk names from the share root to the open object (their case as stored), or
        None when it is no longer under the root (FileNormalizedNameInformation)."""
        return self._resolver.real_names_of(fd)

    def statvfs(self) -> FsInfo:
        """Volume sizes for FileFsSizeInformation / FileFsFullSizeInformation (MS-FSCC 2.5)."""
        with translate_oserror():
            vfs = os.fstatvfs(self.root_fd)
        unit = vfs.f_frsize or vfs.f_bsize or 4096
        bytes_per_sector = 512
        serial = (self._root_st.st_dev ^ (self._root_st.st_ino << 7)) & 0xFFFFFFFF
        return FsInfo(
            total_units=vfs.f_blocks,
            caller_available_units=vfs.f_bavail,
            actual_available_units=vfs.f_bfree,
            sectors_per_unit=max(1, unit // bytes_per_sector),
            bytes_per_sector=bytes_per_sector,
            serial_number=serial,
            max_name_length=min(vfs.f_namemax or 255, 255),
            fs_type=self.fs_type,
        )

    def volume_creation_time(self) -> int:
        """FILETIME for FileFsVolumeInformation: the root directory's creation time."""
        with translate_oserror():
            fd = os.open(".", _DIR_FLAGS, dir_fd=self.root_fd)
        try:
            return metadata.info_for_fd(fd, "").creation_time
        finally:
            os.close(fd)

    # -- open / create -----------------------------------------------------------------------
    def open(
        self,
        components: tuple[str, ...],
        *,
        create: bool,
        exclusive: bool,
        truncate: bool,
        directory: bool | None,
        write: bool,
        mode: int = 0o644,
        dir_mode: int = 0o755,
    ) -> OpenedFile:
        """Open (and maybe create) a file or directory.

        ``directory``: True = must be a directory (STATUS_NOT_A_DIRECTORY otherwise), False = must
        not be (STATUS_FILE_IS_A_DIRECTORY), None = either.  ``create`` makes a missing object
        (a directory when ``directory`` is True); ``exclusive`` fails with
        STATUS_OBJECT_NAME_COLLISION when it exists; ``truncate`` empties an existing file.
        """
        if (create or write or truncate) and self.read_only:
            raise SmbError(NtStatus.ACCESS_DENIED, "read-only share")
        self._guard(components)
        for attempt in range(3):
            try:
                return self._open_once(components, create=create, exclusive=exclusive,
                                       truncate=truncate, directory=directory, write=write,
                                       mode=mode, dir_mode=dir_mode)
            except _RaceRetry:
                continue
        raise SmbError(NtStatus.SHARING_VIOLATION, "name keeps changing under us")

    def _open_once(self, components, *, create, exclusive, truncate, directory, write, mode,
                   dir_mode) -> OpenedFile:
        if not components:
            if exclusive:
                raise SmbError(NtStatus.OBJECT_NAME_COLLISION)
            if directory is False:
                raise SmbError(NtStatus.FILE_IS_A_DIRECTORY)
            with translate_oserror():
                fd = os.open(".", _DIR_FLAGS, dir_fd=self.root_fd)
            return OpenedFile(fd, (), created=False, is_dir=True, writable=False)

        path_fd: int | None = None
        created = False
        with translate_oserror():
            if not exclusive:
                path_fd = self._resolver.open_beneath(components, os.O_PATH)
            if path_fd is None:
                w = self._resolver.walk(components, follow_final=True)
                try:
                    if w.st is not None:
                        if exclusive:
                            raise SmbError(NtStatus.OBJECT_NAME_COLLISION)
                        path_fd = self._open_nofollow(w.parent_fd, w.name, os.O_PATH)
                    elif not create:
                        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)
                    else:
                        path_fd = self._create(w.parent_fd, w.name, directory=bool(directory),
                                               mode=mode, dir_mode=dir_mode)
                        created = True
                finally:
                    os.close(w.parent_fd)
        try:
            return self._finish_open(path_fd, components, created=created, truncate=truncate,
                                     directory=directory, write=write)
        finally:
            os.close(path_fd)

    def _create(self, parent_fd: int, name: str, *, directory: bool, mode: int,
                dir_mode: int) -> int:
        """Create ``name`` in ``parent_fd`` and return an O_PATH fd to it.  Where statx keeps no
        birth time, the creation time is stamped in our xattr so that it survives later
        metadata changes; where it does (ext4, xfs, btrfs, tmpfs) nothing is written, so a
        plain create changes nothing a change-notify watcher sees but the new name (MS-SMB2
        CHANGE_NOTIFY reports ADDED only: smbtorture smb2.notify.valid-req, mask)."""
        try:
            if directory:
                os.mkdir(name, dir_mode, dir_fd=parent_fd)
                fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
            else:
                fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW
                             | _OPEN_COMMON, mode, dir_fd=parent_fd)
        except FileExistsError:
            raise _RaceRetry() from None  # someone created it since the walk: start again
        try:
            if syscalls.birth_time_ns(fd) is None:
                metadata.store_birth_time(fd, unix_ns_to_filetime(os.fstat(fd).st_mtime_ns))
            return os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
        finally:
            os.close(fd)

    def _finish_open(self, path_fd: int, components, *, created: bool, truncate: bool,
                     directory: bool | None, write: bool) -> OpenedFile:
        if self.streams.holds(path_fd):
            raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "a link into the stream depot")
        with translate_oserror():
            st = os.fstat(path_fd)
            if stat.S_ISLNK(st.st_mode):  # O_PATH|O_NOFOLLOW met a symlink swapped in late
                raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)
            is_dir = stat.S_ISDIR(st.st_mode)
            if is_dir:
                if directory is False:
                    raise SmbError(NtStatus.FILE_IS_A_DIRECTORY)
                if truncate:
                    raise SmbError(NtStatus.INVALID_PARAMETER, "overwrite of a directory")
                fd = self._reopen(path_fd, os.O_RDONLY | os.O_DIRECTORY)
                return OpenedFile(fd, components, created=created, is_dir=True, writable=False)
            if not stat.S_ISREG(st.st_mode):
                # FIFOs, sockets and device nodes are not files an SMB client can use; we
                # never open them (opening a device can have side effects).
                raise SmbError(NtStatus.ACCESS_DENIED, "not a regular file")
            if directory:
                raise SmbError(NtStatus.NOT_A_DIRECTORY)
            flags = os.O_RDWR if (write or truncate) else os.O_RDONLY
            fd = self._reopen(path_fd, flags)
            try:
                if truncate and not created:
                    os.ftruncate(fd, 0)
            except BaseException:
                os.close(fd)
                raise
            return OpenedFile(fd, components, created=created, is_dir=False,
                              writable=flags == os.O_RDWR)

    # -- data --------------------------------------------------------------------------------
    @staticmethod
    def pread_into(fd: int, buf: memoryview, offset: int) -> int:
        """Read into ``buf`` from ``offset`` until it is full or EOF; returns bytes read."""
        total = 0
        want = len(buf)
        with translate_oserror():
            while total < want:
                n = os.preadv(fd, [buf[total:]], offset + total)
                if n == 0:
                    break
                total += n
        return total

    def pread_cached(self, fd: int, buf: memoryview, offset: int) -> tuple[int, bool]:
        """Read what is in memory, without ever waiting for a disk.

        The event loop may call this: a cached read costs microseconds, where handing it to an
        I/O thread and back costs two thread wake-ups (hundreds of microseconds under the
        lab's emulation). On a memory file system (tmpfs, ramfs) everything is in memory;
        elsewhere preadv2(RWF_NOWAIT) fails with EAGAIN instead of blocking. Returns (bytes
        read, finished): finished is False when the rest would need the disk, or the file
        system does not take RWF_NOWAIT (then it is not tried again), and must go to
        :meth:`pread_into` on a helper thread from ``offset + bytes read``."""
        if self._memory_fs:
            return self.pread_into(fd, buf, offset), True
        if not self._nowait_reads:
            return 0, False
        total = 0
        want = len(buf)
        with translate_oserror():
            while total < want:
                try:
                    n = os.preadv(fd, [buf[total:]], offset + total, os.RWF_NOWAIT)
                except (BlockingIOError, InterruptedError):
                    return total, False
                except OSError as e:
                    if e.errno == errno.EOPNOTSUPP:
                        self._nowait_reads = False
                        return total, False
                    raise
                if n == 0:
                    break
                total += n
        return total, True

    @staticmethod
    def pwrite(fd: int, data: memoryview | bytes, offset: int) -> int:
        """Write all of ``data`` at ``offset``; returns the byte count."""
        view = memoryview(data)
        total = 0
        with translate_oserror():
            while total < len(view):
                total += os.pwritev(fd, [view[total:]], offset + total)
        return total

    @staticmethod
    def fsync(fd: int) -> None:
        with translate_oserror():
            os.fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        """Set the end of file (FileEndOfFileInformation)."""
        self._check_writable()
        if size < 0:
            raise SmbError(NtStatus.INVALID_PARAMETER, "negative size")
        with translate_oserror():
            os.ftruncate(fd, size)

    def allocate(self, fd: int, size: int) -> None:
        """FileAllocationInformation: MS-FSA 2.1.5.14.1 truncates the file when the new
        allocation is below the end of file; otherwise blocks are reserved without changing the
        size (ignored where the filesystem can't)."""
        self._check_writable()
        if size < 0:
            raise SmbError(NtStatus.INVALID_PARAMETER, "negative size")
        with translate_oserror():
            if size < os.fstat(fd).st_size:
                os.ftruncate(fd, size)
                return
            if size == 0:
                return
            try:
                syscalls.fallocate_keep_size(fd, 0, size)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise

    # -- metadata ----------------------------------------------------------------------------
    def set_times(self, fd: int, atime_ns: int | None = None, mtime_ns: int | None = None, *,
                  creation_time: int | None = None) -> None:
        """Set access/write times (Unix ns; None = leave) and the creation time (a FILETIME,
        kept in our xattr; silently not kept where xattrs are unsupported).

        The change time (ctime) cannot be set on Linux: it is the inode's own clock and moves on
        every change, which is what ChangeTime means anyway.
        """
        self._check_writable()
        with translate_oserror():
            if atime_ns is not None or mtime_ns is not None:
                syscalls.futimens(fd, atime_ns, mtime_ns)
            if creation_time is not None:
                metadata.store_birth_time(fd, creation_time)

    def set_basic_info(self, fd: int, *, creation_time: int = 0, last_access_time: int = 0,
                       last_write_time: int = 0, attributes: int = 0) -> None:
        """Apply FileBasicInformation values as the client sent them (FILETIMEs; 0 and -1 mean
        "leave unchanged" per MS-FSCC 2.4.7; attributes 0 means unchanged)."""
        def keep(t: int) -> bool:
            return t in (0, -1, 0xFFFFFFFFFFFFFFFF, -2, 0xFFFFFFFFFFFFFFFE)

        atime = None if keep(last_access_time) else filetime_to_unix_ns(last_access_time)
        mtime = None if keep(last_write_time) else filetime_to_unix_ns(last_write_time)
        btime = None if keep(creation_time) else creation_time
        if atime is not None or mtime is not None or btime is not None:
            self.set_times(fd, atime, mtime, creation_time=btime)
        if attributes:
            self.set_dos_attributes(fd, attributes)

    def set_dos_attributes(self, fd: int, attributes: int) -> None:
        """Keep the settable FILE_ATTRIBUTE_* bits in our xattr.  Without xattr support only
        READONLY survives, mapped to the owner's write permission."""
        self._check_writable()
        with translate_oserror():
            if metadata.store_dos_attributes(fd, attributes):
                return
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if attributes & FileAttributes.READONLY:
                mode &= ~0o222
            else:
                mode |= stat.S_IWUSR
            os.fchmod(fd, mode)

    # -- namespace changes -------------------------------------------------------------------
    def _walk_existing(self, components: tuple[str, ...]):
        """Walk to an existing final entry without following a final symlink (delete and rename
        act on the link itself)."""
        if not components:
            raise SmbError(NtStatus.ACCESS_DENIED, "the share root")
        self._guard(components)
        with translate_oserror():
            w = self._resolver.walk(components, follow_final=False)
        if w.st is None or self.streams.holds(w.parent_fd):
            os.close(w.parent_fd)
            raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)
        return w

    def unlink(self, components: tuple[str, ...]) -> None:
        self._check_writable()
        w = self._walk_existing(components)
        try:
            if stat.S_ISDIR(w.st.st_mode):
                raise SmbError(NtStatus.FILE_IS_A_DIRECTORY)
            with translate_oserror():
                os.unlink(w.name, dir_fd=w.parent_fd)
        finally:
            os.close(w.parent_fd)

    def rmdir(self, components: tuple[str, ...]) -> None:
        self._check_writable()
        w = self._walk_existing(components)
        try:
            if not stat.S_ISDIR(w.st.st_mode):
                raise SmbError(NtStatus.NOT_A_DIRECTORY)
            with translate_oserror():
                os.rmdir(w.name, dir_fd=w.parent_fd)
        finally:
            os.close(w.parent_fd)

    def rename(self, src: tuple[str, ...], dst: tuple[str, ...], *, replace: bool) -> None:
        """Rename within the share (FileRenameInformation, MS-FSA 2.1.5.14.11).

        Without ``replace`` an existing target (also one differing only in case) is
        STATUS_OBJECT_NAME_COLLISION, checked atomically with renameat2(RENAME_NOREPLACE).
        A rename that only changes the case of the name is allowed.  Replacing a directory is
        STATUS_ACCESS_DENIED, as MS-FSA requires.
        """
        self._check_writable()
        if not dst:
            raise SmbError(NtStatus.OBJECT_NAME_INVALID, "rename onto the share root")
        self._guard(dst)
        s = self._walk_existing(src)
        try:
            with translate_oserror():
                d = self._resolver.walk(dst, follow_final=False)
            try:
                if self.streams.holds(d.parent_fd):
                    raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "a link into the stream depot")
                new_name = dst[-1]
                if d.name == ".":
                    raise SmbError(NtStatus.OBJECT_NAME_COLLISION)
                if d.st is not None:
                    same = (d.st.st_dev, d.st.st_ino) == (s.st.st_dev, s.st.st_ino)
                    if same and d.name == new_name:
                        return  # renaming to itself: nothing to do
                    if not same:
                        if not replace:
                            raise SmbError(NtStatus.OBJECT_NAME_COLLISION)
                        if stat.S_ISDIR(d.st.st_mode):
                            raise SmbError(NtStatus.ACCESS_DENIED, "target is a directory")
                        with translate_oserror():
                            syscalls.renameat2(s.parent_fd, s.name, d.parent_fd, d.name, 0)
                        if d.name == new_name:
                            return
                        # Replaced "foo" for a request naming "FOO": now give it the asked case.
                        s_parent, s_name = d.parent_fd, d.name
                    else:
                        s_parent, s_name = s.parent_fd, s.name  # case-only rename
                else:
                    s_parent, s_name = s.parent_fd, s.name
                with translate_oserror():
                    self._rename_noreplace(s_parent, s_name, d.parent_fd, new_name)
            finally:
                os.close(d.parent_fd)
        finally:
            os.close(s.parent_fd)

    @staticmethod
    def _rename_noreplace(sfd: int, sname: str, dfd: int, dname: str) -> None:
        try:
            syscalls.renameat2(sfd, sname, dfd, dname, syscalls.RENAME_NOREPLACE)
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise SmbError(NtStatus.OBJECT_NAME_COLLISION) from None
            if e.errno not in (errno.EINVAL, errno.ENOSYS):
                raise
            # The filesystem can't do RENAME_NOREPLACE (e.g. some network filesystems): check and
            # rename, accepting the small race that leaves.
            try:
                os.stat(dname, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
                return
            raise SmbError(NtStatus.OBJECT_NAME_COLLISION) from None

    # -- directories -------------------------------------------------------------------------
    def _dir_fd(self, target) -> tuple[int, bool]:
        """(readable directory fd, whether we opened it and must close it)."""
        if isinstance(target, OpenedFile):
            if not target.is_dir:
                raise SmbError(NtStatus.INVALID_PARAMETER, "not a directory handle")
            return target.fd, False
        if isinstance(target, int):
            return target, False
        opened = self.open(tuple(target), create=False, exclusive=False, truncate=False,
                           directory=True, write=False)
        return opened.fd, True

    def list_dir(self, target: "OpenedFile | tuple[str, ...] | int", *,
                 include_dots: bool = False) -> list[DirEntry]:
        """The entries of a directory, in readdir order.

        With ``include_dots`` the list starts with "." and ".." as Windows returns them (".." of
        the share root describes the root itself: nothing above the share is shown).  A symlink
        is listed with what it points to when that is inside the share and is omitted when it
        points outside or nowhere; FIFOs, sockets and device nodes are omitted.
        """
        fd, owned = self._dir_fd(target)
        try:
            with translate_oserror():
                entries: list[DirEntry] = []
                if include_dots:
                    here = os.fstat(fd)
                    entries.append(DirEntry(".", metadata.info_for_fd(fd, ".")))
                    if self._is_root(here):
                        parent = metadata.info_for_fd(fd, "..")
                    else:
                        parent = metadata.info_at(fd, "..")
                    entries.append(DirEntry("..", parent))
                dir_names: tuple[str, ...] | None = None
                with os.scandir(fd) as it:
                    names = [e.name for e in it]
                if DEPOT_NAME in names and self._is_root(os.fstat(fd)):
                    names.remove(DEPOT_NAME)
                for name in names:
                    try:
                        info = metadata.info_at(fd, name)
                    except FileNotFoundError:
                        continue  # removed while we listed
                    ftype = stat.S_IFMT(info.mode)
                    if ftype == stat.S_IFLNK:
                        if dir_names is None:
                            dir_names = self._resolver.real_names_of(fd)
                            if dir_names is None:
                                continue
                        resolved = self._info_through_link(dir_names + (name,), name)
                        if resolved is None:
                            continue
                        info = resolved
                    elif ftype not in (stat.S_IFREG, stat.S_IFDIR):
                        continue
                    entries.append(DirEntry(name, info))
                return entries
        finally:
            if owned:
                os.close(fd)

    def _info_through_link(self, real_components: tuple[str, ...], name: str) -> FileInfo | None:
        """FileInfo of a symlink's target if it stays inside the share (else None)."""
        try:
            fd, _ = self._path_fd(real_components)
        except SmbError:
            return None
        try:
            st = os.fstat(fd)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                return None
            return metadata.info_for_path_fd(fd, name)
        finally:
            os.close(fd)

    def is_empty_dir(self, target: "OpenedFile | tuple[str, ...] | int") -> bool:
        fd, owned = self._dir_fd(target)
        try:
            with translate_oserror(), os.scandir(fd) as it:
                return next(iter(it), None) is None
        finally:
            if owned:
                os.close(fd)


class _RaceRetry(Exception):
    """Internal: the namespace changed between looking and acting; try the open again."""


def now_filetime() -> int:
    return unix_ns_to_filetime(time.time_ns())
