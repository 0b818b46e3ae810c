"""SID: the binary form (MS-DTYP 2.4.2.2) and the string form (MS-DTYP 2.4.2.1).

Binary layout: Revision (1 byte, always 1), SubAuthorityCount (1 byte, at most 15),
IdentifierAuthority (6 bytes, big-endian), then SubAuthorityCount little-endian ULONGs.
No I/O here.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

SID_REVISION = 1
MAX_SUB_AUTHORITIES = 15
_HEAD = struct.Struct("<BB6s")  # Revision, SubAuthorityCount, IdentifierAuthority


class SecurityFormatError(ValueError):
    """A security descriptor, ACL, ACE or SID is malformed (the caller answers
    STATUS_INVALID_SECURITY_DESCR, or INVALID_PARAMETER for a create context)."""


@dataclass(frozen=True, slots=True)
class Sid:
    """SID, MS-DTYP 2.4.2.2."""

    authority: int
    sub_authorities: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        return _HEAD.size + 4 * len(self.sub_authorities)

    def pack(self) -> bytes:
        return (_HEAD.pack(SID_REVISION, len(self.sub_authorities), self.authority.to_bytes(6, "big"))
                + struct.pack(f"<{len(self.sub_authorities)}I", *self.sub_authorities))

    @classmethod
    def parse(cls, buf: memoryview | bytes, offset: int = 0, limit: int | None = None) -> "Sid":
        """The SID at ``offset``; it must end at or before ``limit`` (default: the buffer's end)."""
        end = len(buf) if limit is None else limit
        if offset < 0 or offset + _HEAD.size > end:
            raise SecurityFormatError("SID header outside the buffer")
        revision, count, authority = _HEAD.unpack_from(buf, offset)
        if revision != SID_REVISION:
            raise SecurityFormatError(f"SID revision {revision}")
        if count > MAX_SUB_AUTHORITIES:
            raise SecurityFormatError(f"SID with {count} sub-authorities")
        start = offset + _HEAD.size
        if start + 4 * count > end:
            raise SecurityFormatError("SID sub-authorities outside the buffer")
        subs = struct.unpack_from(f"<{count}I", buf, start)
        return cls(int.from_bytes(authority, "big"), tuple(subs))

    @classmethod
    def from_string(cls, text: str) -> "Sid":
        """``S-1-<authority>-<sub>...``; the authority may be decimal or 0x-hex (2.4.2.1)."""
        parts = text.strip().split("-")
        if len(parts) < 3 or parts[0].upper() != "S" or parts[1] != "1":
            raise SecurityFormatError(f"not a SID: {text!r}")
        try:
            authority = int(parts[2], 16) if parts[2].lower().startswith("0x") else int(parts[2])
            subs = tuple(int(p) for p in parts[3:])
        except ValueError as e:
            raise SecurityFormatError(f"not a SID: {text!r}") from e
        if not 0 <= authority < 1 << 48 or len(subs) > MAX_SUB_AUTHORITIES \
                or any(not 0 <= s < 1 << 32 for s in subs):
            raise SecurityFormatError(f"SID out of range: {text!r}")
        return cls(authority, subs)

    def __str__(self) -> str:
        # 2.4.2.1: authorities of 2^32 and above are written in hex.
        auth = str(self.authority) if self.authority < 1 << 32 else f"0x{self.authority:012X}"
        return "-".join(["S-1", auth, *map(str, self.sub_authorities)])


# Well-known SIDs (MS-DTYP 2.4.2.4) used by the synthesised descriptor and the token.
EVERYONE = Sid(1, (0,))                      # S-1-1-0
CREATOR_OWNER = Sid(3, (0,))                 # S-1-3-0
CREATOR_GROUP = Sid(3, (1,))                 # S-1-3-1
AUTHENTICATED_USERS = Sid(5, (11,))          # S-1-5-11
BUILTIN_USERS = Sid(5, (32, 545))            # S-1-5-32-545
BUILTIN_GUESTS = Sid(5, (32, 546))           # S-1-5-32-546
ANONYMOUS = Sid(5, (7,))                     # S-1-5-7
OWNER_RIGHTS = Sid(3, (4,))                  # S-1-3-4


def unix_user(uid: int) -> Sid:
    """S-1-22-1-<uid>: how Samba shows a Unix user with no Windows mapping."""
    return Sid(22, (1, uid))


def unix_group(gid: int) -> Sid:
    """S-1-22-2-<gid>: how Samba shows a Unix group with no Windows mapping."""
    return Sid(22, (2, gid))
