"""Narrowing a CREATE's access by the file's stored DACL (a subset of MS-DTYP 2.5.3.2).

This is deliberately not a Windows access-check engine: enforcement stays with POSIX
permissions (each user's own, smbd.identity) and the share's maximal access. What this adds: when a
client has stored a DACL on a file, an open of that file gets only the rights the DACL also
grants, so a client that locks a file down (an empty DACL, an ACE list without write) sees
the opens it forbade refused, as against Windows or Samba, and the MxAc create context
reports the narrowed rights. It can only take rights away; with no stored DACL, or a NULL
DACL, nothing changes.

The token of a session: Everyone, Authenticated Users and BUILTIN\\Users (Everyone and
Anonymous for an anonymous session; Everyone and BUILTIN\\Guests for a guest), plus the
Unix user and groups the operation runs as on disk (S-1-22-1-<uid>, S-1-22-2-<gid>, as
Samba names Unix accounts): the session's own account (smbd.identity), or the server
process's with ``unix_identity = "daemon"``. So a DACL naming one user's S-1-22-1 SID tells
users apart, and the owner of the files a user creates (the POSIX owner) is that user, who
keeps the owner's implicit READ_CONTROL and WRITE_DAC.

Not evaluated (known simplifications): domain SIDs (smbdd's users have only their Unix
account's); DELETE and FILE_READ_ATTRIBUTES, which Windows also grants through the parent's FILE_DELETE_CHILD /
FILE_LIST_DIRECTORY (smbdd's parents grant those unless a client stored a DACL on them,
which is not looked at here); object and callback ACEs; privileges.
"""
from __future__ import annotations

import os

from smbd import identity
from smbd.status import NtStatus, SmbError
from smbd.vfs.errors import translate_oserror
from smbd.wire.create import Access, map_generic

from .sd import AceFlags, AceType, Acl, SecurityDescriptor
from .sid import (ANONYMOUS, AUTHENTICATED_USERS, BUILTIN_GUESTS, BUILTIN_USERS, EVERYONE, OWNER_RIGHTS, Sid,
                  unix_group, unix_user)
from .store import load_stored

ALL_RIGHTS = 0xFFFFFFFF
OWNER_IMPLICIT = Access.READ_CONTROL | Access.WRITE_DAC
# Rights that come from the parent directory in MS-FSA 2.1.5.1.2.1; see the module docstring.
_PARENT_GRANTED = Access.DELETE | Access.FILE_READ_ATTRIBUTES


def session_token(*, anonymous: bool = False, guest: bool = False) -> frozenset[Sid]:
    if anonymous:
        groups = {EVERYONE, ANONYMOUS}
    elif guest:
        groups = {EVERYONE, BUILTIN_GUESTS}
    else:
        groups = {EVERYONE, AUTHENTICATED_USERS, BUILTIN_USERS}
    creds = identity.thread_credentials()  # the session's Unix account, when files are its (smbd.identity)
    if creds is not None:
        return frozenset(groups | {unix_user(creds.uid)} | {unix_group(g) for g in (creds.gid, *creds.groups)})
    return frozenset(groups | {unix_user(os.geteuid()), unix_group(os.getegid())})


def dacl_rights(dacl: Acl | None, owner: Sid | None, token: frozenset[Sid]) -> int:
    """The rights ``dacl`` grants ``token`` (the MAXIMUM_ALLOWED walk of MS-DTYP 2.5.3.2):
    ACEs in order, a right decided by the first ACE that names it. A NULL DACL grants all."""
    if dacl is None:
        return ALL_RIGHTS
    is_owner = owner is not None and owner in token
    effective = [a for a in dacl.aces if a.sid is not None and not a.flags & AceFlags.INHERIT_ONLY]
    granted = denied = 0
    # The owner may always read and change the DACL, unless an OWNER RIGHTS ACE says
    # otherwise (MS-DTYP 2.5.3.2).
    if is_owner and not any(a.sid == OWNER_RIGHTS for a in effective):
        granted = OWNER_IMPLICIT
    for ace in effective:
        applies = ace.sid in token or (ace.sid == OWNER_RIGHTS and is_owner)
        if not applies:
            continue
        mask = map_generic(ace.mask)
        if ace.ace_type == AceType.ACCESS_ALLOWED:
            granted |= mask & ~denied
        elif ace.ace_type == AceType.ACCESS_DENIED:
            denied |= mask & ~granted
    return granted


def narrow(sd: SecurityDescriptor | None, access: int, desired: int, token: frozenset[Sid],
           default_owner: Sid | None, *, truncate: bool = False) -> int:
    """The access a CREATE of an existing file keeps under the stored descriptor ``sd``.

    ``access`` is what the share and POSIX allow (already expanded), ``desired`` the
    client's DesiredAccess. Explicitly asked-for rights the DACL withholds fail the open
    with ACCESS_DENIED; MAXIMUM_ALLOWED keeps what both allow, and fails if that is nothing.
    Overwriting or superseding (``truncate``) needs FILE_WRITE_DATA from the DACL whatever
    was asked for (smbtorture smb2.acls.OVERWRITE_READ_ONLY_FILE)."""
    if sd is None or not sd.dacl_present:
        return access
    allowed = dacl_rights(sd.dacl, sd.owner or default_owner, token) | _PARENT_GRANTED
    explicit = map_generic(desired & ~Access.MAXIMUM_ALLOWED)
    if truncate and not allowed & Access.FILE_WRITE_DATA:
        raise SmbError(NtStatus.ACCESS_DENIED, "the file's DACL does not allow overwriting it")
    if explicit & ~allowed:
        raise SmbError(NtStatus.ACCESS_DENIED, "the file's DACL withholds the access asked for")
    if desired & Access.MAXIMUM_ALLOWED:
        access &= allowed
        if not access:
            raise SmbError(NtStatus.ACCESS_DENIED, "the file's DACL grants nothing")
    return access


@translate_oserror()
def narrow_by_stored_dacl(fd: int, access: int, desired: int, *, anonymous: bool = False,
                          guest: bool = False, truncate: bool = False) -> int:
    """``narrow`` for an open file descriptor (blocking: call on an I/O thread)."""
    sd = load_stored(fd)
    if sd is None or not sd.dacl_present:
        return access
    owner = sd.owner or unix_user(os.fstat(fd).st_uid)
    return narrow(sd, access, desired, session_token(anonymous=anonymous, guest=guest), owner, truncate=truncate)


@translate_oserror()
def maximal_access(fd: int, share_maximal: int, *, anonymous: bool = False, guest: bool = False) -> int:
    """The MxAc create context's MaximalAccess (MS-SMB2 2.2.14.2.5) for an open file: the
    share's maximal access, narrowed by the file's stored DACL as ``narrow`` does."""
    sd = load_stored(fd)
    if sd is None or not sd.dacl_present:
        return share_maximal
    owner = sd.owner or unix_user(os.fstat(fd).st_uid)
    allowed = dacl_rights(sd.dacl, owner, session_token(anonymous=anonymous, guest=guest)) | _PARENT_GRANTED
    return share_maximal & allowed
