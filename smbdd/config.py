"""smbdd settings from the command line and a TOML file, checked before anything starts.

Every problem is a ConfigError with one clear sentence; the CLI prints it and exits 2.

TOML layout::

    [server]
    listen = ["0.0.0.0", "::"]   # or one string
    port = 445
    encrypt = "auto"             # off | auto | desired | required
    signing = "auto"             # auto | required
    devices = ["rxe0"]           # RDMA devices (SMB Direct); [] = find them
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
import secrets
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from smbd import accounts
from smbd.accounts import UserEntry
from smbd.auth.ntlm import nt_hash
from smbd.server import access
from smbd.server.config import EncryptPolicy, ServerConfig, ShareConfig

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
    if share.name.upper() == "IPC$" or any(c in share.name for c in '\\/:*?"<>|') or len(share.name) > 80:
        raise ConfigError(f"share name {share.name!r} is not allowed")
    path = os.path.abspath(share.path)
    if not os.path.isdir(path):
        raise ConfigError(f"share {share.name}: path {share.path} does not exist or is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError(f"share {share.name}: path {share.path} is not readable")
    return replace(share, path=path)


def load_toml(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: {e}") from e


_USER_LISTS = ("valid_users", "invalid_users", "read_list", "write_list")
_HOST_LISTS = ("hosts_allow", "hosts_deny")
_SHARE_KEYS = {"path", "read_only", "encrypt", "sign", "guest_ok", "comment", "continuous_availability",
               *_USER_LISTS, *_HOST_LISTS}
_SERVER_KEYS = {"listen", "port", "encrypt", "signing", "devices", "users_file", "netbios_name",
                "workgroup", "max_io_size", "rdma_port", "state_dir", "smbtorture_fsctl", *_HOST_LISTS}


def _names(value, where: str) -> tuple[str, ...]:
    """A list of strings, or one string of names separated by commas or spaces (as smb.conf)."""
    if isinstance(value, str):
        return tuple(v for v in value.replace(",", " ").split() if v)
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where} must be a list of names (or one string of them)")
    return tuple(v.strip() for v in value)


def _hosts(value, where: str) -> tuple[str, ...]:
    hosts = _names(value, where)
    try:
        access.parse_hosts(hosts, where)
    except access.AccessConfigError as e:
        raise ConfigError(str(e)) from None
    return hosts


def _bool(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false")
    return value


def from_toml(data: dict, where: str) -> dict:
    """Translate the TOML document into keyword settings; unknown keys are errors."""
    out: dict = {"shares": [], "users": []}
    unknown = set(data) - {"server", "users", "shares"}
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(sorted(unknown))}")
    srv = data.get("server", {})
    bad = set(srv) - _SERVER_KEYS
    if bad:
        raise ConfigError(f"{where}: unknown [server] key(s) {', '.join(sorted(bad))}")
    out.update({k: v for k, v in srv.items()})
    for k in _HOST_LISTS:
        if k in srv:
            out[k] = _hosts(srv[k], f"{where}: [server] {k}")
    for name, secret in data.get("users", {}).items():
        if not isinstance(secret, str):
            raise ConfigError(f"{where}: [users] {name} must be a string")
        out["users"].append(make_user(name, secret, where))
    for name, opts in data.get("shares", {}).items():
        if not isinstance(opts, dict) or "path" not in opts:
            raise ConfigError(f"{where}: [shares.{name}] needs a path")
        bad = set(opts) - _SHARE_KEYS
        if bad:
            raise ConfigError(f"{where}: [shares.{name}] unknown key(s) {', '.join(sorted(bad))}")
        flags = {k: _bool(opts[k], f"{where}: [shares.{name}] {k}")
                 for k in ("read_only", "encrypt", "sign", "guest_ok", "continuous_availability") if k in opts}
        lists = {k: _names(opts[k], f"{where}: [shares.{name}] {k}") for k in _USER_LISTS if k in opts}
        lists |= {k: _hosts(opts[k], f"{where}: [shares.{name}] {k}") for k in _HOST_LISTS if k in opts}
        out["shares"].append(ShareConfig(name=name, path=str(opts["path"]), comment=str(opts.get("comment", "")),
                                         **flags, **lists))
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
    return (ShareConfig(name="share", path=str(share_dir)), UserEntry(LAB_USER, nt_hash(password)), password,
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
        file_opts = from_toml(load_toml(args.config), args.config)
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
    if not users and not file_users and not any(s.guest_ok for s in shares):
        raise ConfigError("no user configured (--user NAME:PASSWORD or --users FILE) and no guest share")
    encrypt = args.encrypt or file_opts.get("encrypt", "auto")
    try:
        policy = EncryptPolicy(encrypt)
    except ValueError:
        raise ConfigError(f"encrypt must be off, auto, desired or required, got {encrypt!r}") from None
    signing = args.signing or file_opts.get("signing", "auto")
    if signing not in ("auto", "required"):
        raise ConfigError(f"signing must be auto or required, got {signing!r}")
    port = args.port if args.port is not None else file_opts.get("port", DEFAULT_PORT)
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"port must be 1..65535, got {port!r}")
    listen = args.listen or file_opts.get("listen") or ["0.0.0.0"]
    if isinstance(listen, str):
        listen = [listen]
    devices = args.device if args.device else file_opts.get("devices")
    if args.no_rdma:
        devices = []
    max_io = int(file_opts.get("max_io_size", 8 * 1024 * 1024))
    if not 65536 <= max_io <= 8 * 1024 * 1024:
        raise ConfigError("max_io_size must be between 64 KiB and 8 MiB")
    torture_hooks = (getattr(args, "smbtorture_fsctl", False)
                     or _bool(file_opts.get("smbtorture_fsctl", False), "smbtorture_fsctl"))
    server = ServerConfig(shares=tuple(shares), users=tuple(users), encrypt=policy,
                          users_file=os.path.abspath(users_file) if users_file else "",
                          signing_required=(signing == "required"),
                          netbios_name=str(file_opts.get("netbios_name", "SMBDD"))[:15].upper(),
                          domain=str(file_opts.get("workgroup", "WORKGROUP")).upper(), max_io_size=max_io,
                          smbtorture_fsctl=torture_hooks, hosts_allow=tuple(file_opts.get("hosts_allow", ())),
                          hosts_deny=tuple(file_opts.get("hosts_deny", ())))
    return Settings(server=server, listen=list(listen), port=port, devices=devices,
                    rdma_port=file_opts.get("rdma_port"), banner=banner, state_dir=state_dir)
