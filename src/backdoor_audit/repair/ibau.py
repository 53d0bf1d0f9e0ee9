"""I-BAU, Implicit Backdoor Adversarial Unlearning (Zeng et al., ICLR 2022).

Backdoor removal as a minimax problem over the clean images:
``min_theta max_delta  mean_i L(f_theta(x_i + delta), y_i)``, one universal perturbation ``delta``
shared by all images. Each round first finds ``delta`` (SGD on the clean batches, maximising the
loss against the model's own predictions with a small L2 penalty), then takes one outer step per
batch with the *implicit hypergradient*: the gradient of the outer loss through the inner
problem's fixed point ``delta = delta - a * grad_delta L_inner`` (K fixed-point iterations of the
vector-Jacobian product, as in the hypertorch code the authors ship). As in their ``defense.py``:
pixels without clamping, the model in eval mode throughout (BatchNorm a fixed affine, so a folded
file trains the same function), batches of 100 in a fixed order, 5 rounds, K 5, inner step 10 for
the perturbation and 0.1 for the fixed-point map, the perturbation on 1% of each outer batch, and
the inner loss always on the first batch. The outer step is Adam at lr 1e-4, as BackdoorBench and
the BCU authors run I-BAU; the authors' ``defense.py`` default 0.001 cost 16 to 66 points of
CIFAR-10 accuracy on the zoo with 500 images (docs/repair.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import SpecError
from ..options import Option
from .base import RepairContext, RepairResult, register_method
from .finetune import BN_MODE, Training, WeightEdit

SOURCE = "I-BAU authors' defense.py"
OPTIONS = [
    Option("rounds", int, 5, "unlearning rounds (a new universal perturbation each)", SOURCE, minimum=1),
    Option("K", int, 5, "fixed-point iterations of the implicit hypergradient", SOURCE, minimum=0),
    Option("lr", float, 1e-4, "Adam learning rate of the outer (model) step",
           "BackdoorBench i-bau config; BCU's run_defense.sh (the authors' defense.py: 0.001)", minimum=0,
           open_min=True),
    Option("batch_size", int, 100, "images per batch", SOURCE, minimum=1),
    Option("pert_lr", float, 10.0, "SGD step of the universal perturbation, one per batch", SOURCE, minimum=0,
           open_min=True),
    Option("inner_lr", float, 0.1, "step of the fixed-point map on the inner loss", SOURCE, minimum=0, open_min=True),
    Option("l2", float, 0.001, "weight of ||delta||^2 in the inner loss", SOURCE, minimum=0),
    Option("portion", float, 0.01, "share of each outer batch that carries the perturbation", SOURCE, minimum=0,
           maximum=1),
    Option("bn_mode", str, "running", BN_MODE.help, "the authors' code (model.eval())",
           choices=BN_MODE.choices),
]


def _vjp(outputs: list[torch.Tensor], inputs: list[torch.Tensor], vectors: list[torch.Tensor],
         retain_graph: bool) -> list[torch.Tensor]:
    grads = torch.autograd.grad(outputs, inputs, grad_outputs=vectors, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for g, i in zip(grads, inputs)]


def perturbed_loss(logits, x: torch.Tensor, labels: torch.Tensor, delta: torch.Tensor, l2: float) -> torch.Tensor:
    """What I-BAU's perturbation ascends (its search and the inner problem alike): the negated
    cross-entropy of ``x + delta`` against ``labels``, plus ``l2 * ||delta||^2``."""
    return -F.cross_entropy(logits(x + delta), labels) + l2 * delta.pow(2).sum()


def hypergradient(outer_loss, inner_loss, delta: torch.Tensor, theta: list[torch.Tensor], K: int,
                  inner_lr: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The implicit hypergradient of ``outer_loss(delta)`` with respect to the weights ``theta``,
    ``delta`` taken as the fixed point of ``delta - inner_lr * grad inner_loss(delta)``: the outer
    loss's direct gradient plus ``(d mapped / d theta)^T v``, where ``v`` solves
    ``v = J^T v + dL_outer/d delta`` by K fixed-point iterations (J = d mapped / d delta). Returns the
    gradients (one per weight, zeros where unused) and the outer loss."""
    d = delta.detach().clone().requires_grad_(True)
    outer = outer_loss(d)
    g_delta, *g_theta = _vjp([outer], [d, *theta], [torch.ones_like(outer)], retain_graph=False)
    step = torch.autograd.grad(inner_loss(d), [d], create_graph=True)[0]
    mapped = d - inner_lr * step
    v = torch.zeros_like(d)
    for _ in range(K):
        v = _vjp([mapped], [d], [v], retain_graph=True)[0] + g_delta
    implicit = _vjp([mapped], theta, [v], retain_graph=False)
    return [g1 + g2 for g1, g2 in zip(implicit, g_theta)], outer.detach()


