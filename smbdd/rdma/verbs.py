"""A small non-blocking RDMA layer for an asyncio proxy: rdma_cm listen/accept and RC queue pairs.

This is the one module of smbdd that talks to RDMA.  It is written for an event loop: nothing here
ever blocks.  Every object exposes file descriptors for ``loop.add_reader``; the matching ``poll*``
method is then called and returns what is ready without waiting.

Why this shape (facts checked against rdma-core v44, Debian 12, see shared/LAB.md):

* pyverbs calls never release the GIL, and its blocking calls (``CMID.get_request``,
  ``get_recv_comp``...) would freeze the whole process.  So both event channels are switched to
  O_NONBLOCK, which librdmacm and libibverbs document as supported: ``rdma_get_cm_event`` and
  ``ibv_get_cq_event`` then fail with EAGAIN instead of sleeping.
* pyverbs' connection manager API cannot run a multi-connection passive server: ``CMEvent`` hides
  which ``rdma_cm_id`` an event belongs to (so ESTABLISHED/DISCONNECTED can't be routed), a
  ``CMID`` made from an event destroys that id when garbage-collected, and closing any connection's
  ``CMID`` clears the *listener's* shared ``PD``/``Context`` wrappers.  The connection manager is
  therefore driven through ``ctypes`` over librdmacm's stable C ABI (struct layouts from
  ``<rdma/rdma_cma.h>`` and ``<infiniband/verbs.h>``), and each accepted id is moved to its own event
  channel with ``rdma_migrate_id`` so every connection has its own descriptor.
* The verbs objects (device context, protection domain, memory regions, completion channel, CQ,
  QP, work requests) are pyverbs objects on a context this module opens itself, one per device.
  The QP is created by us on that device-wide PD (not by ``rdma_create_qp``), so a single
  registration of the shared-memory pool serves every connection of the device; the QP is moved
  through INIT/RTR/RTS with the attributes ``rdma_init_qp_attr`` computes, then ``rdma_accept``
  tells the peer its number — what the kernel does for its own passive side (``cma_accept_ib``).
* ``ibv_send_wr.imm_data`` and ``invalidate_rkey`` share a union; pyverbs v44 has no setter for
  the latter, so SEND_WITH_INV stores the rkey through ``imm_data`` (host order, no byte swap).

Spec context: MS-SMBD 3.1.5 (the transport an SMB Direct server needs from RDMA: send, receive,
RDMA read/write to peer buffers, send with invalidate), RFC 5040/IBTA for the semantics.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import fcntl
import ipaddress
import logging
import os
import socket
import threading
from dataclasses import dataclass
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "IB_ROCE_PORT", "IWARP_PORT", "DeviceInfo", "list_devices", "describe_device",
    "RdmaError", "Device", "MemoryRegion", "register", "ConnectRequest", "Listener",
    "Completion", "CmEvent", "EndpointState", "Endpoint", "WcOpcode", "WC_SUCCESS",
    "WC_WR_FLUSH_ERR",
]

log = logging.getLogger(__name__)

#: MS-SMBD 2.1: SMB Direct listens on 5445 over iWARP and on 445 over InfiniBand/RoCE.
IWARP_PORT = 5445
IB_ROCE_PORT = 445

SYSFS_INFINIBAND = Path("/sys/class/infiniband")

WC_SUCCESS = 0
WC_WR_FLUSH_ERR = 5


class WcOpcode(IntEnum):
    """enum ibv_wc_opcode (libibverbs)."""
    SEND = 0
    RDMA_WRITE = 1
    RDMA_READ = 2
    COMP_SWAP = 3
    FETCH_ADD = 4
    BIND_MW = 5
    LOCAL_INV = 6
    RECV = 128
    RECV_RDMA_WITH_IMM = 129


class RdmaError(OSError):
    """An RDMA call failed; ``errno`` is set when the library reported one."""


# --------------------------------------------------------------------------------------------
# Discovery (sysfs only: works without pyverbs, and on a host without RDMA returns nothing)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One RDMA device as the proxy needs to know it.

    ``transport`` is "iwarp", "roce" or "ib"; ``smbd_port`` is the port MS-SMBD 2.1 assigns to that
    transport (5445 iWARP, 445 otherwise); ``addresses`` are the IP addresses of the device's
    network devices (RoCE/iWARP), i.e. where a Listener for this device should bind.
    """
    name: str
    transport: str
    netdevs: tuple[str, ...]
    addresses: tuple[str, ...]

    @property
    def smbd_port(self) -> int:
        return IWARP_PORT if self.transport == "iwarp" else IB_ROCE_PORT


def list_devices(sysfs: Path = SYSFS_INFINIBAND) -> list[str]:
    """Names of the RDMA devices present (``/sys/class/infiniband``), sorted."""
    try:
        return sorted(p.name for p in sysfs.iterdir())
    except FileNotFoundError:
        return []


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _gid_to_ip(gid: str) -> str | None:
    """The IP address a RoCE GID stands for (IPv4-mapped for v4), None for an unset GID."""
    try:
        addr = ipaddress.IPv6Address(gid)
    except ValueError:
        return None
    if addr == ipaddress.IPv6Address(0):
        return None
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _netdev_ipv4(netdev: str) -> list[str]:
    """IPv4 address of a netdev via SIOCGIFADDR (the primary one; enough for iWARP discovery)."""
    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = netdev.encode()[:15].ljust(40, b"\0")
        try:
            res = fcntl.ioctl(s.fileno(), siocgifaddr, req)
        except OSError:
            return []
    return [socket.inet_ntoa(res[20:24])]


