"""Per-attack tables of `audit bench repair` results, as docs/repair.md shows them.

    python benchmarks/repair_summary.py cifar10 --methods=clp,bnp,nc
    python benchmarks/repair_summary.py mnist --per-method

Reads docs/bench-repair.jsonl (the latest row of each job key), prints one table per file variant
(as built, BN-folded): ACC after / ASR after per model and method, bold where ASR <= 5 at an ACC
drop <= 3 points. ``--per-method`` prints one row per method instead: on how many of the
dirty-label all-to-one files it ran it meets that bar, its mean ACC drop and ASR after over them,
the same for the all-to-all files, and the mean drop on the clean models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from backdoor_audit.bench.repair import meets_bar

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "bench-repair.jsonl"


def main(argv: list[str]) -> None:
    sets = [a for a in argv if not a.startswith("--")] or ["cifar10"]
    only = next((a.split("=", 1)[1].split(",") for a in argv if a.startswith("--methods=")), None)
    rows = {}
    for line in RESULTS.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[r["key"]] = r
    ok = [r for r in rows.values() if r["status"] == "ok"]
    if "--per-method" in argv:
        for s in sets:
            per_method(s, [r for r in ok if r["set"] == s and (only is None or r["method"] in only)])
        return
    for s in sets:
        rs = [r for r in ok if r["set"] == s and (only is None or r["method"] in only)]
        methods = only or sorted({r["method"] for r in rs})
        models = sorted({r["model"] for r in rs}, key=lambda m: ("a2a" in m, "clean" in m, m))
        for variant in ("as built", "folded"):
            print(f"\n{s}, {variant}: ACC / ASR after (before in the first column; bold: ASR <= 5, drop <= 3)\n")
            print("| model | before | " + " | ".join(f"`{m}`" for m in methods) + " |")
            print("|---|---|" + "---|" * len(methods))
            for model in models:
                cells, before = [], None
                for method in methods:
                    hit = [r for r in rs if r["model"] == model and r["variant"] == variant and r["method"] == method]
                    if not hit:
                        cells.append("")
                        continue
                    r = hit[-1]
                    before = r["before"]
                    asr = "-" if r["after"]["asr"] is None else f"{r['after']['asr']:.2f}"
                    good = meets_bar(r)
                    cell = f"{r['after']['acc']:.2f} / {asr}"
                    cells.append(f"**{cell}**" if good else cell)
                if before is not None:
                    basr = "-" if before["asr"] is None else f"{before['asr']:.2f}"
                    print(f"| {model.split('/')[1]} | {before['acc']:.2f} / {basr} | " + " | ".join(cells) + " |")


def per_method(s: str, rs: list[dict]) -> None:
    """One row per (variant, method): the bar met on the dirty-label all-to-one files and all-to-all
    files it ran on, mean drop and ASR after; mean drop on the clean models."""
    print(f"\n{s}: per method (bar: ASR <= 5 at a drop <= 3; drop and ASR are means over the files counted)\n")
    print("| file | method | all-to-one dirty-label: met | drop | ASR | all-to-all: met | clean models: drop |")
    print("|---|---|---|---|---|---|---|")
    for variant in ("as built", "folded"):
        for method in sorted({r["method"] for r in rs if r["variant"] == variant}):
            mine = [r for r in rs if r["variant"] == variant and r["method"] == method]
            one = [r for r in mine if r["mode"] == "all-to-one" and r["attack"] not in ("sig", "clb", "refool")]
            a2a = [r for r in mine if r["mode"] == "all-to-all"]
            clean = [r for r in mine if r["attack"] == "clean"]
            drop = lambda g: f"{sum(r['before']['acc'] - r['after']['acc'] for r in g) / len(g):.2f}" if g else ""  # noqa: E731
            asr = f"{sum(r['after']['asr'] for r in one) / len(one):.2f}" if one else ""
            print(f"| {variant} | `{method}` | {sum(map(meets_bar, one))} of {len(one)} | {drop(one)} | {asr} | "
                  f"{sum(map(meets_bar, a2a))} of {len(a2a)} | {drop(clean)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
