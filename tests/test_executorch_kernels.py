"""The packed layers as ExecuTorch custom kernels (kernels/executorch), run by executorch.runtime.

- every runtime kernel (ternary TWN/TTQ, binary, XNOR; linear and conv, channels-last and NCHW
  inputs, padding, strides, fused clamps, odd K and N) gives the plain-torch spec's output bit
  for bit, on every instruction set this CPU has (the scalar path always);
- a MobileNetV2 trained briefly on digits under ``students.simulate_export`` (ternary, TWN), as a
  .pte with its packed layers as custom ops and the rest on XNNPACK, predicts what the simulated
  student predicts on the whole validation split;
- bad builds and a second library get one-line errors.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("executorch", reason="the ExecuTorch kernels need the executorch wheel")

import students  # noqa: E402
from kernels import _cpu, reference  # noqa: E402
from kernels.executorch import build, runtime  # noqa: E402
from kernels.packing import pack_binary, pack_dw_ternary, pack_ternary  # noqa: E402
from students.deploy.executorch_lowbit import (  # noqa: E402
    export_lowbit,
    load_lowbit,
    lowbit_program,
    program_summary,
    run_lowbit,
)
from tests.trained_students import train_simulated  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not _cpu.compiler_available(), reason="no C++ compiler to build the ExecuTorch kernels"),
]


def _ternary(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    return pack_ternary(torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8))


def _binary(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    return pack_binary(torch.randint(0, 2, (n, k), generator=g, dtype=torch.int8) * 2 - 1)


class AllOps(nn.Module):
    """One call of each runtime kernel on its own input, with random packed weights and shapes
    chosen to hit the edge cases (K and N off the tile sizes, padding, strides, TTQ, no bias)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        pos = lambda n: torch.rand(n, generator=g) + 0.1  # noqa: E731
        self.calls = [
            # (op, weight args, kwargs) for x -> op(x, *weights, ...)
            ("ternary_linear", 37, 21, dict(scale_neg=True, bias=True, act_min=0.0, act_max=6.0)),
            ("binary_linear", 70, 33, dict(bias=False)),
            ("xnor_linear", 45, 18, dict(bias=True, act_scale=False)),
            ("xnor_linear", 33, 16, dict(bias=False, act_scale=True, act_min=0.0)),
            ("ternary_conv2d_cl", 24, 20, dict(ks=1, stride=1, pad=0, scale_neg=False, bias=True, act_min=0.0)),
            ("ternary_conv2d_cl", 13, 17, dict(ks=3, stride=2, pad=1, scale_neg=True, bias=False)),
            ("binary_conv2d_cl", 20, 31, dict(ks=3, stride=1, pad=1, xnor=False, bias=True)),
            ("binary_conv2d_cl", 16, 19, dict(ks=3, stride=1, pad=1, xnor=True, bias=False)),
            ("binary_conv2d_cl", 24, 9, dict(ks=1, stride=2, pad=0, xnor=True, bias=True, act_max=1.5)),
            ("depthwise_conv2d", 24, 24, dict(stride=1, pad=1, bias=True, act_min=0.0, act_max=6.0)),
            ("depthwise_conv2d", 13, 13, dict(stride=2, pad=0, bias=False)),
            # MobileNetV2 blocks: expand + residual (TTQ project), and no expand with stride 2
            ("inverted_residual", 16, 16, dict(mid=40, stride=1, residual=True, scale_neg=True, bias=True)),
            ("inverted_residual", 24, 20, dict(mid=None, stride=2, residual=False, bias=False)),
            ("conv3x3", 3, 19, dict(stride=2, pad=1, bias=True, act_min=0.0, act_max=6.0)),  # a stem (channels-last in)
            ("conv3x3", 5, 8, dict(stride=1, pad=0, bias=False)),  # NCHW in
            # big enough for two threads: panels of rows, and blocks in bands of rows (small and large maps)
            ("ternary_conv2d_cl", 64, 96, dict(ks=1, stride=1, pad=0, scale_neg=False, bias=True, hw=(16, 16))),
            ("inverted_residual", 48, 48, dict(mid=288, stride=1, residual=True, bias=True, hw=(8, 8))),
            ("inverted_residual", 16, 16, dict(mid=96, stride=1, residual=True, bias=True, hw=(40, 12))),
            ("mean_hw", 40, 40, {}), ("mean_hw", 24, 24, dict(hw=(1, 1))),  # pooling to [N, C]
            ("concat_shuffle", 20, 40, {}), ("slice_channels", 30, 12, dict(start=7, length=12)),  # ShuffleNet's glue
            # ternary depthwise weights (2-bit codes and a scale per channel)
            ("depthwise_conv2d", 21, 21, dict(stride=1, pad=1, bias=True, act_max=6.0, ternary=True)),
            ("inverted_residual", 16, 24, dict(mid=48, stride=2, residual=False, bias=True, ternary=True)),
        ]
        for i, (op, c, n, kw) in enumerate(self.calls):
            # (torch.export refuses None buffers: absent ones are simply not registered)
            if op in ("mean_hw", "concat_shuffle", "slice_channels"):
                continue
            if op == "depthwise_conv2d" and kw.get("ternary"):
                codes = torch.randint(-1, 2, (3, 3, c), generator=g, dtype=torch.int8)
                self.register_buffer(f"w{i}", pack_dw_ternary(codes))
                self.register_buffer(f"t{i}", pos(c))
            elif op == "depthwise_conv2d":
                self.register_buffer(f"w{i}", torch.randn(3, 3, c, generator=g))
            elif op == "conv3x3":
                self.register_buffer(f"w{i}", torch.randn(3, 3, c, n, generator=g))
            elif op == "inverted_residual":
                mid = kw["mid"] or c
                if kw["mid"]:
                    self.register_buffer(f"ew{i}", _ternary(mid, c, g))
                    self.register_buffer(f"es{i}", pos(mid) / c)
                    self.register_buffer(f"eb{i}", torch.randn(mid, generator=g))
                if kw.get("ternary"):
                    self.register_buffer(f"dw{i}", pack_dw_ternary(torch.randint(-1, 2, (3, 3, mid), generator=g,
                                                                                 dtype=torch.int8)))  # fmt: skip
                    self.register_buffer(f"t{i}", pos(mid))
                else:
                    self.register_buffer(f"dw{i}", torch.randn(3, 3, mid, generator=g))
                self.register_buffer(f"db{i}", torch.randn(mid, generator=g))
                self.register_buffer(f"w{i}", _ternary(n, mid, g))
            else:
                k = c * kw.get("ks", 1) ** 2
                self.register_buffer(f"w{i}", _ternary(n, k, g) if op.startswith("ternary") else _binary(n, k, g))
            if op not in ("depthwise_conv2d", "conv3x3"):
                self.register_buffer(f"s{i}", pos(n))
            if kw.get("scale_neg"):
                self.register_buffer(f"n{i}", pos(n))
            if kw.get("bias"):
                self.register_buffer(f"b{i}", torch.randn(n, generator=g))

    def inputs(self, seed: int = 1) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        xs = []
        for i, (op, c, _, kw) in enumerate(self.calls):
            if "linear" in op:
                xs.append(torch.randn(5, c, generator=g))
            else:  # alternate NCHW and channels-last inputs
                x = torch.randn(2, c, *kw.get("hw", (7, 6)), generator=g)
                xs.append(x.contiguous(memory_format=torch.channels_last) if i % 2 else x)
        return xs

    def _args(self, i: int, names: str = "wsnb"):
        return tuple(getattr(self, f"{p}{i}", None) for p in names)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.call(i, x, torch.ops.distill) for i, x in enumerate(xs))

    def call(self, i: int, x: torch.Tensor, impl) -> torch.Tensor:
        """Call i on ``impl``: torch.ops.distill (the custom ops), or kernels.reference (the spec)."""
        op, c, _, kw = self.calls[i]
        w, s, sn, b = self._args(i)
        lo, hi = kw.get("act_min"), kw.get("act_max")
        spec = impl is reference
        if op == "mean_hw":
            return impl.mean_hw(x)
        if op == "concat_shuffle":  # the spec: ShuffleNet's cat and channel_shuffle of x and 2x + 1
            if spec:
                return students.layers.channel_shuffle(torch.cat((x, 2 * x + 1), 1), 2)
            return impl.concat_shuffle(x, 2 * x + 1)
        if op == "slice_channels":
            start, length = kw["start"], kw["length"]
            return x[:, start : start + length] if spec else impl.slice_channels(x, start, length)
        if op == "ternary_linear":
            return impl.ternary_linear(x, w, c, s, sn, b, lo, hi)
        if op == "binary_linear":
            return impl.binary_linear(x, w, c, s, b, lo, hi)
        if op == "xnor_linear":
            return impl.xnor_linear(x, w, c, s, b, kw["act_scale"], lo, hi)
        t = getattr(self, f"t{i}", None)  # scales of a ternary depthwise weight
        if op == "depthwise_conv2d":
            if spec:
                return reference.depthwise3x3(x, reference.depthwise_weight(w, t), b, kw["stride"], kw["pad"], lo, hi)
            return impl.depthwise_conv2d(x, w, b, kw["stride"], kw["pad"], lo, hi, t)
        if op == "conv3x3":
            return impl.conv3x3(x, w, b, kw["stride"], kw["pad"], lo, hi)
        if op == "inverted_residual":
            ew, es, eb, dw, db = (getattr(self, f"{p}{i}", None) for p in ("ew", "es", "eb", "dw", "db"))
            if spec:
                expand = None if ew is None else (ew, es, None, eb, 0.0, 6.0)
                dwf = reference.depthwise_weight(dw, t)
                return reference.inverted_residual(x, expand, (dwf, db, kw["stride"], 0.0, 6.0),
                                                   (w, s, sn, b, None, None), kw["residual"])  # fmt: skip
            return impl.inverted_residual(x, ew, es, None, eb, 0.0, 6.0, dw, db, kw["stride"], 0.0, 6.0,
                                          w, s, sn, b, None, None, kw["residual"], t)  # fmt: skip
        ks, st, pad = [kw["ks"]] * 2, [kw["stride"]] * 2, [kw["pad"]] * 2
        if op == "ternary_conv2d_cl":
            f = reference.ternary_conv2d if spec else impl.ternary_conv2d_cl
            return f(x, w, ks, s, sn, b, st, pad, [1, 1], lo, hi)
        f = reference.binary_conv2d if spec else impl.binary_conv2d_cl
        return f(x, w, ks, s, b, st, pad, [1, 1], kw["xnor"], True, lo, hi)


