"""Server settings as the worker sees them: shares, users, security policy.

The daemon (smbdd) builds this from the command line and TOML file and hands it to each
worker as JSON over the control socket, so nothing secret appears on a command line.
"""
from __future__ import annotations

import enum
import uuid
from dataclasses import asdict, dataclass, field

from smbd.accounts import UserEntry

__all__ = ["EncryptPolicy", "ServerConfig", "ShareConfig", "UserEntry"]


class EncryptPolicy(str, enum.Enum):
    """off: not offered. auto (default): offered, used when the client asks for it.
    desired: every session of a client that can encrypt is encrypted.
    required: as desired, and clients that cannot encrypt are refused."""

    OFF = "off"
    AUTO = "auto"
    DESIRED = "desired"
    REQUIRED = "required"


@dataclass(frozen=True)
class ShareConfig:
    name: str
    path: str
    read_only: bool = False
    encrypt: bool = False  # encryption required on this share
    sign: bool = False  # signing required on this share
    guest_ok: bool = False
    comment: str = ""
    # SMB2_SHARE_CAP_CONTINUOUS_AVAILABILITY: persistent handles (smbd.server.persistent)
    continuous_availability: bool = False
    # Who may connect and write (smbd.server.access): user names and @group, addresses and networks.
    valid_users: tuple[str, ...] = ()
    invalid_users: tuple[str, ...] = ()
    read_list: tuple[str, ...] = ()
    write_list: tuple[str, ...] = ()
    hosts_allow: tuple[str, ...] = ()
    hosts_deny: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in _SHARE_LISTS:  # from JSON (lists) or TOML: kept as tuples, hashable
            object.__setattr__(self, name, tuple(getattr(self, name)))


_SHARE_LISTS = ("valid_users", "invalid_users", "read_list", "write_list", "hosts_allow", "hosts_deny")


@dataclass(frozen=True)
class ServerConfig:
    shares: tuple[ShareConfig, ...]
    users: tuple[UserEntry, ...]  # given in the configuration itself
    users_file: str = ""  # the password database (smbd.accounts), re-read when it changes
    # "users": each session's file operations run as its Unix account (smbd.identity);
    # "daemon": as the server's own (smbdd's command line defaults to "users").
    unix_identity: str = "daemon"
    guest_account: str = "nobody"  # the Unix account of guest and anonymous sessions
    kerberos_keytab: str = ""  # SPNEGO offers Kerberos with this keytab's keys (smbd.auth.kerberos)
    hosts_allow: tuple[str, ...] = ()  # server-wide, checked as a connection arrives (smbd.server.access)
    hosts_deny: tuple[str, ...] = ()
    encrypt: EncryptPolicy = EncryptPolicy.AUTO
    signing_required: bool = False
    server_guid: uuid.UUID = field(default_factory=uuid.uuid4)
    netbios_name: str = "SMBDD"
    domain: str = "WORKGROUP"
    max_io_size: int = 8 * 1024 * 1024  # MaxReadSize/MaxWriteSize/MaxTransactSize
    max_credits: int = 8192
    rdma_interfaces: tuple[str, ...] = ()  # interface names that carry an RDMA device
    io_threads: int = 4
    # The volatile state store every process of this smbdd opens (smbd.store), a folder on
    # tmpfs set by the supervisor; empty for an in-process server, which keeps it in memory.
    runtime_dir: str = ""
    # The persistent store's folder (smbd.store.open_persistent): persistent handles live
    # there across worker crashes and restarts; empty keeps them in memory (tests).
    state_dir: str = ""
    # Test-only, off by default: answer Samba's FSCTL_SMBTORTURE_* codes, with which
    # smbtorture simulates failures (Samba's "smbd:FSCTL_SMBTORTURE").
    smbtorture_fsctl: bool = False

    @property
    def continuous_availability(self) -> bool:
        return any(s.continuous_availability for s in self.shares)

    def share(self, name: str) -> ShareConfig | None:
        low = name.lower()
        for s in self.shares:
            if s.name.lower() == low:
                return s
        return None

    def to_json(self) -> dict:
        d = asdict(self)
        d["encrypt"] = self.encrypt.value
        d["server_guid"] = str(self.server_guid)
        d["users"] = [{"name": u.name, "nt_hash": u.nt_hash.hex(), "unix_user": u.unix_user} for u in self.users]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ServerConfig":
        d = dict(d)
        d["shares"] = tuple(ShareConfig(**s) for s in d["shares"])
        d["users"] = tuple(UserEntry(u["name"], bytes.fromhex(u["nt_hash"]), u.get("unix_user", ""))
                           for u in d["users"])
        d["encrypt"] = EncryptPolicy(d["encrypt"])
        d["server_guid"] = uuid.UUID(d["server_guid"])
        d["rdma_interfaces"] = tuple(d.get("rdma_interfaces", ()))
        d["hosts_allow"] = tuple(d.get("hosts_allow", ()))
        d["hosts_deny"] = tuple(d.get("hosts_deny", ()))
        return cls(**d)
