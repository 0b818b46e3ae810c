"""Re-authentication, multichannel session binding and PreviousSessionId against a real smbdd.

The client here signs: NTLM tokens and the ExportedSessionKey come from pyspnego, and the
SMB 3.x key schedule is written again from the spec (MS-SMB2 3.1.4.2 KDF, 3.2.5.2 preauth
hash, 3.1.4.1 signing with `cryptography`'s CMAC/HMAC), not taken from the server's code.
Every response the tests rely on is checked for a valid signature with the key the spec
names for it, so a server that signs with the wrong key (or none) fails.

- binding (MS-SMB2 3.3.5.5.2): a second TCP connection of the same ClientGUID binds to the
  session with its own channel signing key (3.1.1: derived with that connection's preauth
  hash) and uses a handle opened on the first; the refusals (dialect, unsigned request,
  another ClientGUID's worker) carry the statuses Windows and Samba give;
- re-authentication (3.3.5.5.3 on a valid session): the same session, same keys, same opens;
- PreviousSessionId: the old session is logged off;
- 3.1.1 with only HMAC-SHA256 offered in SMB2_SIGNING_CAPABILITIES signs with HMAC-SHA256.
"""
from __future__ import annotations

import hashlib
import hmac
import struct
import uuid

import pytest

from tests.smb2client import (CLOSE, CREATE, FILE_OPEN_IF, HEADER_SIZE, LOGOFF, NEGOTIATE, QUERY_INFO,
                              READ_WRITE_ACCESS, SESSION_SETUP, WRITE, STATUS_MORE_PROCESSING_REQUIRED,
                              STATUS_SUCCESS, TREE_CONNECT, RawClient, close_body, create_body, create_context,
                              echo_body,
                              negotiate_body, negotiate_context, preauth_context, query_info_body,
                              tree_connect_body, write_body)
from tests.smbdd_process import PASSWORD, USER, Smbdd

spnego = pytest.importorskip("spnego")
cmac_mod = pytest.importorskip("cryptography.hazmat.primitives.cmac")
from cryptography.hazmat.primitives.ciphers import algorithms  # noqa: E402

# MS-ERREF 2.3.1
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_USER_SESSION_DELETED = 0xC0000203
STATUS_REQUEST_NOT_ACCEPTED = 0xC00000D0
STATUS_NOT_SUPPORTED = 0xC00000BB

FLAG_SIGNED = 0x8
SESSION_FLAG_BINDING = 0x01
SIGNING_REQUIRED = 0x2
SIGNING_CAPABILITIES = 0x0008  # 2.2.3.1.7
HMAC_SHA256, AES_CMAC, AES_GMAC = 0, 1, 2


# --- the key schedule, from the spec --------------------------------------------------------------

def kdf(key: bytes, label: bytes, context: bytes) -> bytes:
    """SP800-108 counter mode, HMAC-SHA256, one block, L = 128 (MS-SMB2 3.1.4.2)."""
    data = struct.pack(">I", 1) + label + b"\0" + context + struct.pack(">I", 128)
    return hmac.new(key, data, hashlib.sha256).digest()[:16]


def signing_key(dialect: int, session_key: bytes, preauth: bytes) -> bytes:
    """Session.SigningKey / Channel.SigningKey (MS-SMB2 3.3.5.5.3)."""
    if dialect == 0x0311:
        return kdf(session_key, b"SMBSigningKey\0", preauth)
    return kdf(session_key, b"SMB2AESCMAC\0", b"SmbSign\0")


def signature(algorithm: int, key: bytes, message: bytes) -> bytes:
    """MS-SMB2 3.1.4.1 over the message with a zeroed Signature field."""
    blank = message[:48] + b"\0" * 16 + message[64:]
    if algorithm == HMAC_SHA256:
        return hmac.new(key, blank, hashlib.sha256).digest()[:16]
    mac = cmac_mod.CMAC(algorithms.AES(key))
    mac.update(blank)
    return mac.finalize()


def signing_context(algorithms_offered: tuple[int, ...]) -> bytes:
    data = struct.pack("<H", len(algorithms_offered)) + b"".join(struct.pack("<H", a) for a in algorithms_offered)
    return negotiate_context(SIGNING_CAPABILITIES, data)


