"""smbdd settings from the command line and a TOML file, checked before anything starts.

Every problem is a ConfigError with one clear sentence; the CLI prints it and exits 2.

TOML layout::

    [server]
    listen = ["0.0.0.0", "::"]   # or one string
    port = 445
    encrypt = "auto"             # off | auto | desired | required
    signing = "auto"             # auto | required
    devices = ["rxe0"]           # RDMA devices (SMB Direct); absent: those found; []: none
    users_file = "/etc/smbdd/users"  # the password database of `smbdd user` (its default path)
    smbtorture_fsctl = false     # test only: simulated failures (FSCTL_SMBTORTURE_*, SIGUSR2 cuts an SMB Direct link)
    hosts_allow = ["10.0.0.0/8"] # addresses, networks or "ALL"; allow wins over deny
    hosts_deny = ["ALL"]         # refused before anything is read from the connection

    [users]
    alice = "secret"             # or "{NT}<32 hex digits>" for a stored NT hash

    [shares.data]
    path = "/srv/data"
    read_only = false
    encrypt = false              # this share requires encryption
    sign = false                 # this share requires signing
    guest_ok = false
    continuous_availability = false  # persistent handles: opens survive a crash and a restart
    comment = "team data"
    valid_users = ["alice", "@staff"]  # only these (names, @unix_group); invalid_users: never these
    read_list = ["bob"]          # read-only for these; write_list: writable for these
    hosts_allow = ["10.1.0.0/16"]  # as [server]'s, at tree connect
"""
from __future__ import annotations

import os
import pwd
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

from smbd import accounts
from smbd.accounts import UserEntry
from smbd.auth.ntlm import nt_hash
from smbd.server.config import EncryptPolicy, ServerConfig, ShareConfig

from . import config_schema

DEFAULT_PORT = 445
LAB_USER = "smbuser"


class ConfigError(Exception):
    """A setting is wrong; the message says which and why."""


@dataclass
class Settings:
    """Everything smbdd needs to start: the worker config plus daemon-only settings."""

    server: ServerConfig
    listen: list[str] = field(default_factory=lambda: ["0.0.0.0"])
    port: int = DEFAULT_PORT
    devices: list[str] | None = None  # None: look for RDMA devices; [] after --no-rdma
    rdma_port: int | None = None  # None: 445 for IB/RoCE, 5445 for iWARP (MS-SMBD 2.1)
    banner: list[str] = field(default_factory=list)  # how to connect, for the lab default
    state_dir: Path = field(default_factory=lambda: default_state_dir())  # persistent store, lab share
    metrics: tuple[str, int] | None = None  # the Prometheus endpoint (smbd.metrics), off by default


def parse_user(spec: str, where: str) -> UserEntry:
    name, sep, secret = spec.partition(":")
    if not sep or not name or not secret:
        raise ConfigError(f"{where}: user must be NAME:PASSWORD, got {spec!r}")
    return make_user(name, secret, where)


def make_user(name: str, secret: str, where: str) -> UserEntry:
    try:
        return accounts.make_user(name, secret, where)
    except accounts.AccountError as e:
        raise ConfigError(str(e)) from None


def read_users_file(path: str) -> list[UserEntry]:
    try:
        return accounts.read(path)
    except accounts.AccountError as e:
        raise ConfigError(str(e)) from None


def default_users_file() -> Path:
    """Where ``smbdd user`` keeps the password database unless told otherwise, and where the
    server looks for users when none are configured."""
    if os.geteuid() == 0:
        return Path("/etc/smbdd/users")
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "smbdd" / "users"


def parse_share(spec: str) -> ShareConfig:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ConfigError(f"--share must be NAME=PATH, got {spec!r}")
    return ShareConfig(name=name, path=path)


def _check_share(share: ShareConfig) -> ShareConfig:
    """A --share from the command line, checked as the config file's shares are."""
    try:
        return replace(share, name=config_schema._share_name(share.name), path=config_schema._share_path(share.path))
    except ValueError as e:
        raise ConfigError(f"share {share.name}: {e}") from None


def from_file(path: str) -> dict:
    """The config file's settings as keywords for build(), after the schema's check
    (smbdd.config_schema): every problem is one line of the ConfigError."""
    try:
        cfg = config_schema.check_file(path)
    except config_schema.ConfigProblems as e:
        raise ConfigError(str(e)) from None
    out: dict = cfg.server.model_dump()
    out["users"] = [make_user(name, secret, f"{path}: [users] {name}") for name, secret in cfg.users.items()]
    out["shares"] = [ShareConfig(name=name, **sh.model_dump()) for name, sh in cfg.shares.items()]
    return out


