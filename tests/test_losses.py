"""Loss terms against hand-computed values and plain-torch formulas, gradients by gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from distill.losses import (
    TERM_TYPES,
    AttentionTransferTerm,
    CrossEntropyTerm,
    DKDTerm,
    FitNetsTerm,
    FSPTerm,
    KDTerm,
    LossInputs,
    build_term,
)
from distill.losses.dkd import dkd_parts
from teachers.ensemble import combine_probs

D = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = D) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


def feats_inputs(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], epoch: int = 0,
                 name: str = "t1") -> LossInputs:
    return LossInputs(student_logits=torch.zeros(1, 2, dtype=D), targets=torch.zeros(1, dtype=torch.long),
                      teacher_logits=[torch.zeros(1, 2)], teacher_names=[name], teacher_weights=[1.0],
                      student_feats=student, teacher_feats=[teacher], epoch=epoch)


def gradcheck_term(term: torch.nn.Module, make_inputs, *student: torch.Tensor) -> None:
    """gradcheck w.r.t. the student tensors and every parameter of the term (its regressors), in float64."""
    term = term.double()
    names = [n for n, _ in term.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in term.parameters()]
    student = tuple(s.detach().clone().requires_grad_(True) for s in student)
    n = len(student)

    def f(*args: torch.Tensor) -> torch.Tensor:
        return functional_call(term, dict(zip(names, args[n:], strict=True)), (make_inputs(*args[:n]),))

    assert torch.autograd.gradcheck(f, student + tuple(params), eps=1e-6, atol=1e-5)


# --- KD and CE ---------------------------------------------------------------------------------------


def test_kd_hand_computed_two_classes():
    # T = 2. Teacher logits [2 ln 3, 0] -> z/T = [ln 3, 0] -> p_T = [3/4, 1/4].
    # Student logits [0, 0] -> q = [1/2, 1/2].
    # KL(p_T || q) = 3/4 ln(3/4 / 1/2) + 1/4 ln(1/4 / 1/2) = 0.75 ln 1.5 - 0.25 ln 2
    #             = 0.3040988311 - 0.1732867951 = 0.1308120360
    # L_kd = T^2 * KL = 4 * 0.1308120360 = 0.5232481440.
    # dL/dz_s = T^2 * (q - p_T) / T = T * (q - p_T) = 2 * [-1/4, 1/4] = [-0.5, 0.5]
    # (without the T^2 factor it would be [-0.125, 0.125]: soft gradients shrink as 1/T).
    z_s = torch.zeros(1, 2, dtype=D, requires_grad=True)
    inp = LossInputs(student_logits=z_s, targets=torch.tensor([0]),
                     teacher_logits=[torch.tensor([[2 * math.log(3.0), 0.0]])], teacher_names=["a"],
                     teacher_weights=[1.0])
    loss = KDTerm("kd", temperature=2.0)(inp)
    # Teacher targets are fp32 (the ensemble contract), so agreement is to ~1e-7 relative, not 1e-15.
    assert loss.item() == pytest.approx(0.5232481440, abs=1e-6)
    loss.backward()
    assert torch.allclose(z_s.grad, torch.tensor([[-0.5, 0.5]], dtype=D), atol=1e-6)
    # The same numbers through the per-teacher path.
    assert KDTerm("kd", temperature=2.0, teacher="a")(inp).item() == pytest.approx(0.5232481440, abs=1e-6)


def test_kd_matches_formula_and_ensemble():
    z_s = rand(5, 7, seed=1)
    z_a, z_b = rand(5, 7, seed=2).float(), rand(5, 7, seed=3).float()
    inp = LossInputs(student_logits=z_s, targets=torch.zeros(5, dtype=torch.long), teacher_logits=[z_a, z_b],
                     teacher_names=["a", "b"], teacher_weights=[1.0, 3.0])
    T = 3.0
    for rule, p in [
        ("mean_probs", 0.25 * torch.softmax(z_a.double() / T, 1) + 0.75 * torch.softmax(z_b.double() / T, 1)),
        ("mean_logits", torch.softmax((0.25 * z_a.double() + 0.75 * z_b.double()) / T, 1)),
    ]:
        q = torch.softmax(z_s / T, 1)
        want = T**2 * (p * (p.log() - q.log())).sum(1).mean()
        got = KDTerm("kd", temperature=T, combine=rule)(inp)
        assert got.dtype == D
        assert got.item() == pytest.approx(want.item(), rel=1e-5)
    # Per-teacher term ignores the other teacher and the weights.
    p_b = torch.softmax(z_b.double() / T, 1)
    want_b = T**2 * (p_b * (p_b.log() - torch.log_softmax(z_s / T, 1))).sum(1).mean()
    assert KDTerm("kd_b", temperature=T, teacher="b")(inp).item() == pytest.approx(want_b.item(), rel=1e-5)


def test_ensemble_rules_by_hand():
    # Two teachers, 2 classes, T = 1.
    # Teacher a: logits [ln 3, 0] -> [3/4, 1/4]; teacher b: [0, 0] -> [1/2, 1/2].
    za = torch.tensor([[math.log(3.0), 0.0]])
    zb = torch.tensor([[0.0, 0.0]])
    # mean_probs, equal weights: ([3/4, 1/4] + [1/2, 1/2]) / 2 = [5/8, 3/8].
    assert torch.allclose(combine_probs([za, zb], [1, 1], 1.0, "mean_probs"), torch.tensor([[0.625, 0.375]]))
    # mean_probs, weights 3:1 -> 3/4*[3/4, 1/4] + 1/4*[1/2, 1/2] = [11/16, 5/16].
    assert torch.allclose(combine_probs([za, zb], [3, 1], 1.0, "mean_probs"),
                          torch.tensor([[11 / 16, 5 / 16]]))
    # mean_logits, equal weights: logits [ln 3 / 2, 0] = [ln sqrt 3, 0] -> [sqrt3, 1] / (sqrt3 + 1).
    s3 = math.sqrt(3.0)
    assert torch.allclose(combine_probs([za, zb], [1, 1], 1.0, "mean_logits"),
                          torch.tensor([[s3 / (s3 + 1), 1 / (s3 + 1)]]))
    # Temperature 2 on mean_logits: [ln 3 / 4, 0] -> [3^(1/4), 1] / (3^(1/4) + 1).
    r = 3.0**0.25
    assert torch.allclose(combine_probs([za, zb], [1, 1], 2.0, "mean_logits"),
                          torch.tensor([[r / (r + 1), 1 / (r + 1)]]))
    with pytest.raises(ValueError, match="unknown ensemble rule"):
        combine_probs([za], [1], 1.0, "median")


def test_ce_index_and_soft_targets():
    z = rand(4, 3, seed=4)
    y = torch.tensor([0, 2, 1, 1])
    ce = CrossEntropyTerm("ce")
    want = -torch.log_softmax(z, 1)[torch.arange(4), y].mean()
    assert ce(LossInputs(z, y)).item() == pytest.approx(want.item(), rel=1e-10)
    assert ce(LossInputs(z, F.one_hot(y, 3).float())).item() == pytest.approx(want.item(), rel=1e-6)
    assert not ce.needs_teacher


# --- DKD -----------------------------------------------------------------------------------------------


def dkd_reference(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, T: float) -> tuple[float, float]:
    """Plain-torch DKD: binary probabilities directly, non-target softmax by masking the target logit."""
    oh = F.one_hot(y, z_s.shape[1]).to(z_s.dtype)
    ps, pt = torch.softmax(z_s / T, 1), torch.softmax(z_t / T, 1)
    bs = torch.stack([(ps * oh).sum(1), (ps * (1 - oh)).sum(1)], 1)
    bt = torch.stack([(pt * oh).sum(1), (pt * (1 - oh)).sum(1)], 1)
    tckd = (bt * (bt.log() - bs.log())).sum(1).mean() * T**2
    hs = torch.softmax(z_s / T - 1e4 * oh, 1)
    ht = torch.softmax(z_t / T - 1e4 * oh, 1)
    nckd = (torch.xlogy(ht, ht) - ht * torch.log(hs.clamp_min(1e-300))).sum(1).mean() * T**2
    return tckd.item(), nckd.item()


def test_dkd_matches_reference_and_kd_identity():
    z_s, z_t = rand(6, 5, seed=5), rand(6, 5, seed=6) * 2
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    T = 2.5
    tckd, nckd = dkd_parts(z_s, torch.softmax(z_t / T, 1), y, T)
    ref = dkd_reference(z_s, z_t, y, T)
    assert (tckd.item(), nckd.item()) == pytest.approx(ref, rel=1e-8)
    inp = LossInputs(z_s, y, teacher_logits=[z_t], teacher_names=["a"], teacher_weights=[1.0])
    term = DKDTerm("dkd", alpha=0.5, beta=3.0, temperature=T)
    assert term(inp).item() == pytest.approx(0.5 * ref[0] + 3.0 * ref[1], rel=1e-5)
    # Zhao et al. eq. 7, per sample: KD = TCKD + (1 - p_t^T) * NCKD.
    for i in range(6):
        zs, zt, yi = z_s[i:i + 1], z_t[i:i + 1], y[i:i + 1]
        p = torch.softmax(zt / T, 1)
        tc, nc = dkd_parts(zs, p, yi, T)
        kd = T**2 * F.kl_div(torch.log_softmax(zs / T, 1), p, reduction="batchmean")
        assert kd.item() == pytest.approx((tc + (1 - p[0, yi[0]]) * nc).item(), rel=1e-8)


def test_dkd_degenerate_cases():
    T = 2.0
    # Two classes: one non-target class, so NCKD = 0 and TCKD is the whole KD loss.
    # With the hand example of test_kd_hand_computed_two_classes (target 0): TCKD = 0.5232481440.
    z_s = torch.zeros(1, 2, dtype=D)
    z_t = torch.tensor([[2 * math.log(3.0), 0.0]], dtype=D)
    tckd, nckd = dkd_parts(z_s, torch.softmax(z_t / T, 1), torch.tensor([0]), T)
    assert tckd.item() == pytest.approx(0.5232481440, abs=1e-9)
    assert nckd.item() == pytest.approx(0.0, abs=1e-12)
    # Student equal to teacher: both parts vanish.
    z = rand(3, 4, seed=7)
    tckd, nckd = dkd_parts(z, torch.softmax(z / T, 1), torch.tensor([1, 2, 3]), T)
    assert tckd.item() == pytest.approx(0.0, abs=1e-12) and nckd.item() == pytest.approx(0.0, abs=1e-12)
    # Teacher and student agree on the non-target shape, differ only on p_t: NCKD = 0, TCKD > 0.
    zt = torch.tensor([[3.0, 1.0, 0.0]], dtype=D)
    zs = torch.tensor([[0.0, 1.0, 0.0]], dtype=D)
    tckd, nckd = dkd_parts(zs, torch.softmax(zt / T, 1), torch.tensor([0]), T)
    assert nckd.item() == pytest.approx(0.0, abs=1e-12) and tckd.item() > 0.1


def test_dkd_warmup_and_targets():
    z_s, z_t = rand(4, 5, seed=8), rand(4, 5, seed=9)
    y = torch.tensor([0, 1, 2, 3])
    term = DKDTerm("dkd", warmup_epochs=4)
    full = DKDTerm("dkd")(LossInputs(z_s, y, [z_t], ["a"], [1.0])).item()
    for epoch, factor in [(0, 0.25), (1, 0.5), (3, 1.0), (10, 1.0)]:
        got = term(LossInputs(z_s, y, [z_t], ["a"], [1.0], epoch=epoch)).item()
        assert got == pytest.approx(factor * full, rel=1e-9)
    with pytest.raises(ValueError, match="class-index targets"):
        term(LossInputs(z_s, torch.softmax(z_s, 1), [z_t], ["a"], [1.0]))


# --- FitNets -------------------------------------------------------------------------------------------


def test_fitnets_regressor_value_and_pooling():
    term = FitNetsTerm("hint", student_path="s.l2", teacher="t1", teacher_path="t.l3",
                       student_shape=[3, 8, 8], teacher_shape=[5, 4, 4]).double()
    s, t = rand(2, 3, 8, 8, seed=10), rand(2, 5, 4, 4, seed=11)
    w, b = term.regressor.weight, term.regressor.bias
    # Student map is larger: pool it 8x8 -> 4x4 (2x2 averages), then the 1x1 conv.
    r = F.conv2d(F.avg_pool2d(s, 2), w, b)
    want = 0.5 * ((t - r) ** 2).sum() / t.numel()
    got = term(feats_inputs({"s.l2": s}, {"t.l3": t}))
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    assert term.student_hint_paths() == ["s.l2"] and term.teacher_hint_paths() == [("t1", "t.l3")]
    # Teacher larger and channels equal: identity regressor, teacher pooled.
    ident = FitNetsTerm("h2", "a", "t1", "b", student_shape=(4, 2, 2), teacher_shape=(4, 6, 6))
    assert isinstance(ident.regressor, torch.nn.Identity) and not list(ident.parameters())
    s, t = rand(2, 4, 2, 2, seed=12), rand(2, 4, 6, 6, seed=13)
    want = 0.5 * ((F.avg_pool2d(t, 3) - s) ** 2).mean()
    assert ident(feats_inputs({"a": s}, {"b": t})).item() == pytest.approx(want.item(), rel=1e-10)
    # Vectors: a linear regressor.
    vec = FitNetsTerm("h3", "a", "t1", "b", student_shape=[6], teacher_shape=[4]).double()
    s, t = rand(3, 6, seed=14), rand(3, 4, seed=15)
    want = 0.5 * ((t - s @ vec.regressor.weight.T - vec.regressor.bias) ** 2).mean()
    assert vec(feats_inputs({"a": s}, {"b": t})).item() == pytest.approx(want.item(), rel=1e-10)


def test_fitnets_float32_student_fp16_teacher():
    term = FitNetsTerm("hint", "a", "t1", "b", student_shape=[3, 4, 4], teacher_shape=[5, 4, 4])
    out = term(feats_inputs({"a": torch.randn(2, 3, 4, 4)}, {"b": torch.randn(2, 5, 4, 4).half()}))
    assert out.dtype == torch.float32 and torch.isfinite(out)


def test_fitnets_gradcheck():
    term = FitNetsTerm("hint", "a", "t1", "b", student_shape=[2, 4, 4], teacher_shape=[3, 2, 2])
    t = rand(2, 3, 2, 2, seed=16)
    gradcheck_term(term, lambda s: feats_inputs({"a": s}, {"b": t}), rand(2, 2, 4, 4, seed=17))
    vec = FitNetsTerm("hint", "a", "t1", "b", student_shape=[3], teacher_shape=[2])
    tv = rand(2, 2, seed=18)
    gradcheck_term(vec, lambda s: feats_inputs({"a": s}, {"b": tv}), rand(2, 3, seed=19))


def test_two_stage_schedule():
    hint = build_term("hint", "hint", student_path="a", teacher="t1", teacher_path="b",
                      student_shape=[2, 4, 4], teacher_shape=[2, 4, 4], stage_epochs=3)
    kd = build_term("kd", "kd", start_epoch=3)
    ce = build_term("ce", "ce", start_epoch=3)
    always = build_term("kd", "kd0")
    assert [hint.active(e) for e in range(5)] == [True, True, True, False, False]
    assert [kd.active(e) for e in range(5)] == [False, False, False, True, True]
    assert [ce.active(e) for e in range(5)] == [False, False, False, True, True]
    assert all(always.active(e) for e in range(5))
    with pytest.raises(ValueError, match="'hint'.*never be active"):
        build_term("hint", "hint", student_path="a", teacher="t1", teacher_path="b",
                   student_shape=[2, 4, 4], teacher_shape=[2, 4, 4], stage_epochs=0)
    with pytest.raises(ValueError, match="start_epoch must be >= 0"):
        build_term("dkd", "dkd", start_epoch=-1)


# --- attention transfer --------------------------------------------------------------------------------


def at_reference(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    qs, qt = (s**2).sum(1), (t**2).sum(1)
    if qs.shape[-1] > qt.shape[-1]:
        qs = F.avg_pool2d(qs[:, None], qs.shape[-1] // qt.shape[-1])[:, 0]
    qs, qt = qs.flatten(1), qt.flatten(1)
    qs = qs / qs.norm(dim=1, keepdim=True)
    qt = qt / qt.norm(dim=1, keepdim=True)
    return ((qs - qt) ** 2).sum(1).sqrt().mean()


def test_attention_transfer_value():
    s1, t1 = rand(2, 3, 4, 4, seed=20), rand(2, 7, 4, 4, seed=21)
    s2, t2 = rand(2, 4, 8, 8, seed=22), rand(2, 6, 4, 4, seed=23)   # spatial mismatch: student pooled
    term = AttentionTransferTerm("at", teacher="t1", pairs=[["s1", "t1"], ["s2", "t2"]], beta=3.0)
    got = term(feats_inputs({"s1": s1, "s2": s2}, {"t1": t1, "t2": t2}))
    want = 3.0 / 2 * (at_reference(s1, t1) + at_reference(s2, t2))
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    assert term.student_hint_paths() == ["s1", "s2"]
    assert term.teacher_hint_paths() == [("t1", "t1"), ("t1", "t2")]
    # Identical attention (teacher = 2 * student features): zero loss; channel counts may differ.
    same = AttentionTransferTerm("at", teacher="t1", pairs=[["s", "t"]])
    assert same(feats_inputs({"s": s1}, {"t": 2 * s1})).item() == pytest.approx(0.0, abs=1e-12)


def test_attention_transfer_gradcheck():
    t1, t2 = rand(2, 3, 2, 2, seed=24), rand(2, 2, 2, 2, seed=25)
    term = AttentionTransferTerm("at", teacher="t1", pairs=[["s1", "t1"], ["s2", "t2"]])
    gradcheck_term(term, lambda a, b: feats_inputs({"s1": a, "s2": b}, {"t1": t1, "t2": t2}),
                   rand(2, 2, 2, 2, seed=26), rand(2, 3, 4, 4, seed=27))


# --- FSP -----------------------------------------------------------------------------------------------


def fsp_reference(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    if f1.shape[-1] > f2.shape[-1]:
        f1 = F.avg_pool2d(f1, f1.shape[-1] // f2.shape[-1])
    b, c1, h, w = f1.shape
    return f1.reshape(b, c1, h * w) @ f2.reshape(b, f2.shape[1], h * w).transpose(1, 2) / (h * w)


def test_fsp_value_matching_channels():
    s = {"s1": rand(2, 3, 8, 8, seed=30), "s2": rand(2, 4, 4, 4, seed=31)}
    t = {"t1": rand(2, 3, 4, 4, seed=32), "t2": rand(2, 4, 4, 4, seed=33)}
    term = FSPTerm("fsp", teacher="t1", student_pairs=[["s1", "s2"], ["s2", "s2"]],
                   teacher_pairs=[["t1", "t2"], ["t2", "t2"]])
    got = term(feats_inputs(s, t))
    want = ((fsp_reference(s["s1"], s["s2"]) - fsp_reference(t["t1"], t["t2"])) ** 2).mean() + (
        (fsp_reference(s["s2"], s["s2"]) - fsp_reference(t["t2"], t["t2"])) ** 2).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    assert not list(term.parameters())
    # Channel mismatch without shapes: a one-line error naming the layers.
    bad = FSPTerm("fsp", teacher="t1", student_pairs=[["s1", "s2"]], teacher_pairs=[["t2", "t2"]])
    with pytest.raises(ValueError, match=r"'s1' has 3 channels but teacher 't1' layer 't2' has 4"):
        bad(feats_inputs(s, t))


def test_fsp_regressors_value_and_gradcheck():
    term = FSPTerm("fsp", teacher="t1", student_pairs=[["s1", "s2"]], teacher_pairs=[["t1", "t2"]],
                   student_shapes={"s1": [2, 4, 4], "s2": [3, 2, 2]},
                   teacher_shapes={"t1": [4, 2, 2], "t2": [3, 2, 2]}).double()
    assert sorted(term.regressors) == ["0_0"]      # only s1 (2 -> 4 channels) needs one
    s1, s2 = rand(2, 2, 4, 4, seed=34), rand(2, 3, 2, 2, seed=35)
    t = {"t1": rand(2, 4, 2, 2, seed=36), "t2": rand(2, 3, 2, 2, seed=37)}
    reg = term.regressors["0_0"]
    g_s = fsp_reference(F.conv2d(s1, reg.weight, reg.bias), s2)
    want = ((g_s - fsp_reference(t["t1"], t["t2"])) ** 2).mean()
    assert term(feats_inputs({"s1": s1, "s2": s2}, t)).item() == pytest.approx(want.item(), rel=1e-10)
    gradcheck_term(term, lambda a, b: feats_inputs({"s1": a, "s2": b}, t), s1, s2)


# --- gradients of the logit terms ----------------------------------------------------------------------


@pytest.mark.parametrize("type_name, options", [
    ("ce", {}), ("kd", {"temperature": 3.0}), ("kd", {"combine": "mean_logits"}),
    ("dkd", {"alpha": 1.0, "beta": 2.0, "temperature": 2.0}), ("dkd", {"teacher": "b"}),
])
def test_logit_terms_gradcheck(type_name, options):
    term = build_term(type_name, type_name, **options)
    y = torch.tensor([0, 2, 1])
    zt = [rand(3, 4, seed=40), rand(3, 4, seed=41)]
    gradcheck_term(term, lambda z: LossInputs(z, y, zt, ["a", "b"], [1.0, 2.0]), rand(3, 4, seed=42))


# --- registry and errors -------------------------------------------------------------------------------


def test_registry_and_build_errors():
    assert set(TERM_TYPES) == {"ce", "kd", "hint", "at", "fsp", "dkd", "dist", "mlkd", "crd", "rkd", "pkt", "sp", "nst",
                               "reviewkd"}
    with pytest.raises(ValueError, match=r"^loss term 'x': unknown type 'mse'; known: \[") as e:
        build_term("mse", "x")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['temp'\]"):
        build_term("kd", "kd", temp=4)
    with pytest.raises(ValueError, match=r"missing option\(s\) \['student_shape', 'teacher_shape'\]"):
        build_term("hint", "h", student_path="a", teacher="t1", teacher_path="b")
    for type_name, opts in [("hint", {"student_path": "a", "teacher_path": "b", "student_shape": [1, 2, 2],
                                      "teacher_shape": [1, 2, 2]}),
                            ("at", {"pairs": [["a", "b"]]}),
                            ("fsp", {"student_pairs": [["a", "b"]], "teacher_pairs": [["a", "b"]]})]:
        with pytest.raises(ValueError, match=f"loss term 'my_{type_name}': feature terms need `teacher"):
            build_term(type_name, f"my_{type_name}", teacher=None, **opts)
    with pytest.raises(ValueError, match="combine must be one of"):
        build_term("kd", "kd", combine="vote")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        build_term("dkd", "dkd", temperature=0)
    with pytest.raises(ValueError, match="must both be maps"):
        build_term("hint", "h", student_path="a", teacher="t1", teacher_path="b", student_shape=[4],
                   teacher_shape=[4, 2, 2])


def test_runtime_errors_name_the_term():
    kd = KDTerm("kd_c", teacher="c")
    with pytest.raises(ValueError, match=r"loss term 'kd_c': teacher 'c' is not in this batch's teachers"):
        kd(LossInputs(rand(2, 3), torch.tensor([0, 1]), [rand(2, 3)], ["a"], [1.0]))
    with pytest.raises(ValueError, match="needs teacher outputs"):
        KDTerm("kd")(LossInputs(rand(2, 3), torch.tensor([0, 1])))
    hint = FitNetsTerm("hint", "a", "t1", "b", student_shape=[2, 4, 4], teacher_shape=[3, 4, 4])
    with pytest.raises(ValueError, match=r"teacher 't1' returned no hint 'b'.*add it to the teacher's hints"):
        hint(feats_inputs({"a": rand(1, 2, 4, 4)}, {}))
    with pytest.raises(ValueError, match=r"student feature 'a' was not captured"):
        hint(feats_inputs({}, {"b": rand(1, 3, 4, 4)}))
    with pytest.raises(ValueError, match=r"built for \[2, 4, 4\] / \[3, 4, 4\]"):
        hint(feats_inputs({"a": rand(1, 5, 4, 4)}, {"b": rand(1, 3, 4, 4)}))
