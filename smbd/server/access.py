"""Who may use the server and its shares: hosts allow/deny, valid/invalid users, read and
write lists, with the meaning Samba's smb.conf options of the same names have.

- Hosts (server-wide: checked when a connection arrives, before anything is read from it;
  per share: at TREE_CONNECT): a client in ``hosts_allow`` is let in whatever
  ``hosts_deny`` says; one in ``hosts_deny`` is not; with a non-empty ``hosts_allow`` no
  one else is either. Entries are addresses, networks (``10.0.0.0/8``) or ``ALL``.
- Users (per share, at TREE_CONNECT): one in ``invalid_users`` is refused; with a
  non-empty ``valid_users`` only those in it get in. ``read_list`` makes a writable share
  read-only for its users and ``write_list`` a read-only share writable (write wins).
  Entries are SMB user names or ``@group``: the members of that Unix group, the user's
  Unix account (smbd.accounts.UserEntry.unix_name) by primary group or by membership.
  Guest and anonymous sessions are no user: a ``valid_users`` list keeps them out.
"""
from __future__ import annotations

import functools
import grp
import ipaddress
import pwd
import re
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_RDMA_PEER = re.compile(r"rdma:\('([^']+)', \d+")  # smbdd.proxy's "rdma:('10.0.0.2', 4242)"


class AccessConfigError(ValueError):
    """A hosts entry that is no address, network or ALL."""


def parse_hosts(entries: tuple[str, ...] | list[str], where: str) -> tuple[Network, ...]:
    out = []
    for entry in entries:
        if not isinstance(entry, str):
            raise AccessConfigError(f"{where}: {entry!r} is not a string")
        if entry.upper() == "ALL":
            out += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
            continue
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise AccessConfigError(f"{where}: {entry!r} is not an address, a network (10.0.0.0/8) or ALL") from None
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _networks(entries: tuple[str, ...], where: str) -> tuple[Network, ...]:
    """parse_hosts for the lists of the configuration, once per list rather than per connection."""
    return parse_hosts(entries, where)


def peer_address(peer: str | tuple) -> Address | None:
    """The client's IP address from a transport's peer ("1.2.3.4:445", "::1:445", a
    socket address tuple, or the proxy's "rdma:(...)"); IPv4-mapped IPv6 as IPv4."""
    if isinstance(peer, tuple):
        host = peer[0]
    else:
        m = _RDMA_PEER.match(peer)
        host = m[1] if m else peer.rpartition(":")[0].strip("[]")
    try:
        addr = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def host_allowed(addr: Address | None, allow: tuple[str, ...], deny: tuple[str, ...]) -> bool:
    if not allow and not deny:
        return True
    if addr is None:
        return False  # an address we cannot read matches no allow entry
    allow_nets, deny_nets = _networks(tuple(allow), "hosts_allow"), _networks(tuple(deny), "hosts_deny")
    if any(addr in net for net in allow_nets if net.version == addr.version):
        return True
    if any(addr in net for net in deny_nets if net.version == addr.version):
        return False
    return not allow_nets


def in_list(entries: tuple[str, ...], user: str | None, unix_name: str | None) -> bool:
    """Whether the SMB user (None: guest or anonymous) is named in ``entries``."""
    if user is None:
        return False
    low = user.lower()
    for entry in entries:
        if entry.startswith("@"):
            if unix_name and _in_group(unix_name, entry[1:]):
                return True
        elif entry.lower() == low:
            return True
    return False


def _in_group(unix_name: str, group: str) -> bool:
    try:
        gr = grp.getgrnam(group)
    except KeyError:
        return False
    if unix_name in gr.gr_mem:
        return True
    try:
        return pwd.getpwnam(unix_name).pw_gid == gr.gr_gid
    except KeyError:
        return False


@dataclass(frozen=True)
class ShareDecision:
    allowed: bool
    read_only: bool = False
    why: str = ""


def share_decision(share, user: str | None, unix_name: str | None) -> ShareDecision:
    """The user's access to ``share`` (a ShareConfig) from its user lists."""
    if in_list(share.invalid_users, user, unix_name):
        return ShareDecision(False, why=f"user {user} is in invalid_users")
    if share.valid_users and not in_list(share.valid_users, user, unix_name):
        return ShareDecision(False, why=f"{'guest' if user is None else 'user ' + user} is not in valid_users")
    read_only = share.read_only
    if not read_only and in_list(share.read_list, user, unix_name):
        read_only = True
    if read_only and in_list(share.write_list, user, unix_name):
        read_only = False
    return ShareDecision(True, read_only=read_only)
