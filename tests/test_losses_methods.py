"""The distillation methods beyond KD/FitNets/AT/FSP/DKD: each against a value worked out by hand
(the arithmetic is in the comments), a float64 gradcheck, and one short real `distill run` per
family of methods.
"""

from __future__ import annotations

import math

import pytest
import torch

from distill.losses import (
    CRDTerm,
    DISTTerm,
    KDTerm,
    LossInputs,
    MLKDTerm,
    NSTTerm,
    PKTTerm,
    ReviewKDTerm,
    RKDTerm,
    SPTerm,
    build_term,
)
from distill.losses.guards import nonnegative_output
from distill.losses.reviewkd import hcl
from distill.losses.soft_targets import standardize_logits
from teachers.ensemble import combine_probs
from tests.test_losses import D, feats_inputs, gradcheck_term, rand

LN3 = math.log(3.0)


def logit_inputs(z_s: torch.Tensor, teachers: list[torch.Tensor], y: torch.Tensor | None = None,
                 weights: list[float] | None = None, **kw) -> LossInputs:
    names = ["a", "b", "c"][: len(teachers)]
    y = torch.zeros(len(z_s), dtype=torch.long) if y is None else y
    return LossInputs(z_s, y, teachers, names, weights or [1.0] * len(teachers), **kw)


# --- logit standardization, per-teacher mode, confidence-weighted ensembles ----------------------------


def test_standardize_and_kd_on_z_scores():
    # [1, 2, 3]: mean 2, population std sqrt(2/3) -> [-sqrt(3/2), 0, sqrt(3/2)].
    s = math.sqrt(1.5)
    assert torch.allclose(standardize_logits(torch.tensor([[1.0, 2.0, 3.0]], dtype=D)),
                          torch.tensor([[-s, 0.0, s]], dtype=D), atol=1e-6)
    # Two classes, T = 1: student [0, 1] -> z-scores [-1, 1]; teacher [3, 0] -> [1, -1].
    # p_T = [e, e^-1] / (e + e^-1), q = the reverse; log(p_1 / q_1) = 2, log(p_2 / q_2) = -2, so
    # KL = 2 (p_1 - p_2) = 2 tanh(1) = 1.5231883119.
    inp = logit_inputs(torch.tensor([[0.0, 1.0]], dtype=D), [torch.tensor([[3.0, 0.0]], dtype=D)])
    assert KDTerm("kd", temperature=1.0, standardize=True)(inp).item() == pytest.approx(2 * math.tanh(1), abs=1e-6)
    # Scale and shift do not matter: a student at 5 z_t - 2 has the teacher's z-scores, loss 0.
    z_t = rand(4, 6, seed=1)
    inp = logit_inputs(5 * z_t - 2, [z_t])
    assert KDTerm("kd", standardize=True)(inp).item() == pytest.approx(0.0, abs=1e-10)
    assert KDTerm("kd")(inp).item() > 0.1


def test_per_teacher_mode_is_the_weighted_sum_of_single_teacher_terms():
    z_s, z_a, z_b = rand(5, 4, seed=2), rand(5, 4, seed=3), rand(5, 4, seed=4)
    y = torch.tensor([0, 1, 2, 3, 0])
    inp = logit_inputs(z_s, [z_a, z_b], y, weights=[1.0, 3.0])
    for type_name in ("kd", "dkd", "dist", "mlkd"):
        per = build_term(type_name, "x", per_teacher=True)(inp).item()
        a = build_term(type_name, "x", teacher="a")(inp).item()
        b = build_term(type_name, "x", teacher="b")(inp).item()
        assert per == pytest.approx(0.25 * a + 0.75 * b, rel=1e-9), type_name
    with pytest.raises(ValueError, match="per_teacher compares with every teacher"):
        build_term("kd", "x", per_teacher=True, teacher="a")


