"""smbd.server.notify: inotify events -> Windows change records (pure), and the Watch's delivery
rules on a real inotify instance (one change per pending request, buffering, the directory
deleted under a pending request, close)."""
from __future__ import annotations

import asyncio
import os
import struct

import pytest

from smbd.server import notify as n
from smbd.status import NtStatus


def ev(rel, mask, name, cookie=0):
    return n.RawEvent(rel, mask, cookie, name)


def flat(groups, completion_filter=0xFFF):
    return [(c.action, c.name) for g in groups for c in g if c.seen_by(completion_filter)]


def decode(data: bytes) -> list[tuple[int, str]]:
    out, pos = [], 0
    while True:
        nxt, action, length = struct.unpack_from("<III", data, pos)
        out.append((action, data[pos + 12:pos + 12 + length].decode("utf-16-le")))
        if not nxt:
            return out
        pos += nxt


# -- changes_for -----------------------------------------------------------------------------
def test_create_and_delete_are_added_and_removed_by_kind():
    groups = n.changes_for([ev("", n.IN_CREATE, "f"), ev("", n.IN_CREATE | n.IN_ISDIR, "d"),
                            ev("d", n.IN_DELETE, "x")])
    assert flat(groups) == [(n.ACTION_ADDED, "f"), (n.ACTION_ADDED, "d"), (n.ACTION_REMOVED, "d\\x")]
    assert flat(groups, n.CHANGE_FILE_NAME) == [(n.ACTION_ADDED, "f"), (n.ACTION_REMOVED, "d\\x")]
    assert flat(groups, n.CHANGE_DIR_NAME) == [(n.ACTION_ADDED, "d")]
    assert flat(groups, n.CHANGE_ATTRIBUTES) == []


def test_rename_in_one_directory_is_old_and_new_name_together():
    groups = n.changes_for([ev("", n.IN_MOVED_FROM, "a", 7), ev("", n.IN_MOVED_TO, "b", 7)])
    assert len(groups) == 1  # delivered as one
    assert flat(groups, n.CHANGE_FILE_NAME) == [(n.ACTION_RENAMED_OLD_NAME, "a"),
                                                (n.ACTION_RENAMED_NEW_NAME, "b")]


def test_move_between_directories_is_removed_and_added():
    """smbtorture smb2.notify.rec: subdir-name\\subname2 -> subname2-r."""
    groups = n.changes_for([ev("subdir", n.IN_MOVED_FROM, "f", 3), ev("", n.IN_MOVED_TO, "f-r", 3)])
    assert flat(groups, n.CHANGE_FILE_NAME | n.CHANGE_ATTRIBUTES) == [
        (n.ACTION_REMOVED, "subdir\\f"), (n.ACTION_ADDED, "f-r")]


def test_a_file_rename_is_modified_for_an_attributes_only_watch():
    """smbtorture smb2.notify.mask-change: with ATTRIBUTES alone, a renamed file is MODIFIED
    under its new name; a watch that also has FILE_NAME sees the names only (smb2.notify.rec)."""
    file_move = [ev("", n.IN_MOVED_FROM, "a", 1), ev("", n.IN_MOVED_TO, "b", 1)]
    assert flat(n.changes_for(file_move), n.CHANGE_ATTRIBUTES) == [(n.ACTION_MODIFIED, "b")]
    dir_move = [ev("", n.IN_MOVED_FROM | n.IN_ISDIR, "a", 1), ev("", n.IN_MOVED_TO | n.IN_ISDIR, "b", 1)]
    assert flat(n.changes_for(dir_move), n.CHANGE_ATTRIBUTES) == []


def test_moves_in_and_out_of_the_tree():
    assert flat(n.changes_for([ev("", n.IN_MOVED_FROM, "gone", 9)])) == [(n.ACTION_REMOVED, "gone")]
    assert flat(n.changes_for([ev("", n.IN_MOVED_TO, "came", 9)]), n.CHANGE_FILE_NAME) == [
        (n.ACTION_ADDED, "came")]