class SigningClient(RawClient):
    """RawClient that signs its requests and checks the signatures of responses."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.preauth = b"\0" * 64
        self.algorithm = AES_CMAC
        self.key = b""  # this connection's channel signing key
        self.session_key = b""

    def connect(self, dialects=(0x0311,), algorithms_offered=(AES_CMAC,)) -> "SigningClient":
        contexts = [preauth_context(), signing_context(algorithms_offered)] if 0x0311 in dialects else []
        message = self.build(NEGOTIATE, negotiate_body(dialects, self.client_guid, contexts=contexts))
        self.send_message(message)
        r = self.recv_final()
        assert r.status == STATUS_SUCCESS
        self.dialect = struct.unpack_from("<H", r.body, 4)[0]
        if self.dialect == 0x0311:
            self.preauth = hashlib.sha512(hashlib.sha512(self.preauth + message).digest() + r.raw).digest()
            self.algorithm = _negotiated_signing(r) if len(algorithms_offered) else AES_CMAC
        return self

    def send_signed(self, command: int, body: bytes, key: bytes | None = None, algorithm: int | None = None,
                    **fields) -> None:
        message = bytearray(self.build(command, body, flags=fields.pop("flags", 0) | FLAG_SIGNED, **fields))
        message[48:64] = signature(self.algorithm if algorithm is None else algorithm, key or self.key,
                                   bytes(message))
        self.send_message(bytes(message))

    def call_signed(self, command: int, body: bytes, **kw):
        self.send_signed(command, body, **kw)
        r = self.recv_final()
        assert r.flags & FLAG_SIGNED, f"unsigned response 0x{r.status:08X}"
        assert r.raw[48:64] == signature(kw.get("algorithm", self.algorithm), kw.get("key") or self.key, r.raw)
        return r

    def setup(self, user: str = USER, password: str = PASSWORD, *, session_id: int = 0, flags: int = 0,
              previous: int = 0, sign_key: bytes | None = None, sign_algorithm: int | None = None):
        """One NTLM SESSION_SETUP exchange; returns (final response, ExportedSessionKey, preauth)."""
        ctx = spnego.client(user, password, hostname="localhost", service="cifs", protocol="ntlm")
        token = ctx.step()
        preauth = self.preauth
        while True:
            body = struct.pack("<HBBIIHHQ", 25, flags, SIGNING_REQUIRED, 0, 0, HEADER_SIZE + 24, len(token),
                               previous) + token
            if sign_key:
                message = bytearray(self.build(SESSION_SETUP, body, session_id=session_id, flags=FLAG_SIGNED))
                message[48:64] = signature(sign_algorithm if sign_algorithm is not None else self.algorithm,
                                           sign_key, bytes(message))
                message = bytes(message)
            else:
                message = self.build(SESSION_SETUP, body, session_id=session_id)
            self.send_message(message)
            r = self.recv_final()
            preauth = hashlib.sha512(preauth + message).digest()
            if r.status != STATUS_MORE_PROCESSING_REQUIRED:
                return r, (ctx.session_key if r.status == STATUS_SUCCESS else b""), preauth
            preauth = hashlib.sha512(preauth + r.raw).digest()
            session_id = r.session_id
            off, length = struct.unpack_from("<HH", r.body, 4)
            token = ctx.step(r.raw[off:off + length])

    def login(self, user: str = USER, password: str = PASSWORD, share: str | None = None) -> "SigningClient":
        r, key, preauth = self.setup(user, password)
        assert r.status == STATUS_SUCCESS, f"0x{r.status:08X}"
        self.session_id, self.session_key = r.session_id, key
        self.key = signing_key(self.dialect, key, preauth)
        assert r.raw[48:64] == signature(self.algorithm, self.key, r.raw), "final SESSION_SETUP badly signed"
        if share:
            t = self.call_signed(TREE_CONNECT, tree_connect_body(f"\\\\{self.host}\\{share}"))
            assert t.status == STATUS_SUCCESS
            self.tree_id = t.tree_id
        return self


def _negotiated_signing(r) -> int:
    """The SigningAlgorithmId of the NEGOTIATE response's signing context (2.2.4, 2.2.3.1.7)."""
    ctx_off, count = struct.unpack_from("<IH", r.body, 60)
    pos = ctx_off
    for _ in range(count):
        pos = (pos + 7) & ~7
        ctype, length = struct.unpack_from("<HH", r.raw, pos)
        if ctype == SIGNING_CAPABILITIES:
            return struct.unpack_from("<H", r.raw, pos + 10)[0]
        pos += 8 + length
    raise AssertionError("no signing context in the NEGOTIATE response")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Smbdd(tmp_path_factory.mktemp("binding"))
    yield srv
    srv.stop()


