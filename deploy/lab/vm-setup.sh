#!/usr/bin/env bash
# Runs INSIDE the lab VM (as root) before the test command, or on the machine itself when its
# kernel has RDMA (vm-run.sh's native mode): soft-RoCE on a private veth pair and the SMB Direct
# cifs.ko.  Nothing here touches a real network: the veth pair is private, and the VM has no NIC.
# Facts behind each step: shared/LAB.md.
#
# Environment: LAB_CIFS_KO / LAB_KSMBD_KO = the SMB Direct cifs.ko / ksmbd.ko to load (each
# optional: skipped if unset).
set -euo pipefail
log() { printf '[vm-setup] %s\n' "$*" >&2; }

modprobe -a rdma_rxe rdma_ucm ib_uverbs
ip link set lo up
if ! ip link show veth0 >/dev/null 2>&1; then
    # Four queues each: the server reports the interfaces RSS-capable (as ksmbd decides it), and
    # only then does cifs.ko open several channels (multichannel) to one address.
    ip link add veth0 numtxqueues 4 numrxqueues 4 type veth peer name veth1 numtxqueues 4 numrxqueues 4
fi
ip addr replace 10.77.0.1/24 dev veth0
# A second local address with no RDMA behind it, for TCP multichannel: cifs.ko never mixes RDMA
# and TCP interfaces in one session. /32: no second route to the lab's /24.
ip addr replace 10.77.0.2/32 dev veth1
ip link set veth0 up
ip link set veth1 up
# rxe in 6.1 is not netns-aware: server and client both use rxe0 in the root namespace and the
# client connects to 10.77.0.1, which rxe loops back.
if ! rdma link show rxe0/1 >/dev/null 2>&1; then
    rdma link add rxe0 type rxe netdev veth0
fi
# RoCE v2 GIDs appear once the netdev's address is known; wait for the IPv4-mapped one.
for _ in $(seq 50); do
    grep -qs '0000:0000:0000:0000:0000:ffff:0a4d:0001' /sys/class/infiniband/rxe0/ports/1/gids/* && break
    sleep 0.1
done
log "rdma: $(rdma link show rxe0/1 2>&1)"

if [[ -n ${LAB_CIFS_KO:-} ]]; then
    # cifs.ko's dependencies come from the stock kernel; the SMB Direct build replaces only cifs.
    modprobe -a ib_core rdma_cm fscache cifs_md4 cifs_arc4 dns_resolver
    # Natively (vm-run.sh without a VM) the stock cifs may be loaded: swap it out if unused.
    if grep -q '^cifs ' /proc/modules && ! grep -qs SMB_DIRECT /proc/fs/cifs/DebugData; then
        rmmod cifs 2>/dev/null || log "WARNING: a cifs module without SMB Direct is loaded and in use"
    fi
    if ! grep -q '^cifs ' /proc/modules; then
        insmod "$LAB_CIFS_KO"
    fi
    grep -q SMB_DIRECT /proc/fs/cifs/DebugData && log "cifs.ko loaded with SMB_DIRECT" \
        || log "WARNING: cifs loaded without SMB_DIRECT"
fi

# ksmbd.ko loaded here is idle: it opens its TCP and RDMA listeners (port 445, as smbdd's proxy)
# only when ksmbd.mountd starts the server.  The command starts/stops it and may unload it
# (bench/rdma_lab_inner.sh keeps it out while smbdd runs); ksmbd-tools >= 3.5 come from
# deploy/lab/fetch-ksmbd-tools.sh through the results folder.
if [[ -n ${LAB_KSMBD_KO:-} ]]; then
    modprobe -a ib_core rdma_cm cifs_arc4
    grep -q '^ksmbd ' /proc/modules || insmod "$LAB_KSMBD_KO"
    log "ksmbd.ko loaded ($(cat /sys/module/ksmbd/srcversion 2>/dev/null || echo '?'))"
fi
