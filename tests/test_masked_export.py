"""Masked export: same graph, only initializers changed, passes the full checker and strict
shape inference, and onnxruntime's logits equal the masked executor's within 1e-4."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from backdoor_audit.export.masked import mask_writes
from backdoor_audit.export.session import make_session
from backdoor_audit.export.surgery import PROVENANCE_KEY, provenance, write_with_provenance
from backdoor_audit.graph.executor import load_executor
from backdoor_audit.graph.load import load_model
from backdoor_audit.util import sha256_file
from backdoor_audit.graph.modulate import Modulation
from backdoor_audit.graph.neurons import build_inventory

from conftest import OpZoo, export, randomise_bn
from backdoor_audit.models import build_model

MODELS = [("small-resnet", "legacy17-bn"), ("small-resnet", "dynamo"), ("opzoo", "dynamo-raw"),
          ("opzoo", "legacy13"), ("mnist-cnn", "dynamo"), ("mnist-cnn-bn", "legacy17-bn")]


def _build(arch):
    torch.manual_seed(1)
    if arch == "mnist-cnn":
        return build_model(arch, (1, 28, 28), 10).eval(), (1, 28, 28)
    if arch == "mnist-cnn-bn":  # unfolded legacy export: Linear becomes Transpose(W) -> MatMul -> BN
        return randomise_bn(build_model(arch, (1, 28, 28), 10)), (1, 28, 28)
    if arch == "small-resnet":
        return randomise_bn(build_model(arch, (3, 32, 32), 10)), (3, 32, 32)
    return randomise_bn(OpZoo()), (3, 32, 32)


@pytest.fixture(scope="module", params=MODELS, ids=lambda m: "-".join(m))
def source(request, tmp_path_factory):
    arch, exporter = request.param
    model, shape = _build(arch)
    return export(model, shape, tmp_path_factory.mktemp("src") / f"{arch}.onnx", exporter), shape


@pytest.mark.parametrize("semantics", ["keep-bias", "zero-bias"])
def test_masked_export_parity(source, semantics, tmp_path, mnist_images, cifar_images):
    path, shape = source
    before = path.read_bytes()
    proto = load_model(path)
    inv = build_inventory(proto)
    units = inv.units(include_head=True)
    rng = np.random.default_rng(3)
    masks = {l.name: (rng.random(l.size) > 0.3).astype(np.float32) for l in units}
    out = tmp_path / "masked.onnx"
    prov = provenance("test", {"semantics": semantics}, sha256_file(path), path.name)
    write_with_provenance(proto, mask_writes(proto, inv, masks, semantics), out, prov)
    assert path.read_bytes() == before  # the input is never modified

    new = onnx.load(str(out))
    onnx.checker.check_model(new, full_check=True)
    onnx.shape_inference.infer_shapes(new, check_type=True, strict_mode=True)
    # same graph: node names, ops, wiring, inputs, outputs, opset, IR version
    assert [(n.name, n.op_type, list(n.input), list(n.output)) for n in new.graph.node] == \
           [(n.name, n.op_type, list(n.input), list(n.output)) for n in proto.graph.node]
    assert [i.name for i in new.graph.input] == [i.name for i in proto.graph.input]
    assert [o.name for o in new.graph.output] == [o.name for o in proto.graph.output]
    assert list(new.opset_import) == list(proto.opset_import) and new.ir_version == proto.ir_version
    assert sorted(i.name for i in new.graph.initializer) == sorted(i.name for i in proto.graph.initializer)
    meta = {p.key: p.value for p in new.metadata_props}
    assert json.loads(meta[PROVENANCE_KEY])["source_sha256"] == sha256_file(path)

    x = (mnist_images if shape[0] == 1 else cifar_images).x[:16].astype(np.float32)
    ex = load_executor(path, device="cpu")
    mod = Modulation(ex, units, bias_follows_mask=semantics == "zero-bias")
    mod.set_masks(masks)
    with torch.no_grad(), mod:
        expected = ex(torch.from_numpy(x)).numpy()
    with torch.no_grad():
        unmasked = ex(torch.from_numpy(x)).numpy()
    got = make_session(out).run(None, {"input": x})[0]
    assert np.abs(got - expected).max() <= 1e-4
    assert np.abs(got - unmasked).max() > 1e-3  # the masks really changed something


def test_shared_initializer_is_unshared_per_slot(tmp_path, cifar_images):
    """Legacy exports deduplicate equal tensors (two zero biases behind an Identity): zeroing one
    conv's bias must not change the other's."""
    class TwoConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 4, 3)
            self.b = torch.nn.Conv2d(4, 4, 3)
            self.fc = torch.nn.Linear(4, 10)

        def forward(self, x):
            h = torch.relu(self.b(torch.relu(self.a(x))))
            return self.fc(h.mean(dim=(2, 3)))

    m = TwoConv().eval()
    with torch.no_grad():
        m.a.bias.fill_(0.3)
        m.b.bias.fill_(0.3)
    path = export(m, (3, 32, 32), tmp_path / "shared.onnx", "legacy13")
    proto = load_model(path)
    inv = build_inventory(proto)
    la, lb = [l for l in inv.layers if l.kind == "conv"]
    assert la.bias == lb.bias  # the exporter shared them
    masks = {la.name: np.array([0, 1, 1, 1], np.float32)}
    out = tmp_path / "out.onnx"
    _, unshared = write_with_provenance(proto, mask_writes(proto, inv, masks, "zero-bias"), out, {"method": "t"})
    assert unshared == [f"{la.bias}::{la.name}"]
    ex = load_executor(path, device="cpu")
    mod = Modulation(ex, [la], bias_follows_mask=True)
    mod.set_masks(masks)
    x = cifar_images.x[:8].astype(np.float32)
    with torch.no_grad(), mod:
        expected = ex(torch.from_numpy(x)).numpy()
    got = make_session(out).run(None, {"input": x})[0]
    assert np.abs(got - expected).max() <= 1e-4


def test_inserted_pointwise_conv_parity(source, tmp_path, mnist_images, cifar_images):
    """An inserted 1x1 conv (NPD's polariser) on an inner conv's input: the written file passes the
    full checker, only that slot is rewired (other readers of the tensor keep it), and onnxruntime
    equals the executor with the same layer as a modulator, on every exporter's graph."""
    from backdoor_audit.export.surgery import Insert
    from backdoor_audit.repair.run import pointwise_conv

    path, shape = source
    proto = load_model(path)
    ex = load_executor(path, device="cpu")
    convs = [n for n in ex.nodes if n.ctx.op_type == "Conv" and n.inputs[0] != ex.input_name]
    site = convs[-1]
    x = (mnist_images if shape[0] == 1 else cifar_images).x[:16].astype(np.float32)
    with torch.no_grad():
        c = ex.run(torch.from_numpy(x[:1]), capture=[site.inputs[0]])[site.inputs[0]].shape[1]
    rng = np.random.default_rng(5)
    w = (np.eye(c) + 0.3 * rng.standard_normal((c, c))).astype(np.float32)[:, :, None, None]
    b = (0.1 * rng.standard_normal(c)).astype(np.float32)
    ins = Insert(site.ctx.name, 0, w, b, name=f"{site.ctx.name}::polariser")
    out = tmp_path / "inserted.onnx"
    write_with_provenance(proto, [], out, {"method": "t"}, [ins])
    new = onnx.load(str(out))
    onnx.checker.check_model(new, full_check=True)
    added = [n for n in new.graph.node if n.name == ins.name]
    assert len(added) == 1 and added[0].op_type == "Conv"
    readers = [n for n in new.graph.node if added[0].output[0] in n.input]
    assert [r.name for r in readers] == [site.ctx.name]
    old_readers = {n.name for n in proto.graph.node if site.inputs[0] in n.input} - {site.ctx.name}
    assert old_readers <= {n.name for n in new.graph.node if site.inputs[0] in n.input}
    ex.set_modulator(site.ctx.name, 0, pointwise_conv(ins, "cpu"))
    with torch.no_grad():
        expected = ex(torch.from_numpy(x)).numpy()
    ex.set_modulator(site.ctx.name, 0, None)
    with torch.no_grad():
        plain = ex(torch.from_numpy(x)).numpy()
    got = make_session(out).run(None, {"input": x})[0]
    assert np.abs(got - expected).max() <= 1e-4
    assert np.abs(got - plain).max() > 1e-3
