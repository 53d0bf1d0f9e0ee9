"""The scan's reports for people and for CI: a self-contained HTML page with the evidence's plots,
JSON, written atomically with --output; the page opens in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from backdoor_audit.audit.report_html import render_html
from backdoor_audit.audit.scan import parse_detectors, scan_model
from backdoor_audit.cli import main
from backdoor_audit.export.from_torch import export_torch_model
from backdoor_audit.models import build_model

@pytest.fixture(scope="module")
def plain_model(tmp_path_factory):
    torch.manual_seed(0)
    return export_torch_model(build_model("mnist-cnn", (1, 28, 28), 10), (1, 28, 28),
                              tmp_path_factory.mktemp("s") / "plain.onnx")


SMALL = {"anp-probe": {"eps": "0.1,0.4", "probe_steps": 2, "mask_iterations": 5},
         "neural-cleanse": {"steps": 20}, "mm-bd": {"steps": 20}}


@pytest.fixture(scope="module")
def page(plain_model, mnist_images):
    rep = scan_model(plain_model, mnist_images, detectors=parse_detectors("+mm-bd,anp-probe", True), options=SMALL)
    return rep, render_html([rep])


def _images(doc: str) -> list[Image.Image]:
    srcs = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', doc)
    return [Image.open(io.BytesIO(base64.b64decode(s))) for s in srcs]


def test_html_report_is_self_contained_with_a_plot_per_evidence(page):
    rep, doc = page
    assert rep.verdict.upper() in doc and str(rep.model) in doc
    images = _images(doc)
    # NC mask norms, NC triggers, MM-BD margins, ANP probe curves, ANP mask histograms
    assert len(images) == 5
    for img in images:
        arr = np.asarray(img.convert("L"), dtype=np.float32)
        assert img.width > 100 and img.height > 50 and arr.std() > 5  # drawn, not blank
    assert not re.search(r'(src|href)="(https?:|//|file:)', doc)  # nothing loaded from anywhere
    for det in ("graph", "mm-bd", "neural-cleanse", "anp-probe"):
        assert f"<td>{det}</td>" in doc
    assert "Suspect neurons" in doc


def test_scan_cli_writes_the_report_atomically_and_keeps_the_exit_code(tmp_path, plain_model):
    out = tmp_path / "report.html"
    res = CliRunner().invoke(main, ["scan", str(plain_model), "--detectors", "graph", "--format", "html",
                                    "--output", str(out)])
    assert res.exit_code == 0, res.output + res.stderr  # a plain export has no hazard
    assert "NO BACKDOOR FOUND" in res.output or "INCONCLUSIVE" in res.output
    assert f"wrote the html report to {out}" in res.output
    assert out.read_text().startswith("<!doctype html>") and "<td>graph</td>" in out.read_text()
    js = tmp_path / "report.json"
    res = CliRunner().invoke(main, ["scan", str(plain_model), "--detectors", "graph", "--json", "--output", str(js)])
    assert res.exit_code == 0 and json.loads(js.read_text())["detections"][0]["detector"] == "graph"
    bad = tmp_path / "never.html"
    res = CliRunner().invoke(main, ["scan", str(tmp_path / "missing.onnx"), "--format", "html", "--output", str(bad)])
    assert res.exit_code == 2 and not bad.exists()


def test_html_report_renders_in_headless_chromium(tmp_path, page):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    html_file = tmp_path / "r.html"
    html_file.write_text(page[1])
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1100,1600", html_file.as_uri()], check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    # the plots drew colour: the bars' blue (#69c) appears on the rendered page
    blue = (np.abs(img[..., 0] - 0x66) < 20) & (np.abs(img[..., 1] - 0x99) < 20) & (np.abs(img[..., 2] - 0xCC) < 20)
    assert blue.sum() > 500, blue.sum()
