"""Named pipes on the IPC$ share: CREATE, READ, WRITE and FSCTL_PIPE_TRANSCEIVE carrying DCE/RPC.

MS-SMB2 3.3.5.9 (CREATE on a pipe share), 3.3.5.12/3.3.5.13 (READ/WRITE on a named pipe),
3.3.5.15.1 (FSCTL_PIPE_TRANSCEIVE). The pipes are in message mode, as Windows' RPC pipes:
every PDU the RPC layer produces is one message; a READ or a transceive shorter than the
message returns what fits with STATUS_BUFFER_OVERFLOW and leaves the rest for the next READ.

The RPC work itself (smbd.rpc) is pure computation on a few hundred bytes, so it runs on
the event loop; only file I/O goes to the thread pool.
"""
from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING, Callable

from smbd.fscc.constants import FileAttributes
from smbd.rpc import PduFramer, RpcAssociation, RpcInterface, RpcProtocolError
from smbd.rpc.srvsvc import ServerIdentity, ShareEntry, ShareType, SrvsvcInterface, SHI1005_FLAGS_ENCRYPT_DATA
from smbd.status import NtStatus, SmbError
from smbd.wire import fileio
from smbd.wire.create import CreateAction, CreateRequest, CreateResponse, OplockLevel

from .objects import Open

if TYPE_CHECKING:
    from .config import ServerConfig
    from .connection import Request

log = logging.getLogger("smbd.ipc")

MAX_PENDING_OUTPUT = 4 << 20  # a client that writes without ever reading cannot grow us further



class PipeEndpoint:
    """The server end of one opened pipe: bytes written in, response messages queued out."""

    def __init__(self, name: str, interface: RpcInterface):
        self.name = name
        self.association = RpcAssociation(interface, "\\PIPE\\" + name)
        self._framer = PduFramer()
        self._messages: collections.deque[memoryview] = collections.deque()
        self._queued = 0
        self.broken = False

    @property
    def pending(self) -> int:
        """Bytes of response messages not read yet."""
        return self._queued

    def write(self, data: bytes | memoryview) -> None:
        """Bytes the client wrote; each whole PDU is handled at once (MS-RPCE 2.1.1.2 ncacn_np)."""
        if self.broken:
            raise SmbError(NtStatus.PIPE_DISCONNECTED)
        try:
            for pdu in self._framer.feed(data):
                for reply in self.association.receive(pdu):
                    self._messages.append(memoryview(reply))
                    self._queued += len(reply)
        except RpcProtocolError as e:
            # As Samba does: a malformed PDU ends the association; the pipe is unusable.
            log.info("pipe %s: RPC protocol error: %s", self.name, e)
            self.broken = True
            raise SmbError(NtStatus.PIPE_DISCONNECTED, str(e)) from e
        if self._queued > MAX_PENDING_OUTPUT:
            self.broken = True
            raise SmbError(NtStatus.INSUFFICIENT_RESOURCES, "pipe output never read")

    def read(self, length: int) -> tuple[bytes, bool]:
        """Up to *length* bytes of the next message; True when part of it stays behind."""
        if not self._messages:
            if self.broken:
                raise SmbError(NtStatus.PIPE_DISCONNECTED)
            # Our RPC server answers synchronously, so an empty pipe means the client
            # read before writing a request: nothing will ever arrive.
            raise SmbError(NtStatus.PIPE_EMPTY)
        msg = self._messages[0]
        part = bytes(msg[:length])
        if len(msg) > length:
            self._messages[0] = msg[length:]
            overflow = True
        else:
            self._messages.popleft()
            overflow = False
        self._queued -= len(part)
        return part, overflow

    def transceive(self, data: bytes | memoryview, max_output: int) -> tuple[bytes, bool]:
        """FSCTL_PIPE_TRANSCEIVE: write one request, read one message (MS-FSCC 2.3.49)."""
        if self._messages:
            # MS-FSCC 2.3.50: a transaction is refused while unread data sits in the pipe.
            raise SmbError(NtStatus.PIPE_BUSY, "unread data in the pipe")
        self.write(data)
        if not self._messages:
            return b"", False  # a non-final request fragment: nothing to answer yet
        return self.read(max_output)


