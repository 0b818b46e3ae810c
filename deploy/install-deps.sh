#!/bin/bash
# Install everything smbdd's tests and the soft-RoCE lab need, then create or reuse the
# project venv.  Idempotent and non-interactive; safe to run at the start of every CI job.
#
#   deploy/install-deps.sh                 # apt packages + venv at $SMBDD_VENV
#   SMBDD_SKIP_APT=1 deploy/install-deps.sh   # venv only
#
# Environment:
#   SMBDD_VENV    venv location (default /opt/smbdd/venv: the lab VM hides /var/cache)
#   SMBDD_EXTRAS  pip extras to install (default "test,lab")
# The venv is keyed by a hash of pyproject.toml and the interpreter version: when neither
# changed it is reused and only the (quick) editable install of the checkout is redone.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SMBDD_VENV:-/opt/smbdd/venv}"
EXTRAS="${SMBDD_EXTRAS:-test,lab}"
PYTHON=/usr/bin/python3   # Debian's: python3-pyverbs is built for it (see LAB.md)

# See /work/shared/LAB.md for why each is needed: Samba + clients as reference peers,
# rdma-core/pyverbs/perftest for SMB Direct, qemu + Debian's kernel (rdma_rxe) for the lab VM,
# kernel source/headers to rebuild cifs.ko/ksmbd with SMB Direct, fio for benchmarks.
# samba-vfs-modules (acl_xattr, streams_xattr) gives the smbtorture reference share NT ACLs
# and streams.  No Recommends, as in the verified lab install.
KERNEL=6.1.0-56-amd64
PACKAGES=(
  libnl-3-200 libnl-genl-3-200 libglib2.0-0   # ksmbd-tools 3.5.2 (deploy/lab/fetch-ksmbd-tools.sh)
  samba samba-vfs-modules smbclient samba-testsuite
  python3-pyverbs python3-venv
  rdma-core ibverbs-providers ibverbs-utils rdmacm-utils perftest
  qemu-system-x86 busybox-static cifs-utils iproute2
  "linux-image-$KERNEL" "linux-headers-$KERNEL" linux-source-6.1
  fio
)

now() { date +%s.%N; }
T0=$(now)
step_start=$T0
step() {  # step NAME: print the time the previous step took
  local t; t=$(now)
  awk -v n="$1" -v a="$step_start" -v b="$t" 'BEGIN {printf "[install-deps] %-28s %6.1f s\n", n, b - a}'
  step_start=$t
}

missing_packages() {
  # dpkg-query prints one status line per known package; unknown ones go to stderr.
  local installed
  installed=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${PACKAGES[@]}" 2>/dev/null \
              | awk '$2 == "installed" {print $1}')
  for p in "${PACKAGES[@]}"; do
    grep -qxF "$p" <<<"$installed" || echo "$p"
  done
}

if [[ -z "${SMBDD_SKIP_APT:-}" ]]; then
  mapfile -t MISSING < <(missing_packages)
  if ((${#MISSING[@]} == 0)); then
    echo "[install-deps] all ${#PACKAGES[@]} apt packages present"
  else
    echo "[install-deps] installing: ${MISSING[*]}"
    [[ $(id -u) == 0 ]] || { echo "[install-deps] need root for apt-get" >&2; exit 1; }
    apt-get update -q
    apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confdef \
      -o Dpkg::Options::=--force-confold "${PACKAGES[@]}"
    # The Debian samba package starts system daemons on port 445 where systemd runs; the
    # tests use private instances on free ports.  Stop the daemons only if we just
    # installed samba, never a Samba the machine already had.
    if [[ " ${MISSING[*]} " == *" samba "* ]] && command -v systemctl >/dev/null \
       && systemctl is-system-running >/dev/null 2>&1; then
      systemctl disable --now smbd nmbd samba-ad-dc 2>/dev/null || true
    fi
  fi
  step "apt"
fi

PIP_LOG=$(mktemp)   # pip's chatter, shown only on failure
trap 'rm -f "$PIP_LOG"' EXIT

KEY=$( { cat "$REPO/pyproject.toml"; "$PYTHON" -V; } | sha256sum | cut -c1-16)
if [[ -x "$VENV/bin/python" && "$(cat "$VENV/.smbdd-key" 2>/dev/null)" == "$KEY" ]]; then
  echo "[install-deps] reusing venv $VENV (key $KEY)"
  REUSED=1
else
  echo "[install-deps] creating venv $VENV (key $KEY)"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >"$PIP_LOG" 2>&1 \
    || { cat "$PIP_LOG" >&2; exit 1; }
  REUSED=0
fi
step "venv"

# Editable install of the checkout.  In a reused venv the dependencies are already those of
# this pyproject.toml (same key), so skip resolving them and the isolated build env: 1.2 s
# instead of 3 s.  pip's build chatter goes to a log shown only on failure.
if [[ $REUSED == 1 ]]; then
  PIP_ARGS=(--no-deps --no-build-isolation -e "$REPO")
else
  PIP_ARGS=(-e "$REPO[$EXTRAS]")
fi
if ! "$VENV/bin/python" -m pip install -q "${PIP_ARGS[@]}" >"$PIP_LOG" 2>&1; then
  cat "$PIP_LOG" >&2
  exit 1
fi
# Record the key only after a complete install, so a failed one is retried next time.
[[ $REUSED == 1 ]] || echo "$KEY" > "$VENV/.smbdd-key"
step "pip install -e .[$EXTRAS]"

"$VENV/bin/python" - <<'PY'
import importlib
for name in ("cryptography", "pytest", "smbprotocol", "impacket"):
    importlib.import_module(name)
try:
    import pyverbs  # noqa: F401  (from python3-pyverbs, seen through system site-packages)
    print("[install-deps] imports ok (pyverbs available)")
except ImportError:
    print("[install-deps] imports ok (pyverbs NOT importable)")
PY
awk -v a="$T0" -v b="$(now)" -v v="$VENV" 'BEGIN {printf "[install-deps] total %.1f s; venv: %s\n", b - a, v}'
