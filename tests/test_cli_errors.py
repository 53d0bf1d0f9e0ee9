"""Bad input: exit 2, one clear line naming the problem, and no output file left behind."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from backdoor_audit.cli import main



def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(res, *needles):
    assert res.exit_code == 2, (res.exit_code, res.output, res.stderr)
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _repair(model, data, out):
    return run("repair", model, "--data", data, "--out", out, "--method", "anp", "--param", "iterations=2")


def test_not_an_onnx_file(tmp_path, clean_npz):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n" * 50)
    out = tmp_path / "out.onnx"
    assert_one_line_error(_repair(bad, clean_npz, out), str(bad))
    assert not out.exists()


def test_truncated_onnx(tmp_path, mnist_model, clean_npz):
    data = mnist_model.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.onnx"
    assert_one_line_error(_repair(cut, clean_npz, out), str(cut))
    assert not out.exists()


def test_empty_and_missing_files(tmp_path, clean_npz):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert_one_line_error(run("validate", empty, "--data", clean_npz), "empty")
    assert_one_line_error(run("validate", tmp_path / "nope.onnx", "--data", clean_npz), "no such file")


def test_data_of_the_wrong_shape(tmp_path, mnist_model):
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, x=np.zeros((20, 32, 32, 3), np.uint8), y=np.arange(20) % 10)
    out = tmp_path / "out.onnx"
    res = _repair(mnist_model, rgb, out)
    assert_one_line_error(res, "3x32x32", "1x28x28")
    assert not out.exists()
    assert_one_line_error(run("validate", mnist_model, "--data", rgb), "3x32x32")


def _unsupported_model(path, op="Bernoulli", domain=""):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1, 28, 28])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])
    w = helper.make_tensor("w", TensorProto.FLOAT, [784, 10], np.zeros(784 * 10, np.float32))
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 784])
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["flat"], name="flatten"),
             helper.make_node("MatMul", ["flat", "w"], ["scores"], name="fc"),
             helper.make_node(op, ["scores"], ["logits"], name="odd_node", domain=domain)]
    graph = helper.make_graph(nodes, "g", [x], [y], [w, shape])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def test_unsupported_operator_names_op_and_node(tmp_path, clean_npz):
    model = _unsupported_model(tmp_path / "bernoulli.onnx")  # random sampling: no faithful executor
    out = tmp_path / "out.onnx"
    assert_one_line_error(_repair(model, clean_npz, out), "Bernoulli", "odd_node")
    assert not out.exists()


def test_custom_domain_operator(tmp_path, clean_npz):
    model = _unsupported_model(tmp_path / "custom.onnx", op="Secret", domain="com.vendor")
    res = _repair(model, clean_npz, tmp_path / "out.onnx")
    assert_one_line_error(res, "com.vendor::Secret", "odd_node")


def test_external_data_outside_the_model_folder_is_refused(tmp_path, mnist_model, clean_npz):
    proto = onnx.load(str(mnist_model))
    init = proto.graph.initializer[0]
    init.data_location = TensorProto.EXTERNAL
    del init.external_data[:]
    init.external_data.add(key="location", value="../../etc/passwd")
    init.ClearField("raw_data")
    bad = tmp_path / "escape.onnx"
    onnx.save(proto, str(bad))
    assert_one_line_error(run("inspect", bad), "leaves the model's folder", init.name)


def test_external_data_through_a_symlink_is_refused_before_reading(tmp_path, mnist_model, clean_npz):
    """The loader applies the scan's rules (graph.external): a weights file that is a symlink to
    somewhere else is refused naming the tensor, for repair as for validate."""
    proto = onnx.load(str(mnist_model))
    folder = tmp_path / "vendor"
    folder.mkdir()
    onnx.save(proto, str(folder / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    elsewhere = tmp_path / "elsewhere.data"
    (folder / "m.data").rename(elsewhere)
    (folder / "m.data").symlink_to(elsewhere)
    out = tmp_path / "o.onnx"
    assert_one_line_error(_repair(folder / "m.onnx", clean_npz, out), "symlink", "tensor '")
    assert_one_line_error(run("validate", folder / "m.onnx", "--data", clean_npz), "symlink")
    assert not out.exists()


def test_output_equal_to_input_is_refused(tmp_path, mnist_model, clean_npz):
    copy = tmp_path / "m.onnx"
    copy.write_bytes(mnist_model.read_bytes())
    before = copy.read_bytes()
    assert_one_line_error(_repair(copy, clean_npz, copy), "never modified")
    assert copy.read_bytes() == before


def test_unknown_method_and_bad_option(tmp_path, mnist_model, clean_npz):
    assert_one_line_error(run("repair", mnist_model, "--data", clean_npz, "--out", tmp_path / "o.onnx",
                              "--method", "magic"), "unknown repair method 'magic'")
    assert_one_line_error(run("repair", mnist_model, "--data", clean_npz, "--out", tmp_path / "o.onnx",
                              "--method", "anp", "--param", "iterations=2", "--param", "alpha=3"), "alpha")
    assert not (tmp_path / "o.onnx").exists()


def test_attack_bad_input(tmp_path, clean_npz):
    def run_(*args):  # the defender hold-out is checked too (first line), the rest are about the attack
        return run(*args, "--clean-holdout", 0)

    out = tmp_path / "a.onnx"
    assert_one_line_error(run("attack", "badnets", "--data", clean_npz, "--out", out), "500 clean images")
    assert_one_line_error(run_("attack", "nosuch", "--data", clean_npz, "--out", out), "unknown attack")
    assert_one_line_error(run_("attack", "badnets", "--data", clean_npz, "--out", out, "--arch", "vgg-99"), "vgg-99")
    assert_one_line_error(run_("attack", "badnets", "--data", clean_npz, "--out", out, "--rate", 1.5), "rate")
    assert_one_line_error(run_("attack", "badnets", "--data", clean_npz, "--out", out, "--target", 12), "target")
    assert_one_line_error(run_("attack", "badnets", "--data", clean_npz, "--out", out, "--param", "size=40"), "40")
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (("sig", "--mode", "all-to-all"), "clean-label"),
    (("clb", "--rate", 0), "rate"),
    (("trojannn", "--param", "size=40"), "40"),
    (("wanet", "--param", "k=1"), "k"),
    (("blend", "--param", "alpha=2"), "alpha"),
    (("input-aware", "--param", "colour=red"), "no parameter"),
    (("refool", "--target", -1), "target"),
    (("bn-reparam", "--param", "lambda=1"), "no parameter"),
])
def test_every_attack_refuses_bad_input_before_training(tmp_path, clean_npz, args, message):
    out = tmp_path / "a.onnx"
    assert_one_line_error(run("attack", args[0], "--data", clean_npz, "--out", out, "--clean-holdout", 0, *args[1:]),
                          message)
    assert not out.exists()


def test_validate_without_split_choice(mnist_model):
    from backdoor_audit.data import demo_sample_path

    assert_one_line_error(run("validate", mnist_model, "--data", demo_sample_path()), "--split")