def test_confidence_weighted_ensembles_by_hand():
    za = torch.tensor([[LN3, 0.0]], dtype=D)  # p = [3/4, 1/4]
    zb = torch.tensor([[0.0, 0.0]], dtype=D)  # p = [1/2, 1/2]
    # label_weighted, y = 0: weights ∝ p_i(y) = 3/4, 1/2 -> 0.6, 0.4; p = 0.6 [.75, .25] + 0.4 [.5, .5].
    got = combine_probs([za, zb], [1, 1], 1.0, "label_weighted", torch.tensor([0]))
    assert torch.allclose(got, torch.tensor([[0.65, 0.35]], dtype=D), atol=1e-12)
    # y = 1: p_i(y) = 1/4, 1/2 -> 1/3, 2/3: p_0 = 1/3 * 3/4 + 2/3 * 1/2 = 7/12.
    got = combine_probs([za, zb], [1, 1], 1.0, "label_weighted", torch.tensor([1]))
    assert torch.allclose(got, torch.tensor([[7 / 12, 5 / 12]], dtype=D), atol=1e-12)
    # Static weights multiply in: 1:2 with y = 1 -> 1/4 : 1 -> 1/5, 4/5.
    got = combine_probs([za, zb], [1, 2], 1.0, "label_weighted", torch.tensor([1]))
    assert got[0, 0].item() == pytest.approx(0.2 * 0.75 + 0.8 * 0.5)
    # Mixup targets [1/2, 1/2]: exp(-CE) = sqrt(p_0 p_1): sqrt(3/16) vs 1/2.
    got = combine_probs([za, zb], [1, 1], 1.0, "label_weighted", torch.tensor([[0.5, 0.5]], dtype=D))
    wa = math.sqrt(3 / 16) / (math.sqrt(3 / 16) + 0.5)
    assert got[0, 0].item() == pytest.approx(wa * 0.75 + (1 - wa) * 0.5)
    # entropy_weighted: H_a = -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.5623351446, H_b = ln 2; weights ∝ e^-H.
    ha, hb = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), math.log(2.0)
    wa = math.exp(-ha) / (math.exp(-ha) + math.exp(-hb))  # 0.5326...
    got = combine_probs([za, zb], [1, 1], 1.0, "entropy_weighted")
    assert got[0, 0].item() == pytest.approx(wa * 0.75 + (1 - wa) * 0.5, rel=1e-12)
    # Confidence is read at T = 1; the mixture is of the softened probabilities (T = 2 here).
    got = combine_probs([za, zb], [1, 1], 2.0, "entropy_weighted")
    p_a0 = math.sqrt(3) / (math.sqrt(3) + 1)
    assert got[0, 0].item() == pytest.approx(wa * p_a0 + (1 - wa) * 0.5, rel=1e-12)
    with pytest.raises(ValueError, match="needs the batch's labels"):
        combine_probs([za, zb], [1, 1], 1.0, "label_weighted")


def test_warmup_every_term():
    z_s, z_t = rand(3, 4, seed=5), rand(3, 4, seed=6)
    full = KDTerm("kd")(logit_inputs(z_s, [z_t])).item()
    term = build_term("kd", "kd", warmup_epochs=2)
    for progress, factor in [(0.5, 0.25), (1.0, 0.5), (2.0, 1.0), (7.3, 1.0)]:
        assert term(logit_inputs(z_s, [z_t], progress=progress)).item() == pytest.approx(factor * full)
    assert term(logit_inputs(z_s, [z_t], epoch=0)).item() == pytest.approx(0.5 * full)  # no progress: epoch end
    late = build_term("kd", "kd", warmup_epochs=2, start_epoch=1)  # the ramp starts with the term
    assert late(logit_inputs(z_s, [z_t], epoch=2, progress=2.0)).item() == pytest.approx(0.5 * full)
    sp = build_term("sp", "sp", teacher="t1", pairs=[["s", "t"]], warmup_epochs=4)
    f = {"s": rand(3, 5, seed=7)}, {"t": rand(3, 6, seed=8)}
    assert sp(feats_inputs(*f, epoch=0)).item() == pytest.approx(0.25 * SPTerm("sp", "t1", [["s", "t"]])(
        feats_inputs(*f)).item())
    with pytest.raises(ValueError, match="warmup_epochs must be >= 0"):
        build_term("ce", "ce", warmup_epochs=-1)


# --- DIST and MLKD ------------------------------------------------------------------------------------