def _netdev_ipv6(netdev: str, proc: Path = Path("/proc/net/if_inet6")) -> list[str]:
    out = []
    for line in _read(proc).splitlines():
        fields = line.split()
        if len(fields) == 6 and fields[5] == netdev:
            out.append(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    return out


def describe_device(name: str, sysfs: Path = SYSFS_INFINIBAND) -> DeviceInfo:
    """Transport, network devices and IP addresses of device ``name`` (port 1), from sysfs.

    node_type "4: RNIC" is iWARP; otherwise port 1's link_layer tells RoCE ("Ethernet") from IB.
    For RoCE the GID table is the list of IP addresses (each address of the netdev appears as a
    GID, IPv4 as ::ffff:a.b.c.d); iWARP GIDs are MAC based, so its addresses come from the netdev.
    """
    dev = sysfs / name
    port = dev / "ports" / "1"
    node_type = _read(dev / "node_type")
    link_layer = _read(port / "link_layer")
    if node_type.startswith("4"):
        transport = "iwarp"
    elif link_layer == "Ethernet":
        transport = "roce"
    else:
        transport = "ib"
    netdevs: list[str] = []
    addresses: list[str] = []
    ndev_dir = port / "gid_attrs" / "ndevs"
    if ndev_dir.is_dir():
        for entry in sorted(ndev_dir.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else 0):
            netdev = _read(entry)
            if not netdev:
                continue
            if netdev not in netdevs:
                netdevs.append(netdev)
            if transport == "roce":
                ip = _gid_to_ip(_read(port / "gids" / entry.name))
                if ip and ip not in addresses:
                    addresses.append(ip)
    if transport == "iwarp":
        for netdev in netdevs or [_read(dev / "parent")]:
            if netdev:
                for ip in _netdev_ipv4(netdev) + _netdev_ipv6(netdev):
                    if ip not in addresses:
                        addresses.append(ip)
    return DeviceInfo(name, transport, tuple(netdevs), tuple(addresses))


# --------------------------------------------------------------------------------------------
# Lazy imports: pyverbs (verbs objects) and librdmacm via ctypes (connection manager)
# --------------------------------------------------------------------------------------------

_import_lock = threading.Lock()
_pv: Any = None


def _pyverbs() -> Any:
    """Import pyverbs once; keep its import-time ``logging.basicConfig`` off our root logger."""
    global _pv
    with _import_lock:
        if _pv is None:
            root = logging.getLogger()
            guard = None
            if not root.handlers:
                # basicConfig() does nothing when the root logger already has a handler.
                guard = logging.NullHandler()
                root.addHandler(guard)
            try:
                import pyverbs.cq as cq
                import pyverbs.device as device
                import pyverbs.enums as enums
                import pyverbs.mr as mr
                import pyverbs.pd as pd
                import pyverbs.qp as qp
                import pyverbs.wr as wr
                from pyverbs.pyverbs_error import PyverbsError, PyverbsRDMAError
            except ImportError as exc:
                raise RdmaError(errno.ENOSYS, f"pyverbs is not available: {exc}") from exc
            finally:
                if guard is not None:
                    root.removeHandler(guard)

            class _NS:
                pass
            ns = _NS()
            ns.cq, ns.device, ns.e, ns.mr, ns.pd, ns.qp, ns.wr = cq, device, enums, mr, pd, qp, wr
            ns.Error, ns.RDMAError = PyverbsError, PyverbsRDMAError
            _pv = ns
        return _pv


def _pv_errno(exc: Exception) -> int:
    code = getattr(exc, "error_code", -1)
    return code if isinstance(code, int) and code > 0 else 0


def _wrap(exc: Exception, what: str) -> RdmaError:
    code = _pv_errno(exc)
    err = RdmaError(code or errno.EIO, f"{what}: {exc}")
    err.__cause__ = exc
    return err


# ---- ctypes mirror of the librdmacm / libibverbs ABI (rdma-core v44 headers) ----------------

class _Sockaddr6(ctypes.Structure):
    _fields_ = [("family", ctypes.c_uint16), ("port", ctypes.c_uint16),
                ("flowinfo", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 16),
                ("scope_id", ctypes.c_uint32)]


class _SockaddrStorage(ctypes.Union):
    """union { sockaddr; sockaddr_in; sockaddr_in6; sockaddr_storage } (128 bytes, 8-aligned)."""
    _fields_ = [("raw", ctypes.c_uint8 * 128), ("_align", ctypes.c_uint64)]


class _RdmaAddr(ctypes.Structure):
    _fields_ = [("src", _SockaddrStorage), ("dst", _SockaddrStorage),
                ("sgid", ctypes.c_uint8 * 16), ("dgid", ctypes.c_uint8 * 16),
                ("pkey", ctypes.c_uint16)]


class _RdmaRoute(ctypes.Structure):
    _fields_ = [("addr", _RdmaAddr), ("path_rec", ctypes.c_void_p), ("num_paths", ctypes.c_int)]


class _RdmaCmId(ctypes.Structure):
    """struct rdma_cm_id: only the leading fields are read (verbs, channel, route)."""
    _fields_ = [("verbs", ctypes.c_void_p), ("channel", ctypes.c_void_p),
                ("context", ctypes.c_void_p), ("qp", ctypes.c_void_p),
                ("route", _RdmaRoute), ("ps", ctypes.c_int), ("port_num", ctypes.c_uint8)]


class _RdmaConnParam(ctypes.Structure):
    _fields_ = [("private_data", ctypes.c_void_p), ("private_data_len", ctypes.c_uint8),
                ("responder_resources", ctypes.c_uint8), ("initiator_depth", ctypes.c_uint8),
                ("flow_control", ctypes.c_uint8), ("retry_count", ctypes.c_uint8),
                ("rnr_retry_count", ctypes.c_uint8), ("srq", ctypes.c_uint8),
                ("qp_num", ctypes.c_uint32)]


class _RdmaCmEvent(ctypes.Structure):
    """struct rdma_cm_event; the param union is larger (ud param) but only conn is read."""
    _fields_ = [("id", ctypes.POINTER(_RdmaCmId)), ("listen_id", ctypes.POINTER(_RdmaCmId)),
                ("event", ctypes.c_int), ("status", ctypes.c_int), ("conn", _RdmaConnParam)]


class _RdmaEventChannel(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int)]


class _IbvGid(ctypes.Union):
    """union ibv_gid: 16 raw bytes, 8-byte aligned (it overlays two __be64)."""
    _fields_ = [("raw", ctypes.c_uint8 * 16), ("_align", ctypes.c_uint64 * 2)]


class _IbvGlobalRoute(ctypes.Structure):
    _fields_ = [("dgid", _IbvGid), ("flow_label", ctypes.c_uint32),
                ("sgid_index", ctypes.c_uint8), ("hop_limit", ctypes.c_uint8),
                ("traffic_class", ctypes.c_uint8)]


class _IbvAhAttr(ctypes.Structure):
    _fields_ = [("grh", _IbvGlobalRoute), ("dlid", ctypes.c_uint16), ("sl", ctypes.c_uint8),
                ("src_path_bits", ctypes.c_uint8), ("static_rate", ctypes.c_uint8),
                ("is_global", ctypes.c_uint8), ("port_num", ctypes.c_uint8)]


