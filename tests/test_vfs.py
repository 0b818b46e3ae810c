"""The POSIX VFS: name validation, confinement to the share root (with openat2 and with the
component walk), case-insensitive lookup, open/create semantics, data I/O, metadata round trips,
rename, listing, errno mapping, thread safety and fd hygiene."""
from __future__ import annotations

import errno
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from smbd.fscc.constants import FileAttributes
from smbd.fscc.time import unix_ns_to_filetime
from smbd.status import NtStatus, SmbError
from smbd.vfs import Share, metadata, parse_name, status_from_oserror, translate_oserror
from smbd.vfs import syscalls


def status_of(fn, *args, **kw) -> int:
    with pytest.raises(SmbError) as e:
        fn(*args, **kw)
    return e.value.status


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture
def tree(tmp_path):
    """share/ with files, dirs and symlinks of every kind; outside/ next to it."""
    share = tmp_path / "share"
    outside = tmp_path / "outside"
    share.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (share / "Hello.TXT").write_text("hello world")
    (share / "Sub").mkdir()
    (share / "Sub" / "Inner.bin").write_bytes(b"\x01\x02\x03")
    (share / ".hidden").write_text("h")
    os.symlink("/etc", share / "etc_link")                        # absolute, outside
    os.symlink("../outside", share / "sibling_link")              # relative, outside
    os.symlink("../outside/secret", share / "secret_link")        # file outside
    os.symlink("Sub", share / "sub_link")                         # relative, inside
    os.symlink(str(share / "Sub" / "Inner.bin"), share / "abs_inside")  # absolute, inside
    os.symlink("nowhere", share / "dangling")
    os.symlink("..", share / "parent_link")                       # climbs above the root
    os.symlink("chain2", share / "chain1")                        # inside link to an escaping one
    os.symlink("Sub/../../outside", share / "chain2")
    os.symlink("../Hello.TXT", share / "Sub" / "up_link")          # ".." that stays inside
    return share, outside


@pytest.fixture(params=[True, False], ids=["openat2", "walk"])
def share(request, tree):
    if request.param and not syscalls.HAVE_OPENAT2:
        pytest.skip("no openat2 on this platform")
    s = Share(str(tree[0]), use_openat2=request.param)
    yield s
    s.close()


def new_file(share, components, data=b""):
    with share.open(components, create=True, exclusive=True, truncate=False, directory=False,
                    write=True) as f:
        if data:
            share.pwrite(f.fd, data, 0)


# -- name parsing ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("", ()),
    ("a", ("a",)),
    ("dir\\sub\\file.txt", ("dir", "sub", "file.txt")),
    ("dir\\", ("dir",)),                       # one trailing separator is dropped
    ("a\\..\\b", ("b",)),                      # ".." folded lexically, as Samba does
    ("a\\b\\..\\..\\c", ("c",)),
    ("file::$DATA", ("file",)),                # the default data stream is the file
    ("file::$data", ("file",)),
    ("x" * 255, ("x" * 255,)),
    ("\U0001F600" * 127, ("\U0001F600" * 127,)),  # 254 UTF-16 units
    ("trailing.dot.", ("trailing.dot.",)),
    ("ünïcödé ñame", ("ünïcödé ñame",)),
])
def test_parse_name_valid(name, expected):
    assert parse_name(name) == expected
    assert Share.parse_name(name) == expected


