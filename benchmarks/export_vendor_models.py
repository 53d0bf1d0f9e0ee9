"""Export the torchvision and timm part of the vendor corpus (random weights, as a vendor's file
would be shaped): run in its own venv, never in CI.

    python3 -m venv ../vendor-venv
    ../vendor-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm onnx onnxscript  # ~5.5 GB, local disk
    ../vendor-venv/bin/python benchmarks/export_vendor_models.py --out ../vendor-corpus

Each architecture is written by the legacy exporter at opset 17 and by the default (dynamo)
exporter at opset 20, at 224x224; the convolutional ones also at 32x32 (what a CIFAR-sized vendor
model looks like). Files already present are kept (the run resumes). A model or exporter that
fails is reported on one line and skipped. Then ``python benchmarks/vendor_corpus.py`` reads them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
import warnings
from pathlib import Path

import torch

TORCHVISION = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "densenet121", "squeezenet1_1",
               "shufflenet_v2_x0_5", "mnasnet0_5", "regnet_y_400mf", "convnext_tiny", "swin_t", "vit_b_16"]
TIMM = ["resnet10t", "convnextv2_atto", "deit_tiny_patch16_224", "mobilevit_xxs", "ghostnet_100", "rexnet_100"]
FIXED_224 = {"swin_t", "vit_b_16", "deit_tiny_patch16_224", "mobilevit_xxs"}  # attention over a fixed patch grid


def build(source: str, name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if source == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None).eval()
    import timm

    return timm.create_model(name, pretrained=False).eval()


def export(model: torch.nn.Module, size: int, path: Path, dynamo: bool) -> None:
    x = torch.rand(2, 3, size, size)  # batch 2: torch.export specialises a batch of 1
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with warnings.catch_warnings(), quiet[0], quiet[1]:
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=20, input_names=["input"],
                              output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},))
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("../vendor-corpus"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for source, names in (("torchvision", TORCHVISION), ("timm", TIMM)):
        for name in names:
            sizes = [224] if name in FIXED_224 else [224, 32]
            try:
                model = build(source, name)
            except Exception as exc:  # noqa: BLE001  (an architecture this timm lacks)
                print(f"{source}/{name}: cannot build: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                continue
            for size in sizes:
                for dynamo in (False, True):
                    tag = "dynamo20" if dynamo else "legacy17"
                    path = args.out / f"{source}-{name}-{size}-{tag}.onnx"
                    if path.exists():
                        continue
                    t = time.time()
                    try:
                        export(model, size, path, dynamo)
                        print(f"{path.name}: {path.stat().st_size / 1e6:.1f} MB in {time.time() - t:.0f} s", flush=True)
                    except Exception as exc:  # noqa: BLE001
                        path.unlink(missing_ok=True)
                        print(f"{path.name}: export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                              flush=True)


if __name__ == "__main__":
    main()