@pytest.fixture(scope="module")
def all_ops_pte(tmp_path_factory):
    model = AllOps().eval()
    xs = model.inputs()
    from executorch.exir import EdgeCompileConfig, to_edge

    import kernels.executorch.ops  # noqa: F401

    ep = torch.export.export(model, tuple(xs))
    program = to_edge(ep, compile_config=EdgeCompileConfig(_check_ir_validity=False)).to_executorch()
    path = tmp_path_factory.mktemp("et") / "all_ops.pte"
    path.write_bytes(program.buffer)
    return model, path


def test_runtime_kernels_equal_the_spec_bit_for_bit(all_ops_pte):
    model, path = all_ops_pte
    method = load_lowbit(path)
    isas = _cpu.supported_isas()
    assert "scalar" in isas
    try:
        for isa in isas:
            assert runtime.set_isa(isa) == isa
            for seed in (1, 2):
                xs = model.inputs(seed)
                outs = method.execute(xs)
                for i, (x, y) in enumerate(zip(xs, outs, strict=True)):
                    want = model.call(i, x, reference)
                    assert y.shape == want.shape, (isa, model.calls[i][0])
                    assert torch.equal(y, want), (isa, i, model.calls[i][0], (y - want).abs().max().item())
                    if y.dim() == 4:  # the convs write channels-last: no transposes for XNNPACK
                        assert y.is_contiguous(memory_format=torch.channels_last)
    finally:
        runtime.set_isa(None)


