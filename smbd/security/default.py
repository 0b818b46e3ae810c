"""The security descriptor of a file that has none stored (MS-DTYP 2.4.6 self-relative).

Owner and group are the Unix ids as Samba shows unmapped ones, S-1-22-1-<uid> and
S-1-22-2-<gid>; the DACL grants Everyone FILE_ALL_ACCESS (inheritable on a directory, as
Windows shows a directory's ACE), because the real check is the Unix permission check the
kernel makes on every open.
"""
from __future__ import annotations

from smbd.fscc.constants import FILE_ALL_ACCESS

from .sd import Acl, Ace, AceFlags, Control, SecurityDescriptor
from .sid import EVERYONE, unix_group, unix_user


def posix_descriptor(uid: int, gid: int, *, is_dir: bool) -> SecurityDescriptor:
    flags = (AceFlags.OBJECT_INHERIT | AceFlags.CONTAINER_INHERIT) if is_dir else 0
    dacl = Acl((Ace.allow(EVERYONE, FILE_ALL_ACCESS, flags),))
    return SecurityDescriptor(Control.SELF_RELATIVE | Control.DACL_PRESENT,
                              unix_user(uid), unix_group(gid), None, dacl)
