"""A tiny raw SMB2 client for tests: it sends exactly the bytes a test asks for.

Nothing here imports the server's codecs: every layout is written out again from the spec
so that a test compares the server against MS-SMB2, not against itself.  The builders
return plain bytes, so a test can cut, patch or append anything before sending.

* direct TCP framing: MS-SMB2 2.1 (a zero byte, then a 24-bit big-endian length);
* the sync header: MS-SMB2 2.2.1.2;
* request bodies: NEGOTIATE 2.2.3 (+ contexts 2.2.3.1), SESSION_SETUP 2.2.5,
  TREE_CONNECT 2.2.9, CREATE 2.2.13, CLOSE 2.2.15, READ 2.2.19, WRITE 2.2.21,
  IOCTL 2.2.31, QUERY_INFO 2.2.37, ECHO 2.2.28, LOGOFF 2.2.7.

Authentication tokens come from pyspnego (NTLM inside SPNEGO); signing is not done, so the
session is opened with SecurityMode SIGNING_ENABLED only (the server then accepts unsigned
requests, MS-SMB2 3.3.5.2.4).
"""
from __future__ import annotations

import socket
import struct
import uuid
from dataclasses import dataclass

# --- constants (MS-SMB2 2.2.1 and friends) ----------------------------------------------------

PROTOCOL_ID = b"\xfeSMB"
HEADER_SIZE = 64

NEGOTIATE, SESSION_SETUP, LOGOFF, TREE_CONNECT, TREE_DISCONNECT = 0, 1, 2, 3, 4
CREATE, CLOSE, FLUSH, READ, WRITE, LOCK, IOCTL, CANCEL, ECHO = 5, 6, 7, 8, 9, 10, 11, 12, 13
QUERY_DIRECTORY, CHANGE_NOTIFY, QUERY_INFO, SET_INFO = 14, 15, 16, 17

FLAG_SERVER_TO_REDIR = 0x1
FLAG_ASYNC = 0x2
FLAG_RELATED = 0x4

STATUS_SUCCESS = 0x00000000
STATUS_PENDING = 0x00000103
STATUS_MORE_PROCESSING_REQUIRED = 0xC0000016

DIALECTS_ALL = (0x0202, 0x0210, 0x0300, 0x0302, 0x0311)
SHA512 = 0x0001

GENERIC_READ = 0x80000000
GENERIC_WRITE = 0x40000000
FILE_READ_DATA = 0x1
FILE_WRITE_DATA = 0x2
FILE_READ_ATTRIBUTES = 0x80
SYNCHRONIZE = 0x00100000
READ_ACCESS = FILE_READ_DATA | FILE_READ_ATTRIBUTES | SYNCHRONIZE
READ_WRITE_ACCESS = READ_ACCESS | FILE_WRITE_DATA
SHARE_ALL = 0x7
FILE_OPEN, FILE_CREATE, FILE_OPEN_IF, FILE_OVERWRITE_IF = 1, 2, 3, 5
FILE_NON_DIRECTORY_FILE = 0x40

_HEADER = struct.Struct("<4sHHIHHIIQIIQ16s")  # 2.2.1.2 (sync): Reserved(ProcessId) + TreeId
assert _HEADER.size == HEADER_SIZE


# --- builders -----------------------------------------------------------------------------------

def nbss(message: bytes) -> bytes:
    """MS-SMB2 2.1 Direct TCP transport header + message."""
    return len(message).to_bytes(4, "big") + message


def header(command: int, message_id: int, *, credit_charge: int = 1, credits: int = 1, flags: int = 0,
           next_command: int = 0, tree_id: int = 0, session_id: int = 0, status: int = 0,
           protocol_id: bytes = PROTOCOL_ID, structure_size: int = HEADER_SIZE,
           signature: bytes = b"\0" * 16) -> bytes:
    """The 64-byte SMB2 sync header, MS-SMB2 2.2.1.2, with every field settable (even to wrong values)."""
    return _HEADER.pack(protocol_id, structure_size, credit_charge, status, command, credits, flags,
                        next_command, message_id, 0, tree_id, session_id, signature)


def negotiate_context(ctype: int, data: bytes) -> bytes:
    """NEGOTIATE_CONTEXT, MS-SMB2 2.2.3.1: ContextType, DataLength, Reserved, Data."""
    return struct.pack("<HHI", ctype, len(data), 0) + data


