"""The repair contract: the option schema and `--param`, `--list`, the wide RepairContext (pixels
and a differentiable preprocessing, data-free mode, trainable weights, BN updates, tensor names),
masks and new weights combined in one write, and the bugs found when the tool was tried as a new
user would (layout/mean/std ignored, click usage errors as "internal error", `import resource`)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import types

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from backdoor_audit.cli import main
from backdoor_audit.errors import SpecError
from backdoor_audit.graph.executor import load_executor
from backdoor_audit.graph.model import open_model
from backdoor_audit.models import build_model
from backdoor_audit.options import Option, Registry, parse_assignments
from backdoor_audit.repair.base import METHODS, RepairContext, RepairResult
from backdoor_audit.repair.run import repair_model

from conftest import export, randomise_bn

OLD_ANP_FLAGS = ("--iterations", "--eps", "--alpha", "--lr", "--batch-size", "--threshold", "--fraction",
                 "--include-head", "--layers", "--bn-stats", "--noise-bound", "--semantics")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def bn_model(tmp_path_factory):
    torch.manual_seed(0)
    model = randomise_bn(build_model("small-resnet", (3, 32, 32), 10))
    return model, export(model, (3, 32, 32), tmp_path_factory.mktemp("bn") / "bn.onnx", "legacy17-bn")


# ------------------------------------------------------------------------------- schema and CLI
def test_repair_list_needs_no_model_and_no_data():
    res = run("repair", "--list")
    assert res.exit_code == 0, res.output
    assert res.output.startswith("anp: Adversarial Neuron Pruning")
    for text in ("source: Wu & Wang, NeurIPS 2021", "needs: labeled clean images", "eps ", "default 0.4",
                 "[ANP Sec. 4.1]", "noise_bound", "project|none"):
        assert text in res.output, text


def test_attack_list_needs_nothing_else():
    res = run("attack", "--list")
    assert res.exit_code == 0, res.output
    assert "attack badnets:" in res.output and "size=3" in res.output and "architectures:" in res.output


def test_old_flags_are_gone_from_help():
    repair_help = run("repair", "--help").output
    assert "--param" in repair_help
    assert not [f for f in OLD_ANP_FLAGS if f in repair_help]
    attack_help = run("attack", "--help").output
    assert "--param" in attack_help
    assert not [f for f in ("--patch", "--size", "--position") if f in attack_help]


def test_param_sets_an_anp_option(tmp_path, mnist_model, clean_npz):
    out = tmp_path / "o.onnx"
    res = run("repair", mnist_model, "--data", clean_npz, "--out", out, "--method", "anp", "--param", "eps=0.3",
              "--param", "iterations=3", "--param", "fraction=0.02", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["params"]["eps"] == 0.3 and report["params"]["iterations"] == 3
    assert report["params"]["alpha"] == 0.2  # untouched options keep the paper's defaults
    prov = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["backdoor_audit.provenance"])
    assert prov["params"]["eps"] == 0.3 and len(report["pruned"]) == round(0.02 * report["units"])


@pytest.mark.parametrize("param, needle", [("eps", "key=value"), ("eps=abc", "number"), ("eps=1.5", "[0, 1]"),
                                           ("magic=1", "has no option magic"), ("iterations=2.5", "integer"),
                                           ("bn_stats=weird", "batch, running"), ("include_head=maybe", "true")])
def test_bad_params_are_one_line_errors(tmp_path, mnist_model, clean_npz, param, needle):
    out = tmp_path / "o.onnx"
    res = run("repair", mnist_model, "--data", clean_npz, "--out", out, "--method", "anp", "--param", param)
    assert res.exit_code == 2, res.output
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert not out.exists()


def test_option_schema_types_and_ranges():
    reg = Registry("thing")
    opts = [Option("n", int, 3, "count", minimum=1), Option("f", float, None, "share", minimum=0, maximum=1,
                                                         open_max=True, optional=True),
            Option("flag", bool, False, "switch"), Option("mode", str, "a", "which", choices=("a", "b"))]
    reg.register("t", summary="s", source="paper", needs="none", options=opts)(lambda ctx, **o: o)
    entry = reg.get("t")
    assert entry.resolve({}) == {"n": 3, "f": None, "flag": False, "mode": "a"}
    assert entry.resolve(parse_assignments(["n=5", "f=0.5", "flag=yes", "mode=b"])) == \
        {"n": 5, "f": 0.5, "flag": True, "mode": "b"}
    assert entry.resolve({"f": "none"})["f"] is None
    for bad in ({"n": "0"}, {"f": "1"}, {"mode": "c"}, {"flag": 2}, {"x": 1}):
        with pytest.raises(SpecError):
            entry.resolve(bad)
    with pytest.raises(SpecError, match="unknown thing 'u'"):
        reg.get("u")
    with pytest.raises(SpecError, match="given twice"):
        parse_assignments(["n=1", "n=2"])


# ------------------------------------------------------------------------- the three user bugs
def test_repair_honours_mean_std_and_layout(tmp_path, mnist_model, clean_npz):
    """repair/run.py called the preprocessing without them: a 3-value mean for a 1-channel model ran
    to the end (scan refused it); now both refuse it, and NHWC on an NCHW model is refused too."""
    out = tmp_path / "o.onnx"
    for extra, needle in ((("--mean", "0.1,0.2,0.3"), "mean has 3 values"),
                          (("--layout", "NHWC"), "NHWC")):
        res = run("repair", mnist_model, "--data", clean_npz, "--out", out, "--method", "anp", "--param",
                  "iterations=2", *extra)
        assert res.exit_code == 2, res.output
        assert needle in res.stderr, res.stderr
        assert not out.exists()
    # a valid mean/std reaches the method: accuracy on the defender's set is computed on those inputs
    ref = repair_model(mnist_model, _npz_images(clean_npz), "anp", tmp_path / "a.onnx", {"iterations": 1})
    shifted = repair_model(mnist_model, _npz_images(clean_npz), "anp", tmp_path / "b.onnx", {"iterations": 1},
                           mean=(0.9,), std=(0.05,))
    assert shifted.clean_acc_before != ref.clean_acc_before


def _npz_images(path):
    from backdoor_audit.data import load_images

    return load_images(path)


def test_click_usage_errors_are_usage_errors_not_internal_errors(tmp_path, mnist_model, clean_npz):
    for args, needle in ((("repair", mnist_model, "--data", clean_npz), "--out is required"),
                         (("repair", mnist_model, "--data", clean_npz, "--out", tmp_path / "o.onnx", "--mean", "abc"),
                          "expected comma-separated numbers")):
        res = run(*args)
        assert res.exit_code == 2, res.output
        assert "internal error" not in res.output + res.stderr
        assert "Usage:" in res.stderr and needle in res.stderr, res.stderr


def test_peak_memory_on_linux_macos_and_windows(monkeypatch):
    from backdoor_audit import util

    fake = types.SimpleNamespace(RUSAGE_SELF=0, getrusage=lambda who: types.SimpleNamespace(ru_maxrss=2 * 1024 * 1024))
    monkeypatch.setitem(sys.modules, "resource", fake)
    monkeypatch.setattr(util, "_PEAK_BEFORE_RESET", 0.0)  # no section of this process reset the mark before
    monkeypatch.setattr(sys, "platform", "darwin")  # bytes there
    assert util.peak_rss_mb() == 2.0
    monkeypatch.setattr(sys, "platform", "linux")  # kilobytes there
    assert util.peak_rss_mb() == 2048.0


def test_a_section_peak_is_its_own_and_the_process_peak_survives_the_reset():
    """Each detector's peak memory is measured by resetting Linux's high-water mark; the mark from
    before the reset still counts in the process's peak (ru_maxrss itself falls with the reset)."""
    code = ("import numpy as np\n"
            "from backdoor_audit.util import peak_rss_mb, section_peak\n"
            "with section_peak() as big:\n"
            "    a = np.ones(400 * 2**20 // 8); del a\n"
            "with section_peak() as small:\n"
            "    b = np.ones(2**20 // 8); del b\n"
            "print(big.own, big.mb, small.mb, peak_rss_mb())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    own, big, small, whole = res.stdout.split()
    big, small, whole = float(big), float(small), float(whole)
    assert big >= 400 and whole >= big
    if own == "True":  # Linux with /proc/self/clear_refs: the second block's peak is its own
        assert small < big - 300
    else:
        assert small == whole


def test_the_package_imports_without_the_resource_module():
    """Windows has no `resource`; importing the repair code and the CLI must not need it."""
    code = ("import sys; sys.modules['resource'] = None\n"
            "import backdoor_audit.repair.run, backdoor_audit.cli\n"
            "from backdoor_audit.util import peak_rss_mb\n"
            "v = peak_rss_mb(); print(type(v).__name__)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "float"


# ---------------------------------------------------------------------------- the wide context
def test_context_pixels_preprocess_and_tensor_names(monkeypatch, tmp_path, mnist_model, mnist_images):
    seen = {}

    def look(ctx: RepairContext, **opts):
        seen["ok"] = torch.equal(ctx.preprocess(ctx.raw), ctx.x)
        seen["raw_range"] = (float(ctx.raw.min()), float(ctx.raw.max()))
        pix = ctx.raw[:2].clone().requires_grad_(True)
        ctx.executor(ctx.preprocess(pix)).sum().backward()
        seen["pixel_grad"] = float(pix.grad.abs().sum())
        return RepairResult("look", opts)

    monkeypatch.setitem(METHODS.entries, "look", _entry("look", look, "labeled"))
    repair_model(mnist_model, mnist_images, "look", tmp_path / "o.onnx", mean=(0.5,), std=(0.25,))
    assert seen["ok"] and 0.0 <= seen["raw_range"][0] and seen["raw_range"][1] <= 1.0
    assert seen["pixel_grad"] > 0  # trigger reverse engineering can optimise in pixel space


def test_bn_layers_name_their_statistics_and_trainable_leaves_them_out(bn_model):
    _, path = bn_model
    m = open_model(path, "cpu")
    bns = [l for l in m.inventory.layers if l.kind == "bn"]
    assert bns and all(set(l.tensors) == {"weight", "bias", "mean", "var"} for l in bns)
    stats = {l.tensors["mean"] for l in bns} | {l.tensors["var"] for l in bns}
    floats = {i.name for i in m.proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    trainable = set(m.executor.trainable_weights())
    assert trainable == floats - stats and len(stats) == 2 * len(bns)


def test_batchnorm_update_mode_moves_running_statistics_as_torch_does(bn_model, cifar_images):
    model, path = bn_model
    ex = load_executor(path, device="cpu")
    torch_bn = [mod for mod in model.modules() if isinstance(mod, nn.BatchNorm2d)][0]
    m = open_model(path, "cpu")
    first = [l for l in m.inventory.layers if l.kind == "bn"][0]
    x = torch.from_numpy(cifar_images.x[:16].astype(np.float32))
    ref = copy.deepcopy(model).train()
    with torch.no_grad():
        expected = ref(x).numpy()
    ref_bn = [mod for mod in ref.modules() if isinstance(mod, nn.BatchNorm2d)][0]
    previous = ex.batchnorm_mode("update")
    with torch.no_grad():
        got = ex(x).numpy()
    ex.batchnorm_mode(previous)
    assert np.abs(got - expected).max() <= 1e-4
    assert torch.allclose(ex.value(first.tensors["mean"]), ref_bn.running_mean, atol=1e-5)
    assert torch.allclose(ex.value(first.tensors["var"]), ref_bn.running_var, atol=1e-5)
    assert not torch.allclose(ref_bn.running_mean, torch_bn.running_mean)  # they did move


def _entry(name, fn, needs):
    reg = Registry("repair method")
    reg.register(name, summary="test method", source="tests", needs=needs, options=[])(fn)
    return reg.get(name)


def test_masks_and_new_weights_on_one_tensor_combine_data_free(monkeypatch, tmp_path, mnist_model):
    """A method that re-weights a layer and prunes a channel of it: the file holds new * mask (before,
    the mask write overwrote the new weights and the parity check deleted the file). It is data-free:
    it runs without --data and the file is checked on random pixels."""
    m = open_model(mnist_model, "cpu")
    conv = next(l for l in m.inventory.layers if l.kind == "conv")
    new_w = m.executor.value(conv.weight).detach().numpy() * 1.5

    def reweight_and_prune(ctx, **opts):
        assert ctx.data_free and ctx.x is None
        mask = np.ones(conv.size, np.float32)
        mask[0] = 0
        return RepairResult("reweight", {}, masks={conv.name: mask}, new_weights={conv.weight: new_w})

    monkeypatch.setitem(METHODS.entries, "reweight", _entry("reweight", reweight_and_prune, "none"))
    out = tmp_path / "o.onnx"
    res = run("repair", mnist_model, "--method", "reweight", "--out", out, "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["parity_max_abs"] <= 1e-4 and rep["pruned"] == [[conv.name, 0]]
    written = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    expected = new_w.copy()
    expected[0] = 0
    assert np.array_equal(written[conv.weight], expected)


def test_a_diverged_method_is_refused_in_one_line_and_writes_nothing(monkeypatch, tmp_path, mnist_model):
    """NaN weights used to pass: NaN logits made the parity check's comparison false, not failed."""
    m = open_model(mnist_model, "cpu")
    conv = next(l for l in m.inventory.layers if l.kind == "conv")
    bad = m.executor.value(conv.weight).detach().numpy().copy()
    bad[0, 0, 0, 0] = np.nan

    def diverge(ctx, **opts):
        return RepairResult("diverge", {}, new_weights={conv.weight: bad})

    monkeypatch.setitem(METHODS.entries, "diverge", _entry("diverge", diverge, "none"))
    out = tmp_path / "o.onnx"
    res = run("repair", mnist_model, "--method", "diverge", "--out", out)
    assert res.exit_code == 2 and not out.exists()
    assert f"diverged: its new values for '{conv.weight}' are not finite" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_method_that_needs_data_refuses_to_run_without(tmp_path, mnist_model):
    res = run("repair", mnist_model, "--method", "anp", "--out", tmp_path / "o.onnx")
    assert res.exit_code == 2 and "needs clean images" in res.stderr, res.stderr


def test_virtual_batchnorm_starts_as_the_identity_and_folds_back(tmp_path, cifar_images):
    """unfold=conv: a BN put back behind each folded conv leaves the function as it was on the
    clean set it was fitted on, folds back into the same weights untrained, and after training the
    written file (initializers only) computes what the executor computed."""
    from backdoor_audit.graph.unfold import VirtualBatchNorm, foldable_convs
    from backdoor_audit.inputs import fit_images

    torch.manual_seed(0)
    src = export(randomise_bn(build_model("small-resnet", (3, 32, 32), 10)), (3, 32, 32), tmp_path / "f.onnx",
                 "dynamo")
    m = open_model(src, "cpu")
    convs = foldable_convs(m.inventory)
    assert convs and m.inventory.batchnorm_state == "absent"
    x = fit_images(m.proto, cifar_images, m.executor.device).x
    with torch.no_grad():
        ref = m.executor(x)
        before = {l.weight: m.executor.value(l.weight).clone() for l in convs}
        vbn = VirtualBatchNorm(m.executor, convs, x, momentum=0.0)  # momentum 0: running stats stay the clean ones
        with vbn:
            got = m.executor(x)
        vbn.fold()
    assert torch.allclose(got, ref, atol=1e-3)
    assert all(torch.allclose(m.executor.value(w), v, rtol=1e-4, atol=1e-6) for w, v in before.items())
    rep = repair_model(src, cifar_images, "ft", tmp_path / "o.onnx",
                       {"iterations": 4, "batch_size": 16, "schedule": "constant"})
    assert rep.parity_max_abs <= 1e-4 and rep.log["unfolded"] == len(convs)


def test_the_default_is_clp_i_bau_then_nc_with_data_and_clp_alone_without(tmp_path, mnist_model, clean_npz):
    res = run("repair", mnist_model, "--out", tmp_path / "o.onnx", "--json")
    assert res.exit_code == 0, res.output + res.stderr
    assert json.loads(res.stdout)["method"] == "clp" and (tmp_path / "o.onnx").is_file()
    res = run("repair", mnist_model, "--data", clean_npz, "--out", tmp_path / "d.onnx", "--json",
              "--param", "i-bau.rounds=1", "--param", "nc.re_steps=3")
    assert res.exit_code == 0, res.output + res.stderr
    report = json.loads(res.stdout)
    assert report["method"] == "clp+i-bau+nc" and set(report["log"]) == {"clp", "i-bau", "nc"}
    assert report["params"]["i-bau.rounds"] == 1  # the user's option wins over the default's 10
    assert report["params"]["nc.re_steps"] == 3
    from backdoor_audit.audit.scan import shipped_calibration
    from backdoor_audit.repair import METHODS
    from backdoor_audit.repair.run import default_method

    name, defaults = default_method(True)
    opts = METHODS.get(name).resolve(defaults)
    nc = shipped_calibration()["neural-cleanse"]
    # NC judges as `audit scan` does: its shipped threshold and run length, not the paper's 2
    assert opts["i-bau.rounds"] == 10 and opts["nc.anomaly"] == nc["value"] and opts["nc.re_steps"] == nc["steps"]


def test_bf16_runs_the_method_under_autocast_and_writes_a_float32_file(tmp_path, monkeypatch, mnist_model,
                                                                      mnist_images):
    """--precision bf16: the method's convolutions run in bfloat16, the accuracy checks and the written
    file stay float32, and the file still matches the executor within 1e-4."""
    import dataclasses

    entry = METHODS.get("ft")
    seen = {}

    def spy(ctx, **opts):
        seen.update(autocast=torch.is_autocast_enabled("cpu"), dtype=torch.get_autocast_dtype("cpu"))
        return entry.run(ctx, **opts)

    monkeypatch.setitem(METHODS.entries, "ft", dataclasses.replace(entry, run=spy))
    opts = {"iterations": 3, "batch_size": 16}
    rep = repair_model(mnist_model, mnist_images, "ft", tmp_path / "b.onnx", opts, device="cpu", precision="bf16")
    assert seen == {"autocast": True, "dtype": torch.bfloat16}
    assert rep.precision == "bf16" and rep.parity_max_abs <= 1e-4
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in onnx.load(str(tmp_path / "b.onnx")).graph.initializer
               if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.BFLOAT16))
    assert not torch.is_autocast_enabled("cpu")
    res = run("repair", mnist_model, "--data", tmp_path / "none.npz", "--out", tmp_path / "c.onnx",
              "--precision", "half")
    assert res.exit_code == 2 and "half" in res.stderr
    with pytest.raises(SpecError, match="precision"):
        repair_model(mnist_model, mnist_images, "ft", tmp_path / "d.onnx", opts, precision="fp8")
    from backdoor_audit.cli.common import PRECISION
    from backdoor_audit.repair.run import PRECISIONS

    assert tuple(PRECISION.choices) == PRECISIONS  # the CLI's torch-free copy
