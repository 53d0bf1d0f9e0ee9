"""I-BAU side by side with the authors' code (YiZeng623/I-BAU), on one of our suspect models.

    python benchmarks/ibau_reference.py --ref /tmp/ibau_ref --model zoo/cifar10/badnets-t0-s0.onnx \
        --clean zoo/cifar10/clean.npz --data ../shared/data/cifar10-jpeg.zip [--seeds 0,1] \
        [--param lr=0.0001 --param rounds=5]

``--ref`` is a checkout of github.com/YiZeng623/I-BAU (``fetch`` it, then
``git --git-dir .../repo archive HEAD | tar -x -C /tmp/ibau_ref``). Nothing of it is copied here:
this script imports its ``hypergrad`` module (``fixed_point`` and ``GradientDescent``, the
implicit hypergradient of the method) and drives it the way its ``defense.py`` main loop does:
per round a zero universal perturbation, one SGD step (lr 10) per batch on the negated loss
against the model's own labels plus 0.001 ||delta||^2, then one outer step per batch:
``outer_opt.zero_grad(); fixed_point(pert, params, K, GradientDescent(loss_inner, 0.1),
loss_outer); outer_opt.step()`` with ``loss_inner`` on the first batch and ``loss_outer`` putting
the perturbation on ``random.sample`` 1% of the batch. Their script hard-codes CUDA tensors and
a VGG of its own, so the loop is driven here on the executor of our ONNX file, in eval mode
(their ``model.eval()``), with our method's options; only the pixels' normalisation, which their
VGG does not have, is applied inside the model, as our method does.

Both run as a repair method through ``repair_model``, so both results are written as ONNX by the
same graph surgery, checked for parity, and measured under onnxruntime on the test split. The
table also gives the two hypergradients of one outer step on the same perturbation and batch
(the perturbation on the whole batch, so no random choice differs): their relative difference
says whether the two implementations compute the same thing; the runs then differ only in which
images carry the perturbation.
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from backdoor_audit.data import load_images
from backdoor_audit.evaluation.gate import validate_model
from backdoor_audit.graph.model import open_model
from backdoor_audit.inputs import fit_images
from backdoor_audit.options import parse_assignments
from backdoor_audit.repair import ibau
from backdoor_audit.repair.base import METHODS, RepairContext, RepairResult, register_method
from backdoor_audit.repair.finetune import Training, WeightEdit
from backdoor_audit.repair.run import repair_model

REF_NAME = "i-bau-authors"


def import_hypergrad(ref: Path):
    sys.path.insert(0, str(ref))
    return importlib.import_module("hypergrad")


def register_reference(hg) -> None:
    """The authors' loop, over the same options as our ``i-bau``."""
    if REF_NAME in METHODS:
        return

    @register_method(REF_NAME, summary="I-BAU by the authors' hypergrad module", source="YiZeng623/I-BAU",
                     needs="labeled", options=ibau.OPTIONS)
    def run(ctx: RepairContext, **opts) -> RepairResult:
        _, y = ctx.labeled(REF_NAME)
        raw, ex = ctx.raw, ctx.executor
        bs = min(opts["batch_size"], len(raw))
        batches = [(raw[i:i + bs], y[i:i + bs]) for i in range(0, len(raw), bs)]  # DataLoader, shuffle=False
        random.seed(ctx.seed)

        def model(pixels):
            return ex(ctx.preprocess(pixels))

        now = {"batch": 0}

        def loss_inner(perturb, model_params):
            images, labels = batches[0]
            loss = F.cross_entropy(model(images + perturb[0]), labels, reduction="none")
            return torch.mean(-loss) + opts["l2"] * torch.pow(torch.norm(perturb[0]), 2)

        def loss_outer(perturb, model_params):
            images, labels = batches[now["batch"]]
            patching = torch.zeros_like(images)
            n = images.shape[0]
            patching[random.sample(list(range(n)), int(n * opts["portion"]))] = perturb[0]
            return F.cross_entropy(model(images + patching), labels)

        with WeightEdit(ctx) as edit:
            session = Training(ctx, ctx.trainable(), opts["bn_mode"], "none")
            theta = session.parameters
            outer_opt = torch.optim.Adam(theta, lr=opts["lr"])
            inner_opt = hg.GradientDescent(loss_inner, opts["inner_lr"])
            with session:
                for _ in range(opts["rounds"]):
                    pert = torch.zeros_like(raw[:1], requires_grad=True)
                    batch_opt = torch.optim.SGD(params=[pert], lr=opts["pert_lr"])
                    for images, _labels in batches:
                        own = torch.argmax(model(images), axis=1).long()
                        loss = F.cross_entropy(model(images + pert), own, reduction="mean")
                        loss_regu = torch.mean(-loss) + opts["l2"] * torch.pow(torch.norm(pert), 2)
                        batch_opt.zero_grad()
                        loss_regu.backward(retain_graph=True)
                        batch_opt.step()
                    for b in range(len(batches)):
                        now["batch"] = b
                        outer_opt.zero_grad()
                        hg.fixed_point(pert, theta, opts["K"], inner_opt, loss_outer)
                        outer_opt.step()
        return RepairResult(REF_NAME, dict(opts), new_weights=edit.changed)


