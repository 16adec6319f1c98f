"""students.export: trained low-bit students -> packed deployable modules, on real data (digits).

A small MobileNetV2 is trained briefly under each scheme with ``students.simulate_export``
(the kernels' int8 activation rounding in training; the export's arithmetic in eval), so BN
statistics and weights are not at their init; it is exported and compared with the trained
model on all 1797 images. Two checks per scheme: an fp "twin" of the export (each packed
layer computed in float with its dequantized weight) must match the model run without the
simulation to float rounding, which pins down weight conversion, BN folding and activation
fusion; and the packed model must give the trained (simulating) model's logits bit for bit,
hence the same top-1 on every image.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import students
from distill.data import load_split
from distill.data.meta import load_meta
from kernels.packed_layers import PACKED_LAYERS, PackedInvertedResidual, load_packed
from students.export import BinaryInputConv2d
from tests.trained_students import train_simulated

ARCH = {"name": "mobilenet_v2", "num_classes": 10, "in_chans": 1, "variant": "cifar", "width_mult": 0.25}
SCHEMES = ("twn", "ttq", "binary-connect", "xnor")
STEPS, BATCH, LR = 100, 32, 1e-2


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits(digits_root):
    meta = load_meta(digits_root)
    xt, yt = load_split(digits_root, meta, "train")
    xv, yv = load_split(digits_root, meta, "val")
    return xt, yt, torch.cat([xt, xv]), torch.cat([yt, yv])


@pytest.fixture(scope="module")
def trained(digits):
    """scheme -> MobileNetV2 trained STEPS Adam steps on digits (one-cycle schedule), in eval mode,
    under students.simulate_export (hooks kept)."""
    xt, yt, _, _ = digits
    models = {}
    for scheme in SCHEMES:
        steps = STEPS if scheme != "xnor" else STEPS // 2  # slow to train, and exact anyway
        models[scheme] = train_simulated(scheme, ARCH, xt, yt, steps, BATCH, LR)
    return models


@contextlib.contextmanager
def float_activations(model: nn.Module):
    """The trained model without the simulation (float activations, unfolded BN, float sums)."""
    students.remove_simulation(model)
    try:
        yield model
    finally:
        students.simulate_export(model)


class _FloatTwin(nn.Module):
    """A packed layer computed in float: its dequantized weight, unquantized activations."""

    def __init__(self, packed: nn.Module) -> None:
        super().__init__()
        self.packed, w = packed, packed.dequantize()
        conv = isinstance(w, torch.Tensor) and w.dim() == 4
        if getattr(packed, "binary_activations", False):
            self.op = BinaryInputConv2d(packed.in_channels, packed.out_channels, packed.kernel_size,
                                        packed.stride, packed.padding, packed.dilation, bias=False,
                                        act_scale=packed.act_scale)  # fmt: skip
            self.op.weight.data.copy_(w)
        elif conv:
            groups = getattr(packed, "groups", 1)  # the fp32 depthwise kernel's layer is grouped
            self.op = lambda x: F.conv2d(x, w, None, packed.stride, packed.padding, packed.dilation, groups)
        else:
            self.op = lambda x: F.linear(x, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.op(x)
        if self.packed.bias is not None:
            y = y + (self.packed.bias.view(-1, 1, 1) if y.dim() == 4 else self.packed.bias)
        lo, hi = self.packed.act_min, self.packed.act_max
        return y if lo is None and hi is None else y.clamp(lo, hi)


def float_twin(deployed: nn.Module) -> nn.Module:
    twin = copy.deepcopy(deployed)
    for name, m in list(twin.named_modules()):
        if isinstance(m, tuple(PACKED_LAYERS.values())):
            parent, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, child, _FloatTwin(m))
    return twin


@pytest.mark.parametrize("scheme", SCHEMES)
def test_export_matches_trained_model(trained, digits, scheme):
    _, _, x, y = digits
    model = trained[scheme]
    deployed = students.export(model)
    assert not deployed.training
    assert any(isinstance(m, tuple(PACKED_LAYERS.values())) for m in deployed.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules()), "every BN is folded"
    with torch.no_grad():
        out_logits = deployed(x)
        ref_logits = model(x)  # the export's arithmetic, on the plain-torch reference ops
        with float_activations(model):
            ref_fp = model(x)
        twin = float_twin(deployed)(x[:512])
    out, ref = out_logits.argmax(1), ref_logits.argmax(1)
    agree_fp = float((out == ref_fp.argmax(1)).float().mean())
    ref_fp = ref_fp[:512]
    # Conversion, BN folding and ReLU6 fusion are exact: only the kernels' int8 rounding differs.
    # (xnor: sgn() of a value within float rounding of 0 may flip; allow an image in a hundred.)
    close = ((twin - ref_fp).abs() <= 1e-4 * ref_fp.abs() + 1e-4 * float(ref_fp.abs().max())).all(dim=1)
    assert float(close.float().mean()) >= (0.99 if scheme == "xnor" else 1.0)
    agreement = float((out == ref).float().mean())
    acc = float((ref == y).float().mean())
    print(f"{scheme}: agreement {agreement:.4f} (with the float model {agree_fp:.4f}), accuracy {acc:.3f}")
    # The simulating model evaluates in the export's arithmetic: same logits, bit for bit. The
    # float model is another model by float rounding, which int8 rounding amplifies into a
    # few flipped near-ties (93-98% here without the simulation in training).
    assert torch.equal(out_logits, ref_logits)
    assert agreement == 1.0
    assert agree_fp >= 0.9


def test_simulated_eval_puts_the_trained_layers_back(trained, digits):
    model = trained["ttq"]
    before = dict(model.named_modules())
    keys = list(model.state_dict())
    with torch.no_grad():
        model(digits[2][:8])
        with pytest.raises(RuntimeError):
            model(torch.zeros(2, 3, 8, 8))  # wrong channel count: raises inside the swapped forward
    assert dict(model.named_modules()) == before and list(model.state_dict()) == keys
    assert not any("_trained_children" in m.__dict__ for m in model.modules())


def test_simulated_eval_reuses_its_view_until_a_weight_changes(trained, digits):
    model = copy.deepcopy(trained["ttq"])  # the copy keeps the simulation hooks
    x = digits[2][:64]
    with torch.no_grad():
        first = model(x)
        views = {id(m): m.__dict__["_deployed_cache"] for m in model.modules() if "_deployed_cache" in m.__dict__}
        assert views and torch.equal(model(x), first)
        assert all(m.__dict__["_deployed_cache"] is views[id(m)] for m in model.modules() if id(m) in views)
        # DeepSpeed ZeRO-1/2 keep the parameters as views of a flat buffer and write updated
        # weights into that buffer: the parameters' own version counters do not move.
        params = list(model.parameters())
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        offset = 0
        for p in params:
            p.data = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        assert torch.equal(model(x), first)
        flat.add_(0.05 * torch.randn_like(flat))
        changed = model(x)
        assert not torch.equal(changed, first)
        assert torch.equal(changed, students.export(model)(x))
        for m in model.modules():  # BN statistics, in place
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(0.1)
        assert torch.equal(model(x), students.export(model)(x))


@pytest.mark.parametrize("name", ["mobilenet_v1", "shufflenet_v2", "squeezenet1_1"])
def test_simulated_eval_is_the_export_for_every_architecture(name):
    """Custom blocks (ShuffleNet's branches, SqueezeNet's Fire: no BN, convs outside any
    Sequential) evaluate exactly as exported too; random weights, BN statistics from a batch."""
    torch.manual_seed(0)
    arch = {"name": name, "num_classes": 10, "in_chans": 1, "variant": "cifar"}
    model = students.quantize(students.create_model(**arch), "twn")
    students.simulate_export(model)
    with torch.no_grad():
        model.train()(torch.randn(32, 1, 16, 16))
        x = torch.randn(16, 1, 16, 16)
        assert torch.equal(students.export(model)(x), model.eval()(x))


def test_mobilenet_v1_blocks_run_fused_and_round_trip(tmp_path):
    """MobileNet v1's depthwise-separable blocks become one fused call each (PackedSeparable: the
    inverted-residual kernel without expansion), the same bits as their layers, and a saved file
    keeps the zoo's keys."""
    from kernels.packed_layers import PackedSeparable

    torch.manual_seed(0)
    arch = {"name": "mobilenet_v1", "num_classes": 10, "in_chans": 3, "variant": "cifar", "alpha": 0.25}
    model = students.quantize(students.create_model(**arch), "twn")
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 16, 16))
    deployed = students.export(model.eval())
    blocks = [m for m in deployed.modules() if isinstance(m, PackedSeparable)]
    assert len(blocks) == 13
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        fused = deployed(x)
        for b in blocks:
            b[0][0].use_reference = True  # each block's layers in turn, on the spec
        assert torch.equal(deployed(x), fused)
        for b in blocks:
            b[0][0].use_reference = False
    students.save_exported(deployed, tmp_path / "v1.pt", arch=arch)
    with torch.no_grad():
        assert torch.equal(students.load_exported(tmp_path / "v1.pt")(x), fused)


