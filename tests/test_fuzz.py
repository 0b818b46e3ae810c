"""Bounded property-based fuzzing (hypothesis) of every parser that sees peer bytes.

The property: arbitrary bytes, and mutations of valid messages, may only make a parser raise
the errors it documents: SmbError (the request fails with an NTSTATUS) or ProtocolViolation
(the connection is dropped; SmbdProtocolError is a subclass), and for the transform header
DecryptError (a ValueError subclass, documented in smbd.crypto.transform).  Anything else
(IndexError, struct.error, UnicodeDecodeError, KeyError, OverflowError...) is a bug.

A last test feeds mutated requests to a live SmbConnection (fake transport, real handlers,
a real share in a temporary folder, a logged-on session): it must answer or raise
ProtocolViolation; no handler may crash (no "internal error" log, no STATUS_INTERNAL_ERROR).

Each target runs 300 examples (FUZZ_EXAMPLES overrides), deadline off, no example database.
"""
from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smbd.core import compound
from smbd.core.framing import FrameBuffer
from smbd.crypto.transform import DecryptError, parse_transform_header
from smbd.fscc.setinfo import decode_set_info
from smbd.status import NtStatus, ProtocolViolation, SmbError, status_name
from smbd.transport import relay
from smbd.wire import control, create, fileio, negotiate, session
from smbd.wire.header import Header
from smbdd.smbdirect import wire as smbd_wire
from tests import smb2client as raw

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
DOCUMENTED = (SmbError, ProtocolViolation)

FID = struct.pack("<QQ", 1, 2)  # replaced by the live file's FileId in the live fuzz
DIR_FID = struct.pack("<QQ", 3, 4)  # ... and this one by the live directory's
# Valid requests (header + body) as MS-SMB2 lays them out; the seeds for mutation.
SEEDS = {
    "negotiate": raw.header(raw.NEGOTIATE, 0) + raw.negotiate_body(
        contexts=[raw.preauth_context(), raw.negotiate_context(2, struct.pack("<HHH", 2, 2, 1)),
                  raw.negotiate_context(8, struct.pack("<HHH", 2, 1, 2)),
                  raw.negotiate_context(7, struct.pack("<HHI", 1, 0, 0) + b"\0\0")]),
    "session_setup": raw.header(raw.SESSION_SETUP, 1) + raw.session_setup_body(b"NTLMSSP\0\1\0\0\0" + b"\0" * 24),
    "tree_connect": raw.header(raw.TREE_CONNECT, 2) + raw.tree_connect_body("\\\\host\\data"),
    "create": raw.header(raw.CREATE, 3) + raw.create_body(
        "sub\\a.txt", contexts=raw.create_context(b"MxAc", b"", 24) + b"\0" * 4 + raw.create_context(b"QFid")),
    "close": raw.header(raw.CLOSE, 4) + raw.close_body(FID),
    "read": raw.header(raw.READ, 5) + raw.read_body(FID, 4096, 0),
    "write": raw.header(raw.WRITE, 6) + raw.write_body(FID, b"0123456789abcdef"),
    "lock": raw.header(raw.LOCK, 7) + struct.pack("<HHI16s", 48, 2, 0, FID)  # 2 elements: FAIL_IMMEDIATELY
    + struct.pack("<QQII", 0, 10, 0x12, 0) + struct.pack("<QQII", 20, 10, 0x11, 0),
    "ioctl": raw.header(raw.IOCTL, 8) + raw.ioctl_body(FID, 0x00140078, b""),  # SRV_REQUEST_RESUME_KEY
    "query_directory": raw.header(raw.QUERY_DIRECTORY, 9) + struct.pack("<HBBI16sHHI", 33, 37, 0, 0, DIR_FID, 96,
                                                                         2, 4096) + b"*\0",
    "change_notify": raw.header(raw.CHANGE_NOTIFY, 10) + struct.pack("<HHI16sII", 32, 0, 4096, DIR_FID, 0x17, 0),
    "query_info": raw.header(raw.QUERY_INFO, 11) + raw.query_info_body(FID),
    "set_info": raw.header(raw.SET_INFO, 12) + struct.pack("<HBBIHHI16s", 33, 1, 20, 8, 96, 0, 0, FID)
    + struct.pack("<q", 10),
    "echo": raw.header(raw.ECHO, 13) + raw.echo_body(),
}
INTERESTING = [0, 1, 2, 7, 8, 15, 16, 63, 64, 65, 72, 96, 120, 0x7F, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF,
               0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF8, 0xFFFFFFFF]


