"""Regression tests for the smbtorture failures fixed in smb2.lock, smb2.compound, smb2.read,
smb2.rw, smb2.dir and smb2.getinfo.

Each test replays, over a raw SMB2 connection to a real smbdd, the request sequence of the
smbtorture test it names (source4/torture/smb2/*.c) and checks the statuses smbtorture
expects, which are what Windows and Samba answer. Request layouts are written out here
from MS-SMB2, not taken from the server's codecs. The byte-range overlap rule is also
checked directly against smbtorture's own zero-byte-lock table (lock.c zero_byte_tests).
"""
from __future__ import annotations

import struct
import time

import pytest

from smbd.server.locks import ranges_overlap
from smbd.wire.fileio import read_response_header
from tests import smb2client as raw
from tests.smbdd_process import PASSWORD, USER, Smbdd

SHARE = "data"
ALL = 0xFFFFFFFFFFFFFFFF
NO_FILE = b"\xff" * 16

STATUS_PENDING = 0x00000103
STATUS_BUFFER_OVERFLOW = 0x80000005
STATUS_INFO_LENGTH_MISMATCH = 0xC0000004
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_LOCK_NOT_GRANTED = 0xC0000055
STATUS_RANGE_NOT_LOCKED = 0xC000007E
STATUS_FILE_CLOSED = 0xC0000128
STATUS_CANCELLED = 0xC0000120
STATUS_NO_MORE_FILES = 0x80000006

# SMB2_LOCK_ELEMENT Flags, MS-SMB2 2.2.26.1
SHARED, EXCLUSIVE, UNLOCK, FAIL_IMMEDIATELY = 0x1, 0x2, 0x4, 0x10
ALL_ACCESS = 0x001F01FF  # FILE_ALL_ACCESS
DIRECTORY_FILE = 0x1


def lock_body(file_id: bytes, *elements: tuple[int, int, int]) -> bytes:
    """LOCK request, MS-SMB2 2.2.26: StructureSize 48, LockCount, LockSequence, FileId, then
    SMB2_LOCK_ELEMENTs (Offset, Length, Flags, Reserved)."""
    out = struct.pack("<HHI16s", 48, len(elements), 0, file_id)
    for offset, length, flags in elements:
        out += struct.pack("<QQII", offset, length, flags, 0)
    return out


def notify_body(file_id: bytes) -> bytes:
    """CHANGE_NOTIFY request, MS-SMB2 2.2.35: WATCH_TREE, 4 KiB, FILE_NOTIFY_CHANGE_FILE_NAME."""
    return struct.pack("<HHI16sII", 32, 1, 4096, file_id, 0x1, 0)


def query_dir_body(file_id: bytes, pattern: str = "*", *, flags: int = 0, length: int = 65536) -> bytes:
    """QUERY_DIRECTORY request, MS-SMB2 2.2.33, FileNamesInformation (class 12)."""
    name = pattern.encode("utf-16-le")
    return struct.pack("<HBBI16sHHI", 33, 12, flags, 0, file_id, raw.HEADER_SIZE + 32, len(name), length) + name


def names_in(body: bytes) -> list[str]:
    """FILE_NAMES_INFORMATION entries (MS-FSCC 2.4.28) of a QUERY_DIRECTORY response."""
    offset, length = struct.unpack_from("<HI", body, 2)
    data = body[offset - raw.HEADER_SIZE:offset - raw.HEADER_SIZE + length]
    out, pos = [], 0
    while True:
        nxt, _, name_len = struct.unpack_from("<III", data, pos)
        out.append(data[pos + 12:pos + 12 + name_len].decode("utf-16-le"))
        if nxt == 0:
            return out
        pos += nxt


def compound(*elements: bytes) -> bytes:
    """Join header+body elements with NextCommand, each but the last padded to 8 (3.2.4.1.4)."""
    out = b""
    for i, element in enumerate(elements):
        if i < len(elements) - 1:
            element += b"\0" * (-len(element) % 8)
            element = element[:20] + struct.pack("<I", len(element)) + element[24:]
        out += element
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Smbdd(tmp_path_factory.mktemp("torture-fixes"))
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = raw.RawClient("127.0.0.1", server.port, timeout=10).login(USER, PASSWORD, SHARE)
    yield c
    c.close()


