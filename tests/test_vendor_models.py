"""Files nobody here wrote: the ONNX model-zoo files that ship inside the ``onnx`` package (IR 3,
opset 9) and exports with the shapes vendors' files have. Each test is one bug a new user met."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper
from torch import nn

from backdoor_audit.cli import main
from backdoor_audit.errors import UnsupportedOpError
from backdoor_audit.graph.executor import OnnxExecutor
from backdoor_audit.export.from_torch import export_torch_model
from backdoor_audit.export.session import make_session, run_logits

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def light(name: str) -> Path:
    path = LIGHT / f"light_{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} is not in this onnx package")
    return path


def random_npz(folder: Path, n: int, hwc: tuple[int, int, int], classes: int, seed: int) -> Path:
    """Random labelled images: enough to run a file end to end (accuracy is not the point)."""
    path = folder / f"rand-{n}-{'x'.join(map(str, hwc))}.npz"
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 256, (n, *hwc), dtype=np.uint8), y=rng.integers(0, classes, n))
    return path


@pytest.fixture(scope="module")
def imagenet_npz(tmp_path_factory):
    return random_npz(tmp_path_factory.mktemp("data"), 4, (224, 224, 3), 1000, seed=0)


def test_ir3_file_is_written_back_with_its_initializers_as_inputs(tmp_path):
    """IR 3 requires every initializer to be a graph input; graphsurgeon dropped them (282 -> 1)
    and the written file failed the checker, so repair exited 2 on every old model-zoo file."""
    src = light("resnet50")
    out = tmp_path / "r50.onnx"
    res = run("repair", src, "--method", "clp", "--out", out)
    assert res.exit_code == 0, res.output
    before, after = onnx.load(str(src)), onnx.load(str(out))
    assert after.ir_version == before.ir_version == 3
    assert [i.name for i in after.graph.input] == [i.name for i in before.graph.input]
    onnx.checker.check_model(after, full_check=True)


def test_model_zoo_squeezenet_with_4d_scores_validates(imagenet_npz):
    """(N, 1000, 1, 1) scores are a classifier's: validate refused them."""
    res = run("validate", light("squeezenet"), "--data", imagenet_npz)
    assert res.exit_code in (0, 1), res.output  # a gate may fail on random images; no error
    assert "ACC" in res.output or "acc" in res.output.lower()


class PoolHead(nn.Module):
    """Ends in a 1x1 conv and a global pool that keeps its dims: scores of shape (N, 10, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.head = nn.Conv2d(6, 10, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x))).mean(dim=(2, 3), keepdim=True)


class NoBias(nn.Module):
    """Every layer without a bias, as the default exporter leaves all-zero conv biases."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, bias=False)
        self.c2 = nn.Conv2d(4, 4, 3, bias=False)
        self.fc = nn.Linear(4 * 24 * 24, 10, bias=False)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).flatten(1))


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    return random_npz(tmp_path_factory.mktemp("data"), 64, (28, 28, 1), 10, seed=1)


def test_repair_of_a_model_with_4d_scores(tmp_path, small_npz):
    """repair crashed inside cross_entropy with 'internal error' on (N, C, 1, 1) scores."""
    torch.manual_seed(0)
    model = export_torch_model(PoolHead(), (1, 28, 28), tmp_path / "pool.onnx")
    out = tmp_path / "fixed.onnx"
    res = run("repair", model, "--data", small_npz, "--method", "ft", "--param", "iterations=3", "--out", out)
    assert res.exit_code == 0, res.output
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    assert run_logits(make_session(out), x).shape == (4, 10)


def test_anp_on_a_model_without_biases(tmp_path, small_npz):
    """ANP's perturbation gradient raised 'a differentiated tensor not used' when no masked
    layer had a bias (nothing reads xi)."""
    torch.manual_seed(0)
    model = export_torch_model(NoBias(), (1, 28, 28), tmp_path / "nobias.onnx")
    out = tmp_path / "fixed.onnx"
    res = run("repair", model, "--data", small_npz, "--method", "anp", "--param", "iterations=2",
              "--param", "batch_size=16", "--out", out)
    assert res.exit_code == 0, res.output
    assert out.exists()


