"""Loading a teacher from a file, in any of the three formats users bring.

- ``state_dict``: weights plus an architecture, either a project name from
  ``teachers.archs`` (``digits_cnn``) or a ``module:callable`` import path
  (``cifar_teachers:resnet20``). The checkpoint's folder is searched first for
  the module, so an arch file shipped next to its weights imports as is.
- ``torchscript``: ``torch.jit.load``.
- ``export``: ``torch.export.load`` of a ``.pt2``, then ``.module()``.
- ``auto``: by suffix and archive contents. A JSON sidecar (``resnet20_a.json``
  next to ``resnet20_a.state_dict.pt``) may give ``arch``, ``arch_kwargs`` and
  the input shape; the sidecar itself may also be the ``source``.

The model comes back frozen, in eval mode, after a dry-run forward that checks
its output is ``[N, num_classes]``. Every problem is one ``TeacherLoadError``
line naming the file.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

FORMATS = ("auto", "state_dict", "torchscript", "export")
_WEIGHT_SUFFIXES = (".state_dict.pt", ".pt", ".pth", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


class TeacherLoadError(ValueError):
    """A teacher file that cannot be used; the message is one line naming the file."""


def load_teacher(source: str | Path, format: str = "auto", arch: str | None = None,
                 num_classes: int | None = None, arch_kwargs: dict[str, Any] | None = None,
                 input_shape: Sequence[int] | None = None) -> nn.Module:
    """Load a teacher for inference.

    ``input_shape`` is one sample's shape, e.g. ``(3, 32, 32)``. It is taken from
    the sidecar, the model's ``input_size`` attribute or the exported program when
    not given; the dry run needs it whenever ``num_classes`` is to be checked.
    """
    if format not in FORMATS:
        raise TeacherLoadError(f"{source}: unknown teacher format {format!r}; "
                               f"expected one of {list(FORMATS)}")
    path = Path(source)
    if not path.is_file():
        raise TeacherLoadError(f"{source}: no such file")
    sidecar = _read_sidecar(path)
    if path.suffix == ".json":
        if format not in ("auto", "state_dict"):
            raise TeacherLoadError(f"{source}: a JSON sidecar describes a state dict, not format {format!r}")
        path, format = _weights_for_sidecar(path, sidecar), "state_dict"
    if format == "auto":
        format = detect_format(path)
    shape = tuple(input_shape) if input_shape is not None else _sidecar_input_shape(sidecar)

    if format == "state_dict":
        arch = arch or sidecar.get("arch")
        if not arch:
            raise TeacherLoadError(f"{path}: a state dict needs an architecture: pass arch (a project "
                                   f"name or 'module:callable') or put {_stem(path)}.json with an 'arch' "
                                   "key next to it")
        kwargs = {**sidecar.get("arch_kwargs", {}), **(arch_kwargs or {})}
        model = _load_state_dict(path, arch, kwargs, num_classes, shape)
    elif format == "torchscript":
        model = _load_torchscript(path)
    else:
        model = _load_export(path)

    if shape is None:
        shape = _model_input_shape(model)
    _dry_run(model, path, shape, num_classes)
    return model


def detect_format(path: str | Path) -> str:
    """``export``, ``torchscript`` or ``state_dict``, from the suffix and the archive's entries."""
    path = Path(path)
    if path.suffix == ".pt2":
        return "export"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        if any(n.endswith("/constants.pkl") or "/code/__torch__" in n for n in names):
            return "torchscript"
        if any(n.endswith("/archive_format") or "/models/" in n for n in names):
            return "export"
    return "state_dict"  # torch.save archives and legacy pickles


# ---------------------------------------------------------------- formats