def test_threads_give_the_same_numbers(all_ops_pte):
    """Every op's parallel loop (spin_pool.cpp) gives the one-thread numbers: on 2 threads, on 3 (more
    threads than this machine's cores: a helper that is descheduled must not be waited for), and
    after idle gaps longer than a helper's spin (helpers asleep on the futex, woken by the next op).
    Two inputs take turns, so a task the pool dropped would leave the other input's numbers in the
    program's planned output buffer, not the right ones."""
    model, path = all_ops_pte
    method = load_lowbit(path)
    inputs = [model.inputs(3), model.inputs(4)]
    runtime.set_num_threads(1)
    want = [[t.clone() for t in method.execute(xs)] for xs in inputs]
    assert not torch.equal(want[0][0], want[1][0])  # the two inputs give different outputs
    try:
        for threads in (2, 3):
            runtime.set_num_threads(threads)
            assert runtime.pin_kernel_threads(None) == threads  # unpinned, the kernels follow the resized pool
            method = load_lowbit(path)  # a program loaded before the resize must not run after it
            for step in range(6):
                got = method.execute(inputs[step % 2])
                assert all(torch.equal(a, b) for a, b in zip(want[step % 2], got, strict=True)), (threads, step)
                if step % 3 == 2:
                    time.sleep(0.002)  # > the helpers' 200 us spin
    finally:
        runtime.set_num_threads(1)


