"""Named data streams (MS-FSA 2.1.1.3 "Stream"; names MS-FSCC 2.1.5.3), kept as files in a depot.

Why files and not extended attributes (Samba's streams_xattr): Linux caps one xattr value at
64 KiB and ext4 keeps all of an inode's xattrs in one 4 KiB block, so a Mac resource fork or an
application's large stream would not fit (on the ext4 of our machines a 64 KiB xattr already
fails with ENOSPC).  A stream kept as a file can be any size, and opening it gives a real file
descriptor: READ and WRITE (RDMA included), byte-range locks, share modes (OFD locks, so they
hold across workers) and kernel leases work on a stream exactly as on a file.

Layout.  The share's root holds one folder, :data:`DEPOT_NAME`, that no client can name, list
or reach through a link (:meth:`StreamDepot.is_reserved`, :meth:`StreamDepot.holds`).  A file
or directory with named streams carries the xattr ``user.smbdd.streams``: 16 random bytes that
name its own folder ``DEPOT/<2 hex>/<32 hex>/``, holding one regular file per stream, named as
the stream (the client's spelling kept, matched without regard to case as NTFS does).  As the
folder hangs off the inode, renames and hard links keep the streams with the file; a file with
no streams costs one getxattr when its streams are listed.  Deleting or superseding the file
through SMB deletes its folder.  A file deleted outside SMB leaves a folder nothing names; it is
never attached to another file (a new file has no id), only space until someone removes it.

The depot sits on the share's own file system so that stream bytes are quota'd, snapshotted and
backed up with the files they belong to.  Only files of the share get streams, so no stream
ever lives outside it; every name below the depot is ours or a validated stream name (one
component, no ``/``), opened relative to a folder fd with O_NOFOLLOW.

The depot belongs to the server process (folders 0700, stream files 0600): who may open a
stream is decided by its file's DACL and share modes, never by the depot's own permissions.
File operations run with each user's uid (smbd.identity); the depot's methods run as the server.

Blocking and thread-safe: the worker calls this from its I/O threads.  Errors are SmbError.
"""
from __future__ import annotations

import errno
import functools
import os
import secrets
import stat
from dataclasses import dataclass

from smbd import identity
from smbd.status import NtStatus, SmbError

from .errors import translate_oserror

DEPOT_NAME = ".smbdd-streams"
XATTR_STREAMS = "user.smbdd.streams"
_ID_BYTES = 16
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_FILE_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK
# errno values of getxattr/setxattr that mean "this file system keeps no user xattrs".
_NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP)


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One named stream of a file: its stored spelling and sizes (FileStreamInformation)."""

    name: str
    size: int
    allocation_size: int


@dataclass(slots=True)
class OpenedStream:
    """A named stream opened for a CREATE: its fd, the spelling stored, whether we made it."""

    fd: int
    name: str
    created: bool


def _casefold(name: str) -> str:
    return name.casefold()


def _as_server(method):
    """The depot is the server's, whoever's operation reaches it (smbd.identity)."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with identity.as_server():
            return method(*args, **kwargs)
    return wrapper


