"""The password database: SMB users, their NT hashes and the Unix accounts they map to.

One line per user, ``NAME:{NT}<32 hex digits>[:UNIX_USER]``, the way Samba's smbpasswd file
keeps hashes and never passwords; ``NAME:PASSWORD`` lines written by hand are read too
(the password is hashed on reading). The NT hash is MD4 of the UTF-16LE password
(MS-NLMP 3.3.1): it is all NTLMv2 needs, and it is a password equivalent, so the file is
mode 0600 and is only ever replaced whole (write to a temporary file, fsync, rename), so
a reader never sees half of it.

``smbdd user`` edits the file (smbdd.users_cli); each worker re-reads it when it changes
(``AccountDirectory``), so a user added, changed or deleted counts from the next logon
without a restart; sessions already set up stay, as in Samba.
"""
from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from smbd.auth.ntlm import nt_hash

log = logging.getLogger("smbd.accounts")

HEADER = "# smbdd users: NAME:{NT}HASH[:UNIX_USER], one per line; edit with `smbdd user`\n"
_BAD_NAME_CHARS = set('"/\\[]:;|=,+*?<>@')


class AccountError(ValueError):
    """A malformed user entry or database; the message names the file and line."""


@dataclass(frozen=True)
class UserEntry:
    name: str
    nt_hash: bytes  # MD4(UTF-16LE(password)), MS-NLMP 3.3.1
    unix_user: str = ""  # the Unix account the user's files belong to; "" = the same name

    @property
    def unix_name(self) -> str:
        return self.unix_user or self.name


def check_name(name: str, where: str) -> str:
    if not name or any(c in _BAD_NAME_CHARS for c in name) or len(name) > 64 or not name.isprintable():
        raise AccountError(f"{where}: invalid user name {name!r}")
    return name


def make_user(name: str, secret: str, where: str, unix_user: str = "") -> UserEntry:
    """A user from a password or a stored ``{NT}`` hash."""
    check_name(name, where)
    if unix_user:
        check_name(unix_user, where)
    if secret.startswith("{NT}"):
        try:
            digest = bytes.fromhex(secret[4:])
        except ValueError:
            digest = b""
        if len(digest) != 16:
            raise AccountError(f"{where}: {{NT}} hash of {name!r} must be 32 hex digits")
        return UserEntry(name, digest, unix_user)
    if not secret:
        raise AccountError(f"{where}: empty password for {name!r}")
    return UserEntry(name, nt_hash(secret), unix_user)


def parse_line(line: str, where: str) -> UserEntry:
    """``NAME:{NT}HASH[:UNIX_USER]`` or ``NAME:PASSWORD`` (the password may hold colons)."""
    name, sep, secret = line.partition(":")
    if not sep or not name or not secret:
        raise AccountError(f"{where}: expected NAME:{{NT}}HASH[:UNIX_USER] or NAME:PASSWORD")
    unix_user = ""
    if secret.startswith("{NT}"):
        secret, _, unix_user = secret.partition(":")
    return make_user(name, secret, where, unix_user)


def parse(text: str, path: str, skipped: list[AccountError] | None = None) -> list[UserEntry]:
    """The users of the file's text. A bad line raises, or with ``skipped`` is left out and
    recorded there, as Samba reads its smbpasswd file: one bad hand edit costs that line."""
    users: list[UserEntry] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            user = parse_line(line, f"{path}:{n}")
            if user.name.lower() in seen:
                raise AccountError(f"{path}:{n}: user {user.name!r} is listed twice")
        except AccountError as e:
            if skipped is None:
                raise
            skipped.append(e)
            continue
        seen.add(user.name.lower())
        users.append(user)
    return users


def read(path: str | os.PathLike, skipped: list[AccountError] | None = None) -> list[UserEntry]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise AccountError(f"users file {path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise AccountError(f"users file {path}: {e.strerror}") from e
    return parse(text, str(path), skipped)


def format_entry(user: UserEntry) -> str:
    line = f"{user.name}:{{NT}}{user.nt_hash.hex()}"
    return line + (f":{user.unix_user}" if user.unix_user else "")


def write(path: str | os.PathLike, users: list[UserEntry]) -> None:
    """Replace the file with ``users`` (hashes only), mode 0600, atomically and durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(HEADER + "".join(format_entry(u) + "\n" for u in users))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # the rename itself reaches the disk
    finally:
        os.close(dir_fd)


@contextmanager
def locked(path: str | os.PathLike) -> Iterator[list[UserEntry]]:
    """The database's users, for a read-modify-write that no other ``smbdd user`` runs
    between: an flock on ``PATH.lock`` (the database itself is replaced, not locked)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        yield read(path) if path.exists() else []
    finally:
        os.close(lock_fd)


class AccountDirectory:
    """The users a worker authenticates: those of the configuration and those of the
    database file, which is read again whenever it changes (checked at each lookup: one
    stat). A malformed line is left out and logged; a file that has become unreadable
    keeps the users read last. The server's start reads the file strictly instead
    (smbdd.config), so a bad file is found before anyone relies on it."""

    def __init__(self, inline: tuple[UserEntry, ...], path: str = ""):
        self._inline = {u.name.lower(): u for u in inline}
        self.path = path
        self._stamp: tuple | None = None
        self._from_file: dict[str, UserEntry] = {}
        self._bad_stamp: tuple | None = None

    def lookup(self, name: str) -> UserEntry | None:
        self._refresh()
        low = name.lower()
        return self._inline.get(low) or self._from_file.get(low)

    def nt_hash(self, name: str) -> bytes | None:
        user = self.lookup(name)
        return user.nt_hash if user else None

    def _refresh(self) -> None:
        if not self.path:
            return
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp == self._stamp or stamp == self._bad_stamp:
            return
        if stamp is None:
            log.error("users file %s is gone; keeping the %d users read before", self.path, len(self._from_file))
            self._bad_stamp = stamp
            return
        skipped: list[AccountError] = []
        try:
            users = read(self.path, skipped)
        except AccountError as e:
            log.error("%s; keeping the %d users read before", e, len(self._from_file))
            self._bad_stamp = stamp
            return
        for e in skipped:
            log.error("%s; line left out", e)
        self._from_file = {u.name.lower(): u for u in users}
        self._stamp, self._bad_stamp = stamp, None
        log.info("users file %s read: %d users", self.path, len(users))