@st.composite
def mutations(draw, seed: bytes, keep_header: bool = False) -> bytes:
    """A seed with a few byte flips, cuts, insertions and 16/32-bit fields set to edge values.

    ``keep_header`` leaves the header and the body's StructureSize alone, so that most mutations
    get past the first check and reach the offsets, lengths and values behind it."""
    data = bytearray(seed)
    low = 66 if keep_header else 0  # keep_header: keep the header and the body's StructureSize
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.integers(0, 3))
        if op == 0 and len(data) > low:
            data[draw(st.integers(low, len(data) - 1))] = draw(st.integers(0, 255))
        elif op == 1:
            del data[draw(st.integers(low, len(data))):]
        elif op == 2:
            at = draw(st.integers(low, len(data)))
            data[at:at] = draw(st.binary(max_size=24))
        elif op == 3 and len(data) >= low + 4:
            at = draw(st.integers(low, len(data) - 4))
            value = draw(st.sampled_from(INTERESTING + [len(data), len(data) - 64]))
            if draw(st.booleans()):
                struct.pack_into("<H", data, at, value & 0xFFFF)
            else:
                struct.pack_into("<I", data, at, value & 0xFFFFFFFF)
    return bytes(data)


def inputs(seed: bytes):
    """Arbitrary bytes behind a valid header, arbitrary bytes alone, or a mutated seed."""
    return st.one_of(st.binary(max_size=300).map(lambda b: seed[:64] + b), st.binary(max_size=200),
                     mutations(seed))


def documented(fn, *args, allowed=DOCUMENTED):
    try:
        return fn(*args)
    except allowed:
        return None


# --- SMB2 codecs -----------------------------------------------------------------------------------------

@fuzz
@given(inputs(SEEDS["echo"]))
def test_header_parse(data):
    h = documented(Header.parse, memoryview(data))
    if h is not None:  # a parsed header packs back to its bytes (Reserved/ProcessId aside)
        assert h.pack()[:32] == data[:32] and h.pack()[40:64] == data[40:64]


@fuzz
@given(inputs(SEEDS["negotiate"]))
def test_negotiate_request_parse(data):
    neg = documented(negotiate.NegotiateRequest.parse, memoryview(data))
    if neg is not None:
        for ctype, helper in ((1, negotiate.preauth_hash_ids), (2, negotiate.cipher_ids),
                              (8, negotiate.signing_ids), (7, negotiate.rdma_transform_ids)):
            if ctype in neg.contexts:
                documented(helper, neg.contexts[ctype])


@fuzz
@given(st.binary(max_size=64))
def test_negotiate_context_helpers(data):
    for helper in (negotiate.preauth_hash_ids, negotiate.cipher_ids, negotiate.signing_ids,
                   negotiate.rdma_transform_ids):
        documented(helper, data)


@fuzz
@given(inputs(SEEDS["create"]))
def test_create_request_parse(data):
    documented(create.CreateRequest.parse, memoryview(data))


@fuzz
@given(st.one_of(st.binary(max_size=200), mutations(raw.create_context(b"MxAc", b"12345678", 40) + b"\0" * 8
                                                    + raw.create_context(b"QFid"))))
def test_create_contexts_parse(data):
    out = documented(create.parse_contexts, memoryview(data))
    if out is not None:
        assert all(name and len(name) <= len(data) for name in out)


