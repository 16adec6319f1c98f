"""Triton kernels against the spec. They need a CUDA GPU; where triton is installed
but no GPU is present they run in Triton's interpreter (TRITON_INTERPRET=1) instead."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HAVE_TRITON = importlib.util.find_spec("triton") is not None

CHECK = """
import torch
from kernels import packing, reference, triton_ops

def check(device):
    torch.manual_seed(0)
    for m, k, n in [(1, 100, 7), (5, 300, 33), (33, 70, 130)]:
        x = torch.randn(m, k, device=device)
        tern = packing.pack_ternary(torch.randint(-1, 2, (n, k))).to(device)
        binw = packing.pack_binary(torch.randint(0, 2, (n, k)) * 2 - 1).to(device)
        sp, sn, b = (torch.rand(n, device=device) + 0.5, torch.rand(n, device=device) + 0.5,
                     torch.randn(n, device=device))
        for neg in (None, sn):
            for bias in (None, b):
                torch.testing.assert_close(triton_ops.ternary_linear(x, tern, k, sp, neg, bias),
                                           reference.ternary_linear(x, tern, k, sp, neg, bias),
                                           rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(triton_ops.binary_linear(x, binw, k, sp, b),
                                   reference.binary_linear(x, binw, k, sp, b), rtol=1e-5, atol=1e-5)
        xr = x.relu()
        for act_scale in (True, False):
            torch.testing.assert_close(triton_ops.xnor_linear(xr, binw, k, sp, b, act_scale),
                                       reference.xnor_linear(xr, binw, k, sp, b, act_scale), rtol=1e-5,
                                       atol=1e-5)
"""


@pytest.mark.skipif(not (HAVE_TRITON and torch.cuda.is_available()), reason="needs triton and a CUDA GPU")
def test_triton_kernels_on_gpu():
    scope: dict = {}
    exec(CHECK, scope)
    scope["check"]("cuda")
    # and through the registered ops, which dispatch CUDA tensors to Triton
    from kernels import ops, packing, reference

    x = torch.randn(4, 50, device="cuda")
    w = packing.pack_ternary(torch.randint(-1, 2, (20, 50))).cuda()
    s = torch.rand(20, device="cuda")
    torch.testing.assert_close(ops.ternary_linear(x, w, 50, s), reference.ternary_linear(x, w, 50, s))


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed (CPU-only environment)")
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: tested on it instead")
def test_triton_kernels_in_interpreter():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
    code = CHECK + "\ncheck('cpu')\nprint('ok')\n"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