@pytest.fixture
def two_user_server(tmp_path):
    """smbdd with a second user, bob, beside the test client's own."""
    srv = Smbdd(tmp_path, "--user", "bob:other-pw")
    yield srv
    srv.stop()


def _client(server, guid=None) -> SigningClient:
    return SigningClient("127.0.0.1", server.port, client_guid=guid)


def _open(c: SigningClient, name: str) -> bytes:
    r = c.call_signed(CREATE, create_body(name, access=READ_WRITE_ACCESS, disposition=FILE_OPEN_IF))
    assert r.status == STATUS_SUCCESS, f"0x{r.status:08X}"
    return r.file_id


def _bind(first: SigningClient, second: SigningClient, **kw):
    """Bind ``second``'s connection to ``first``'s session, signed with the session key."""
    return second.setup(session_id=first.session_id, flags=SESSION_FLAG_BINDING,
                        sign_key=kw.pop("sign_key", first.key), sign_algorithm=first.algorithm, **kw)


@pytest.mark.parametrize("dialect", [0x0311, 0x0300])
def test_bound_channel_uses_the_sessions_open(server, dialect):
    guid = uuid.uuid4()
    with _client(server, guid) as c1, _client(server, guid) as c2:
        c1.connect((dialect,)).login(share="data")
        fid = _open(c1, f"bound-{dialect:x}.txt")
        c2.connect((dialect,))
        r, key, preauth = _bind(c1, c2)
        assert r.status == STATUS_SUCCESS, f"0x{r.status:08X}"
        assert r.session_id == c1.session_id
        c2.session_id, c2.tree_id = c1.session_id, c1.tree_id
        c2.key = signing_key(dialect, key, preauth)
        # 3.3.5.5.3: the final response is signed with the new channel's own key.
        assert r.raw[48:64] == signature(c2.algorithm, c2.key, r.raw)
        if dialect == 0x0311:
            assert c2.key != c1.key  # its own preauth hash and NTLM key
        q = c2.call_signed(QUERY_INFO, query_info_body(fid))
        assert q.status == STATUS_SUCCESS
        # The session key is no key of channel 2: a request signed with it is refused.
        c2.send_signed(QUERY_INFO, query_info_body(fid), key=c1.key)
        assert c2.recv_final().status == STATUS_ACCESS_DENIED
        # Channel 1 goes away; the session and its open live on through channel 2.
        c1.close()
        assert c2.call_signed(CLOSE, close_body(fid)).status == STATUS_SUCCESS


def test_bind_refusals(server):
    guid = uuid.uuid4()
    with _client(server, guid) as c1:
        c1.connect().login(share="data")
        # Another dialect on the same client (3.3.5.5.2: Connection.Dialect must match).
        with _client(server, guid) as c2:
            c2.connect((0x0302,))
            r, _, _ = _bind(c1, c2)
            assert r.status == STATUS_INVALID_PARAMETER
            assert r.raw[48:64] == signature(c1.algorithm, c1.key, r.raw)  # signed with Session.SigningKey
        # An unsigned binding request.
        with _client(server, guid) as c2:
            c2.connect()
            r, _, _ = _bind(c1, c2, sign_key=b"")
            assert r.status == STATUS_INVALID_PARAMETER
        # A forged signature: refused, and the answer is not signed with the session's key
        # (that would make the server a signing oracle for anyone knowing the SessionId).
        with _client(server, guid) as c2:
            c2.connect()
            r, _, _ = _bind(c1, c2, sign_key=b"\x01" * 16)
            assert r.status == STATUS_INVALID_PARAMETER
            assert r.raw[48:64] != signature(c1.algorithm, c1.key, r.raw)
        # 2.1 has no multichannel.
        with _client(server, guid) as c2:
            c2.connect((0x0210,))
            r, _, _ = _bind(c1, c2)
            assert r.status == STATUS_REQUEST_NOT_ACCEPTED
        # Another ClientGUID (another worker): a forged bind is refused there, signed
        # with nothing, and without BINDING a session of another connection is no session.
        with _client(server, uuid.uuid4()) as c3:
            c3.connect()
            r, _, _ = _bind(c1, c3, sign_key=b"\x02" * 16)
            assert r.status == STATUS_INVALID_PARAMETER
            assert r.raw[48:64] != signature(c1.algorithm, c1.key, r.raw)
            r, _, _ = c3.setup(session_id=c1.session_id, sign_key=c1.key)
            assert r.status == STATUS_USER_SESSION_DELETED
        # None of it harmed the session.
        assert c1.call_signed(0x000D, echo_body()).status == STATUS_SUCCESS