PARSERS = {
    "session_setup": session.SessionSetupRequest.parse,
    "tree_connect": lambda m: session.TreeConnectRequest.parse(m, 0x0311).share_name,
    "close": fileio.CloseRequest.parse,
    "read": fileio.ReadRequest.parse,
    "write": fileio.WriteRequest.parse,
    "lock": fileio.LockRequest.parse,
    "ioctl": control.IoctlRequest.parse,
    "query_directory": control.QueryDirectoryRequest.parse,
    "change_notify": control.ChangeNotifyRequest.parse,
    "query_info": control.QueryInfoRequest.parse,
    "set_info": control.SetInfoRequest.parse,
    "echo": session.parse_empty,
}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_command_parsers(name):
    parser = PARSERS[name]

    @fuzz
    @given(inputs(SEEDS[name]))
    def run(data):
        documented(parser, memoryview(data))

    run()


@fuzz
@given(st.one_of(st.binary(max_size=400),
                 mutations(raw.header(raw.ECHO, 0, next_command=72) + raw.echo_body() + b"\0" * 4
                           + raw.header(raw.ECHO, 1, next_command=80) + b"\0" * 16
                           + raw.header(raw.ECHO, 2) + raw.echo_body())))
def test_compound_split(data):
    parts = documented(compound.split, memoryview(data))
    if parts is not None:
        assert b"".join(bytes(p) for p in parts) == data
        assert all(len(p) >= 64 for p in parts)
        assert all(len(p) % 8 == 0 for p in parts[:-1])
        assert len(parts) <= len(data) // 64


@fuzz
@given(st.lists(st.binary(max_size=40), max_size=8), st.lists(st.integers(1, 50), min_size=1, max_size=20))
def test_frame_decoder(messages, cuts):
    """Well-formed streams come back message by message whatever the chunking; garbage only
    raises ProtocolViolation."""
    stream = b"".join(raw.nbss(m) for m in messages)
    d = FrameBuffer(64, staging=48, direct_min=16)
    out, pos, i = [], 0, 0
    while pos < len(stream):
        n = cuts[i % len(cuts)]
        out += d.feed(stream[pos:pos + n])
        pos, i = pos + n, i + 1
    assert out == messages


@fuzz
@given(st.lists(st.binary(max_size=64), max_size=10))
def test_frame_decoder_garbage(chunks):
    d = FrameBuffer(1000)
    for c in chunks:
        if documented(d.feed, c) is None:
            break


@fuzz
@given(st.integers(0, 80), st.one_of(st.binary(max_size=120), mutations(
    struct.pack("<B7xQI", 1, 0, 16) + "new\\name".encode("utf-16-le"))))
def test_decode_set_info(info_class, data):
    documented(decode_set_info, info_class, memoryview(data))


@fuzz
@given(st.binary(max_size=120))
def test_transform_header(data):
    documented(parse_transform_header, data, allowed=(DecryptError,))


# --- SMB Direct and the proxy relay ------------------------------------------------------------------------

