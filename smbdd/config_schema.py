"""The TOML configuration's schema, checked with pydantic: every key's type and range, every
unknown key, every share path, all reported at once with the line each is on.

smbdd's start (smbdd.config.build) and `smbdd check-config` use the same check, so a file
check-config passes is one smbdd starts with. Strict types: TOML has booleans and integers,
and ``read_only = "no"`` is a mistake to report, not a value to guess.
"""
from __future__ import annotations

import os
import re
import tomllib
from typing import Annotated, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt,
                      StrictStr, ValidationError)

from smbd import accounts
from smbd.server import access

MAX_IO = 8 * 1024 * 1024


def _split_names(value):
    """A list of strings, or one string of names separated by commas or spaces (as smb.conf)."""
    if isinstance(value, str):
        return [v for v in value.replace(",", " ").split() if v]
    return value


def _valid_hosts(value: list[str]) -> list[str]:
    try:
        access.parse_hosts(value, "entry")
    except access.AccessConfigError as e:
        raise ValueError(str(e).removeprefix("entry: ")) from None
    return value


def _user_names(value: list[str]) -> list[str]:
    for name in value:
        bare = name[1:] if name.startswith("@") else name
        try:
            accounts.check_name(bare, "entry")
        except accounts.AccountError:
            raise ValueError(f"{name!r} is not a user name or @group") from None
    return value


def _share_path(value: str) -> str:
    path = os.path.abspath(value)
    if not os.path.isdir(path):
        raise ValueError(f"{value} does not exist or is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ValueError(f"{value} is not readable")
    return path


def _users_file(value: str) -> str:
    try:
        accounts.read(value)
    except accounts.AccountError as e:
        raise ValueError(str(e)) from None
    return os.path.abspath(value)


def _keytab(value: str) -> str:
    from smbd.auth import kerberos

    return kerberos.check_keytab(value)


def _address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) of a local listener, e.g. the metrics endpoint."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host, int(port)


def _secret(value: str) -> str:
    if value.startswith("{NT}") and not re.fullmatch(r"[0-9a-fA-F]{32}", value[4:]):
        raise ValueError("an {NT} hash must be 32 hex digits")
    if not value:
        raise ValueError("empty password")
    return value


def _share_name(value: str) -> str:
    if value.upper() == "IPC$" or any(c in value for c in '\\/:*?"<>|') or not 0 < len(value) <= 80:
        raise ValueError(f"share name {value!r} is not allowed")
    return value


NameList = Annotated[list[StrictStr], BeforeValidator(_split_names), AfterValidator(_user_names)]
HostList = Annotated[list[StrictStr], BeforeValidator(_split_names), AfterValidator(_valid_hosts)]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ServerSection(_Section):
    listen: Annotated[list[StrictStr], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] = ["0.0.0.0"]
    port: Port = 445
    encrypt: Literal["off", "auto", "desired", "required"] = "auto"
    signing: Literal["auto", "required"] = "auto"
    devices: list[StrictStr] | None = None  # None: the RDMA devices found; []: none
    users_file: Annotated[StrictStr, AfterValidator(_users_file)] | None = None
    netbios_name: Annotated[StrictStr, Field(min_length=1, max_length=15)] = "SMBDD"
    workgroup: Annotated[StrictStr, Field(min_length=1, max_length=15)] = "WORKGROUP"
    max_io_size: Annotated[StrictInt, Field(ge=65536, le=MAX_IO)] = MAX_IO
    rdma_port: Port | None = None
    state_dir: StrictStr | None = None
    smbtorture_fsctl: StrictBool = False
    unix_identity: Literal["users", "daemon"] = "users"
    metrics: Annotated[StrictStr, AfterValidator(lambda v: _address(v) and v)] | None = None
    guest_account: Annotated[StrictStr, Field(min_length=1)] = "nobody"
    kerberos_keytab: Annotated[StrictStr, AfterValidator(_keytab)] | None = None
    hosts_allow: HostList = []
    hosts_deny: HostList = []


class ShareSection(_Section):
    path: Annotated[StrictStr, AfterValidator(_share_path)]
    read_only: StrictBool = False
    encrypt: StrictBool = False
    sign: StrictBool = False
    guest_ok: StrictBool = False
    continuous_availability: StrictBool = False
    comment: StrictStr = ""
    valid_users: NameList = []
    invalid_users: NameList = []
    read_list: NameList = []
    write_list: NameList = []
    hosts_allow: HostList = []
    hosts_deny: HostList = []


class ConfigFile(_Section):
    server: ServerSection = ServerSection()
    users: dict[Annotated[StrictStr, AfterValidator(lambda n: _user_names([n])[0])],
                Annotated[StrictStr, AfterValidator(_secret)]] = {}
    shares: dict[Annotated[StrictStr, AfterValidator(_share_name)], ShareSection] = {}


class ConfigProblems(Exception):
    """Every problem of one file, each ``FILE:LINE: where: what``."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The line of each table header and key (``("shares", "data", "path") -> 12``). TOML
    parsers keep no positions, and a config is plain enough to find them by scanning."""
    out: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("[") and not s.startswith("[["):
            m = re.match(r"\[([^\]]*)\]", s)
            if m:
                table = tuple(p.strip().strip('"\'') for p in m[1].split("."))
                out.setdefault(table, n)
        elif s and not s.startswith("#") and "=" in s:
            key = s.split("=", 1)[0].strip().strip('"\'')
            out.setdefault(table + tuple(p.strip() for p in key.split(".")), n)
    return out


def _line_of(loc: tuple, lines: dict[tuple[str, ...], int]) -> int | None:
    loc = tuple(str(p) for p in loc if not isinstance(p, int))  # list indexes: the key's line
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None


def _where(loc: tuple) -> str:
    parts = [str(p) for p in loc if not isinstance(p, int)]
    if len(parts) >= 2 and parts[0] == "shares":
        return f"[shares.{parts[1]}]" + (f" {'.'.join(parts[2:])}" if parts[2:] else "")
    if parts and parts[0] in ("server", "users"):
        return f"[{parts[0]}]" + (f" {'.'.join(parts[1:])}" if parts[1:] else "")
    return ".".join(parts) or "file"


def _message(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key missing"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "literal_error":
        msg = f"must be one of {err['ctx']['expected']}"
    return msg


def check_text(text: str, path: str) -> ConfigFile:
    """The validated file, or ConfigProblems listing every problem with its line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        where = f"{path}:{m[1]}" if m else path
        raise ConfigProblems([f"{where}: not valid TOML: {re.sub(r' [(]at .*[)]', '', str(e))}"]) from None
    try:
        return ConfigFile.model_validate(data)
    except ValidationError as e:
        lines = key_lines(text)
        found = []
        for err in e.errors():
            line = _line_of(err["loc"], lines)
            found.append((line or 0, f"{path}:{line}: " if line else f"{path}: ",
                          f"{_where(err['loc'])}: {_message(err)}"))
        raise ConfigProblems([prefix + what for _, prefix, what in sorted(found)]) from None


def check_file(path: str) -> ConfigFile:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigProblems([f"config file {path}: {e.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigProblems([f"config file {path}: not UTF-8 text"]) from None
    return check_text(text, path)
