#!/usr/bin/env bash
# On a CUDA machine: the device-dependent tests, then the speed benchmarks on the GPU, one table.
#   bash benchmarks/gpu_check.sh            (from the repository root, in the project's venv; < 5 min)
# Refuses (exit 2) where torch sees no GPU: on a CPU machine the same tests run in the normal suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)' ||
  { echo "gpu_check: torch in this python ($(command -v python)) sees no CUDA device (install a CUDA build of torch and onnxruntime-gpu)" >&2; exit 2; }
out=$(mktemp -d)
python -m pytest -q tests/test_device.py tests/test_executor_parity.py 2>&1 | tail -3 | tee "$out/tests.txt"
python benchmarks/executor_speed.py --reps 3 --out "$out/executor.json" > "$out/executor.txt"
python benchmarks/validate_speed.py --images 5000 --out "$out/validate.json" > "$out/validate.txt"
python benchmarks/repair_cost.py --out "$out/repair.json" > "$out/repair.txt"
python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
tests = (out / "tests.txt").read_text().strip().splitlines()[-1]
ex = json.loads((out / "executor.json").read_text())
val = json.loads((out / "validate.json").read_text())
rep = json.loads((out / "repair.json").read_text())
print("| check | device / provider | result |\n|---|---|---|")
print(f"| tests (device, parity) | {ex['env']['device']} | {tests} |")
for r in ex["rows"]:
    print(f"| executor / native, {r['arch']} {r['input']} BN {r['bn']} | {ex['env']['device']} | "
          f"eval {r['eval ratio']:.2f}x, train step {r['train step ratio']:.2f}x |")
print(f"| audit validate / bare session | {val['provider']} | {val['ratio evaluate / bare']:.2f} |")
for r in rep:
    print(f"| default repair, {r['file']} | {r['device']} | {r['default repair s']} s = "
          f"{r['default repair in steps']} steps |")
PY
