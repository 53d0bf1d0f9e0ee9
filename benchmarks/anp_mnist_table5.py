"""Reproduce ANP's appendix Table 5 on real MNIST: one command, prints a Markdown table.

    python benchmarks/anp_mnist_table5.py [--work runs/table5] [--data ../shared/data/mnist.npz]

The appendix's 5-layer fully-connected network (`mnist-fc`: 4 hidden layers of 500, 2000 neurons,
the output layer left alone), BadNets with a 3x3 white square at the bottom right, 10% poisoned,
target 0, trained on the attacker's 90% of the MNIST training set; the defender gets 500 clean
images of the other 10%; ANP with the appendix's MNIST settings (alpha 0.5, eps 0.3) on the whole
model; ACC/ASR under onnxruntime on the 10,000 test images. The same protocol as Table 6
(`anp_mnist_table6.py`), whose helper runs each step as its own `audit` process.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anp_mnist_table6 import audit, parse_args, suspect_model  # noqa: E402

PAPER = {"before": dict(neurons=0, asr=100.00, acc=98.08), "anp": dict(neurons=560, asr=1.93, acc=93.86)}


def main() -> None:
    args = parse_args(__doc__, "table5", alpha="0.5", eps="0.3")  # the appendix's MNIST settings
    work = Path(args.work)
    suspect, clean = suspect_model(args, "mnist-fc")
    test = ["--data", args.data, "--split", "test", "--attack", str(suspect)]
    before = audit("validate", str(suspect), *test)
    out = work / f"anp-{args.alpha}-{args.eps}-{args.noise_bound}.onnx"
    rep = audit("repair", str(suspect), "--data", str(clean), "--method", "anp", "--param", f"alpha={args.alpha}",
                "--param", f"eps={args.eps}", "--param", f"noise_bound={args.noise_bound}",
                "--param", f"iterations={args.iterations}", "--seed", args.seed, "--out", str(out))
    after = audit("validate", str(out), *test)

    print(f"ANP alpha={args.alpha}, eps={args.eps}, noise bound {args.noise_bound}, {args.iterations} iterations, "
          f"threshold 0.2, 500 clean images; ours / paper\n")
    print("| | Before | ANP |")
    print("|---|---|---|")
    print(f"| Neurons pruned | 0 / 0 | {len(rep['pruned'])} / {PAPER['anp']['neurons']} |")
    print(f"| Total | {rep['units']} / 2000 | {rep['units']} / 2000 |")
    for key in ("asr", "acc"):
        print(f"| {key.upper()} (%) | {before[key]:.2f} / {PAPER['before'][key]:.2f} "
              f"| {after[key]:.2f} / {PAPER['anp'][key]:.2f} |")
    print(f"\nANP: {rep['seconds']:.1f} s, {rep['log']['iterations_per_second']:.1f} iterations/s, "
          f"peak RSS {rep['peak_rss_mb']:.0f} MB, onnxruntime parity {rep['parity_max_abs']:.1e}")


if __name__ == "__main__":
    main()
