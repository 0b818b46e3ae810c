"""smbdd.rdma.poster without RDMA: the struct layouts, the order and fencing of the poster
thread, and the fallback when the object is not a pyverbs v44 QP. The real posts run in the lab
(tests/lab: every SMB Direct test goes through it; test_rdma_read_write_into_shm checks it is used).
"""
import ctypes
import threading

from smbdd.rdma import poster


def test_send_wr_layout_matches_rdma_core_v44():
    """Offsets printed by gcc with Debian's libibverbs-dev 44.0 <infiniband/verbs.h>:
    offsetof(struct ibv_send_wr, ...) and sizeof; a wrong one would post garbage to the NIC."""
    wr = poster.IbvSendWr
    assert ctypes.sizeof(wr) == 128
    assert (wr.wr_id.offset, wr.next.offset, wr.sg_list.offset, wr.num_sge.offset) == (0, 8, 16, 24)
    assert (wr.opcode.offset, wr.send_flags.offset, wr.imm_data.offset) == (28, 32, 36)
    assert (wr.remote_addr.offset, wr.rkey.offset) == (40, 48)  # wr.rdma.remote_addr / rkey
    assert ctypes.sizeof(poster.IbvSge) == 16
    assert (poster._IbvQpHead.qp_num.offset, poster._IbvQpHead.qp_type.offset) == (52, 60)
    assert poster._CTX_OPS_POST_SEND == 208  # offsetof(struct ibv_context, ops.post_send)


def test_not_a_pyverbs_qp_means_no_raw_post():
    class Fake:
        qp_num = 7
    assert poster.raw_post_send(Fake()) is None


def test_poster_posts_in_order_and_fence_waits_for_them():
    p = poster.SendQueuePoster()
    seen, gate = [], threading.Event()

    def post(wr):
        gate.wait(5)  # the first post is slow, as an RDMA transfer is on rxe
        seen.append(wr.wr_id)
        return 0

    for i in range(5):
        p.submit(post, poster.IbvSendWr(wr_id=i), poster.IbvSge(), lambda *a: None, "t", lambda: True)
    assert not p.fence(timeout=0.2)  # still inside the first post
    gate.set()
    assert p.fence(timeout=5)
    assert seen == [0, 1, 2, 3, 4]


def test_poster_skips_closed_endpoints_and_reports_failures():
    p = poster.SendQueuePoster()
    posted, errors = [], []
    alive = {"a": True, "b": False}

    def post(wr):
        posted.append(wr.wr_id)
        return 12 if wr.wr_id == 3 else 0  # ENOMEM: a full send queue

    for i, who in enumerate("abab"):
        p.submit(post, poster.IbvSendWr(wr_id=i), poster.IbvSge(), lambda e, what: errors.append((e, what)),
                 f"post {i}", lambda w=who: alive[w])
    assert p.fence(timeout=5)
    assert posted == [0, 2]  # b's posts were skipped: its queue pair may be freed after a fence
    assert errors == []
    alive["b"] = True
    p.submit(post, poster.IbvSendWr(wr_id=3), poster.IbvSge(), lambda e, what: errors.append((e, what)),
             "post 3", lambda: True)
    assert p.fence(timeout=5)
    assert errors == [(12, "post 3")]


def test_poster_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("SMBDD_RDMA_POSTER", "0")
    assert poster.raw_post_send(object()) is None