def preauth_context(salt: bytes = b"\x11" * 32, hashes: tuple[int, ...] = (SHA512,)) -> bytes:
    """SMB2_PREAUTH_INTEGRITY_CAPABILITIES, 2.2.3.1.1."""
    data = struct.pack("<HH", len(hashes), len(salt)) + b"".join(struct.pack("<H", h) for h in hashes) + salt
    return negotiate_context(0x0001, data)


def negotiate_body(dialects=DIALECTS_ALL, client_guid: uuid.UUID | None = None, *, security_mode: int = 1,
                   capabilities: int = 0, contexts: list[bytes] | None = None,
                   context_count: int | None = None, structure_size: int = 36) -> bytes:
    """NEGOTIATE request, 2.2.3.  Contexts (already encoded) are 8-byte aligned from the header start;
    when 3.1.1 is offered and ``contexts`` is None a preauth context is added."""
    guid = (client_guid or uuid.uuid4()).bytes_le
    if contexts is None:
        contexts = [preauth_context()] if 0x0311 in dialects else []
    dialect_bytes = b"".join(struct.pack("<H", d) for d in dialects)
    fixed_len = 36
    ctx_blob = b""
    ctx_offset = 0
    if contexts:
        end = HEADER_SIZE + fixed_len + len(dialect_bytes)
        ctx_offset = (end + 7) & ~7
        dialect_bytes += b"\0" * (ctx_offset - end)
        for i, ctx in enumerate(contexts):
            if i:
                ctx_blob += b"\0" * (-len(ctx_blob) % 8)
            ctx_blob += ctx
    count = len(contexts) if context_count is None else context_count
    fixed = struct.pack("<HHHHI16sIHH", structure_size, len(dialects), security_mode, 0, capabilities, guid,
                        ctx_offset, count, 0)
    return fixed + dialect_bytes + ctx_blob


def session_setup_body(token: bytes, *, security_mode: int = 1, offset: int | None = None,
                       length: int | None = None, structure_size: int = 25,
                       previous_session_id: int = 0) -> bytes:
    """SESSION_SETUP request, 2.2.5; the buffer follows the 24-byte fixed part (offset 88)."""
    off = HEADER_SIZE + 24 if offset is None else offset
    return struct.pack("<HBBIIHHQ", structure_size, 0, security_mode, 0, 0, off,
                       len(token) if length is None else length, previous_session_id) + token


def tree_connect_body(path: str) -> bytes:
    """TREE_CONNECT request, 2.2.9; path "\\\\server\\share" at offset 72."""
    raw = path.encode("utf-16-le")
    return struct.pack("<HHHH", 9, 0, HEADER_SIZE + 8, len(raw)) + raw


def create_body(name: str | bytes, *, access: int = READ_ACCESS, disposition: int = FILE_OPEN,
                options: int = 0, share: int = SHARE_ALL, attributes: int = 0,
                name_offset: int | None = None, name_length: int | None = None,
                contexts: bytes = b"", contexts_offset: int | None = None, structure_size: int = 57) -> bytes:
    """CREATE request, 2.2.13: 56-byte fixed part, name at offset 120, contexts 8-aligned after it."""
    raw = name.encode("utf-16-le") if isinstance(name, str) else name
    buf = raw or b"\0"  # the Buffer is at least one byte even for the root
    ctx_off = 0
    if contexts:
        ctx_off = (HEADER_SIZE + 56 + len(buf) + 7) & ~7
        buf += b"\0" * (ctx_off - HEADER_SIZE - 56 - len(buf)) + contexts
    fixed = struct.pack("<HBBIQQIIIIIHHII", structure_size, 0, 0, 2, 0, 0, access, attributes, share,
                        disposition, options,
                        HEADER_SIZE + 56 if name_offset is None else name_offset,
                        len(raw) if name_length is None else name_length,
                        ctx_off if contexts_offset is None else contexts_offset, len(contexts))
    return fixed + buf


def create_context(name: bytes, data: bytes = b"", next_offset: int = 0) -> bytes:
    """SMB2_CREATE_CONTEXT, 2.2.13.2: Next, NameOffset(16), NameLength, Reserved, DataOffset, DataLength."""
    data_off = (16 + len(name) + 7) & ~7 if data else 0
    out = struct.pack("<IHHHHI", next_offset, 16, len(name), 0, data_off, len(data)) + name
    if data:
        out += b"\0" * (data_off - len(out)) + data
    return out


