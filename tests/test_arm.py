"""The AArch64 kernels (kernels/csrc/lowbit_neon*.cpp), cross-built and run under qemu-user.

The x86 side writes cases: inputs over the shapes and tails of tests/test_kernels.py and
tests/test_kernels_conv.py, and the expected outputs of kernels.reference (checked here to be,
byte for byte, what the x86 build computes). Debian's g++-aarch64-linux-gnu builds the kernel library with the flags of
kernels/_cpu.py and the C++ driver tests/arm/driver.cpp; qemu-aarch64 runs the driver on an
emulated CPU with the dot product (``-cpu max``: neondot, neon and scalar paths) and on one
without (``-cpu cortex-a53``: neon and scalar), and the driver compares every output bit for bit.

The ExecuTorch kernels (kernels/executorch) are built for aarch64 from the same sources by
kernels.executorch.build, linked to libexecutorch.so of the executorch wheel for aarch64 (fetched
by ``make test-arm`` with ``pip download``), and a .pte exported here runs in that runtime under
qemu (tests/arm/et_runner.cpp) on every ISA, giving the reference's bytes.

Skipped when the cross tools are missing; ``make test-arm`` installs them and runs this file
(with DISTILL_TEST_ARM=1, under which missing tools fail instead).
Emulated timings mean nothing, so nothing here is timed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from test_kernels import CONVS, SHAPES, _problem
from test_kernels_conv import BLOCKS, DEPTHWISE, GEMMS, STEMS

from kernels import _cpu, ops, packing, reference

CXX, QEMU, SYSROOT = "aarch64-linux-gnu-g++", "qemu-aarch64", "/usr/aarch64-linux-gnu"
DRIVER = Path(__file__).parent / "arm" / "driver.cpp"
# The dot-product file gets Armv8.2 alone; everything else is built for every AArch64 CPU.
MARCH = {"lowbit_neondot.cpp": "-march=armv8.2-a+dotprod"}
# (qemu CPU model, the best ISA the kernels must pick there, the ISAs it must support)
CPUS = [("max", "neondot", {"scalar", "neon", "neondot"}), ("cortex-a53", "neon", {"scalar", "neon"})]

if not (shutil.which(CXX) and shutil.which(QEMU) and Path(SYSROOT).is_dir()):
    why = f"needs {CXX} and {QEMU} (Debian g++-aarch64-linux-gnu, qemu-user; `make test-arm` installs them)"
    if os.environ.get("DISTILL_TEST_ARM") == "1":  # make test-arm: a missing tool is a failure, not a skip
        pytest.fail(why, pytrace=False)
    pytest.skip(why, allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- cross build


def _compile(args: list[str]) -> None:
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{r.stderr}")


def arm_build_root() -> Path:
    """Next to the x86 builds: the parent of $DISTILL_KERNELS_BUILD_DIR, else ~/.cache/distill/kernels."""
    base = os.environ.get("DISTILL_KERNELS_BUILD_DIR")
    return (Path(base).parent if base else Path.home() / ".cache" / "distill" / "kernels") / "linux-aarch64-cross"


@pytest.fixture(scope="module")
def driver() -> Path:
    """The aarch64 driver linked against the aarch64 kernel library, cached by the hash of every source.

    Built in a private folder renamed into place at the end, so concurrent runs never link each other's objects."""
    h = hashlib.sha256(DRIVER.read_bytes())
    for f in sorted(_cpu.CSRC.iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    out = arm_build_root() / h.hexdigest()[:16]
    if (out / "driver").exists():
        return out / "driver"
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    flags = [CXX, *_cpu.CFLAGS, "-std=c++17", "-fPIC", "-Wall", "-Werror"]
    jobs = [[*flags, MARCH.get(s, "-march=armv8-a"), "-c", str(_cpu.CSRC / s), "-o", str(tmp / f"{s}.o")]
            for s in _cpu.SOURCES]
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(_compile, jobs))
    _compile([CXX, "-shared", "-fopenmp", *(str(tmp / f"{s}.o") for s in _cpu.SOURCES), "-o",
              str(tmp / "libdistill_lowbit.so")])
    _compile([CXX, "-O2", "-std=c++17", "-Wall", "-Werror", f"-I{_cpu.CSRC}", str(DRIVER), f"-L{tmp}", "-ldistill_lowbit",
              "-Wl,-rpath,$ORIGIN", "-o", str(tmp / "driver")])
    try:
        os.rename(tmp, out)
    except OSError:  # another run finished the same build first
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "driver"


