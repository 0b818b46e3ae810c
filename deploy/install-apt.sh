#!/bin/bash
# The apt step of install-deps.sh: install every Debian package smbdd, its tests and the soft-RoCE
# lab need.  It fails towards installing: a package is treated as present only when dpkg reports
# it fully installed (at the required version, for the kernel source), and whenever that can't
# be told, apt-get install runs.  After installing, the check runs again: a package that is still
# missing stops the run with its name and never counts as present.
#
#   deploy/install-apt.sh            # check, then apt-get update + install what is missing
#   deploy/install-apt.sh --list     # print the package list and exit
#
# Environment: SMBDD_LAB_KVER (the lab kernel's ABI, default 6.1.0-56-amd64),
#   SMBDD_POLICY_RC_D (default /usr/sbin/policy-rc.d: see "No daemons" below).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

KERNEL=${SMBDD_LAB_KVER:-6.1.0-56-amd64}
# See shared/LAB.md for why each is needed: Samba + clients as reference peers, rdma-core/pyverbs/
# perftest for SMB Direct, qemu + Debian's kernel (rdma_rxe) for the lab VM, kernel source and
# headers to rebuild cifs.ko/ksmbd with SMB Direct (with gcc, make, xz), fio for benchmarks.
# samba-vfs-modules (acl_xattr, streams_xattr) gives the smbtorture reference share NT ACLs and
# streams.  MIT's KDC and python3-gssapi (MIT's GSSAPI through the system site-packages, like
# pyverbs) for SPNEGO with Kerberos (smbd.auth.kerberos).  python3-dev and gcc let pip build packages that ship no wheel.  No Recommends, as in
# the verified lab install: whatever a minimal Debian 12 lacks is named here.
PACKAGES=(
  python3 python3-venv python3-dev python3-pyverbs
  gcc make libc6-dev xz-utils kmod procps ca-certificates
  libnl-3-200 libnl-genl-3-200 libglib2.0-0   # ksmbd-tools 3.5.2 (deploy/lab/fetch-ksmbd-tools.sh)
  samba samba-vfs-modules smbclient samba-testsuite
  rdma-core ibverbs-providers ibverbs-utils rdmacm-utils perftest
  qemu-system-x86 busybox-static file cifs-utils iproute2   # virtme-ng runs file(1) on busybox
  "linux-image-$KERNEL" "linux-headers-$KERNEL" linux-source-6.1
  fio
  krb5-kdc krb5-admin-server krb5-user python3-gssapi   # Kerberos: a test KDC, kinit, the acceptor
)
# linux-source-6.1 is one package for every 6.1 ABI: apt's newest may belong to a later kernel
# than the lab's (6.1.192-3 is ABI -57 while linux-image-6.1.0-56 is 6.1.192-2).  cifs.ko is
# built from that tarball against linux-headers-$KERNEL, so it must be the image's own version.
SOURCE_PKG=linux-source-6.1
IMAGE_PKG=linux-image-$KERNEL

log() { echo "[install-deps] $*"; }
die() { echo "[install-deps] ERROR: $*" >&2; exit 1; }

if [[ ${1:-} == --list ]]; then
  printf '%s\n' "${PACKAGES[@]}"
  exit 0
fi

# "NAME VERSION" for each package dpkg has fully installed.  dpkg-query exits non-zero when any
# name is unknown to it, which on a fresh machine is most of them: that is an answer (those are
# missing), not a failure, so its output is used whatever its exit status.  If dpkg-query can't
# run at all the output is empty and everything counts as missing.
installed_packages() {
  { dpkg-query -W -f='${Package} ${Version} ${db:Status-Status}\n' "${PACKAGES[@]}" 2>/dev/null || true; } \
    | awk '$3 == "installed" {print $1, $2}'
}

# "missing NAME" or "present NAME" for every package of the list, in order.
package_verdicts() {
  local -A version=()
  local name ver p
  while read -r name ver; do
    [[ -n $name ]] && version[$name]=$ver
  done <<<"$(installed_packages)"
  for p in "${PACKAGES[@]}"; do
    if [[ -z ${version[$p]:-} ]]; then
      echo "missing $p"
    elif [[ $p == "$SOURCE_PKG" && ${version[$p]} != "${version[$IMAGE_PKG]:-}" ]]; then
      echo "missing $p"   # another kernel's source, or the image is missing too
    else
      echo "present $p"
    fi
  done
}