def test_dist_by_hand_and_against_numpy():
    # T = 1. Teacher: sample 0 [ln 3, 0] -> [3/4, 1/4], sample 1 the reverse; the student predicts
    # each sample's opposite. Centered 2-vectors are collinear, so every correlation is -1:
    # inter = mean_b (1 - (-1)) = 2, intra (per class, over the 2 samples) = 2 as well.
    z_t = torch.tensor([[LN3, 0.0], [0.0, LN3]], dtype=D)
    inp = logit_inputs(z_t.flip(1), [z_t])
    assert DISTTerm("d", beta=1.0, gamma=0.5)(inp).item() == pytest.approx(1.0 * 2 + 0.5 * 2, abs=1e-6)
    # General case against numpy's corrcoef, T = 4 (each part times T^2).
    import numpy as np

    z_s, z_t = rand(6, 5, seed=10), rand(6, 5, seed=11)
    ys, yt = torch.softmax(z_s / 4, 1).numpy(), torch.softmax(z_t / 4, 1).numpy()
    inter = np.mean([1 - np.corrcoef(ys[b], yt[b])[0, 1] for b in range(6)])
    intra = np.mean([1 - np.corrcoef(ys[:, c], yt[:, c])[0, 1] for c in range(5)])
    got = DISTTerm("d", beta=2.0, gamma=3.0, temperature=4.0)(logit_inputs(z_s, [z_t])).item()
    assert got == pytest.approx(16 * (2 * inter + 3 * intra), rel=1e-6)


def test_mlkd_by_hand():
    # One sample, 2 classes, T = 1: P_S = [1/2, 1/2], P_T = [3/4, 1/4].
    # ins = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120360
    # batch: P P^T is 1x1: 1/2 vs 3/4^2 + 1/4^2 = 5/8 -> (1/8)^2 / B = 0.015625
    # class: P^T P = [[1/4, 1/4], [1/4, 1/4]] vs [[9/16, 3/16], [3/16, 1/16]]:
    #        (5/16)^2 + 2 (1/16)^2 + (3/16)^2 = 36/256 -> / C = 0.0703125
    want = 0.1308120360 + 0.015625 + 0.0703125
    inp = logit_inputs(torch.zeros(1, 2, dtype=D), [torch.tensor([[LN3, 0.0]], dtype=D)])
    assert MLKDTerm("m", temperatures=[1.0])(inp).item() == pytest.approx(want, abs=1e-9)
    # Several temperatures: the mean over T of T^2 * ins + bat + cls (T^2 on the KL term only, as
    # the authors' code); at T = 2 the teacher is [sqrt3, 1] / (sqrt3 + 1).
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    ins2 = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    bat2 = (0.5 - p**2 - (1 - p) ** 2) ** 2
    cls2 = ((0.25 - p**2) ** 2 + 2 * (0.25 - p * (1 - p)) ** 2 + (0.25 - (1 - p) ** 2) ** 2) / 2
    two = MLKDTerm("m", temperatures=[1.0, 2.0])(inp).item()
    assert two == pytest.approx((want + 4 * ins2 + bat2 + cls2) / 2, abs=1e-9)
    with pytest.raises(ValueError, match="temperatures must be"):
        MLKDTerm("m", temperatures=[])


# --- relational and feature terms ---------------------------------------------------------------------


def test_rkd_by_hand():
    # 1-D embeddings: teacher [0, 1, 3] (distances 1, 3, 2; mean 2 -> psi 1/2, 3/2, 1), student
    # [0, 1, 2] (1, 2, 1; mean 4/3 -> 3/4, 3/2, 3/4). Differences 1/4, 0, -1/4; Huber 0.5 d^2 =
    # 1/32, 0, 1/32, each pair counted twice over the 6 ordered pairs: L_D = (4/32) / 6 = 1/48.
    # Collinear points in the same order have the same angles: L_A = 0.
    s = torch.tensor([[0.0], [1.0], [2.0]], dtype=D)
    t = torch.tensor([[0.0], [1.0], [3.0]], dtype=D)
    term = RKDTerm("r", "t1", [["s", "t"]], distance=1.0, angle=2.0)
    assert term(feats_inputs({"s": s}, {"t": t})).item() == pytest.approx(1 / 48, abs=1e-12)
    # A scaled copy has the same relations: 0. Maps are pooled to embeddings first.
    x = rand(4, 3, 2, 2, seed=12)
    assert term(feats_inputs({"s": 7 * x}, {"t": x})).item() == pytest.approx(0.0, abs=1e-12)
    # Angle only: a right angle in the student vs a straight line in the teacher, 3 points.
    # Student (1,0),(0,0),(0,1): at j=1 cos = 0; at j=0: u_10 = (-1, 0), u_20 = (-1, 1)/sqrt2 -> 1/sqrt2;
    # same at j=2. Teacher (1,0),(0,0),(-1,0): cos -1 at j=1 and +1 at the ends.
    # Per ordered (i, k) with i, k != j: the j=1 entries differ by 1 (x2), the end ones by
    # 1 - 1/sqrt2 (x2 each end), diagonal i = k entries are 1 vs 1; Huber 0.5 d^2 summed over 27 triplets.
    s = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], dtype=D)
    t = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]], dtype=D)
    d_end = 1 - 1 / math.sqrt(2)
    want = (2 * 0.5 * 1**2 + 4 * 0.5 * d_end**2) / 27
    angle = RKDTerm("r", "t1", [["s", "t"]], distance=0.0, angle=1.0)
    assert angle(feats_inputs({"s": s}, {"t": t})).item() == pytest.approx(want, abs=1e-12)