def lab_default(state_dir: Path) -> tuple[ShareConfig, UserEntry, str, list[str]]:
    """A share of a directory we create and a user whose generated password we keep, so a
    bare `smbdd` serves something a client can use at once."""
    share_dir = state_dir / "share"
    share_dir.mkdir(parents=True, exist_ok=True)
    secret_file = state_dir / "lab-password"
    if secret_file.exists():
        password = secret_file.read_text().strip()
    else:
        password = secrets.token_urlsafe(12)
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
    own = pwd.getpwuid(os.geteuid()).pw_name  # the lab user's files are smbdd's own
    return (ShareConfig(name="share", path=str(share_dir)), UserEntry(LAB_USER, nt_hash(password), own), password,
            [f"lab default: share 'share' -> {share_dir}", f"user {LAB_USER}, password {password} "
             f"(kept in {secret_file})"])


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/smbdd")
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "smbdd"


def build(args) -> Settings:
    """Merge the config file (if any) with the command line (which wins) and validate."""
    file_opts: dict = {"shares": [], "users": []}
    if args.config:
        file_opts = from_file(args.config)
    shares = list(file_opts["shares"]) + [parse_share(s) for s in args.share or []]
    users = list(file_opts["users"]) + [parse_user(u, "--user") for u in args.user or []]
    users_file = args.users or file_opts.get("users_file")
    if not users_file and not users and default_users_file().exists():
        users_file = str(default_users_file())
    # The workers read the file's users themselves, and again whenever it changes; read here
    # too, so a malformed file stops the start with its line.
    file_users = read_users_file(users_file) if users_file else []
    names = [s.name.lower() for s in shares]
    if len(set(names)) != len(names):
        raise ConfigError("a share name is given twice")
    banner: list[str] = []
    state_dir = Path(args.state_dir or file_opts.get("state_dir") or default_state_dir())
    if not shares and not users and not file_users:
        share, user, _, banner = lab_default(state_dir)
        shares, users = [share], [user]
    if not shares:
        raise ConfigError("no share configured: use --share NAME=PATH or [shares.NAME] in the config file")
    shares = [_check_share(s) for s in shares]
    keytab = getattr(args, "keytab", None)
    if keytab:
        try:
            keytab = config_schema._keytab(keytab)
        except ValueError as e:
            raise ConfigError(f"--keytab: {e}") from None
    keytab = keytab or file_opts.get("kerberos_keytab") or ""
    if not users and not file_users and not keytab and not any(s.guest_ok for s in shares):
        raise ConfigError("no user configured (--user NAME:PASSWORD, --users FILE or --keytab FILE) "
                          "and no guest share")
    # The file's values passed the schema and argparse restricts the command line's choices.
    policy = EncryptPolicy(args.encrypt or file_opts.get("encrypt", "auto"))
    signing = args.signing or file_opts.get("signing", "auto")
    port = args.port if args.port is not None else file_opts.get("port", DEFAULT_PORT)
    if not 0 < port < 65536:
        raise ConfigError(f"port must be 1..65535, got {port!r}")
    listen = args.listen or file_opts.get("listen") or ["0.0.0.0"]
    devices = args.device if args.device else file_opts.get("devices")
    if args.no_rdma:
        devices = []
    max_io = file_opts.get("max_io_size", config_schema.MAX_IO)
    torture_hooks = getattr(args, "smbtorture_fsctl", False) or file_opts.get("smbtorture_fsctl", False)
    unix_identity = getattr(args, "unix_identity", None) or file_opts.get("unix_identity", "users")
    server = ServerConfig(shares=tuple(shares), users=tuple(users), encrypt=policy,
                          users_file=os.path.abspath(users_file) if users_file else "",
                          signing_required=(signing == "required"),
                          netbios_name=file_opts.get("netbios_name", "SMBDD").upper(),
                          domain=file_opts.get("workgroup", "WORKGROUP").upper(), max_io_size=max_io,
                          smbtorture_fsctl=torture_hooks, unix_identity=unix_identity,
                          guest_account=file_opts.get("guest_account", "nobody"), kerberos_keytab=keytab,
                          hosts_allow=tuple(file_opts.get("hosts_allow") or ()),
                          hosts_deny=tuple(file_opts.get("hosts_deny") or ()))
    metrics = getattr(args, "metrics", None) or file_opts.get("metrics")
    try:
        metrics_at = config_schema._address(metrics) if metrics else None
    except ValueError as e:
        raise ConfigError(f"--metrics: {e}") from None
    return Settings(server=server, listen=list(listen), port=port, devices=devices,
                    rdma_port=file_opts.get("rdma_port"), banner=banner, state_dir=state_dir, metrics=metrics_at)