def test_relu6_fused_into_packed_layers(trained):
    deployed = students.export(trained["twn"])
    expand = deployed.stages[1][0].conv[0]
    assert isinstance(expand[0], PACKED_LAYERS["ternary_conv2d"])
    assert (expand[0].act_min, expand[0].act_max) == (0.0, 6.0)
    assert isinstance(expand[1], nn.Identity) and isinstance(expand[2], nn.Identity)
    depthwise = deployed.stages[1][0].conv[1]
    # fp32 on the NHWC depthwise kernel, BN folded and ReLU6 fused there too
    assert isinstance(depthwise[0], PACKED_LAYERS["depthwise_conv2d"]) and depthwise[0].groups > 1
    assert (depthwise[0].act_min, depthwise[0].act_max) == (0.0, 6.0) and isinstance(depthwise[2], nn.Identity)
    assert isinstance(deployed.stages[1][0], PackedInvertedResidual)  # the block: one fused call
    # keep_first: the fp32 stem on the stem kernel; keep_last: the fp32 classifier
    assert isinstance(deployed.stem[0], PACKED_LAYERS["conv3x3"]) and type(deployed.head.fc) is nn.Linear


def test_xnor_depthwise_runs_binary_input_conv(trained, digits):
    model = trained["xnor"]
    deployed = students.export(model)
    dw_q = model.stages[1][0].conv[1][0]
    dw = deployed.stages[1][0].conv[1][0]
    assert isinstance(dw, BinaryInputConv2d) and dw.groups == dw_q.groups > 1
    x = torch.randn(3, dw.in_channels, 6, 6)
    bn = model.stages[1][0].conv[1][1]
    with torch.no_grad():
        torch.testing.assert_close(dw(x), bn(dw_q(x)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scheme", ["ttq", "xnor"])
def test_save_load_round_trip(trained, digits, tmp_path, scheme):
    _, _, x, _ = digits
    deployed = students.export(trained[scheme])
    path = tmp_path / "student.pt"
    students.save_exported(deployed, path, ARCH)
    loaded = students.load_exported(path)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x[:256]), deployed(x[:256]))
    assert loaded.state_dict().keys() == deployed.state_dict().keys()
    blob = torch.load(path, weights_only=True)  # plain data and tensors only
    assert blob["arch"]["model"] == ARCH
    with pytest.raises(ValueError, match="holds a whole model"):
        load_packed(path)


