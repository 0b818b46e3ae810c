"""In-VM lab tests: they need the soft-RoCE device set up by deploy/lab/vm-setup.sh.

On any other machine they skip (run them through tests/lab/run.sh or tests/test_lab.py).
"""
import json
import os
from pathlib import Path

import pytest

IN_LAB = Path("/sys/class/infiniband/rxe0").exists()


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="needs the lab VM's rxe0 (run tests/lab/run.sh)")
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.lab)
            if not IN_LAB:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def lab_results():
    """A dict saved as $LAB_OUT/lab-results.json at the end (the host test reports it)."""
    results: dict = {}
    yield results
    out = os.environ.get("LAB_OUT")
    if out:
        path = Path(out) / "lab-results.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        old.update(results)
        path.write_text(json.dumps(old, indent=2, sort_keys=True))