def test_inspect_lists_every_unsupported_op_and_attribute_at_once(tmp_path):
    """One pass names all obstacles (custom domain op, an unsupported output, an attribute value)
    before anything runs; exit 2."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.STRING, [1, 3, 8, 8])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("FancyNorm", ["a"], ["b"], name="vendor_op", domain="com.vendor"),
        helper.make_node("MaxPool", ["b"], ["c", "idx"], name="pool_indices", kernel_shape=[1, 1]),
        helper.make_node("Cast", ["c"], ["y"], name="to_text", to=TensorProto.STRING),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.vendor", 1)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    res = run("inspect", path)
    assert res.exit_code == 2
    listed = [l for l in res.output.splitlines() if "unsupported:" in l]
    assert len(listed) == 3, res.output
    assert any("vendor_op" in l and "com.vendor::FancyNorm" in l for l in listed)
    assert any("pool_indices" in l and "Indices" in l for l in listed)
    assert any("to_text" in l and "STRING" in l for l in listed)
    with pytest.raises(UnsupportedOpError, match="3 unsupported: .*vendor_op.*pool_indices.*to_text"):
        OnnxExecutor(model, source="m.onnx")  # all three in one line, before anything runs


def test_weights_computed_at_run_time_are_named_in_the_refusal(tmp_path, imagenet_npz):
    """The model-zoo VGG-19 computes every weight with ConstantOfShape: nothing to mask, and the
    refusal says why instead of only 'no neurons'."""
    out = tmp_path / "x.onnx"
    res = run("repair", light("vgg19"), "--data", imagenet_npz, "--method", "anp", "--param", "iterations=1",
              "--out", out)
    assert res.exit_code == 2
    assert "computes at run time" in res.stderr and "ConstantOfShape" in res.stderr
    assert not out.exists()


def _to_float16(src: Path, dst: Path) -> Path:
    """A float16 vendor file: every float initializer, the input and the output in half precision."""
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for i, init in enumerate(model.graph.initializer):
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr.astype(np.float16), init.name))
    for vi in [*model.graph.input, *model.graph.output]:
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    del model.graph.value_info[:]
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))
    return dst


def test_float16_file_validates_and_repairs_in_its_own_precision(tmp_path, small_npz):
    torch.manual_seed(0)
    src = export_torch_model(NoBias(), (1, 28, 28), tmp_path / "f32.onnx")
    half = _to_float16(src, tmp_path / "f16.onnx")
    assert run("validate", half, "--data", small_npz).exit_code in (0, 1)
    out = tmp_path / "fixed.onnx"
    res = run("repair", half, "--data", small_npz, "--method", "ft", "--param", "iterations=3", "--out", out)
    assert res.exit_code == 0, res.output
    written = onnx.load(str(out))
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}
    assert {i.data_type for i in written.graph.initializer if i.data_type in floats} == {TensorProto.FLOAT16}
    assert written.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16


def test_local_functions_are_inlined_for_the_executor_and_the_inventory(tmp_path, small_npz):
    """A module wrapped in a local function (older dynamo exports): its Conv is a neuron layer and
    the written file keeps the function."""
    fn = helper.make_function("vendor.fn", "ConvRelu", ["x", "w"], ["y"],
                              [helper.make_node("Conv", ["x", "w"], ["c"], name="inner_conv"),
                               helper.make_node("Relu", ["c"], ["y"], name="inner_relu")],
                              [helper.make_opsetid("", 17)])
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("ConvRelu", ["input", "w"], ["h"], name="block", domain="vendor.fn"),
             helper.make_node("GlobalAveragePool", ["h"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc"], ["out"], name="head")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(rng.random((6, 1, 3, 3), dtype=np.float32), "w"),
         numpy_helper.from_array(rng.random((6, 10), dtype=np.float32), "fc")])
    model = helper.make_model(graph, ir_version=10, functions=[fn],
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("vendor.fn", 1)])
    path = tmp_path / "fn.onnx"
    onnx.save(model, str(path))
    res = run("inspect", path)
    assert res.exit_code == 0 and "inner_conv" in res.output, res.output
    out = tmp_path / "fixed.onnx"
    res = run("repair", path, "--data", small_npz, "--method", "anp", "--param", "iterations=2",
              "--param", "batch_size=16", "--param", "threshold=0.99", "--out", out)
    assert res.exit_code == 0, res.output
    assert "pruned: inner_conv" in res.output
    assert len(onnx.load(str(out)).functions) == 1


class TinyTokens(nn.Module):
    """A transformer block's shape: tokens from a patch conv, LayerNorm, an MLP, a mean-pooled head."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(1, 16, 7, stride=7)
        self.norm = nn.LayerNorm(16)
        self.mlp = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)  # (N, 16 tokens, 16 channels)
        t = t + torch.relu(self.mlp(self.norm(t)))
        return self.head(t.mean(1))


def test_layernorm_channels_and_token_projections_are_neurons(tmp_path, small_npz):
    torch.manual_seed(0)
    model = export_torch_model(TinyTokens(), (1, 28, 28), tmp_path / "tokens.onnx")
    res = run("inspect", model, "--json")
    assert res.exit_code == 0, res.output
    import json

    kinds = {l["op"]: l["kind"] for l in json.loads(res.output)["layers"]}
    assert kinds.get("LayerNormalization") == "norm" and kinds.get("MatMul", kinds.get("Gemm")) == "linear", kinds
    out = tmp_path / "fixed.onnx"
    res = run("repair", model, "--data", small_npz, "--method", "anp", "--param", "iterations=2",
              "--param", "batch_size=16", "--param", "threshold=0.9", "--out", out)
    assert res.exit_code == 0, res.output
