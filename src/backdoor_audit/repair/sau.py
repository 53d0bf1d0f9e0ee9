"""SAU, Shared Adversarial Unlearning (Wei et al., NeurIPS 2023).

A poisoned image acts like an adversarial example that fools the backdoored model and any model
that still carries its backdoor the same way. SAU generates, per clean batch, *shared* adversarial
examples: perturbations (L_inf, in pixels) that fool both the model being repaired and a frozen
copy of the suspect model into the same wrong class (PGD on an adversarial loss plus the
Jensen-Shannon divergence of the two models' outputs), then trains the model on the clean loss plus
a loss that pushes its probability of the frozen model's adversarial class down on the images where
the frozen model was fooled. The defaults are the authors' (BackdoorBench's ``sau.py`` is the
first author's implementation, CIFAR-10 config): L_inf bound 0.2, 5 PGD steps of 0.2 from the
"max" start, beta_1 0.01, beta_2 1, lambdas 1 / 0 / 1, Adam at lr 1e-4 (constant), batches of 256,
100 passes, no augmentation, both models in eval mode (BatchNorm a fixed affine, so a folded file
trains the same function).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..errors import SpecError
from ..options import Option
from .base import RepairContext, RepairResult, register_method
from .finetune import BN_MODE, Training, WeightEdit

SOURCE = "BackdoorBench config/defense/sau/cifar10.yaml (the authors' code)"
OPTIONS = [
    Option("rounds", int, 100, "passes over the clean images", SOURCE, minimum=1),
    Option("lr", float, 1e-4, "Adam learning rate (constant)", SOURCE, minimum=0, open_min=True),
    Option("batch_size", int, 256, "images per step", SOURCE, minimum=1),
    Option("bound", float, 0.2, "L_inf bound of the perturbation, in pixels", SOURCE, minimum=0, open_min=True),
    Option("adv_lr", float, 0.2, "PGD step (signed gradient)", SOURCE, minimum=0, open_min=True),
    Option("adv_steps", int, 5, "PGD steps per batch", SOURCE, minimum=1),
    Option("init", str, "max", "PGD start: every pixel at +bound (max), -bound (min), zero or uniform [0, 1) "
           "(random, then projected)", SOURCE, choices=("max", "min", "zero", "random")),
    Option("beta_1", float, 0.01, "weight of the adversarial loss in PGD", SOURCE, minimum=0),
    Option("beta_2", float, 1.0, "weight of the shared (JS divergence) loss in PGD", SOURCE, minimum=0),
    Option("lmd_1", float, 1.0, "weight of the clean loss", SOURCE, minimum=0),
    Option("lmd_2", float, 0.0, "weight of plain adversarial training on the perturbed images", SOURCE, minimum=0),
    Option("lmd_3", float, 1.0, "weight of the shared adversarial loss", SOURCE, minimum=0),
    Option("bn_mode", str, "running", BN_MODE.help, "the authors' code (model.eval(), train_mode off)",
           choices=BN_MODE.choices),
]


def _start(shape: torch.Size, init: str, bound: float, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    if init == "max":
        d = torch.full(shape, bound)
    elif init == "min":
        d = torch.full(shape, -bound)
    elif init == "random":
        d = torch.rand(shape, generator=gen)
    else:
        d = torch.zeros(shape)
    return d.clamp(-bound, bound).to(device)


def shared_perturbation(model, ref, x: torch.Tensor, y: torch.Tensor, opts: dict,
                        gen: torch.Generator) -> torch.Tensor:
    """PGD for perturbations that fool ``model`` and ``ref`` (both pixels -> logits) into the same
    class: descend ``beta_1 * L_adv + beta_2 * L_shared`` with signed steps, projected onto the
    L_inf ball; stops early once every image is a shared adversarial example."""
    with torch.no_grad():
        own, own_ref = model(x).argmax(1), ref(x).argmax(1)
    delta = _start(x.shape, opts["init"], opts["bound"], x.device, gen)
    n = x.shape[0]
    for _ in range(opts["adv_steps"]):
        delta.requires_grad_(True)
        out, out_ref = model(x + delta), ref(x + delta)
        lab, lab_ref = out.argmax(1), out_ref.argmax(1)
        fooled, fooled_ref = lab != own, lab_ref != own_ref
        shared = fooled & fooled_ref & (lab == lab_ref)
        adv = -((F.cross_entropy(out, y, reduction="none") * (~fooled)).sum()
                + (F.cross_entropy(out_ref, y, reduction="none") * (~fooled_ref)).sum()) / 2 / n
        p, q = F.softmax(out, 1).clamp(min=1e-8), F.softmax(out_ref, 1).clamp(min=1e-8)
        m = 0.5 * (p + q)
        js = (0.5 * (p * p.log() + q * q.log()) - 0.5 * (p * m.log() + q * m.log())).sum(1)
        loss = opts["beta_1"] * adv + opts["beta_2"] * (js * (~shared)).sum() / n
        grad, = torch.autograd.grad(loss, [delta])
        delta = (delta.detach() - opts["adv_lr"] * grad.sign()).clamp(-opts["bound"], opts["bound"])
        if bool(shared.all()):
            break
    return delta.detach()


def shared_loss(out_adv: torch.Tensor, out_adv_ref: torch.Tensor, out_ref: torch.Tensor,
                y: torch.Tensor) -> torch.Tensor:
    """Push down the model's probability of the frozen model's adversarial class, on the images where
    that class is wrong and not the frozen model's clean answer (the authors' two equal terms,
    kept apart for numerical stability)."""
    lab_ref = out_adv_ref.argmax(1)
    poison = (lab_ref != y) & (lab_ref != out_ref.argmax(1))
    if not bool(poison.any()):
        return out_adv.sum() * 0.0
    prob = F.softmax(out_adv, 1)
    one = F.one_hot(lab_ref, out_adv.shape[1]).to(prob.dtype)
    pos = (prob * one).sum(1)[poison]
    neg = (prob * (1 - one)).sum(1)[poison]
    return (-torch.log(1e-6 + neg.clamp(max=0.999)).sum()
            - torch.log(1 + 1e-6 - pos.clamp(min=0.001)).sum()) / 2 / out_adv.shape[0]


@register_method("sau", summary="Shared Adversarial Unlearning: unlearn perturbations that fool the model and "
                 "its frozen copy alike", source="Wei et al., NeurIPS 2023", needs="labeled", options=OPTIONS)
def run_sau(ctx: RepairContext, **opts) -> RepairResult:
    _, y = ctx.labeled("sau")
    raw, ex = ctx.raw, ctx.executor
    ref_ex = copy.deepcopy(ex)
    ref_ex.requires_grad_weights(False)
    ref_ex.batchnorm_mode("running")
    bs = min(opts["batch_size"], len(raw))
    gen = torch.Generator().manual_seed(ctx.seed)

    def model(pixels: torch.Tensor) -> torch.Tensor:
        return ex(ctx.preprocess(pixels))

    def ref(pixels: torch.Tensor) -> torch.Tensor:
        return ref_ex(ctx.preprocess(pixels))

    curve: list[dict] = []
    steps = opts["rounds"] * -(-len(raw) // bs)
    with WeightEdit(ctx) as edit:
        params = ctx.trainable()
        if not params:
            raise SpecError("the model has no trainable float weights")
        session = Training(ctx, params, opts["bn_mode"], "none")
        opt = torch.optim.Adam(session.parameters, lr=opts["lr"])
        bar = None
        if ctx.progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, desc="SAU", unit="step", leave=False)
        with session:
            for rnd in range(opts["rounds"]):
                perm = torch.randperm(len(raw), generator=gen).to(raw.device)
                for i in range(0, len(raw), bs):  # every image each pass, the last batch ragged
                    idx = perm[i:i + bs]
                    xb, yb = raw[idx], y[idx]
                    delta = shared_perturbation(model, ref, xb, yb, opts, gen)
                    out, out_adv = model(torch.cat([xb, xb + delta])).split(len(idx))
                    with torch.no_grad():
                        out_ref, out_adv_ref = ref(torch.cat([xb, xb + delta])).split(len(idx))
                    clean = F.cross_entropy(out, yb)
                    sar = shared_loss(out_adv, out_adv_ref, out_ref, yb)
                    loss = opts["lmd_1"] * clean + opts["lmd_2"] * F.cross_entropy(out_adv, yb) + opts["lmd_3"] * sar
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if bar is not None:
                        bar.update(1)
                if rnd % 5 == 0 or rnd == opts["rounds"] - 1:
                    curve.append({"round": rnd, "clean_loss": float(clean.detach()),
                                  "shared_loss": float(sar.detach())})
        if bar is not None:
            bar.close()
    return RepairResult("sau", dict(opts), new_weights=edit.changed, log={"curve": curve, "steps": steps})
