"""Teacher loading (three formats, one-line errors) and hint capture by module path.

A tiny arch is written as a file next to its weights (the way users ship
``module:callable`` teachers) and saved as a state dict, TorchScript and a
``torch.export`` program with a dynamic batch. Hints from each format must equal
running the submodules by hand. The acceptance test does the same on the shared
CIFAR-10 teachers.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from teachers.archs import TEACHER_ARCHS, create_teacher
from teachers.hints import HintError, capture_hints, run_teacher
from teachers.load import TeacherLoadError, detect_format, load_teacher

SHARED = Path(__file__).parents[2] / "shared" / "teachers" / "cifar10"

TINY_ARCH = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(c)

        def forward(self, x):
            y = F.relu(self.bn(self.conv(x)), inplace=True)  # mutates bn's output after it returns
            return y + x


    class Tiny(nn.Module):
        def __init__(self, num_classes=5, width=8):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(inplace=True))
            self.blocks = nn.Sequential(Block(width), Block(width))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))


    class Shared(nn.Module):
        """One block run twice: no single output to call its hint."""

        def __init__(self):
            super().__init__()
            self.block = Block(3)
            self.skip = nn.Identity()
            self.head = nn.Linear(3, 5)

        def forward(self, x):
            return self.head(self.block(self.block(self.skip(x))).mean((2, 3)))


    class Guarded(nn.Module):
        """A submodule behind an if: TorchScript keeps the branch."""

        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x):
            if bool(x.sum() > 0):
                x = self.a(x)
            return self.b(x)


    def tiny(num_classes=5, width=8):
        return Tiny(num_classes, width)
''')

HINTS = ["stem", "blocks.0.bn", "blocks.0", "blocks.1"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize_bn(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny arch module, an eager model, and the model saved in all three formats."""
    root = tmp_path_factory.mktemp("tiny")
    name = f"tiny_arch_{uuid.uuid4().hex[:8]}"  # unique: the loader imports it by name
    (root / f"{name}.py").write_text(TINY_ARCH)
    spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # torch.jit.script needs the classes' source through the module
    spec.loader.exec_module(module)

    torch.manual_seed(0)
    model = module.tiny().eval()
    _randomize_bn(model, 0)
    files = {"state_dict": root / "tiny.state_dict.pt", "torchscript": root / "tiny.torchscript.pt",
             "export": root / "tiny.pt2"}
    torch.save(model.state_dict(), files["state_dict"])
    torch.jit.save(torch.jit.script(model), files["torchscript"])
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, files["export"])
    yield {"root": root, "module": module, "arch": f"{name}:tiny", "model": model, "files": files}
    sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def loaded(tiny):
    files, arch = tiny["files"], tiny["arch"]
    return {
        "state_dict": load_teacher(files["state_dict"], "state_dict", arch=arch, num_classes=5,
                                   input_shape=(3, 8, 8)),
        "torchscript": load_teacher(files["torchscript"], "torchscript", num_classes=5,
                                    input_shape=(3, 8, 8)),
        "export": load_teacher(files["export"], "export", num_classes=5),  # shape from the program
    }


