"""Per-seed paired AP differences across bench directories (variants run with different --set).

    python benchmarks/paired.py bench/sweep bench/sweep-geometric:mssr=mssr(geometric) ...

Each argument is a bench directory (with bench.json), optionally followed by ``:old=new`` to rename
a strategy of that bench (a variant of the same preset). Prints the mean AP per strategy, budget and
order, and the paired differences against uniform and fixed (bench.paired_md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from forgetless.bench import paired_md


def load(args: list[str]) -> tuple[list[dict], list[str]]:
    runs, names = [], []
    for a in args:
        path, _, rename = a.partition(":")
        old, _, new = rename.partition("=")
        for r in json.loads((Path(path) / "bench.json").read_text())["runs"]:
            r = dict(r)
            if old and r["strategy"] == old:
                r["strategy"] = new
            runs.append(r)
            if r["strategy"] not in names:
                names.append(r["strategy"])
    return runs, names


def main(args: list[str]) -> None:
    runs, names = load(args)
    print("| strategy | budget | order | AP per seed | mean AP |\n|---|---|---|---|---|")
    cells = sorted({(r["strategy"], r["budget"], r["order"]) for r in runs}, key=lambda c: (names.index(c[0]), c[1], c[2]))
    for s, b, o in cells:
        mine = sorted((r["seed"], r["ap"]) for r in runs if (r["strategy"], r["budget"], r["order"]) == (s, b, o))
        print(f"| {s} | {b:g} | {o} | {', '.join(f'{a:.3f}' for _, a in mine)} | {np.mean([a for _, a in mine]):.3f} |")
    print()
    print(paired_md(runs, names))


if __name__ == "__main__":
    main(sys.argv[1:])