class _IbvQpAttr(ctypes.Structure):
    _fields_ = [("qp_state", ctypes.c_int), ("cur_qp_state", ctypes.c_int),
                ("path_mtu", ctypes.c_int), ("path_mig_state", ctypes.c_int),
                ("qkey", ctypes.c_uint32), ("rq_psn", ctypes.c_uint32),
                ("sq_psn", ctypes.c_uint32), ("dest_qp_num", ctypes.c_uint32),
                ("qp_access_flags", ctypes.c_uint), ("cap", ctypes.c_uint32 * 5),
                ("ah_attr", _IbvAhAttr), ("alt_ah_attr", _IbvAhAttr),
                ("pkey_index", ctypes.c_uint16), ("alt_pkey_index", ctypes.c_uint16),
                ("en_sqd_async_notify", ctypes.c_uint8), ("sq_draining", ctypes.c_uint8),
                ("max_rd_atomic", ctypes.c_uint8), ("max_dest_rd_atomic", ctypes.c_uint8),
                ("min_rnr_timer", ctypes.c_uint8), ("port_num", ctypes.c_uint8),
                ("timeout", ctypes.c_uint8), ("retry_cnt", ctypes.c_uint8),
                ("rnr_retry", ctypes.c_uint8), ("alt_port_num", ctypes.c_uint8),
                ("alt_timeout", ctypes.c_uint8), ("rate_limit", ctypes.c_uint32)]


_IdP = ctypes.POINTER(_RdmaCmId)
_ChanP = ctypes.POINTER(_RdmaEventChannel)
_EvP = ctypes.POINTER(_RdmaCmEvent)
_RDMA_PS_TCP = 0x0106


class CmEvent(IntEnum):
    """enum rdma_cm_event_type."""
    ADDR_RESOLVED = 0
    ADDR_ERROR = 1
    ROUTE_RESOLVED = 2
    ROUTE_ERROR = 3
    CONNECT_REQUEST = 4
    CONNECT_RESPONSE = 5
    CONNECT_ERROR = 6
    UNREACHABLE = 7
    REJECTED = 8
    ESTABLISHED = 9
    DISCONNECTED = 10
    DEVICE_REMOVAL = 11
    MULTICAST_JOIN = 12
    MULTICAST_ERROR = 13
    ADDR_CHANGE = 14
    TIMEWAIT_EXIT = 15


_cm_lib: Any = None


def _cm() -> Any:
    """librdmacm.so.1 with argument types declared (errno captured for every call)."""
    global _cm_lib
    with _import_lock:
        if _cm_lib is None:
            try:
                lib = ctypes.CDLL("librdmacm.so.1", use_errno=True)
                ibv = ctypes.CDLL("libibverbs.so.1", use_errno=True)
            except OSError as exc:
                raise RdmaError(errno.ENOSYS, f"librdmacm is not available: {exc}") from exc
            sig = {
                "rdma_create_event_channel": (_ChanP, []),
                "rdma_destroy_event_channel": (None, [_ChanP]),
                "rdma_create_id": (ctypes.c_int, [_ChanP, ctypes.POINTER(_IdP), ctypes.c_void_p, ctypes.c_int]),
                "rdma_destroy_id": (ctypes.c_int, [_IdP]),
                "rdma_bind_addr": (ctypes.c_int, [_IdP, ctypes.c_void_p]),
                "rdma_listen": (ctypes.c_int, [_IdP, ctypes.c_int]),
                "rdma_get_cm_event": (ctypes.c_int, [_ChanP, ctypes.POINTER(_EvP)]),
                "rdma_ack_cm_event": (ctypes.c_int, [_EvP]),
                "rdma_migrate_id": (ctypes.c_int, [_IdP, _ChanP]),
                "rdma_init_qp_attr": (ctypes.c_int, [_IdP, ctypes.POINTER(_IbvQpAttr), ctypes.POINTER(ctypes.c_int)]),
                "rdma_accept": (ctypes.c_int, [_IdP, ctypes.POINTER(_RdmaConnParam)]),
                "rdma_reject": (ctypes.c_int, [_IdP, ctypes.c_void_p, ctypes.c_uint8]),
                "rdma_disconnect": (ctypes.c_int, [_IdP]),
                "rdma_get_src_port": (ctypes.c_uint16, [_IdP]),
            }
            for name, (res, args) in sig.items():
                fn = getattr(lib, name)
                fn.restype, fn.argtypes = res, args
            ibv.ibv_get_device_name.restype = ctypes.c_char_p
            ibv.ibv_get_device_name.argtypes = [ctypes.c_void_p]
            lib.ibv = ibv
            _cm_lib = lib
        return _cm_lib


def _check(rc: int, what: str) -> None:
    if rc != 0:
        code = ctypes.get_errno() or errno.EIO
        raise RdmaError(code, f"{what}: {os.strerror(code)}")


def _sockaddr(addr: str, port: int) -> ctypes.Array:
    """A sockaddr_in / sockaddr_in6 for rdma_bind_addr."""
    ip = ipaddress.ip_address(addr)
    buf = (ctypes.c_uint8 * 128)()
    if ip.version == 4:
        raw = socket.AF_INET.to_bytes(2, "little") + port.to_bytes(2, "big") + ip.packed
    else:
        raw = (socket.AF_INET6.to_bytes(2, "little") + port.to_bytes(2, "big") + bytes(4)
               + ip.packed + bytes(4))
    ctypes.memmove(buf, raw, len(raw))
    return buf


def _sockaddr_to_str(storage: _SockaddrStorage) -> tuple[str, int]:
    raw = bytes(storage.raw)
    family = int.from_bytes(raw[0:2], "little")
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return "", port


class _EventChannel:
    """A non-blocking rdma_cm event channel (its fd goes to loop.add_reader)."""

    def __init__(self) -> None:
        cm = _cm()
        ptr = cm.rdma_create_event_channel()
        if not ptr:
            code = ctypes.get_errno() or errno.EIO
            raise RdmaError(code, f"rdma_create_event_channel: {os.strerror(code)}")
        self.ptr = ptr
        self.fd = ptr.contents.fd
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)

    def get_event(self) -> Any | None:
        """The next event (a pointer to rdma_cm_event, to be acked), or None if none is queued."""
        ev = _EvP()
        if _cm().rdma_get_cm_event(self.ptr, ctypes.byref(ev)) != 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                return None
            raise RdmaError(code or errno.EIO, f"rdma_get_cm_event: {os.strerror(code or errno.EIO)}")
        return ev

    def close(self) -> None:
        if self.ptr:
            _cm().rdma_destroy_event_channel(self.ptr)
            self.ptr = None
            self.fd = -1


