"""Server state objects, typed after MS-SMB2 3.3.1 (not dicts)."""
from __future__ import annotations

import enum
import itertools
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from smbd.crypto import SessionKeys

from .channel_sequence import SequenceState

if TYPE_CHECKING:
    from smbd.vfs.posix import Share as VfsShare

    from .config import ShareConfig


class SessionState(enum.Enum):
    IN_PROGRESS = "in-progress"
    VALID = "valid"
    EXPIRED = "expired"


@dataclass(eq=False)
class Channel:
    """3.3.1.14 Per Channel: the signing key a session uses on one connection."""

    connection: Any  # smbd.server.connection.SmbConnection
    signing_key: bytes = b""


@dataclass(eq=False)
class TreeConnect:
    """3.3.1.10 Per Tree Connect."""

    tree_id: int
    session: "Session"
    share: "ShareConfig | None"  # None for IPC$
    vfs: "VfsShare | None"
    maximal_access: int
    encrypt: bool = False
    sign: bool = False  # unsigned, unencrypted requests on this tree are refused
    read_only: bool = False  # the share's read_only, or the user's by read_list/write_list

    @property
    def is_ipc(self) -> bool:
        return self.share is None


@dataclass(eq=False)
class Session:
    """3.3.1.8 Per Session."""

    session_id: int
    dialect: int
    state: SessionState = SessionState.IN_PROGRESS
    user: str = ""
    domain: str = ""
    is_guest: bool = False
    is_anonymous: bool = False
    creds: Any = None  # smbd.identity.Credentials the session's file operations run with
    session_key: bytes = b""
    keys: SessionKeys | None = None
    signing_required: bool = False
    encrypt_data: bool = False
    client_encrypts: bool = False  # an encrypted request came, whether or not the server asked
    cipher: int = 0
    signing_algorithm: int = 0
    trees: dict[int, TreeConnect] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)  # id(connection) -> Channel
    client_guid: uuid.UUID | None = None
    next_tree_id: Any = field(default_factory=lambda: itertools.count(1))
    # Requests whose channel failed while they ran, left to finish because the session
    # lives on in other channels (smbd.server.connection.SmbConnection.close).
    orphaned: set = field(default_factory=set)

    def channel_for(self, connection: Any) -> Channel | None:
        return self.channels.get(id(connection))

    def other_live_channel(self, connection: Any) -> bool:
        return any(c.connection is not connection and not c.connection.closed for c in self.channels.values())


@dataclass(eq=False)
class DirectoryCursor:
    """Enumeration state of an open directory for QUERY_DIRECTORY (3.3.5.18)."""

    pattern: str | None = None
    entries: list | None = None
    position: int = 0


@dataclass(eq=False)
class Open:
    """3.3.1.10 Per Open (the SMB2 handle)."""

    persistent_id: int
    volatile_id: int
    session: Session
    tree: TreeConnect
    granted_access: int
    share_access: int
    components: tuple[str, ...]
    fd: int
    is_dir: bool
    create_options: int
    connection: Any = None
    delete_on_close: bool = False
    delete_pending: bool = False
    position: int = 0
    mode: int = 0
    cursor: DirectoryCursor = field(default_factory=DirectoryCursor)
    share_lock: Any = None  # smbd.server.sharemode.ShareModeLock
    pipe: Any = None  # for IPC$ opens: the RPC pipe endpoint
    closed: bool = False
    notify: Any = None  # smbd.server.notify.Watch when CHANGE_NOTIFY was used
    write_time_frozen: bool = False
    file_key: int | None = None  # the inode: opens of one file share delete-pending state
    # A named stream (smbd.vfs.streams): fd is the stream's own, file_key its inode; the base
    # file stays open as base_fd (its metadata, and the OFD slots other workers test before a
    # delete or rename of the file) and base_key is the base file's inode.
    stream: str | None = None
    base_fd: int = -1
    base_key: int | None = None
    # Leases and durability (MS-SMB2 3.3.1.10 Open.Lease, Open.IsDurable, Open.DurableOpenTimeout,
    # Open.CreateGuid, Open.ClientGuid, Open.DurableOwner).
    lease: Any = None  # smbd.server.leases.Lease
    durable: bool = False
    durable_v2: bool = False
    durable_timeout: float = 0.0  # seconds a disconnected durable open is kept
    persistent: bool = False  # a persistent handle (smbd.server.persistent)
    create_guid: Any = None  # uuid.UUID of DH2Q, for replays and DH2C
    client_guid: Any = None  # uuid.UUID of the connection that created it
    owner: tuple[str, str] = ("", "")  # (domain, user) allowed to reconnect it
    disconnected: bool = False  # kept after its connection dropped, waiting for a reconnect
    lock_sequences: dict = field(default_factory=dict)  # Open.LockSequenceArray: index -> number
    sequence: Any = field(default_factory=SequenceState)  # 3.3.5.2.10 ChannelSequence counts
    create_action: int = 1  # what the CREATE did (CreateAction), for the answer to a replay
    # A replayed CREATE with this Open's CreateGuid gets this Open back only until another
    # request uses the handle; after that the client cannot be resending (Samba clears its
    # replay cache on the first lookup of the handle).
    replay_cached: bool = False

    @property
    def file_id(self) -> tuple[int, int]:
        return (self.persistent_id, self.volatile_id)

    @property
    def display_name(self) -> str:
        name = "\\".join(self.components)
        return name if self.stream is None else f"{name}:{self.stream}"

    @property
    def meta_fd(self) -> int:
        """The fd whose file holds times, attributes, EAs and the security descriptor: a named
        stream has them from its file (MS-FSA 2.1.1.3: they belong to the File, not the Stream)."""
        return self.base_fd if self.stream is not None else self.fd