def run_driver(exe: Path, cpu: str, cases: Path, *isas: str) -> subprocess.CompletedProcess:
    return subprocess.run([QEMU, "-cpu", cpu, "-L", SYSROOT, str(exe), str(cases), *isas],
                          capture_output=True, text=True, timeout=900)


# ---------------------------------------------------------------- cases


def _bytes(t: torch.Tensor | None) -> bytes:
    return b"" if t is None else t.detach().contiguous().numpy().tobytes()


class Cases:
    """Collects (op, ints, floats, inputs, expected) and asserts the x86 build agrees with each expected output."""

    def __init__(self) -> None:
        self.items: list[tuple[str, list[int], list[float], list[bytes]]] = []

    def add(self, op, ints, floats, inputs, expected, x86) -> None:
        expected, x86 = (expected, x86) if isinstance(expected, tuple) else ((expected,), (x86,))
        for e, got in zip(expected, x86, strict=True):
            assert _bytes(got) == _bytes(e), f"x86 {op}{tuple(ints)} differs from the reference"
        self.items.append((op, list(ints), list(floats), [_bytes(t) for t in (*inputs, *expected)]))

    def write(self, path: Path) -> None:
        with open(path, "wb") as f:
            f.write(b"DLARM001" + struct.pack("<I", len(self.items)))
            for op, ints, floats, arrays in self.items:
                f.write(struct.pack("<I", len(op)) + op.encode())
                f.write(struct.pack(f"<I{len(ints)}q", len(ints), *ints))
                f.write(struct.pack(f"<I{len(floats)}f", len(floats), *floats))
                f.write(struct.pack("<I", len(arrays)))
                for a in arrays:
                    f.write(struct.pack("<Q", len(a)) + a)


def _activations(c: Cases, x: torch.Tensor) -> None:
    m, k = x.shape
    c.add("quantize_rows", [m, k], [], [x], reference.quantize_rows_int8(x), ops.quantize_rows_int8(x))
    c.add("binarize_rows", [m, k], [], [x], reference.binarize_rows(x), ops.binarize_rows(x))


def _linears(c: Cases, x, tern, binw, sp, sn, bias, lo=None, hi=None, nth=1) -> None:
    """Every float linear of test_kernels.test_float_linears_match_reference (and its clamp test) on one problem."""
    (m, k), n = x.shape, sp.shape[0]
    bounds = list(ops._bounds(lo, hi))
    for neg in (None, sn):
        for b in (None, bias):
            c.add("ternary_linear", [m, k, n, nth], bounds, [x, tern, sp, neg, b],
                  reference.ternary_linear(x, tern, k, sp, neg, b, lo, hi),
                  ops.ternary_linear(x, tern, k, sp, neg, b, lo, hi))
    c.add("binary_linear", [m, k, n, nth], bounds, [x, binw, sp, bias],
          reference.binary_linear(x, binw, k, sp, bias, lo, hi), ops.binary_linear(x, binw, k, sp, bias, lo, hi))
    for xs, b, act in ((x, bias, True), (x.relu(), bias, True), (x, None, False)):
        c.add("xnor_linear", [m, k, n, nth, int(act)], bounds, [xs, binw, sp, b],
              reference.xnor_linear(xs, binw, k, sp, b, act, lo, hi), ops.xnor_linear(xs, binw, k, sp, b, act, lo, hi))


def _integer(c: Cases, q, bits, tern, binw, n, k, nth=1) -> None:
    m = q.shape[0]
    c.add("ternary_mm", [m, k, n, nth], [], [q, tern], reference.ternary_mm_int(q, tern, n), ops.ternary_mm_int(q, tern, n))
    c.add("binary_mm", [m, k, n, nth], [], [q, binw], reference.binary_mm_int(q, binw, n), ops.binary_mm_int(q, binw, n))
    c.add("xnor_mm", [m, k, n, nth], [], [bits, binw], reference.xnor_mm_int(bits, binw, n, k),
          ops.xnor_mm_int(bits, binw, n, k))