@pytest.mark.parametrize("name, status", [
    ("\\a", NtStatus.INVALID_PARAMETER),                  # leading separator
    ("\\", NtStatus.INVALID_PARAMETER),
    ("..", NtStatus.OBJECT_PATH_SYNTAX_BAD),
    ("..\\..\\etc\\passwd", NtStatus.OBJECT_PATH_SYNTAX_BAD),
    ("a\\..\\..\\etc", NtStatus.OBJECT_PATH_SYNTAX_BAD),
    (".", NtStatus.OBJECT_NAME_INVALID),
    ("a\\.\\b", NtStatus.OBJECT_NAME_INVALID),
    ("a\\\\b", NtStatus.OBJECT_NAME_INVALID),             # empty component
    ("a\\\\", NtStatus.OBJECT_NAME_INVALID),
    ("a/b", NtStatus.OBJECT_NAME_INVALID),
    ("/etc/passwd", NtStatus.OBJECT_NAME_INVALID),
    ("C:\\Windows", NtStatus.OBJECT_NAME_INVALID),        # drive letter = stream in a dir part
    ("a*", NtStatus.OBJECT_NAME_INVALID),
    ("a?", NtStatus.OBJECT_NAME_INVALID),
    ('a"', NtStatus.OBJECT_NAME_INVALID),
    ("a<", NtStatus.OBJECT_NAME_INVALID),
    ("a>", NtStatus.OBJECT_NAME_INVALID),
    ("a|", NtStatus.OBJECT_NAME_INVALID),
    ("a\x00b", NtStatus.OBJECT_NAME_INVALID),
    ("a\x1fb", NtStatus.OBJECT_NAME_INVALID),
    ("x" * 256, NtStatus.OBJECT_NAME_INVALID),
    ("\U0001F600" * 128, NtStatus.OBJECT_NAME_INVALID),    # 256 UTF-16 units
    ("bad\ud800", NtStatus.OBJECT_NAME_INVALID),           # lone surrogate
    ("file:stream", NtStatus.OBJECT_NAME_NOT_FOUND),       # streams unsupported
    ("file:stream:$DATA", NtStatus.OBJECT_NAME_NOT_FOUND),
    ("file:", NtStatus.OBJECT_NAME_INVALID),
    ("file:s:$INDEX_ALLOCATION", NtStatus.OBJECT_NAME_INVALID),
    ("file:a:b:c", NtStatus.OBJECT_NAME_INVALID),
    (":stream", NtStatus.OBJECT_NAME_INVALID),
    ("dir:s\\file", NtStatus.OBJECT_NAME_INVALID),
])
def test_parse_name_invalid(name, status):
    assert status_of(parse_name, name) == status


# -- confinement -----------------------------------------------------------------------------
def test_links_leading_out_look_absent(share):
    for link in ("etc_link", "sibling_link", "secret_link", "dangling", "parent_link", "chain1",
                 "chain2"):
        assert share.lookup((link,)) is None, link
        assert status_of(share.open, (link,), create=False, exclusive=False, truncate=False,
                         directory=None, write=False) == NtStatus.OBJECT_NAME_NOT_FOUND
    for path in (("etc_link", "passwd"), ("sibling_link", "secret"), ("parent_link", "etc"),
                 ("chain1", "secret")):
        assert status_of(share.lookup, path) == NtStatus.OBJECT_PATH_NOT_FOUND, path
        assert status_of(share.open, path, create=False, exclusive=False, truncate=False,
                         directory=None, write=False) == NtStatus.OBJECT_PATH_NOT_FOUND


def test_create_through_escaping_link_is_refused(share, tree):
    _, outside = tree
    before = sorted(os.listdir(outside))
    for path in (("sibling_link", "planted"), ("etc_link", "planted")):
        assert status_of(share.open, path, create=True, exclusive=True, truncate=False,
                         directory=False, write=True) == NtStatus.OBJECT_PATH_NOT_FOUND
        assert status_of(share.open, path, create=True, exclusive=True, truncate=False,
                         directory=True, write=False) == NtStatus.OBJECT_PATH_NOT_FOUND
    # Creating over the escaping link itself must not write through it either.
    assert status_of(share.open, ("secret_link",), create=True, exclusive=False, truncate=True,
                     directory=False, write=True) == NtStatus.OBJECT_NAME_NOT_FOUND
    assert sorted(os.listdir(outside)) == before
    assert (outside / "secret").read_text() == "secret"


def test_rename_into_escaping_link_is_refused(share, tree):
    _, outside = tree
    assert status_of(share.rename, ("Hello.TXT",), ("sibling_link", "stolen"),
                     replace=False) == NtStatus.OBJECT_PATH_NOT_FOUND
    assert not (outside / "stolen").exists()


def test_unlinking_an_escaping_link_removes_only_the_link(share, tree):
    root, outside = tree
    share.unlink(("secret_link",))
    assert not os.path.lexists(root / "secret_link")
    assert (outside / "secret").read_text() == "secret"


def test_links_staying_inside_are_followed(share):
    info = share.lookup(("sub_link", "inner.bin"))
    assert info is not None and info.size == 3
    assert share.lookup(("abs_inside",)).size == 3          # absolute target under the root
    assert share.lookup(("Sub", "up_link")).size == len("hello world")
    with share.open(("sub_link",), create=False, exclusive=False, truncate=False,
                    directory=True, write=False) as d:
        assert d.is_dir


def test_escape_attempts_via_parse_and_open(share):
    for name in ("..\\..\\etc\\passwd", "..\\outside\\secret"):
        assert status_of(share.parse_name, name) == NtStatus.OBJECT_PATH_SYNTAX_BAD
    # Components that bypass parse_name are re-checked before they reach the kernel.
    for bad in (("..", "outside"), ("/etc",), ("a/../../x",), (".",)):
        assert status_of(share.lookup, bad) == NtStatus.OBJECT_NAME_INVALID


