"""ANP side by side with the authors' code, on one of our suspect models.

    python benchmarks/anp_reference.py --ref /tmp/anp_ref [--model runs/table6/suspect.onnx]
        [--clean runs/table6/clean.npz] [--alpha 0.5 --eps 0.3] [--seeds 0,1]

``--ref`` is a checkout of github.com/csdongxian/ANP_backdoor (``fetch`` it, then
``git --git-dir .../repo archive HEAD | tar -x -C /tmp/anp_ref``). Nothing of it is copied here:
this script imports its ``optimize_mask_cifar.mask_train`` and its ``NoisyBatchNorm2d/1d`` and
drives them the way its ``main()`` does (SGD lr 0.2 momentum 0.9 on the masks, SGD lr eps on the
noise, batches of 128 drawn with replacement from the defender's clean set, 500 iterations per
call), on the same suspect model and the same 500 clean images our ANP gets.

The authors' code masks and perturbs BatchNorm channels only. For a model without BN (the ANP
appendix's MNIST CNN and FC network) every hidden Conv/Linear is given an identity
NoisyBatchNorm that carries the layer's bias (running mean 0, running variance 1 - eps, scale 1,
kept in eval mode), so that their ``(mask + noise) * weight`` and ``(1 + noise_bias) * bias`` act
on the conv's own output and bias: the paper's Eq. 3, our unit for such layers. For a model with
BN their layers replace the BN layers as in their code (batch statistics while optimising).

Both sets of masks are pruned at the threshold (0.2, pruned neurons keep their bias), written as
ONNX by our graph surgery and measured under onnxruntime on the test split. The table gives both
runs per seed, and how far the two mask vectors agree: Spearman rank correlation and the overlap
of the pruned sets. Our ANP's honesty does not depend on this script; it only reads what both
implementations produce.
"""

from __future__ import annotations

import argparse
import json
import importlib
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from backdoor_audit.evaluation.gate import validate_model
from backdoor_audit.data import load_images
from backdoor_audit.export.masked import mask_writes
from backdoor_audit.export.surgery import provenance, write_with_provenance
from backdoor_audit.graph.load import metadata
from backdoor_audit.graph.model import open_model
from backdoor_audit.graph.neurons import initializer_array
from backdoor_audit.models import build_model
from backdoor_audit.graph.masks import optimize_masks
from backdoor_audit.inputs import fit_images
from backdoor_audit.repair.anp import prune_masks

ROOT = Path(__file__).resolve().parents[1]


def import_reference(ref: Path, alpha: float, eps: float, iterations: int, out_dir: Path):
    """Import the authors' optimize_mask_cifar with its command line set to our settings.

    It imports torchvision at module level for its CIFAR-10 loader, which this script does not
    use (and torchvision does not import beside our torch build); empty stand-in modules let the
    import through."""
    for name in ("torchvision", "torchvision.datasets", "torchvision.transforms"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["torchvision.datasets"].CIFAR10 = None
    sys.path.insert(0, str(ref))
    argv = sys.argv
    sys.argv = ["optimize_mask_cifar.py", "--checkpoint", "unused", "--anp-alpha", str(alpha),
                "--anp-eps", str(eps), "--nb-iter", str(iterations), "--print-every", str(min(500, iterations)),
                "--output-dir", str(out_dir)]
    try:
        mod = importlib.import_module("optimize_mask_cifar")
    finally:
        sys.argv = argv
    mod.device = "cpu"
    return mod


def keep_eval(module: nn.Module) -> nn.Module:
    """Keep an identity NoisyBatchNorm in eval mode when mask_train puts the model in training mode."""
    module.eval()
    module.train = lambda mode=True: module
    return module


def load_onnx_weights(net: nn.Module, proto, inventory) -> dict:
    """Copy the file's weights into ``net``, layer by layer in graph order (module names may have
    moved since the file was written, so names are not trusted; shapes are checked)."""
    mods = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm))]
    layers = inventory.layers
    if len(mods) != len(layers):
        sys.exit(f"{type(net).__name__} has {len(mods)} weight layers, the file {len(layers)}")
    nodes = {n.name: n for n in proto.graph.node}
    with torch.no_grad():
        for mod, layer in zip(mods, layers):
            pairs = [(mod.weight, layer.weight), (mod.bias, layer.bias)]
            if layer.kind == "bn":
                node = nodes[layer.name]
                pairs += [(mod.running_mean, node.input[3]), (mod.running_var, node.input[4])]
            for dst, name in pairs:
                if dst is None:
                    continue
                src = torch.from_numpy(initializer_array(proto, name).copy())
                if src.shape != dst.shape:
                    sys.exit(f"weight {name} has shape {tuple(src.shape)}, the model's {tuple(dst.shape)}")
                dst.copy_(src)
    return {id(mod): layer.name for mod, layer in zip(mods, layers)}