@pytest.mark.parametrize("dialect", [0x0311, 0x0300])
def test_bind_from_another_client_guid_moves_to_the_sessions_worker(server, dialect):
    """A channel that negotiated with another ClientGUID reaches another worker; its bind
    moves the connection to the session's worker (smbd.server.channel_move), where it
    uses the session's open, on and after the first channel's end."""
    with _client(server, uuid.uuid4()) as c1, _client(server, uuid.uuid4()) as c2:
        c1.connect((dialect,)).login(share="data")
        fid = _open(c1, f"moved-{dialect:x}.txt")
        before = set(server.worker_pids())
        c2.connect((dialect,))
        assert len(set(server.worker_pids()) | before) >= 2  # c2 is another worker's
        r, key, preauth = _bind(c1, c2)
        assert r.status == STATUS_SUCCESS, f"0x{r.status:08X}"
        assert r.session_id == c1.session_id
        c2.session_id, c2.tree_id = c1.session_id, c1.tree_id
        c2.key = signing_key(dialect, key, preauth)
        assert r.raw[48:64] == signature(c2.algorithm, c2.key, r.raw)  # the new channel's key
        assert c2.call_signed(WRITE, write_body(fid, b"moved")).status == STATUS_SUCCESS
        c1.close()
        q = c2.call_signed(QUERY_INFO, query_info_body(fid))
        assert q.status == STATUS_SUCCESS
        assert c2.call_signed(CLOSE, close_body(fid)).status == STATUS_SUCCESS
        assert c2.call_signed(0x000D, echo_body()).status == STATUS_SUCCESS
    assert (server.share / f"moved-{dialect:x}.txt").read_bytes() == b"moved"
    assert "channel moved to worker" in server.log()


def test_bind_as_another_user_is_refused(two_user_server):
    guid = uuid.uuid4()
    with _client(two_user_server, guid) as c1, _client(two_user_server, guid) as c2:
        c1.connect().login(share="data")
        c2.connect()
        r, _, _ = _bind(c1, c2, user="bob", password="other-pw")
        assert r.status == STATUS_ACCESS_DENIED
        assert c1.call_signed(0x000D, echo_body()).status == STATUS_SUCCESS


def test_reauthentication_keeps_session_keys_and_opens(server):
    with _client(server) as c:
        c.connect().login(share="data")
        fid = _open(c, "reauth.txt")
        r, key, _ = c.setup(session_id=c.session_id, sign_key=c.key)
        assert r.status == STATUS_SUCCESS and r.session_id == c.session_id
        assert key != c.session_key  # a new NTLM exchange...
        # ...but the session's keys stay (3.3.5.5.3): the old key still signs and verifies.
        assert r.raw[48:64] == signature(c.algorithm, c.key, r.raw)
        assert c.call_signed(QUERY_INFO, query_info_body(fid)).status == STATUS_SUCCESS
        # A re-authentication signed with another key is refused and harms nothing.
        r, _, _ = c.setup(session_id=c.session_id, sign_key=b"\x02" * 16)
        assert r.status == STATUS_ACCESS_DENIED
        assert c.call_signed(QUERY_INFO, query_info_body(fid)).status == STATUS_SUCCESS
        # A failed re-authentication ends the session (as Windows and Samba do).
        r, _, _ = c.setup("alice", "wrong", session_id=c.session_id, sign_key=c.key)
        assert r.status == 0xC000006D  # LOGON_FAILURE
        c.send_message(c.build(QUERY_INFO, query_info_body(fid)))
        assert c.recv_final().status == STATUS_USER_SESSION_DELETED


