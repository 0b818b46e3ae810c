"""Self-relative SECURITY_DESCRIPTOR, ACL and ACE codec (MS-DTYP 2.4.6, 2.4.5, 2.4.4).

Parsing validates every offset and size against the buffer and raises
:class:`SecurityFormatError`; packing always produces the self-relative form with the parts
in the order Samba's NDR writes them (owner, group, SACL, DACL). ACEs keep every byte they
arrived with (object GUIDs, callback application data, padding inside AceSize), so what a
client stores is what it reads back. No I/O here.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, replace

from .sid import SecurityFormatError, Sid


class SecurityInformation(enum.IntFlag):
    """SECURITY_INFORMATION bits of AdditionalInformation (MS-DTYP 2.4.7)."""

    OWNER = 0x00000001
    GROUP = 0x00000002
    DACL = 0x00000004
    SACL = 0x00000008
    LABEL = 0x00000010


class Control(enum.IntFlag):
    """SECURITY_DESCRIPTOR Control bits (MS-DTYP 2.4.6)."""

    OWNER_DEFAULTED = 0x0001
    GROUP_DEFAULTED = 0x0002
    DACL_PRESENT = 0x0004
    DACL_DEFAULTED = 0x0008
    SACL_PRESENT = 0x0010
    SACL_DEFAULTED = 0x0020
    DACL_TRUSTED = 0x0040
    SERVER_SECURITY = 0x0080
    DACL_AUTO_INHERIT_REQ = 0x0100
    SACL_AUTO_INHERIT_REQ = 0x0200
    DACL_AUTO_INHERITED = 0x0400
    SACL_AUTO_INHERITED = 0x0800
    DACL_PROTECTED = 0x1000
    SACL_PROTECTED = 0x2000
    RM_CONTROL_VALID = 0x4000
    SELF_RELATIVE = 0x8000


# The control bits that travel with each part when a SET_INFO replaces only that part.
DACL_CONTROL = (Control.DACL_PRESENT | Control.DACL_DEFAULTED | Control.DACL_TRUSTED
                | Control.DACL_AUTO_INHERIT_REQ | Control.DACL_AUTO_INHERITED | Control.DACL_PROTECTED)
SACL_CONTROL = (Control.SACL_PRESENT | Control.SACL_DEFAULTED | Control.SACL_AUTO_INHERIT_REQ
                | Control.SACL_AUTO_INHERITED | Control.SACL_PROTECTED)


class AceType(enum.IntEnum):
    """ACE_HEADER AceType (MS-DTYP 2.4.4.1); only the ones this server looks inside."""

    ACCESS_ALLOWED = 0x00
    ACCESS_DENIED = 0x01
    SYSTEM_AUDIT = 0x02
    SYSTEM_ALARM = 0x03
    ACCESS_ALLOWED_OBJECT = 0x05
    ACCESS_DENIED_OBJECT = 0x06
    SYSTEM_AUDIT_OBJECT = 0x07
    SYSTEM_ALARM_OBJECT = 0x08
    ACCESS_ALLOWED_CALLBACK = 0x09
    ACCESS_DENIED_CALLBACK = 0x0A
    ACCESS_ALLOWED_CALLBACK_OBJECT = 0x0B
    ACCESS_DENIED_CALLBACK_OBJECT = 0x0C
    SYSTEM_AUDIT_CALLBACK = 0x0D
    SYSTEM_ALARM_CALLBACK = 0x0E
    SYSTEM_AUDIT_CALLBACK_OBJECT = 0x0F
    SYSTEM_ALARM_CALLBACK_OBJECT = 0x10
    SYSTEM_MANDATORY_LABEL = 0x11
    SYSTEM_RESOURCE_ATTRIBUTE = 0x12
    SYSTEM_SCOPED_POLICY_ID = 0x13


class AceFlags(enum.IntFlag):
    """ACE_HEADER AceFlags (MS-DTYP 2.4.4.1)."""

    OBJECT_INHERIT = 0x01
    CONTAINER_INHERIT = 0x02
    NO_PROPAGATE_INHERIT = 0x04
    INHERIT_ONLY = 0x08
    INHERITED = 0x10
    SUCCESSFUL_ACCESS = 0x40
    FAILED_ACCESS = 0x80


# Types laid out as Mask, [object Flags, ObjectType, InheritedObjectType], SID, [data].
_OBJECT_TYPES = {0x05, 0x06, 0x07, 0x08, 0x0B, 0x0C, 0x0F, 0x10}
_MASK_SID_TYPES = {0x00, 0x01, 0x02, 0x03, 0x09, 0x0A, 0x0D, 0x0E, 0x11, 0x12, 0x13} | _OBJECT_TYPES
ACE_OBJECT_TYPE_PRESENT = 0x1
ACE_INHERITED_OBJECT_TYPE_PRESENT = 0x2

_ACE_HEAD = struct.Struct("<BBH")       # AceType, AceFlags, AceSize
_ACL_HEAD = struct.Struct("<BBHHH")     # AclRevision, Sbz1, AclSize, AceCount, Sbz2
_SD_HEAD = struct.Struct("<BBHIIII")    # Revision, Sbz1, Control, OffsetOwner/Group/Sacl/Dacl
ACL_REVISION = 2
ACL_REVISION_DS = 4
SD_REVISION = 1
SD_HEADER_SIZE = _SD_HEAD.size


@dataclass(frozen=True, slots=True)
class Ace:
    """ACE (MS-DTYP 2.4.4): ACE_HEADER plus, for the known types, Mask and SID.

    ``object_part`` holds an object ACE's Flags and GUIDs (2.4.4.3), ``trailing`` whatever
    AceSize covers after the SID (callback application data, padding). For an ACE type
    this codec does not know, ``mask`` is 0, ``sid`` None and ``trailing`` the whole body."""

    ace_type: int
    flags: int
    mask: int = 0
    sid: Sid | None = None
    object_part: bytes = b""
    trailing: bytes = b""

    @classmethod
    def allow(cls, sid: Sid, mask: int, flags: int = 0) -> "Ace":
        return cls(AceType.ACCESS_ALLOWED, flags, mask, sid)

    @classmethod
    def deny(cls, sid: Sid, mask: int, flags: int = 0) -> "Ace":
        return cls(AceType.ACCESS_DENIED, flags, mask, sid)

    @property
    def size(self) -> int:
        body = len(self.object_part) + len(self.trailing)
        if self.sid is not None:
            body += 4 + self.sid.size
        return _ACE_HEAD.size + body

    def pack(self) -> bytes:
        size = self.size
        if size > 0xFFFF:
            raise SecurityFormatError("ACE larger than 64 KiB")
        head = _ACE_HEAD.pack(self.ace_type, self.flags, size)
        if self.sid is None:
            return head + self.trailing
        return head + struct.pack("<I", self.mask) + self.object_part + self.sid.pack() + self.trailing

    @classmethod
    def parse(cls, buf: memoryview | bytes, offset: int, limit: int) -> "Ace":
        if offset + _ACE_HEAD.size > limit:
            raise SecurityFormatError("ACE header outside the ACL")
        ace_type, flags, size = _ACE_HEAD.unpack_from(buf, offset)
        end = offset + size
        if size < _ACE_HEAD.size or end > limit:
            raise SecurityFormatError(f"AceSize {size} outside the ACL")
        pos = offset + _ACE_HEAD.size
        if ace_type not in _MASK_SID_TYPES:
            return cls(ace_type, flags, trailing=bytes(buf[pos:end]))
        if pos + 4 > end:
            raise SecurityFormatError("ACE too short for its mask")
        (mask,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        object_start = pos
        if ace_type in _OBJECT_TYPES:
            if pos + 4 > end:
                raise SecurityFormatError("object ACE too short for its flags")
            (object_flags,) = struct.unpack_from("<I", buf, pos)
            pos += 4
            pos += 16 * bool(object_flags & ACE_OBJECT_TYPE_PRESENT)
            pos += 16 * bool(object_flags & ACE_INHERITED_OBJECT_TYPE_PRESENT)
            if pos > end:
                raise SecurityFormatError("object ACE GUIDs outside the ACE")
        object_part = bytes(buf[object_start:pos])
        sid = Sid.parse(buf, pos, end)
        return cls(ace_type, flags, mask, sid, object_part, bytes(buf[pos + sid.size:end]))


@dataclass(frozen=True, slots=True)
class Acl:
    """ACL (MS-DTYP 2.4.5): header and AceCount ACEs. Packed with AclSize covering exactly
    the ACEs (a client's slack space after the last ACE is not kept)."""

    aces: tuple[Ace, ...] = ()
    revision: int = ACL_REVISION

    @property
    def size(self) -> int:
        return _ACL_HEAD.size + sum(a.size for a in self.aces)

    def pack(self) -> bytes:
        size = self.size
        if size > 0xFFFF:
            raise SecurityFormatError("ACL larger than 64 KiB")
        return (_ACL_HEAD.pack(self.revision, 0, size, len(self.aces), 0)
                + b"".join(a.pack() for a in self.aces))

    @classmethod
    def parse(cls, buf: memoryview | bytes, offset: int) -> "Acl":
        if offset < 0 or offset + _ACL_HEAD.size > len(buf):
            raise SecurityFormatError("ACL header outside the buffer")
        revision, _, size, count, _ = _ACL_HEAD.unpack_from(buf, offset)
        if revision not in (ACL_REVISION, 3, ACL_REVISION_DS):
            raise SecurityFormatError(f"ACL revision {revision}")
        limit = offset + size
        if size < _ACL_HEAD.size or limit > len(buf):
            raise SecurityFormatError(f"AclSize {size} outside the buffer")
        # Each ACE takes at least 4 bytes: a count beyond that cannot be honest, and
        # checking it first bounds the loop below by the buffer, not by the claim.
        if count * _ACE_HEAD.size > size - _ACL_HEAD.size:
            raise SecurityFormatError(f"AceCount {count} does not fit AclSize {size}")
        aces = []
        pos = offset + _ACL_HEAD.size
        for _ in range(count):
            ace = Ace.parse(buf, pos, limit)
            aces.append(ace)
            pos += _ACE_HEAD.unpack_from(buf, pos)[2]
        return cls(tuple(aces), revision)


@dataclass(frozen=True, slots=True)
class SecurityDescriptor:
    """SECURITY_DESCRIPTOR in self-relative form (MS-DTYP 2.4.6).

    ``control`` carries DACL_PRESENT / SACL_PRESENT: present with ``dacl`` None is a NULL
    DACL (everyone may do everything), absent means the descriptor says nothing about
    the DACL. The same holds for the SACL."""

    control: int = Control.SELF_RELATIVE
    owner: Sid | None = None
    group: Sid | None = None
    sacl: Acl | None = None
    dacl: Acl | None = None
    rm_control: int = 0  # Sbz1: the resource manager's byte when RM_CONTROL_VALID is set

    @property
    def dacl_present(self) -> bool:
        return bool(self.control & Control.DACL_PRESENT)

    @property
    def sacl_present(self) -> bool:
        return bool(self.control & Control.SACL_PRESENT)

    def pack(self) -> bytes:
        body = bytearray()
        offsets = []
        for part in (self.owner, self.group, self.sacl, self.dacl):
            if part is None:
                offsets.append(0)
            else:
                offsets.append(_SD_HEAD.size + len(body))
                body += part.pack()
        control = self.control | Control.SELF_RELATIVE
        # A part given without its PRESENT bit would be ignored by the reader: say it.
        if self.dacl is not None:
            control |= Control.DACL_PRESENT
        if self.sacl is not None:
            control |= Control.SACL_PRESENT
        return _SD_HEAD.pack(SD_REVISION, self.rm_control, control, *offsets) + bytes(body)

    @classmethod
    def parse(cls, data: memoryview | bytes) -> "SecurityDescriptor":
        buf = memoryview(data)
        if len(buf) < _SD_HEAD.size:
            raise SecurityFormatError("security descriptor shorter than its header")
        revision, rm_control, control, off_owner, off_group, off_sacl, off_dacl = _SD_HEAD.unpack_from(buf)
        if revision != SD_REVISION:
            raise SecurityFormatError(f"security descriptor revision {revision}")
        for off in (off_owner, off_group, off_sacl, off_dacl):
            if off and not _SD_HEAD.size <= off < len(buf):
                raise SecurityFormatError(f"offset {off} outside the descriptor")
        owner = Sid.parse(buf, off_owner) if off_owner else None
        group = Sid.parse(buf, off_group) if off_group else None
        # An ACL offset without its PRESENT bit is meaningless (2.4.6): ignore it.
        sacl = Acl.parse(buf, off_sacl) if off_sacl and control & Control.SACL_PRESENT else None
        dacl = Acl.parse(buf, off_dacl) if off_dacl and control & Control.DACL_PRESENT else None
        return cls(control | Control.SELF_RELATIVE, owner, group, sacl, dacl, rm_control)

    def select(self, wanted: int) -> "SecurityDescriptor":
        """Only the parts AdditionalInformation asks for (MS-SMB2 3.3.5.20.3). A requested
        DACL or SACL that is NULL is marked present, as Windows and Samba answer."""
        control = self.control
        if not wanted & SecurityInformation.DACL:
            control &= ~Control.DACL_PRESENT
        if not wanted & SecurityInformation.SACL:
            control &= ~Control.SACL_PRESENT
        if wanted & SecurityInformation.DACL and self.dacl is None:
            control |= Control.DACL_PRESENT
        if wanted & SecurityInformation.SACL and self.sacl is None:
            control |= Control.SACL_PRESENT
        return replace(
            self, control=control,
            owner=self.owner if wanted & SecurityInformation.OWNER else None,
            group=self.group if wanted & SecurityInformation.GROUP else None,
            dacl=self.dacl if wanted & SecurityInformation.DACL else None,
            sacl=self.sacl if wanted & SecurityInformation.SACL else None)


def merge(base: SecurityDescriptor, new: SecurityDescriptor, info: int) -> SecurityDescriptor:
    """``base`` with the parts ``info`` names taken from ``new`` (SET_INFO replaces only
    the parts AdditionalInformation names, MS-SMB2 3.3.5.21.3).

    A named owner or group that ``new`` leaves out keeps the old one (Samba does the same).
    A named DACL that ``new`` does not mark present becomes a NULL DACL, which is what
    smbtorture smb2.create.nulldacl expects from Windows and Samba; likewise the SACL."""
    control = base.control
    owner, group, dacl, sacl = base.owner, base.group, base.dacl, base.sacl
    if info & SecurityInformation.OWNER and new.owner is not None:
        owner = new.owner
    if info & SecurityInformation.GROUP and new.group is not None:
        group = new.group
    if info & SecurityInformation.DACL:
        control = (control & ~DACL_CONTROL) | (new.control & DACL_CONTROL) | Control.DACL_PRESENT
        dacl = new.dacl if new.dacl_present else None
    if info & SecurityInformation.SACL:
        control = (control & ~SACL_CONTROL) | (new.control & SACL_CONTROL) | Control.SACL_PRESENT
        sacl = new.sacl if new.sacl_present else None
    return SecurityDescriptor(control | Control.SELF_RELATIVE, owner, group, sacl, dacl, base.rm_control)


def given_parts(sd: SecurityDescriptor) -> int:
    """The SecurityInformation bits for the parts ``sd`` actually carries (a descriptor in
    a create context sets only what it holds, MS-SMB2 2.2.13.2)."""
    info = 0
    if sd.owner is not None:
        info |= SecurityInformation.OWNER
    if sd.group is not None:
        info |= SecurityInformation.GROUP
    if sd.dacl_present:
        info |= SecurityInformation.DACL
    if sd.sacl_present:
        info |= SecurityInformation.SACL
    return info


def map_acl_generic(acl: Acl | None, mapper) -> Acl | None:
    """``acl`` with GENERIC_* bits of its effective ACEs expanded by ``mapper`` (MS-DTYP
    2.4.3): the check later compares specific rights. Inherit-only ACEs keep their generic
    bits, which are mapped only when inherited, as Windows stores them."""
    if acl is None:
        return None
    aces = tuple(a if a.sid is None or a.flags & AceFlags.INHERIT_ONLY else replace(a, mask=mapper(a.mask))
                 for a in acl.aces)
    return replace(acl, aces=aces)


def settle_auto_inherit(sd: SecurityDescriptor) -> SecurityDescriptor:
    """The control bits a client's descriptor is stored with: AUTO_INHERIT_REQ is a request,
    never stored, and AUTO_INHERITED stays only when that request came with it (Windows'
    answers in smbtorture smb2.acls.INHERITFLAGS), for the DACL and the SACL alike."""
    control = sd.control
    for req, done in ((Control.DACL_AUTO_INHERIT_REQ, Control.DACL_AUTO_INHERITED),
                      (Control.SACL_AUTO_INHERIT_REQ, Control.SACL_AUTO_INHERITED)):
        if not control & req:
            control &= ~done
        control &= ~req
    return replace(sd, control=control)
