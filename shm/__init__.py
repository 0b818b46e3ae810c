"""POSIX shared-memory buffer pool shared by the RDMA proxy and the workers.

:class:`BufferPool` maps the segment (``create`` by the proxy, ``attach`` by workers);
:class:`SlotAllocator` hands out slot indices in the proxy only.
"""
from .allocator import DoubleReleaseError, SlotAllocator, SlotError, SlotMetrics
from .pool import (DEFAULT_PREFIX, BufferPool, PoolError, PoolFormatError,
                   PoolInUseError, cleanup_stale, list_segments)

__all__ = [
    "BufferPool", "SlotAllocator", "SlotMetrics", "SlotError", "DoubleReleaseError",
    "PoolError", "PoolFormatError", "PoolInUseError", "DEFAULT_PREFIX",
    "cleanup_stale", "list_segments",
]