# --------------------------------------------------------------------------------------------
# Device-wide resources: one context and one protection domain per device, registered memory
# --------------------------------------------------------------------------------------------

ACCESS_POOL = 1 | 2 | 4   # IBV_ACCESS_LOCAL_WRITE | REMOTE_WRITE | REMOTE_READ


class MemoryRegion:
    """Caller-owned memory registered on a device's PD (e.g. the POSIX shm slot pool).

    ``lkey`` goes into local work requests, ``rkey`` lets the peer RDMA into it.  The memory must
    outlive the registration; ``close()`` deregisters (idempotent).
    """

    __slots__ = ("_mr", "address", "length", "lkey", "rkey", "_on_close")

    def __init__(self, mr: Any, address: int, length: int) -> None:
        self._mr = mr
        self.address = address
        self.length = length
        self.lkey = mr.lkey
        self.rkey = mr.rkey
        self._on_close: Any = None

    def close(self) -> None:
        if self._mr is not None:
            self._mr.close()
            self._mr = None
            if self._on_close is not None:
                self._on_close(self)

    def __repr__(self) -> str:
        return f"MemoryRegion(address={self.address:#x}, length={self.length}, lkey={self.lkey:#x}, rkey={self.rkey:#x})"


def register(pd: Any, address: int, length: int, access: int = ACCESS_POOL) -> MemoryRegion:
    """Register ``length`` bytes at ``address`` (caller-owned, e.g. an mmap) on ``pd``.

    Default access LOCAL_WRITE|REMOTE_WRITE|REMOTE_READ: the pool is a target of RDMA read
    completions (local write) and of the client's RDMA writes/reads in tests.
    ``pd`` is a :class:`Device` or its ``.pd`` (a pyverbs PD).  The address of an mmap is
    ``ctypes.addressof(ctypes.c_char.from_buffer(mm))``.
    """
    pv = _pyverbs()
    if isinstance(pd, Device):
        pd = pd.pd
    if length <= 0 or address <= 0:
        raise ValueError("register: address and length must be positive")
    try:
        mr = pv.mr.MR(pd, length, access, address=address)
    except pv.Error as exc:
        raise _wrap(exc, "ibv_reg_mr") from exc
    return MemoryRegion(mr, address, length)


class Device:
    """An opened RDMA device: its own verbs context and the PD shared by all its connections.

    Get one with :meth:`Device.get` (one instance per device name per process).  Endpoints of
    the device create their QPs on :attr:`pd`, so a region registered once with
    :meth:`register` (or :func:`register`) is usable by every connection.
    """

    _instances: dict[str, "Device"] = {}
    _lock = threading.Lock()

    def __init__(self, name: str) -> None:
        pv = _pyverbs()
        self.name = name
        try:
            self.context = pv.device.Context(name=name)
            self.pd = pv.pd.PD(self.context)
            attr = self.context.query_device()
        except pv.Error as exc:
            raise _wrap(exc, f"open device {name}") from exc
        self.max_qp_rd_atom = attr.max_qp_rd_atom
        self.max_qp_init_rd_atom = attr.max_qp_init_rd_atom
        self.max_qp_wr = attr.max_qp_wr
        self.max_sge = attr.max_sge
        self._regions: dict[tuple[int, int, int], MemoryRegion] = {}

    @classmethod
    def get(cls, name: str) -> "Device":
        with cls._lock:
            dev = cls._instances.get(name)
            if dev is None:
                if not cls._instances:
                    # pyverbs objects freed during interpreter teardown log through half-torn-down
                    # modules ("Error in sys.excepthook"): close devices while Python is whole.
                    atexit.register(cls.close_all)
                dev = cls._instances[name] = cls(name)
            return dev

    @classmethod
    def close_all(cls) -> None:
        for dev in list(cls._instances.values()):
            try:
                dev.close()
            except Exception as exc:  # at exit: report, never raise
                log.debug("closing %s: %s", dev.name, exc)

    def register(self, address: int, length: int, access: int = ACCESS_POOL) -> MemoryRegion:
        """Register (or return the cached registration of) ``[address, address+length)``."""
        key = (address, length, access)
        mr = self._regions.get(key)
        if mr is None:
            mr = self._regions[key] = register(self.pd, address, length, access)
            # A closed region leaves the cache: a later mapping may reuse the address.
            mr._on_close = lambda m, key=key: self._regions.pop(key, None)
        return mr

    def close(self) -> None:
        """Deregister everything and close the device (all its endpoints must be closed)."""
        for mr in list(self._regions.values()):
            mr.close()
        self._regions.clear()
        self.pd.close()
        self.context.close()
        with Device._lock:
            if Device._instances.get(self.name) is self:
                del Device._instances[self.name]


# --------------------------------------------------------------------------------------------
# Listening
# --------------------------------------------------------------------------------------------

class ConnectRequest:
    """A pending rdma_cm connection request, already on its own event channel.

    Pass it to :class:`Endpoint` to accept it, or call :meth:`reject`.  ``private_data`` is what
    the peer sent with the request.  The RDMA read resources are as rdma_cm reports them, from
    our side (verified against cifs.ko, which connects with initiator_depth 0 and
    responder_resources 32, and shows up here as 32 / 0):
    ``initiator_depth`` is the most RDMA reads we may have outstanding towards the peer (its
    responder resources); ``responder_resources`` the reads the peer wants to issue to us.
    Unclaimed requests keep their cm id until :meth:`reject`.
    """

    def __init__(self, cm_id: Any, channel: _EventChannel, private_data: bytes,
                 responder_resources: int, initiator_depth: int) -> None:
        self._id = cm_id
        self._channel: _EventChannel | None = channel
        self.private_data = private_data
        self.responder_resources = responder_resources
        self.initiator_depth = initiator_depth
        # id->verbs is the ibv_context librdmacm opened; its first field is the ibv_device.
        device = ctypes.c_void_p.from_address(cm_id.contents.verbs).value
        self.device_name = (_cm().ibv.ibv_get_device_name(device) or b"").decode()
        self.local_address = _sockaddr_to_str(cm_id.contents.route.addr.src)
        self.peer_address = _sockaddr_to_str(cm_id.contents.route.addr.dst)

    def _take(self) -> tuple[Any, _EventChannel]:
        if self._channel is None:
            raise RdmaError(errno.EINVAL, "connect request already used")
        cm_id, chan = self._id, self._channel
        self._id, self._channel = None, None
        return cm_id, chan

    def reject(self, private_data: bytes = b"") -> None:
        cm_id, chan = self._take()
        data = ctypes.create_string_buffer(private_data, len(private_data)) if private_data else None
        try:
            _check(_cm().rdma_reject(cm_id, data, len(private_data)), "rdma_reject")
        finally:
            _cm().rdma_destroy_id(cm_id)
            chan.close()

    def __repr__(self) -> str:
        return f"ConnectRequest(device={self.device_name!r}, peer={self.peer_address})"


