"""A POSIX shared-memory segment cut into fixed-size slots, mapped by the proxy and workers.

Layout of the segment (one ``/dev/shm/<name>`` object, shm_open(3) + mmap(2)):

    offset 0      header page: magic b"SMBDPOOL", format version, slot size, slot count,
                  offset of slot 0 (so ``attach`` needs only the name)
    offset 4096   slot 0, slot 1, ... each ``slot_size`` bytes, page aligned

Why slot_size = the largest single I/O (default 1 MiB = the SMB Direct
MaxReadWriteSize) rather than runs of small slots: one READ/WRITE needs exactly one
slot, so a slot index is the whole hand-off between processes, the allocator is a plain
free list with no fragmentation, and every RDMA read/write targets one contiguous
range of the one memory region the proxy registers over the whole mapping
(``base_address``/``size``).  The cost is memory for small I/O (a 4 KiB read holds a
1 MiB slot while in flight), bounded by slot_count: 64 slots = 64 MiB.  A server that
raises max_read_write_size to 8 MiB sizes the slots to match (and fewer of them) or caps
MaxReadSize/MaxWriteSize at the slot size.  Slots are page aligned so a worker may
read(2)/write(2) files with O_DIRECT straight into them.

Ownership: the proxy ``create()``s the pool and unlinks the name on ``close()``;
workers ``attach()`` by name and only unmap.  Slot allocation lives in the proxy
(:class:`shm.allocator.SlotAllocator`); slots cross processes as integers.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import struct
from typing import ClassVar

import posix_ipc

SHM_DIR = "/dev/shm"
#: Name prefix of every segment smbdd creates, so a leaked one is found by a listing.
DEFAULT_PREFIX = "smbdd-"

_HEADER = struct.Struct("<8sIIIIQ")  # magic, version, slot_size, slot_count, reserved, data_offset
_MAGIC = b"SMBDPOOL"
_VERSION = 1


class PoolError(Exception):
    """Base of the pool's own errors."""


class PoolFormatError(PoolError, ValueError):
    """The named segment is not a pool of this format (wrong magic, version or size)."""


class PoolInUseError(PoolError, BufferError):
    """close() found slot views still alive; the mapping stays until they are released."""


def _normalize(name: str) -> str:
    bare = name[1:] if name.startswith("/") else name
    if not bare or "/" in bare:
        raise ValueError(f"bad shared-memory name {name!r}")
    return "/" + bare


