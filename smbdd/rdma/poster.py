"""Send-queue posts off the event loop, with the GIL released.

On soft-RoCE (rxe), ``ibv_post_send`` of an RDMA read or write returns only once the data has
moved: the kernel runs the requester in the posting thread's system call. pyverbs holds the GIL
through that call, so a 1 MiB transfer (about 28 ms in the lab VM) froze the proxy's event loop,
and with it the relaying of every other message (the profile had 70-83% of the proxy's samples in
that call at queue depth 4).

Here one thread per proxy makes every send-queue post of the endpoints that use it, through the
provider's ``post_send`` called by ctypes, which releases the GIL for the call. All of a queue
pair's sends go through the thread, in order, so a READ's RDMA write still precedes its response
on the wire, as the queue pair orders them (MS-SMBD 3.1.4.2 relies on that order). Receives and
completion polling stay on the event loop: they do not move data.

Reaching ``post_send`` needs the ``struct ibv_qp *`` that pyverbs keeps to itself. Its place in
the pyverbs QP object is read from the object's layout (pyverbs v44's qp.pxd: PyObject header,
``__weakref__``, ``logger``, the Cython vtable, then ``ibv_qp *qp``), and only used after the
``qp_num`` and ``qp_type`` stored behind it match the QP's own: any other pyverbs build makes
:func:`raw_post_send` return None and the endpoint posts through pyverbs as before.
Struct layouts from <infiniband/verbs.h> of rdma-core v44 (offsets printed by gcc; see
tests/test_rdma_poster.py).
"""
from __future__ import annotations

import ctypes
import logging
import os
import queue
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)

IBV_QPT_RC = 2
IBV_SEND_SIGNALED = 2
_QP_POINTER_OFFSET = 40  # in a pyverbs v44 QP object (type size 128)
_PYVERBS_QP_SIZE = 128
_CTX_OPS_POST_SEND = 208  # offsetof(struct ibv_context, ops.post_send)


class IbvSge(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint64), ("length", ctypes.c_uint32), ("lkey", ctypes.c_uint32)]


class IbvSendWr(ctypes.Structure):
    """struct ibv_send_wr (128 bytes): the fields an RC send, send-with-invalidate or RDMA
    read/write uses; ``imm_data`` is the union that also holds ``invalidate_rkey``."""
    _fields_ = [("wr_id", ctypes.c_uint64), ("next", ctypes.c_void_p), ("sg_list", ctypes.POINTER(IbvSge)),
                ("num_sge", ctypes.c_int), ("opcode", ctypes.c_int), ("send_flags", ctypes.c_uint),
                ("imm_data", ctypes.c_uint32), ("remote_addr", ctypes.c_uint64), ("rkey", ctypes.c_uint32),
                ("_rest", ctypes.c_uint8 * 76)]


_PostSend = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(IbvSendWr),
                             ctypes.POINTER(ctypes.POINTER(IbvSendWr)))


class _IbvQpHead(ctypes.Structure):
    """The start of struct ibv_qp, up to qp_type."""
    _fields_ = [("context", ctypes.c_void_p), ("qp_context", ctypes.c_void_p), ("pd", ctypes.c_void_p),
                ("send_cq", ctypes.c_void_p), ("recv_cq", ctypes.c_void_p), ("srq", ctypes.c_void_p),
                ("handle", ctypes.c_uint32), ("qp_num", ctypes.c_uint32), ("state", ctypes.c_int),
                ("qp_type", ctypes.c_int)]


class RawPost:
    """The provider's post_send for one queue pair."""

    def __init__(self, qp_pointer: int, post_send: Callable) -> None:
        self.qp = qp_pointer
        self._post_send = post_send

    def __call__(self, wr: IbvSendWr) -> int:
        """Post one work request; 0 or an errno. Releases the GIL for the call."""
        bad = ctypes.POINTER(IbvSendWr)()
        return self._post_send(self.qp, ctypes.byref(wr), ctypes.byref(bad))


def raw_post_send(pyverbs_qp: Any) -> RawPost | None:
    """The queue pair's post_send as a GIL-free call, or None where the layout is not v44's."""
    if os.environ.get("SMBDD_RDMA_POSTER", "1") == "0":
        return None
    if type(pyverbs_qp).__basicsize__ != _PYVERBS_QP_SIZE:
        return None
    pointer = ctypes.c_void_p.from_address(id(pyverbs_qp) + _QP_POINTER_OFFSET).value
    if not pointer:
        return None
    head = _IbvQpHead.from_address(pointer)
    if head.qp_num != pyverbs_qp.qp_num or head.qp_type != IBV_QPT_RC or not head.context:
        return None
    function = ctypes.c_void_p.from_address(head.context + _CTX_OPS_POST_SEND).value
    if not function:
        return None
    return RawPost(pointer, _PostSend(function))


class Fence:
    """Queued behind a queue pair's posts: set once the thread has passed them all."""

    def __init__(self) -> None:
        self.passed = threading.Event()


class SendQueuePoster:
    """The thread that makes the posts, in the order they were submitted.

    ``submit`` never blocks. A post that fails (the queue pair gone to error, a full send queue)
    is reported through ``on_error(errno, what)`` on the thread; the endpoint then moves its
    queue pair to the error state so every outstanding request completes as flushed."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, post: RawPost, wr: IbvSendWr, sge: IbvSge, on_error: Callable[[int, str], None],
               what: str, alive: Callable[[], bool]) -> None:
        self._start()
        self._queue.put((post, wr, sge, on_error, what, alive))

    def fence(self, timeout: float = 10.0) -> bool:
        """Wait until every post submitted so far has been made (or skipped)."""
        if self._thread is None:
            return True
        fence = Fence()
        self._queue.put(fence)
        return fence.passed.wait(timeout)

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="rdma-poster", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, Fence):
                item.passed.set()
                continue
            post, wr, _sge, on_error, what, alive = item  # _sge: kept alive until posted
            if not alive():
                continue  # its endpoint is closing: the queue pair may be gone after the fence
            rc = post(wr)
            if rc:
                try:
                    on_error(rc, what)
                except Exception:  # the thread must go on serving the other endpoints
                    log.exception("rdma poster: error handler failed")


_poster = SendQueuePoster()


def poster() -> SendQueuePoster:
    """The process's one poster thread (started at the first post)."""
    return _poster