def close_body(file_id: bytes) -> bytes:
    """CLOSE request, 2.2.15."""
    return struct.pack("<HHI", 24, 0, 0) + file_id


def read_body(file_id: bytes, length: int, offset: int = 0, *, minimum: int = 0) -> bytes:
    """READ request, 2.2.19: 48-byte fixed part and the one-byte Buffer."""
    return struct.pack("<HBBIQ16sIIIHH", 49, 0, 0, length, offset, file_id, minimum, 0, 0, 0, 0) + b"\0"


def write_body(file_id: bytes, data: bytes, offset: int = 0, *, data_offset: int | None = None,
               length: int | None = None) -> bytes:
    """WRITE request, 2.2.21: data at offset 112 unless told otherwise."""
    return struct.pack("<HHIQ16sIIHHI", 49, HEADER_SIZE + 48 if data_offset is None else data_offset,
                       len(data) if length is None else length, offset, file_id, 0, 0, 0, 0, 0) + data


def ioctl_body(file_id: bytes, ctl_code: int, data: bytes, *, input_offset: int | None = None,
               input_count: int | None = None, max_output: int = 4096) -> bytes:
    """IOCTL request, 2.2.31: input at offset 120 unless told otherwise; Flags = IS_FSCTL."""
    return struct.pack("<HHI16sIIIIIIII", 57, 0, ctl_code, file_id,
                       HEADER_SIZE + 56 if input_offset is None else input_offset,
                       len(data) if input_count is None else input_count, 0, 0, 0, max_output, 1, 0) + data


def query_info_body(file_id: bytes, info_type: int = 1, info_class: int = 5, output_length: int = 4096) -> bytes:
    """QUERY_INFO request, 2.2.37 (default FileStandardInformation)."""
    return struct.pack("<HBBIHHIII16s", 41, info_type, info_class, output_length, 0, 0, 0, 0, 0, file_id)


def echo_body() -> bytes:
    """ECHO (2.2.28) and LOGOFF (2.2.7) requests: StructureSize 4, Reserved."""
    return struct.pack("<HH", 4, 0)


# --- responses ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Response:
    """One SMB2 response: the header fields a test looks at, its body and the raw message."""

    status: int
    command: int
    credits: int
    flags: int
    next_command: int
    message_id: int
    tree_id: int
    session_id: int
    body: bytes
    raw: bytes

    @classmethod
    def parse(cls, raw: bytes) -> "Response":
        if len(raw) < HEADER_SIZE or raw[:4] != PROTOCOL_ID:
            raise AssertionError(f"not an SMB2 response: {raw[:16].hex()}")
        (_, _, _, status, command, credits, flags, nxt, mid, _, tree_id, sid, _) = _HEADER.unpack_from(raw)
        return cls(status, command, credits, flags, nxt, mid, tree_id, sid, raw[HEADER_SIZE:], raw)

    def split(self) -> list["Response"]:
        """The responses of a compounded reply (NextCommand chain, 3.3.4.1.3)."""
        out, pos = [], 0
        while True:
            part = Response.parse(self.raw[pos:])
            if part.next_command == 0:
                out.append(part)
                return out
            out.append(Response.parse(self.raw[pos:pos + part.next_command]))
            pos += part.next_command

    @property
    def file_id(self) -> bytes:
        """CREATE response FileId (2.2.14: at body offset 64)."""
        return self.body[64:80]


class ConnectionClosed(Exception):
    """The server closed the connection."""


# --- the client -------------------------------------------------------------------------------------