def _load_state_dict(path: Path, arch: str, kwargs: dict[str, Any], num_classes: int | None,
                     shape: tuple[int, ...] | None) -> nn.Module:
    builder, fills = _resolve_arch(arch, path)
    known = {"num_classes": num_classes, "in_chans": shape[0] if shape else None}
    filled = {k: v for k, v in known.items() if k in fills and v is not None and k not in kwargs}
    kwargs.update(filled)
    try:
        model = builder(**kwargs)
    except Exception as e:
        raise TeacherLoadError(f"{path}: arch {arch!r} could not be built with {kwargs}: "
                               f"{_one_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise TeacherLoadError(f"{path}: arch {arch!r} returned {type(model).__name__}, not an nn.Module")

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TeacherLoadError(f"{path}: not a readable state dict ({_one_line(e)})") from None
    described = f"{arch!r} built with {filled}" if filled else repr(arch)
    state = _match_keys(_unwrap(obj, path), model.state_dict(), path, described)
    model.load_state_dict(state, strict=True)
    return _freeze(model.eval())


def _load_torchscript(path: Path) -> nn.Module:
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise TeacherLoadError(f"{path}: not a loadable TorchScript file ({_one_line(e)})") from None
    return _freeze(model.eval())


# Training flags of ops an exported graph keeps from the mode it was exported in: argument index.
_TRAINING_ARG = {
    torch.ops.aten.batch_norm.default: 5,
    torch.ops.aten._native_batch_norm_legit.default: 5,
    torch.ops.aten._native_batch_norm_legit_functional.default: 5,
    torch.ops.aten.dropout.default: 2,
    torch.ops.aten.native_dropout.default: 2,
}


def _load_export(path: Path) -> nn.Module:
    try:
        program = torch.export.load(str(path))
        model = program.module()
    except Exception as e:
        raise TeacherLoadError(f"{path}: not a loadable torch.export program ({_one_line(e)})") from None
    # The graph is frozen in the mode it was exported in (``.eval()`` is refused on it), so a
    # program exported in training mode would use batch statistics: refuse it.
    for node in model.graph.nodes:
        index = _TRAINING_ARG.get(node.target) if node.op == "call_function" else None
        if index is not None and len(node.args) > index and node.args[index] is True:
            raise TeacherLoadError(f"{path}: exported in training mode ({node.target} with training=True); "
                                   "re-export after model.eval()")
    for module in model.modules():
        module.training = False  # report the mode the graph actually runs in
    return _freeze(model)


def _freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ---------------------------------------------------------------- architectures


def _resolve_arch(arch: str, path: Path) -> tuple[Callable[..., nn.Module], set[str]]:
    """The builder, and which of ``num_classes``/``in_chans`` it takes by name (filled when known)."""
    if ":" not in arch:
        from .archs import TEACHER_ARCHS

        if arch not in TEACHER_ARCHS:
            raise TeacherLoadError(f"{path}: unknown arch {arch!r}; use a project teacher "
                                   f"{sorted(TEACHER_ARCHS)} or a 'module:callable' import path")
        builder = TEACHER_ARCHS[arch]
    else:
        builder = _import_arch(arch, path)
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        params = {}
    return builder, {name for name in ("num_classes", "in_chans") if name in params}


def _import_arch(arch: str, path: Path) -> Callable[..., nn.Module]:
    module_name, _, attr = arch.partition(":")
    if not module_name or not attr:
        raise TeacherLoadError(f"{path}: arch {arch!r} is not a 'module:callable' import path")
    folder = str(path.resolve().parent)
    top = module_name.split(".")[0]
    shipped = [Path(folder, top + ".py"), Path(folder, top, "__init__.py")]
    loaded = sys.modules.get(top)
    if loaded is not None and any(f.is_file() for f in shipped):
        loaded_from = Path(getattr(loaded, "__file__", None) or "").resolve()
        if loaded_from not in [f.resolve() for f in shipped]:
            raise TeacherLoadError(f"{path}: arch module {top!r} next to the checkpoint clashes with the "
                                   f"already imported {loaded_from}; rename one of them")
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise TeacherLoadError(f"{path}: arch {arch!r} does not import ({_one_line(e)})") from None
    finally:
        if added:
            sys.path.remove(folder)
    obj: Any = module
    for name in attr.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            raise TeacherLoadError(f"{path}: arch {arch!r}: module {module_name!r} has no {attr!r}")
    if not callable(obj):
        raise TeacherLoadError(f"{path}: arch {arch!r} is not callable")
    return obj


# ---------------------------------------------------------------- state dicts


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    """The tensor dict inside a plain, ``{"state_dict": ...}`` or ``{"model": ...}`` checkpoint."""
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                return _unwrap(obj[key], path)
    raise TeacherLoadError(f"{path}: holds {type(obj).__name__}, not a state dict of tensors")


def _match_keys(state: dict[str, Tensor], expected: dict[str, Tensor], path: Path,
                arch: str) -> dict[str, Tensor]:
    """``state`` with keys matching ``expected``, or a one-line error (``arch`` as it is to be shown)."""
    if state.keys() != expected.keys():
        # ``module.`` (DDP), ``_orig_mod.`` (torch.compile), ``model.`` (Lightning): strip a common
        # first component, but only when that makes the keys match exactly.
        firsts = {k.split(".", 1)[0] for k in state}
        if len(firsts) == 1 and all("." in k for k in state):
            stripped = {k.split(".", 1)[1]: v for k, v in state.items()}
            if stripped.keys() == expected.keys():
                state = stripped
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [f"{k} {list(state[k].shape)} vs {list(v.shape)}" for k, v in expected.items()
               if k in state and state[k].shape != v.shape]
    if missing or unexpected or resized:
        found = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", resized))
        parts = [f"{label} {_few(items)}" for label, items in found if items]
        raise TeacherLoadError(f"{path}: checkpoint does not match arch {arch}: " + "; ".join(parts))
    return state


def _few(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return "[" + ", ".join(items[:n]) + "]" + more


# ---------------------------------------------------------------- sidecars and input shape


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


def _read_sidecar(path: Path) -> dict[str, Any]:
    candidates = [path]
    if path.suffix != ".json":
        candidates = [path.with_suffix(".json"), path.with_name(_stem(path) + ".json")]
    for candidate in candidates:
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (OSError, ValueError) as e:
                raise TeacherLoadError(f"{candidate}: unreadable JSON sidecar ({_one_line(e)})") from None
            if not isinstance(data, dict):
                raise TeacherLoadError(f"{candidate}: JSON sidecar is not an object")
            return data
    return {}


def _weights_for_sidecar(path: Path, sidecar: dict[str, Any]) -> Path:
    if sidecar.get("weights"):
        weights = path.parent / sidecar["weights"]
        if not weights.is_file():
            raise TeacherLoadError(f"{path}: weights {sidecar['weights']!r} named by the sidecar "
                                   "do not exist")
        return weights
    candidates = [path.with_name(_stem(path) + suffix) for suffix in _WEIGHT_SUFFIXES]
    for weights in candidates:
        if weights.is_file():
            return weights
    raise TeacherLoadError(f"{path}: no weights next to the sidecar "
                           f"(looked for {[c.name for c in candidates]})")


def _sidecar_input_shape(sidecar: dict[str, Any]) -> tuple[int, ...] | None:
    if sidecar.get("input_shape"):
        return tuple(int(d) for d in sidecar["input_shape"])
    # The shared teachers describe their input as e.g. "float32 [N, 3, 32, 32], ...".
    match = re.search(r"\[N,\s*(\d+(?:,\s*\d+)*)\]", str(sidecar.get("input", "")))
    return tuple(int(d) for d in match.group(1).split(",")) if match else None


def _model_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    if getattr(model, "input_size", None) is not None:
        return tuple(int(d) for d in model.input_size)
    if isinstance(model, torch.fx.GraphModule):
        inputs = [n for n in model.graph.nodes if n.op == "placeholder"]
        val = inputs[0].meta.get("val") if len(inputs) == 1 else None
        if isinstance(val, Tensor) and all(isinstance(d, int) for d in val.shape[1:]):
            return tuple(val.shape[1:])
    return None


def _dry_run(model: nn.Module, path: Path, shape: tuple[int, ...] | None, num_classes: int | None) -> None:
    if shape is None:
        if num_classes is None:
            return
        raise TeacherLoadError(f"{path}: cannot check num_classes={num_classes} without the input shape; "
                               "pass input_shape=(C, H, W)")
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode():
            out = model(x)
    except Exception as e:
        raise TeacherLoadError(f"{path}: forward on an input of shape {list(x.shape)} failed "
                               f"({_one_line(e)})") from None
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 2:
        got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise TeacherLoadError(f"{path}: output is {got}, expected logits [N, classes]")
    if num_classes is not None and out.shape[1] != num_classes:
        raise TeacherLoadError(f"{path}: teacher outputs {out.shape[1]} classes, "
                               f"expected num_classes={num_classes}")
    if not torch.isfinite(out).all():
        raise TeacherLoadError(f"{path}: dry-run logits are not finite (NaN/inf weights?)")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
