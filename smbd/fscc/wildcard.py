"""QUERY_DIRECTORY name patterns: FsRtlIsNameInExpression semantics (MS-FSA 2.1.4.4), always
case-insensitive (the server side of SMB2 is; MS-SMB2 3.3.5.18).

Pattern characters:

* ``*``  any run of characters (also none);
* ``?``  exactly one character;
* ``<``  (DOS_STAR) any run of characters up to, not including, the final ``.`` of the name
  (the whole name when it has no dot);
* ``>``  (DOS_QM) any one character; at a ``.`` or past the end of the name it matches nothing,
  so ``>>>`` fits a name part of up to three characters;
* ``"``  (DOS_DOT) a ``.``, or nothing past the end of the name;
* anything else matches itself, compared after per-character upper-casing (Windows compares
  with its 1:1 upcase table, so characters whose upper case is longer, like "ß", stay as they
  are).

Patterns with only ``*`` and ``?`` (what clients send nearly always) use the classic
two-pointer matcher that backtracks only to the last ``*``: O(len(pattern) * len(name)) at
worst, linear in practice.  Patterns with DOS wildcards run a set-of-states NFA over pattern
positions, also O(len(pattern) * len(name)).  Neither backtracks exponentially, so a hostile
pattern like ``*a*a*a*a*b`` costs nothing special (a regex would).
"""
from __future__ import annotations

from functools import lru_cache

WILDCARD_CHARS = frozenset('*?<>"')


def _upcase(s: str) -> str:
    if s.isascii():
        return s.upper()
    out = []
    for ch in s:
        up = ch.upper()
        out.append(up if len(up) == 1 else ch)
    return "".join(out)


def has_wildcards(pattern: str) -> bool:
    return not WILDCARD_CHARS.isdisjoint(pattern)


@lru_cache(maxsize=256)
def _prepared(pattern: str) -> str:
    return _upcase(pattern)


def match(pattern: str, name: str) -> bool:
    """True when ``name`` matches ``pattern`` (see the module docstring)."""
    if pattern == "*":
        return True
    pat = _prepared(pattern)
    nm = _upcase(name)
    if not has_wildcards(pat):
        return pat == nm
    if not _has_dos_wildcards(pat):
        return _match_star_question(pat, nm)
    return _match_nfa(pat, nm)


def _has_dos_wildcards(pat: str) -> bool:
    return "<" in pat or ">" in pat or '"' in pat


def _match_star_question(pat: str, nm: str) -> bool:
    """'*' and '?' only: advance both strings, and on a mismatch retry from the last '*' with
    it swallowing one more character."""
    p = n = 0
    star_p = -1
    star_n = 0
    plen, nlen = len(pat), len(nm)
    while n < nlen:
        if p < plen and (pat[p] == "?" or pat[p] == nm[n]):
            p += 1
            n += 1
        elif p < plen and pat[p] == "*":
            star_p, star_n = p, n
            p += 1
        elif star_p >= 0:
            star_n += 1
            p, n = star_p + 1, star_n
        else:
            return False
    while p < plen and pat[p] == "*":
        p += 1
    return p == plen


def _match_nfa(pat: str, nm: str) -> bool:
    plen = len(pat)
    final_dot = nm.rfind(".")

    def closure(states: set[int], i: int) -> set[int]:
        # Follow the moves that consume nothing at name position i.
        at_end = i == len(nm)
        at_dot = not at_end and nm[i] == "."
        todo = list(states)
        while todo:
            p = todo.pop()
            if p >= plen:
                continue
            t = pat[p]
            if t in "*<" or (t == ">" and (at_end or at_dot)) or (t == '"' and at_end):
                if p + 1 not in states:
                    states.add(p + 1)
                    todo.append(p + 1)
        return states

    states = closure({0}, 0)
    for i, c in enumerate(nm):
        nxt: set[int] = set()
        for p in states:
            if p >= plen:
                continue
            t = pat[p]
            if t == "*":
                nxt.add(p)
            elif t == "<":
                if i != final_dot:
                    nxt.add(p)
            elif t == "?":
                nxt.add(p + 1)
            elif t == ">":
                if c != ".":
                    nxt.add(p + 1)
            elif t == '"':
                if c == ".":
                    nxt.add(p + 1)
            elif t == c:
                nxt.add(p + 1)
        if not nxt:
            return False
        states = closure(nxt, i + 1)
    return plen in states
