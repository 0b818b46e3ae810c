"""A small parser for subunit protocol v1, the text stream `smbtorture --format=subunit` writes.

Grammar (python-subunit's README, "version 1"; what smbtorture's lib/torture/subunit.c emits):

    test: NAME                      a test starts ("testing:" and "test" also allowed)
    success: NAME                   outcome; also "successful:"
    failure: NAME [                 outcome with a details block, ended by a line "]";
    ...details...                   a literal "]" inside details is written " ]"
    ]
    error: / skip: / xfail: / uxsuccess: NAME [ details ]
    time: / progress: / tags:       ignored here

Any other line (smbtorture prints debug output on the same stream) is ignored outside a
details block.  A test that starts and never gets an outcome is reported by
:meth:`SubunitParser.unfinished`; the runner decides whether that was a crash or a timeout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable


class Outcome(str, Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"
    SKIP = "skip"
    XFAIL = "xfail"
    UXSUCCESS = "uxsuccess"
    # Not in subunit: assigned by the runner to a test that never finished.
    CRASH = "crash"
    TIMEOUT = "timeout"
    INCOMPLETE = "incomplete"

    @property
    def passed(self) -> bool:
        return self in (Outcome.SUCCESS, Outcome.XFAIL)

    @property
    def failed(self) -> bool:
        return self in (Outcome.FAILURE, Outcome.ERROR, Outcome.UXSUCCESS, Outcome.CRASH,
                        Outcome.TIMEOUT, Outcome.INCOMPLETE)


_START_KEYWORDS = ("test:", "testing:", "test ")
_OUTCOME_KEYWORDS = {
    "success:": Outcome.SUCCESS, "successful:": Outcome.SUCCESS,
    "failure:": Outcome.FAILURE, "fail:": Outcome.FAILURE,
    "error:": Outcome.ERROR, "skip:": Outcome.SKIP, "xfail:": Outcome.XFAIL,
    "uxsuccess:": Outcome.UXSUCCESS,
}


@dataclass(slots=True)
class TestResult:
    name: str
    outcome: Outcome
    details: str = ""


@dataclass
class SubunitParser:
    """Feed lines (or text chunks) in; read :attr:`results` (name -> TestResult) out."""

    results: dict[str, TestResult] = field(default_factory=dict)
    _started: list[str] = field(default_factory=list)
    _details_for: TestResult | None = None
    _details: list[str] = field(default_factory=list)
    _partial: str = ""

    def feed(self, text: str) -> None:
        """Accept any chunk of the stream; incomplete last lines wait for the next chunk."""
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.feed_line(line)

    def close(self) -> None:
        if self._partial:
            self.feed_line(self._partial)
            self._partial = ""
        if self._details_for is not None:  # stream cut inside a details block
            self._end_details()

    def feed_line(self, line: str) -> None:
        line = line.rstrip("\r")
        if self._details_for is not None:
            if line == "]":
                self._end_details()
            else:
                # " ]" is the escaped form of a literal "]" line.
                self._details.append("]" if line == " ]" else line)
            return
        for keyword in _START_KEYWORDS:
            if line.startswith(keyword):
                self._started.append(line[len(keyword):].strip())
                return
        for keyword, outcome in _OUTCOME_KEYWORDS.items():
            if line.startswith(keyword):
                self._outcome(line[len(keyword):], outcome)
                return

    def _outcome(self, rest: str, outcome: Outcome) -> None:
        rest = rest.strip()
        details = ""
        opens_details = rest.endswith("[") or rest.endswith("[ multipart")
        if opens_details:  # block form; "[ multipart" blocks also end with a "]" line
            name = rest[:rest.rindex("[")].rstrip()
        elif rest.endswith("]") and " [" in rest:  # one-line form "NAME [ reason ]"
            name, _, details = rest[:-1].partition(" [")
            details = details.strip()
        else:
            name = rest
        result = TestResult(name, outcome, details)
        self.results[name] = result
        if name in self._started:
            self._started.remove(name)
        if opens_details:
            self._details_for = result
            self._details = []

    def _end_details(self) -> None:
        assert self._details_for is not None
        self._details_for.details = "\n".join(self._details)
        self._details_for = None
        self._details = []

    def unfinished(self) -> list[str]:
        """Tests that started and have no outcome yet, oldest first."""
        return list(self._started)


def parse(lines: Iterable[str]) -> dict[str, TestResult]:
    parser = SubunitParser()
    for line in lines:
        parser.feed_line(line)
    parser.close()
    return parser.results