def new_file(c: raw.RawClient, name: str, size: int = 200) -> bytes:
    fid = c.open_file(name, access=ALL_ACCESS, disposition=raw.FILE_OVERWRITE_IF)
    assert c.call(raw.WRITE, raw.write_body(fid, b"\0" * size)).status == 0
    return fid


def lock(c: raw.RawClient, fid: bytes, *elements) -> int:
    return c.call(raw.LOCK, lock_body(fid, *elements)).status


# ---- the overlap rule, against smbtorture's table ---------------------------------------------

# lock.c zero_byte_tests: (first lock, second lock, may the second be taken exclusively
# by another handle?) -- the MS-FSA 2.1.4.10 behaviour of zero-length ranges.
ZERO_BYTE_TESTS = [
    ((10, 0), (10, 0), True), ((10, 0), (9, 1), True), ((10, 0), (10, 1), True),
    ((10, 0), (11, 1), True), ((10, 0), (9, 2), False), ((10, 0), (10, 2), True),
    ((10, 0), (9, 3), False),
    ((10, 0), (10, 0), True), ((9, 1), (10, 0), True), ((10, 1), (10, 0), True),
    ((11, 1), (10, 0), True), ((9, 2), (10, 0), False), ((10, 2), (10, 0), True),
    ((9, 3), (10, 0), False),
    ((0, 0), (0, 0), True),
]


@pytest.mark.parametrize("first,second,granted", ZERO_BYTE_TESTS)
def test_zero_byte_overlap_rule(first, second, granted):
    assert ranges_overlap(*first, *second) is (not granted)


def test_zero_byte_locks_over_the_wire(client):
    """smb2.lock.zerobytelength, second half: two handles, exclusive fail-immediately locks."""
    h1 = new_file(client, "zerobyte.dat")
    h2 = client.open_file("zerobyte.dat", access=ALL_ACCESS)
    for (o1, l1), (o2, l2), granted in ZERO_BYTE_TESTS:
        assert lock(client, h1, (o1, l1, EXCLUSIVE | FAIL_IMMEDIATELY)) == 0
        status = lock(client, h2, (o2, l2, EXCLUSIVE | FAIL_IMMEDIATELY))
        assert status == (0 if granted else STATUS_LOCK_NOT_GRANTED), ((o1, l1), (o2, l2))
        if status == 0:
            assert lock(client, h2, (o2, l2, UNLOCK)) == 0
        assert lock(client, h1, (o1, l1, UNLOCK)) == 0


# ---- smb2.lock ----------------------------------------------------------------------------------

def test_shared_lock_stacks_on_own_exclusive_without_waiting(client):
    """smb2.lock.valid-request (lock.c:176): a blocking SHARED lock on a range the same handle
    holds exclusively is granted at once; three stacked locks need three unlocks."""
    h = new_file(client, "stack.dat")
    rng = (0xFFFFFFFF, 0xFFFFFFFF)
    assert lock(client, h, (*rng, EXCLUSIVE | FAIL_IMMEDIATELY)) == 0
    client.sock.settimeout(3)
    assert lock(client, h, (*rng, SHARED)) == 0
    assert lock(client, h, (*rng, SHARED)) == 0
    assert [lock(client, h, (*rng, UNLOCK)) for _ in range(4)] == [0, 0, 0, STATUS_RANGE_NOT_LOCKED]


def test_other_handle_cannot_share_an_exclusive_lock(client):
    """smb2.lock.stacking: a shared lock from another handle conflicts with the exclusive one."""
    h = new_file(client, "stack2.dat")
    h2 = client.open_file("stack2.dat", access=ALL_ACCESS)
    assert lock(client, h, (0, 10, EXCLUSIVE | FAIL_IMMEDIATELY)) == 0
    assert lock(client, h, (0, 10, SHARED | FAIL_IMMEDIATELY)) == 0
    assert lock(client, h2, (0, 10, SHARED | FAIL_IMMEDIATELY)) == STATUS_LOCK_NOT_GRANTED
    assert lock(client, h, (0, 10, EXCLUSIVE | FAIL_IMMEDIATELY)) == STATUS_LOCK_NOT_GRANTED


