"""The subunit v1 parser against real smbtorture streams and the grammar's edge cases."""
from __future__ import annotations

import subprocess
from pathlib import Path

from tests.torture.runner import SuiteRun
from tests.torture.subunit_v1 import Outcome, SubunitParser, parse

DATA = Path(__file__).with_name("data")


def _parse_file(name: str):
    return parse((DATA / name).read_text().splitlines())


def test_real_compound_stream():
    results = _parse_file("smb2.compound.subunit")
    assert len(results) == 19  # the stream has 19 "test:" lines
    assert results["smb2.compound.related1"].outcome is Outcome.SUCCESS
    interim2 = results["smb2.compound.interim2"]
    assert interim2.outcome is Outcome.FAILURE
    assert interim2.details == ("../../source4/torture/smb2/compound.c:1869: Incorrect status "
                                "NT_STATUS_CANCELLED - should be NT_STATUS_INTERNAL_ERROR")
    # Debug lines printed between test: and its outcome are not tests.
    assert all(name.startswith("smb2.compound.") for name in results)


def test_real_lock_stream_skips():
    results = _parse_file("smb2.lock.subunit")
    assert len(results) == 25
    skipped = sorted(n for n, r in results.items() if r.outcome is Outcome.SKIP)
    assert skipped == ["smb2.lock.ctdb-delrec-deadlock", "smb2.lock.replay_broken_windows",
                       "smb2.lock.rw-none"]
    assert "If target is not W2K8 we skip" in results["smb2.lock.rw-none"].details


def test_real_single_test_suite_with_tab_indented_noise():
    results = _parse_file("smb2.connect.subunit")
    assert list(results) == ["smb2.connect"]
    assert results["smb2.connect"].outcome is Outcome.SUCCESS


def test_chunked_feed_equals_line_feed():
    text = (DATA / "smb2.compound.subunit").read_text()
    parser = SubunitParser()
    for i in range(0, len(text), 7):  # chunks that cut lines and keywords apart
        parser.feed(text[i:i + 7])
    parser.close()
    expected = parse(text.splitlines())
    assert {n: (r.outcome, r.details) for n, r in parser.results.items()} == \
           {n: (r.outcome, r.details) for n, r in expected.items()}


def test_grammar_edge_cases():
    stream = "\n".join([
        "test: a",
        "error: a [",
        "line one",
        " ]",                      # escaped literal "]"
        "]",
        "testing: b",
        "xfail: b",
        "test: c",
        "skip: c [ not supported ]",   # one-line details form
        "test: d",
        "uxsuccess: d [ multipart",
        "body",
        "]",
        "test: e",                 # never finishes
    ])
    parser = SubunitParser()
    parser.feed(stream)
    parser.close()
    r = parser.results
    assert (r["a"].outcome, r["a"].details) == (Outcome.ERROR, "line one\n]")
    assert r["b"].outcome is Outcome.XFAIL and r["b"].outcome.passed
    assert (r["c"].outcome, r["c"].details) == (Outcome.SKIP, "not supported")
    assert r["d"].outcome is Outcome.UXSUCCESS and r["d"].outcome.failed
    assert "e" not in r and parser.unfinished() == ["e"]


def test_stream_cut_inside_details_keeps_the_outcome():
    parser = SubunitParser()
    parser.feed("test: x\nfailure: x [\npartial")
    parser.close()
    assert parser.results["x"].outcome is Outcome.FAILURE
    assert parser.results["x"].details == "partial"


def test_suite_run_summary_counts():
    results = _parse_file("smb2.compound.subunit")
    run = SuiteRun("smb2.compound", results, seconds=1.0, returncode=1, output_path=None)
    assert run.summary() == {"pass": 18, "fail": 1, "skip": 0}
    assert not run.crashed and not run.timed_out
    assert SuiteRun("s", {}, seconds=0, returncode=139, output_path=None).crashed
