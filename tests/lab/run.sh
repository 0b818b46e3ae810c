#!/usr/bin/env bash
# Host-side launcher of the lab tests: boots the VM once (deploy/lab/vm-run.sh) and inside it
# 1) measures the raw verbs baseline (ib_send_lat over rdma_cm, 64 B) and
# 2) runs pytest on tests/lab with a JUnit report, each test stopped after 300 s, so that one hung
#    test fails alone instead of the whole VM being killed with no report.
# Results (console log, junit.xml, lab-results.json, ib_send_lat.txt, timings.txt, and
# failures.txt / kernel-oops.txt written as tests fail: see tests/lab/conftest.py) go to
# $SMBDD_LAB_OUT (default: a new /tmp/smbdd-lab.XXXXXX), printed as LAB_OUT=... at the end.
# Extra arguments are passed to pytest (e.g. -k echo).  Exit status: pytest's (77: no lab here).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
pytest_args=
(($#)) && pytest_args=$(printf ' %q' "$@")
inner='
set -u
# Raw verbs baseline in this very boot: perftest over rdma_cm on rxe0.
timeout 60 ib_send_lat -R -s 64 -n 1000 >"$LAB_OUT/ib_send_lat_server.txt" 2>&1 &
sleep 1
timeout 60 ib_send_lat -R -s 64 -n 1000 10.77.0.1 >"$LAB_OUT/ib_send_lat.txt" 2>&1 || echo "ib_send_lat failed: $?" >&2
wait
"$LAB_PYTHON" -m pytest -p no:cacheprovider -o addopts= -v -rs --timeout 300 --junitxml="$LAB_OUT/junit.xml" tests/lab'"$pytest_args"'
'
exec "$repo/deploy/lab/vm-run.sh" "$inner"