def test_share_root_itself(share):
    info = share.lookup(())
    assert info is not None and info.is_dir
    with share.open((), create=False, exclusive=False, truncate=False, directory=None,
                    write=False) as d:
        assert d.is_dir and d.name == ""
    assert status_of(share.unlink, ()) == NtStatus.ACCESS_DENIED
    assert status_of(share.open, (), create=True, exclusive=True, truncate=False,
                     directory=True, write=False) == NtStatus.OBJECT_NAME_COLLISION


# -- lookup semantics ------------------------------------------------------------------------
def test_missing_middle_vs_last_component(share):
    assert share.lookup(("nope",)) is None
    assert status_of(share.lookup, ("nope", "x")) == NtStatus.OBJECT_PATH_NOT_FOUND
    assert status_of(share.lookup, ("Hello.TXT", "x")) == NtStatus.OBJECT_PATH_NOT_FOUND
    assert status_of(share.open, ("Sub", "nope"), create=False, exclusive=False, truncate=False,
                     directory=None, write=False) == NtStatus.OBJECT_NAME_NOT_FOUND
    assert status_of(share.open, ("nope", "x"), create=True, exclusive=False, truncate=False,
                     directory=None, write=True) == NtStatus.OBJECT_PATH_NOT_FOUND


def test_case_insensitive_lookup(share, tree):
    root, _ = tree
    exact = share.lookup(("Hello.TXT",))
    assert share.lookup(("hello.txt",)) == exact
    assert share.lookup(("HELLO.txt",)) == exact
    assert share.lookup(("SUB", "INNER.BIN")).size == 3
    # Opening with another case finds the existing file instead of creating a twin.
    with share.open(("hello.TXT",), create=True, exclusive=False, truncate=False,
                    directory=False, write=False) as f:
        assert not f.created
    assert sorted(p.name for p in root.iterdir() if p.name.lower() == "hello.txt") == ["Hello.TXT"]
    assert status_of(share.open, ("HELLO.TXT",), create=True, exclusive=True, truncate=False,
                     directory=False, write=True) == NtStatus.OBJECT_NAME_COLLISION


# -- open / create ---------------------------------------------------------------------------
def test_open_type_checks(share):
    assert status_of(share.open, ("Hello.TXT",), create=False, exclusive=False, truncate=False,
                     directory=True, write=False) == NtStatus.NOT_A_DIRECTORY
    assert status_of(share.open, ("Sub",), create=False, exclusive=False, truncate=False,
                     directory=False, write=False) == NtStatus.FILE_IS_A_DIRECTORY
    with share.open(("Sub",), create=False, exclusive=False, truncate=False, directory=None,
                    write=True) as d:
        assert d.is_dir and not d.writable


def test_create_file_and_directory(share, tree):
    root, _ = tree
    with share.open(("Sub", "new.txt"), create=True, exclusive=True, truncate=False,
                    directory=False, write=True, mode=0o600) as f:
        assert f.created and f.writable and not f.is_dir
        assert share.pwrite(f.fd, b"data", 0) == 4
    assert (root / "Sub" / "new.txt").read_bytes() == b"data"
    assert stat.S_IMODE(os.stat(root / "Sub" / "new.txt").st_mode) == 0o600
    with share.open(("NewDir",), create=True, exclusive=True, truncate=False, directory=True,
                    write=False) as d:
        assert d.created and d.is_dir
    assert (root / "NewDir").is_dir()
    with share.open(("NewDir",), create=True, exclusive=False, truncate=False, directory=True,
                    write=False) as d:
        assert not d.created


def test_truncate_on_open(share, tree):
    root, _ = tree
    with share.open(("Hello.TXT",), create=False, exclusive=False, truncate=True,
                    directory=False, write=True) as f:
        assert share.stat_fd(f.fd).size == 0
    assert (root / "Hello.TXT").read_bytes() == b""


def test_special_files_are_not_opened(share, tree):
    root, _ = tree
    os.mkfifo(root / "fifo")
    # Would block forever if the fifo were opened for reading without O_NONBLOCK/O_PATH.
    assert status_of(share.open, ("fifo",), create=False, exclusive=False, truncate=False,
                     directory=None, write=False) == NtStatus.ACCESS_DENIED
    assert "fifo" not in [e.name for e in share.list_dir(())]