def test_zero_byte_lock_inside_a_locked_range_is_refused(client):
    """smb2.lock.errorcode: a 0-byte lock at 102 inside an exclusive lock on [100, 110)."""
    h = new_file(client, "errorcode.dat")
    h2 = client.open_file("errorcode.dat", access=ALL_ACCESS)
    assert lock(client, h, (100, 10, EXCLUSIVE | FAIL_IMMEDIATELY)) == 0
    assert lock(client, h, (102, 0, EXCLUSIVE | FAIL_IMMEDIATELY)) == STATUS_LOCK_NOT_GRANTED
    assert lock(client, h2, (102, 0, EXCLUSIVE | FAIL_IMMEDIATELY)) == STATUS_LOCK_NOT_GRANTED


def test_unlock_then_lock_in_one_request(client):
    """smb2.lock.multiple-unlock Test4/Test11: the unlock before a bad element stays done; a
    lock request with an UNLOCK element is refused before anything happens."""
    h = new_file(client, "multi.dat")
    a, b = (0, 10), (10, 10)
    assert lock(client, h, (*a, EXCLUSIVE | FAIL_IMMEDIATELY), (*b, EXCLUSIVE | FAIL_IMMEDIATELY)) == 0
    assert lock(client, h, (*a, UNLOCK), (*b, EXCLUSIVE | FAIL_IMMEDIATELY)) == STATUS_INVALID_PARAMETER
    assert lock(client, h, (*a, EXCLUSIVE | FAIL_IMMEDIATELY)) == 0  # a was unlocked
    assert lock(client, h, (*a, UNLOCK), (*b, UNLOCK)) == 0
    assert lock(client, h, (*b, EXCLUSIVE | FAIL_IMMEDIATELY)) == 0
    assert lock(client, h, (*a, EXCLUSIVE | FAIL_IMMEDIATELY), (*b, UNLOCK)) == STATUS_INVALID_PARAMETER
    assert lock(client, h, (*a, EXCLUSIVE | FAIL_IMMEDIATELY)) == 0  # a was not taken above
    assert lock(client, h, (*b, EXCLUSIVE | FAIL_IMMEDIATELY)) == STATUS_LOCK_NOT_GRANTED


def test_pending_lock_fails_when_its_tree_goes(client):
    """smb2.lock.cancel-tdis: a pending lock ends (RANGE_NOT_LOCKED) when TREE_DISCONNECT closes
    its handle, instead of an internal error or a hang."""
    h = new_file(client, "tdis.dat")
    h2 = client.open_file("tdis.dat", access=ALL_ACCESS)
    assert lock(client, h, (100, 10, EXCLUSIVE)) == 0
    client.send_message(client.build(raw.LOCK, lock_body(h2, (100, 10, EXCLUSIVE))))
    interim = client.recv()
    assert interim.status == STATUS_PENDING and interim.flags & raw.FLAG_ASYNC
    client.sock.settimeout(5)
    client.send_message(client.build(raw.TREE_DISCONNECT, raw.echo_body()))
    replies = {r.command: r.status for r in (client.recv(), client.recv())}
    # lock.c accepts RANGE_NOT_LOCKED or SUCCESS, depending on the order the handles close.
    assert replies[raw.LOCK] in (STATUS_RANGE_NOT_LOCKED, 0)
    assert replies[raw.TREE_DISCONNECT] == 0


def test_pending_lock_granted_when_released(client):
    """smb2.lock.async in short: the waiter gets the lock as soon as the holder unlocks, without
    waiting for a poll interval of seconds."""
    h = new_file(client, "async.dat")
    h2 = client.open_file("async.dat", access=ALL_ACCESS)
    assert lock(client, h, (0, 10, EXCLUSIVE)) == 0
    client.send_message(client.build(raw.LOCK, lock_body(h2, (0, 10, EXCLUSIVE))))
    assert client.recv().status == STATUS_PENDING
    start = time.monotonic()
    client.send_message(client.build(raw.LOCK, lock_body(h, (0, 10, UNLOCK))))
    statuses = sorted(client.recv().status for _ in range(2))
    assert statuses == [0, 0]
    assert time.monotonic() - start < 1.0


