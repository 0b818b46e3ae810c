"""Samba's smbd as the reference server: a private instance in a folder of its own.

Recipe verified in shared/LAB.md (the team's lab notes) ("Samba as the reference peer on the host"): all state
directories under one folder, a tdbsam passdb there, `smb ports` on a free loopback port,
foreground smbd.  Samba maps an SMB user to a Unix account, so the user must exist in
/etc/passwd (created with useradd if missing) and own the share directory.
"""
from __future__ import annotations

import os
import pwd
import shutil
import string
import subprocess
from pathlib import Path
from typing import Mapping

from .files import world_traversable_dir
from .ports import free_tcp_port
from .server_under_test import DEFAULT_PROFILE, CommandServer, SecurityProfile

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_TEMPLATE = REPO_ROOT / "deploy" / "samba" / "smb.conf.template"
DEFAULT_USER = "smbtest"
DEFAULT_PASSWORD = "Smbdd-Test-Pass-1"

# smb.conf values for each SecurityProfile field.
_SIGNING = {"auto": "default", "mandatory": "mandatory"}
_ENCRYPT = {"off": "default", "desired": "desired", "required": "required"}
# For smbtorture comparisons: a share that behaves more like Windows (NT ACLs stored in an
# xattr, alternate data streams, DOS attributes), as Samba's own selftest file servers do,
# plus Samba's test-only FSCTLs (FSCTL_SMBTORTURE_*) that some tests probe for.  Needs
# samba-vfs-modules.  Without them vanilla Samba fails the ACL and stream tests.
TORTURE_SHARE_OPTIONS = {"vfs objects": "acl_xattr streams_xattr", "map acl inherit": "yes",
                         "ea support": "yes", "store dos attributes": "yes"}
TORTURE_GLOBAL_OPTIONS = {"smbd:FSCTL_SMBTORTURE": "yes"}
_STATE_DIRS = ("private", "lock", "state", "cache", "pid", "ncalrpc", "binddns")


def samba_available() -> bool:
    return shutil.which("smbd") is not None and shutil.which("smbpasswd") is not None


def ensure_unix_user(name: str) -> pwd.struct_passwd:
    """Create a system account *name* (no home, no shell) if it does not exist; return it.

    Tolerates another process creating it at the same moment (useradd exit 9: name in use).
    """
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True)
    if result.returncode not in (0, 9):
        raise RuntimeError(f"useradd {name} failed: {result.stderr.strip()}")
    return pwd.getpwnam(name)


def render_smb_conf(*, workdir: Path, host: str, port: int, share_name: str,
                    share_path: Path, profile: SecurityProfile, log_level: int = 1,
                    global_options: Mapping[str, str] = {},
                    share_options: Mapping[str, str] = {}) -> str:
    """Fill deploy/samba/smb.conf.template; extra options are `key = value` lines."""
    def lines(options: Mapping[str, str]) -> str:
        return "\n".join(f"  {key} = {value}" for key, value in options.items())

    return string.Template(CONF_TEMPLATE.read_text()).substitute(
        workdir=workdir, host=host, port=port, share_name=share_name,
        share_path=share_path, log_level=log_level,
        signing=_SIGNING[profile.signing], encrypt=_ENCRYPT[profile.encrypt],
        extra_global=lines(global_options), extra_share=lines(share_options))


def _check_others_can_traverse(path: Path) -> None:
    """Fail early, with a clear message, if the share's parents are closed to other users.

    smbd touches files as the mapped Unix user; behind a 0700 parent (pytest's tmp_path,
    mkdtemp) every operation would fail later with a puzzling NT_STATUS_ACCESS_DENIED.
    """
    for parent in path.resolve().parents:
        if not parent.stat().st_mode & 0o001:
            raise PermissionError(f"{parent} is not searchable by other users; Samba's "
                                  f"share {path} must be reachable by its Unix user")


class SambaServer(CommandServer):
    """A private `smbd -F` in *workdir*, sharing *share_path* (default: workdir/share).

    *global_options*/*share_options* add smb.conf lines, e.g. ``{"smbd:FSCTL_SMBTORTURE":
    "yes"}`` for the smbtorture tests that need Samba's test-only FSCTLs.
    """

    name = "samba"

    def __init__(self, workdir: Path, *, share_name: str = "share",
                 share_path: Path | None = None, user: str = DEFAULT_USER,
                 password: str = DEFAULT_PASSWORD, host: str = "127.0.0.1",
                 port: int | None = None, profile: SecurityProfile = DEFAULT_PROFILE,
                 log_level: int = 1, global_options: Mapping[str, str] = {},
                 share_options: Mapping[str, str] = {}, start_timeout: float = 15.0):
        self.workdir = world_traversable_dir(Path(workdir))
        self.conf_path = self.workdir / "smb.conf"
        share_path = Path(share_path) if share_path else self.workdir / "share"
        self._conf_args = dict(log_level=log_level, global_options=dict(global_options),
                               share_options=dict(share_options))
        argv = ["smbd", "-F", "--no-process-group", f"--configfile={self.conf_path}",
                "--debug-stdout"]
        super().__init__(argv, log_path=self.workdir / "smbd.stdout.log",
                         start_timeout=start_timeout, host=host,
                         port=port or free_tcp_port(host), share_name=share_name,
                         share_path=share_path, user=user, password=password,
                         profile=profile)

    def start(self) -> None:
        self._prepare()
        super().start()

    def _prepare(self) -> None:
        account = ensure_unix_user(self.user)
        for name in _STATE_DIRS:
            (self.workdir / name).mkdir(exist_ok=True)
        # Samba checks the private dir is not world-readable.
        (self.workdir / "private").chmod(0o700)
        world_traversable_dir(self.share_path)
        _check_others_can_traverse(self.share_path)
        # File access happens as the mapped Unix user, so it must own the share.
        os.chown(self.share_path, account.pw_uid, account.pw_gid)
        self.conf_path.write_text(render_smb_conf(
            workdir=self.workdir, host=self.host, port=self.port,
            share_name=self.share_name, share_path=self.share_path, profile=self.profile,
            **self._conf_args))
        self.set_password(self.user, self.password)

    def set_password(self, user: str, password: str) -> None:
        """Add *user* to this instance's passdb (idempotent: -a also updates)."""
        subprocess.run(["smbpasswd", "-c", str(self.conf_path), "-s", "-a", user],
                       input=f"{password}\n{password}\n", text=True, check=True,
                       capture_output=True)