def test_read_only_share(tree):
    root, _ = tree
    with Share(str(root), read_only=True) as ro:
        assert ro.lookup(("Hello.TXT",)) is not None
        with ro.open(("Hello.TXT",), create=False, exclusive=False, truncate=False,
                     directory=False, write=False) as f:
            assert not f.writable
            assert status_of(ro.truncate, f.fd, 0) == NtStatus.ACCESS_DENIED
        for kw in (dict(create=True, write=False), dict(create=False, write=True)):
            assert status_of(ro.open, ("x",), exclusive=False, truncate=False, directory=False,
                             **kw) == NtStatus.ACCESS_DENIED
        assert status_of(ro.unlink, ("Hello.TXT",)) == NtStatus.ACCESS_DENIED
        assert status_of(ro.rename, ("Hello.TXT",), ("y",), replace=False) == NtStatus.ACCESS_DENIED


# -- data ------------------------------------------------------------------------------------
def test_pread_into_caller_buffer_and_eof(share):
    buf = bytearray(32)
    view = memoryview(buf)
    with share.open(("Hello.TXT",), create=False, exclusive=False, truncate=False,
                    directory=False, write=False) as f:
        # Read into the middle of the caller's buffer: the bytes land there, nowhere else.
        assert share.pread_into(f.fd, view[4:9], 6) == 5
        assert bytes(buf[4:9]) == b"world" and bytes(buf[:4]) == b"\0" * 4
        assert share.pread_into(f.fd, view, 0) == 11      # short read at EOF
        assert share.pread_into(f.fd, view, 100) == 0


def test_pread_cached_reads_the_page_cache_without_a_thread(share):
    """The event-loop read: what the page cache holds comes back at once, finished."""
    buf = bytearray(32)
    with share.open(("Hello.TXT",), create=False, exclusive=False, truncate=False,
                    directory=False, write=False) as f:
        share.pread_into(f.fd, memoryview(buf), 0)  # now it is cached for certain
        buf[:] = bytes(32)
        n, finished = share.pread_cached(f.fd, memoryview(buf)[:5], 6)
        if not finished:  # a file system without RWF_NOWAIT: nothing read, nothing claimed
            assert (n, share._nowait_reads) == (0, False)
            pytest.skip("this file system refuses RWF_NOWAIT")
        assert (n, bytes(buf[:5])) == (5, b"world")
        assert share.pread_cached(f.fd, memoryview(buf), 0) == (11, True)  # EOF ends it
        assert share.pread_cached(f.fd, memoryview(buf), 100) == (0, True)


def test_pread_cached_gives_up_on_eagain_and_on_eopnotsupp(share, monkeypatch):
    """EAGAIN (the disk would be needed) hands the rest to a thread; EOPNOTSUPP (the file
    system has no RWF_NOWAIT) does too, and the share stops trying."""
    real = os.preadv
    calls = []

    def preadv(fd, bufs, offset, flags=0):
        calls.append(flags)
        if flags & os.RWF_NOWAIT:
            if len(calls) == 1:
                bufs[0][:2] = b"he"  # the first two bytes were cached
                return 2
            raise (BlockingIOError(errno.EAGAIN, "would block") if len(calls) == 2
                   else OSError(errno.EOPNOTSUPP, "no nowait"))
        return real(fd, bufs, offset, flags)

    share._memory_fs = False
    monkeypatch.setattr(os, "preadv", preadv)
    buf = bytearray(11)
    with share.open(("Hello.TXT",), create=False, exclusive=False, truncate=False,
                    directory=False, write=False) as f:
        assert share.pread_cached(f.fd, memoryview(buf), 0) == (2, False)
        assert share._nowait_reads
        assert share.pread_cached(f.fd, memoryview(buf), 0) == (0, False)
        assert not share._nowait_reads
        assert share.pread_cached(f.fd, memoryview(buf), 0) == (0, False)
        assert len(calls) == 3  # not tried again
        assert share.pread_into(f.fd, memoryview(buf), 0) == 11 and bytes(buf) == b"hello world"


