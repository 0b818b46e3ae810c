"""`smbdd check-config FILE`: the configuration checked as smbdd's start checks it, then the
effective configuration printed (defaults filled in, secrets left out), as testparm does for
smb.conf. Exit status 0 when smbdd would start with it, 1 otherwise, each problem one line
on stderr with its file and line.
"""
from __future__ import annotations

import json
import sys
from dataclasses import fields

from smbd import accounts
from smbd.server.config import ShareConfig

from . import config_schema
from .config import ConfigError, build

EXIT_PROBLEMS = 1
_SHARE_DEFAULTS = {f.name: f.default for f in fields(ShareConfig) if f.name not in ("name", "path")}


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's


def render(settings, config_path: str) -> str:
    """The effective configuration as TOML, one table per section."""
    srv = settings.server
    lines = [f"# effective configuration of {config_path}", "[server]"]
    server = {"listen": settings.listen, "port": settings.port, "encrypt": srv.encrypt.value,
              "signing": "required" if srv.signing_required else "auto",
              "devices": "found at start" if settings.devices is None else settings.devices,
              "rdma_port": settings.rdma_port or "445 (IB/RoCE) or 5445 (iWARP)",
              "users_file": srv.users_file or "none", "netbios_name": srv.netbios_name, "workgroup": srv.domain,
              "max_io_size": srv.max_io_size, "state_dir": str(settings.state_dir),
              "hosts_allow": list(srv.hosts_allow), "hosts_deny": list(srv.hosts_deny),
              "unix_identity": srv.unix_identity, "guest_account": srv.guest_account,
              "kerberos_keytab": srv.kerberos_keytab or "none (NTLM only)",
              "metrics": f"{settings.metrics[0]}:{settings.metrics[1]}" if settings.metrics else "off",
              "smbtorture_fsctl": srv.smbtorture_fsctl}
    lines += [f"{k} = {_toml_value(v)}" for k, v in server.items()]
    users = [u.name for u in srv.users] + ([u.name for u in accounts.read(srv.users_file)] if srv.users_file else [])
    lines += ["", f"# {len(users)} users (passwords not shown): {', '.join(users) or 'none'}"]
    for share in srv.shares:
        lines += ["", f"[shares.{share.name}]", f"path = {_toml_value(share.path)}"]
        lines += [f"{k} = {_toml_value(getattr(share, k))}" for k in _SHARE_DEFAULTS]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: smbdd check-config FILE", file=sys.stderr)
        return 2
    path = argv[0]
    from .cli import parser

    try:
        parsed = config_schema.check_file(path)
        if not parsed.shares and not parsed.users and not parsed.server.users_file:
            print(f"{path}: no shares and no users: smbdd would serve its lab default (see README)")
            return 0
        settings = build(parser().parse_args(["--config", path]))
    except config_schema.ConfigProblems as e:
        for line in e.lines:
            print(line, file=sys.stderr)
        print(f"{path}: {len(e.lines)} problem{'s' if len(e.lines) != 1 else ''}; smbdd would not start",
              file=sys.stderr)
        return EXIT_PROBLEMS
    except (ConfigError, accounts.AccountError) as e:
        print(e, file=sys.stderr)
        print(f"{path}: smbdd would not start", file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"{path}: OK", file=sys.stderr)
    sys.stdout.write(render(settings, path))
    return 0