class Listener:
    """rdma_cm listener (RDMA_PS_TCP) on ``addr:port``.

    ``fd`` is the event channel's descriptor: when it is readable call :meth:`poll`, which
    returns the connection requests that arrived (never blocks).  Accepted connections get their
    own event channel, so this descriptor only ever carries new requests.
    """

    def __init__(self, addr: str, port: int, backlog: int = 64) -> None:
        cm = _cm()
        self._channel = _EventChannel()
        self._id = _IdP()
        try:
            _check(cm.rdma_create_id(self._channel.ptr, ctypes.byref(self._id), None, _RDMA_PS_TCP),
                   "rdma_create_id")
            sa = _sockaddr(addr, port)
            _check(cm.rdma_bind_addr(self._id, sa), f"rdma_bind_addr {addr}:{port}")
            _check(cm.rdma_listen(self._id, backlog), "rdma_listen")
        except BaseException:
            self.close()
            raise
        self.address = addr
        # rdma_get_src_port returns network byte order; port 0 asked for an ephemeral port.
        self.port = socket.ntohs(cm.rdma_get_src_port(self._id)) or port

    @property
    def fd(self) -> int:
        return self._channel.fd

    def fileno(self) -> int:
        return self._channel.fd

    def poll(self) -> list[ConnectRequest]:
        """Connection requests ready now (empty list if none)."""
        cm = _cm()
        requests: list[ConnectRequest] = []
        while True:
            ev = self._channel.get_event()
            if ev is None:
                return requests
            kind = ev.contents.event
            if kind != CmEvent.CONNECT_REQUEST:
                log.info("rdma listener %s:%s: ignoring event %s status %d", self.address,
                         self.port, _event_name(kind), ev.contents.status)
                cm.rdma_ack_cm_event(ev)
                continue
            conn = ev.contents.conn
            data = ctypes.string_at(conn.private_data, conn.private_data_len) if conn.private_data else b""
            # ctypes pointer fields alias the event's memory, which the ack frees: copy the value.
            cm_id = ctypes.cast(ctypes.cast(ev.contents.id, ctypes.c_void_p), _IdP)
            resp_res, init_depth = conn.responder_resources, conn.initiator_depth
            # Ack before migrating: rdma_migrate_id waits until every event retrieved for the id
            # has been acked, so acking first keeps it from sleeping.
            cm.rdma_ack_cm_event(ev)
            chan = _EventChannel()
            if cm.rdma_migrate_id(cm_id, chan.ptr) != 0:
                code = ctypes.get_errno()
                log.warning("rdma_migrate_id failed: %s; rejecting", os.strerror(code))
                cm.rdma_reject(cm_id, None, 0)
                cm.rdma_destroy_id(cm_id)
                chan.close()
                continue
            requests.append(ConnectRequest(cm_id, chan, data, resp_res, init_depth))

    def close(self) -> None:
        if self._id:
            _cm().rdma_destroy_id(self._id)
            self._id = _IdP()
        self._channel.close()

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _event_name(kind: int) -> str:
    try:
        return CmEvent(kind).name
    except ValueError:
        return str(kind)


# --------------------------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------------------------

class Completion(NamedTuple):
    """One work completion: ``status`` 0 is success, ``opcode`` a :class:`WcOpcode`."""
    wr_id: int
    status: int
    opcode: int
    byte_len: int


class EndpointState(Enum):
    CREATED = "created"          # QP ready, not yet accepted (post receives now)
    ACCEPTED = "accepted"        # rdma_accept sent, waiting for ESTABLISHED
    ESTABLISHED = "established"
    DISCONNECTED = "disconnected"  # peer or local disconnect, or a connection error
    CLOSED = "closed"


# IBV_QP_* attribute mask bits (enum ibv_qp_attr_mask)
_QP_STATE, _QP_ACCESS_FLAGS, _QP_PKEY_INDEX, _QP_PORT, _QP_QKEY, _QP_AV = 1, 8, 16, 32, 64, 128
_QP_PATH_MTU, _QP_TIMEOUT, _QP_RETRY_CNT, _QP_RNR_RETRY, _QP_RQ_PSN = 256, 512, 1024, 2048, 4096
_QP_MAX_QP_RD_ATOMIC, _QP_MIN_RNR_TIMER, _QP_SQ_PSN = 8192, 32768, 65536
_QP_MAX_DEST_RD_ATOMIC, _QP_DEST_QPN = 131072, 1 << 20
_QPS_INIT, _QPS_RTR, _QPS_RTS, _QPS_ERR = 1, 2, 3, 6