# ---- smb2.compound --------------------------------------------------------------------------

def test_all_ones_file_id_outside_a_chain_is_file_closed(client):
    """smb2.compound.related5/unrelated1: FileId 0xFF.. names no open unless the request is
    related, so CLOSE answers FILE_CLOSED (not INVALID_PARAMETER)."""
    assert client.call(raw.CLOSE, raw.close_body(NO_FILE)).status == STATUS_FILE_CLOSED


def test_first_request_of_a_chain_cannot_be_related(client):
    """smb2.compound.invalid1: CREATE flagged related as the first element, a related CLOSE,
    then an unrelated CLOSE of FileId 0xFF.."""
    create = client.build(raw.CREATE, raw.create_body("invalid1.dat", access=ALL_ACCESS,
                                                      disposition=raw.FILE_OPEN_IF), flags=raw.FLAG_RELATED)
    close1 = client.build(raw.CLOSE, raw.close_body(NO_FILE), flags=raw.FLAG_RELATED)
    close2 = client.build(raw.CLOSE, raw.close_body(NO_FILE))
    client.send_message(compound(create, close1, close2))
    statuses = [r.status for r in client.recv().split()]
    assert statuses == [STATUS_INVALID_PARAMETER, STATUS_INVALID_PARAMETER, STATUS_FILE_CLOSED]


def test_async_last_element_does_not_hold_back_the_others(client):
    """smb2.compound.interim1: CREATE + related CHANGE_NOTIFY; the CREATE response arrives with
    the NOTIFY's interim response, before the NOTIFY completes; CANCEL ends the NOTIFY."""
    create = client.build(raw.CREATE, raw.create_body("interim_dir", access=ALL_ACCESS, options=DIRECTORY_FILE,
                                                      disposition=raw.FILE_OPEN_IF))
    notify = client.build(raw.CHANGE_NOTIFY, notify_body(NO_FILE), flags=raw.FLAG_RELATED)
    notify_mid = struct.unpack_from("<Q", notify, 24)[0]
    client.send_message(compound(create, notify))
    client.sock.settimeout(3)
    first = client.recv().split()
    assert [(r.command, r.status) for r in first] == [(raw.CREATE, 0), (raw.CHANGE_NOTIFY, STATUS_PENDING)]
    async_id = struct.unpack_from("<Q", first[1].raw, 32)[0]
    cancel = raw.header(raw.CANCEL, notify_mid, flags=raw.FLAG_ASYNC, session_id=client.session_id)
    cancel = cancel[:32] + struct.pack("<Q", async_id) + cancel[40:]
    client.send_message(cancel + raw.echo_body())
    final = client.recv()
    assert (final.command, final.status) == (raw.CHANGE_NOTIFY, STATUS_CANCELLED)
    assert client.call(raw.CLOSE, raw.close_body(first[0].file_id)).status == 0


def test_unknown_command_in_a_chain_is_answered(client):
    """smb2.compound.invalid4: READ + a related request with command 0xFF; both answered,
    the connection stays up."""
    fid = new_file(client, "invalid4.dat", size=0)
    read = client.build(raw.READ, raw.read_body(fid, 1))
    bogus = client.build(0xFF, raw.echo_body(), flags=raw.FLAG_RELATED)
    client.send_message(compound(read, bogus))
    statuses = [r.status for r in client.recv().split()]
    assert statuses == [0xC0000011, STATUS_INVALID_PARAMETER]  # END_OF_FILE
    assert client.echo().status == 0


# ---- smb2.read / smb2.rw --------------------------------------------------------------------------

def test_read_moves_the_file_position(client):
    """smb2.read.position: FilePositionInformation (class 14) is offset + bytes read."""
    fid = new_file(client, "position.dat", size=64 * 1024)
    assert client.call(raw.READ, raw.read_body(fid, 10, minimum=1)).status == 0
    r = client.call(raw.QUERY_INFO, raw.query_info_body(fid, 1, 14, 8))
    assert r.status == 0
    offset, length = struct.unpack_from("<HI", r.body, 2)
    assert struct.unpack_from("<Q", r.raw, offset)[0] == 10