def test_previous_session_id_logs_off_the_old_session(server):
    """A reconnecting client (same ClientGUID, so the same worker) names its old session."""
    guid = uuid.uuid4()
    with _client(server, guid) as old, _client(server, guid) as new:
        old.connect().login(share="data")
        fid = _open(old, "previous.txt")
        new.connect()
        r, _, _ = new.setup(previous=old.session_id)
        assert r.status == STATUS_SUCCESS and r.session_id != old.session_id
        old.send_signed(QUERY_INFO, query_info_body(fid))
        assert old.recv_final().status == STATUS_USER_SESSION_DELETED


def test_previous_session_of_another_user_survives(two_user_server):
    guid = uuid.uuid4()
    with _client(two_user_server, guid) as old, _client(two_user_server, guid) as new:
        old.connect().login(share="data")
        new.connect()
        r, _, _ = new.setup("bob", "other-pw", previous=old.session_id)
        assert r.status == STATUS_SUCCESS
        assert old.call_signed(0x000D, echo_body()).status == STATUS_SUCCESS


def test_hmac_sha256_signing_in_311(server):
    """A 3.1.1 client offering only HMAC-SHA256 gets it (smbtorture signing-hmac-sha-256)."""
    with _client(server) as c:
        c.connect(algorithms_offered=(HMAC_SHA256,))
        assert c.algorithm == HMAC_SHA256
        c.login(share="data")  # checks the HMAC signatures of SESSION_SETUP and TREE_CONNECT
        assert c.call_signed(LOGOFF, echo_body()).status == STATUS_SUCCESS


def test_hmac_sha256_signature_in_311_matches_smbprotocol():
    """The server's signer against another implementation for 3.1.1 + HMAC-SHA256."""
    connection_module = pytest.importorskip("smbprotocol.connection")
    from smbd.crypto import sign

    key = bytes(range(0x20, 0x30))
    message = struct.pack("<4sHHIHHIIQIIQ16s", b"\xfeSMB", 64, 1, 0, 8, 1, 1, 0, 7, 0, 1, 0x55, b"\xaa" * 16)
    message += b"payload" * 9
    conn = connection_module.Connection.__new__(connection_module.Connection)
    conn.dialect = 0x0311
    conn.signing_algorithm_id = HMAC_SHA256
    expected = conn._generate_signature(message, key, 7, True, 8)
    assert sign(HMAC_SHA256, key, message, dialect=0x0311) == expected == signature(HMAC_SHA256, key, message)


def test_global_session_table_between_workers(tmp_path):
    """What one worker publishes another process finds; a dead worker's records are ignored."""
    import os
    import subprocess
    import sys

    from smbd.server.state import GlobalSessionTable, SessionRecord
    from smbd.store import open_volatile

    folder = tmp_path / "run"
    mine = GlobalSessionTable(open_volatile(folder))
    record = SessionRecord(0x1234, os.getpid(), 0x0311, AES_CMAC, 2, b"k" * 16, False, False, "alice", "WG")
    mine.publish(record)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o077 == 0 for p in folder.iterdir())  # signing keys inside
    lookup = ("import sys; from smbd.server.state import GlobalSessionTable; from smbd.store import open_volatile;"
              "r = GlobalSessionTable(open_volatile(sys.argv[1])).lookup(int(sys.argv[2], 16));"
              "print(r.to_json() if r else 'none')")

    def other(sid: int) -> str:
        return subprocess.run([sys.executable, "-c", lookup, str(folder), f"{sid:x}"], check=True,
                              capture_output=True, text=True, cwd=os.getcwd()).stdout.strip()

    assert SessionRecord.from_json(other(0x1234)) == record
    assert mine.lookup(0x1234) is None  # its own sessions it holds itself
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine.publish(SessionRecord(0x99, dead.pid, 0x0311, AES_CMAC, 0, b"", False, False, "bob", "WG"))
    assert other(0x99) == "none"
    assert mine.store.get("sessions", f"{0x99:016x}") is None  # the lookup removed it
    mine.store.put("sessions", f"{0x77:016x}", {"session_id": "not a number"})
    assert other(0x77) == "none"
    mine.withdraw(0x1234)
    assert other(0x1234) == "none"