@register_method("i-bau", summary="Implicit Backdoor Adversarial Unlearning: unlearn a universal adversarial "
                 "perturbation with the implicit hypergradient", source="Zeng et al., ICLR 2022", needs="labeled",
                 options=OPTIONS)
def run_ibau(ctx: RepairContext, **opts) -> RepairResult:
    _, y = ctx.labeled("i-bau")
    raw, ex = ctx.raw, ctx.executor
    bs = min(opts["batch_size"], len(raw))
    chunks = [torch.arange(i, min(i + bs, len(raw)), device=raw.device) for i in range(0, len(raw), bs)]
    gen = torch.Generator().manual_seed(ctx.seed)

    def logits(pixels: torch.Tensor) -> torch.Tensor:
        return ex(ctx.preprocess(pixels))

    first = chunks[0]

    def inner_loss(delta: torch.Tensor) -> torch.Tensor:
        return perturbed_loss(logits, raw[first], y[first], delta, opts["l2"])

    log: list[dict] = []
    with WeightEdit(ctx) as edit:
        params = ctx.trainable()
        if not params:
            raise SpecError("the model has no trainable float weights")
        session = Training(ctx, params, opts["bn_mode"], "none")
        theta = session.parameters
        opt = torch.optim.Adam(theta, lr=opts["lr"])
        bar = None
        if ctx.progress:
            from tqdm import tqdm

            bar = tqdm(total=opts["rounds"] * len(chunks) * 2, desc="I-BAU", unit="step", leave=False)
        with session:
            for rnd in range(opts["rounds"]):
                delta = torch.zeros((1, *raw.shape[1:]), device=raw.device, requires_grad=True)
                pert_opt = torch.optim.SGD([delta], lr=opts["pert_lr"])
                for idx in chunks:  # the universal perturbation: ascend the loss on the model's own labels
                    with torch.no_grad():
                        own = logits(raw[idx]).argmax(1)
                    loss = perturbed_loss(logits, raw[idx], own, delta, opts["l2"])
                    pert_opt.zero_grad()
                    delta.grad, = torch.autograd.grad(loss, [delta])
                    pert_opt.step()
                    if bar is not None:
                        bar.update(1)
                delta = delta.detach()
                for idx in chunks:  # one outer step per batch with the implicit hypergradient
                    patch = torch.zeros((len(idx), 1, 1, 1), device=raw.device)
                    count = int(len(idx) * opts["portion"])
                    if count:
                        patch[torch.randperm(len(idx), generator=gen)[:count].to(raw.device)] = 1.0
                    grads, outer = hypergradient(lambda d, idx=idx, patch=patch: F.cross_entropy(
                        logits(raw[idx] + patch * d), y[idx]), inner_loss, delta, theta, opts["K"], opts["inner_lr"])
                    opt.zero_grad(set_to_none=True)
                    for p, g in zip(theta, grads):
                        p.grad = g
                    opt.step()
                    if bar is not None:
                        bar.update(1)
                log.append({"round": rnd, "outer_loss": float(outer.detach()),
                            "delta_l2": float(delta.norm()), "delta_linf": float(delta.abs().max())})
        if bar is not None:
            bar.close()
    return RepairResult("i-bau", dict(opts), new_weights=edit.changed,
                        log={"curve": log, "batches": len(chunks)})
