"""Executor and masked-export parity against onnxruntime, on real images: one command, one table.

    python benchmarks/parity.py [--images 256]

For each architecture and exporter setting (default dynamo exporter with BN folded, dynamo with
BN kept, legacy exporter opset 13 and 17, BN folded or kept, dynamic and static batch) it prints the
max abs logit difference executor vs onnxruntime, then the same for a file written by masked
export (30% of the neurons pruned, keep-bias and zero-bias) vs the masked executor, and the
executor's speed relative to onnxruntime measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from backdoor_audit.data import demo_sample_path, load_images
from backdoor_audit.export.from_torch import export_torch_model
from backdoor_audit.export.masked import mask_writes
from backdoor_audit.export.session import make_session
from backdoor_audit.export.surgery import write_with_provenance
from backdoor_audit.graph.model import open_model, predict
from backdoor_audit.graph.modulate import Modulation
from backdoor_audit.models import build_model

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"
SETTINGS = [  # (label, dynamo, opset, keep_batchnorm, dynamic_batch)
    ("dynamo, BN folded", True, None, False, True),
    ("dynamo, BN kept", True, None, True, True),
    ("dynamo, static batch", True, None, False, False),
    ("legacy opset 13", False, 13, False, True),
    ("legacy opset 17, BN kept", False, 17, True, True),
    ("legacy opset 17, static", False, 17, False, False),
]


def ort_logits(sess, x):
    b = sess.get_inputs()[0].shape[0]
    b = b if isinstance(b, int) else len(x)
    n = len(x) - len(x) % b
    return np.concatenate([sess.run(None, {"input": x[i:i + b]})[0] for i in range(0, n, b)]), n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    args = ap.parse_args()
    mnist = load_images(demo_sample_path(), split="test", limit=args.images)
    cifar = load_images(CIFAR, split="test", limit=args.images) if CIFAR.exists() else None
    rng = np.random.default_rng(0)
    print("| model | export | ops | executor vs ORT | masked keep-bias | masked zero-bias | executor time / ORT time |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch, images in (("mnist-cnn", mnist), ("small-resnet", cifar)):
            if images is None:
                continue
            torch.manual_seed(0)
            net = build_model(arch, images.shape, 10).eval()
            for m in net.modules():  # trained-like BN statistics
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.data.uniform_(0.5, 1.5)
                    m.bias.data.normal_(0, 0.2)
            for label, dynamo, opset, keep_bn, dyn in SETTINGS:
                path = Path(tmp) / f"{arch}-{label.replace(' ', '_').replace(',', '')}.onnx"
                export_torch_model(net, images.shape, path, dynamo=dynamo, opset=opset,
                                   keep_batchnorm=keep_bn, dynamic_batch=dyn)
                m = open_model(path, "cpu")
                x = images.x.astype(np.float32)
                sess = make_session(path)
                ort_logits(sess, x[:8])  # warm both up before timing
                predict(m.executor, torch.from_numpy(x[:8]))
                t0 = time.perf_counter()
                ref, n = ort_logits(sess, x)
                t_ort = time.perf_counter() - t0
                xt = torch.from_numpy(x[:n])
                t0 = time.perf_counter()
                got = predict(m.executor, xt).numpy()
                t_ex = time.perf_counter() - t0
                diffs = []
                units = m.inventory.units(include_head=True)
                masks = {l.name: (rng.random(l.size) > 0.3).astype(np.float32) for l in units}
                for sem in ("keep-bias", "zero-bias"):
                    out = Path(tmp) / f"masked-{sem}.onnx"
                    write_with_provenance(m.proto, mask_writes(m.proto, m.inventory, masks, sem), out, {})
                    mod = Modulation(m.executor, units, bias_follows_mask=sem == "zero-bias")
                    mod.set_masks(masks)
                    with mod:
                        exp = predict(m.executor, xt).numpy()
                    diffs.append(np.abs(ort_logits(make_session(out), x)[0] - exp).max())
                ops = len(m.proto.graph.node)
                print(f"| {arch} | {label} | {ops} | {np.abs(got - ref).max():.1e} | {diffs[0]:.1e} | "
                      f"{diffs[1]:.1e} | {t_ex / t_ort:.1f}x |")
    print(f"\n{n} real test images per model (MNIST sample; CIFAR-10 JPEG test split); random init with "
          "randomised BN statistics.")


if __name__ == "__main__":
    main()