def test_eager_out_variants_match_functional():
    import kernels.executorch.ops  # noqa: F401

    g = torch.Generator().manual_seed(0)
    x, w, s = torch.randn(3, 40, generator=g), _ternary(8, 40, g), torch.rand(8, generator=g)
    out = torch.empty(3, 8)
    y = torch.ops.distill.ternary_linear.out(x, w, 40, s, None, None, None, None, out=out)
    assert y is out and torch.equal(out, torch.ops.distill.ternary_linear(x, w, 40, s))


def test_build_errors_are_one_line(tmp_path):
    with pytest.raises(build.BuildError, match="no C\\+\\+ compiler 'no-such-c\\+\\+'") as e:
        build.build_library(cxx="no-such-c++")
    assert "\n" not in str(e.value)
    with pytest.raises(build.BuildError, match="not an executorch wheel"):
        build.build_library(root=tmp_path)


def test_unknown_delegate_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown delegate 'gpu'"):
        export_lowbit(nn.Linear(2, 2), torch.randn(1, 2), tmp_path / "x.pte", delegate="gpu")
    assert not (tmp_path / "x.pte").exists()


def test_second_library_is_refused(all_ops_pte, tmp_path):
    runtime.load()
    with pytest.raises(RuntimeError, match="already loaded"):
        runtime.load(tmp_path / "other.so")


# ---------------------------------------------------------------- a trained student

ARCH = {"name": "mobilenet_v2", "num_classes": 10, "in_chans": 1, "variant": "cifar", "width_mult": 0.25}
STEPS, BATCH, LR = 60, 32, 1e-2


