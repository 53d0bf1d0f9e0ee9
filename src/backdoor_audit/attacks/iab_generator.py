"""The input-aware attack's trigger generators: the network, the trigger it makes, its storage.

``TriggerGenerator`` is the authors' conv encoder-decoder (input-aware-backdoor-attack-release);
one makes the pattern ``G(x)``, another the mask ``M(x)``, and ``triggered`` puts
``x + threshold(M(s)) * (G(s) - x)``. ``pack_generators`` / ``unpack_generators`` turn both
networks into the base64 text an attack spec carries and back.
"""

from __future__ import annotations

import base64
import io
import zipfile

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecError

EPS = 1e-7


class _Block(nn.Sequential):
    """3x3 conv, BatchNorm (momentum 0.05 as the authors'), optional ReLU."""

    def __init__(self, c_in: int, c_out: int, relu: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out, momentum=0.05)]
        if relu:
            layers.append(nn.ReLU())
        super().__init__(*layers)


class TriggerGenerator(nn.Module):
    """The authors' generator: ``depth`` (2 conv blocks + 2x max-pool) steps down, a middle block,
    ``depth`` (upsample + 2 conv blocks) steps up, then ``tanh / 2 + 0.5``. Upsampling goes back
    to the exact sizes of the way down, so any image size >= 2**depth works."""

    def __init__(self, in_channels: int, out_channels: int, channels: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        c_cur, c_next = in_channels, channels
        for step in range(depth):
            self.down.append(nn.Sequential(_Block(c_cur, c_next), _Block(c_next, c_next)))
            c_cur = c_next
            if step < depth - 1:
                c_next *= 2
        self.middle = _Block(c_cur, c_cur)
        self.up = nn.ModuleList()
        for step in range(depth):
            last = step == depth - 1
            c_out = out_channels if last else c_cur // 2
            self.up.append(nn.Sequential(_Block(c_cur, c_cur), _Block(c_cur, c_out, relu=not last)))
            c_cur = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = []
        for block in self.down:
            x = block(x)
            sizes.append(tuple(x.shape[-2:]))
            x = F.max_pool2d(x, 2)
        x = self.middle(x)
        for block, size in zip(self.up, reversed(sizes)):
            x = block(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        return torch.tanh(x) / (2 + EPS) + 0.5


def threshold(m: torch.Tensor) -> torch.Tensor:
    """The authors' soft binarisation of the mask generator's output."""
    return torch.tanh(m * 20 - 10) / (2 + EPS) + 0.5


def triggered(x: torch.Tensor, source: torch.Tensor, pattern_net: nn.Module, mask_net: nn.Module) -> torch.Tensor:
    """``x`` carrying the trigger made for ``source`` (pass ``x`` itself for the backdoor)."""
    mask = threshold(mask_net(source))
    return x + (pattern_net(source) - x) * mask


def pack_generators(pattern_net: nn.Module, mask_net: nn.Module) -> str:
    """Both generators' float tensors (weights and BN statistics) as float32 in a base64 .npz
    (no timestamps: the same weights always give the same text)."""
    arrays = {}
    for prefix, net in (("pattern.", pattern_net), ("mask.", mask_net)):
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                arrays[prefix + k] = v.detach().cpu().numpy().astype(np.float32)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:  # np.savez_compressed, minus the clock
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    return base64.b64encode(buf.getvalue()).decode("ascii")


def unpack_generators(text: str, channels: int, depth: int) -> tuple[TriggerGenerator, TriggerGenerator]:
    """The (pattern, mask) generators, in eval mode, from ``pack_generators``' text; SpecError for
    damaged text or weights that do not fit ``channels`` and ``depth``."""
    try:
        arrays = dict(np.load(io.BytesIO(base64.b64decode(text.encode("ascii"), validate=True))))
    except Exception:  # binascii, zipfile and numpy raise assorted types for damaged text
        raise SpecError("input-aware generator is not the base64 .npz that training stores") from None
    nets = []
    for prefix in ("pattern.", "mask."):
        state = {k[len(prefix) :]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith(prefix)}
        first = state.get("down.0.0.0.weight")
        if first is None or first.ndim != 4:
            raise SpecError(f"input-aware generator lacks the {prefix.rstrip('.')} network's weights")
        c = int(first.shape[1])
        net = TriggerGenerator(c, c if prefix == "pattern." else 1, channels, depth)
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError:
            missing, unexpected = ["(shapes)"], []
        if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
            raise SpecError(f"input-aware generator weights do not fit channels={channels}, depth={depth}")
        nets.append(net.eval())
    return nets[0], nets[1]