class Endpoint:
    """One RC connection accepted from a :class:`ConnectRequest`.

    Creating it builds, on the device's shared PD, one CQ (sends and receives) bound to its own
    completion channel and an RC QP in INIT.  Post the first receives, then :meth:`accept`
    (RTR, RTS, rdma_accept).  The CQ holds max_send_wr + max_recv_wr entries, so even a full
    flush after a disconnect cannot overrun it.
    Two descriptors go to ``loop.add_reader``: :attr:`cq_fd` (call :meth:`poll_completions`) and
    :attr:`cm_fd` (call :meth:`poll_cm_events`).  All methods return at once.
    """

    def __init__(self, request: ConnectRequest, *, max_send_wr: int = 64, max_recv_wr: int = 64,
                 max_send_sge: int = 1, max_recv_sge: int = 1) -> None:
        pv = _pyverbs()
        self.device = Device.get(request.device_name)
        self.peer_private_data = request.private_data
        self.offered_initiator_depth = request.initiator_depth
        self.offered_responder_resources = request.responder_resources
        self.initiator_depth = self.responder_resources = 0
        self.peer_address = request.peer_address
        self.local_address = request.local_address
        self._id, self._cm_channel = request._take()
        self.state = EndpointState.CREATED
        self.error: str | None = None
        self._comp_channel = self._cq = self._qp = None
        try:
            ctx = self.device.context
            self._comp_channel, self.cq_fd = _create_comp_channel(pv, ctx)
            self._cq = pv.cq.CQ(ctx, max_send_wr + max_recv_wr, None, self._comp_channel, 0)
            self._cq.req_notify()
            cap = pv.qp.QPCap(max_send_wr=max_send_wr, max_recv_wr=max_recv_wr,
                              max_send_sge=max_send_sge, max_recv_sge=max_recv_sge)
            init = pv.qp.QPInitAttr(qp_type=pv.e.IBV_QPT_RC, scq=self._cq, rcq=self._cq, cap=cap,
                                    sq_sig_all=0)
            self._qp = pv.qp.QP(self.device.pd, init)
            self.qp_num = self._qp.qp_num
            self._send_sge, self._send_wr = _reusable_send_wr(pv)
            self._recv_wrs: dict[int, tuple[tuple[int, int, int], Any]] = {}
            # INIT now, so receives can be posted before accept, as they must be: the peer may
            # send as soon as it sees our accept.  RTR/RTS happen in accept().
            self._modify_from_cm(_QPS_INIT)
        except BaseException:
            # Tell the peer now rather than letting it time out.
            if self._id:
                _cm().rdma_reject(self._id, None, 0)
            self.close()
            raise

    # -- connection management ------------------------------------------------------------

    @property
    def cm_fd(self) -> int:
        return self._cm_channel.fd if self._cm_channel else -1

    def _modify_from_cm(self, state: int, overrides: dict[str, int] | None = None) -> None:
        """Move the QP to ``state`` with the attributes rdma_cm computes for this connection."""
        pv = _pyverbs()
        cattr = _IbvQpAttr()
        cattr.qp_state = state
        mask = ctypes.c_int(0)
        _check(_cm().rdma_init_qp_attr(self._id, ctypes.byref(cattr), ctypes.byref(mask)),
               f"rdma_init_qp_attr({state})")
        for name, value in (overrides or {}).items():
            setattr(cattr, name, value)
        attr = _qp_attr_to_pyverbs(pv, cattr, mask.value)
        try:
            self._qp.modify(attr, mask.value)
        except pv.Error as exc:
            raise _wrap(exc, f"ibv_modify_qp to state {state}") from exc

    def accept(self, private_data: bytes = b"", *, responder_resources: int | None = None,
               initiator_depth: int | None = None, rnr_retry: int = 6) -> None:
        """Move the QP to RTR and RTS and send rdma_accept (post the first receives before).

        ``rnr_retry`` is how often the peer retries a send we had no receive posted for
        (7 = forever); 6 as ksmbd uses, since SMB Direct credits should make RNR impossible.

        ``initiator_depth`` (ORD: RDMA reads we may have outstanding; SMB Direct servers issue RDMA
        reads for client writes) defaults to what the request offers (``offered_initiator_depth``,
        the peer's responder resources) capped by the device; more would make the peer refuse
        reads.  ``responder_resources`` (IRD: reads the peer may issue to us; 0 from cifs.ko)
        defaults to ``offered_responder_resources`` capped by the device.
        """
        if self.state is not EndpointState.CREATED:
            raise RdmaError(errno.EINVAL, f"accept in state {self.state.value}")
        if len(private_data) > 196:
            raise ValueError("rdma_cm RDMA_PS_TCP accept private data is at most 196 bytes")
        dev = self.device
        ord_ = min(self.offered_initiator_depth, dev.max_qp_init_rd_atom,
                   initiator_depth if initiator_depth is not None else 255)
        ird = min(dev.max_qp_rd_atom, responder_resources if responder_resources is not None
                  else self.offered_responder_resources)
        # Same overrides the kernel applies for its own passive side (cma_modify_qp_rtr/rts):
        # IRD at RTR, ORD at RTS, matching what rdma_accept announces.
        self._modify_from_cm(_QPS_RTR, {"max_dest_rd_atomic": ird})
        self._modify_from_cm(_QPS_RTS, {"max_rd_atomic": ord_})
        param = _RdmaConnParam()
        buf = ctypes.create_string_buffer(private_data, len(private_data)) if private_data else None
        if buf is not None:
            param.private_data = ctypes.cast(buf, ctypes.c_void_p)
            param.private_data_len = len(private_data)
        param.responder_resources = ird
        param.initiator_depth = ord_
        param.rnr_retry_count = rnr_retry
        param.qp_num = self.qp_num
        _check(_cm().rdma_accept(self._id, ctypes.byref(param)), "rdma_accept")
        self.initiator_depth, self.responder_resources = ord_, ird
        self.state = EndpointState.ACCEPTED

    def poll_cm_events(self) -> list[CmEvent]:
        """Handle the connection's rdma_cm events; returns their kinds.

        ESTABLISHED moves to that state.  DISCONNECTED and every error event move to DISCONNECTED
        and put the QP in the error state, so all posted work requests complete (flushed,
        status WC_WR_FLUSH_ERR) through :meth:`poll_completions` and their buffers can be freed.
        """
        if self._cm_channel is None:
            return []
        cm = _cm()
        kinds: list[CmEvent] = []
        while True:
            ev = self._cm_channel.get_event()
            if ev is None:
                return kinds
            kind, status = ev.contents.event, ev.contents.status
            cm.rdma_ack_cm_event(ev)
            try:
                kinds.append(CmEvent(kind))
            except ValueError:
                continue
            if kind == CmEvent.ESTABLISHED:
                if self.state is EndpointState.ACCEPTED:
                    self.state = EndpointState.ESTABLISHED
            elif kind in (CmEvent.DISCONNECTED, CmEvent.CONNECT_ERROR, CmEvent.UNREACHABLE,
                          CmEvent.REJECTED, CmEvent.DEVICE_REMOVAL, CmEvent.ADDR_CHANGE):
                if self.error is None and kind != CmEvent.DISCONNECTED:
                    self.error = f"{_event_name(kind)} status {status}"
                if kind == CmEvent.DISCONNECTED and self.state in (EndpointState.ACCEPTED,
                                                                   EndpointState.ESTABLISHED):
                    # The peer's DREQ is only answered (DREP) when we call rdma_disconnect;
                    # without it a peer waiting in rdma_disconnect (cifs.ko at unmount, rdma_cm
                    # sync clients) sits out the full CM timeout (measured: ~100 s, ETIMEDOUT).
                    if cm.rdma_disconnect(self._id) != 0:
                        log.debug("rdma_disconnect (DREP): %s", os.strerror(ctypes.get_errno()))
                self._to_disconnected()

    def _to_disconnected(self) -> None:
        if self.state in (EndpointState.DISCONNECTED, EndpointState.CLOSED):
            return
        self.state = EndpointState.DISCONNECTED
        self._qp_to_error()

    def _qp_to_error(self) -> None:
        if self._qp is None:
            return
        pv = _pyverbs()
        attr = pv.qp.QPAttr(qp_state=_QPS_ERR)
        try:
            self._qp.modify(attr, _QP_STATE)
        except pv.Error as exc:  # already in error: nothing to flush
            log.debug("QP to ERR: %s", exc)

    def disconnect(self) -> None:
        """Start an orderly disconnect (DREQ); posted work requests flush."""
        if self.state in (EndpointState.ACCEPTED, EndpointState.ESTABLISHED):
            if _cm().rdma_disconnect(self._id) != 0:
                log.debug("rdma_disconnect: %s", os.strerror(ctypes.get_errno()))
        self._to_disconnected()

    # -- data path ----------------------------------------------------------------------------

    def post_recv(self, wr_id: int, addr: int, length: int, lkey: int) -> None:
        """Post a receive buffer; its completion carries ``wr_id`` and the received length.

        A receive buffer is reposted with the same (wr_id, address, length, key) after every
        message, so its work request is built once and kept: building pyverbs objects is the
        costly part of a post (each one takes the logging lock for its logger)."""
        pv = _pyverbs()
        key = (addr, length, lkey)
        cached = self._recv_wrs.get(wr_id)
        if cached is None or cached[0] != key:
            cached = (key, pv.wr.RecvWR(wr_id=wr_id, num_sge=1, sg=[pv.wr.SGE(addr, length, lkey)]))
            self._recv_wrs[wr_id] = cached
        try:
            self._qp.post_recv(cached[1])
        except pv.Error as exc:
            raise _wrap(exc, "ibv_post_recv") from exc

    def _post_one(self, wr_id: int, opcode: int, addr: int, length: int, lkey: int, what: str, *,
                  imm_data: int = 0, remote: tuple[int, int] | None = None) -> None:
        """Fill the endpoint's one reusable send work request and post it (ibv_post_send
        copies it into the send queue, so it is free again when the call returns)."""
        pv = _pyverbs()
        if self._qp is None:
            raise RdmaError(errno.ENOTCONN, f"{what} on a closed endpoint")
        sge, wr = self._send_sge, self._send_wr
        sge.addr, sge.length, sge.lkey = addr, length, lkey
        wr.wr_id, wr.opcode, wr.imm_data = wr_id, opcode, imm_data
        wr.num_sge = 1 if length else 0
        if remote is not None:
            wr.set_wr_rdma(remote[1], remote[0])
        try:
            self._qp.post_send(wr)
        except pv.Error as exc:
            raise _wrap(exc, what) from exc

    def post_send(self, wr_id: int, addr: int, length: int, lkey: int, *,
                  invalidate_rkey: int | None = None) -> None:
        """IBV_WR_SEND, or IBV_WR_SEND_WITH_INV of ``invalidate_rkey`` (MS-SMBD 3.1.4.2 /
        SMB2_CHANNEL_RDMA_V1_INVALIDATE: the response to an RDMA read/write invalidates the
        client's buffer).  Always signaled."""
        pv = _pyverbs()
        if invalidate_rkey is None:
            self._post_one(wr_id, pv.e.IBV_WR_SEND, addr, length, lkey, "ibv_post_send(SEND)")
        else:
            # ibv_send_wr: union { __be32 imm_data; uint32_t invalidate_rkey; }
            self._post_one(wr_id, pv.e.IBV_WR_SEND_WITH_INV, addr, length, lkey, "ibv_post_send(SEND)",
                           imm_data=invalidate_rkey & 0xFFFFFFFF)

    def post_rdma_write(self, wr_id: int, local_addr: int, length: int, lkey: int,
                        remote_addr: int, rkey: int) -> None:
        """RDMA write ``length`` bytes from local memory to the peer's (remote_addr, rkey)."""
        self._post_one(wr_id, _pyverbs().e.IBV_WR_RDMA_WRITE, local_addr, length, lkey,
                       "ibv_post_send(RDMA_WRITE)", remote=(remote_addr, rkey))

    def post_rdma_read(self, wr_id: int, local_addr: int, length: int, lkey: int,
                       remote_addr: int, rkey: int) -> None:
        """RDMA read ``length`` bytes of the peer's (remote_addr, rkey) into local memory.
        Needs initiator_depth > 0 at accept."""
        self._post_one(wr_id, _pyverbs().e.IBV_WR_RDMA_READ, local_addr, length, lkey,
                       "ibv_post_send(RDMA_READ)", remote=(remote_addr, rkey))

    def poll_completions(self, batch: int = 64) -> list[Completion]:
        """Every completion available now.

        Order matters (ibv_get_cq_event(3)): consume and ack the channel's event, drain the CQ,
        re-arm with req_notify, then drain once more — a completion that arrived between the
        first drain and the re-arm raised no event and would otherwise wait for the next one.
        One event is taken per call: the caller is woken by cq_fd being readable, and it stays
        readable while events are left, so looping here until EAGAIN would only add a failing
        read(2) and an exception to every wake-up.
        """
        if self._cq is None:
            return []
        events = self._take_cq_events(1)
        if events:
            self._cq.ack_events(events)
        out = self._drain(batch)
        self._cq.req_notify()
        out += self._drain(batch)
        return out

    def _take_cq_events(self, limit: int | None) -> int:
        """Consume up to ``limit`` (None: all) completion events without blocking."""
        pv = _pyverbs()
        events = 0
        while limit is None or events < limit:
            try:
                self._comp_channel.get_cq_event(self._cq)
            except pv.Error as exc:
                if _pv_errno(exc) in (errno.EAGAIN, errno.EWOULDBLOCK):
                    break
                raise _wrap(exc, "ibv_get_cq_event") from exc
            events += 1
        return events

    def _drain(self, batch: int) -> list[Completion]:
        out: list[Completion] = []
        while True:
            n, wcs = self._cq.poll(batch)
            out.extend(Completion(wc.wr_id, wc.status, wc.opcode, wc.byte_len) for wc in wcs)
            if n < batch:
                return out

    # -- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Disconnect if needed and free QP, CQ, completion channel, cm id and its channel.

        Work requests still posted are flushed and dropped: call :meth:`disconnect` and drain
        :meth:`poll_completions` first if their buffers need accounting.  Idempotent.
        """
        if self.state is EndpointState.CLOSED:
            return
        if self._id:
            self.disconnect()
        if self._qp is not None:
            self._qp.close()
            self._qp = None
        if self._cq is not None:
            # ibv_destroy_cq waits for every retrieved event to be acked: ack stragglers.
            if self._comp_channel is not None:
                events = self._take_cq_events(None)
                if events:
                    self._cq.ack_events(events)
            self._cq.close()
            self._cq = None
        if self._comp_channel is not None:
            self._comp_channel.close()
            self._comp_channel = None
        if self._id:
            # Events retrieved are always acked at once, so rdma_destroy_id will not wait.
            _cm().rdma_destroy_id(self._id)
            self._id = None
        if self._cm_channel is not None:
            self._cm_channel.close()
            self._cm_channel = None
        self.state = EndpointState.CLOSED

    def __enter__(self) -> "Endpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Endpoint(qp={getattr(self, 'qp_num', None)}, peer={self.peer_address}, state={self.state.value})"


_fd_lock = threading.Lock()


def _open_fds() -> dict[int, str]:
    """Descriptor -> link target of this process.  os.listdir itself briefly holds a descriptor
    on /proc/self/fd, which is closed (and its number free again) when it returns: skip it."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
    return out