def _manual_hints(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The hint values computed by calling the submodules by hand."""
    stem = model.stem(x)
    b0 = model.blocks[0]
    bn = b0.bn(b0.conv(stem)).clone()
    out0 = b0(stem)
    return {"stem": stem, "blocks.0.bn": bn, "blocks.0": out0, "blocks.1": model.blocks[1](out0)}


# ---------------------------------------------------------------- formats


def test_formats_give_identical_logits(tiny, loaded):
    assert {name: detect_format(f) for name, f in tiny["files"].items()} == {
        "state_dict": "state_dict", "torchscript": "torchscript", "export": "export"}
    for batch in (1, 3, 7):  # the export's batch dimension is dynamic
        x = torch.randn(batch, 3, 8, 8)
        with torch.inference_mode():
            ref = tiny["model"](x)
            for fmt, model in loaded.items():
                torch.testing.assert_close(model(x), ref, rtol=1e-6, atol=1e-6, msg=f"format {fmt}")
    for model in loaded.values():
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())


def test_auto_format_and_sidecar(tiny, tmp_path):
    for fmt in ("state_dict", "torchscript"):
        shutil.copy(tiny["files"][fmt], tmp_path)
    (tmp_path / "tiny.json").write_text(json.dumps({"arch": tiny["arch"], "arch_kwargs": {"width": 8},
                                                   "input_shape": [3, 8, 8]}))
    x = torch.randn(4, 3, 8, 8)
    with torch.inference_mode():
        ref = tiny["model"](x)
        for source in ("tiny.state_dict.pt", "tiny.json", "tiny.torchscript.pt"):
            # format auto; arch and input shape from the sidecar
            model = load_teacher(str(tmp_path / source), num_classes=5)
            torch.testing.assert_close(model(x), ref, rtol=1e-6, atol=1e-6)


def test_project_arch_state_dict(tmp_path):
    torch.manual_seed(0)
    model = create_teacher("digits_cnn", num_classes=10).eval()
    torch.save(model.state_dict(), tmp_path / "cnn.pt")
    # input_shape comes from the model's input_size; num_classes is passed to the constructor
    back = load_teacher(tmp_path / "cnn.pt", "state_dict", arch="digits_cnn", num_classes=10)
    x = torch.randn(3, 1, 8, 8)
    logits, hints = run_teacher(back, x, ["stages.0", "stages.1", "stages.2"])
    torch.testing.assert_close(logits, model(x).detach())
    assert {k: tuple(v.shape) for k, v in hints.items()} == {
        "stages.0": (3, 64, 8, 8), "stages.1": (3, 128, 4, 4), "stages.2": (3, 256, 2, 2)}


def test_project_archs_sizes():
    student_params = 200_000  # MobileNet v1 alpha=0.25
    for name, (low, high) in {"digits_cnn": (330_000, 400_000), "digits_mlp": (280_000, 330_000)}.items():
        model = TEACHER_ARCHS[name]()
        params = sum(p.numel() for p in model.parameters())
        assert low < params < high and params > 1.4 * student_params, (name, params)
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    mlp = create_teacher("digits_mlp", num_classes=7, in_chans=3)
    _, hints = run_teacher(mlp.eval(), torch.randn(2, 3, 8, 8), ["stages.0", "stages.1"])
    assert [tuple(h.shape) for h in hints.values()] == [(2, 512), (2, 512)]
    with pytest.raises(ValueError, match="unknown teacher architecture 'resnet9000'"):
        create_teacher("resnet9000")


# ---------------------------------------------------------------- hints


def test_hints_match_manual_forward_in_every_format(tiny, loaded):
    x = torch.randn(3, 3, 8, 8)
    with torch.inference_mode():
        expected = _manual_hints(tiny["model"], x)
        assert expected["blocks.0.bn"].min() < 0  # captured before the in-place ReLU
        for fmt, model in loaded.items():
            out, hints = capture_hints(model, x, HINTS)
            assert list(hints) == HINTS
            torch.testing.assert_close(out, tiny["model"](x), rtol=1e-6, atol=1e-6)
            for path in HINTS:
                torch.testing.assert_close(hints[path], expected[path], rtol=1e-6, atol=1e-6,
                                           msg=f"{fmt} hint {path}")


def test_traced_torchscript_hints(tiny, tmp_path):
    torch.jit.save(torch.jit.trace(tiny["model"], torch.randn(2, 3, 8, 8)), tmp_path / "traced.pt")
    traced = load_teacher(tmp_path / "traced.pt", num_classes=5, input_shape=(3, 8, 8))
    x = torch.randn(3, 3, 8, 8)
    with torch.inference_mode():
        expected = _manual_hints(tiny["model"], x)
        _, hints = capture_hints(traced, x, HINTS)
    for path in HINTS:
        torch.testing.assert_close(hints[path], expected[path], rtol=1e-6, atol=1e-6, msg=path)


def test_run_teacher_returns_fp32_logits_and_fp16_hints(tiny, loaded):
    x = torch.randn(5, 3, 8, 8)  # a batch size the export never saw
    expected = _manual_hints(tiny["model"], x)
    for fmt, model in loaded.items():
        logits, hints = run_teacher(model, x, ["blocks.0.bn", "blocks.1"])
        assert logits.dtype == torch.float32 and logits.shape == (5, 5), fmt
        for path, h in hints.items():
            assert h.dtype == torch.float16, fmt
            torch.testing.assert_close(h.float(), expected[path].detach(), rtol=1e-3, atol=2e-3)
        assert run_teacher(model, x, [])[1] == {}


def test_hint_errors(tiny, loaded, tmp_path):
    x = torch.randn(2, 3, 8, 8)
    for fmt, model in loaded.items():
        with pytest.raises(HintError, match="'blocks.7': no operation|'blocks.7' is not a module") as err:
            run_teacher(model, x, ["blocks.7"])
        assert "\n" not in str(err.value), fmt

    shared = tiny["module"].Shared().eval()
    program = torch.export.export(shared, (torch.randn(2, 3, 4, 4),))
    torch.export.save(program, tmp_path / "shared.pt2")
    torch.jit.save(torch.jit.script(shared), tmp_path / "shared.torchscript.pt")
    variants = {"eager": shared, "export": load_teacher(tmp_path / "shared.pt2"),
                "torchscript": load_teacher(tmp_path / "shared.torchscript.pt")}
    y = torch.randn(2, 3, 4, 4)
    for fmt, model in variants.items():
        with pytest.raises(HintError, match="'block'.*(ran 2 times|called from 2 places)"):
            run_teacher(model, y, ["block"])
        assert run_teacher(model, y, ["head"])[1]["head"].shape == (2, 5), fmt
    with pytest.raises(HintError, match="'skip': no operation of the exported graph ran inside"):
        run_teacher(variants["export"], y, ["skip"])
    assert torch.equal(run_teacher(shared, y, ["skip"])[1]["skip"], y.half())  # hooks see an identity

    guarded = torch.jit.script(tiny["module"].Guarded().eval())
    with pytest.raises(HintError, match="'a': module is called under TorchScript control flow"):
        run_teacher(guarded, torch.randn(2, 4), ["a"])
    assert run_teacher(guarded, torch.randn(2, 4), ["b"])[1]["b"].shape == (2, 4)


# ---------------------------------------------------------------- bad checkpoints: one line each


def _load_error(*args, **kwargs) -> str:
    with pytest.raises(TeacherLoadError) as err:
        load_teacher(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_bad_checkpoints_give_one_line_errors(tiny, tmp_path):
    files, arch = tiny["files"], tiny["arch"]
    state = tiny["model"].state_dict()

    msg = _load_error(tmp_path / "nope.pt", "state_dict", arch=arch)
    assert "nope.pt: no such file" in msg
    msg = _load_error(files["state_dict"], "onnx", arch=arch)
    assert "unknown teacher format 'onnx'" in msg
    msg = _load_error(files["state_dict"], "state_dict")
    assert "needs an architecture" in msg
    msg = _load_error(files["state_dict"], "state_dict", arch="no_such_module_xyz:tiny")
    assert "tiny.state_dict.pt" in msg and "does not import" in msg and "no_such_module_xyz" in msg
    msg = _load_error(files["state_dict"], "state_dict", arch=arch.replace(":tiny", ":huge"))
    assert "has no 'huge'" in msg
    msg = _load_error(files["state_dict"], "state_dict", arch="resnet9000")
    assert "unknown arch 'resnet9000'" in msg

    broken = dict(state)
    del broken["blocks.0.bn.weight"], broken["head.bias"]
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "keys.pt")
    msg = _load_error(tmp_path / "keys.pt", "state_dict", arch=arch)
    assert "keys.pt: checkpoint does not match arch" in msg
    assert "missing keys [blocks.0.bn.weight, head.bias]" in msg and "unexpected keys [extra.weight]" in msg

    msg = _load_error(files["state_dict"], "state_dict", arch=arch, arch_kwargs={"width": 4})
    assert "shape mismatch" in msg and "stem.0.weight [8, 3, 3, 3] vs [4, 3, 3, 3]" in msg
    # an arch taking num_classes is built with it, so the checkpoint's head does not fit ...
    msg = _load_error(files["state_dict"], "state_dict", arch=arch, num_classes=10, input_shape=(3, 8, 8))
    assert "built with {'num_classes': 10}" in msg and "head.weight [5, 8] vs [10, 8]" in msg
    # ... and the dry run catches the rest
    msg = _load_error(files["export"], "export", num_classes=10)
    assert "tiny.pt2: teacher outputs 5 classes, expected num_classes=10" in msg
    msg = _load_error(files["torchscript"], "torchscript", num_classes=5)
    assert "cannot check num_classes=5 without the input shape" in msg
    msg = _load_error(files["state_dict"], "state_dict", arch=arch, input_shape=(1, 8, 8))
    assert "forward on an input of shape [2, 1, 8, 8] failed" in msg

    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "notes.pt")
    msg = _load_error(tmp_path / "notes.pt", "state_dict", arch=arch)
    assert "not a state dict" in msg
    (tmp_path / "junk.pt").write_bytes(b"not a model at all")
    assert "not a loadable TorchScript file" in _load_error(tmp_path / "junk.pt", "torchscript")
    assert "not a loadable torch.export program" in _load_error(tmp_path / "junk.pt", "export")
    assert "not a readable state dict" in _load_error(tmp_path / "junk.pt", "state_dict", arch=arch)

    train_mode = tiny["module"].tiny().train()
    torch.export.save(torch.export.export(train_mode, (torch.randn(2, 3, 8, 8),)), tmp_path / "train.pt2")
    assert "exported in training mode" in _load_error(tmp_path / "train.pt2")


def test_wrapped_and_prefixed_state_dicts(tiny, tmp_path):
    state = tiny["model"].state_dict()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}  # DDP in a checkpoint
    torch.save(wrapped, tmp_path / "ddp.ckpt")
    model = load_teacher(tmp_path / "ddp.ckpt", "state_dict", arch=tiny["arch"])
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), tiny["model"](x))


# ---------------------------------------------------------------- acceptance: the shared CIFAR-10 teachers

SHARED_HINTS = {
    "resnet20": {"layer1": (16, 32, 32), "layer2": (32, 16, 16), "layer3": (64, 8, 8)},
    "vgg_small": {"features.6": (32, 16, 16), "features.13": (64, 8, 8), "features.20": (128, 4, 4)},
}


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared CIFAR-10 teachers not found at {SHARED}")
@pytest.mark.parametrize("name", ["resnet20_a", "vgg_small_a", "resnet20_b"])
def test_shared_cifar10_teachers(name):
    arch_name = name.rsplit("_", 1)[0]
    expected_shapes = SHARED_HINTS[arch_name]
    paths = list(expected_shapes)
    files = {"state_dict": SHARED / f"{name}.state_dict.pt", "torchscript": SHARED / f"{name}.torchscript.pt",
             "export": SHARED / f"{name}.pt2"}
    assert {fmt: detect_format(f) for fmt, f in files.items()} == {fmt: fmt for fmt in files}
    models = {fmt: load_teacher(f, fmt, num_classes=10) for fmt, f in files.items()}  # arch/shape: sidecar
    models["sidecar"] = load_teacher(SHARED / f"{name}.json", num_classes=10)
    eager = models["state_dict"]

    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        if arch_name == "resnet20":
            h = eager.layer1(torch.relu(eager.bn1(eager.conv1(x))))
            manual = {"layer1": h, "layer2": eager.layer2(h), "layer3": eager.layer3(eager.layer2(h))}
        else:
            feats, manual = x, {}
            for i, layer in enumerate(eager.features):
                feats = layer(feats)
                if f"features.{i}" in expected_shapes:
                    manual[f"features.{i}"] = feats.clone()
        ref = eager(x)
        for fmt, model in models.items():
            out, hints = capture_hints(model, x, paths)
            torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6, msg=f"{name} {fmt} logits")
            for path in paths:
                assert hints[path].shape == (6, *expected_shapes[path]), (fmt, path)
                torch.testing.assert_close(hints[path], manual[path], rtol=1e-6, atol=1e-6,
                                           msg=f"{name} {fmt} hint {path}")
    logits, hints16 = run_teacher(models["export"], x, paths)
    assert logits.dtype == torch.float32 and all(h.dtype == torch.float16 for h in hints16.values())