class RawClient:
    """One TCP connection; tracks message ids and the session/tree it opened."""

    def __init__(self, host: str, port: int, *, timeout: float = 5.0, client_guid: uuid.UUID | None = None):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.host, self.port = host, port
        self.client_guid = client_guid or uuid.uuid4()
        self.next_mid = 0
        self.session_id = 0
        self.tree_id = 0
        self.granted = 1  # credits held (MS-SMB2 3.2.4.1.5 bookkeeping, for the bounded-grant test)
        self.dialect = 0
        self._rx = bytearray()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # bytes level
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_message(self, message: bytes) -> None:
        self.send_raw(nbss(message))

    def _read_exactly(self, n: int) -> bytes:
        while len(self._rx) < n:
            try:
                chunk = self.sock.recv(max(65536, n - len(self._rx)))
            except ConnectionResetError as e:
                raise ConnectionClosed("reset") from e
            if not chunk:
                raise ConnectionClosed("EOF")
            self._rx += chunk
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out

    def recv(self) -> Response:
        """The next response (socket.timeout if none in time, ConnectionClosed on EOF/reset)."""
        head = self._read_exactly(4)
        if head[0] != 0:
            raise AssertionError(f"bad transport header {head.hex()}")
        msg = Response.parse(self._read_exactly(int.from_bytes(head[1:], "big")))
        self.granted += msg.credits
        return msg

    def recv_final(self) -> Response:
        """The next response that is not an interim STATUS_PENDING (3.3.4.2)."""
        while True:
            r = self.recv()
            if not (r.status == STATUS_PENDING and r.flags & FLAG_ASYNC):
                return r

    def is_closed(self, timeout: float = 5.0) -> bool:
        """True if the server closes the connection within ``timeout`` (responses before are skipped)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                self.recv()
        except ConnectionClosed:
            return True
        except (socket.timeout, TimeoutError):
            return False

    # message level
    def take_mid(self, charge: int = 1) -> int:
        mid = self.next_mid
        self.next_mid += max(charge, 1)
        self.granted -= max(charge, 1)
        return mid

    def build(self, command: int, body: bytes, **fields) -> bytes:
        """Header + body with this connection's ids; any header field may be overridden."""
        charge = fields.pop("credit_charge", 1)
        mid = fields.pop("message_id", None)
        if mid is None:
            mid = self.take_mid(charge)
        fields.setdefault("session_id", self.session_id)
        fields.setdefault("tree_id", self.tree_id)
        fields.setdefault("credits", 64)
        return header(command, mid, credit_charge=charge, **fields) + body

    def call(self, command: int, body: bytes, **fields) -> Response:
        self.send_message(self.build(command, body, **fields))
        return self.recv_final()

    # the usual steps
    def negotiate(self, dialects=DIALECTS_ALL, **kw) -> Response:
        r = self.call(NEGOTIATE, negotiate_body(dialects, self.client_guid, **kw))
        if r.status == STATUS_SUCCESS:
            self.dialect = struct.unpack_from("<H", r.body, 4)[0]
        return r

    def session_setup(self, user: str, password: str, previous_session_id: int = 0) -> Response:
        """NTLM in SPNEGO via pyspnego; returns the final SESSION_SETUP response."""
        import spnego

        ctx = spnego.client(user, password, hostname="localhost", service="cifs", protocol="ntlm")
        token = ctx.step()
        while True:
            r = self.call(SESSION_SETUP, session_setup_body(token, previous_session_id=previous_session_id))
            if r.status != STATUS_MORE_PROCESSING_REQUIRED:
                return r
            self.session_id = r.session_id
            off, length = struct.unpack_from("<HH", r.body, 4)
            token = ctx.step(r.raw[off:off + length])

    def tree_connect(self, share: str) -> Response:
        r = self.call(TREE_CONNECT, tree_connect_body(f"\\\\{self.host}\\{share}"))
        if r.status == STATUS_SUCCESS:
            self.tree_id = r.tree_id
        return r

    def login(self, user: str, password: str, share: str | None = None) -> "RawClient":
        """NEGOTIATE, SESSION_SETUP and (optionally) TREE_CONNECT, each checked for success."""
        for step in (lambda: self.negotiate(), lambda: self.session_setup(user, password),
                     lambda: self.tree_connect(share) if share else None):
            r = step()
            if r is not None and r.status != STATUS_SUCCESS:
                raise AssertionError(f"setup step failed: 0x{r.status:08X}")
        return self

    def create(self, name: str, **kw) -> Response:
        return self.call(CREATE, create_body(name, **kw))

    def open_file(self, name: str, **kw) -> bytes:
        r = self.create(name, **kw)
        if r.status != STATUS_SUCCESS:
            raise AssertionError(f"CREATE {name!r} failed: 0x{r.status:08X}")
        return r.file_id

    def echo(self) -> Response:
        return self.call(ECHO, echo_body())

