"""MS-FSCC encoders/decoders: byte layouts checked at the spec's offsets, cross-checked with an
independent parser (smbprotocol), plus wildcard semantics (MS-FSA 2.1.4.4) and the security
descriptor (MS-DTYP 2.4.6)."""
from __future__ import annotations

import struct
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smbd.fscc import dirinfo, fileinfo, fsinfo, setinfo
from smbd.fscc.constants import FileAttributes, FileInfoClass, FsInfoClass
from smbd.fscc.time import FILETIME_UNIX_EPOCH, filetime_to_unix_ns, unix_ns_to_filetime
from smbd.fscc.wildcard import match
from smbd.status import NtStatus, SmbError
from smbd.vfs.types import DirEntry, FileInfo, FsInfo

try:  # an independent parser (a real client library) to cross-check the layouts
    from smbprotocol import file_info as sp_file_info
    from smbprotocol.open import SMB2QueryDirectoryRequest
except ImportError:  # pragma: no cover - smbprotocol is in the "test" extra
    sp_file_info = None

needs_peer = pytest.mark.skipif(sp_file_info is None, reason="smbprotocol not installed")

# Distinct values so a field read from the wrong offset cannot pass by accident.
INFO = FileInfo(
    file_id=0x0102030405060708,
    volume_id=0x1122334455667788,
    is_dir=False,
    size=123_456_789,
    allocation_size=123_457_536,
    nlink=3,
    creation_time=132_000_000_000_000_001,
    last_access_time=132_000_000_000_000_002,
    last_write_time=132_000_000_000_000_003,
    change_time=132_000_000_000_000_004,
    attributes=FileAttributes.ARCHIVE | FileAttributes.HIDDEN,
    mode=0o100644,
    uid=1000,
    gid=100,
)
DIR_INFO = FileInfo(
    file_id=77, volume_id=5, is_dir=True, size=0, allocation_size=0, nlink=2,
    creation_time=1, last_access_time=2, last_write_time=3, change_time=4,
    attributes=FileAttributes.DIRECTORY, mode=0o40755,
)


def u32(b, o):
    return struct.unpack_from("<I", b, o)[0]


def u64(b, o):
    return struct.unpack_from("<Q", b, o)[0]


# -- time ------------------------------------------------------------------------------------
def test_filetime_epoch_and_known_date():
    assert unix_ns_to_filetime(0) == FILETIME_UNIX_EPOCH == 116444736000000000
    # 2000-01-01T00:00:00Z is FILETIME 125911584000000000 (MS-DTYP 2.3.3 arithmetic).
    ns = int(datetime(2000, 1, 1, tzinfo=timezone.utc).timestamp()) * 1_000_000_000
    assert unix_ns_to_filetime(ns) == 125911584000000000
    assert filetime_to_unix_ns(125911584000000000) == ns


def test_filetime_clamps_before_1601():
    assert unix_ns_to_filetime(-(FILETIME_UNIX_EPOCH * 100) - 10**9) == 0