def _upsample(x: torch.Tensor) -> torch.Tensor:
    """Digits at 16x16: at 8x8 the last blocks' maps are 1x1, where executorch 1.5.1's XNNPACK
    delegate mistakes a channels-last [1, C, 1, 1] output for NCHW and fails to resize it
    (pytorch/executorch#19153 is the same ambiguity); the students' own sizes never get there."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


@pytest.fixture(scope="module")
def trained_twn(digits_root):
    from distill.data import load_split
    from distill.data.meta import load_meta

    meta = load_meta(digits_root)
    xt, yt = load_split(digits_root, meta, "train")
    xv, yv = load_split(digits_root, meta, "val")
    xt, xv = _upsample(xt), _upsample(xv)
    model = train_simulated("twn", ARCH, xt, yt, STEPS, BATCH, LR)
    return model, xv, yv


def test_trained_ternary_student_pte_predicts_as_simulated(trained_twn, tmp_path):
    model, xv, yv = trained_twn
    with torch.no_grad():
        simulated = model(xv)  # simulate_export: the export's arithmetic, on the reference ops
    assert (simulated.argmax(1) == yv).float().mean() > 0.3  # trained: well above chance (0.1)

    program = lowbit_program(model, xv[:1])  # the blocks as fused custom ops
    summary = program_summary(program)
    blocks = sum(1 for m in model.modules() if isinstance(getattr(m, "use_residual", None), bool))
    # the stem, every block, the last 1x1 conv and the pooling are one op each
    assert summary["custom_ops"] == {"distill.conv3x3.out": 1, "distill.inverted_residual.out": blocks,
                                     "distill.ternary_conv2d_cl.out": 1, "distill.mean_hw.out": 1}  # fmt: skip
    # XNNPACK: the fp32 head, and a reshape of the stem's weight buffer
    assert summary["delegate_calls"] <= 2
    assert summary["other_ops"] == {}, summary  # no copies or layout changes outside delegates and custom ops

    path = tmp_path / "student.pte"
    path.write_bytes(program.buffer)  # what export_lowbit writes (one export: they are slow)
    fp32_bytes = 4 * sum(p.numel() for p in students.create_model(**ARCH).parameters())
    assert path.stat().st_size < fp32_bytes
    logits = run_lowbit(load_lowbit(path), xv, batch=1)
    assert (logits.argmax(1) == simulated.argmax(1)).all(), "the .pte must predict what the simulated student does"
    # The packed layers are exact; the fp32 stem and depthwise convs (the project's kernels) round
    # differently from the simulation's oneDNN convs.
    assert (logits - simulated).abs().median() < 1e-4


SHUFFLENET, MOBILENET_V1 = {"name": "shufflenet_v2", "width": 0.5}, {"name": "mobilenet_v1", "alpha": 0.25}


@pytest.mark.parametrize("arch,size", [(SHUFFLENET, 32), (MOBILENET_V1, 32), (SHUFFLENET, 8)])  # 8: maps down to 1x1
def test_lowbit_programs_compute_the_packed_model(arch, size, tmp_path):
    """ShuffleNet v2 (fused branches, slice_channels / concat_shuffle glue) and MobileNet v1 (fused
    depthwise-separable blocks) as low-bit programs: every op on the project's kernels, and the
    logits of the packed eager model (pooling and classifier sum in another order: not bit for bit)."""
    from benchmarks.deploy import realistic_bn_

    torch.manual_seed(0)
    model = students.quantize(realistic_bn_(students.create_model(**arch, num_classes=10, variant="cifar")), "twn")
    model.eval()
    x = torch.randn(3, 3, size, size)
    summary = export_lowbit(model, x[:1], tmp_path / "s.pte")
    assert summary["other_ops"] == {} and summary["delegate_calls"] <= 2, summary
    assert summary["custom_ops"]["distill.inverted_residual.out"] >= 13, summary  # every block fused
    with torch.no_grad():
        want = students.export(model)(x)
    got = run_lowbit(load_lowbit(tmp_path / "s.pte"), x, batch=1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_a_file_exported_before_pw_kind_still_runs():
    """tests/data/executorch_v1: a fused ternary block exported when distill::inverted_residual had 21
    arguments (before pw_kind, commit 2899e9e), with its input and the packed module's output then. The
    runtime entry takes both layouts: a user's old .pte keeps running. The output then was bit for bit
    the kernels' of the time; since the depthwise taps became fused multiply-adds (reference.fma32) it
    equals it to float rounding (here at most 2e-6 on values up to 25)."""
    from pathlib import Path

    data = Path(__file__).parent / "data" / "executorch_v1"
    io = torch.load(data / "inverted_residual_v1.io.pt", weights_only=True)
    method = load_lowbit(data / "inverted_residual_v1.pte")
    (y,) = method.execute([io["x"]])
    torch.testing.assert_close(y, io["y"], rtol=0, atol=1e-5)