class StreamDepot:
    """The named streams of one share (see the module docstring)."""

    def __init__(self, root_fd: int, root_real: str):
        self._root_fd = root_fd
        self._depot_path = os.path.join(root_real, DEPOT_NAME)
        self.supported = self._probe()

    def _probe(self) -> bool:
        """Whether the share's file system keeps user xattrs (the folder ids live in one).
        Asking for an xattr nobody set answers ENODATA where they work; nothing is written."""
        try:
            os.getxattr(f"/proc/self/fd/{self._root_fd}", XATTR_STREAMS)
        except OSError as e:
            return e.errno not in _NO_XATTRS
        return True

    # -- keeping clients out ---------------------------------------------------------------------
    @staticmethod
    def is_reserved(components: tuple[str, ...]) -> bool:
        """Whether a client's name points into the depot (any case, as names resolve)."""
        return bool(components) and _casefold(components[0]) == _casefold(DEPOT_NAME)

    def holds(self, fd: int) -> bool:
        """Whether an fd some lookup produced is the depot or inside it: a symlink planted in the
        share could lead there, and the resolver follows links that stay inside the share."""
        if not self.supported:
            return False  # no streams, so no depot to reach
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False
        return path == self._depot_path or path.startswith(self._depot_path + "/")

    @_as_server
    def folder_path(self, path: str) -> str | None:
        """The path of the stream folder of the file at ``path`` (not followed if a link), if it
        has one: for change-notify watches of stream changes."""
        if not self.supported:
            return None
        try:
            folder_id = os.getxattr(path, XATTR_STREAMS, follow_symlinks=False)
        except OSError:
            return None
        if len(folder_id) != _ID_BYTES:
            return None
        hexid = folder_id.hex()
        return os.path.join(self._depot_path, hexid[:2], hexid)

    # -- a file's folder -------------------------------------------------------------------------
    @staticmethod
    def _folder_id(base_fd: int) -> bytes | None:
        try:
            value = os.getxattr(f"/proc/self/fd/{base_fd}", XATTR_STREAMS)
        except OSError as e:
            if e.errno in (errno.ENODATA, *_NO_XATTRS):
                return None
            raise
        return value if len(value) == _ID_BYTES else None

    def _open_folder(self, folder_id: bytes, create: bool) -> int | None:
        hexid = folder_id.hex()
        parts = (DEPOT_NAME, hexid[:2], hexid)
        fd = os.open(".", _DIR_FLAGS, dir_fd=self._root_fd)
        try:
            for part in parts:
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        return None
                    try:
                        os.mkdir(part, 0o700, dir_fd=fd)
                    except FileExistsError:
                        pass  # another worker made it meanwhile
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nxt
            result, fd = fd, -1
            return result
        finally:
            if fd >= 0:
                os.close(fd)

    @_as_server
    def folder(self, base_fd: int, *, create: bool = False) -> int | None:
        """An O_DIRECTORY fd of the file's stream folder; None if it has none (and not ``create``)."""
        if not self.supported:
            if create:
                raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "no named streams on this share")
            return None
        with translate_oserror():
            folder_id = self._folder_id(base_fd)
            if folder_id is not None:
                return self._open_folder(folder_id, create)
            if not create:
                return None
            return self._new_folder(base_fd)

    def _new_folder(self, base_fd: int) -> int:
        """Give the file a folder: made first, then named in the file's xattr, so that whoever
        sees the id (a change-notify watch reacts to the xattr's IN_ATTRIB) finds the folder.
        XATTR_CREATE makes workers racing here agree on one; the others remove theirs."""
        folder_id = secrets.token_bytes(_ID_BYTES)
        fd = self._open_folder(folder_id, True)
        try:
            os.setxattr(f"/proc/self/fd/{base_fd}", XATTR_STREAMS, folder_id, os.XATTR_CREATE)
            return fd
        except FileExistsError:
            os.close(fd)
            hexid = folder_id.hex()
            os.rmdir(os.path.join(DEPOT_NAME, hexid[:2], hexid), dir_fd=self._root_fd)
            existing = self._folder_id(base_fd)
            if existing is None:
                raise
            return self._open_folder(existing, True)
        except BaseException:
            os.close(fd)
            raise

    # -- streams of a file -----------------------------------------------------------------------
    @staticmethod
    def _find(folder_fd: int, name: str) -> str | None:
        """The stored spelling of ``name`` in a folder, matched without regard to case."""
        try:
            os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
            return name
        except FileNotFoundError:
            pass
        want = _casefold(name)
        for stored in os.listdir(folder_fd):
            if _casefold(stored) == want:
                return stored
        return None

    @_as_server
    def list(self, base_fd: int) -> list[StreamEntry]:
        """The named streams of a file, in no particular order."""
        folder = self.folder(base_fd)
        if folder is None:
            return []
        try:
            entries = []
            with translate_oserror():
                for name in os.listdir(folder):
                    try:
                        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # removed while we listed
                    if stat.S_ISREG(st.st_mode):
                        entries.append(StreamEntry(name, st.st_size, st.st_blocks * 512))
            return entries
        finally:
            os.close(folder)

    @_as_server
    def exists(self, base_fd: int, name: str) -> bool:
        folder = self.folder(base_fd)
        if folder is None:
            return False
        try:
            with translate_oserror():
                return self._find(folder, name) is not None
        finally:
            os.close(folder)

    @_as_server
    def open(self, base_fd: int, name: str, *, create: bool, exclusive: bool, write: bool,
             truncate: bool) -> OpenedStream:
        """Open (and maybe create) the named stream of an open file.  ``create`` makes a missing
        one; ``exclusive`` fails with OBJECT_NAME_COLLISION if it exists; a missing stream
        without ``create`` is OBJECT_NAME_NOT_FOUND."""
        folder = self.folder(base_fd, create=create)
        if folder is None:
            raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)
        try:
            with translate_oserror():
                stored = self._find(folder, name)
                flags = (os.O_RDWR if write or truncate else os.O_RDONLY) | _FILE_FLAGS
                if stored is not None:
                    if exclusive:
                        raise SmbError(NtStatus.OBJECT_NAME_COLLISION)
                    fd = os.open(stored, flags, dir_fd=folder)
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        os.close(fd)
                        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)
                    if truncate:
                        os.ftruncate(fd, 0)
                    return OpenedStream(fd, stored, False)
                if not create:
                    raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)
                try:
                    fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=folder)
                except FileExistsError:
                    raise SmbError(NtStatus.OBJECT_NAME_COLLISION) from None
                return OpenedStream(fd, name, True)
        except SmbError as e:
            if isinstance(e.__cause__, OSError) and e.__cause__.errno == errno.ENAMETOOLONG:
                raise SmbError(NtStatus.OBJECT_NAME_INVALID, "stream name too long") from e
            raise
        finally:
            os.close(folder)

    @_as_server
    def remove(self, base_fd: int, name: str) -> None:
        """Delete one named stream (its last SMB handle closed with delete pending)."""
        folder = self.folder(base_fd)
        if folder is None:
            return
        try:
            with translate_oserror():
                stored = self._find(folder, name)
                if stored is not None:
                    os.unlink(stored, dir_fd=folder)
        finally:
            os.close(folder)

    @_as_server
    def rename(self, base_fd: int, old: str, new: str, *, replace: bool) -> str:
        """Rename a named stream of the file (MS-FSA 2.1.5.15.11.1); returns the new stored name.
        An existing target is OBJECT_NAME_COLLISION unless ``replace``; renaming a stream onto
        itself (any case) keeps it."""
        folder = self.folder(base_fd)
        if folder is None:
            raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)
        try:
            with translate_oserror():
                source = self._find(folder, old)
                if source is None:
                    raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)
                target = self._find(folder, new)
                if target is not None and _casefold(target) == _casefold(source):
                    target = None  # a change of case only
                if target is not None:
                    if not replace:
                        raise SmbError(NtStatus.OBJECT_NAME_COLLISION)
                    os.unlink(target, dir_fd=folder)
                if source != new:
                    os.rename(source, new, src_dir_fd=folder, dst_dir_fd=folder)
                return new
        finally:
            os.close(folder)

    @_as_server
    def remove_all(self, base_fd: int) -> None:
        """Delete every named stream of a file and its folder (the file is deleted, superseded
        or overwritten: MS-FSA 2.1.5.1.2.1 keeps only the unnamed stream)."""
        if not self.supported:
            return
        with translate_oserror():
            folder_id = self._folder_id(base_fd)
            if folder_id is None:
                return
            folder = self._open_folder(folder_id, create=False)
            if folder is not None:
                try:
                    for name in os.listdir(folder):
                        try:
                            os.unlink(name, dir_fd=folder)
                        except FileNotFoundError:
                            pass
                finally:
                    os.close(folder)
                hexid = folder_id.hex()
                try:
                    os.rmdir(os.path.join(DEPOT_NAME, hexid[:2], hexid), dir_fd=self._root_fd)
                except OSError as e:
                    if e.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                        raise
            try:
                os.removexattr(f"/proc/self/fd/{base_fd}", XATTR_STREAMS)
            except OSError as e:
                if e.errno not in (errno.ENODATA, *_NO_XATTRS):
                    raise
