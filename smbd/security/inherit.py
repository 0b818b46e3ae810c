"""The DACL a new file or directory inherits from its parent's stored DACL (a subset of
MS-DTYP 2.5.3.4.2, ComputeInheritedACLfromParent). No I/O here.

A file takes the parent's OBJECT_INHERIT ACEs; a directory takes the CONTAINER_INHERIT ones
(effective, and still inheritable unless NO_PROPAGATE_INHERIT) and keeps the
OBJECT_INHERIT-only ones as inherit-only ACEs, for the files that will be created in it.
Inherited ACEs are marked INHERITED only when the parent's DACL is auto-inherited
(SE_DACL_AUTO_INHERITED), as Windows does (smbtorture smb2.acls.INHERITANCE). CREATOR OWNER
and CREATOR GROUP become the new object's owner and group, and GENERIC_* rights are
expanded, in the effective copies; a directory also keeps the original as an inherit-only
ACE so that it goes on being inherited.

Simplifications: only the DACL is inherited (SACLs need privileges no client has here);
an explicit DACL in the CREATE's SecD context replaces inheritance instead of being merged
with it; object ACEs are not inherited.
"""
from __future__ import annotations

from dataclasses import replace

from smbd.wire.create import map_generic

from .sd import Acl, Ace, AceFlags, Control, SecurityDescriptor
from .sid import CREATOR_GROUP, CREATOR_OWNER, Sid

_GENERIC = 0xF0000000


def _effective(ace: Ace, owner: Sid, group: Sid | None, flags: int) -> Ace:
    sid = owner if ace.sid == CREATOR_OWNER else group if ace.sid == CREATOR_GROUP and group else ace.sid
    return replace(ace, flags=flags, sid=sid, mask=map_generic(ace.mask))


def _needs_split(ace: Ace) -> bool:
    """An ACE whose effective copy differs from what the children must inherit."""
    return ace.sid in (CREATOR_OWNER, CREATOR_GROUP) or bool(ace.mask & _GENERIC)


def inherited_aces(parent: Acl, *, is_dir: bool, owner: Sid, group: Sid | None,
                   mark: int = 0) -> list[Ace]:
    """``mark`` is INHERITED when the parent's DACL is auto-inherited, else 0."""
    out: list[Ace] = []
    for ace in parent.aces:
        if ace.sid is None or ace.object_part:
            continue
        oi, ci = ace.flags & AceFlags.OBJECT_INHERIT, ace.flags & AceFlags.CONTAINER_INHERIT
        no_propagate = ace.flags & AceFlags.NO_PROPAGATE_INHERIT
        audit_flags = (ace.flags & (AceFlags.SUCCESSFUL_ACCESS | AceFlags.FAILED_ACCESS)) | mark
        if not is_dir:
            if oi:
                out.append(_effective(ace, owner, group, audit_flags))
            continue
        if ci:
            if no_propagate:
                out.append(_effective(ace, owner, group, audit_flags))
            elif _needs_split(ace):
                out.append(_effective(ace, owner, group, audit_flags))
                out.append(replace(ace, flags=ace.flags | AceFlags.INHERIT_ONLY | mark))
            else:
                out.append(replace(ace, flags=(ace.flags & ~AceFlags.INHERIT_ONLY) | mark))
        elif oi and not no_propagate:
            out.append(replace(ace, flags=ace.flags | AceFlags.INHERIT_ONLY | mark))
    return out


def inherited_descriptor(parent: SecurityDescriptor | None, *, is_dir: bool, owner: Sid,
                         group: Sid | None) -> SecurityDescriptor | None:
    """The DACL-only descriptor a new object gets from ``parent`` (its stored descriptor),
    or None when nothing is inheritable (the object then keeps its POSIX default)."""
    if parent is None or not parent.dacl_present or parent.dacl is None:
        return None
    auto = bool(parent.control & Control.DACL_AUTO_INHERITED)
    aces = inherited_aces(parent.dacl, is_dir=is_dir, owner=owner, group=group,
                          mark=AceFlags.INHERITED if auto else 0)
    if not aces:
        return None
    control = Control.SELF_RELATIVE | Control.DACL_PRESENT
    if auto:
        control |= Control.DACL_AUTO_INHERITED
    return SecurityDescriptor(control, dacl=Acl(tuple(aces), parent.dacl.revision))