def test_pread_cached_on_a_memory_file_system():
    """tmpfs holds file data in memory: read directly, even where RWF_NOWAIT is refused
    (it is on 6.1 kernels, the lab VM's)."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    root = os.path.join("/dev/shm", f"smbdd-test-{os.getpid()}")
    os.mkdir(root)
    try:
        with open(os.path.join(root, "f"), "wb") as out:
            out.write(b"in memory")
        with Share(root) as shm_share:
            assert shm_share._memory_fs
            with shm_share.open(("f",), create=False, exclusive=False, truncate=False,
                                directory=False, write=False) as f:
                buf = bytearray(16)
                assert shm_share.pread_cached(f.fd, memoryview(buf), 3) == (6, True)
                assert bytes(buf[:6]) == b"memory"
    finally:
        os.unlink(os.path.join(root, "f"))
        os.rmdir(root)


def test_pwrite_fsync_truncate_allocate(share):
    new_file(share, ("f.bin",))
    with share.open(("f.bin",), create=False, exclusive=False, truncate=False, directory=False,
                    write=True) as f:
        payload = os.urandom(1 << 20)
        assert share.pwrite(f.fd, memoryview(payload), 4096) == len(payload)
        share.fsync(f.fd)
        out = bytearray(len(payload))
        assert share.pread_into(f.fd, memoryview(out), 4096) == len(payload)
        assert out == payload
        share.truncate(f.fd, 100)
        assert share.stat_fd(f.fd).size == 100
        share.allocate(f.fd, 1 << 20)                  # grow: size unchanged, blocks reserved
        info = share.stat_fd(f.fd)
        assert info.size == 100 and info.allocation_size >= 4096
        share.allocate(f.fd, 10)                        # below EOF: truncates (MS-FSA)
        assert share.stat_fd(f.fd).size == 10
        assert status_of(share.truncate, f.fd, -1) == NtStatus.INVALID_PARAMETER


# -- metadata --------------------------------------------------------------------------------
def test_times_round_trip(share):
    new_file(share, ("t",))
    with share.open(("t",), create=False, exclusive=False, truncate=False, directory=False,
                    write=True) as f:
        atime, mtime = 1_500_000_000_123_456_700, 1_600_000_000_987_654_300
        share.set_times(f.fd, atime, mtime)
        info = share.stat_fd(f.fd)
        assert info.last_access_time == unix_ns_to_filetime(atime)
        assert info.last_write_time == unix_ns_to_filetime(mtime)
        share.set_times(f.fd, None, mtime + 100)         # None leaves atime alone
        info = share.stat_fd(f.fd)
        assert info.last_access_time == unix_ns_to_filetime(atime)
        assert info.last_write_time == unix_ns_to_filetime(mtime + 100)
        created = 125911584000000000                      # 2000-01-01
        share.set_times(f.fd, creation_time=created)
        if metadata._read_xattr(f.fd, metadata.XATTR_BTIME, False) is None:
            pytest.skip("filesystem without user xattrs")
        assert share.stat_fd(f.fd).creation_time == created
        assert share.lookup(("t",)).creation_time == created
        assert [e.info.creation_time for e in share.list_dir(()) if e.name == "t"] == [created]


def test_set_basic_info_sentinels(share):
    new_file(share, ("b",))
    with share.open(("b",), create=False, exclusive=False, truncate=False, directory=False,
                    write=True) as f:
        before = share.stat_fd(f.fd)
        share.set_basic_info(f.fd, creation_time=0, last_access_time=-1, last_write_time=-2,
                             attributes=0)
        after = share.stat_fd(f.fd)
        assert (after.last_access_time, after.last_write_time, after.attributes) == \
            (before.last_access_time, before.last_write_time, before.attributes)
        share.set_basic_info(f.fd, last_write_time=125911584000000000)
        assert share.stat_fd(f.fd).last_write_time == 125911584000000000


def test_created_file_keeps_its_birth_time(share):
    new_file(share, ("born",))
    first = share.lookup(("born",)).creation_time
    with share.open(("born",), create=False, exclusive=False, truncate=False, directory=False,
                    write=True) as f:
        share.set_times(f.fd, 10**18, 10**18)             # mtime/atime far in the future
    assert share.lookup(("born",)).creation_time == first


def test_attributes(share, tree):
    root, _ = tree
    assert share.lookup(("Hello.TXT",)).attributes == FileAttributes.ARCHIVE
    assert share.lookup(("Sub",)).attributes == FileAttributes.DIRECTORY
    assert share.lookup((".hidden",)).attributes == FileAttributes.ARCHIVE | FileAttributes.HIDDEN
    os.chmod(root / "Hello.TXT", 0o444)
    assert share.lookup(("Hello.TXT",)).attributes == \
        FileAttributes.ARCHIVE | FileAttributes.READONLY
    with share.open(("Sub", "Inner.bin"), create=False, exclusive=False, truncate=False,
                    directory=False, write=True) as f:
        share.set_dos_attributes(f.fd, FileAttributes.HIDDEN | FileAttributes.SYSTEM
                                 | FileAttributes.DIRECTORY)   # DIRECTORY is not settable
        attrs = share.stat_fd(f.fd, "Inner.bin").attributes
    if metadata._read_xattr(str(root / "Sub" / "Inner.bin"), metadata.XATTR_DOSATTR, False):
        assert attrs == FileAttributes.HIDDEN | FileAttributes.SYSTEM
        assert share.lookup(("Sub", "Inner.bin")).attributes == attrs
    new_dir = share.open(("D",), create=True, exclusive=True, truncate=False, directory=True,
                         write=False)
    new_dir.close()
    assert share.lookup(("D",)).attributes == FileAttributes.DIRECTORY


def test_attributes_without_xattrs_map_readonly_to_mode(share, tree, monkeypatch):
    root, _ = tree
    monkeypatch.setattr(metadata, "write_xattr", lambda fd, name, value: False)
    with share.open(("Hello.TXT",), create=False, exclusive=False, truncate=False,
                    directory=False, write=True) as f:
        share.set_dos_attributes(f.fd, FileAttributes.READONLY)
        assert not os.stat(root / "Hello.TXT").st_mode & 0o222
        assert share.stat_fd(f.fd).attributes & FileAttributes.READONLY
        share.set_dos_attributes(f.fd, FileAttributes.ARCHIVE)
        assert os.stat(root / "Hello.TXT").st_mode & stat.S_IWUSR


def test_file_info_identity(share, tree):
    root, _ = tree
    st = os.stat(root / "Hello.TXT")
    info = share.lookup(("Hello.TXT",))
    assert (info.file_id, info.volume_id, info.size, info.nlink) == \
        (st.st_ino, st.st_dev, 11, 1)
    assert info.allocation_size == st.st_blocks * 512
    assert info.last_write_time == unix_ns_to_filetime(st.st_mtime_ns)
    assert info.change_time == unix_ns_to_filetime(st.st_ctime_ns)
    d = share.lookup(("Sub",))
    assert d.is_dir and d.size == 0 and d.allocation_size == 0


# -- namespace changes -----------------------------------------------------------------------
def test_rename_noreplace_and_replace(share, tree):
    root, _ = tree
    new_file(share, ("a",), b"A")
    new_file(share, ("b",), b"B")
    assert status_of(share.rename, ("a",), ("b",), replace=False) == \
        NtStatus.OBJECT_NAME_COLLISION
    assert status_of(share.rename, ("a",), ("B",), replace=False) == \
        NtStatus.OBJECT_NAME_COLLISION                         # a case twin collides too
    assert (root / "a").read_bytes() == b"A"
    share.rename(("a",), ("b",), replace=True)
    assert not (root / "a").exists() and (root / "b").read_bytes() == b"A"
    share.rename(("b",), ("Sub", "moved"), replace=False)
    assert (root / "Sub" / "moved").read_bytes() == b"A"
    assert status_of(share.rename, ("nope",), ("x",), replace=False) == \
        NtStatus.OBJECT_NAME_NOT_FOUND
    assert status_of(share.rename, ("x",), ("nope", "x"), replace=False) == \
        NtStatus.OBJECT_NAME_NOT_FOUND


def test_rename_case_only_and_replace_case_twin(share, tree):
    root, _ = tree
    share.rename(("Hello.TXT",), ("hello.txt",), replace=False)
    assert sorted(p.name for p in root.iterdir() if p.name.lower() == "hello.txt") == ["hello.txt"]
    new_file(share, ("src",), b"S")
    share.rename(("src",), ("HELLO.TXT",), replace=True)       # replaces "hello.txt"
    names = sorted(p.name for p in root.iterdir() if p.name.lower() == "hello.txt")
    assert names == ["HELLO.TXT"] and (root / "HELLO.TXT").read_bytes() == b"S"


def test_rename_over_directory_and_into_itself(share):
    new_file(share, ("f",))
    assert status_of(share.rename, ("f",), ("Sub",), replace=True) == NtStatus.ACCESS_DENIED
    share.open(("Sub", "deeper"), create=True, exclusive=True, truncate=False, directory=True,
               write=False).close()
    assert status_of(share.rename, ("Sub",), ("Sub", "deeper", "Sub"), replace=False) == \
        NtStatus.INVALID_PARAMETER


def test_unlink_and_rmdir(share, tree):
    root, _ = tree
    assert status_of(share.unlink, ("Sub",)) == NtStatus.FILE_IS_A_DIRECTORY
    assert status_of(share.rmdir, ("Sub",)) == NtStatus.DIRECTORY_NOT_EMPTY
    assert status_of(share.rmdir, ("Hello.TXT",)) == NtStatus.NOT_A_DIRECTORY
    assert not share.is_empty_dir(("Sub",))
    share.unlink(("sub", "inner.bin"))                         # case-insensitive too
    share.unlink(("Sub", "up_link"))
    assert share.is_empty_dir(("Sub",))
    share.rmdir(("SUB",))
    assert not (root / "Sub").exists()
    assert status_of(share.unlink, ("gone",)) == NtStatus.OBJECT_NAME_NOT_FOUND


# -- listing ---------------------------------------------------------------------------------
def test_list_dir(share, tree):
    root, _ = tree
    entries = {e.name: e.info for e in share.list_dir(())}
    # Escaping and dangling links are omitted; inside links show their target.
    assert set(entries) == {"Hello.TXT", "Sub", ".hidden", "sub_link", "abs_inside"}
    assert entries["sub_link"].is_dir
    assert entries["abs_inside"].size == 3
    assert entries[".hidden"].attributes & FileAttributes.HIDDEN
    dotted = share.list_dir((), include_dots=True)
    assert [e.name for e in dotted[:2]] == [".", ".."]
    root_id = os.stat(root).st_ino
    assert dotted[0].info.file_id == root_id and dotted[1].info.file_id == root_id  # no peek above
    assert not dotted[0].info.attributes & FileAttributes.HIDDEN
    with share.open(("Sub",), create=False, exclusive=False, truncate=False, directory=True,
                    write=False) as d:
        sub = share.list_dir(d, include_dots=True)
        assert sub[1].info.file_id == root_id                   # ".." of Sub is the root
        assert {e.name for e in sub[2:]} == {"Inner.bin", "up_link"}
        assert [e.info.size for e in sub if e.name == "up_link"] == [11]
        assert share.list_dir(d) == share.list_dir(d)         # the fd can be listed again


def test_statvfs(share):
    fs = share.statvfs()
    vfs = os.statvfs(share.lookup.__self__._resolver.root_real_path)
    assert fs.total_units == vfs.f_blocks
    assert fs.sectors_per_unit * fs.bytes_per_sector == vfs.f_frsize
    assert fs.fs_type == "NTFS" and fs.max_name_length == 255
    assert 0 <= fs.caller_available_units <= fs.actual_available_units <= fs.total_units
    assert share.volume_creation_time() > 0


# -- errno mapping ---------------------------------------------------------------------------
@pytest.mark.parametrize("err, status", [
    (errno.ENOENT, NtStatus.OBJECT_NAME_NOT_FOUND),
    (errno.EEXIST, NtStatus.OBJECT_NAME_COLLISION),
    (errno.EACCES, NtStatus.ACCESS_DENIED),
    (errno.EPERM, NtStatus.ACCESS_DENIED),
    (errno.ENOTEMPTY, NtStatus.DIRECTORY_NOT_EMPTY),
    (errno.ENOTDIR, NtStatus.OBJECT_PATH_NOT_FOUND),
    (errno.EISDIR, NtStatus.FILE_IS_A_DIRECTORY),
    (errno.ENOSPC, NtStatus.DISK_FULL),
    (errno.EROFS, NtStatus.MEDIA_WRITE_PROTECTED),
    (errno.ENAMETOOLONG, NtStatus.OBJECT_NAME_INVALID),
    (errno.EXDEV, NtStatus.NOT_SAME_DEVICE),
    (errno.EIO, NtStatus.UNSUCCESSFUL),
])
def test_status_from_oserror(err, status):
    assert status_from_oserror(OSError(err, os.strerror(err))) == status


def test_status_from_oserror_middle_component_and_translator():
    assert status_from_oserror(FileNotFoundError(errno.ENOENT, "x"), last_component=False) == \
        NtStatus.OBJECT_PATH_NOT_FOUND

    @translate_oserror()
    def boom():
        raise PermissionError(errno.EACCES, "no")

    assert status_of(boom) == NtStatus.ACCESS_DENIED
    with pytest.raises(SmbError) as e:
        with translate_oserror(last_component=False):
            os.stat("/nonexistent/definitely/not")
    assert e.value.status == NtStatus.OBJECT_PATH_NOT_FOUND
    with pytest.raises(ValueError):                      # non-OSErrors pass through
        with translate_oserror():
            raise ValueError("x")


# -- threads and fd hygiene ------------------------------------------------------------------
def test_concurrent_use_from_threads(share):
    for i in range(20):
        new_file(share, ("Sub", f"f{i}"), bytes([i]) * (i + 1))
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        try:
            name = ("sub", f"F{i % 20}")
            info = share.lookup(name)
            assert info is not None and info.size == i % 20 + 1
            with share.open(name, create=False, exclusive=False, truncate=False,
                            directory=False, write=False) as f:
                buf = bytearray(64)
                n = share.pread_into(f.fd, memoryview(buf), 0)
                assert buf[:n] == bytes([i % 20]) * (i % 20 + 1)
            assert share.lookup(("etc_link", "passwd")) is None
        except SmbError as e:
            if e.status != NtStatus.OBJECT_PATH_NOT_FOUND:
                with lock:
                    errors.append(e)
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            with lock:
                errors.append(e)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(work, range(400)))
    assert errors == []


def test_no_fd_leaks_on_success_and_error_paths(share):
    new_file(share, ("leak",), b"x")
    base = open_fd_count()
    for _ in range(50):
        share.lookup(("LEAK",))
        share.lookup(("nope",))
        share.lookup(("sub_link", "Inner.bin"))
        for path in (("etc_link", "passwd"), ("nope", "x"), ("Hello.TXT", "x")):
            try:
                share.lookup(path)
            except SmbError:
                pass
        try:
            share.open(("chain1",), create=False, exclusive=False, truncate=False,
                       directory=None, write=False)
        except SmbError:
            pass
        share.open(("leak",), create=False, exclusive=False, truncate=False, directory=False,
                   write=False).close()
        share.list_dir((), include_dots=True)
    assert open_fd_count() == base


# -- hostile inputs --------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab.:\\/*?<>|\"\x00 é\U0001F600$")), max_size=24))
def test_parse_name_total(name):
    """Any input either fails with an SmbError or yields plain, safe components."""
    try:
        comps = parse_name(name)
    except SmbError as e:
        assert e.status in (NtStatus.OBJECT_NAME_INVALID, NtStatus.OBJECT_PATH_SYNTAX_BAD,
                            NtStatus.OBJECT_NAME_NOT_FOUND, NtStatus.INVALID_PARAMETER)
        return
    for c in comps:
        assert c not in ("", ".", "..")
        assert not set(c) & set("\\/:*?<>|\"\x00")


def test_symlink_swap_race_never_escapes(share, tree):
    """A directory on the path is swapped with a symlink to the outside while other threads
    read and create through it: nothing outside is ever read or written."""
    root, outside = tree
    (outside / "x").mkdir()
    (outside / "x" / "secret").write_text("outside")
    swap_dir = root / "swap"
    stop = threading.Event()

    def swapper():
        while not stop.is_set():
            tmp = root / "swap.tmp"
            try:
                os.mkdir(tmp)
                (tmp / "secret").write_text("inside")
                os.rename(tmp, swap_dir) if not os.path.lexists(swap_dir) else None
            except OSError:
                pass
            try:
                if os.path.isdir(swap_dir) and not os.path.islink(swap_dir):
                    for p in swap_dir.iterdir():
                        p.unlink()
                    swap_dir.rmdir()
                os.symlink(str(outside / "x"), root / "swap.lnk")
                os.rename(root / "swap.lnk", swap_dir)
                os.unlink(swap_dir)
            except OSError:
                pass

    def attacker(k: int) -> list[str]:
        seen = []
        for i in range(300):
            try:
                with share.open(("swap", "secret"), create=False, exclusive=False,
                                truncate=False, directory=False, write=False) as f:
                    buf = bytearray(16)
                    n = share.pread_into(f.fd, memoryview(buf), 0)
                    seen.append(bytes(buf[:n]).decode())
            except SmbError:
                pass
            try:
                share.open(("swap", f"planted{k}_{i}"), create=True, exclusive=True,
                           truncate=False, directory=False, write=True).close()
            except SmbError:
                pass
        return seen

    t = threading.Thread(target=swapper)
    t.start()
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            results = [r for rs in pool.map(attacker, range(3)) for r in rs]
    finally:
        stop.set()
        t.join()
    assert "outside" not in results
    assert sorted(os.listdir(outside / "x")) == ["secret"]


def test_case_sensitive_share_has_no_fallback(tree):
    root, _ = tree
    with Share(str(root), case_sensitive=True) as cs:
        assert cs.lookup(("Hello.TXT",)) is not None
        assert cs.lookup(("hello.txt",)) is None
        with cs.open(("hello.txt",), create=True, exclusive=True, truncate=False,
                     directory=False, write=True) as f:
            assert f.created
    assert sorted(p.name for p in root.iterdir() if p.name.lower() == "hello.txt") == \
        ["Hello.TXT", "hello.txt"]
