"""Named streams and change notify with smbprotocol, as Windows clients use them: a
Zone.Identifier and a 1 MiB stream written and read back, listed and deleted; share modes of a
stream and change notifications between two clients, which smbdd serves from two workers; and
stream names that try to leave the share."""
from __future__ import annotations

import hashlib
import os
import threading
import uuid

import pytest
import smbclient
from smbprotocol.change_notify import CompletionFilter, FileSystemWatcher
from smbprotocol.connection import Connection, Dialects
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.header import NtStatus as WireStatus
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes, FilePipePrinterAccessMask,
                              ImpersonationLevel, Open, ShareAccess)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from tests.smbdd_process import PASSWORD, USER, Smbdd, wait_until

pytestmark = pytest.mark.peer
ZONE = b"[ZoneTransfer]\r\nZoneId=3\r\nReferrerUrl=https://example.invalid/\r\n"
SHARE_ALL = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
RW = (FilePipePrinterAccessMask.FILE_READ_DATA | FilePipePrinterAccessMask.FILE_WRITE_DATA
      | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("streams")
    outside = tmp / "outside"
    outside.mkdir()
    srv = Smbdd(tmp)
    srv.outside = outside
    yield srv
    srv.stop()


class Client:
    """One smbprotocol client with a ClientGUID of its own: smbdd gives it its own worker."""

    def __init__(self, server):
        self.conn = Connection(uuid.uuid4(), "127.0.0.1", server.port)
        self.conn.connect(Dialects.SMB_3_1_1, timeout=10)
        self.session = Session(self.conn, USER, PASSWORD)
        self.session.connect()
        self.tree = TreeConnect(self.session, rf"\\127.0.0.1\data")
        self.tree.connect()

    def open(self, name, *, access=RW, share=SHARE_ALL, disposition=CreateDisposition.FILE_OPEN_IF,
             options=CreateOptions.FILE_NON_DIRECTORY_FILE) -> Open:
        op = Open(self.tree, name)
        op.create(ImpersonationLevel.Impersonation, access, FileAttributes.FILE_ATTRIBUTE_NORMAL, share,
                  disposition, options)
        return op

    def status_of(self, name, **kwargs) -> int:
        try:
            self.open(name, **kwargs).close()
        except SMBResponseException as e:
            return e.status
        return 0

    def close(self):
        self.conn.disconnect()


@pytest.fixture
def two_clients(server):
    a, b = Client(server), Client(server)
    yield a, b
    a.close()
    b.close()


def unc(server, name):
    return rf"\\127.0.0.1\data\{name}"


def test_windows_like_streams(server):
    """What a browser and Explorer do: mark a download with Zone.Identifier, keep a large stream,
    list the streams, delete one; the file's own data is untouched throughout."""
    smbclient.register_session("127.0.0.1", username=USER, password=PASSWORD, port=server.port)
    try:
        body = os.urandom(70_000)
        big = os.urandom(1024 * 1024)
        with smbclient.open_file(unc(server, "setup.exe"), "wb", port=server.port) as f:
            f.write(body)
        with smbclient.open_file(unc(server, "setup.exe:Zone.Identifier"), "wb", port=server.port) as f:
            f.write(ZONE)
        with smbclient.open_file(unc(server, "setup.exe:big.bin"), "wb", port=server.port) as f:
            f.write(big)
        with smbclient.open_file(unc(server, "setup.exe:Zone.Identifier"), "rb", port=server.port) as f:
            assert f.read() == ZONE
        with smbclient.open_file(unc(server, "setup.exe:big.bin:$DATA"), "rb", port=server.port) as f:
            assert hashlib.sha256(f.read()).digest() == hashlib.sha256(big).digest()
        streams = {s.name: s.size for s in smbclient.liststreams(unc(server, "setup.exe"), port=server.port)}
        assert streams == {"::$DATA": len(body), ":Zone.Identifier:$DATA": len(ZONE),
                           ":big.bin:$DATA": len(big)}
        smbclient.remove(unc(server, "setup.exe:big.bin"), port=server.port)
        names = [s.name for s in smbclient.liststreams(unc(server, "setup.exe"), port=server.port)]
        assert sorted(names) == ["::$DATA", ":Zone.Identifier:$DATA"]
        assert (server.share / "setup.exe").read_bytes() == body
        # The depot never shows, and deleting the file takes its streams with it.
        assert smbclient.listdir(unc(server, ""), port=server.port) == ["setup.exe"]
        smbclient.remove(unc(server, "setup.exe"), port=server.port)
        depot = server.share / ".smbdd-streams"
        assert not any(p.is_file() for p in depot.rglob("*")), list(depot.rglob("*"))
    finally:
        smbclient.reset_connection_cache()


def test_stream_share_modes_hold_across_workers(server, two_clients):
    a, b = two_clients
    held = a.open("shared.txt:lock", share=0)
    try:
        assert b.status_of("shared.txt:lock") == WireStatus.STATUS_SHARING_VIOLATION
        assert b.status_of("shared.txt:other") == 0       # another stream: its own share modes
        assert b.status_of("shared.txt") == 0             # the file's data: not this stream's
        # A stream open without FILE_SHARE_DELETE keeps the file from being opened for DELETE.
        assert b.status_of("shared.txt", access=FilePipePrinterAccessMask.DELETE) == \
            WireStatus.STATUS_SHARING_VIOLATION
    finally:
        held.close()
    assert b.status_of("shared.txt:lock", share=0) == 0
    assert len(set(server.worker_pids())) >= 2, "the two clients were served by one worker"


def test_a_file_with_an_open_stream_keeps_its_name_across_workers(server, two_clients):
    """smbclient's own client (a third ClientGUID, a third worker) renames the file while a
    stream of it is open in another worker: ACCESS_DENIED, as Windows answers."""
    a, _ = two_clients
    held = a.open("named.txt:s")
    smbclient.register_session("127.0.0.1", username=USER, password=PASSWORD, port=server.port)
    try:
        with pytest.raises(OSError) as e:
            smbclient.rename(unc(server, "named.txt"), unc(server, "renamed.txt"), port=server.port)
        assert getattr(e.value, "ntstatus", None) == WireStatus.STATUS_ACCESS_DENIED, e.value
    finally:
        held.close()
        smbclient.reset_connection_cache()
    assert (server.share / "named.txt").exists() and not (server.share / "renamed.txt").exists()


def pending(watcher: FileSystemWatcher) -> None:
    """Wait for the server's interim answer: the watch exists from then on. A change the other
    client makes before that is not one the request was waiting for, and nothing reports it."""
    assert wait_until(lambda: watcher._request is not None and watcher._request.async_id is not None, 10), \
        "CHANGE_NOTIFY never went async"


def test_change_notify_sees_another_workers_changes(server, two_clients):
    a, b = two_clients
    b.open("watched", options=CreateOptions.FILE_DIRECTORY_FILE,
           access=FilePipePrinterAccessMask.GENERIC_ALL).close()
    d = a.open("watched", options=CreateOptions.FILE_DIRECTORY_FILE,
               access=FilePipePrinterAccessMask.FILE_READ_DATA | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES)
    watcher = FileSystemWatcher(d)
    watcher.start(CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME | CompletionFilter.FILE_NOTIFY_CHANGE_STREAM_NAME)
    pending(watcher)
    b.open("watched\\made-by-b.txt").close()
    assert watcher.response_event.wait(10), "no answer to CHANGE_NOTIFY"
    actions = [(x["action"].get_value(), x["file_name"].get_value()) for x in watcher.result]
    assert actions == [(1, "made-by-b.txt")]  # FILE_ACTION_ADDED
    watcher = FileSystemWatcher(d)
    watcher.start(CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME)  # fixed by the first: FILE|STREAM_NAME
    b.open("watched\\made-by-b.txt:Zone.Identifier").close()
    assert watcher.response_event.wait(10)
    actions = [(x["action"].get_value(), x["file_name"].get_value()) for x in watcher.result]
    assert actions == [(6, "made-by-b.txt:Zone.Identifier")]  # FILE_ACTION_ADDED_STREAM
    d.close()


def test_a_pending_notify_ends_when_another_worker_deletes_the_directory(server, two_clients):
    a, b = two_clients
    b.open("doomed", options=CreateOptions.FILE_DIRECTORY_FILE, access=FilePipePrinterAccessMask.GENERIC_ALL).close()
    d = a.open("doomed", options=CreateOptions.FILE_DIRECTORY_FILE,
               access=FilePipePrinterAccessMask.FILE_READ_DATA | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES)
    watcher = FileSystemWatcher(d)
    watcher.start(CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME)
    pending(watcher)
    b.open("doomed", options=CreateOptions.FILE_DIRECTORY_FILE | CreateOptions.FILE_DELETE_ON_CLOSE,
           access=FilePipePrinterAccessMask.DELETE, disposition=CreateDisposition.FILE_OPEN).close()
    assert watcher.response_event.wait(10), "the request was left pending"
    with pytest.raises(SMBResponseException) as e:
        _ = watcher.result
    assert e.value.status == WireStatus.STATUS_DELETE_PENDING
    d.close()


BAD_STREAM_NAMES = [
    ("f.txt:..", WireStatus.STATUS_OBJECT_NAME_INVALID),
    ("f.txt:.", WireStatus.STATUS_OBJECT_NAME_INVALID),
    ("f.txt:a/b", WireStatus.STATUS_OBJECT_NAME_INVALID),
    ("f.txt:../../outside/x", WireStatus.STATUS_OBJECT_NAME_INVALID),
    ("f.txt:s:$INDEX_ALLOCATION", WireStatus.STATUS_OBJECT_NAME_INVALID),
    ("f.txt:s:$FOO", WireStatus.STATUS_OBJECT_NAME_INVALID),
    ("f.txt:", WireStatus.STATUS_OBJECT_NAME_INVALID),
    ("f.txt:s:", WireStatus.STATUS_OBJECT_NAME_INVALID),
    ("f.txt:a:b:c", WireStatus.STATUS_OBJECT_NAME_INVALID),
    ("f.txt:" + "x" * 256, WireStatus.STATUS_OBJECT_NAME_INVALID),       # 256 UTF-16 units
    ("f.txt:" + "\u00e9" * 200, WireStatus.STATUS_OBJECT_NAME_INVALID),  # 400 bytes of UTF-8
    (".smbdd-streams\\x", WireStatus.STATUS_ACCESS_DENIED),              # the depot itself
    (".SMBDD-STREAMS:s", WireStatus.STATUS_ACCESS_DENIED),
]


@pytest.mark.parametrize("name, status", BAD_STREAM_NAMES, ids=[n[:24] for n, _ in BAD_STREAM_NAMES])
def test_bad_stream_names_get_a_clear_status(server, name, status):
    client = Client(server)
    try:
        outside_before = sorted(os.listdir(server.outside))
        assert client.status_of(name, disposition=CreateDisposition.FILE_OPEN_IF) == status
        assert sorted(os.listdir(server.outside)) == outside_before
        assert client.status_of("still-fine.txt:ok") == 0  # the worker is alive and serving
    finally:
        client.close()


def test_a_link_into_the_depot_leads_nowhere(server):
    """A symlink someone made inside the share that points into the depot reads as absent."""
    client = Client(server)
    try:
        assert client.status_of("linked.txt:s") == 0  # the depot and a stream folder exist now
        os.symlink(".smbdd-streams", server.share / "depot-link")
        assert client.status_of("depot-link", disposition=CreateDisposition.FILE_OPEN,
                                options=CreateOptions.FILE_DIRECTORY_FILE) == \
            WireStatus.STATUS_OBJECT_NAME_NOT_FOUND
    finally:
        os.unlink(server.share / "depot-link")
        client.close()


def test_many_clients_racing_for_a_files_first_stream(server):
    """Workers that give a file its first stream at once agree on one stream folder."""
    clients = [Client(server) for _ in range(4)]
    errors = []

    def make(c, i):
        try:
            c.open(f"race.txt:s{i}").close()
        except Exception as e:  # noqa: BLE001 - any failure fails the test below
            errors.append(e)
    threads = [threading.Thread(target=make, args=(c, i)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert not errors
        smbclient.register_session("127.0.0.1", username=USER, password=PASSWORD, port=server.port)
        names = {s.name for s in smbclient.liststreams(unc(server, "race.txt"), port=server.port)}
        assert names == {"::$DATA"} | {f":s{i}:$DATA" for i in range(4)}
    finally:
        smbclient.reset_connection_cache()
        for c in clients:
            c.close()