def test_pkt_by_hand():
    # Teacher (1,0), (0,1), (-1,0): K = (cos + 1)/2: K01 = 1/2, K02 = 0, K12 = 1/2.
    #   p_T(.|0) = (1, 0) over (1, 2); p_T(.|1) = (1/2, 1/2) over (0, 2); p_T(.|2) = (0, 1) over (0, 1).
    # Student (1,0), (1,0), (0,1): K01 = 1, K02 = 1/2, K12 = 1/2.
    #   p_S(.|0) = (2/3, 1/3); p_S(.|1) = (2/3, 1/3); p_S(.|2) = (1/2, 1/2).
    # Rows: ln(3/2); 1/2 ln(3/4) + 1/2 ln(3/2) = 1/2 ln(9/8); ln 2. Mean over rows.
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=D)
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=D)
    want = (math.log(1.5) + 0.5 * math.log(9 / 8) + math.log(2.0)) / 3
    got = PKTTerm("p", "t1", [["s", "t"]])(feats_inputs({"s": s}, {"t": t})).item()
    assert got == pytest.approx(want, abs=1e-6)  # eps = 1e-7 inside the logs


def test_sp_by_hand():
    # Student rows (1,0), (0,1): G = I. Teacher rows (1,0), (1,0): G = all ones -> rows (1, 1)/sqrt2.
    # ||G~_S - G~_T||^2 = 2 (1 - 1/sqrt2)^2 + 2 (1/sqrt2)^2 = 1.1715728753; / B^2 = 4.
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D).view(2, 2, 1, 1)
    t = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=D)  # widths differ: B x B Grams
    want = (2 * (1 - 1 / math.sqrt(2)) ** 2 + 1) / 4
    assert SPTerm("sp", "t1", [["s", "t"]])(feats_inputs({"s": s}, {"t": t})).item() == pytest.approx(want)


def test_nst_by_hand():
    # One sample. Student: 1 channel over 2 positions, (1, 0). Teacher: 2 channels, (1, 0) and (0, 1).
    # k = (x.y)^2: mean k(s, s) = 1; teacher Gram [[1, 0], [0, 1]] -> mean 1/2; cross (1, 0) -> 1/2.
    # MMD^2 = 1 + 1/2 - 2 * 1/2 = 1/2.
    s = torch.tensor([1.0, 0.0], dtype=D).view(1, 1, 1, 2)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D).view(1, 2, 1, 2)
    assert NSTTerm("n", "t1", [["s", "t"]])(feats_inputs({"s": s}, {"t": t})).item() == pytest.approx(0.5)
    # Positive activations are not required, and scale does not matter (channels are normalized).
    x = rand(2, 3, 4, 4, seed=13)
    assert NSTTerm("n", "t1", [["s", "t"]])(feats_inputs({"s": 3 * x}, {"t": x})).item() == pytest.approx(0, abs=1e-12)


def test_crd_by_hand_and_memory_bank():
    # Identity heads, tau = 1, s = t = e_0, e_1. Empty bank: each row's logits are (1, 0) with the
    # positive first -> -log(e / (e + 1)) = log(1 + 1/e) = 0.3132616875, both directions alike.
    term = CRDTerm("c", "s", "t1", "t", student_shape=[2], teacher_shape=[2], dim=2, queue_size=8, tau=1.0).double()
    for head in term.heads.values():
        head.weight.data.copy_(torch.eye(2, dtype=D))
        head.bias.data.zero_()
    e = torch.eye(2, dtype=D)
    inp = feats_inputs({"s": e}, {"t": e})
    assert term(inp).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-12)
    # That (training) forward stored both embeddings: now each row also sees the stored (1, 0), (0, 1):
    # logits (1, 0, 1, 0) -> -log(e / (2e + 2)) = log(2 + 2/e).
    assert int(term.bank_fill) == 2
    assert term(inp).item() == pytest.approx(math.log(2 + 2 * math.exp(-1)), abs=1e-12)
    # Training steps backpropagate through the bank they read while the forward wrote the next batch in.
    for _ in range(2):
        s = e.clone().requires_grad_(True)
        term(feats_inputs({"s": s}, {"t": e})).backward()
        assert s.grad is not None and torch.isfinite(s.grad).all()
    term.bank_fill.fill_(4)
    term.bank_next.fill_(4)
    term.eval()  # evaluation reads the bank and never writes it
    term(inp)
    assert int(term.bank_fill) == 4 and int(term.bank_next) == 4
    with pytest.raises(ValueError, match="CRD needs student_shape and teacher_shape"):
        CRDTerm("c", "s", "t1", "t")(inp)