class BufferPool:
    """One mapping of a slot pool.  Use :meth:`create` (owner) or :meth:`attach` (workers)."""

    PAGE: ClassVar[int] = mmap.PAGESIZE

    def __init__(self, name: str, mm: mmap.mmap, slot_size: int, slot_count: int,
                 data_offset: int, owner: bool):
        self.name = name
        self.slot_size = slot_size
        self.slot_count = slot_count
        self.owner = owner
        self._data_offset = data_offset
        self._mm: mmap.mmap | None = mm
        # ctypes.from_buffer exports the mmap; drop that export at once or close() fails.
        anchor = ctypes.c_char.from_buffer(mm)
        self.base_address = ctypes.addressof(anchor)
        del anchor
        self._view: memoryview | None = memoryview(mm)

    # --------------------------------------------------------------- open / close

    @classmethod
    def create(cls, name: str, slot_size: int, slot_count: int, *, mode: int = 0o600) -> "BufferPool":
        """Create and map a new segment; fails if the name exists (O_EXCL)."""
        if slot_size <= 0 or slot_size % cls.PAGE:
            raise ValueError(f"slot_size must be a positive multiple of the page size {cls.PAGE}")
        if slot_count <= 0:
            raise ValueError("slot_count must be positive")
        shm_name = _normalize(name)
        data_offset = cls.PAGE
        size = data_offset + slot_size * slot_count
        shm = posix_ipc.SharedMemory(shm_name, posix_ipc.O_CREX, mode=mode, size=size)
        try:
            mm = mmap.mmap(shm.fd, size)
        except BaseException:
            posix_ipc.unlink_shared_memory(shm_name)
            raise
        finally:
            shm.close_fd()
        mm[:_HEADER.size] = _HEADER.pack(_MAGIC, _VERSION, slot_size, slot_count, 0, data_offset)
        return cls(shm_name, mm, slot_size, slot_count, data_offset, owner=True)

    @classmethod
    def attach(cls, name: str) -> "BufferPool":
        """Map an existing pool read-write (a worker); the geometry comes from its header."""
        shm_name = _normalize(name)
        shm = posix_ipc.SharedMemory(shm_name)
        try:
            if shm.size < _HEADER.size:
                raise PoolFormatError(f"{shm_name}: {shm.size} bytes is too small for a pool")
            mm = mmap.mmap(shm.fd, shm.size)
        finally:
            shm.close_fd()
        try:
            magic, version, slot_size, slot_count, _, data_offset = _HEADER.unpack_from(mm, 0)
            if magic != _MAGIC or version != _VERSION:
                raise PoolFormatError(f"{shm_name}: not a version {_VERSION} smbdd pool")
            if slot_size <= 0 or slot_count <= 0 or data_offset < _HEADER.size \
                    or data_offset + slot_size * slot_count > len(mm):
                raise PoolFormatError(f"{shm_name}: header geometry does not fit the segment")
        except BaseException:
            mm.close()
            raise
        return cls(shm_name, mm, slot_size, slot_count, data_offset, owner=False)

    def close(self) -> None:
        """Owner: unlink the name first (so nothing leaks even if views are alive), then unmap.

        Raises :class:`PoolInUseError` if slot views are still referenced; the memory is
        then freed when the last view goes (the name is already gone).
        """
        if self._mm is None:
            return
        if self.owner:
            try:
                posix_ipc.unlink_shared_memory(self.name)
            except posix_ipc.ExistentialError:
                pass  # already removed, e.g. by cleanup_stale()
            self.owner = False
        view, self._view = self._view, None
        if view is not None:
            view.release()
        try:
            self._mm.close()
        except BufferError as exc:
            raise PoolInUseError(f"{self.name}: slot views still in use, mapping kept until released") from exc
        self._mm = None

    def __enter__(self) -> "BufferPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._mm is None

    # --------------------------------------------------------------- slots

    @property
    def size(self) -> int:
        """Bytes mapped (header page + slots): the length of the one RDMA memory region."""
        return self._data_offset + self.slot_size * self.slot_count

    def slot_offset(self, i: int) -> int:
        """Offset of slot ``i`` from ``base_address`` (what an RDMA SGE needs with the MR)."""
        if not 0 <= i < self.slot_count:
            raise IndexError(f"slot {i} outside 0..{self.slot_count - 1}")
        return self._data_offset + i * self.slot_size

    def slot_address(self, i: int) -> int:
        """Virtual address of slot ``i`` in this process."""
        return self.base_address + self.slot_offset(i)

    def slot_view(self, i: int, length: int | None = None) -> memoryview:
        """A zero-copy, writable view of slot ``i`` (its first ``length`` bytes).

        Release views (``with pool.slot_view(i) as v:``) before ``close()``.
        """
        if self._view is None:
            raise PoolError(f"{self.name} is closed")
        start = self.slot_offset(i)
        if length is None:
            length = self.slot_size
        elif not 0 <= length <= self.slot_size:
            raise ValueError(f"length {length} outside 0..{self.slot_size}")
        return self._view[start:start + length]


def list_segments(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Names (with leading '/') of the shared-memory segments starting with ``prefix``."""
    if not prefix or "/" in prefix.lstrip("/"):
        raise ValueError("prefix must be a non-empty segment name prefix")
    bare = prefix.lstrip("/")
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    return sorted("/" + e for e in entries if e.startswith(bare))


def cleanup_stale(prefix: str = DEFAULT_PREFIX, *, keep: tuple[str, ...] = ()) -> list[str]:
    """Unlink leaked segments named ``prefix*`` (e.g. after a proxy crash); returns their names.

    Call it at proxy start before creating the pool; ``keep`` names segments to spare.
    Mappings still held by live processes stay valid until they unmap.
    """
    kept = {_normalize(k) for k in keep}
    removed = []
    for name in list_segments(prefix):
        if name in kept:
            continue
        try:
            posix_ipc.unlink_shared_memory(name)
        except posix_ipc.ExistentialError:
            continue
        removed.append(name)
    return removed
