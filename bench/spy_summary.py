"""Summarise py-spy's collapsed stacks (``py-spy record --format raw``): the functions with the
most samples, on top of the stack (self) and anywhere in it (inclusive).

    python -m bench.spy_summary RESULTS/read1-proxy.txt [--top 25]
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def summarise(lines) -> tuple[int, Counter, Counter]:
    """(total samples, samples per function on top of the stack, samples per function anywhere)."""
    total, own, inclusive = 0, Counter(), Counter()
    for line in lines:
        line = line.rstrip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):  # a recursive function counts once per sample
            inclusive[frame] += n
    return total, own, inclusive


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    total, own, inclusive = summarise(args.file.read_text().splitlines())
    print(f"{total} samples")
    for title, counts in (("self", own), ("inclusive", inclusive)):
        print(f"--- {title}")
        for frame, n in counts.most_common(args.top):
            print(f"{100 * n / max(total, 1):5.1f}% {frame}")


if __name__ == "__main__":
    main()
