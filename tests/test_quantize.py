"""Low-precision layers: quantizer values, STE gradients, the model transform, int8 conversion."""

from __future__ import annotations

import pytest
import torch
import torch.ao.nn.quantized as nnq
from torch import nn

from kernels import ste
from students.qlayers import QConv2d, QLinear
from students.quantize import SCHEMES, clip_latent_, convert_int8, quantize, quantized_layers

pytestmark = pytest.mark.usefixtures("one_thread")


def small_net(in_chans: int = 3, num_classes: int = 10) -> nn.Sequential:
    """Stem conv, a depthwise-separable block, a classifier: the shape of the zoo's students."""
    return nn.Sequential(
        nn.Conv2d(in_chans, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 16, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


def record_forward(layer, monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Capture (input, weight) exactly as the layer's op receives them."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    op = layer.op

    def spy(x, w, bias, padded=False):
        seen.append((x.detach().clone(), w.detach().clone()))
        return op(x, w, bias, padded)

    monkeypatch.setattr(layer, "op", spy)
    return seen


def distinct(t: torch.Tensor) -> set[float]:
    return set(torch.unique(t).tolist())


# ----------------------------------------------------------------------------- forward values


def test_binary_connect_values(monkeypatch):
    torch.manual_seed(0)
    layer = QConv2d(4, 6, 3, scheme="binary-connect", scale="glorot")
    plain = QConv2d(4, 6, 3, scheme="binary-connect", scale=1.0)
    seen = record_forward(layer, monkeypatch)
    seen_plain = record_forward(plain, monkeypatch)
    layer(torch.randn(2, 4, 5, 5))
    plain(torch.randn(2, 4, 5, 5))
    h = (1.5 / (4 * 9 + 6 * 9)) ** 0.5  # Glorot magnitude: fan_in 36, fan_out 54
    assert torch.allclose(torch.tensor(sorted(distinct(seen[0][1]))), torch.tensor([-h, h]))
    assert torch.equal(seen[0][1] > 0, layer.weight > 0)
    assert distinct(seen_plain[0][1]) == {-1.0, 1.0}
    dw = QConv2d(8, 8, 3, groups=8, scheme="binary-connect", scale="glorot")  # fans per group: 9, 9
    assert dw.scheme.alpha(dw).item() == pytest.approx((1.5 / 18) ** 0.5)
    # default: H is the RMS of the weight the layer was made from, frozen in a buffer
    conv = nn.Conv2d(4, 6, 3)
    q = QConv2d.from_float(conv, "binary-connect")
    rms = conv.weight.detach().pow(2).mean().sqrt()
    assert torch.allclose(q.binary_scale, rms) and "binary_scale" in q.state_dict()
    assert torch.allclose(q.quantized_weight().abs(), rms.expand(6, 4, 3, 3))


def test_binary_connect_stochastic_follows_hard_sigmoid(monkeypatch):
    torch.manual_seed(0)
    w = torch.full((20000,), 0.5)
    wb = ste.binary_connect_weight(w, stochastic=True)
    assert distinct(wb) == {-1.0, 1.0}
    assert (wb == 1).float().mean().item() == pytest.approx(0.75, abs=0.02)  # sigma(0.5) = 0.75
    assert distinct(ste.binary_connect_weight(torch.tensor([1.5, -1.2]), stochastic=True)) == {-1.0, 1.0}
    # a stochastic layer samples in training and binarizes deterministically in eval
    layer = QLinear(64, 64, scheme="binary-connect", stochastic=True, scale=1.0)
    seen = record_forward(layer, monkeypatch)
    layer(torch.randn(1, 64))
    layer.eval()(torch.randn(1, 64))
    assert distinct(seen[0][1]) == {-1.0, 1.0}
    assert not torch.equal(seen[0][1], ste.sgn(layer.weight.detach()))  # sampled
    assert torch.equal(seen[1][1], layer.quantized_weight())
    assert torch.equal(seen[1][1], ste.sgn(layer.weight.detach()))


def test_xnor_values_per_filter_and_binary_input(monkeypatch):
    torch.manual_seed(0)
    layer = QConv2d(4, 6, 3, scheme="xnor")
    seen = record_forward(layer, monkeypatch)
    layer(torch.randn(2, 4, 5, 5))
    x, w = seen[0]
    assert distinct(x) == {-1.0, 1.0}
    alpha = layer.weight.detach().abs().mean(dim=(1, 2, 3))
    for o in range(6):
        assert torch.allclose(torch.tensor(sorted(distinct(w[o]))), torch.stack([-alpha[o], alpha[o]]))
    assert len(distinct(alpha)) == 6  # a different scale per filter
    assert torch.allclose(layer.scheme.alpha(layer), alpha)


@pytest.mark.parametrize(("groups", "padding", "stride"), [(1, 1, 1), (1, 0, 2), (4, 1, 2), (8, 1, 1)])
def test_xnor_conv_is_binary_im2col_times_k(groups, padding, stride):
    """What a packed kernel computes: rows of the zero-padded input, sgn of every entry (pads
    included, so they are -1), popcount-style dot with the binary weights, times beta = mean |row|."""
    torch.manual_seed(0)
    layer = QConv2d(8, 8, 3, stride=stride, padding=padding, groups=groups, bias=True, scheme="xnor")
    x = torch.relu(torch.randn(2, 8, 6, 6))
    y = layer(x)
    xp = torch.nn.functional.pad(x, (padding,) * 4)
    wq = layer.quantized_weight()
    per_group = 8 // groups
    outs = []
    for g in range(groups):
        rows = torch.nn.functional.unfold(xp[:, g * per_group : (g + 1) * per_group], 3, stride=stride)
        rows = rows.transpose(1, 2)  # (N, L, C/g*9)
        w = wq[g * per_group : (g + 1) * per_group].reshape(per_group, -1)
        outs.append((ste.sgn(rows) @ w.T) * rows.abs().mean(-1, keepdim=True))
    ref = torch.cat(outs, dim=2).transpose(1, 2).reshape(y.shape) + layer.bias.view(-1, 1, 1)
    assert torch.allclose(y, ref, atol=1e-5)
    assert distinct(ste.sgn(xp)) == {-1.0, 1.0}  # zeros from ReLU and padding carry bit 0


def test_xnor_linear_and_options():
    torch.manual_seed(0)
    layer = QLinear(6, 3, scheme="xnor")
    x = torch.randn(4, 5, 6)
    ref = (ste.sgn(x) @ layer.quantized_weight().T) * x.abs().mean(-1, keepdim=True) + layer.bias
    assert torch.allclose(layer(x), ref, atol=1e-6)
    no_k = QLinear(6, 3, scheme="xnor", act_scale=False)
    assert torch.allclose(no_k(x), ste.sgn(x) @ no_k.quantized_weight().T + no_k.bias, atol=1e-6)
    bwn = QLinear(6, 3, scheme="xnor", binarize_input=False)  # binary weights only (BWN)
    assert bwn.act_bits is None
    assert torch.allclose(bwn(x), x @ bwn.quantized_weight().T + bwn.bias, atol=1e-6)


def test_xnor_relu_input_keeps_sign_information():
    # sgn(relu(y)) == sgn(y): a binary conv after Conv-BN-ReLU sees XNOR-Net's BN -> BinActiv bits
    y = torch.randn(1000)
    assert torch.equal(ste.binary_activation(torch.relu(y)), ste.binary_activation(y))


def test_twn_values(monkeypatch):
    torch.manual_seed(0)
    layer = QConv2d(4, 6, 3, scheme="twn")
    seen = record_forward(layer, monkeypatch)
    layer(torch.randn(2, 4, 5, 5))
    a = layer.weight.detach().abs()
    delta = 0.7 * a.mean()
    alpha = a[a > delta].mean()
    assert torch.allclose(torch.tensor(sorted(distinct(seen[0][1]))), torch.stack([-alpha, alpha * 0, alpha]))
    assert torch.allclose(layer.scheme.threshold(layer), delta) and torch.allclose(layer.scheme.alpha(layer), alpha)
    assert torch.equal(seen[0][1] == 0, a <= delta)


def test_ttq_values(monkeypatch):
    torch.manual_seed(0)
    layer = QConv2d(4, 6, 3, scheme="ttq")
    layer.scheme.set_scales_(layer, 0.3, 0.7)
    seen = record_forward(layer, monkeypatch)
    layer(torch.randn(2, 4, 5, 5))
    assert torch.allclose(torch.tensor(sorted(distinct(seen[0][1]))), torch.tensor([-0.7, 0.0, 0.3]))
    delta = 0.05 * layer.weight.detach().abs().max()
    assert torch.equal(seen[0][1] > 0, layer.weight.detach() > delta)
    assert torch.equal(seen[0][1] < 0, layer.weight.detach() < -delta)


@pytest.mark.parametrize("k", [2, 3, 8])
def test_dorefa_values(k, monkeypatch):
    torch.manual_seed(0)
    layer = QConv2d(8, 16, 3, scheme="dorefa", bits=k)
    seen = record_forward(layer, monkeypatch)
    layer(torch.rand(2, 8, 8, 8) * 1.4 - 0.2)
    x, w = seen[0]
    n = 2**k - 1
    w_levels = {round(2 * i / n - 1, 5) for i in range(n + 1)}
    x_levels = {round(i / n, 5) for i in range(n + 1)}
    assert {round(v, 5) for v in distinct(w)} <= w_levels
    assert {round(v, 5) for v in distinct(x)} <= x_levels
    assert len(distinct(w)) > n // 2 and len(distinct(x)) > n // 2
    if k == 2:  # every one of the 2^k levels is reachable
        assert {round(v, 5) for v in distinct(ste.dorefa_weight(torch.linspace(-3, 3, 101), 2))} == w_levels


def test_dorefa_activation_bits_default_to_weight_bits_and_can_be_off(monkeypatch):
    assert QLinear(4, 4, scheme="dorefa", bits=3).act_bits == 3
    layer = QLinear(4, 4, scheme="dorefa", bits=3, act_bits=32)
    seen = record_forward(layer, monkeypatch)
    x = torch.randn(2, 4)
    layer(x)
    assert layer.act_bits is None and torch.equal(seen[0][0], x)


def test_int8_weight_matches_reference(monkeypatch):
    torch.manual_seed(0)
    layer = QConv2d(4, 6, 3, scheme="int8")
    seen = record_forward(layer, monkeypatch)
    layer(torch.randn(2, 4, 5, 5))
    w = seen[0][1]
    # first observation sets the range exactly, so the fake-quantized weight is the reference
    assert torch.allclose(w, ste.int8_weight(layer.weight), atol=1e-7)
    scale = layer.weight_fake_quant.scale
    for o in range(6):
        codes = w[o] / scale[o]
        assert torch.allclose(codes, codes.round(), atol=1e-4) and len(distinct(w[o])) <= 256


# ----------------------------------------------------------------------------- STE gradients


def grad_of(fn, *inputs, g):
    inputs = [t.clone().requires_grad_(True) for t in inputs]
    fn(*inputs).backward(g)
    return [t.grad for t in inputs]


def test_sign_ste_gradients():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    g = torch.arange(1.0, 7.0)
    assert torch.equal(ste.binary_activation(x), torch.tensor([-1.0, -1, -1, 1, 1, 1]))  # sgn(0) = -1
    (gx,) = grad_of(ste.binary_activation, x, g=g)
    assert torch.equal(gx, torch.tensor([0.0, 2, 3, 4, 5, 0]))  # hard-tanh: passes where |x| <= 1
    (gw,) = grad_of(ste.binary_connect_weight, x, g=g)
    assert torch.equal(gw, g)  # BinaryConnect: identity
    (gw,) = grad_of(lambda w: ste.binary_connect_weight(w, stochastic=True), x, g=g)
    assert torch.equal(gw, g)


def test_xnor_weight_gradient_hand_example():
    w = torch.tensor([[0.5, -1.5, 0.2, -0.1]])
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    alpha = (0.5 + 1.5 + 0.2 + 0.1) / 4  # 0.575
    assert torch.allclose(ste.xnor_weight(w), torch.tensor([[alpha, -alpha, alpha, -alpha]]))
    # dL/dW_i = alpha 1{|W_i|<=1} g_i + sign(W_i)/n sum_j g_j sgn(W_j);  sum_j g_j sgn(W_j) = 1-2+3-4 = -2
    expected = torch.tensor([[alpha - 0.5, 0.0 + 0.5, 3 * alpha - 0.5, 4 * alpha + 0.5]])
    (gw,) = grad_of(ste.xnor_weight, w, g=g)
    assert torch.allclose(gw, expected)


def test_twn_gradient_is_identity():
    w = torch.tensor([0.9, -0.8, 0.01, 0.5, -0.02, -0.6])
    delta = 0.7 * w.abs().mean()  # 0.7 * 2.83 / 6 = 0.330
    alpha = (0.9 + 0.8 + 0.5 + 0.6) / 4
    assert torch.allclose(ste.twn_threshold(w), delta)
    assert torch.allclose(ste.twn_weight(w), torch.tensor([alpha, -alpha, 0, alpha, 0, -alpha]))
    g = torch.arange(1.0, 7.0)
    (gw,) = grad_of(ste.twn_weight, w, g=g)
    assert torch.equal(gw, g)


def test_ttq_gradients_hand_example():
    w = torch.tensor([0.9, -0.8, 0.01, 0.5, -0.02, -0.6])  # delta = 0.05 * 0.9 = 0.045
    wp, wn = torch.tensor([2.0]), torch.tensor([3.0])
    g = torch.arange(1.0, 7.0)
    assert torch.equal(ste.ttq_weight(w, wp, wn), torch.tensor([2.0, -3, 0, 2, 0, -3]))
    gw, gwp, gwn = grad_of(lambda *t: ste.ttq_weight(*t, grads="paper"), w, wp, wn, g=g)
    assert torch.equal(gw, torch.tensor([2 * 1.0, 3 * 2, 3, 2 * 4, 5, 3 * 6]))  # Wp g | g | Wn g
    assert torch.equal(gwp, torch.tensor([1.0 + 4]))  # sum over I_p
    assert torch.equal(gwn, torch.tensor([-(2.0 + 6)]))  # -sum over I_n
    # the default, unit-free rule: factors Wp / s, Wn / s with s = (Wp + Wn) / 2 = 2.5, and means
    gw, gwp, gwn = grad_of(ste.ttq_weight, w, wp, wn, g=g)
    assert torch.allclose(gw, torch.tensor([0.8 * 1, 1.2 * 2, 3, 0.8 * 4, 5, 1.2 * 6]))
    assert torch.allclose(gwp, torch.tensor([(1.0 + 4) / 2]))  # mean over I_p
    assert torch.allclose(gwn, torch.tensor([-(2.0 + 6) / 2]))  # -mean over I_n
    # bound: the latent gradient passes only where |W| <= bound (hard-tanh STE); scales unaffected
    gw_b, gwp_b, gwn_b = grad_of(lambda *t: ste.ttq_weight(*t, bound=0.7), w, wp, wn, g=g)
    assert torch.allclose(gw_b, gw * torch.tensor([0.0, 0, 1, 1, 1, 1]))
    assert torch.equal(gwp_b, gwp) and torch.equal(gwn_b, gwn)
    with pytest.raises(ValueError, match="grads"):
        ste.ttq_weight(w, wp, wn, grads="exact")


def test_ttq_scales_are_positive_by_construction_and_old_state_dicts_load():
    layer = QConv2d(4, 6, 3, scheme="ttq")
    assert {n for n, _ in layer.named_parameters()} == {"weight", "bias", "log_wp", "log_wn"}
    layer.scheme.set_scales_(layer, 0.25, 4.0)
    ttq = layer.scheme
    assert torch.allclose(ttq.wp(layer), torch.tensor([0.25])) and torch.allclose(ttq.wn(layer), torch.tensor([4.0]))
    with torch.no_grad():
        layer.log_wn.fill_(-50.0)  # any real value is a valid (positive) scale
    assert layer.scheme.wn(layer).item() > 0
    with pytest.raises(ValueError, match="> 0"):
        layer.scheme.set_scales_(layer, 0.5, -1.0)
    old = {k: v for k, v in layer.state_dict().items() if k in ("weight", "bias")}
    old.update(wp=torch.tensor([0.3]), wn=torch.tensor([0.7]))  # a checkpoint from before log-scales
    fresh = QConv2d(4, 6, 3, scheme="ttq")
    fresh.load_state_dict(old)
    assert fresh.latent_bound.item() == 0  # unset: the first training forward fixes it
    fresh.train()(torch.randn(1, 4, 5, 5))
    assert torch.equal(fresh.latent_bound, layer.weight.detach().abs().max())
    assert torch.allclose(ttq.wp(fresh), torch.tensor([0.3])) and torch.allclose(ttq.wn(fresh), torch.tensor([0.7]))
    st = fresh.export_state()
    assert torch.allclose(st["wp"], torch.tensor([0.3])) and torch.allclose(st["wn"], torch.tensor([0.7]))


def test_ttq_mobilenet_survives_plain_sgd():
    """The collapse the normalized rule fixes: with the paper's rule as printed, SGD at the demo's
    lr 0.1 made Wn negative and Wp huge within ~5 steps (the scale gradient sums over every
    weight of a layer), and the net never left chance accuracy."""
    import students

    torch.manual_seed(0)
    net = students.create_model("mobilenet_v1", num_classes=10, in_chans=1, variant="cifar", alpha=0.25)
    model = quantize(net, "ttq", skip_depthwise=False)
    start = {n: (m.scheme.wp(m).item(), m.scheme.wn(m).item()) for n, m in quantized_layers(model)}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for _ in range(8):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for name, m in quantized_layers(model):
        wp, wn = m.scheme.wp(m).item(), m.scheme.wn(m).item()
        p0, n0 = start[name]
        assert 0.2 < wp / p0 < 5 and 0.2 < wn / n0 < 5, (name, p0, n0, wp, wn)  # moved, but sanely


def test_quantizer_param_groups():
    from students.quantize import quantizer_param_groups

    assert quantizer_param_groups(quantize(small_net(), "twn")) == []
    assert quantizer_param_groups(small_net()) == []
    model = quantize(small_net(), "ttq", skip_depthwise=False, scale_lr=0.1)
    (group,) = quantizer_param_groups(model)
    assert group["lr_scale"] == 0.1 and group["weight_decay"] == 0.0
    assert [id(p) for p in group["params"]] == [id(p) for p in (model[3].log_wp, model[3].log_wn,
                                                               model[6].log_wp, model[6].log_wn)]
    model[6].log_wn.requires_grad_(False)
    assert len(quantizer_param_groups(model)[0]["params"]) == 3  # frozen parameters stay out
    assert model[3].quantizer_lr_scale == 0.1 and quantize(small_net(), "xnor")[3].quantizer_parameters() == []


def test_dorefa_gradients():
    w = torch.tensor([0.3, -1.2, 0.05, 2.0])
    g = torch.tensor([1.0, -2.0, 0.5, 3.0])
    (gw,) = grad_of(lambda t: ste.dorefa_weight(t, 3), w, g=g)
    # identity through round: the gradient of 2r - 1 = tanh(W) / max|tanh(W)|
    (expected,) = grad_of(lambda t: torch.tanh(t) / torch.tanh(t).abs().max(), w, g=g)
    assert torch.allclose(gw, expected)
    x = torch.tensor([-0.5, 0.2, 0.7, 1.5])
    (gx,) = grad_of(lambda t: ste.dorefa_activation(t, 2), x, g=torch.ones(4))
    assert torch.equal(gx, torch.tensor([0.0, 1, 1, 0]))  # passes inside [0, 1]
    assert torch.allclose(ste.dorefa_activation(x, 2), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))


# ----------------------------------------------------------------------------- training signal


@pytest.mark.parametrize("scheme", SCHEMES)
def test_gradients_reach_latent_weights_and_scales(scheme):
    torch.manual_seed(0)
    model = quantize(small_net(), scheme, skip_depthwise=False)
    model(torch.randn(4, 3, 16, 16)).pow(2).mean().backward()
    layers = quantized_layers(model)
    assert len(layers) == 2
    for name, layer in layers:
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0, name
        if scheme == "ttq":
            assert layer.log_wp.grad.abs().item() > 0 and layer.log_wn.grad.abs().item() > 0, name
    params = {n for n, p in model.named_parameters() if p.grad is not None}
    if scheme == "ttq":
        assert {"3.log_wp", "3.log_wn", "6.log_wp", "6.log_wn"} <= params


@pytest.mark.parametrize("scheme", SCHEMES)
def test_bf16_autocast_and_bf16_weights(scheme):
    """DeepSpeed trains in bf16: under autocast and with bf16 parameters every scheme still trains."""
    torch.manual_seed(0)
    model = quantize(small_net(), scheme)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(2, 3, 8, 8)).float().square().mean().backward()
    half = quantize(small_net(), scheme).to(torch.bfloat16)
    out = half(torch.randn(2, 3, 8, 8, dtype=torch.bfloat16))
    out.float().square().mean().backward()
    assert out.dtype == torch.bfloat16
    for m in (model, half):
        assert all(layer.weight.grad is not None for _, layer in quantized_layers(m))


def test_export_state_rebuilds_the_forward_weight():
    torch.manual_seed(0)
    cases = [("binary-connect", {}), ("xnor", {}), ("twn", {}), ("ttq", {}), ("dorefa", {"bits": 3})]
    for scheme, opts in cases:
        layer = QConv2d(4, 6, 3, scheme=scheme, **opts)
        st = layer.export_state()
        c = st["codes"].float()
        if scheme in ("binary-connect", "twn"):
            rebuilt = st["alpha"] * c
        elif scheme == "xnor":
            rebuilt = st["alpha"].view(-1, 1, 1, 1) * c
        elif scheme == "ttq":
            rebuilt = torch.where(c > 0, st["wp"], torch.where(c < 0, -st["wn"], torch.zeros(())))
        else:
            rebuilt = 2 * c / 7 - 1
        assert torch.allclose(rebuilt, layer.quantized_weight(), atol=1e-6), scheme
    layer = QLinear(5, 3, scheme="int8")
    layer(torch.randn(4, 5))
    st = layer.export_state()
    rebuilt = st["codes"].float() * st["scale"].view(-1, 1)
    assert torch.allclose(rebuilt, layer.eval().quantized_weight(), atol=1e-6)


def test_clip_latent_for_binary_connect_only():
    model = quantize(small_net(), "binary-connect")
    (_, layer), *_ = quantized_layers(model)
    with torch.no_grad():
        layer.weight.mul_(100)
    clip_latent_(model)
    assert layer.weight.abs().max().item() == pytest.approx(layer.scheme.alpha(layer).item())  # [-H, H]
    twn = quantize(small_net(), "twn")
    (_, tl), *_ = quantized_layers(twn)
    with torch.no_grad():
        tl.weight.fill_(5.0)
    clip_latent_(twn)
    assert tl.weight.max().item() == 5.0


# ----------------------------------------------------------------------------- the transform


def test_first_and_last_layers_stay_full_precision():
    net = small_net()
    q = quantize(net, "ttq", skip_depthwise=False)
    assert type(q[0]) is nn.Conv2d and type(q[11]) is nn.Linear
    assert isinstance(q[3], QConv2d) and isinstance(q[6], QConv2d)
    assert torch.equal(q[3].weight, net[3].weight) and q[3].weight is not net[3].weight  # copied
    assert type(net[3]) is nn.Conv2d  # the input model is untouched
    q = quantize(small_net(), "ttq", keep_first=False, keep_last=False, skip_depthwise=False)
    assert isinstance(q[0], QConv2d) and isinstance(q[11], QLinear)
    q = quantize(small_net(), "twn", skip_depthwise=True)
    assert [n for n, _ in quantized_layers(q)] == ["6"]
    # ttq keeps depthwise convs in fp32 unless told otherwise (the ttq scheme's skip_depthwise)
    assert [n for n, _ in quantized_layers(quantize(small_net(), "ttq"))] == ["6"]
    assert [n for n, _ in quantized_layers(quantize(small_net(), "twn"))] == ["3", "6"]
    q = quantize(small_net(), "xnor", exclude=["6"])
    assert [n for n, _ in quantized_layers(q)] == ["3"]
    same = small_net()
    assert quantize(same, "twn", inplace=True) is same and isinstance(same[3], QConv2d)


def test_quantized_model_keeps_state_dict_keys():
    net = small_net()
    q = quantize(net, "dorefa")
    assert set(q.state_dict()) == set(net.state_dict())
    q = quantize(net, "ttq", skip_depthwise=False)
    extra = {f"{i}.{k}" for i in (3, 6) for k in ("log_wp", "log_wn", "latent_bound")}
    assert set(q.state_dict()) - set(net.state_dict()) == extra


def test_shared_module_is_replaced_everywhere():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), conv, nn.ReLU(), conv, nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(1, 3, 4, 4))
    q = quantize(net, "twn")
    assert isinstance(q[1], QConv2d) and q[1] is q[3]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"scheme": "ternary"}, "'ternary'"),
        ({"scheme": "ttq", "bits": 2}, "'bits'"),
        ({"scheme": "dorefa", "bits": 9}, "'bits'"),
        ({"scheme": "dorefa", "act_bits": 1}, "'act_bits'"),
        ({"scheme": "twn", "threshold_factor": -1}, "'threshold_factor'"),
        ({"scheme": "binary-connect", "scale": "he"}, "'scale'"),
        ({"scheme": "int8", "backend": "tpu"}, "'backend'"),
        ({"scheme": "ttq", "grads": "exact"}, "'grads'"),
        ({"scheme": "ttq", "scale_lr": -1}, "'scale_lr'"),
        ({"scheme": "xnor", "exclude": ["nope"]}, "'nope'"),
    ],
)
def test_bad_arguments_name_the_culprit(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        quantize(small_net(), **kwargs)


def test_quantizing_twice_is_refused():
    with pytest.raises(ValueError, match="already quantized"):
        quantize(quantize(small_net(), "twn"), "ttq")


# ----------------------------------------------------------------------------- int8


def test_int8_converts_to_quantized_ops_close_to_fp():
    torch.manual_seed(0)
    net = small_net()
    with pytest.raises(ValueError, match="seen no data"):
        convert_int8(quantize(net, "int8"))
    qat = quantize(net, "int8", keep_last=False)
    for _ in range(8):  # calibration: training-mode passes update the observers (and BN stats)
        x = torch.randn(16, 3, 16, 16)
        qat(x)
        net(x)
    qat.eval()
    net.eval()
    int8 = convert_int8(qat)
    kinds = {type(m) for m in int8.modules()}
    assert {nnq.Conv2d, nnq.Linear, nnq.Quantize, nnq.DeQuantize} <= kinds
    assert not any(isinstance(m, QConv2d | QLinear) for m in int8.modules())
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        ref, sim, real = net(x), qat(x), int8(x)
    assert torch.allclose(real, sim, atol=1e-4)  # the converted model computes what QAT simulated
    assert (real - ref).abs().max() < 0.1 * ref.abs().max()


# ----------------------------------------------------------------------------- the zoo


def _architectures() -> list[str]:
    try:
        from students import list_models
    except ImportError:  # the zoo has not landed yet: test the local net instead
        return ["local-net"]
    return list(list_models()) or ["local-net"]


def _build(name: str) -> nn.Module:
    if name == "local-net":
        return small_net()
    from students import create_model

    return create_model(name, num_classes=10, in_chans=3, variant="cifar")


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("arch", _architectures())
def test_every_architecture_trains_under_every_scheme(arch, scheme):
    torch.manual_seed(0)
    model = quantize(_build(arch), scheme)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    layers = quantized_layers(model)
    assert layers, arch
    with_grad = [n for n, m in layers if m.weight.grad is not None and m.weight.grad.abs().sum() > 0]
    # a layer can see an all-zero gradient (e.g. xnor: every input outside |x| <= 1); most must not
    assert len(with_grad) >= 0.8 * len(layers), (arch, scheme)
    if scheme == "int8":  # the observers have seen a batch: the real int8 model runs too
        with torch.no_grad():
            out = convert_int8(model)(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; the layers are plain torch")
@pytest.mark.parametrize("scheme", SCHEMES)
def test_layers_train_on_cuda(scheme):
    torch.manual_seed(0)
    opts = {"stochastic": True} if scheme == "binary-connect" else {}
    model = quantize(small_net(), scheme, **opts).cuda()
    model(torch.randn(4, 3, 16, 16, device="cuda")).square().mean().backward()
    for name, layer in quantized_layers(model):
        assert layer.weight.grad is not None and layer.weight.grad.is_cuda, name
        assert layer.quantized_weight().is_cuda, name


# ----------------------------------------------------------------------------- convergence


def bars(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 images of one noisy bar: horizontal, vertical, diagonal or anti-diagonal (4 classes)."""
    y = torch.randint(0, 4, (n,), generator=gen)
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=gen)
    pos = torch.randint(1, 7, (n,), generator=gen)
    idx = torch.arange(8)
    for i in range(n):
        p, c = int(pos[i]), int(y[i])
        if c == 0:
            x[i, 0, p, :] += 1
        elif c == 1:
            x[i, 0, :, p] += 1
        elif c == 2:
            x[i, 0, idx, idx] += 1
        else:
            x[i, 0, idx, 7 - idx] += 1
    return x, y


def test_ttq_tiny_net_learns_a_toy_problem():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, stride=2),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 4),
    )
    model = quantize(net, "ttq")
    scales = [(m.scheme.wp(m).item(), m.scheme.wn(m).item()) for _, m in quantized_layers(model)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x_test, y_test = bars(256, gen)
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        start = loss_fn(model.eval()(x_test), y_test).item()
    model.train()
    for _ in range(120):
        x, y = bars(64, gen)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        logits = model.eval()(x_test)
    end = loss_fn(logits, y_test).item()
    acc = (logits.argmax(1) == y_test).float().mean().item()
    assert end < 0.3 * start and acc > 0.9, (start, end, acc)
    assert scales != [(m.scheme.wp(m).item(), m.scheme.wn(m).item()) for _, m in quantized_layers(model)]  # scales learned


# ----------------------------------------------------------------------------- old checkpoints


@pytest.mark.parametrize("scheme", SCHEMES)
def test_state_dicts_saved_before_the_scheme_classes_still_load(scheme):
    """tests/data/qlayers_state_v1.pt holds small nets trained a few steps under every scheme by
    the one-mixin qlayers (commit 4385e19; tests/scripts/make_qlayer_fixture.py): today's layers
    have the same state-dict keys, load those tensors strictly, and compute the same eval
    outputs, export state and packed export. Outputs match to a few float ulps, not bit for bit:
    the fixture's CPU and this one (and the float stem kernel since) sum a conv in other orders."""
    import importlib.util
    from pathlib import Path

    import students

    here = Path(__file__).parent
    spec = importlib.util.spec_from_file_location("make_qlayer_fixture", here / "scripts" / "make_qlayer_fixture.py")
    fixture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixture)
    blob = torch.load(here / "data" / "qlayers_state_v1.pt", weights_only=True)
    old = blob[scheme]
    model = quantize(fixture.net(), scheme, skip_depthwise=False).eval()
    assert list(model.state_dict()) == list(old["state"])  # same keys, same order
    model.load_state_dict(old["state"], strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(blob["input"]), old["output"], rtol=1e-6, atol=1e-6)
    state = model[6].export_state()
    assert state.keys() == old["export_state"].keys()
    for key, value in old["export_state"].items():
        assert torch.equal(state[key], value) if isinstance(value, torch.Tensor) else state[key] == value, key
    if "packed_output" in old:
        with torch.no_grad():
            torch.testing.assert_close(students.export(model)(blob["input"]), old["packed_output"], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- the scheme registry


def test_schemes_by_name_and_their_targets():
    import students
    from students.schemes import make_scheme, scheme_class

    assert students.list_schemes() == list(SCHEMES)
    assert students.schemes_with("packed") == ["binary-connect", "xnor", "twn", "ttq"]
    assert students.schemes_with("int8_module") == ["int8"]
    assert students.schemes_with("portable") == ["binary-connect", "xnor", "twn", "ttq"]
    ttq = make_scheme("ttq", scale_lr=0.5)
    assert ttq == scheme_class("ttq")(scale_lr=0.5) and ttq.options == {
        "threshold_factor": 0.05, "grads": "normalized", "scale_lr": 0.5}
    assert make_scheme("dorefa", bits=3).options["act_bits"] == 3  # act_bits=None means "as bits"
    with pytest.raises(ValueError, match="unknown quantization scheme 'ternary'; choose one of binary-connect"):
        make_scheme("ternary")
    with pytest.raises(ValueError, match="unknown option 'bits' for scheme 'ttq'"):
        make_scheme("ttq", bits=2)
    with pytest.raises(ValueError, match="options .* given with a built scheme"):
        QLinear(4, 4, scheme=ttq, bits=2)
    # One scheme object serves every layer of a model: it holds no tensors.
    model = quantize(small_net(), "twn", keep_first=False)
    assert len({id(m.scheme) for _, m in quantized_layers(model)}) == 1


@pytest.mark.parametrize("scheme", SCHEMES)
def test_code_counts_for_tensorboard(scheme):
    from distill.train.quant_stats import code_fractions

    torch.manual_seed(0)
    layer = QConv2d(4, 6, 3, scheme=scheme)
    counts = layer.scheme.code_counts(layer)
    if layer.weight_bits > 2:  # k-bit and int8 codes are not shown as fractions
        assert counts == {}
        return
    assert sum(counts.values()) == layer.weight.numel()
    assert set(counts) == ({"minus1", "zero", "plus1"} if layer.weight_bits == 2 else {"minus1", "plus1"})
    codes = layer.export_state()["codes"]
    assert counts["minus1"] == int((codes == -1).sum()) > 0
    assert sum(code_fractions(counts).values()) == pytest.approx(1.0)


def test_a_new_scheme_is_one_class(monkeypatch):
    """A scheme defined here, registered, and used by quantize / QLinear / export_state with no
    change anywhere else: the layers hold no scheme names."""
    import dataclasses

    from students.schemes import base, registry

    @dataclasses.dataclass(frozen=True)
    class Sign(base.Scheme):
        scale: float = 1.0
        name = "sign-test"
        weight_bits = 1
        codes = (-1, 1)

        def __post_init__(self) -> None:
            if not base.is_number_in(self.scale, 0, float("inf")):
                raise ValueError(f"option 'scale' must be a positive number, got {self.scale!r}")

        def quantized_weight(self, layer, deterministic=False):
            return self.scale * ste.binary_connect_weight(layer.weight)  # sgn, straight-through

        def codes_and_scales(self, layer, w):
            return {"codes": ste.sgn(w).to(torch.int8)}

    monkeypatch.setitem(registry._SCHEMES, "sign-test", Sign)
    with pytest.raises(ValueError, match="'scale' must be a positive number"):
        quantize(small_net(), "sign-test", scale=-1)
    model = quantize(small_net(), "sign-test", scale=0.5)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    layer = quantized_layers(model)[-1][1]  # the 1x1 conv
    assert layer.weight.grad is not None and distinct(layer.quantized_weight()) == {-0.5, 0.5}
    assert layer.export_state()["scheme"] == "sign-test" and layer.scheme.code_counts(layer)
    assert not layer.scheme.supports("packed")
