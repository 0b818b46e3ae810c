"""In-VM lab tests: they need the soft-RoCE device set up by deploy/lab/vm-setup.sh.

On any other machine they skip (run them through tests/lab/run.sh or tests/test_lab.py).

Two records go to $LAB_OUT as the run goes, for the host to report even when the VM is killed
before pytest writes its JUnit file: failures.txt (each failed test's report, when it fails)
and kernel-oops.txt (the guest kernel's BUG/Oops/panic lines, with the test during which they
appeared). A test during which the guest kernel oopsed is failed and the run stops there:
whatever it saw afterwards, and everything that would run later, runs on a broken kernel.
"""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

IN_LAB = Path("/sys/class/infiniband/rxe0").exists()
LAB_OUT = os.environ.get("LAB_OUT")
# What a kernel prints when it has hit a bug, not a warning: after these, results mean nothing.
KERNEL_BUG = re.compile(r"BUG: |Oops: |general protection fault|Kernel panic|kernel BUG at")
STAMP = re.compile(r"^\[\s*(\d+\.\d+)\]")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="needs the lab VM's rxe0 (run tests/lab/run.sh)")
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.lab)
            if not IN_LAB:
                item.add_marker(skip)


def _append(name: str, text: str) -> None:
    if LAB_OUT:
        with open(Path(LAB_OUT) / name, "a") as f:
            f.write(text)


def pytest_runtest_logreport(report):
    if report.failed:
        _append("failures.txt", f"== {report.nodeid} ({report.when})\n{report.longreprtext[-4000:]}\n\n")


def last_stamp(dmesg: str) -> float:
    """The time of the kernel log's last line (-1 when it has none)."""
    stamps = [float(m.group(1)) for line in dmesg.splitlines() if (m := STAMP.match(line))]
    return stamps[-1] if stamps else -1.0


def kernel_bug_since(dmesg: str, since: float) -> str | None:
    """The first bug report logged after ``since``, with the lines around it; None if none.
    Warnings do not count: they leave a working kernel (unpatched, 6.1's cifs.ko warned at
    umount that it could not drain its receive queue, on the way to the bug that followed)."""
    new = [line for line in dmesg.splitlines() if (m := STAMP.match(line)) and float(m.group(1)) > since]
    hit = next((i for i, line in enumerate(new) if KERNEL_BUG.search(line)), None)
    return None if hit is None else "\n".join(new[max(0, hit - 3):hit + 30])


def _dmesg() -> str:
    return subprocess.run(["dmesg"], capture_output=True, text=True).stdout


@pytest.fixture(autouse=True)
def guest_kernel_stays_sane(request):
    if not IN_LAB:
        yield
        return
    since = last_stamp(_dmesg())
    yield
    trace = kernel_bug_since(_dmesg(), since)
    if trace is not None:
        _append("kernel-oops.txt", f"== during {request.node.nodeid}\n{trace}\n\n")
        # Every later test would run on the broken kernel, each until its timeout: stop here,
        # so the run ends in minutes with its report rather than at the VM's time limit.
        request.session.shouldstop = "the guest kernel hit a bug"
        pytest.fail(f"the guest kernel hit a bug during this test:\n{trace}", pytrace=False)


@pytest.fixture(scope="session")
def lab_results():
    """A dict saved as $LAB_OUT/lab-results.json at the end (the host test reports it)."""
    results: dict = {}
    yield results
    if LAB_OUT:
        path = Path(LAB_OUT) / "lab-results.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        old.update(results)
        path.write_text(json.dumps(old, indent=2, sort_keys=True))
