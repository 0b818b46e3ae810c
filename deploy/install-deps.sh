#!/bin/bash
# Install everything smbdd's tests and the soft-RoCE lab need (the apt packages through
# deploy/install-apt.sh), then create or reuse the project venv.  Idempotent and non-interactive;
# safe to run at the start of every CI job.  A failed step stops the run with a line naming it.
#
#   deploy/install-deps.sh                 # apt packages + venv at $SMBDD_VENV
#   SMBDD_SKIP_APT=1 deploy/install-deps.sh   # venv only
#
# Environment:
#   SMBDD_VENV    venv location (default /opt/smbdd/venv: the lab VM hides /var/cache)
#   SMBDD_EXTRAS  pip extras to install (default "test,lab")
# The venv is keyed by a hash of pyproject.toml, the interpreter version and VENV_RECIPE: when
# none changed it is reused and only the (quick) editable install of the checkout is redone.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SMBDD_VENV:-/opt/smbdd/venv}"
EXTRAS="${SMBDD_EXTRAS:-test,lab}"
PYTHON=/usr/bin/python3   # Debian's: python3-pyverbs is built for it (see LAB.md)

now() { date +%s.%N; }
T0=$(now)
step_start=$T0
step() {  # step NAME: print the time the previous step took
  local t; t=$(now)
  awk -v n="$1" -v a="$step_start" -v b="$t" 'BEGIN {printf "[install-deps] %-28s %6.1f s\n", n, b - a}'
  step_start=$t
}

if [[ -z "${SMBDD_SKIP_APT:-}" ]]; then
  bash "$REPO/deploy/install-apt.sh"
  step "apt"
fi

die() { echo "[install-deps] ERROR: $*" >&2; exit 1; }

PIP_LOG=$(mktemp)   # pip's chatter, shown only on failure
trap 'rm -f "$PIP_LOG"' EXIT

# Bump VENV_RECIPE when the way the venv is made changes, so old venvs are made again.
VENV_RECIPE=2   # 2: setuptools and wheel installed into the venv
KEY=$( { cat "$REPO/pyproject.toml"; "$PYTHON" -V; echo "recipe $VENV_RECIPE"; } | sha256sum | cut -c1-16)
if [[ -x "$VENV/bin/python" && "$(cat "$VENV/.smbdd-key" 2>/dev/null)" == "$KEY" ]]; then
  echo "[install-deps] reusing venv $VENV (key $KEY)"
  REUSED=1
else
  echo "[install-deps] creating venv $VENV (key $KEY)"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  [[ -x $PYTHON ]] || die "step venv: no $PYTHON (apt package python3)"
  "$PYTHON" -m venv --system-site-packages "$VENV" \
    || die "step venv: $PYTHON -m venv failed (apt package python3-venv)"
  # setuptools and wheel in the venv itself: a reused venv installs the checkout with
  # --no-build-isolation (below), which builds with what the venv has.  A minimal Debian has
  # no python3-wheel for the system site-packages to lend.
  "$VENV/bin/python" -m pip install -q --upgrade pip "setuptools>=61" wheel >"$PIP_LOG" 2>&1 \
    || { cat "$PIP_LOG" >&2; die "step venv: pip install --upgrade pip setuptools wheel failed (log above)"; }
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
  die "step pip install ${PIP_ARGS[*]} failed (pip's log above names the package)"
fi
# Record the key only after a complete install, so a failed one is retried next time.
[[ $REUSED == 1 ]] || echo "$KEY" > "$VENV/.smbdd-key"
step "pip install -e .[$EXTRAS]"

# pyverbs and gssapi come from python3-pyverbs and python3-gssapi through the system
# site-packages: once apt has installed them, a venv that can't import them is broken (made by
# another interpreter, say), not "no RDMA" or "no Kerberos".
SMBDD_NEED_PYVERBS=$([[ -z ${SMBDD_SKIP_APT:-} ]] && echo 1 || echo 0) "$VENV/bin/python" - <<'PY' \
  || die "step imports: the venv $VENV cannot import what it needs (above)"
import importlib, os, sys
names = ["cryptography", "posix_ipc", "lmdb", "pydantic", "prometheus_client", "psutil", "inotify_simple", "pytest", "smbprotocol", "impacket"]
if os.environ["SMBDD_NEED_PYVERBS"] == "1":
    names += ["pyverbs", "gssapi"]
failed = []
for name in names:
    try:
        importlib.import_module(name)
    except ImportError as e:
        failed.append(f"{name} ({e})")
if failed:
    sys.exit("[install-deps] cannot import: " + ", ".join(failed))
print("[install-deps] imports ok: " + ", ".join(names))
PY
awk -v a="$T0" -v b="$(now)" -v v="$VENV" 'BEGIN {printf "[install-deps] total %.1f s; venv: %s\n", b - a, v}'