def test_writes_and_metadata_changes_are_modified_with_their_filters():
    groups = n.changes_for([ev("", n.IN_MODIFY, "w"), ev("", n.IN_ATTRIB, "m")])
    assert flat(groups, n.CHANGE_SIZE) == [(n.ACTION_MODIFIED, "w")]
    assert flat(groups, n.CHANGE_ATTRIBUTES) == [(n.ACTION_MODIFIED, "m")]
    assert flat(groups, n.CHANGE_FILE_NAME) == []


def test_encoding_is_aligned_and_chained():
    changes = [n.Change(n.ACTION_ADDED, "a", 1), n.Change(n.ACTION_REMOVED, "bcd", 1)]
    data = n.encode_changes(changes, 1000)
    assert struct.unpack_from("<I", data, 0)[0] == 16  # 12 + 2 bytes of name, padded to 4
    assert decode(data) == [(n.ACTION_ADDED, "a"), (n.ACTION_REMOVED, "bcd")]
    assert n.encode_changes(changes, len(data) - 1) is None


# -- Watch on a real inotify -----------------------------------------------------------------
@pytest.fixture
def folder(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield tmp_path, fd
    os.close(fd)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_each_pending_request_takes_one_change(folder):
    path, fd = folder

    async def go():
        w = n.Watch(fd, False, n.CHANGE_FILE_NAME, 1000)
        first, second = w.wait(1000), w.wait(1000)
        (path / "one").touch()
        a = await first
        (path / "two").touch()
        b = await second
        w.close()
        return a, b
    a, b = run(go())
    assert decode(a.data) == [(n.ACTION_ADDED, "one")]
    assert decode(b.data) == [(n.ACTION_ADDED, "two")]


def test_changes_without_a_request_are_kept_for_the_next(folder):
    path, fd = folder

    async def go():
        w = n.Watch(fd, True, n.CHANGE_FILE_NAME | n.CHANGE_DIR_NAME, 1000)
        (path / "d").mkdir()
        await asyncio.sleep(0.1)  # the watch on d exists once its IN_CREATE has been read
        (path / "d" / "f").touch()
        os.rename(path / "d" / "f", path / "d" / "g")
        await asyncio.sleep(0.2)
        answer = w.poll(1000)
        small = None
        (path / "h").touch()
        await asyncio.sleep(0.1)
        small = w.poll(4)  # does not fit: enumerate again
        w.close()
        return answer, small
    answer, small = run(go())
    assert answer.status == NtStatus.SUCCESS
    assert decode(answer.data) == [(n.ACTION_ADDED, "d"), (n.ACTION_ADDED, "d\\f"),
                                   (n.ACTION_RENAMED_OLD_NAME, "d\\f"), (n.ACTION_RENAMED_NEW_NAME, "d\\g")]
    assert small.status == NtStatus.NOTIFY_ENUM_DIR


def test_a_deleted_directory_answers_delete_pending(tmp_path):
    watched = tmp_path / "w"
    watched.mkdir()
    fd = os.open(watched, os.O_RDONLY | os.O_DIRECTORY)

    async def go():
        w = n.Watch(fd, False, n.CHANGE_FILE_NAME, 1000)
        pending = w.wait(1000)
        os.rmdir(watched)  # as another worker's last handle would
        first = await pending
        later = w.poll(1000)
        w.close()
        return first, later
    try:
        first, later = run(go())
    finally:
        os.close(fd)
    assert first.status == NtStatus.DELETE_PENDING
    assert later.status == NtStatus.DELETE_PENDING


def test_close_answers_every_pending_request(folder):
    _, fd = folder

    async def go():
        w = n.Watch(fd, False, n.CHANGE_FILE_NAME, 1000)
        waiters = [w.wait(1000), w.wait(1000)]
        w.close()
        return [await x for x in waiters], w.poll(1000)
    answers, after = run(go())
    assert [a.status for a in answers] == [NtStatus.NOTIFY_CLEANUP] * 2
    assert after.status == NtStatus.NOTIFY_CLEANUP


def test_a_cancelled_request_takes_no_change(folder):
    path, fd = folder

    async def go():
        w = n.Watch(fd, False, n.CHANGE_FILE_NAME, 1000)
        gone = w.wait(1000)
        w.forget(gone)
        (path / "x").touch()
        await asyncio.sleep(0.2)
        answer = w.poll(1000)
        w.close()
        return gone.done(), answer
    done, answer = run(go())
    assert not done
    assert decode(answer.data) == [(n.ACTION_ADDED, "x")]


def test_entries_of_a_new_directory_made_before_its_watch_are_added(folder):
    """inotify watches a new subdirectory only after reading its IN_CREATE: what was made in
    it meanwhile is found by a scan and reported ADDED (its history before that is lost)."""
    path, fd = folder

    async def go():
        w = n.Watch(fd, True, n.CHANGE_FILE_NAME | n.CHANGE_DIR_NAME, 1000)
        (path / "d").mkdir()
        (path / "d" / "e").mkdir()
        (path / "d" / "e" / "f").touch()
        await asyncio.sleep(0.2)
        answer = w.poll(1000)
        (path / "d" / "e" / "g").touch()  # and the new watches work
        await asyncio.sleep(0.1)
        later = w.poll(1000)
        w.close()
        return answer, later
    answer, later = run(go())
    assert decode(answer.data) == [(n.ACTION_ADDED, "d"), (n.ACTION_ADDED, "d\\e"), (n.ACTION_ADDED, "d\\e\\f")]
    assert decode(later.data) == [(n.ACTION_ADDED, "d\\e\\g")]


def test_the_first_requests_size_is_the_buffer_for_later_changes(folder):
    """A handle whose first request had room for nothing says ENUM_DIR ever after."""
    path, fd = folder

    async def go():
        w = n.Watch(fd, False, n.CHANGE_FILE_NAME, 1)
        first = w.wait(1)
        (path / "a").touch()
        (path / "b").touch()
        answer = await first
        await asyncio.sleep(0.1)
        second = w.poll(65536)
        w.close()
        return answer, second
    answer, second = run(go())
    assert answer.status == NtStatus.NOTIFY_ENUM_DIR
    assert second.status == NtStatus.NOTIFY_ENUM_DIR


def test_stream_changes_of_files_in_the_directory(tmp_path):
    """Streams live in the depot: a watch of STREAM_NAME/SIZE sees them as file:stream, also
    for a file whose first stream comes after the watch started."""
    from smbd.vfs import Share

    share = Share(str(tmp_path))
    if not share.streams.supported:
        share.close()
        pytest.skip("no user xattrs here")
    (tmp_path / "old.txt").write_bytes(b"x")
    (tmp_path / "new.txt").write_bytes(b"y")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    old_fd = os.open(tmp_path / "old.txt", os.O_RDONLY)
    new_fd = os.open(tmp_path / "new.txt", os.O_RDONLY)
    os.close(share.streams.open(old_fd, "before", create=True, exclusive=True, write=True, truncate=False).fd)

    async def go():
        w = n.Watch(fd, False, n.CHANGE_STREAM_NAME | n.CHANGE_STREAM_SIZE, 4096, streams=share.streams)
        s = share.streams.open(old_fd, "Zone.Identifier", create=True, exclusive=True, write=True, truncate=False)
        os.write(s.fd, b"[ZoneTransfer]")
        os.close(s.fd)
        share.streams.remove(old_fd, "before")
        os.close(share.streams.open(new_fd, "first", create=True, exclusive=True, write=True,
                                    truncate=False).fd)
        await asyncio.sleep(0.2)
        answer = w.poll(4096)
        w.close()
        return answer
    try:
        answer = run(go())
    finally:
        for f in (fd, old_fd, new_fd):
            os.close(f)
        share.close()
    assert decode(answer.data) == [(n.ACTION_ADDED_STREAM, "old.txt:Zone.Identifier"),
                                   (n.ACTION_MODIFIED_STREAM, "old.txt:Zone.Identifier"),
                                   (n.ACTION_REMOVED_STREAM, "old.txt:before"),
                                   (n.ACTION_ADDED_STREAM, "new.txt:first")]