# ---- what the pipes serve --------------------------------------------------------------


def server_identity(config: "ServerConfig") -> ServerIdentity:
    """The srvsvc view of the configuration: every share plus IPC$ (as Windows lists it)."""
    shares = []
    for s in config.shares:
        kind = ShareType.DISKTREE | (ShareType.SPECIAL if s.name.endswith("$") else 0)
        path = "C:" + s.path.replace("/", "\\")  # Windows clients expect a drive-letter path
        flags = SHI1005_FLAGS_ENCRYPT_DATA if s.encrypt else 0
        shares.append(ShareEntry(s.name, int(kind), s.comment, path, flags))
    shares.append(ShareEntry("IPC$", int(ShareType.IPC | ShareType.SPECIAL), "Remote IPC"))
    return ServerIdentity(config.netbios_name.upper(), "smbdd", tuple(shares))


def _srvsvc(config: "ServerConfig", restricted: bool = False) -> RpcInterface:
    return SrvsvcInterface(lambda: server_identity(config), restricted=restricted)


# Pipe name -> factory(config, restricted); restricted is True for anonymous and guest sessions.
PIPES: dict[str, Callable[["ServerConfig", bool], RpcInterface]] = {"srvsvc": _srvsvc}


def pipe_name(create_name: str) -> str:
    """The pipe a CREATE on IPC$ names. Like Samba and Windows, only the bare name
    ("srvsvc") is valid; "\\PIPE\\srvsvc" is the SMB1 spelling and is not found."""
    return create_name.lower()


# ---- SMB2 glue -------------------------------------------------------------------------


async def open_pipe(req: "Request", create: CreateRequest) -> bytes:
    """CREATE on the IPC$ tree (MS-SMB2 3.3.5.9): open a pipe endpoint."""
    name = pipe_name(create.name)
    factory = PIPES.get(name)
    if factory is None:
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, f"no pipe {create.name!r}")
    server = req.server
    session = req.session
    endpoint = PipeEndpoint(name, factory(server.config, bool(session.is_anonymous or session.is_guest)))
    op = Open(server.persistent_ids(), server.new_volatile_id(), req.session, req.tree,
              req.tree.maximal_access, create.share_access, (name,), -1, False, create.options,
              connection=req.conn)
    op.pipe = endpoint
    server.register_open(op)
    req.created_file_id = op.file_id
    # What Windows and Samba answer for a pipe: opened, no times, no size, FILE_ATTRIBUTE_NORMAL.
    return CreateResponse(OplockLevel.NONE, 0, CreateAction.OPENED, 0, 0, 0, 0, 0, 0,
                          int(FileAttributes.NORMAL), op.file_id).pack()


async def write_pipe(req: "Request", op: Open, wr: fileio.WriteRequest) -> bytes:
    """WRITE on a pipe (MS-SMB2 3.3.5.13): the data is RPC input."""
    if wr.channel != fileio.Channel.NONE:
        raise SmbError(NtStatus.INVALID_PARAMETER, "RDMA write to a pipe")
    op.pipe.write(wr.data)
    return fileio.write_response(len(wr.data))


async def read_pipe(req: "Request", op: Open, rd: fileio.ReadRequest) -> list:
    """READ on a pipe (MS-SMB2 3.3.5.12): the next response message, or what fits of it."""
    if rd.channel != fileio.Channel.NONE:
        raise SmbError(NtStatus.INVALID_PARAMETER, "RDMA read from a pipe")
    data, overflow = op.pipe.read(rd.length)
    if overflow:
        req.status = NtStatus.BUFFER_OVERFLOW
    return [fileio.read_response_header(len(data)), data]


def transceive(req: "Request", op: Open, data: bytes, max_output: int) -> bytes:
    """FSCTL_PIPE_TRANSCEIVE (MS-SMB2 3.3.5.15.1): request PDU in, response PDU out."""
    if op.pipe is None:
        raise SmbError(NtStatus.INVALID_DEVICE_REQUEST, "transceive on a file that is not a pipe")
    out, overflow = op.pipe.transceive(data, max_output)
    if overflow:
        req.status = NtStatus.BUFFER_OVERFLOW
    return out
