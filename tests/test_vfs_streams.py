"""smbd.vfs.streams and stream names: the depot of named streams, and that no client name reaches it."""
from __future__ import annotations

import os

import pytest

from smbd.status import NtStatus, SmbError
from smbd.vfs import Share
from smbd.vfs.names import StreamName, parse_stream_name
from smbd.vfs.streams import DEPOT_NAME, XATTR_STREAMS


def status_of(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except SmbError as e:
        return e.status
    return NtStatus.SUCCESS


@pytest.mark.parametrize("name, expected", [
    ("f", StreamName(("f",))),
    ("f::$DATA", StreamName(("f",), None, True)),
    ("d\\f:Stream One", StreamName(("d", "f"), "Stream One")),
    ("f:Second Stream:$DaTa", StreamName(("f",), "Second Stream")),
    ("f:\x05Stream\n One", StreamName(("f",), "\x05Stream\n One")),  # control characters are fine
    ("f:?Stream*<>|\"", StreamName(("f",), "?Stream*<>|\"")),        # and so are wildcards
    ("f:" + "s" * 255, StreamName(("f",), "s" * 255)),
])
def test_stream_names_parse(name, expected):
    assert parse_stream_name(name) == expected


@pytest.mark.parametrize("name", ["f:", "f:s:", "f:s:$FOO", "f:s:$INDEX_ALLOCATION", "f:a:b:c", "f:a/b",
                                  "f:.", "f:..", "f:" + "s" * 256, "f:bad\ud800", "d:s\\f", ":s", "f*:s"])
def test_bad_stream_names_are_invalid(name):
    assert status_of(parse_stream_name, name) == NtStatus.OBJECT_NAME_INVALID


@pytest.fixture
def share(tmp_path):
    s = Share(str(tmp_path))
    if not s.streams.supported:
        s.close()
        pytest.skip("no user xattrs on this file system")
    yield s
    s.close()


def open_base(share, name):
    with share.open((name,), create=True, exclusive=False, truncate=False, directory=False, write=True) as f:
        pass
    return share.open((name,), create=False, exclusive=False, truncate=False, directory=None, write=False)


def test_streams_live_in_one_folder_named_by_the_files_xattr(share, tmp_path):
    base = open_base(share, "f.txt")
    s = share.streams.open(base.fd, "Zone.Identifier", create=True, exclusive=True, write=True, truncate=False)
    os.write(s.fd, b"zone")
    os.close(s.fd)
    folder_id = os.getxattr(tmp_path / "f.txt", XATTR_STREAMS)
    assert (tmp_path / DEPOT_NAME / folder_id.hex()[:2] / folder_id.hex() / "Zone.Identifier").read_bytes() == b"zone"
    assert [(e.name, e.size) for e in share.streams.list(base.fd)] == [("Zone.Identifier", 4)]
    base.close()


def test_names_match_without_case_and_keep_their_spelling(share):
    base = open_base(share, "f.txt")
    os.close(share.streams.open(base.fd, "StreamName", create=True, exclusive=True, write=True, truncate=False).fd)
    again = share.streams.open(base.fd, "STREAMNAME", create=True, exclusive=False, write=False, truncate=False)
    assert (again.name, again.created) == ("StreamName", False)
    os.close(again.fd)
    assert status_of(share.streams.open, base.fd, "streamname", create=True, exclusive=True, write=True,
                     truncate=False) == NtStatus.OBJECT_NAME_COLLISION
    base.close()


def test_rename_replace_and_remove(share):
    base = open_base(share, "f.txt")
    for name in ("a", "b"):
        os.close(share.streams.open(base.fd, name, create=True, exclusive=True, write=True, truncate=False).fd)
    assert status_of(share.streams.rename, base.fd, "a", "B", replace=False) == NtStatus.OBJECT_NAME_COLLISION
    assert share.streams.rename(base.fd, "a", "c", replace=False) == "c"
    assert share.streams.rename(base.fd, "c", "b", replace=True) == "b"
    assert share.streams.rename(base.fd, "b", "B", replace=False) == "B"  # a change of case
    assert [e.name for e in share.streams.list(base.fd)] == ["B"]
    share.streams.remove(base.fd, "b")
    assert share.streams.list(base.fd) == []
    assert status_of(share.streams.open, base.fd, "b", create=False, exclusive=False, write=False,
                     truncate=False) == NtStatus.OBJECT_NAME_NOT_FOUND
    base.close()


def test_remove_all_takes_the_folder_and_the_id(share, tmp_path):
    base = open_base(share, "f.txt")
    os.close(share.streams.open(base.fd, "s", create=True, exclusive=True, write=True, truncate=False).fd)
    share.streams.remove_all(base.fd)
    assert share.streams.list(base.fd) == []
    with pytest.raises(OSError):
        os.getxattr(tmp_path / "f.txt", XATTR_STREAMS)
    assert not [p for p in (tmp_path / DEPOT_NAME).rglob("*") if len(p.name) == 32]
    base.close()


def test_streams_follow_a_renamed_file(share):
    base = open_base(share, "old.txt")
    os.close(share.streams.open(base.fd, "s", create=True, exclusive=True, write=True, truncate=False).fd)
    base.close()
    share.rename(("old.txt",), ("new.txt",), replace=False)
    moved = share.open(("new.txt",), create=False, exclusive=False, truncate=False, directory=None, write=False)
    assert [e.name for e in share.streams.list(moved.fd)] == ["s"]
    moved.close()


def test_directories_have_streams_too(share):
    share.open(("d",), create=True, exclusive=True, truncate=False, directory=True, write=False).close()
    d = share.open(("d",), create=False, exclusive=False, truncate=False, directory=True, write=False)
    os.close(share.streams.open(d.fd, "meta", create=True, exclusive=True, write=True, truncate=False).fd)
    assert [e.name for e in share.streams.list(d.fd)] == ["meta"]
    d.close()


def test_the_depot_is_out_of_every_clients_reach(share, tmp_path):
    base = open_base(share, "f.txt")
    os.close(share.streams.open(base.fd, "s", create=True, exclusive=True, write=True, truncate=False).fd)
    base.close()
    assert (tmp_path / DEPOT_NAME).is_dir()
    assert [e.name for e in share.list_dir(())] == ["f.txt"]
    for name in (DEPOT_NAME, DEPOT_NAME.upper()):
        assert status_of(share.lookup, (name,)) == NtStatus.ACCESS_DENIED
        assert status_of(share.open, (name, "x"), create=True, exclusive=True, truncate=False, directory=False,
                         write=True) == NtStatus.ACCESS_DENIED
        assert status_of(share.unlink, (name,)) == NtStatus.ACCESS_DENIED
        assert status_of(share.rename, ("f.txt",), (name,), replace=True) == NtStatus.ACCESS_DENIED
    os.symlink(DEPOT_NAME, tmp_path / "link")
    assert share.lookup(("link",)) is None
    assert status_of(share.open, ("link",), create=False, exclusive=False, truncate=False, directory=None,
                     write=False) == NtStatus.OBJECT_NAME_NOT_FOUND
    assert [e.name for e in share.list_dir(())] == ["f.txt"]  # the link reads as absent too


def test_a_file_system_without_xattrs_has_no_streams(share, monkeypatch):
    monkeypatch.setattr(share.streams, "supported", False)
    base = open_base(share, "f.txt")
    assert share.streams.list(base.fd) == []
    assert status_of(share.streams.open, base.fd, "s", create=True, exclusive=True, write=True,
                     truncate=False) == NtStatus.OBJECT_NAME_NOT_FOUND
    base.close()