def test_load_exported_with_build_for_models_outside_the_zoo(trained, tmp_path):
    deployed = students.export(trained["twn"])
    path = tmp_path / "student.pt"
    students.save_exported(deployed, path)
    with pytest.raises(ValueError, match="pass build="):
        students.load_exported(path)
    loaded = students.load_exported(path, build=lambda arch: students.create_model(**ARCH))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), deployed(x))


def test_float_model_exports_with_bn_folded():
    torch.manual_seed(0)
    model = students.create_model(**ARCH)
    with torch.no_grad():  # non-trivial BN statistics
        model.train()(torch.randn(64, 1, 8, 8) * 2 + 0.5)
    model.eval()
    deployed = students.export(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-4, atol=1e-5)


def test_export_leaves_the_model_alone(trained):
    model = trained["ttq"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    students.export(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unsupported_schemes_and_formats_name_the_problem():
    model = students.quantize(students.create_model(**ARCH), "dorefa").eval()
    with pytest.raises(ValueError, match="scheme 'dorefa'"):
        students.export(model)
    with pytest.raises(ValueError, match="unknown format 'onnx'"):
        students.export(model, "onnx")
    with pytest.raises(ValueError, match="needs example_input"):
        students.export(model, "export")


def test_torch_export_and_torchscript_formats(trained, tmp_path):
    x = torch.randn(2, 1, 8, 8)
    deployed = students.export(trained["twn"])
    program = students.export(trained["twn"], "export", example_input=x)
    assert "distill.ternary_linear" in str(program.graph)
    traced = students.export(trained["twn"], "torchscript", example_input=x)
    traced.save(str(tmp_path / "student.ts"))
    x5 = torch.randn(5, 1, 8, 8)  # another batch size
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x5), deployed(x5))
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "student.ts"))(x5), deployed(x5))
