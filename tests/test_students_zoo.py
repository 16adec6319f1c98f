"""Student zoo: published sizes and costs, shapes at both variants, hint paths, errors.

Cost checks build models on the meta device (no weights allocated, no
arithmetic), so they are instant; shape checks run real forward+backward
passes at batch 2 (CIFAR) and batch 1 (ImageNet).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from students import (
    ModelInfo,
    count_macs,
    count_params,
    create_model,
    list_models,
    model_bytes,
    model_info,
    zoo_table,
)

MODELS = [
    "mobilenet_v1",
    "mobilenet_v2",
    "shufflenet_v1",
    "shufflenet_v2",
    "squeezenet1_0",
    "squeezenet1_1",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def meta_model(name: str, **options: object) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **options)


def test_list_models() -> None:
    assert list_models() == MODELS


# Parameters: the widely used reference implementations (torchvision / TF-slim), within 1%.
PARAMS = [
    ("mobilenet_v1", {}, 4_231_976),
    ("mobilenet_v2", {}, 3_504_872),
    ("shufflenet_v2", {}, 2_278_604),
    ("shufflenet_v2", {"width": 0.5}, 1_366_792),
    ("shufflenet_v2", {"width": 2.0}, 7_393_996),
    ("squeezenet1_0", {}, 1_248_424),
    ("squeezenet1_1", {}, 1_235_496),
]


@pytest.mark.parametrize(("name", "options", "expected"), PARAMS)
def test_params_match_reference(name: str, options: dict, expected: int) -> None:
    assert count_params(meta_model(name, **options)) == pytest.approx(expected, rel=0.01)


# Mult-adds as published in the papers (224x224, 1000 classes), within 5%.
MACS = [
    ("mobilenet_v1", {}, 224, 569e6),  # Table 8
    ("mobilenet_v1", {"alpha": 0.5}, 224, 149e6),  # Table 6
    ("mobilenet_v1", {"alpha": 0.25}, 224, 41e6),
    ("mobilenet_v1", {}, 128, 186e6),  # Table 7: rho = 4/7
    ("mobilenet_v2", {}, 224, 300e6),  # Table 4
    ("mobilenet_v2", {"width_mult": 0.35}, 224, 59e6),
    ("shufflenet_v1", {"groups": 3}, 224, 140e6),  # Table 2, 1x (g=3)
    ("shufflenet_v1", {"groups": 1}, 224, 143e6),  # Table 1 complexities
    ("shufflenet_v1", {"groups": 8}, 224, 137e6),
    ("shufflenet_v1", {"scale": 0.5}, 224, 38e6),  # Table 2, 0.5x
    ("shufflenet_v1", {"scale": 2.0}, 224, 524e6),  # Table 8, 2x
    ("shufflenet_v2", {}, 224, 146e6),  # Table 8 / Fig. 1
    ("shufflenet_v2", {"width": 0.5}, 224, 41e6),
    ("shufflenet_v2", {"width": 2.0}, 224, 591e6),
]


@pytest.mark.parametrize(("name", "options", "side", "expected"), MACS)
def test_macs_match_paper(name: str, options: dict, side: int, expected: float) -> None:
    assert count_macs(meta_model(name, **options), (3, side, side)) == pytest.approx(expected, rel=0.05)


def test_squeezenet_1_1_is_cheaper() -> None:
    # The v1.1 release notes: 2.4x less computation than 1.0 at the same accuracy.
    ratio = count_macs(meta_model("squeezenet1_0")) / count_macs(meta_model("squeezenet1_1"))
    assert ratio == pytest.approx(2.4, rel=0.05)


def test_counts_on_real_model_match_meta() -> None:
    real = create_model("shufflenet_v2", width=0.5)
    meta = meta_model("shufflenet_v2", width=0.5)
    assert count_params(real) == count_params(meta)
    assert count_macs(real, (3, 64, 64)) == count_macs(meta, (3, 64, 64))
    assert real.training  # counting must not leave the model in eval mode


def test_model_bytes() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 4, bias=False))
    weights, others = 3 * 8 * 9 + 8 * 4, 8 + 16  # conv+linear weights; conv bias + BN affine
    assert model_bytes(model, 32) == 4 * (weights + others)
    # Below 32 bits each weight tensor also stores one fp32 scale.
    for bits in (8, 2, 1):
        assert model_bytes(model, bits) == -(-(weights * bits + 2 * 32 + others * 32) // 8)
    with pytest.raises(ValueError, match="bits"):
        model_bytes(model, 0)


def test_zoo_table() -> None:
    rows = zoo_table("imagenet", 1000)
    assert [r.name for r in rows] == MODELS
    by_name = {r.name: r for r in rows}
    assert by_name["mobilenet_v2"].params == 3_504_872
    for r in rows:
        assert r.bytes_fp32 > r.bytes_int8 > r.bytes_ternary > r.bytes_binary
        assert r.bytes_int8 < r.bytes_fp32 / 3
    cifar = {r.name: r for r in zoo_table("cifar", 10)}
    assert cifar["mobilenet_v1"].macs < by_name["mobilenet_v1"].macs


@pytest.mark.parametrize("name", MODELS)
def test_model_info(name: str) -> None:
    info = model_info(name)
    assert isinstance(info, ModelInfo) and info.name == name and info.paper
    assert info.input_size == {"imagenet": (3, 224, 224), "cifar": (3, 32, 32)}
    assert len(info.mean["imagenet"]) == len(info.std["cifar"]) == 3


SHAPES = [("cifar", 32, 2), ("cifar", 8, 2), ("imagenet", 224, 1)]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("variant", "side", "batch"), SHAPES)
def test_forward_backward_shapes(name: str, variant: str, side: int, batch: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_chans=2, variant=variant)
    assert model.default_input_size == (2, 224, 224) if variant == "imagenet" else (2, 32, 32)
    x = torch.randn(batch, 2, side, side)
    logits = model(x)
    assert logits.shape == (batch, 7)
    logits.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("name", MODELS)
def test_features_head_split_and_hint_points(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, variant="cifar").eval()
    x = torch.randn(2, 3, 32, 32)
    points = model.hint_points()
    assert points == [f"stages.{i}" for i in range(len(model.stages))] and len(points) >= 3
    captured: list[torch.Tensor] = []
    for path in points:
        model.get_submodule(path).register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features)
        assert torch.allclose(model(x), logits)
    assert features.shape[:2] == (2, model.num_features)
    assert logits.shape == (2, 5)
    assert len(captured) == 2 * len(points)  # hooks fired in both passes, in order
    sides = [t.shape[-1] for t in captured[: len(points)]]
    assert sides == sorted(sides, reverse=True) and sides[-1] < 32


def test_num_classes_zero_gives_pooled_features() -> None:
    for name in ("mobilenet_v2", "squeezenet1_1"):
        model = create_model(name, num_classes=0, variant="cifar").eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 8, 8)).shape == (1, model.num_features)


def test_lead_demo_model() -> None:
    model = create_model("mobilenet_v1", num_classes=10, in_chans=1, variant="cifar", alpha=0.25)
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    assert model.default_input_size == (1, 32, 32)


def test_options_change_the_model() -> None:
    assert meta_model("mobilenet_v1", rho=4 / 7).default_input_size == (3, 128, 128)
    assert create_model("mobilenet_v1", variant="cifar", rho=0.5).default_input_size == (3, 16, 16)
    base = count_params(meta_model("squeezenet1_0"))
    assert count_params(meta_model("squeezenet1_0", bypass="simple")) == base  # identity shortcuts
    fires = meta_model("squeezenet1_0", bypass="simple").modules()
    bypassed = [m.bypass for m in fires if hasattr(m, "bypass")]
    assert bypassed == [False, True, False, True, False, True, False, True]  # fire3/5/7/9
    plain = create_model("squeezenet1_1", variant="cifar", num_classes=4, head_relu=False).eval()
    paper = create_model("squeezenet1_1", variant="cifar", num_classes=4).eval()
    paper.load_state_dict(plain.state_dict())  # same parameters, only the ReLU differs
    with torch.no_grad():
        plain.head.conv[0].bias.fill_(-10.0)  # class scores pushed below zero
        paper.head.conv[0].bias.fill_(-10.0)
        x = torch.randn(8, 3, 16, 16)
        assert (plain(x) < 0).all() and (paper(x) == 0).all()
    for groups in (1, 2, 4, 8):
        for scale in (0.25, 0.5, 1.0):
            model = create_model("shufflenet_v1", groups=groups, scale=scale, variant="cifar", num_classes=3)
            assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)


BAD = [
    (lambda: create_model("resnet50"), "resnet50"),
    (lambda: create_model("mobilenet_v1", width_mult=0.5), "width_mult"),
    (lambda: create_model("mobilenet_v1", variant="tiny"), "tiny"),
    (lambda: create_model("mobilenet_v1", alpha=0), "alpha"),
    (lambda: create_model("mobilenet_v1", rho=1.5), "rho"),
    (lambda: create_model("mobilenet_v2", width_mult=-1), "width_mult"),
    (lambda: create_model("shufflenet_v1", groups=5), "groups"),
    (lambda: create_model("shufflenet_v2", width=0.75), "width"),
    (lambda: create_model("squeezenet1_1", bypass="complex"), "bypass"),
    (lambda: create_model("squeezenet1_1", head_relu="no"), "head_relu"),
    (lambda: create_model("squeezenet1_0", num_classes=-1), "num_classes"),
    (lambda: create_model("squeezenet1_0", in_chans=0), "in_chans"),
    (lambda: model_info("vgg16"), "vgg16"),
]


@pytest.mark.parametrize(("call", "word"), BAD)
def test_bad_input_is_one_line_value_error(call, word: str) -> None:
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    assert word in message and "\n" not in message
