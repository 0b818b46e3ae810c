"""A minimal self-relative SECURITY_DESCRIPTOR for QUERY_INFO (SMB2_0_INFO_SECURITY).

Layout (MS-DTYP 2.4.6): Revision (1), Sbz1 (0), Control (SE_SELF_RELATIVE, plus
SE_DACL_PRESENT when a DACL is returned), then the offsets of Owner, Group, Sacl and Dacl from
the start of the descriptor (0 = absent), followed by those parts.  SIDs are MS-DTYP 2.4.2.2
(IdentifierAuthority big-endian, SubAuthorities little-endian), the ACL is MS-DTYP 2.4.5 with
one ACCESS_ALLOWED_ACE (MS-DTYP 2.4.4.2).

Owner and group are the Unix ids as Samba shows unmapped ones: S-1-22-1-<uid> and
S-1-22-2-<gid> ("Unix User" / "Unix Group" authority 22).  The DACL grants Everyone (S-1-1-0)
FILE_ALL_ACCESS: the real check is the Unix permission check the kernel does on every open.
"""
from __future__ import annotations

import struct

from .constants import FILE_ALL_ACCESS

OWNER_SECURITY_INFORMATION = 0x00000001
GROUP_SECURITY_INFORMATION = 0x00000002
DACL_SECURITY_INFORMATION = 0x00000004
SACL_SECURITY_INFORMATION = 0x00000008

SE_DACL_PRESENT = 0x0004
SE_SELF_RELATIVE = 0x8000

ACCESS_ALLOWED_ACE_TYPE = 0x00
OBJECT_INHERIT_ACE = 0x01
CONTAINER_INHERIT_ACE = 0x02
ACL_REVISION = 2

_SD_HEAD = struct.Struct("<BBHIIII")   # 20 bytes
_ACL_HEAD = struct.Struct("<BBHHH")    # 8 bytes
_ACE_HEAD = struct.Struct("<BBHI")     # AceType, AceFlags, AceSize, Mask

SID_EVERYONE = "S-1-1-0"


def encode_sid(sid: str) -> bytes:
    """Binary SID (MS-DTYP 2.4.2.2) from its string form "S-1-<authority>-<sub>..."."""
    parts = sid.split("-")
    if len(parts) < 3 or parts[0].upper() != "S":
        raise ValueError(f"not a SID: {sid!r}")
    revision, authority = int(parts[1]), int(parts[2])
    subs = [int(p) for p in parts[3:]]
    if len(subs) > 15:
        raise ValueError("a SID has at most 15 sub-authorities")
    return (struct.pack("<BB", revision, len(subs)) + authority.to_bytes(6, "big")
            + struct.pack(f"<{len(subs)}I", *subs))


def unix_user_sid(uid: int) -> str:
    return f"S-1-22-1-{uid}"


def unix_group_sid(gid: int) -> str:
    return f"S-1-22-2-{gid}"


def _allow_everyone_acl(inherit: bool) -> bytes:
    sid = encode_sid(SID_EVERYONE)
    flags = (OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE) if inherit else 0
    ace = _ACE_HEAD.pack(ACCESS_ALLOWED_ACE_TYPE, flags, _ACE_HEAD.size + len(sid),
                         FILE_ALL_ACCESS) + sid
    return _ACL_HEAD.pack(ACL_REVISION, 0, _ACL_HEAD.size + len(ace), 1, 0) + ace


def build_security_descriptor(uid: int, gid: int, additional_information: int, *,
                              is_dir: bool = False) -> bytes:
    """Self-relative SECURITY_DESCRIPTOR holding the parts ``additional_information`` asks for
    (OWNER 1, GROUP 2, DACL 4; SACL 8 is answered with no SACL: we keep none).  For a
    directory the ACE is marked object- and container-inherit, as Windows shows it."""
    control = SE_SELF_RELATIVE
    body = bytearray()
    offsets = {"owner": 0, "group": 0, "dacl": 0}

    def add(key: str, blob: bytes) -> None:
        offsets[key] = _SD_HEAD.size + len(body)
        body.extend(blob)

    if additional_information & OWNER_SECURITY_INFORMATION:
        add("owner", encode_sid(unix_user_sid(uid)))
    if additional_information & GROUP_SECURITY_INFORMATION:
        add("group", encode_sid(unix_group_sid(gid)))
    if additional_information & DACL_SECURITY_INFORMATION:
        control |= SE_DACL_PRESENT
        add("dacl", _allow_everyone_acl(is_dir))
    head = _SD_HEAD.pack(1, 0, control, offsets["owner"], offsets["group"], 0, offsets["dacl"])
    return head + bytes(body)