def test_reviewkd_hcl_by_hand_and_shapes():
    # 2x2 maps: F = 0, G = [[1, 0], [0, 0]]. Full-size MSE 1/4; pooled to 1x1 (4 and 2 are not smaller
    # than the map): 1/4 vs 0 -> 1/16 at weight 1/2. HCL = (1/4 + 1/32) / (1 + 1/2) = 0.1875.
    f = torch.zeros(1, 1, 2, 2, dtype=D)
    g = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=D).view(1, 1, 2, 2)
    assert hcl(f, g).item() == pytest.approx(0.1875)
    term = ReviewKDTerm("r", "t1", ["s1", "s2"], ["t1", "t2"], {"s1": [3, 4, 4], "s2": [5, 2, 2]},
                        {"t1": [6, 4, 4], "t2": [7, 2, 2]}, mid=4)
    assert [lv.out.out_channels for lv in term.levels] == [6, 7]
    assert term.levels[0].att is not None and term.levels[1].att is None  # the deepest level fuses nothing
    feats = {"s1": rand(2, 3, 4, 4, seed=14), "s2": rand(2, 5, 2, 2, seed=15)}
    teach = {"t1": rand(2, 6, 4, 4, seed=16), "t2": rand(2, 7, 2, 2, seed=17)}
    assert term(feats_inputs(feats, teach)).item() > 0
    with pytest.raises(ValueError, match="matched in order"):
        ReviewKDTerm("r", "t1", ["s1"], ["t1", "t2"])


# --- gradients ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_name, options", [
    ("kd", {"standardize": True}), ("kd", {"per_teacher": True}), ("kd", {"combine": "entropy_weighted"}),
    ("kd", {"combine": "label_weighted"}), ("dkd", {"standardize": True, "per_teacher": True}),
    ("dist", {"temperature": 2.0, "beta": 1.0, "gamma": 2.0}), ("dist", {"standardize": True}),
    ("mlkd", {"temperatures": [1.0, 3.0]}), ("mlkd", {"standardize": True, "combine": "label_weighted"}),
])
def test_logit_methods_gradcheck(type_name, options):
    term = build_term(type_name, type_name, **options)
    y = torch.tensor([0, 2, 1])
    zt = [rand(3, 4, seed=40), rand(3, 4, seed=41)]
    gradcheck_term(term, lambda z: LossInputs(z, y, zt, ["a", "b"], [1.0, 2.0]), rand(3, 4, seed=42))


@pytest.mark.parametrize("type_name, options, s_shape, t_shape", [
    ("rkd", {}, (4, 3, 2, 2), (4, 5)),
    ("pkt", {}, (4, 3), (4, 6)),
    ("sp", {}, (3, 2, 2, 2), (3, 3, 4, 4)),
    ("nst", {}, (2, 3, 4, 4), (2, 5, 2, 2)),
    ("crd", {"student_shape": [3], "teacher_shape": [5], "dim": 4, "queue_size": 6, "tau": 0.5}, (3, 3, 2, 2), (3, 5)),
])
def test_feature_methods_gradcheck(type_name, options, s_shape, t_shape):
    pair_opts = {"student_path": "s", "teacher_path": "t"} if type_name == "crd" else {"pairs": [["s", "t"]]}
    term = build_term(type_name, type_name, teacher="t1", **pair_opts, **options)
    t = rand(*t_shape, seed=51)
    if type_name == "crd":  # a bank with something in it, frozen (eval) so gradcheck's calls agree
        term.double()(feats_inputs({"s": rand(*s_shape, seed=52)}, {"t": rand(*t_shape, seed=53)}))
        term.eval()
    gradcheck_term(term, lambda s: feats_inputs({"s": s}, {"t": t}), rand(*s_shape, seed=50))


