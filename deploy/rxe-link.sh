#!/bin/sh
# rxe-link.sh up|down NETDEV: the soft-RoCE device rxe_NETDEV on NETDEV (rdma link add), once.
# Used by deploy/systemd/smbdd-rxe@.service; "up" on a device that exists is a success.
set -eu
action=${1:?usage: rxe-link.sh up|down NETDEV}
netdev=${2:?usage: rxe-link.sh up|down NETDEV}
dev="rxe_$netdev"
case $action in
  up)
    modprobe rdma_rxe
    if rdma link show "$dev/1" >/dev/null 2>&1; then
      echo "rxe-link: $dev already on $netdev"
    else
      rdma link add "$dev" type rxe netdev "$netdev"
      echo "rxe-link: $dev added on $netdev"
    fi ;;
  down)
    if rdma link show "$dev/1" >/dev/null 2>&1; then
      rdma link delete "$dev"
    fi ;;
  *) echo "usage: rxe-link.sh up|down NETDEV" >&2; exit 2 ;;
esac