def reference_net(ref_models, proto, inventory, arch: str, in_shape, num_classes: int) -> tuple[nn.Module, dict]:
    """Our registry model with the ONNX file's weights, its BN (or identity BN) replaced by the
    authors' noisy layers; returns the net and {our inventory layer name: noisy module}."""
    net = build_model(arch, tuple(in_shape), num_classes)
    layer_of = load_onnx_weights(net, proto, inventory)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    mapping, head = {}, [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    for parent in list(net.modules()):
        for child_name, child in list(parent.named_children()):
            if has_bn and isinstance(child, (nn.BatchNorm2d, nn.BatchNorm1d)):
                cls = ref_models.NoisyBatchNorm2d if isinstance(child, nn.BatchNorm2d) else ref_models.NoisyBatchNorm1d
                noisy = cls(child.num_features, eps=child.eps, momentum=child.momentum)
                noisy.load_state_dict(child.state_dict(), strict=False)
                setattr(parent, child_name, noisy)
                mapping[layer_of[id(child)]] = noisy
            elif not has_bn and isinstance(child, (nn.Conv2d, nn.Linear)) and child is not head:
                is_conv = isinstance(child, nn.Conv2d)
                n = child.out_channels if is_conv else child.out_features
                noisy = (ref_models.NoisyBatchNorm2d if is_conv else ref_models.NoisyBatchNorm1d)(n)
                with torch.no_grad():
                    noisy.running_mean.zero_()
                    noisy.running_var.fill_(1.0 - noisy.eps)
                    noisy.weight.fill_(1.0)
                    noisy.bias.copy_(child.bias)
                    child.bias.zero_()
                child.bias.requires_grad_(False)
                keep_eval(noisy)
                setattr(parent, child_name, nn.Sequential(child, noisy))
                mapping[layer_of[id(child)]] = noisy
    for n, p in net.named_parameters():
        p.requires_grad_("neuron_" in n)  # only masks and noise move, as only they have optimisers
    return net, mapping


def run_reference(ref, net, mapping, x, y, seed: int, iterations: int, eps: float) -> tuple[dict, float]:
    """Drive the authors' mask_train as their main() does; return masks by our layer name."""
    torch.manual_seed(seed)
    params = list(net.named_parameters())
    mask_opt = torch.optim.SGD([v for n, v in params if "neuron_mask" in n], lr=0.2, momentum=0.9)
    noise_opt = torch.optim.SGD([v for n, v in params if "neuron_noise" in n], lr=eps)
    per_call = ref.args.print_every
    loader = DataLoader(TensorDataset(x, y), batch_size=128,
                        sampler=RandomSampler(range(len(x)), replacement=True, num_samples=per_call * 128))
    crit = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for _ in range(int(np.ceil(iterations / per_call))):
        ref.mask_train(model=net, criterion=crit, data_loader=loader, mask_opt=mask_opt, noise_opt=noise_opt)
    seconds = time.perf_counter() - t0
    out = {}
    for layer, noisy in mapping.items():
        mask = getattr(noisy, "neuron_mask", None)
        if mask is None:
            mask = noisy.neuron_mask_fc
        out[layer] = mask.detach().numpy().copy()
    return out, seconds


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def measure(m, masks: dict, path: Path, test, label: str) -> tuple[float, float]:
    writes = mask_writes(m.proto, m.inventory, masks, "keep-bias")
    write_with_provenance(m.proto, writes, path, provenance("anp-side-by-side", {"run": label}, m.sha256,
                                                           m.path.name))
    res = validate_model(path, test, attack=str(m.path))
    return res.acc, res.asr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, help="checkout of csdongxian/ANP_backdoor")
    ap.add_argument("--model", default=str(ROOT / "runs" / "table6" / "suspect.onnx"))
    ap.add_argument("--clean", default=str(ROOT / "runs" / "table6" / "clean.npz"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "mnist.npz"))
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--threshold", type=float, default=0.2)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="anp-ref-"))
    ref = import_reference(Path(args.ref), args.alpha, args.eps, args.iterations, work)
    ref_models = importlib.import_module("models")
    m = open_model(args.model)
    training = json.loads(metadata(m.proto)["backdoor_audit.training"])
    clean = load_images(args.clean)
    test = load_images(args.data, split="test")
    fitted = fit_images(m.proto, clean, m.executor.device)
    x, y = fitted.x, fitted.y
    classes = next(l.size for l in m.inventory.layers if l.head)

    rows, gaps = [], []
    before = validate_model(args.model, test, attack=args.model)
    for seed in [int(s) for s in args.seeds.split(",")]:
        net, mapping = reference_net(ref_models, m.proto, m.inventory, training["arch"], training["in_shape"], classes)
        with torch.no_grad():
            gap = (net.eval()(x[:256]) - m.executor(x[:256])).abs().max().item()
        if gap > 1e-4:
            sys.exit(f"the reference net does not compute what {args.model} computes (max abs {gap:.1e})")
        gaps.append(gap)
        theirs, t_ref = run_reference(ref, net, mapping, x, y, seed, args.iterations, args.eps)
        runs = [("authors' code", theirs, t_ref)]
        for bound in ("none", "project"):
            mod, log = optimize_masks(m.executor, m.inventory, x, y, eps=args.eps, alpha=args.alpha, lr=0.2,
                                      momentum=0.9, iterations=args.iterations, batch_size=128, noise_bound=bound,
                                      seed=seed)
            label = "ours, noise not projected (as their code)" if bound == "none" else "ours, projected (Algorithm 1)"
            runs.append((label, mod.per_layer(mod.mask), log["seconds"]))
        layers = list(runs[1][1])
        flat = [np.concatenate([r[1][k] for k in layers]) for r in runs]
        for label, scores, secs in runs:
            masks = prune_masks(scores, args.threshold)
            acc, asr = measure(m, masks, work / f"run-{len(rows)}.onnx", test, f"{label} seed {seed}")
            rows.append((seed, label, sum(int((v < 0.5).sum()) for v in masks.values()), acc, asr, secs))
        pruned = [set(np.flatnonzero(f < args.threshold)) for f in flat]
        for i in (1, 2):
            both, union = pruned[0] & pruned[i], pruned[0] | pruned[i]
            rows.append((seed, f"authors' vs {runs[i][0].split(',')[1].strip()}",
                         f"{len(both)} of {len(union)} pruned by both", f"Spearman {spearman(flat[0], flat[i]):.3f}",
                         f"mean abs mask diff {np.abs(flat[0] - flat[i]).mean():.3f}", None))
        print(f"seed {seed} done:", *map(_row, rows[-5:]), sep="\n", file=sys.stderr)  # progress

    print(f"model {Path(args.model).name}: before ACC {before.acc:.2f}, ASR {before.asr:.2f}; "
          f"alpha {args.alpha}, eps {args.eps}, {args.iterations} iterations, threshold {args.threshold}; "
          f"reference net vs ONNX executor: max abs logit difference {max(gaps):.1e}\n")
    print("| seed | implementation | neurons pruned | ACC (%) | ASR (%) | mask optimisation (s) |")
    print("|---|---|---|---|---|---|")
    print(*map(_row, rows), sep="\n")


def _row(row: tuple) -> str:
    """One table row: a run (numbers) or a comparison of two runs (texts, no time)."""
    seed, label, n, acc, asr, secs = row
    if secs is None:
        return f"| {seed} | {label} | {n} | {acc} | {asr} | |"
    return f"| {seed} | {label} | {n} | {acc:.2f} | {asr:.2f} | {secs:.0f} |"


if __name__ == "__main__":
    main()
