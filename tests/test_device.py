"""The device-dependent path: torch's device and onnxruntime's provider are picked from what the
machine really has (CUDA when usable, else the CPU, with nothing printed), and the executor, a
repair and a scan run on that device with parity to onnxruntime. On a CPU machine this checks
the CPU path and that no CUDA error line appears; `benchmarks/gpu_check.sh` runs it on a GPU."""

from __future__ import annotations

import json

import numpy as np
import torch
from click.testing import CliRunner

from backdoor_audit.cli import main
from backdoor_audit.export.session import CUDA, available_providers, make_session, run_logits
from backdoor_audit.graph.executor import load_executor, pick_device
from backdoor_audit.models import build_model

from conftest import export


def test_device_and_provider_follow_the_machine_and_print_nothing(tmp_path, capfd):
    torch.manual_seed(0)
    path = export(build_model("small-resnet", (3, 32, 32), 10), (3, 32, 32), tmp_path / "m.onnx", "legacy13")
    capfd.readouterr()
    device = pick_device()
    providers = available_providers()
    assert (device.type == "cuda") == torch.cuda.is_available()
    assert (CUDA in providers) == torch.cuda.is_available()  # torch seeing a GPU is what makes it usable here
    session = make_session(path)
    assert session.get_providers()[0] == providers[0]
    ex = load_executor(path, device=device)
    x = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ours = ex(torch.from_numpy(x).to(device)).cpu().numpy()
    ref = run_logits(session, x)
    assert np.abs(ours - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    out = capfd.readouterr()
    assert "CUDA" not in out.err and "error" not in out.err.lower(), out.err


def test_repair_and_scan_run_on_the_default_device(tmp_path, tiny_backdoor):
    path, clean, _, _ = tiny_backdoor
    data = tmp_path / "clean.npz"
    np.savez(data, x=(clean.x[:, 0] * 255).round().astype(np.uint8), y=clean.y)
    out = tmp_path / "fixed.onnx"
    res = CliRunner().invoke(main, ["repair", str(path), "--data", str(data), "--method", "anp", "--param",
                                    "iterations=20", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output + res.stderr
    rep = json.loads(res.stdout)
    assert rep["parity_max_abs"] <= 1e-4 and out.is_file()  # the written file matches the repaired executor
    res = CliRunner().invoke(main, ["scan", str(path), "--data", str(data), "--detectors", "mm-bd,neural-cleanse",
                                    "--param", "mm-bd.steps=10", "--param", "neural-cleanse.steps=20", "--json"])
    assert res.exit_code in (0, 1), res.output + res.stderr
    assert {d["detector"] for d in json.loads(res.stdout)["detections"]} == {"mm-bd", "neural-cleanse"}