def test_reviewkd_gradcheck():
    term = ReviewKDTerm("r", "t1", ["s1", "s2"], ["t1", "t2"], {"s1": [2, 4, 4], "s2": [3, 2, 2]},
                        {"t1": [2, 4, 4], "t2": [3, 2, 2]}, mid=2)
    teach = {"t1": rand(2, 2, 4, 4, seed=60), "t2": rand(2, 3, 2, 2, seed=61)}
    gradcheck_term(term, lambda a, b: feats_inputs({"s1": a, "s2": b}, teach),
                   rand(2, 2, 4, 4, seed=62), rand(2, 3, 2, 2, seed=63))


# --- the guard against logits that cannot go negative -------------------------------------------------


def test_nonnegative_logits_are_found():
    import students
    from distill.losses.guards import nonnegative_logits_warning

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    relu = students.create_model("squeezenet1_1", num_classes=10, in_chans=3, variant="cifar")
    assert nonnegative_output(relu, x) == "head.conv.1"
    msg = nonnegative_logits_warning(relu, x, "squeezenet1_1", ["kd"])
    assert "cannot go negative" in msg and "standardize: true" in msg and "head_relu: false" in msg
    assert "\n" not in msg
    assert nonnegative_logits_warning(relu, x, "squeezenet1_1", []) is None  # hard labels only: fine
    plain = students.create_model("squeezenet1_1", num_classes=10, in_chans=3, variant="cifar", head_relu=False)
    assert nonnegative_output(plain, x) is None
    mobile = students.create_model("mobilenet_v1", num_classes=10, in_chans=3, variant="cifar", alpha=0.25)
    assert nonnegative_output(mobile, x) is None


# --- every method through the real path ------------------------------------------------------------------

# Two short real jobs (Ray Train with 2 workers, Lightning under DeepSpeed, in-process teachers), each with one family of
# methods side by side: every term must be computed, logged, and trained on without error or NaN.
E2E = {
    "logit": [
        {"type": "ce", "weight": 0.2},
        {"type": "dist", "weight": 0.2, "temperature": 4.0, "standardize": True},
        {"type": "mlkd", "weight": 0.2, "temperatures": [2.0, 4.0], "per_teacher": True},
        {"type": "kd", "name": "kd_entropy", "weight": 0.2, "combine": "entropy_weighted", "warmup_epochs": 1},
        {"type": "dkd", "weight": 0.2, "combine": "label_weighted", "standardize": True, "warmup_epochs": 1},
    ],
    "feature": [
        {"type": "ce", "weight": 1.0},
        {"type": "crd", "weight": 0.1, "student_path": "stages.2", "teacher": "cnn", "teacher_path": "stages.1",
         "queue_size": 64},
        {"type": "rkd", "weight": 0.1, "teacher": "cnn", "pairs": [["stages.2", "stages.1"]]},
        {"type": "pkt", "weight": 0.1, "teacher": "cnn", "pairs": [["stages.2", "stages.1"]]},
        {"type": "sp", "weight": 0.1, "teacher": "mlp", "pairs": [["stages.1", "stages.0"]]},
        {"type": "nst", "weight": 0.1, "teacher": "cnn", "pairs": [["stages.1", "stages.0"]]},
        {"type": "reviewkd", "weight": 0.1, "teacher": "cnn", "student_paths": ["stages.1", "stages.2"],
         "teacher_paths": ["stages.0", "stages.1"], "mid": 16},
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(E2E))
def test_methods_run_end_to_end(family, tmp_path, digits_root, ray_session):
    from distill.commands.runner import prepare_data, run_job
    from distill.commands.teacher_training import train_teachers
    from distill.spec import parse_spec
    from tests.tb_events import load_events, scalar_values
    from tests.test_e2e import tiny_job

    doc = tiny_job(tmp_path, digits_root, epochs=2, steps_per_epoch=3, batch_size=16)
    doc["teachers"]["mode"] = "inprocess"
    doc["loss"]["terms"] = E2E[family]
    spec = parse_spec(doc)
    root, meta = prepare_data(spec)
    train_teachers(spec, root, meta)
    report = run_job(spec)
    assert 0.0 <= report["student"]["top1"] <= 1.0
    events = load_events(tmp_path / "tb" / "tiny")
    for term in E2E[family]:
        name = term.get("name", term["type"])
        values = scalar_values(events, f"loss/{name}_step")
        assert values and all(math.isfinite(v) for v in values), (name, values)
    assert all(math.isfinite(v) for v in scalar_values(events, "loss/total_epoch"))