def hypergradient_gap(hg, model_path: str, clean, opts: dict, seed: int) -> float:
    """Relative L2 difference of the two implementations' hypergradients for one outer step: the
    same perturbation (a fixed random one), the first batch, the perturbation on every image."""
    m = open_model(model_path)
    ctx = RepairContext(m.executor, m.inventory, seed=seed)
    fitted = fit_images(m.proto, clean, m.executor.device)
    raw, y, pre = fitted.raw, fitted.y, fitted.preprocess.torch
    xb, yb = raw[:opts["batch_size"]], y[:opts["batch_size"]]
    gen = torch.Generator().manual_seed(seed)
    delta = 0.05 * torch.randn((1, *raw.shape[1:]), generator=gen)

    def logits(p):
        return m.executor(pre(p))

    session = Training(ctx, ctx.trainable(), opts["bn_mode"], "none")
    theta = session.parameters
    with session:
        ours, _ = ibau.hypergradient(lambda d: F.cross_entropy(logits(xb + d), yb),
                                     lambda d: ibau.perturbed_loss(logits, xb, yb, d, opts["l2"]),
                                     delta, theta, opts["K"], opts["inner_lr"])
        inner = hg.GradientDescent(lambda p, h: torch.mean(-F.cross_entropy(logits(xb + p[0]), yb, reduction="none"))
                                   + opts["l2"] * torch.pow(torch.norm(p[0]), 2), opts["inner_lr"])
        theirs = hg.fixed_point(delta, theta, opts["K"], inner,
                                lambda p, h: F.cross_entropy(logits(xb + p[0]), yb), set_grad=False)
    a = torch.cat([g.reshape(-1) for g in ours])
    b = torch.cat([g.reshape(-1) for g in theirs])
    return float((a - b).norm() / b.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, help="checkout of YiZeng623/I-BAU")
    ap.add_argument("--model", required=True)
    ap.add_argument("--clean", required=True, help="the defender's clean images")
    ap.add_argument("--data", required=True, help="the dataset whose test split measures ACC/ASR")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--param", action="append", default=[], help="an i-bau option KEY=VALUE")
    args = ap.parse_args()

    hg = import_hypergrad(Path(args.ref))
    register_reference(hg)
    opts = METHODS.get("i-bau").resolve(parse_assignments(args.param))
    clean = load_images(args.clean)
    test = load_images(args.data, split="test")
    before = validate_model(args.model, test, attack=args.model)
    gap = hypergradient_gap(hg, args.model, clean, opts, 0)
    work = Path(tempfile.mkdtemp(prefix="ibau-ref-"))
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for label, method in (("authors' code", REF_NAME), ("ours", "i-bau")):
            out = work / f"{method}-{seed}.onnx"
            t0 = time.perf_counter()
            rep = repair_model(args.model, clean, method, out, opts, seed=seed)
            wall = time.perf_counter() - t0
            res = validate_model(out, test, attack=args.model)
            rows.append(f"| {seed} | {label} | {res.acc:.2f} | {res.asr:.2f} | {rep.seconds:.0f} | {wall:.0f} | "
                        f"{rep.parity_max_abs:.1e} |")
            print(rows[-1], file=sys.stderr)  # progress
    shown = ", ".join(f"{k} {v}" for k, v in opts.items())
    print(f"model {Path(args.model).name}: before ACC {before.acc:.2f}, ASR {before.asr:.2f}; {len(clean)} clean "
          f"images; options: {shown}\n\none outer step's hypergradient, ours against the authors' fixed_point: "
          f"relative L2 difference {gap:.1e}\n")
    print("| seed | implementation | ACC (%) | ASR (%) | method (s) | repair with write and parity (s) | "
          "parity max abs |")
    print("|---|---|---|---|---|---|---|")
    print(*rows, sep="\n")


if __name__ == "__main__":
    main()