def test_read_response_padding_moves_data_offset():
    """smb2.read.bug14607 (Samba smb2_read.c): with 8 bytes of body padding the READ response
    (MS-SMB2 2.2.20) says DataOffset 0x58 and the data starts after 8 zero bytes."""
    body = read_response_header(3, padding=8)
    structure_size, data_offset, _, length = struct.unpack_from("<HBBI", body)
    assert (structure_size, data_offset, length) == (17, 0x50 + 8, 3)
    assert len(body) == 16 + 8 and body[16:] == b"\0" * 8


@pytest.mark.parametrize("offset,size", [(ALL, 200), (ALL - 1, 200), (0xFFFFFFF0000, 1)])
def test_invalid_write_offsets(client, offset, size):
    """smb2.rw.invalid: offsets -1, -2 and MS-FSA's MAXFILESIZE are refused."""
    fid = new_file(client, "rw_invalid.dat", size=0)
    assert client.call(raw.WRITE, raw.write_body(fid, b"x" * size, offset)).status == STATUS_INVALID_PARAMETER


# ---- smb2.dir ---------------------------------------------------------------------------------------

def test_enumeration_skips_names_deleted_after_it_began(client):
    """smb2.dir.fixed: start listing on one handle, delete every file through another, finish
    the listing: only "." and ".." may still appear."""
    assert client.create("fixed", access=ALL_ACCESS, options=DIRECTORY_FILE,
                         disposition=raw.FILE_OPEN_IF).status == 0
    for i in range(10):
        fid = client.open_file(f"fixed\\f{i}", access=ALL_ACCESS, disposition=raw.FILE_OPEN_IF)
        client.call(raw.CLOSE, raw.close_body(fid))
    d = client.open_file("fixed", access=ALL_ACCESS, options=DIRECTORY_FILE)
    first = client.call(raw.QUERY_DIRECTORY, query_dir_body(d, flags=0x2))  # RETURN_SINGLE_ENTRY
    assert first.status == 0 and len(names_in(first.body)) == 1
    for i in range(10):
        fid = client.open_file(f"fixed\\f{i}", access=ALL_ACCESS | 0x10000)  # DELETE
        assert client.call(raw.SET_INFO, struct.pack("<HBBIHHI16s", 33, 1, 13, 1, 96, 0, 0, fid) + b"\1").status == 0
        client.call(raw.CLOSE, raw.close_body(fid))
    rest: list[str] = []
    while True:
        r = client.call(raw.QUERY_DIRECTORY, query_dir_body(d))
        if r.status == STATUS_NO_MORE_FILES:
            break
        assert r.status == 0
        rest += names_in(r.body)
    assert set(rest) <= {".", ".."}


# ---- smb2.getinfo -------------------------------------------------------------------------------

@pytest.mark.parametrize("info_type,info_class,fixed", [
    (1, 4, 40),    # FileBasicInformation
    (1, 18, 104),  # FileAllInformation
    (1, 22, 32),   # FileStreamInformation
    (2, 1, 24),    # FileFsVolumeInformation
    (2, 5, 16),    # FileFsAttributeInformation
])
def test_getinfo_buffer_sizes(client, info_type, info_class, fixed):
    """smb2.getinfo.qfile_buffercheck/qfs_buffercheck: below the fixed part INFO_LENGTH_MISMATCH,
    from there up to the whole answer BUFFER_OVERFLOW, then SUCCESS."""
    fid = new_file(client, "bufsize.txt", size=3)
    full = client.call(raw.QUERY_INFO, raw.query_info_body(fid, info_type, info_class, 65535))
    assert full.status == 0
    size = struct.unpack_from("<I", full.body, 4)[0]
    for length in range(size + 1):
        status = client.call(raw.QUERY_INFO, raw.query_info_body(fid, info_type, info_class, length)).status
        expected = (STATUS_INFO_LENGTH_MISMATCH if length < fixed else
                    STATUS_BUFFER_OVERFLOW if length < size else 0)
        assert status == expected, length


@pytest.mark.parametrize("info_class", [21, 28, 48])  # AlternateName, Compression, NormalizedName
def test_getinfo_classes_open_to_any_handle(client, info_class):
    """smb2.getinfo.getinfo_access: these need no FILE_READ_ATTRIBUTES."""
    new_file(client, "access.txt")
    fid = client.open_file("access.txt", access=raw.SYNCHRONIZE)
    assert client.call(raw.QUERY_INFO, raw.query_info_body(fid, 1, info_class)).status == 0