# ---- a request whose channel fails while it waits ------------------------------------------------

FLAG_REPLAY_OPERATION = 0x20000000
STATUS_PENDING = 0x00000103
STATUS_FILE_NOT_AVAILABLE = 0xC0000467
STATUS_DUPLICATE_OBJECTID = 0xC000022A
OPLOCK_BREAK, LEVEL_II, LEVEL_BATCH = 0x12, 0x01, 0x09


def _dh2q_create(name: str, create_guid: uuid.UUID) -> bytes:
    """A CREATE with SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2 (2.2.13.2.11): Timeout, Flags,
    Reserved, CreateGuid; no oplock asked, so the Open will not be durable."""
    dh2q = create_context(b"DH2Q", struct.pack("<II8s16s", 0, 0, b"", create_guid.bytes_le))
    return create_body(name, contexts=dh2q)


def test_create_waiting_for_a_break_outlives_its_channel(server):
    """As smbtorture smb2.replay.dhv2-pending2n: a CREATE waits for another client's break
    when its channel dies. The session lives on in a second channel, so the CREATE goes on
    (3.3.5.9.10): a replay of it there meanwhile gets FILE_NOT_AVAILABLE, and once the
    break is acknowledged the Open exists with its CreateGuid, so a fresh CREATE with that
    CreateGuid is DUPLICATE_OBJECTID and a replay gets the Open back."""
    holder = RawClient("127.0.0.1", server.port, timeout=15).login(USER, PASSWORD, "data")
    body = bytearray(create_body("pending.txt", access=READ_WRITE_ACCESS, disposition=FILE_OPEN_IF))
    body[3] = LEVEL_BATCH  # RequestedOplockLevel (2.2.13)
    held = holder.call(CREATE, bytes(body))
    assert held.status == STATUS_SUCCESS and held.body[2] == LEVEL_BATCH

    guid, create_guid = uuid.uuid4(), uuid.uuid4()
    with _client(server, guid) as c1, _client(server, guid) as c2:
        c1.connect().login(share="data")
        c2.connect()
        r, key, preauth = _bind(c1, c2)
        assert r.status == STATUS_SUCCESS
        c2.session_id, c2.tree_id, c2.key = c1.session_id, c1.tree_id, signing_key(c2.dialect, key, preauth)

        c1.send_signed(CREATE, _dh2q_create("pending.txt", create_guid))
        holder.sock.settimeout(10)
        brk = holder.recv()
        assert brk.command == OPLOCK_BREAK and brk.body[2] == LEVEL_II
        interim = c1.recv()
        assert interim.status == STATUS_PENDING
        c1.close()  # the channel dies with the CREATE waiting

        replay = c2.call_signed(CREATE, _dh2q_create("pending.txt", create_guid), flags=FLAG_REPLAY_OPERATION)
        assert replay.status == STATUS_FILE_NOT_AVAILABLE  # still in progress

        ack = holder.call(OPLOCK_BREAK, struct.pack("<HBBI", 24, LEVEL_II, 0, 0) + held.file_id)
        assert ack.status == STATUS_SUCCESS
        for _ in range(50):  # the CREATE finishes in the background, its answer lost
            fresh = c2.call_signed(CREATE, _dh2q_create("pending.txt", create_guid))
            if fresh.status != STATUS_FILE_NOT_AVAILABLE:
                break
        assert fresh.status == STATUS_DUPLICATE_OBJECTID  # the first CREATE made its Open
        replay = c2.call_signed(CREATE, _dh2q_create("pending.txt", create_guid), flags=FLAG_REPLAY_OPERATION)
        assert replay.status == STATUS_SUCCESS
        assert c2.call_signed(QUERY_INFO, query_info_body(replay.file_id)).status == STATUS_SUCCESS
    holder.close()