@given(st.integers(min_value=0, max_value=2**63 // 100))
def test_filetime_round_trip(ft):
    assert unix_ns_to_filetime(filetime_to_unix_ns(ft)) == ft


# -- file information classes (QUERY_INFO) ------------------------------------------------------
def test_basic_information_offsets():
    b = fileinfo.file_basic_information(INFO)
    assert len(b) == 40
    assert [u64(b, o) for o in (0, 8, 16, 24)] == [
        INFO.creation_time, INFO.last_access_time, INFO.last_write_time, INFO.change_time]
    assert u32(b, 32) == INFO.attributes
    assert u32(b, 36) == 0  # Reserved


def test_standard_information_offsets():
    b = fileinfo.file_standard_information(INFO, delete_pending=True)
    assert len(b) == 24
    assert u64(b, 0) == INFO.allocation_size
    assert u64(b, 8) == INFO.size
    assert u32(b, 16) == 3
    assert b[20] == 1 and b[21] == 0 and b[22:24] == b"\0\0"
    d = fileinfo.file_standard_information(DIR_INFO)
    assert d[20] == 0 and d[21] == 1


@needs_peer
def test_all_information_layout_and_peer_parse():
    name = "\\dir\\Ünïcode.txt"
    b = fileinfo.file_all_information(INFO, name=name, access_mask=0x001F01FF, position=4096,
                                      mode=0x20, delete_pending=False)
    raw_name = name.encode("utf-16-le")
    assert len(b) == 100 + len(raw_name)
    assert b[:40] == fileinfo.file_basic_information(INFO)
    assert u64(b, 40) == INFO.allocation_size and u64(b, 48) == INFO.size
    assert u32(b, 56) == INFO.nlink
    assert u64(b, 64) == INFO.file_id      # IndexNumber
    assert u32(b, 72) == 0                 # EaSize
    assert u32(b, 76) == 0x001F01FF        # AccessFlags
    assert u64(b, 80) == 4096              # CurrentByteOffset
    assert u32(b, 88) == 0x20              # Mode
    assert u32(b, 92) == 0                 # AlignmentRequirement
    assert u32(b, 96) == len(raw_name)
    assert b[100:] == raw_name

    peer = sp_file_info.FileAllInformation()
    peer.unpack(b)
    assert peer["standard_information"]["end_of_file"].get_value() == INFO.size
    assert peer["internal_information"]["index_number"].get_value() == INFO.file_id
    assert peer["access_information"]["access_flags"].get_value() == 0x001F01FF
    assert peer["position_information"]["current_byte_offset"].get_value() == 4096
    assert peer["name_information"]["file_name"].get_value() == name
    assert peer["basic_information"]["file_attributes"].get_value() == INFO.attributes


def test_small_fixed_classes():
    assert fileinfo.file_internal_information(INFO) == struct.pack("<Q", INFO.file_id)
    assert fileinfo.file_ea_information() == b"\0" * 4
    assert fileinfo.file_access_information(0x12019F) == struct.pack("<I", 0x12019F)
    assert fileinfo.file_position_information(7) == struct.pack("<Q", 7)
    assert fileinfo.file_mode_information(0x2) == struct.pack("<I", 2)
    assert fileinfo.file_alignment_information() == b"\0" * 4
    assert fileinfo.file_attribute_tag_information(INFO) == struct.pack("<II", INFO.attributes, 0)


def test_network_open_information_offsets():
    b = fileinfo.file_network_open_information(INFO)
    assert len(b) == 56
    assert u64(b, 0) == INFO.creation_time and u64(b, 24) == INFO.change_time
    assert u64(b, 32) == INFO.allocation_size
    assert u64(b, 40) == INFO.size
    assert u32(b, 48) == INFO.attributes and u32(b, 52) == 0


def test_stream_information():
    b = fileinfo.file_stream_information(INFO)
    name = "::$DATA".encode("utf-16-le")
    assert u32(b, 0) == 0 and u32(b, 4) == len(name)
    assert u64(b, 8) == INFO.size and u64(b, 16) == INFO.allocation_size
    assert b[24:] == name
    assert fileinfo.file_stream_information(DIR_INFO) == b""


def test_compression_and_id_information():
    c = fileinfo.file_compression_information(INFO)
    assert len(c) == 16 and u64(c, 0) == INFO.size and c[8:] == b"\0" * 8
    i = fileinfo.file_id_information(INFO)
    assert len(i) == 24
    assert u64(i, 0) == INFO.volume_id and u64(i, 8) == INFO.file_id and u64(i, 16) == 0


def test_name_classes_share_layout():
    for enc in (fileinfo.file_name_information, fileinfo.file_normalized_name_information,
                fileinfo.file_alternate_name_information):
        b = enc("ab")
        assert b == struct.pack("<I", 4) + "ab".encode("utf-16-le")


def test_encode_file_info_dispatch_and_unknown_class():
    ctx = fileinfo.OpenContext(name="x", access_mask=1)
    assert fileinfo.encode_file_info(FileInfoClass.FileBasicInformation, INFO, ctx) == \
        fileinfo.file_basic_information(INFO)
    assert fileinfo.encode_file_info(FileInfoClass.FileAccessInformation, INFO, ctx) == \
        struct.pack("<I", 1)
    with pytest.raises(SmbError) as e:
        fileinfo.encode_file_info(99, INFO, ctx)
    assert e.value.status == NtStatus.INVALID_INFO_CLASS
    with pytest.raises(SmbError) as e:
        fileinfo.encode_file_info(FileInfoClass.FileAlternateNameInformation, INFO, ctx)
    assert e.value.status == NtStatus.OBJECT_NAME_NOT_FOUND


# -- directory information classes -----------------------------------------------------------
def _entries(names):
    return [DirEntry(n, INFO) for n in names]


@pytest.mark.parametrize("cls, fixed, name_len_off, file_id_off", [
    (FileInfoClass.FileDirectoryInformation, 64, 60, None),
    (FileInfoClass.FileFullDirectoryInformation, 68, 60, None),
    (FileInfoClass.FileBothDirectoryInformation, 94, 60, None),
    (FileInfoClass.FileIdBothDirectoryInformation, 104, 60, 96),
    (FileInfoClass.FileIdFullDirectoryInformation, 80, 60, 72),
    (FileInfoClass.FileIdExtdDirectoryInformation, 88, 60, 72),
    (FileInfoClass.FileNamesInformation, 12, 8, None),
])
def test_dir_entry_layout(cls, fixed, name_len_off, file_id_off):
    b = dirinfo.encode_dir_entry(cls, DirEntry("File.txt", INFO))
    raw = "File.txt".encode("utf-16-le")
    assert len(b) == fixed + len(raw)
    assert u32(b, 0) == 0 and u32(b, 4) == 0          # NextEntryOffset, FileIndex
    assert u32(b, name_len_off) == len(raw)
    assert b[fixed:] == raw
    if cls != FileInfoClass.FileNamesInformation:
        assert u64(b, 8) == INFO.creation_time
        assert u64(b, 16) == INFO.last_access_time
        assert u64(b, 24) == INFO.last_write_time
        assert u64(b, 32) == INFO.change_time
        assert u64(b, 40) == INFO.size
        assert u64(b, 48) == INFO.allocation_size
        assert u32(b, 56) == INFO.attributes
    if file_id_off is not None:
        assert u64(b, file_id_off) == INFO.file_id


@needs_peer
def test_dir_packing_alignment_and_chain_parsed_by_peer():
    names = ["a", "bb", "ccc", "dddd.txt", "é"]
    data, n = dirinfo.encode_dir_entries(FileInfoClass.FileIdBothDirectoryInformation,
                                         _entries(names), 65536)
    assert n == 5
    # Walk the chain by hand: every offset is a multiple of 8, the last is 0.
    off, seen = 0, []
    while True:
        nxt = u32(data, off)
        nlen = u32(data, off + 60)
        seen.append(data[off + 104: off + 104 + nlen].decode("utf-16-le"))
        if nxt == 0:
            assert off + 104 + nlen == len(data)  # no padding after the last entry
            break
        assert nxt % 8 == 0 and nxt >= 104 + nlen
        off += nxt
    assert seen == names
    # And an independent parser agrees.
    parsed = SMB2QueryDirectoryRequest.unpack_response(FileInfoClass.FileIdBothDirectoryInformation, data)
    assert [p["file_name"].get_value().decode("utf-16-le") for p in parsed] == names
    assert all(p["file_id"].get_value() == INFO.file_id for p in parsed)


def test_dir_packing_stops_at_max_bytes():
    ents = _entries(["x" * 10] * 10)   # each FileNamesInformation entry: 12 + 20 = 32 bytes
    data, n = dirinfo.encode_dir_entries(FileInfoClass.FileNamesInformation, ents, 100)
    # 32 + 32 + 32 = 96 <= 100, a fourth would end at 128.
    assert n == 3 and len(data) == 96
    data, n = dirinfo.encode_dir_entries(FileInfoClass.FileNamesInformation, ents, 95)
    assert n == 2 and len(data) == 64
    # Padding counts: entry of 12+2=14 bytes is padded to 16 before the next one.
    short = _entries(["y", "z"])
    data, n = dirinfo.encode_dir_entries(FileInfoClass.FileNamesInformation, short, 29)
    assert n == 1 and len(data) == 14
    data, n = dirinfo.encode_dir_entries(FileInfoClass.FileNamesInformation, short, 30)
    assert n == 2 and len(data) == 30 and u32(data, 0) == 16


def test_dir_packing_single_and_too_small_and_unknown():
    ents = _entries(["a", "b"])
    data, n = dirinfo.encode_dir_entries(FileInfoClass.FileDirectoryInformation, ents, 4096,
                                         single=True)
    assert n == 1 and u32(data, 0) == 0
    assert dirinfo.encode_dir_entries(FileInfoClass.FileDirectoryInformation, ents, 10) == (b"", 0)
    with pytest.raises(SmbError) as e:
        dirinfo.encode_dir_entries(FileInfoClass.FileBasicInformation, ents, 4096)
    assert e.value.status == NtStatus.INVALID_INFO_CLASS


# -- file system information classes ---------------------------------------------------------
FS = FsInfo(total_units=1000, caller_available_units=300, actual_available_units=400,
            sectors_per_unit=8, bytes_per_sector=512, serial_number=0xDEADBEEF,
            max_name_length=255, fs_type="NTFS")


@needs_peer
def test_fs_volume_information_with_peer():
    b = fsinfo.file_fs_volume_information(creation_time=INFO.creation_time,
                                          serial_number=FS.serial_number, label="share")
    assert u64(b, 0) == INFO.creation_time and u32(b, 8) == 0xDEADBEEF
    assert u32(b, 12) == 10 and b[16] == 0 and b[17] == 0
    assert b[18:] == "share".encode("utf-16-le")
    peer = sp_file_info.FileFsVolumeInformation()
    peer.unpack(b)
    assert peer["volume_serial_number"].get_value() == 0xDEADBEEF
    assert peer["volume_label"].get_value() == "share"


@needs_peer
def test_fs_size_classes():
    s = fsinfo.file_fs_size_information(FS)
    assert struct.unpack("<QQII", s) == (1000, 300, 8, 512)
    f = fsinfo.file_fs_full_size_information(FS)
    assert struct.unpack("<QQQII", f) == (1000, 300, 400, 8, 512)
    peer = sp_file_info.FileFsFullSizeInformation()
    peer.unpack(f)
    assert peer["actual_available_units"].get_value() == 400


def test_fs_attribute_device_objectid_sector():
    a = fsinfo.file_fs_attribute_information(fs_name="NTFS")
    assert u32(a, 0) == 0x7 and struct.unpack_from("<i", a, 4)[0] == 255
    assert u32(a, 8) == 8 and a[12:] == "NTFS".encode("utf-16-le")
    assert fsinfo.file_fs_device_information() == struct.pack("<II", 7, 0x20)
    o = fsinfo.file_fs_object_id_information(bytes(range(16)))
    assert len(o) == 64 and o[:16] == bytes(range(16)) and o[16:] == bytes(48)
    s = fsinfo.file_fs_sector_size_information()
    assert struct.unpack("<7I", s) == (512, 512, 512, 512, 3, 0, 0)
    with pytest.raises(SmbError) as e:
        fsinfo.encode_fs_info(FsInfoClass.FileFsLabelInformation, FS)
    assert e.value.status == NtStatus.INVALID_INFO_CLASS
    assert fsinfo.encode_fs_info(FsInfoClass.FileFsSizeInformation, FS) == \
        fsinfo.file_fs_size_information(FS)


# -- SET_INFO decoders ---------------------------------------------------------------------------
def test_decode_basic_information():
    buf = struct.pack("<qqqqI4x", 10, 0, -1, -2, 0x20)
    d = setinfo.decode_set_info(FileInfoClass.FileBasicInformation, buf)
    assert (d.creation_time, d.last_access_time, d.last_write_time, d.change_time,
            d.file_attributes) == (10, 0, -1, -2, 0x20)
    assert setinfo.BasicInformation.parse(buf[:36]).file_attributes == 0x20
    with pytest.raises(SmbError) as e:
        setinfo.BasicInformation.parse(buf[:35])
    assert e.value.status == NtStatus.INFO_LENGTH_MISMATCH
    with pytest.raises(SmbError) as e:
        setinfo.BasicInformation.parse(struct.pack("<qqqqI4x", -3, 0, 0, 0, 0))
    assert e.value.status == NtStatus.INVALID_PARAMETER


def _rename_buf(name: str, replace=1, root=0, length=None):
    raw = name.encode("utf-16-le")
    return struct.pack("<B7xQI", replace, root, len(raw) if length is None else length) + raw


@needs_peer
def test_decode_rename_information_and_peer_built_buffer():
    r = setinfo.RenameInformation.parse(_rename_buf("dir\\new name.txt"))
    assert r.replace_if_exists and r.file_name == "dir\\new name.txt"
    # A buffer built by smbprotocol (a real client library) decodes to the same thing.
    peer = sp_file_info.FileRenameInformation()
    peer["replace_if_exists"] = False
    peer["file_name"] = "a\\b.txt".encode("utf-16-le")
    r2 = setinfo.decode_set_info(FileInfoClass.FileRenameInformation, peer.pack())
    assert r2 == setinfo.RenameInformation(False, "a\\b.txt")


@pytest.mark.parametrize("buf, status", [
    (b"\0" * 19, NtStatus.INFO_LENGTH_MISMATCH),
    (_rename_buf("ab", length=5), NtStatus.INVALID_PARAMETER),       # odd length
    (_rename_buf("ab", length=200), NtStatus.INVALID_PARAMETER),     # past the buffer
    (_rename_buf("ab", root=1), NtStatus.INVALID_PARAMETER),         # RootDirectory != 0
    (_rename_buf(""), NtStatus.INVALID_PARAMETER),                   # empty name
    (struct.pack("<B7xQI", 0, 0, 2) + b"\x00\xd8", NtStatus.OBJECT_NAME_INVALID),  # lone surrogate
])
def test_decode_rename_information_rejects(buf, status):
    with pytest.raises(SmbError) as e:
        setinfo.RenameInformation.parse(buf)
    assert e.value.status == status


def test_decode_link_disposition_eof_allocation_position_mode():
    assert setinfo.decode_set_info(FileInfoClass.FileLinkInformation, _rename_buf("l")) == \
        setinfo.LinkInformation(True, "l")
    assert setinfo.decode_set_info(FileInfoClass.FileDispositionInformation, b"\x01").delete_pending
    assert not setinfo.DispositionInformation.parse(b"\x00").delete_pending
    ex = setinfo.decode_set_info(FileInfoClass.FileDispositionInformationEx, struct.pack("<I", 3))
    assert ex.delete_pending and ex.flags == 3
    with pytest.raises(SmbError) as e:
        setinfo.DispositionInformationEx.parse(struct.pack("<I", 0x100))
    assert e.value.status == NtStatus.INVALID_PARAMETER
    assert setinfo.EndOfFileInformation.parse(struct.pack("<q", 5)).end_of_file == 5
    assert setinfo.AllocationInformation.parse(struct.pack("<q", 9)).allocation_size == 9
    assert setinfo.PositionInformation.parse(struct.pack("<q", 1)).current_byte_offset == 1
    for cls in (setinfo.EndOfFileInformation, setinfo.AllocationInformation,
                setinfo.PositionInformation):
        with pytest.raises(SmbError) as e:
            cls.parse(struct.pack("<q", -1))
        assert e.value.status == NtStatus.INVALID_PARAMETER
        with pytest.raises(SmbError) as e:
            cls.parse(b"\0" * 7)
        assert e.value.status == NtStatus.INFO_LENGTH_MISMATCH
    assert setinfo.ModeInformation.parse(struct.pack("<I", 0x1000 | 0x2)).mode == 0x1002
    with pytest.raises(SmbError) as e:
        setinfo.ModeInformation.parse(struct.pack("<I", 0x1))
    assert e.value.status == NtStatus.INVALID_PARAMETER
    with pytest.raises(SmbError) as e:
        setinfo.decode_set_info(FileInfoClass.FileStreamInformation, b"")
    assert e.value.status == NtStatus.INVALID_INFO_CLASS


@given(st.binary(max_size=64), st.sampled_from(list(setinfo._DECODERS)))
def test_set_info_decoders_never_leak_low_level_errors(buf, cls):
    try:
        setinfo.decode_set_info(cls, buf)
    except SmbError:
        pass


# -- wildcards (MS-FSA 2.1.4.4) --------------------------------------------------------------
@pytest.mark.parametrize("pattern, name, expected", [
    ("*", "anything.at.all", True),
    ("*", ".", True),
    ("*", "..", True),
    ("*.txt", "notes.txt", True),
    ("*.txt", "NOTES.TXT", True),            # case-insensitive
    ("*.txt", "notes.txt.bak", False),
    ("*.txt", "txt", False),
    ("a?c", "abc", True),
    ("a?c", "ac", False),
    ("a?c", "abbc", False),
    ("?", ".", True),
    ("<.txt", "a.b.txt", True),              # DOS_STAR stops at the final dot only
    ("<.txt", "a.txt", True),
    ("<", "noext", True),
    ("<", "a.b", False),
    ("foo.>>>", "foo.c", True),              # DOS_QM: up to three chars of extension
    ("foo.>>>", "foo.cpp", True),
    ("foo.>>>", "foo.cppx", False),
    ("foo>>>>>.*", "foo.txt", True),          # DOS_QM matches nothing at a dot
    ('foo"*', "foo", True),                   # DOS_DOT: nothing past the end
    ('foo"*', "foo.bar", True),
    ('foo"*', "foox", False),
    (".", ".", True),
    (".", "a", False),
    ("..", "..", True),
    ("*.*", "foo.bar", True),
    ("*.*", "foo", False),                    # strict NT semantics: "*.*" needs a dot
    ("Ünï*", "ünïcode", True),
    ("*a*a*a*a*a*a*a*b", "a" * 200, False),   # no exponential backtracking
])
def test_wildcard(pattern, name, expected):
    assert match(pattern, name) is expected


@given(st.text(alphabet="ab.", max_size=8))
def test_star_matches_everything_and_literal_matches_itself(name):
    assert match("*", name)
    assert match(name.upper(), name) or name == ""


@given(st.text(alphabet="ab*?.", max_size=8), st.text(alphabet="ab.", max_size=10))
def test_fast_star_matcher_agrees_with_nfa(pattern, name):
    from smbd.fscc import wildcard
    assert wildcard._match_star_question(pattern.upper(), name.upper()) == \
        wildcard._match_nfa(pattern.upper(), name.upper())