# The packages to install, one a line.  The check must answer for every package, or all of them
# are taken as missing: a check that died half-way (the bug this file once had: an empty answer
# read as "nothing missing") can only cost an apt-get install that finds nothing to do.
missing_packages() {
  local verdicts
  verdicts=$(package_verdicts) || verdicts=
  if [[ $(grep -cE '^(missing|present) ' <<<"$verdicts") != "${#PACKAGES[@]}" ]]; then
    printf '%s\n' "${PACKAGES[@]}"
    return
  fi
  awk '$1 == "missing" {print $2}' <<<"$verdicts"
}

# The version linux-source-6.1 must have: the installed image's, else the one apt would install.
image_version() {
  local v
  v=$({ dpkg-query -W -f='${Version} ${db:Status-Status}' "$IMAGE_PKG" 2>/dev/null || true; } \
      | awk '$2 == "installed" {print $1}')
  [[ -n $v ]] || v=$(apt-cache policy "$IMAGE_PKG" 2>/dev/null | awk '/Candidate:/ {print $2}')
  [[ $v == "(none)" ]] && v=
  echo "$v"
}

# Whether apt offers package $1 at version $2.
apt_has_version() {
  apt-cache madison "$1" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' | grep -qxF "$2"
}

# Packages of the list that apt has no candidate for: what to name when an install fails.
uninstallable() {
  local p cand
  for p in "$@"; do
    cand=$(apt-cache policy "${p%%=*}" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [[ -z $cand || $cand == "(none)" ]]; then
      echo "${p%%=*}"
    elif [[ $p == *=* ]] && ! apt_has_version "${p%%=*}" "${p#*=}"; then
      echo "$p"
    fi
  done
}

MISSING=()
while read -r p; do [[ -n $p ]] && MISSING+=("$p"); done <<<"$(missing_packages)"
if ((${#MISSING[@]} == 0)); then
  log "all ${#PACKAGES[@]} apt packages present"
  exit 0
fi
log "missing ${#MISSING[@]} of ${#PACKAGES[@]} apt packages: ${MISSING[*]}"
[[ $(id -u) == 0 ]] || die "step apt-get install needs root (missing: ${MISSING[*]})"

# When something is missing the package lists may be stale or absent (a fresh machine has none):
# refresh them every time, it costs seconds.
log "apt-get update"
apt-get update -q || die "step apt-get update failed (check /etc/apt/sources.list and the network)"

REQUEST=()
for p in "${MISSING[@]}"; do
  if [[ $p == "$SOURCE_PKG" ]]; then
    v=$(image_version)
    if [[ -n $v ]] && apt_has_version "$SOURCE_PKG" "$v"; then
      p="$SOURCE_PKG=$v"
    else
      log "warning: no $SOURCE_PKG of $IMAGE_PKG's version (${v:-unknown}); taking apt's newest"
    fi
  fi
  REQUEST+=("$p")
done

# No daemons: installing samba starts smbd on port 445 (systemd or /etc/init.d both ask
# policy-rc.d first).  The tests run private instances on free ports, and a machine that just
# installed samba for them should not serve anything.  An existing policy-rc.d is left alone.
POLICY=${SMBDD_POLICY_RC_D:-/usr/sbin/policy-rc.d}
if [[ ! -e $POLICY ]]; then
  printf '#!/bin/sh\n# written by smbdd deploy/install-apt.sh for the length of its apt-get install\nexit 101\n' >"$POLICY"
  chmod 755 "$POLICY"
  trap 'rm -f "$POLICY"' EXIT
fi

log "apt-get install ${REQUEST[*]}"
if ! apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confdef \
     -o Dpkg::Options::=--force-confold "${REQUEST[@]}"; then
  bad=$(uninstallable "${REQUEST[@]}" | tr '\n' ' ')
  if [[ -n $bad ]]; then
    die "step apt-get install failed: apt has no candidate for: $bad(Debian 12 with bookworm-security in its sources?)"
  fi
  die "step apt-get install failed for: ${REQUEST[*]} (apt's message is above)"
fi

# The daemons are not running (policy-rc.d); keep them from starting at the next boot too, but only
# if this run installed samba, never a Samba the machine already had.
if [[ " ${MISSING[*]} " == *" samba "* ]] && command -v systemctl >/dev/null; then
  systemctl disable smbd nmbd samba-ad-dc >/dev/null 2>&1 || true
fi

STILL=()
while read -r p; do [[ -n $p ]] && STILL+=("$p"); done <<<"$(missing_packages)"
((${#STILL[@]} == 0)) || die "step apt-get install left these not installed: ${STILL[*]}"
log "installed ${#MISSING[@]} apt packages"
