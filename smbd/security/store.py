"""A file's security descriptor, kept in one extended attribute of the file.

Where: ``security.smbdd.sd`` when the server runs as root, ``user.smbdd.sd`` otherwise.
The ``security.`` namespace is writable only with CAP_SYS_ADMIN, so a local user of the
share's filesystem cannot forge or strip a descriptor there, while ``user.`` attributes can
be changed by anyone allowed to write the file (Samba's acl_xattr picks ``security.NTACL``
for the same reason). ext4 and tmpfs both take ``security.*`` from root (tmpfs before Linux
6.6 has no ``user.*`` at all); ext4 fits all of an inode's attributes in one block (4 KiB
by default), so a very large ACL fails with DISK_FULL or INSUFFICIENT_RESOURCES.

What: a version byte, then a self-relative descriptor holding only the parts a client set:
an owner or group that was never set is left out and keeps following the Unix owner; a
DACL is there only if DACL_PRESENT is set (possibly NULL). ``effective_descriptor``
overlays those parts on the POSIX-derived default (default.py).

The Unix owner never changes: a client's owner SID is stored, never chown'ed (the server
runs as root; honouring it would let any client give files away).
"""
from __future__ import annotations

import errno
import logging
import os
from typing import Callable

from smbd.status import NtStatus, SmbError
from smbd.vfs.errors import translate_oserror
from smbd.wire.create import map_generic

from .default import posix_descriptor
from .inherit import inherited_descriptor
from .sd import (SecurityDescriptor, SecurityInformation, given_parts, map_acl_generic, merge,
                 settle_auto_inherit)
from .sid import SecurityFormatError, unix_group, unix_user

log = logging.getLogger("smbd.security")

XATTR_NAME = "security.smbdd.sd" if os.geteuid() == 0 else "user.smbdd.sd"
_FORMAT_VERSION = b"\x01"
_NO_XATTR = {errno.ENOTSUP, errno.EOPNOTSUPP}
SECD_CONTEXT = b"SecD"  # SMB2_CREATE_SD_BUFFER, MS-SMB2 2.2.13.2


def load_stored(fd: int) -> SecurityDescriptor | None:
    """The parts a client stored, or None. A damaged attribute is logged and ignored, so the
    file falls back to its POSIX descriptor instead of becoming unreadable."""
    try:
        blob = os.getxattr(fd, XATTR_NAME)
    except OSError as e:
        if e.errno == errno.ENODATA or e.errno in _NO_XATTR:
            return None
        raise
    if not blob.startswith(_FORMAT_VERSION):
        log.warning("ignoring %s with unknown format %r", XATTR_NAME, blob[:1])
        return None
    try:
        return SecurityDescriptor.parse(memoryview(blob)[1:])
    except SecurityFormatError as e:
        log.warning("ignoring damaged %s: %s", XATTR_NAME, e)
        return None


def save_stored(fd: int, sd: SecurityDescriptor) -> None:
    try:
        os.setxattr(fd, XATTR_NAME, _FORMAT_VERSION + sd.pack())
    except OSError as e:
        if e.errno in _NO_XATTR:
            raise SmbError(NtStatus.NOT_SUPPORTED, "the share's filesystem has no extended attributes") from e
        if e.errno in (errno.E2BIG, errno.ERANGE):
            raise SmbError(NtStatus.INSUFFICIENT_RESOURCES, "security descriptor too large to store") from e
        raise


def effective_descriptor(fd: int, *, is_dir: bool) -> SecurityDescriptor:
    """The whole descriptor of the open file: stored parts over the POSIX default."""
    st = os.fstat(fd)
    base = posix_descriptor(st.st_uid, st.st_gid, is_dir=is_dir)
    stored = load_stored(fd)
    if stored is None:
        return base
    return merge(base, stored, given_parts(stored))


def set_descriptor(fd: int, new: SecurityDescriptor, info: int, *, from_client: bool = True) -> None:
    """Store the parts of ``new`` that ``info`` names, keeping the others (SET_INFO,
    MS-SMB2 3.3.5.21.3; MS-FSA 2.1.5.16). GENERIC_* rights in the ACEs are expanded to
    file rights first, as Windows and Samba store them; a client's auto-inherit bits are
    settled (sd.settle_auto_inherit)."""
    if from_client:
        new = settle_auto_inherit(new)
    info &= (SecurityInformation.OWNER | SecurityInformation.GROUP
             | SecurityInformation.DACL | SecurityInformation.SACL)
    if not info:
        return
    new = SecurityDescriptor(new.control, new.owner, new.group, map_acl_generic(new.sacl, map_generic),
                             map_acl_generic(new.dacl, map_generic), new.rm_control)
    stored = load_stored(fd) or SecurityDescriptor()
    save_stored(fd, merge(stored, new, info))


def parse_or_error(blob: bytes | memoryview, status: int) -> SecurityDescriptor:
    try:
        return SecurityDescriptor.parse(blob)
    except SecurityFormatError as e:
        raise SmbError(status, f"security descriptor: {e}") from e


def create_context_descriptor(contexts: dict[bytes, bytes]) -> SecurityDescriptor | None:
    """The SMB2_CREATE_SD_BUFFER context's descriptor (MS-SMB2 2.2.13.2), checked; a
    malformed one fails the CREATE with INVALID_PARAMETER, as Samba answers, one with a
    SACL with PRIVILEGE_NOT_HELD."""
    blob = contexts.get(SECD_CONTEXT)
    if blob is None:
        return None
    sd = parse_or_error(blob, NtStatus.INVALID_PARAMETER)
    if sd.sacl_present:
        # A SACL needs ACCESS_SYSTEM_SECURITY, i.e. SeSecurityPrivilege, which no client has.
        raise SmbError(NtStatus.PRIVILEGE_NOT_HELD, "a SACL in the SecD create context")
    return sd


def parent_stored(vfs, components: tuple[str, ...]) -> SecurityDescriptor | None:
    """The stored descriptor of the directory holding ``components`` (opened through the
    VFS, so the lookup stays beneath the share)."""
    if not components:
        return None
    parent = vfs.open(tuple(components[:-1]), create=False, exclusive=False, truncate=False,
                      directory=True, write=False)
    try:
        return load_stored(parent.fd)
    finally:
        parent.close()


@translate_oserror()
def secure_new_file(fd: int, contexts: dict[bytes, bytes], *, is_dir: bool,
                    parent: Callable[[], SecurityDescriptor | None]) -> None:
    """Give a newly created file its descriptor: the parts the SecD context carries
    (MS-SMB2 2.2.13.2; an empty descriptor sets nothing, smbtorture smb2.create.nulldacl),
    and, when it brings no DACL, the DACL inherited from the parent's stored one
    (inherit.py). With neither, nothing is stored and the POSIX default applies."""
    sd = create_context_descriptor(contexts)
    info = given_parts(sd) if sd is not None else 0
    if not info & SecurityInformation.DACL:
        parent_sd = parent()
        if parent_sd is not None:
            st = os.fstat(fd)
            owner = sd.owner if sd is not None and sd.owner is not None else unix_user(st.st_uid)
            group = sd.group if sd is not None and sd.group is not None else unix_group(st.st_gid)
            inherited = inherited_descriptor(parent_sd, is_dir=is_dir, owner=owner, group=group)
            if inherited is not None:
                set_descriptor(fd, inherited, SecurityInformation.DACL, from_client=False)
    if info:
        set_descriptor(fd, sd, info)