def _nhwc(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.permute(0, 2, 3, 1).contiguous()


def _depthwise(c: Cases, x, wt, bias, stride, pad, nth=1) -> None:
    """dl_depthwise3x3_nhwc as test_kernels_conv.test_depthwise_matches_reference checks it: with and without
    bias, no clamp, ReLU6, ReLU; x and y in NHWC memory."""
    b, ch, h, w = x.shape
    for bv in (None, bias):
        for lo, hi in ((None, None), (0.0, 6.0), (0.0, None)):
            c.add("depthwise3x3", [b, h, w, ch, stride, pad, nth], list(ops._bounds(lo, hi)), [_nhwc(x), wt, bv],
                  _nhwc(reference.depthwise3x3(x, wt, bv, stride, pad, lo, hi)),
                  _nhwc(ops.depthwise_conv2d(x, wt, bv, stride, pad, lo, hi)))


def _inverted_residual(c: Cases, cin, cmid, cout, s, h, w, expand, residual, ttq, nth=1) -> None:
    """dl_inverted_residual_nhwc on a block like test_kernels_conv.BLOCKS: [expand 1x1, ReLU6,] depthwise 3x3
    (ReLU6), project 1x1 [+ x]; TWN or TTQ pointwise weights."""
    g = torch.Generator().manual_seed(cin + cmid + h)

    def pointwise(k, n, lo, hi):
        w_packed = packing.pack_ternary(torch.randint(-1, 2, (n, k), generator=g))
        sp, sn, b = torch.rand(n, generator=g) + 0.5, torch.rand(n, generator=g) + 0.5, torch.randn(n, generator=g)
        return w_packed, sp, sn if ttq else None, b, lo, hi

    e = pointwise(cin, cmid, 0.0, 6.0) if expand else None
    dw = (torch.randn(3, 3, cmid, generator=g), torch.randn(cmid, generator=g), s, 0.0, 6.0)
    p = pointwise(cmid, cout, None, None)
    x = torch.randn(2, cin, h, w, generator=g)
    bounds = [*ops._bounds(*(e[4:] if e else (None, None))), *ops._bounds(*dw[3:]), *ops._bounds(*p[4:])]
    c.add("inverted_residual", [2, h, w, cin, cmid, cout, s, int(residual), int(expand), nth], bounds,
          [_nhwc(x), *(e[:4] if e else (None,) * 4), dw[0], dw[1], *p[:4]],
          _nhwc(reference.inverted_residual(x, e, dw, p, residual)),
          _nhwc(ops.inverted_residual(x, *(e or (None,) * 6), *dw, *p, residual)))


def _stem(c: Cases, b, ch, o, h, w, s, p) -> None:
    """dl_conv3x3_nhwc reading an NCHW and an NHWC input through their strides, without and with ReLU6."""
    g = torch.Generator().manual_seed(ch * o + h)
    x, wt, bias = torch.randn(b, ch, h, w, generator=g), torch.randn(3, 3, ch, o, generator=g), torch.randn(o, generator=g)
    for xx in (x, x.contiguous(memory_format=torch.channels_last)):
        sb, sc, sh, sw = xx.stride()
        memory = xx if xx.is_contiguous() else _nhwc(xx)
        for lo, hi in ((None, None), (0.0, 6.0)):
            c.add("conv3x3", [b, h, w, ch, sb, sh, sw, sc, o, s, p, 1], list(ops._bounds(lo, hi)), [memory, wt, bias],
                  _nhwc(reference.conv3x3(x, wt, bias, s, p, lo, hi)), _nhwc(ops.conv3x3(xx, wt, bias, s, p, lo, hi)))


def build_cases() -> Cases:
    c = Cases()
    _activations(c, torch.tensor([[127.0, 2.5, 3.5, -2.5, 0.5, -127.0, 1.5], [0.0] * 7]))  # ties to even
    for m, k in [(1, 1), (3, 31), (4, 32), (2, 100), (5, 1000), (7, 45)]:
        x = (torch.randn(m, k, generator=torch.Generator().manual_seed(m * k)) * 3).relu() - 1.0
        x[:, ::3] = 0.0  # exact zeros (sgn 0 = -1) and negatives
        _activations(c, x)
    for m, k, n in SHAPES:
        x, tern, binw, sp, sn, bias = _problem(m, k, n)
        q, _ = reference.quantize_rows_int8(x)
        bits, _ = reference.binarize_rows(x)
        _integer(c, q, bits, tern, binw, n, k)
        _linears(c, x, tern, binw, sp, sn, bias)
    for m, k, n in [(5, 40, 24), (9, 100, 70)]:  # fused clamps; a NaN output column passes through
        x, tern, binw, sp, sn, bias = _problem(m, k, n)
        bias[2] = float("nan")
        for lo, hi in ((0.0, 6.0), (0.0, None), (None, 0.5)):
            _linears(c, x, tern, binw, sp, sn, bias, lo, hi)
    k = 1000  # int8 limits against all-(+1) / all-(-1) rows: the largest sums, no saturation
    q = torch.tensor([[127] * k, [-127] * k, [-128] * k], dtype=torch.int8)
    w = torch.stack([torch.ones(k), -torch.ones(k), torch.zeros(k)]).long()
    b = torch.stack([torch.ones(k), -torch.ones(k), torch.ones(k)]).long()
    _integer(c, q, reference.binarize_rows(q.float())[0], packing.pack_ternary(w), packing.pack_binary(b), 3, k)
    for block in BLOCKS:
        _inverted_residual(c, *block)
    for stem in STEMS:
        _stem(c, *stem)
    for b, ch, h, w, s, p in DEPTHWISE:
        g = torch.Generator().manual_seed(ch * h + w)
        _depthwise(c, torch.randn(b, ch, h, w, generator=g), torch.randn(3, 3, ch, generator=g),
                   torch.randn(ch, generator=g), s, p)
    torch.set_num_threads(2)  # a second thread in the x86 build too
    try:
        for m, n in [(16, 800), (640, 20)]:  # split over output blocks / over rows (above the 2-thread threshold)
            x, tern, binw, sp, sn, bias = _problem(m, 400, n)
            _linears(c, x, tern, binw, sp, sn, bias, nth=2)
        for m, k, n in GEMMS:  # the 1x1-conv shapes: quantized row panels, narrow layers
            x, tern, binw, sp, sn, bias = _problem(m, k, n)
            _linears(c, x, tern, binw, sp, sn, bias, nth=2)
        bias = torch.randn(24)
        bias[3] = float("nan")  # a NaN channel stays NaN through the fused clamp
        _depthwise(c, torch.randn(2, 24, 20, 20), torch.randn(3, 3, 24), bias, 1, 1, nth=2)
        for block in BLOCKS:
            _inverted_residual(c, *block, nth=2)
    finally:
        torch.set_num_threads(1)
    for m, k, n in GEMMS:
        _linears(c, *_problem(m, k, n))
    for ch, o, ks, st, pad, dil, h, w in CONVS:  # the im2col rows of the convolution tests: K = kh * kw * C
        x = torch.randn(2, ch, h, w, generator=torch.Generator().manual_seed(o * h + w))
        p = reference._pair
        rows, _ = reference.conv_rows(x, p(ks), p(st), p(pad), p(dil))
        _, tern, binw, sp, sn, bias = _problem(1, rows.shape[1], o)
        _linears(c, rows.contiguous(), tern, binw, sp, sn, bias, 0.0, 6.0)
    return c


@pytest.fixture(scope="module")
def cases_file(tmp_path_factory) -> Path:
    if _cpu.backend() != "cpp":
        pytest.skip("the x86 build is not in use (no compiler, or DISTILL_KERNELS_BACKEND=torch)")
    path = tmp_path_factory.mktemp("arm") / "cases.bin"
    build_cases().write(path)
    return path


# ---------------------------------------------------------------- tests


def parse(out: str) -> tuple[str, set[str], dict[str, tuple[int, int]]]:
    """(best ISA, supported ISAs, {isa: (cases, mismatches)}) from the driver's report."""
    head = re.search(r"^cpu: best=(\w+) supported=([\w,]+)$", out, re.M)
    assert head, out
    runs = {m[1]: (int(m[2]), int(m[3])) for m in re.finditer(r"^isa (\w+): (\d+) cases, (\d+) mismatches$", out, re.M)}
    return head[1], set(head[2].split(",")), runs


@pytest.mark.parametrize("cpu,best,isas", CPUS, ids=[c[0] for c in CPUS])
def test_arm_kernels_match_reference_bit_for_bit(driver, cases_file, cpu, best, isas):
    r = run_driver(driver, cpu, cases_file)
    print(f"\nqemu-aarch64 -cpu {cpu}:\n{r.stdout}", end="")
    assert r.returncode == 0, r.stdout + r.stderr
    got_best, supported, runs = parse(r.stdout)
    assert (got_best, supported) == (best, isas)
    n = struct.unpack("<I", cases_file.read_bytes()[8:12])[0]
    assert runs == {isa: (n, 0) for isa in isas}


def test_dot_product_path_is_refused_without_the_feature(driver, cases_file):
    r = run_driver(driver, "cortex-a53", cases_file, "neondot")
    assert r.returncode == 1 and "isa neondot: not supported on this CPU" in r.stdout, r.stdout + r.stderr


def test_driver_reports_a_wrong_expected_output(driver, cases_file, tmp_path):
    """The comparison can fail: one flipped bit in one expected output is named by case and byte."""
    data = bytearray(cases_file.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last case's expected output
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(data))
    r = run_driver(driver, "max", bad, "neondot")
    assert r.returncode == 1, r.stdout
    assert re.search(r"case \d+ \w+\(.*\): output 0 differs at byte \d+", r.stdout), r.stdout
    assert "isa neondot: " in r.stdout and " 1 mismatches" in r.stdout


# ---------------------------------------------------------------- ExecuTorch on aarch64

# The executorch wheel for aarch64 (same version as the installed one) that `make test-arm` fetches with
# `pip download`: its libexecutorch.so is the runtime the aarch64 kernel library links against and runs in.
ARM_WHEELS = Path(os.environ.get("DISTILL_ARM_WHEELS", Path(__file__).parents[1] / ".venv" / "arm-wheels"))
ET_RUNNER = Path(__file__).parent / "arm" / "et_runner.cpp"


@pytest.fixture(scope="module")
def et_arm_root() -> Path:
    """The unpacked aarch64 executorch wheel (include/, lib/libexecutorch.so)."""
    import importlib.metadata
    import importlib.util
    import zipfile

    if importlib.util.find_spec("kernels.executorch") is None or importlib.util.find_spec("executorch") is None:
        pytest.skip("kernels/executorch (the ExecuTorch kernels) or executorch is not in this tree")
    version = importlib.metadata.version("executorch")
    wheels = sorted(ARM_WHEELS.glob(f"executorch-{version}-*aarch64.whl"))
    if not wheels:
        why = f"no executorch {version} aarch64 wheel in {ARM_WHEELS} (`make test-arm` downloads it)"
        if os.environ.get("DISTILL_TEST_ARM") == "1":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    root = arm_build_root() / wheels[-1].stem
    if not root.exists():
        tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
        with zipfile.ZipFile(wheels[-1]) as z:
            z.extractall(tmp, [n for n in z.namelist() if n.startswith(("executorch/include/", "executorch/lib/"))])
        try:
            os.rename(tmp, root)
        except OSError:  # another run unpacked it first
            shutil.rmtree(tmp, ignore_errors=True)
    return root / "executorch"


@pytest.fixture(scope="module")
def et_arm(et_arm_root) -> tuple[Path, Path]:
    """(the distill ExecuTorch kernel library for aarch64, the aarch64 runner), both linked to the wheel's runtime."""
    from kernels.executorch import build

    lib = build.build_library(cxx=CXX, root=et_arm_root, out_dir=arm_build_root() / "executorch")
    inc = et_arm_root / "include"
    exe = lib.with_name(f"et_runner-{hashlib.sha256(ET_RUNNER.read_bytes() + lib.name.encode()).hexdigest()[:12]}")
    if not exe.exists():
        _compile([CXX, "-std=c++17", "-O1", *(f for f in build.FLAGS if f.startswith("-D")), f"-I{inc}",
                  f"-I{inc / 'executorch/runtime/core/portable_type/c10'}", str(ET_RUNNER), f"-L{et_arm_root / 'lib'}",
                  "-lexecutorch", f"-Wl,-rpath,{et_arm_root / 'lib'}", "-ldl", "-o", str(exe) + ".tmp"])
        os.replace(str(exe) + ".tmp", exe)
    return lib, exe


class _Packed(torch.nn.Module):
    """distill ops only: the stem 3x3 conv (ReLU6), a fused inverted residual (expand, depthwise, TTQ project, + x),
    a ternary 3x3 conv (TTQ, ReLU6), an XNOR 1x1 conv on its output, and a ternary linear on a second input."""

    def __init__(self, c: int = 8, mid: int = 24, o: int = 20, o2: int = 12) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
        scale = lambda n: torch.rand(n, generator=g) + 0.5  # noqa: E731
        tern = lambda n, k: packing.pack_ternary(torch.randint(-1, 2, (n, k), generator=g))  # noqa: E731
        self.stem = (rand(3, 3, 3, c), rand(c))
        self.expand = (tern(mid, c), scale(mid), None, rand(mid), 0.0, 6.0)
        self.dw = (rand(3, 3, mid), rand(mid), 1, 0.0, 6.0)
        self.project = (tern(c, mid), scale(c), scale(c), rand(c), None, None)
        self.conv = (tern(o, 9 * c), scale(o), scale(o), rand(o))
        self.xnor = (packing.pack_binary(torch.randint(0, 2, (o2, o), generator=g) * 2 - 1), scale(o2), rand(o2))
        self.linear = (tern(24, 40), scale(24))

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = torch.ops.distill
        s = d.conv3x3(x, *self.stem, 1, 1, 0.0, 6.0)
        r = d.inverted_residual(s, *self.expand, *self.dw, *self.project, True)
        y = d.ternary_conv2d_cl(r, self.conv[0], [3, 3], *self.conv[1:], [1, 1], [1, 1], [1, 1], 0.0, 6.0)
        z = d.binary_conv2d_cl(y, self.xnor[0], [1, 1], *self.xnor[1:], [1, 1], [0, 0], [1, 1], True, True)
        return z, d.ternary_linear(v, *self.linear[:1], 40, *self.linear[1:], None, None)

    def reference(self, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = reference.conv3x3(x, *self.stem, 1, 1, 0.0, 6.0)
        r = reference.inverted_residual(s, self.expand, self.dw, self.project, True)
        y = reference.ternary_conv2d(r, self.conv[0], 3, *self.conv[1:], 1, 1, 1, 0.0, 6.0)
        z = reference.binary_conv2d(y, self.xnor[0], 1, *self.xnor[1:], xnor=True)
        return z, reference.ternary_linear(v, self.linear[0], 40, self.linear[1])


def test_executorch_program_runs_on_aarch64(et_arm, tmp_path):
    """The .pte exported here runs in the aarch64 ExecuTorch runtime with the aarch64 kernel library, on every
    ISA of both emulated CPUs, and gives the reference's bytes (the conv output in its channels-last order)."""
    import importlib

    from executorch.exir import to_edge_transform_and_lower

    importlib.import_module("kernels.executorch.ops")  # the .out variants to_executorch needs

    lib, exe = et_arm
    model = _Packed()
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(1, 3, 7, 6, generator=g), torch.randn(4, 40, generator=g)
    program = to_edge_transform_and_lower(torch.export.export(model, (x, v))).to_executorch()
    (tmp_path / "m.pte").write_bytes(program.buffer)
    with open(tmp_path / "in.bin", "wb") as f:
        f.write(struct.pack("<I", 2))
        for t in (x, v):
            f.write(struct.pack(f"<I{t.dim()}i", t.dim(), *t.shape) + _bytes(t))
    z, y = model.reference(x, v)
    want = _bytes(z.permute(0, 2, 3, 1)) + _bytes(y)
    for cpu, _, isas in CPUS:
        for isa in sorted(isas, key=_cpu.ISAS.get, reverse=True):
            out = tmp_path / f"out-{cpu}-{isa}.bin"
            r = subprocess.run([QEMU, "-cpu", cpu, "-L", SYSROOT, str(exe), str(lib), str(tmp_path / "m.pte"),
                                str(tmp_path / "in.bin"), str(out), str(_cpu.ISAS[isa])],
                               capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, r.stdout + r.stderr
            assert f"et isa={_cpu.ISAS[isa]}" in r.stdout
            print(f"\nExecuTorch on qemu-aarch64 -cpu {cpu}, isa {isa}: ", end="")
            assert out.read_bytes() == want, f"{cpu}/{isa}: the aarch64 ExecuTorch outputs differ from the reference"
            print("outputs equal the reference bit for bit", end="")