def test_normalized_name_of_the_root_is_empty(client):
    """smb2.getinfo.normalized (getinfo.c:277): FileNormalizedNameInformation of the root."""
    root = client.open_file("", access=raw.SYNCHRONIZE | 0x81, options=0)
    r = client.call(raw.QUERY_INFO, raw.query_info_body(root, 1, 48))
    assert r.status == 0
    offset = struct.unpack_from("<H", r.body, 2)[0]
    assert struct.unpack_from("<I", r.raw, offset)[0] == 0


# ---- extended attributes (smb2.getinfo.getinfo_access needs them stored and returned) ------

def full_ea(name: bytes, value: bytes, *, last: bool) -> bytes:
    """FILE_FULL_EA_INFORMATION entry, MS-FSCC 2.4.15, padded to 4 unless last."""
    entry = struct.pack("<IBBH", 0, 0, len(name), len(value)) + name + b"\0" + value
    if last:
        return entry
    entry += b"\0" * (-len(entry) % 4)
    return struct.pack("<I", len(entry)) + entry[4:]


def test_eas_given_at_create_are_returned(client):
    """smbtorture's complex file: CREATE with an ExtA context holding EAONE and SECONDEA, then
    QUERY_INFO FileFullEaInformation (class 15) with FILE_READ_EA returns both."""
    exta = full_ea(b"EAONE", b"VALUE1", last=False) + full_ea(b"SECONDEA", b"ValueTwo", last=True)
    ctx = raw.create_context(b"ExtA", exta)
    r = client.create("eas.txt", access=ALL_ACCESS, disposition=raw.FILE_OVERWRITE_IF, contexts=ctx)
    assert r.status == 0
    q = client.call(raw.QUERY_INFO, raw.query_info_body(r.file_id, 1, 15, 4096))
    assert q.status == 0
    offset, length = struct.unpack_from("<HI", q.body, 2)
    assert q.raw[offset:offset + length] == exta
    size = client.call(raw.QUERY_INFO, raw.query_info_body(r.file_id, 1, 7, 4)).body[8:12]
    assert struct.unpack("<I", size)[0] == len(exta) + (-len(exta) % 4)  # FileEaInformation.EaSize
    # too small for even one entry
    assert client.call(raw.QUERY_INFO, raw.query_info_body(r.file_id, 1, 15, 8)).status == 0xC0000023
    no_ea = client.open_file("eas.txt", access=raw.SYNCHRONIZE | raw.FILE_READ_ATTRIBUTES)
    assert client.call(raw.QUERY_INFO, raw.query_info_body(no_ea, 1, 15)).status == 0xC0000022


def test_set_info_ea_with_empty_value_deletes_it(client):
    """MS-FSA 2.1.5.14.4 via SET_INFO FileFullEaInformation; none left: NO_EAS_ON_FILE."""
    fid = new_file(client, "ea_set.txt")
    for value in (b"v", b""):
        buf = full_ea(b"ONLY", value, last=True)
        body = struct.pack("<HBBIHHI16s", 33, 1, 15, len(buf), 96, 0, 0, fid) + buf
        assert client.call(raw.SET_INFO, body).status == 0
    assert client.call(raw.QUERY_INFO, raw.query_info_body(fid, 1, 15)).status == 0xC0000052


@pytest.mark.parametrize("data,status", [
    (b"\0\0\0\0\0\x05\x01\0EAON", STATUS_INVALID_PARAMETER),            # name runs past the end
    (struct.pack("<IBBH", 2, 0, 1, 0) + b"A\0", STATUS_INVALID_PARAMETER),  # NextEntryOffset backwards
    (struct.pack("<IBBH", 0, 0, 2, 0) + b"A*\0", 0x80000013),           # '*' is no EA name character
])
def test_malformed_ea_lists_are_refused(data, status):
    from smbd.wire.ea import EaListError, parse_full_ea_list

    with pytest.raises(EaListError) as info:
        parse_full_ea_list(data)
    assert info.value.status == status
