"""`smbdd user add|passwd|del|list`: the password database (smbd.accounts), as smbpasswd and
pdbedit edit Samba's.

A running server sees each change at the next logon; nothing is restarted. Passwords come
from a prompt (twice, not echoed) or one line of stdin with ``--password-stdin``, never from
the command line, where ps would show them.
"""
from __future__ import annotations

import argparse
import getpass
import os
import pwd
import sys

from smbd import accounts

from .config import default_users_file

EXIT_ERROR = 1


class UserCommandError(Exception):
    """What went wrong, in one sentence for stderr."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smbdd user", description="Manage the SMB users in smbdd's password database.")
    p.add_argument("--users", metavar="FILE", help=f"the password database (default {default_users_file()})")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="add a user")
    add.add_argument("name")
    add.add_argument("--unix-user", metavar="U", default="",
                     help="the Unix account the user's files belong to (default: the same name)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    passwd = sub.add_parser("passwd", help="change a user's password")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    delete = sub.add_parser("del", help="delete a user")
    delete.add_argument("name")
    sub.add_parser("list", help="list the users and their Unix accounts")
    return p


def read_password(from_stdin: bool, stdin=None) -> str:
    stdin = stdin or sys.stdin
    if from_stdin:
        line = stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
    elif stdin.isatty():
        password = getpass.getpass("New SMB password: ")
        if getpass.getpass("Retype new SMB password: ") != password:
            raise UserCommandError("the passwords do not match")
    else:
        raise UserCommandError("no terminal to ask for the password: use --password-stdin")
    if not password:
        raise UserCommandError("the password is empty")
    return password


def _find(users: list[accounts.UserEntry], name: str) -> int | None:
    low = name.lower()
    return next((i for i, u in enumerate(users) if u.name.lower() == low), None)


def run(args, stdin=None, out=None) -> None:
    out = out or sys.stdout
    path = args.users or str(default_users_file())
    if args.action == "list":
        users = accounts.read(path) if os.path.exists(path) else []
        for u in users:
            out.write(f"{u.name}\t{u.unix_name}\n")
        return
    accounts.check_name(args.name, "user name")
    with accounts.locked(path) as users:
        at = _find(users, args.name)
        if args.action == "add":
            if at is not None:
                raise UserCommandError(f"user {args.name} already exists in {path}; use `smbdd user passwd`")
            unix_user = args.unix_user
            if unix_user:
                accounts.check_name(unix_user, "--unix-user")
            if not _unix_account_exists(unix_user or args.name):
                print(f"smbdd user: warning: no Unix account {unix_user or args.name!r} on this machine",
                      file=sys.stderr)
            users.append(accounts.make_user(args.name, read_password(args.password_stdin, stdin), "password",
                                            unix_user))
            done = "added"
        elif at is None:
            raise UserCommandError(f"no user {args.name} in {path}")
        elif args.action == "passwd":
            old = users[at]
            users[at] = accounts.make_user(old.name, read_password(args.password_stdin, stdin), "password",
                                           old.unix_user)
            done = "password changed"
        else:
            del users[at]
            done = "deleted"
        accounts.write(path, users)
    out.write(f"user {args.name} {done} ({path})\n")


def _unix_account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        run(args)
    except (UserCommandError, accounts.AccountError) as e:
        print(f"smbdd user: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        print(f"smbdd user: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
    return 0