def _reusable_send_wr(pv: Any) -> tuple[Any, Any]:
    """One SGE and one send work request that point at each other, to be refilled per post.

    pyverbs copies the SGE list when a SendWR is built; assigning ``sg_list`` afterwards makes
    the work request point at the SGE's own ibv_sge, so setting the SGE's fields is enough.
    Neither object is ever closed: SendWR.close() would free the SGE's memory too."""
    sge = pv.wr.SGE(0, 0, 0)
    wr = pv.wr.SendWR(wr_id=0, opcode=pv.e.IBV_WR_SEND, num_sge=1, sg=[sge],
                      send_flags=pv.e.IBV_SEND_SIGNALED)
    wr.sg_list = sge
    return sge, wr


def _create_comp_channel(pv: Any, ctx: Any) -> tuple[Any, int]:
    """A pyverbs CompChannel and its (now non-blocking) descriptor.

    pyverbs v44 does not expose the descriptor: find the one fd that appeared in /proc/self/fd
    pointing at an "[infinibandevent]" anon inode (verified in the lab; see LAB.md).  The lock
    keeps two of our own creations apart; another thread opening the same kind of descriptor at
    the same instant would make the match ambiguous, which is detected and reported.
    """
    with _fd_lock:
        before = _open_fds()
        cc = pv.cq.CompChannel(ctx)
        after = _open_fds()
    cands = [fd for fd, target in after.items()
             if "infinibandevent" in target and before.get(fd) != target]
    if len(cands) != 1:
        cc.close()
        raise RdmaError(errno.EIO, f"cannot identify the completion channel fd (candidates {cands})")
    fd = cands[0]
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    return cc, fd


