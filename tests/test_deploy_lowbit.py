"""Ternary and binary students in their portable form (students.deploy.portable), in ONNX Runtime
and ExecuTorch, on trained weights (a short digits run per scheme).

The claim tested: the portable form rebuilds each layer's eval weight exactly (int8 codes and
their scales: DequantizeLinear for TWN / BinaryConnect / XNOR, a two-scale selection for TTQ),
and XNOR's binarized inputs are ops in the graph, so the runtimes give the validated student's
predictions; only the order of float additions differs. The ONNX file keeps int8 codes.
"""

from __future__ import annotations

import json

import pytest
import torch

from distill.cli import main
from tests.deploy_run import short_run

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEMES = ("twn", "ttq", "binary-connect", "xnor")


# 120 steps: ternary students reach 60-90% on digits, binary ones 18-25% (chance: 10%); enough for
# weights and BN statistics that are not at their init, which is what agreement needs.
ABOVE_CHANCE = {"twn": 0.3, "ttq": 0.3, "binary-connect": 0.15, "xnor": 0.15}


class Runs(dict):
    """scheme -> run folder, each trained on first use (a test of one scheme trains only that one)."""

    def __init__(self, base, digits_root) -> None:
        super().__init__()
        self.base, self.digits_root = base, digits_root

    def __missing__(self, scheme: str):
        self[scheme] = short_run(self.base / scheme, self.digits_root, options={"alpha": 0.25}, scheme=scheme,
                                 steps=120, lr=3e-3)
        return self[scheme]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_root):
    return Runs(tmp_path_factory.mktemp("lowbit"), digits_root)


def export(run, capsys, *args: str) -> dict:
    assert main(["export", str(run), *args, "--json", "--rounds", "1"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_portable_weights_are_exact(runs, scheme):
    """Every quantized layer's rebuilt weight equals its eval weight bit for bit."""
    from distill.driver.stages import load_student
    from students.deploy.portable_model import portable_layer
    from students.qlayers import QConv2d, QLinear

    student = load_student(runs[scheme])[3].eval()
    layers = [(n, m) for n, m in student.named_modules() if isinstance(m, QConv2d | QLinear)]
    assert layers
    for name, layer in layers:
        with torch.no_grad():
            assert torch.equal(portable_layer(layer, name).weight_codes(), layer.quantized_weight().float()), name


@pytest.mark.parametrize("scheme", SCHEMES)
def test_onnx_portable_gives_the_students_predictions(runs, capsys, scheme):
    e = export(runs[scheme], capsys, "--to", "onnx")
    assert e["form"] == "portable" and e["student_top1"] > ABOVE_CHANCE[scheme], e  # trained
    assert e["agreement_top1"] == 1.0, e
    fp32 = sum(p.numel() for p in torch.load(runs[scheme] / "student.pt", weights_only=True).values()) * 4
    assert e["bytes"] < 0.5 * fp32  # int8 codes in the file, not fp32 weights

    import onnx

    graph = onnx.load(e["file"]).graph
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert int8 and all(set(onnx.numpy_helper.to_array(t).ravel().tolist()) <= {-1, 0, 1} for t in int8)
    if scheme != "ttq":
        assert any(n.op_type == "DequantizeLinear" for n in graph.node)


@pytest.mark.parametrize("scheme", ["twn", "xnor"])
def test_executorch_portable_gives_the_students_predictions(runs, capsys, scheme):
    e = export(runs[scheme], capsys, "--to", "executorch")
    assert e["agreement_top1"] == 1.0, e
    if scheme == "twn":  # float-rebuilt weights: every conv and linear inside XNNPACK
        assert e["delegation"]["undelegated_compute"] == [], e["delegation"]


@pytest.mark.parametrize("scheme", ["twn", "ttq"])  # (xnor's binary depthwise convs have no custom kernel)
def test_executorch_custom_kernels_from_the_cli(runs, capsys, scheme):
    """--to executorch --kernels: the packed layers as the project's ExecuTorch kernels, run by
    executorch.runtime (the runner registers them); int8 activations per row are the one
    approximation of an unsimulated student, so agreement is stated, not exact."""
    e = export(runs[scheme], capsys, "--to", "executorch", "--kernels")
    assert e["form"] == "lowbit" and e["runtime"] == "executorch" and e["agreement_top1"] > 0.9, e
    made = json.loads((runs[scheme] / "export" / "student-lowbit.pte.json").read_text())
    ops = made["program"]["custom_ops"]
    assert sum(ops.values()) >= 5 and all(k.startswith("distill.") for k in ops), made["program"]
    portable = runs[scheme] / "export" / "student.pte"
    if portable.is_file():  # 2-/1-bit weights against the portable form's rebuilt fp32 ones
        assert e["bytes"] < 0.5 * portable.stat().st_size


def test_packed_file_from_the_cli(runs, capsys):
    """--to packed: the project's 2-bit file, in PyTorch on the packed kernels (int8 activations per row:
    the one approximation, so agreement is stated, not exact), smaller than the portable ONNX file."""
    e = export(runs["twn"], capsys, "--to", "packed")
    assert e["form"] == "packed" and e["runtime"] == "torch" and e["agreement_top1"] > 0.9, e
    onnx_file = runs["twn"] / "export" / "student.onnx"
    if onnx_file.is_file():
        assert e["bytes"] < onnx_file.stat().st_size


def test_refusals_are_one_line(runs, capsys, tmp_path, digits_root):
    assert main(["export", str(runs["twn"]), "--to", "onnx", "--int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "int8 weights" in err
    for args, words in ((["--to", "onnx", "--kernels"], "--to executorch"), (["--to", "executorch", "--kernels",
                                                                               "--int8"], "exclude")):
        assert main(["export", str(runs["twn"]), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and words in err, err
    dorefa = short_run(tmp_path / "dorefa", digits_root, options={"alpha": 0.25}, scheme="dorefa", steps=1)
    assert main(["export", str(dorefa), "--to", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "dorefa" in err and "portable" in err, err
