"""Observe a server's negotiated security with smbprotocol (a second, independent client).

smbclient does not say whether it signed or sealed; smbprotocol exposes the fields the server
sent: NEGOTIATE SecurityMode (MS-SMB2 2.2.4, SMB2_NEGOTIATE_SIGNING_REQUIRED = 0x0002),
SESSION_SETUP SessionFlags (2.2.6, SMB2_SESSION_FLAG_ENCRYPT_DATA = 0x0004) and TREE_CONNECT
ShareFlags (2.2.10, SMB2_SHAREFLAG_ENCRYPT_DATA = 0x00008000).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from .server_under_test import ServerUnderTest

SMB2_NEGOTIATE_SIGNING_REQUIRED = 0x0002

# smbclient -m names -> dialect revision numbers (MS-SMB2 2.2.3).
DIALECTS = {"SMB2_02": 0x0202, "SMB2_10": 0x0210, "SMB3_00": 0x0300, "SMB3_02": 0x0302,
            "SMB3_11": 0x0311}


@dataclass(frozen=True, slots=True)
class NegotiatedSecurity:
    dialect: int
    security_mode: int
    session_encrypts: bool
    tree_encrypts: bool

    @property
    def signing_required(self) -> bool:
        return bool(self.security_mode & SMB2_NEGOTIATE_SIGNING_REQUIRED)

    @property
    def encrypted(self) -> bool:
        return self.session_encrypts or self.tree_encrypts


def probe_security(server: ServerUnderTest, protocol: str = "SMB3_11",
                   timeout: float = 30) -> NegotiatedSecurity:
    """Negotiate, log on and tree-connect without asking for encryption, and report what
    the server imposed.

    The client signs (its own SecurityMode does not change the server's): a 3.1.1 server
    may refuse an unsigned TREE_CONNECT, as Samba does with STATUS_ACCESS_DENIED.
    """
    from smbprotocol.connection import Connection
    from smbprotocol.session import Session
    from smbprotocol.tree import TreeConnect

    connection = Connection(uuid.uuid4(), server.host, server.port, require_signing=True)
    connection.connect(dialect=DIALECTS[protocol], timeout=timeout)
    try:
        session = Session(connection, server.user, server.password,
                          require_encryption=False)
        session.connect()
        tree = TreeConnect(session, rf"\\{server.host}\{server.share_name}")
        # No FSCTL_VALIDATE_NEGOTIATE_INFO: smbprotocol 1.17 sends one that Samba answers
        # by dropping the connection when the dialect was forced to 2.x; smbclient covers
        # validate-negotiate in the other tests.
        tree.connect(require_secure_negotiate=False)
        result = NegotiatedSecurity(
            dialect=connection.dialect, security_mode=connection.server_security_mode,
            session_encrypts=bool(session.encrypt_data),
            tree_encrypts=bool(tree.encrypt_data))
        tree.disconnect()
        session.disconnect()
        return result
    finally:
        connection.disconnect()
