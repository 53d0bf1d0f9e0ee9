"""Per-attack tables of `audit bench repair` results, as docs/repair.md shows them.

    python benchmarks/repair_summary.py cifar10 --methods=clp,bnp,nc

Reads docs/bench-repair.jsonl (the latest row of each job key), prints one table per file variant
(as built, BN-folded): ACC after / ASR after per model and method, bold where ASR <= 5 at an ACC
drop <= 3 points.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "bench-repair.jsonl"


def main(argv: list[str]) -> None:
    sets = [a for a in argv if not a.startswith("--methods=")] or ["cifar10"]
    only = next((a.split("=", 1)[1].split(",") for a in argv if a.startswith("--methods=")), None)
    rows = {}
    for line in RESULTS.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[r["key"]] = r
    ok = [r for r in rows.values() if r["status"] == "ok"]
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
                    good = r["after"]["asr"] is not None and r["after"]["asr"] <= 5 and \
                        r["before"]["acc"] - r["after"]["acc"] <= 3
                    cell = f"{r['after']['acc']:.2f} / {asr}"
                    cells.append(f"**{cell}**" if good else cell)
                if before is not None:
                    basr = "-" if before["asr"] is None else f"{before['asr']:.2f}"
                    print(f"| {model.split('/')[1]} | {before['acc']:.2f} / {basr} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
