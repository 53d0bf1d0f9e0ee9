"""Attention-23 (3-D and 4-D forms, grouped heads, causal and explicit masks, past key/value) and
Einsum: the transformer part of a vendor classifier."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import register
from ._util import ONNX_DTYPES, onnx_type_name, opt as _opt
from ...errors import UnsupportedOpError


# -- attention ---------------------------------------------------------------------------------

def _attention_check(ctx):
    mode = ctx.attr("qk_matmul_output_mode", 0)
    if mode not in (0, 1, 2, 3):
        return f"Attention qk_matmul_output_mode={mode} is not supported"
    prec = ctx.attr("softmax_precision")
    if prec is not None and prec not in ONNX_DTYPES:
        return f"Attention softmax_precision {onnx_type_name(prec)} is not supported"
    return None


def _heads(t, n_heads):
    """(B, S, H*D) -> (B, H, S, D)."""
    b, s, hidden = t.shape
    return t.reshape(b, s, n_heads, hidden // n_heads).transpose(1, 2)


@register("Attention", attrs=("is_causal", "kv_num_heads", "q_num_heads", "qk_matmul_output_mode", "scale",
                              "softcap", "softmax_precision"), since=23, check=_attention_check)
def _attention(ctx, x):
    q, k, v = x[0], x[1], x[2]
    mask, past_k, past_v = _opt(x, 3), _opt(x, 4), _opt(x, 5)
    three_d = q.dim() == 3
    if three_d:
        qh, kvh = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
        if not qh or not kvh:
            raise UnsupportedOpError(f"node '{ctx.name}' (Attention): 3-D inputs need q_num_heads and kv_num_heads")
        q, k, v = _heads(q, qh), _heads(k, kvh), _heads(v, kvh)
    if (past_k is None) != (past_v is None):
        raise UnsupportedOpError(f"node '{ctx.name}' (Attention): past_key and past_value must come together")
    past_len = 0
    if past_k is not None:
        past_len = past_k.shape[2]
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
    present_k, present_v = k, v
    qh, kvh = q.shape[1], k.shape[1]
    if qh != kvh:  # grouped-query attention: each KV head serves qh / kvh consecutive query heads
        k = k.repeat_interleave(qh // kvh, dim=1)
        v = v.repeat_interleave(qh // kvh, dim=1)
    scale = ctx.attr("scale")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    root = math.sqrt(scale)
    scores = torch.matmul(q * root, (k * root).transpose(-1, -2))
    raw = scores
    softcap = float(ctx.attr("softcap", 0.0))
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    capped = scores
    q_len, total = scores.shape[-2], scores.shape[-1]
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    bias = torch.zeros((q_len, total), dtype=scores.dtype, device=scores.device)
    if ctx.attr("is_causal", 0):
        i = torch.arange(q_len, device=scores.device).view(-1, 1)
        j = torch.arange(total, device=scores.device).view(1, -1)
        bias = torch.where(j <= i + past_len, zero, neg_inf)
    if mask is not None:
        if mask.shape[-1] < total:  # a short mask: the missing keys are masked out
            fill = False if mask.dtype == torch.bool else float("-inf")
            mask = F.pad(mask, [0, total - mask.shape[-1]], value=fill)
        if mask.dtype == torch.bool:
            mask = torch.where(mask, zero, neg_inf)
        bias = bias + mask.to(scores.dtype)
    scores = scores + bias
    with_bias = scores
    prec = ctx.attr("softmax_precision")
    soft_dtype = ONNX_DTYPES[prec] if prec is not None else scores.dtype
    dead = torch.isneginf(bias.amax(dim=-1, keepdim=True))  # fully-masked query rows give zeros
    safe = torch.where(dead, torch.zeros_like(scores), scores).to(soft_dtype)
    probs = torch.softmax(safe, dim=-1)
    probs = torch.where(dead, torch.zeros_like(probs), probs).to(q.dtype)
    y = torch.matmul(probs, v)
    if three_d:
        y = y.transpose(1, 2).reshape(y.shape[0], q_len, -1)
    mode = ctx.attr("qk_matmul_output_mode", 0)
    qk = {0: raw, 1: capped, 2: with_bias, 3: probs}[mode]
    return y, present_k, present_v, qk


@register("Einsum", attrs=("equation",))
def _einsum(ctx, x):
    return torch.einsum(ctx.attr("equation").replace(" ", ""), *x)