@fuzz
@given(st.binary(max_size=80), st.one_of(st.none(), st.integers(0, 1 << 20)))
def test_smbdirect_wire(data, max_frag):
    documented(smbd_wire.NegotiateRequest.parse, data)
    documented(smbd_wire.NegotiateResponse.parse, data)
    documented(smbd_wire.DataTransferHeader.parse, data)
    hdr = documented(lambda: smbd_wire.DataTransferHeader.parse(data, max_fragmented_size=max_frag))
    if hdr is not None:
        assert len(hdr.payload(data)) == hdr.data_length
    documented(smbd_wire.parse_buffer_descriptor_list, data)
    documented(smbd_wire.BufferDescriptorV1.parse, data, len(data) // 2)


@fuzz
@given(st.lists(st.binary(max_size=48), max_size=6))
def test_relay_frames(chunks):
    d = relay.FrameDecoder(max_frame=1 << 16)
    frames = []
    for c in chunks:
        got = documented(d.feed, c)
        if got is None:
            return
        frames += got
    for f in frames:
        for accessor in (f.message, f.u32, f.ids, f.done, f.rdma):
            documented(accessor)


@fuzz
@given(st.binary(max_size=40))
def test_relay_setup_json(payload):
    # SETUP comes from our own proxy (a trusted peer), yet a torn frame must not raise anything
    # stranger than ValueError (json.JSONDecodeError and UnicodeDecodeError are ValueErrors).
    f = relay.Frame(relay.FrameType.SETUP, 0, memoryview(payload))
    documented(f.json, allowed=DOCUMENTED + (ValueError,))


# --- a live connection ---------------------------------------------------------------------------------------

class _Errors(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


class LiveConnection:
    """A logged-on SmbConnection over a fake transport; rebuilt when the fuzz drops it."""

    def __init__(self, share_dir: str):
        from smbd.auth.ntlm import nt_hash
        from smbd.server.config import ServerConfig, ShareConfig, UserEntry
        from smbd.server.state import ServerState

        self.loop = asyncio.new_event_loop()
        config = ServerConfig(shares=(ShareConfig("data", share_dir),), users=(UserEntry("alice", nt_hash("pw")),),
                              io_threads=2, max_io_size=1 << 20)
        self.server = ServerState(config)
        self.conn = None
        self.responses: list[raw.Response] = []

    def close(self):
        if self.conn is not None:
            self.conn.close()  # cancels what is still pending (CHANGE_NOTIFY); let it unwind
            pending = list(self.conn.tasks)
            if pending:
                self.loop.run_until_complete(asyncio.wait(pending, timeout=5))
        self.server.shutdown()
        self.loop.close()

    # -- plumbing
    async def _feed(self, message: bytes):
        sent = len(self.transport.sent)
        earlier = set(self.conn.tasks)  # e.g. a CHANGE_NOTIFY of an earlier example, still pending
        self.conn.receive(message)
        # Wait for this message's handlers; one that went async (an interim STATUS_PENDING was
        # sent) may stay pending.  Bounded, so a stuck handler fails the test.
        deadline = self.loop.time() + 10
        while (mine := self.conn.tasks - earlier) and self.loop.time() < deadline:
            if any(raw.Response.parse(m).status == raw.STATUS_PENDING for m in self.transport.sent[sent:]):
                return
            await asyncio.wait(mine, timeout=0.05)
        assert not (self.conn.tasks - earlier) or self.conn.closed, "a request neither answered nor went async"

    def feed(self, message: bytes) -> None:
        """Deliver one message; ProtocolViolation propagates (the transport would close)."""
        before = len(self.transport.sent)
        try:
            self.loop.run_until_complete(self._feed(message))
        finally:
            for data in self.transport.sent[before:]:
                r = raw.Response.parse(data)
                self.responses.append(r)

    def call(self, command: int, body: bytes, **fields) -> raw.Response:
        self.feed(self.build(command, body, **fields))
        return self.responses[-1]

    def build(self, command: int, body: bytes, **fields) -> bytes:
        charge = fields.pop("credit_charge", 1)
        mid = self.next_mid
        self.next_mid += max(charge, 1)
        return raw.header(command, mid, credit_charge=charge, credits=fields.pop("credits", 64),
                          session_id=fields.pop("session_id", self.session_id),
                          tree_id=fields.pop("tree_id", self.tree_id), **fields) + body

    # -- a fresh logged-on connection with one open file
    def connect(self):
        import spnego

        from smbd.server.connection import SmbConnection
        from tests.test_smb2_core import FakeTransport

        self.transport = FakeTransport()
        self.conn = SmbConnection(self.server, self.transport)
        self.server.connections.add(self.conn)
        self.next_mid, self.session_id, self.tree_id = 0, 0, 0
        assert self.call(raw.NEGOTIATE, raw.negotiate_body()).status == 0
        ctx = spnego.client("alice", "pw", hostname="localhost", service="cifs", protocol="ntlm")
        token = ctx.step()
        while True:
            r = self.call(raw.SESSION_SETUP, raw.session_setup_body(token))
            self.session_id = r.session_id
            if r.status != raw.STATUS_MORE_PROCESSING_REQUIRED:
                assert r.status == 0
                break
            off, length = struct.unpack_from("<HH", r.body, 4)
            token = ctx.step(r.raw[off:off + length])
        r = self.call(raw.TREE_CONNECT, raw.tree_connect_body("\\\\localhost\\data"))
        assert r.status == 0
        self.tree_id = r.tree_id
        r = self.call(raw.CREATE, raw.create_body("f.txt", access=raw.READ_WRITE_ACCESS,
                                                  disposition=raw.FILE_OVERWRITE_IF))
        assert r.status == 0
        self.file_id = r.file_id
        r = self.call(raw.CREATE, raw.create_body("sub", access=raw.READ_ACCESS, disposition=raw.FILE_OPEN))
        assert r.status == 0
        self.dir_id = r.file_id

    def ensure(self):
        """Reconnect if the last example dropped the connection or its session; reopen a closed file."""
        if self.conn is not None and not self.conn.closed and self.session_id not in self.server.sessions:
            self.conn.close()
        if self.conn is None or self.conn.closed:
            self.connect()
        elif any(struct.unpack_from("<Q", fid, 8)[0] not in self.server.opens for fid in (self.file_id, self.dir_id)):
            self.conn.close()  # a mutated CLOSE or TREE_DISCONNECT hit our handles: start again
            self.connect()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    share = tmp_path_factory.mktemp("fuzzshare")
    (share / "sub").mkdir()
    (share / "sub" / "a.txt").write_bytes(b"abc")
    lc = LiveConnection(str(share))
    handler = _Errors()
    logging.getLogger("smbd").addHandler(handler)
    lc.errors = handler
    try:
        yield lc
    finally:
        logging.getLogger("smbd").removeHandler(handler)
        lc.close()
        print("\nlive fuzz outcomes:", dict(LIVE_OUTCOMES.most_common()))


# Commands the live fuzz sends (the unknown-command crash is covered by its own xfail test in
# test_smb2_core / test_malformed, so the command code is kept valid here).
LIVE_OUTCOMES: Counter[str] = Counter()
LIVE_COMMANDS = ["create", "close", "read", "write", "lock", "ioctl", "query_directory", "query_info",
                 "set_info", "echo", "tree_connect", "session_setup", "change_notify"]


@settings(max_examples=3 * EXAMPLES, deadline=None, database=None,  # cheap: ~1.5 s per 1000
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from(LIVE_COMMANDS), st.data())
def test_live_connection_mutated_requests(live, name, data):
    live.ensure()
    seed = bytearray(SEEDS[name])
    # Address the live session, tree and open, so the mutation reaches the handler's logic.
    struct.pack_into("<IQ", seed, 36, live.tree_id, live.session_id)
    body = bytes(seed[64:]).replace(FID, live.file_id).replace(DIR_FID, live.dir_id)
    mutated = data.draw(mutations(bytes(seed[:64]) + body, keep_header=True))
    command = struct.unpack_from("<H", seed, 12)[0]
    message = live.build(command, mutated[64:], credit_charge=data.draw(st.sampled_from([1, 1, 2, 16, 0])))
    sent = len(live.responses)
    try:
        live.feed(message)
    except ProtocolViolation:
        LIVE_OUTCOMES[f"{name}: dropped"] += 1
        live.conn.close()
        return
    assert live.errors.records == [], [r.getMessage() for r in live.errors.records]
    new = live.responses[sent:]
    LIVE_OUTCOMES.update(f"{name}: {status_name(r.status)}" for r in new)
    assert all(r.status != NtStatus.INTERNAL_ERROR for r in new), [hex(r.status) for r in new]
    if not live.conn.closed and command not in (raw.CHANGE_NOTIFY,):
        # a request that was not dropped was answered (CHANGE_NOTIFY may legitimately stay pending)
        assert new, f"no answer to a mutated {name}"
