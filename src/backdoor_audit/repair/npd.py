"""NPD, Neural Polarizer Defense (Zhu et al., NeurIPS 2023).

The suspect model is left as it is; one learnable layer, the *polariser*, is inserted on the input
of an inner convolution and trained on the clean images so that it filters trigger features out
while passing benign ones. Training is adversarial: per batch a targeted perturbation (towards
the highest-scoring wrong class) stands in for an unknown trigger, and the loss keeps clean images
right and pushes the perturbed ones back to the clean prediction and away from the attacked class.

As in the authors' code (BackdoorBench ``npd.py``, ``convbn`` polariser, CIFAR-10 config): a 1x1
conv initialised to the identity followed by BatchNorm, placed on the input of the last block's
first conv (``layer4.1.conv1`` of their PreAct-ResNet-18; here: the input of the second-to-last
Conv of the graph, or a node you name), the model frozen and in eval mode; 5 warm-up epochs at lr
1e-4 with the polariser's BN in train mode, then 50 epochs of SGD (lr 0.01 constant, momentum 0.9,
weight decay 5e-4, batches of 128, no augmentation); the perturbation L2-bounded by 3.0 in pixels,
2 signed steps of 0.1 from zero, stopped once 60% of the batch reaches its target; loss weights
1 / 0.4 / 0.4 / 0.4. One change: the polariser's BN starts at the clean features' statistics with
scale and shift equal to them, so the repaired model starts as the suspect one (theirs starts from
BN defaults, and the warm-up moves its running statistics). The trained layer is folded into one
1x1 Conv with bias and written into the file by graph surgery.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecError
from ..export.surgery import Insert
from ..options import Option
from .base import RepairContext, RepairResult, register_method

SOURCE = "BackdoorBench config/defense/npd/cifar10.yaml (the authors' code)"
OPTIONS = [
    Option("node", str, "auto", "the Conv node whose input gets the polariser (auto: the second-to-last Conv "
           "that reads a feature map)", "NPD code: layer4.1.conv1"),
    Option("epochs", int, 50, "epochs of polariser training", SOURCE, minimum=1),
    Option("warm_epochs", int, 5, "warm-up epochs (clean loss, lr 1e-4, BN in train mode)", SOURCE, minimum=0),
    Option("lr", float, 0.01, "SGD learning rate (constant)", SOURCE, minimum=0, open_min=True),
    Option("batch_size", int, 128, "images per step", SOURCE, minimum=1),
    Option("bound", float, 3.0, "L2 bound of the perturbation, in pixels", SOURCE, minimum=0, open_min=True),
    Option("adv_lr", float, 0.1, "signed step of the perturbation", SOURCE, minimum=0, open_min=True),
    Option("adv_steps", int, 2, "perturbation steps per batch", SOURCE, minimum=1),
    Option("lmd1", float, 1.0, "weight of the clean loss", SOURCE, minimum=0),
    Option("lmd2", float, 0.4, "weight of the loss back to the clean prediction on perturbed images", SOURCE,
           minimum=0),
    Option("lmd3", float, 0.4, "weight of pushing down the top wrong class on perturbed images", SOURCE, minimum=0),
    Option("lmd4", float, 0.4, "weight of pushing down the attacked class on perturbed images", SOURCE, minimum=0),
]


class Polariser:
    """``BN(W x)`` per pixel over C channels; ``fold()`` gives the one 1x1 conv it computes in eval mode."""

    def __init__(self, features: torch.Tensor, eps: float = 1e-5, momentum: float = 0.1):
        c = features.shape[1]
        dev = features.device
        self.eps, self.momentum, self.train = eps, momentum, False
        self.weight = nn.Parameter(torch.eye(c, device=dev))
        dims = [0, 2, 3]
        mean, var = features.mean(dims), features.var(dims, unbiased=False)
        self.run_mean, self.run_var = mean.clone(), var.clone()
        self.gamma = nn.Parameter((var + eps).sqrt())
        self.beta = nn.Parameter(mean.clone())

    def parameters(self) -> list[nn.Parameter]:
        return [self.weight, self.gamma, self.beta]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.einsum("oc,nchw->nohw", self.weight, x)
        if self.train:
            mean, var = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False)
            with torch.no_grad():
                n = z.numel() // z.shape[1]
                self.run_mean.mul_(1 - self.momentum).add_(mean.detach(), alpha=self.momentum)
                self.run_var.mul_(1 - self.momentum).add_(var.detach() * n / max(n - 1, 1), alpha=self.momentum)
        else:
            mean, var = self.run_mean, self.run_var
        scale = self.gamma / (var + self.eps).sqrt()
        return z * scale.view(1, -1, 1, 1) + (self.beta - mean * scale).view(1, -1, 1, 1)

    def fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            scale = self.gamma / (self.run_var + self.eps).sqrt()
            return (self.weight * scale[:, None])[:, :, None, None].clone(), self.beta - self.run_mean * scale


def polariser_site(ctx: RepairContext, node: str) -> tuple[str, str]:
    """(Conv node name, the tensor it reads at slot 0) where the polariser goes."""
    ex = ctx.executor
    convs = [n for n in ex.nodes if n.ctx.op_type == "Conv" and n.inputs[0] != ex.input_name]
    if node != "auto":
        named = [n for n in convs if n.ctx.name == node]
        if not named:
            raise SpecError(f"npd node '{node}' is not a Conv that reads a feature map; Conv nodes: "
                            + ", ".join(n.ctx.name for n in convs[-6:]))
        return named[0].ctx.name, named[0].inputs[0]
    if not convs:
        raise SpecError("npd puts its layer on the input of an inner Conv, and the model has none")
    site = convs[-2] if len(convs) > 1 else convs[-1]
    return site.ctx.name, site.inputs[0]


def _project_l2(delta: torch.Tensor, bound: float) -> torch.Tensor:
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * (bound / norm).clamp(max=1.0).view(-1, 1, 1, 1)


@register_method("npd", summary="Neural Polarizer: insert one layer before an inner conv and train it to filter "
                 "trigger features (the model's weights untouched)", source="Zhu et al., NeurIPS 2023",
                 needs="labeled", options=OPTIONS)
def run_npd(ctx: RepairContext, **opts) -> RepairResult:
    _, y = ctx.labeled("npd")
    raw, ex = ctx.raw, ctx.executor
    name, tensor = polariser_site(ctx, opts["node"])
    with torch.no_grad():
        feats = torch.cat([ex.run(ctx.preprocess(raw[i:i + 256]), capture=[tensor])[tensor]
                           for i in range(0, len(raw), 256)])
    if feats.dim() != 4:
        raise SpecError(f"npd needs a 4-D feature map at the input of '{name}', got shape {tuple(feats.shape)}")
    pol = Polariser(feats)
    del feats
    bs = min(opts["batch_size"], len(raw))
    gen = torch.Generator().manual_seed(ctx.seed)
    previous = ex.batchnorm_mode("running")
    ex.requires_grad_weights(False)

    def model(pixels: torch.Tensor) -> torch.Tensor:
        return ex(ctx.preprocess(pixels.clamp(0, 1)))

    def epoch() -> list[torch.Tensor]:
        perm = torch.randperm(len(raw), generator=gen).to(raw.device)
        return [perm[i:i + bs] for i in range(0, len(raw), bs)]

    for p in pol.parameters():
        p.requires_grad_(True)
    ex.set_modulator(name, 0, pol)
    curve = []
    bar = None
    if ctx.progress:
        from tqdm import tqdm

        per_epoch = -(-len(raw) // bs)  # counted, not drawn: a progress bar must not move the seeded order
        bar = tqdm(total=(opts["warm_epochs"] + opts["epochs"]) * per_epoch, desc="NPD", unit="step", leave=False)
    try:
        warm = torch.optim.SGD(pol.parameters(), lr=1e-4)
        pol.train = True
        for _ in range(opts["warm_epochs"]):
            for idx in epoch():
                loss = F.cross_entropy(model(raw[idx]), y[idx])
                warm.zero_grad()
                loss.backward()
                warm.step()
                if bar is not None:
                    bar.update(1)
        pol.train = False
        opt = torch.optim.SGD(pol.parameters(), lr=opts["lr"], momentum=0.9, weight_decay=5e-4)
        for ep in range(opts["epochs"]):
            for idx in epoch():
                xb, yb = raw[idx], y[idx]
                with torch.no_grad():
                    out = model(xb)
                    own = out.argmax(1)
                    target = out.scatter(1, yb[:, None], -1e4).argmax(1)  # the highest wrong class
                delta = torch.zeros_like(xb)
                for _ in range(opts["adv_steps"]):  # targeted, signed steps, L2-projected
                    delta.requires_grad_(True)
                    loss = F.cross_entropy(model(xb + delta), target, reduction="none").clamp(-80, 80).mean()
                    grad, = torch.autograd.grad(loss, [delta])
                    delta = _project_l2(delta.detach() - opts["adv_lr"] * grad.sign(), opts["bound"])
                    with torch.no_grad():
                        if float((model(xb + delta).argmax(1) == target).float().mean()) > 0.6:
                            break
                clean_out, adv_out = model(torch.cat([xb, xb + delta])).split(len(idx))
                prob = F.softmax(adv_out, 1)
                top2 = prob.argsort(1)[:, -2:]
                wrong = torch.where(top2[:, -1] == yb, top2[:, -2], top2[:, -1])
                away = torch.log(1.0001 - prob + 1e-12)
                loss = (opts["lmd1"] * F.cross_entropy(clean_out, yb) + opts["lmd2"] * F.cross_entropy(adv_out, own)
                        + opts["lmd3"] * F.nll_loss(away, wrong) + opts["lmd4"] * F.nll_loss(away, target))
                opt.zero_grad()
                loss.backward()
                opt.step()
                if bar is not None:
                    bar.update(1)
            if ep % 5 == 0 or ep == opts["epochs"] - 1:
                curve.append({"epoch": ep, "loss": float(loss.detach())})
    finally:
        ex.set_modulator(name, 0, None)
        ex.batchnorm_mode(previous)
        if bar is not None:
            bar.close()
    weight, bias = pol.fold()
    ins = Insert(name, 0, weight.cpu().numpy(), bias.cpu().numpy(), name=f"{name}::npd_polariser")
    return RepairResult("npd", dict(opts), inserts=[ins], log={"curve": curve, "node": name, "tensor": tensor})
