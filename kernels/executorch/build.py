"""Builds the ExecuTorch runtime kernels (lowbit_et.cpp, spin_pool.cpp + kernels/csrc) into one shared library.

No ExecuTorch source build: the executorch pip wheel ships the headers
(``executorch/include``) and ``lib/libexecutorch.so``, whose operator registry is the
one its Python runtime (``executorch.runtime``) uses, so a library compiled against them
and loaded into that process adds ``distill::*.out`` kernels to every program it loads.
The library is tied to the wheel's version (its headers define the ABI): the cache key
holds that version, the compiler, the flags and every source byte, and the file lands
under ``$DISTILL_KERNELS_BUILD_DIR/executorch`` (default ``~/.cache/distill/executorch/<platform>``).

``build_library(cxx=..., target_flags=..., executorch_root=...)`` is parameterized for
cross builds (e.g. ``cxx="aarch64-linux-gnu-g++"`` with an aarch64 wheel's root): the same
sources, another compiler and target. This module imports nothing from executorch (it
finds the installed package with importlib), so ``kernels`` stays importable without it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from kernels import _cpu

HERE = Path(__file__).parent
SOURCES = [HERE / "lowbit_et.cpp", HERE / "spin_pool.cpp", *(_cpu.CSRC / s for s in _cpu.SOURCES)]
# The flags the wheel's own libraries were built with (its ABI), then the kernels' own
# (-ffp-contract=off: no FMA but the spec's explicit ones, so every path rounds as kernels/reference.py does).
FLAGS = [
    "-std=c++17", "-O3", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off", "-fno-math-errno",
    "-fvisibility=hidden", "-D_GLIBCXX_USE_CXX11_ABI=1", "-DC10_USING_CUSTOM_GENERATED_MACROS",
    "-DET_EVENT_TRACER_ENABLED",
]  # fmt: skip


class BuildError(RuntimeError):
    """The library could not be built (no compiler, no executorch, or a compile error)."""


def executorch_root() -> Path:
    """The installed executorch package folder (holds include/ and lib/)."""
    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("executorch is not installed: pip install executorch (the ExecuTorch kernels need its wheel)")
    return Path(next(iter(spec.submodule_search_locations)))


def executorch_version() -> str:
    try:
        return importlib.metadata.version("executorch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_dir() -> Path:
    """$DISTILL_KERNELS_BUILD_DIR/executorch, else ~/.cache/distill/executorch/<platform>."""
    if "DISTILL_KERNELS_BUILD_DIR" in os.environ:
        return Path(os.environ["DISTILL_KERNELS_BUILD_DIR"]) / "executorch"
    return Path.home() / ".cache" / "distill" / "executorch" / f"{platform.system()}-{platform.machine()}".lower()


def compile_command(cxx: str, root: Path, output: Path, target_flags: Sequence[str] = ()) -> list[str]:
    """The one compiler invocation that builds the library from SOURCES."""
    include = root / "include"
    lib = root / "lib"
    return [
        cxx, *FLAGS, *target_flags,
        f"-I{include}", f"-I{include / 'executorch/runtime/core/portable_type/c10'}", f"-I{_cpu.CSRC}",
        *(str(s) for s in SOURCES),
        f"-L{lib}", "-lexecutorch", "-lexecutorch_threadpool", f"-Wl,-rpath,{lib}",
        "-o", str(output),
    ]  # fmt: skip


def _key(cxx: str, root: Path, target_flags: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(" ".join([cxx, *FLAGS, *target_flags, str(root), executorch_version()]).encode())
    for src in sorted({*SOURCES, *HERE.glob("*.h"), *_cpu.CSRC.glob("*.h")}):
        h.update(src.name.encode() + src.read_bytes())
    return h.hexdigest()[:16]


def build_library(
    cxx: str | None = None,
    target_flags: Sequence[str] = (),
    root: Path | None = None,
    out_dir: Path | None = None,
) -> Path:
    """Path of the built library, compiling it unless a build of these exact sources and flags exists.

    cxx: the C++ compiler (default $CXX, else g++); target_flags: extra flags for another target;
    root: the executorch package folder to build against (default: the installed one).
    """
    cxx = cxx or os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise BuildError(f"no C++ compiler {cxx!r} on PATH (set CXX or install g++) to build the ExecuTorch kernels")
    root = Path(root) if root is not None else executorch_root()
    if not (root / "include" / "executorch").is_dir() or not (root / "lib").is_dir():
        raise BuildError(f"{root}: not an executorch wheel with include/ and lib/ (needs executorch >= 1.0)")
    out = Path(out_dir) if out_dir is not None else build_dir()
    target = out / f"libdistill_lowbit_et-{_key(cxx, root, target_flags)}.so"
    if target.exists():
        return target
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        partial = Path(tmp) / target.name
        proc = subprocess.run(compile_command(cxx, root, partial, target_flags), capture_output=True, text=True)
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()[:300])
            raise BuildError(f"building the ExecuTorch kernels with {cxx} failed: {first}")
        os.replace(partial, target)  # atomic: a concurrent build sees either no file or a whole one
    return target