def _qp_attr_to_pyverbs(pv: Any, c: _IbvQpAttr, mask: int) -> Any:
    """Copy the fields rdma_init_qp_attr set (per ``mask``) into a pyverbs QPAttr."""
    a = pv.qp.QPAttr(qp_state=c.qp_state)
    if mask & _QP_ACCESS_FLAGS:
        a.qp_access_flags = c.qp_access_flags
    if mask & _QP_PKEY_INDEX:
        a.pkey_index = c.pkey_index
    if mask & _QP_PORT:
        a.port_num = c.port_num
    if mask & _QP_QKEY:
        a.qkey = c.qkey
    if mask & _QP_PATH_MTU:
        a.path_mtu = c.path_mtu
    if mask & _QP_DEST_QPN:
        a.dest_qp_num = c.dest_qp_num
    if mask & _QP_RQ_PSN:
        a.rq_psn = c.rq_psn
    if mask & _QP_SQ_PSN:
        a.sq_psn = c.sq_psn
    if mask & _QP_MAX_DEST_RD_ATOMIC:
        a.max_dest_rd_atomic = c.max_dest_rd_atomic
    if mask & _QP_MAX_QP_RD_ATOMIC:
        a.max_rd_atomic = c.max_rd_atomic
    if mask & _QP_MIN_RNR_TIMER:
        a.min_rnr_timer = c.min_rnr_timer
    if mask & _QP_TIMEOUT:
        a.timeout = c.timeout
    if mask & _QP_RETRY_CNT:
        a.retry_cnt = c.retry_cnt
    if mask & _QP_RNR_RETRY:
        a.rnr_retry = c.rnr_retry
    if mask & _QP_AV:
        from pyverbs.addr import AHAttr, GID, GlobalRoute
        ah = c.ah_attr
        gr = None
        if ah.is_global:
            gr = GlobalRoute(dgid=GID(_gid_str(bytes(ah.grh.dgid.raw))), flow_label=ah.grh.flow_label,
                             sgid_index=ah.grh.sgid_index, hop_limit=ah.grh.hop_limit,
                             traffic_class=ah.grh.traffic_class)
        a.ah_attr = AHAttr(dlid=ah.dlid, sl=ah.sl, src_path_bits=ah.src_path_bits,
                           static_rate=ah.static_rate, is_global=1 if ah.is_global else 0,
                           port_num=ah.port_num, gr=gr)
    return a


def _gid_str(raw: bytes) -> str:
    """pyverbs' GID text form: eight colon-separated 4-hex-digit groups."""
    h = raw.hex()
    return ":".join(h[i:i + 4] for i in range(0, 32, 4))
