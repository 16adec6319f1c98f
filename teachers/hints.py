"""Hint capture: a teacher's intermediate outputs, named by module path (``layer2``, ``features.13``).

One entry point, three mechanisms, picked by what ``load_teacher`` returned:

- eager ``nn.Module``: forward hooks on ``model.get_submodule(path)``, registered for the one call;
- ``torch.export`` programs (``ExportedProgram.module()``, a flat FX graph; its submodules are
  empty shells, so hooks never fire): every node records the module calls it ran inside
  (``nn_module_stack``). The module's output is the node inside that call whose value is used
  outside it. The graph is copied once with those nodes added to its outputs;
- TorchScript (scripted or traced): hooks cannot be added to a loaded ``ScriptModule``, but its
  forward graph calls submodules through ``prim::CallMethod``. The calls on the way to a hint
  are inlined until the hint module's own call is in the graph, and the graph is re-emitted as a
  function that also returns that call's output. (Inlining everything and reading each node's
  module hierarchy does not work: nodes with blocks lose their hierarchy when inlined.)

In both graph cases the hint is copied right where it is produced, so a later in-place op
(``ReLU(inplace=True)``) cannot change it; hooks copy for the same reason. The rewritten graph
or hook set is built once per (model, paths) and cached on the model.

Limits, each a one-line ``HintError`` naming the path: a module that runs more than once per
forward (shared weights) or returns something other than one tensor; in exported graphs a module
that adds no operations (``nn.Identity``, an empty ``nn.Sequential``); in TorchScript a module
called under control flow (``if``/loop; a repeat inside a loop is refused by that rule).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

HintRunner = Callable[[Tensor], tuple[object, dict[str, Tensor]]]

_CACHE_ATTR = "_distill_hint_runners"


class HintError(ValueError):
    """A requested hint path cannot be captured from this teacher."""


def run_teacher(model: nn.Module, x: Tensor, hint_paths: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """What a teacher actor does per batch: fp32 logits and fp16 hints on the CPU, under inference mode.

    ``x`` goes to the model's device first. Build the model's runner (the first call) after
    placing the model: the rewritten graphs keep the buffers they were built with.
    """
    device = next((t.device for t in [*model.parameters(), *model.buffers()]), x.device)
    with torch.inference_mode():
        out, hints = capture_hints(model, x.to(device), hint_paths, hint_dtype=torch.float16)
    if not isinstance(out, Tensor):
        raise HintError(f"teacher returned {type(out).__name__}, expected a logits tensor")
    return out.float().cpu(), {p: h.cpu() for p, h in hints.items()}


def capture_hints(model: nn.Module, x: Tensor, paths: Sequence[str],
                  hint_dtype: torch.dtype | None = None) -> tuple[object, dict[str, Tensor]]:
    """Run ``model(x)`` once; return its output and ``{path: copy of that module's output}``.

    ``hint_dtype`` converts the copies (``None`` keeps the teacher's dtype). Grad mode is the
    caller's; ``run_teacher`` wraps this in ``torch.inference_mode()``.
    """
    paths = tuple(dict.fromkeys(paths))
    if not paths:
        return model(x), {}
    return hint_runner(model, paths, hint_dtype)(x)


def hint_runner(model: nn.Module, paths: Sequence[str], hint_dtype: torch.dtype | None = None) -> HintRunner:
    """The (cached) callable ``x -> (output, hints)`` for this model and these paths."""
    paths = tuple(dict.fromkeys(paths))
    cache = model.__dict__.get(_CACHE_ATTR)
    if cache is None:
        cache = {}
        # Plain instance attribute: not a submodule, not in the state dict, dies with the model.
        object.__setattr__(model, _CACHE_ATTR, cache)
    key = (paths, hint_dtype)
    if key not in cache:
        if isinstance(model, torch.jit.ScriptModule):
            cache[key] = _script_runner(model, paths, hint_dtype)
        elif isinstance(model, torch.fx.GraphModule) and _has_module_stack(model.graph):
            cache[key] = _export_runner(model, paths, hint_dtype)
        else:
            cache[key] = _hook_runner(model, paths, hint_dtype)
    return cache[key]


def _unknown_path(path: str, known: Sequence[str]) -> HintError:
    top = [p for p in known if p and "." not in p]
    return HintError(f"hint path {path!r} is not a module of the teacher; its top-level modules are {top}")


# ---------------------------------------------------------------- eager: forward hooks


def _hook_runner(model: nn.Module, paths: tuple[str, ...], dtype: torch.dtype | None) -> HintRunner:
    names = [name for name, _ in model.named_modules()]
    modules = {}
    for p in paths:
        try:
            modules[p] = model.get_submodule(p)
        except AttributeError:
            raise _unknown_path(p, names) from None
    lock = threading.Lock()  # hooks live on the shared model: one capture at a time

    def run(x: Tensor) -> tuple[object, dict[str, Tensor]]:
        got: dict[str, list[Tensor]] = {p: [] for p in paths}

        def hook_for(p: str):
            def hook(module, args, out):
                if not isinstance(out, Tensor):
                    raise HintError(f"hint path {p!r}: module returns {type(out).__name__}, not a tensor")
                # A copy: later in-place ops (ReLU(inplace=True)) must not change the hint.
                got[p].append(out.detach().to(dtype=dtype or out.dtype, copy=True))
            return hook

        with lock:
            handles = [m.register_forward_hook(hook_for(p)) for p, m in modules.items()]
            try:
                out = model(x)
            finally:
                for h in handles:
                    h.remove()
        for p, seen in got.items():
            if len(seen) != 1:
                raise HintError(f"hint path {p!r}: module ran {len(seen)} times in one forward; "
                                "a hint needs a module that runs exactly once")
        return out, {p: seen[0] for p, seen in got.items()}

    return run


# ---------------------------------------------------------------- torch.export: FX graph outputs


def _has_module_stack(graph: torch.fx.Graph) -> bool:
    return any(n.meta.get("nn_module_stack") for n in graph.nodes)


def _fx_calls(node: torch.fx.Node, path: str) -> list[str]:
    """Keys of the calls of module ``path`` that ``node`` ran inside (one key per call)."""
    stack = node.meta.get("nn_module_stack") or {}
    return [key for key, (p, _) in stack.items() if p == path]


def _fx_output_node(graph: torch.fx.Graph, path: str) -> torch.fx.Node:
    ops = ("call_function", "call_method", "call_module")
    inside = {n for n in graph.nodes if n.op in ops and _fx_calls(n, path)}
    if not inside:
        # Modules that add no operations (nn.Identity, an empty nn.Sequential) leave no trace in
        # the graph, so they look exactly like a name that does not exist.
        known = sorted({p for n in graph.nodes for p, _ in (n.meta.get("nn_module_stack") or {}).values()})
        top = [p for p in known if p and "." not in p]
        raise HintError(f"hint path {path!r}: no operation of the exported graph ran inside such a module "
                        f"(a wrong name, or an identity); its top-level modules are {top}")
    calls = {key for n in inside for key in _fx_calls(n, path)}
    if len(calls) > 1:
        raise HintError(f"hint path {path!r}: module ran {len(calls)} times in one forward; "
                        "a hint needs a module that runs exactly once")
    outs = [n for n in graph.nodes if n in inside and any(u not in inside for u in n.users)]
    if len(outs) != 1 or not isinstance(outs[0].meta.get("val"), Tensor):
        raise HintError(f"hint path {path!r}: module does not produce exactly one tensor in the exported "
                        f"graph ({[n.name for n in outs]})")
    return outs[0]


def _export_runner(gm: torch.fx.GraphModule, paths: tuple[str, ...], dtype: torch.dtype | None) -> HintRunner:
    targets = [_fx_output_node(gm.graph, p) for p in paths]
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    flat_out = graph.graph_copy(gm.graph, env)
    copies = []
    for node in targets:
        src = env[node]
        with graph.inserting_after(src):  # copy before anything downstream can mutate it
            if dtype is None:
                copies.append(graph.call_function(torch.ops.aten.clone.default, (src,)))
            else:
                copies.append(graph.call_function(torch.ops.aten._to_copy.default, (src,), {"dtype": dtype}))
    graph.output((flat_out, tuple(copies)))
    # Shares parameters and buffers with ``gm``; only the graph is new.
    with_hints = torch.fx.GraphModule(gm, graph)
    codegen = gm.graph._codegen
    in_spec = out_spec = None
    if isinstance(codegen, torch.fx.graph._PyTreeCodeGen):
        in_spec, out_spec = codegen.pytree_info.in_spec, codegen.pytree_info.out_spec

    def run(x: Tensor) -> tuple[object, dict[str, Tensor]]:
        flat_in, spec = pytree.tree_flatten(((x,), {}))
        if in_spec is not None and spec != in_spec:
            raise HintError(f"the exported teacher takes inputs shaped like {in_spec}, not one tensor")
        flat, hints = with_hints(*flat_in)
        out = pytree.tree_unflatten(list(flat), out_spec) if out_spec is not None else flat
        return out, dict(zip(paths, hints, strict=True))

    return run


# ---------------------------------------------------------------- TorchScript: call sites as outputs


def _ts_attr_chain(value: torch._C.Value, self_value: torch._C.Value) -> list[str] | None:
    """Names of the ``prim::GetAttr`` chain from ``self`` to ``value``, or None if it is not one."""
    names = []
    while value is not self_value:
        node = value.node()
        if node.kind() != "prim::GetAttr":
            return None
        names.append(node.s("name"))
        value = node.inputsAt(0)
    return names[::-1]


def _ts_in_top_block(node: torch._C.Node) -> bool:
    return node.owningBlock().owningNode() is None


def _ts_copy(graph: torch._C.Graph, value: torch._C.Value, dtype: torch.dtype | None) -> torch._C.Value:
    """Insert a copy of ``value`` (converted to ``dtype``) at the graph's current insert point."""
    if dtype is None:
        return graph.insert("aten::clone", [value])
    flags = [graph.insertConstant(dtype), graph.insertConstant(False), graph.insertConstant(True)]
    return graph.insert("aten::to", [value, *flags])  # to(dtype, non_blocking=False, copy=True)


def _script_runner(model: torch.jit.ScriptModule, paths: tuple[str, ...],
                   dtype: torch.dtype | None) -> HintRunner:
    """Re-emit the forward graph so that it also returns each hint module's output.

    The forward graph calls submodules through ``prim::CallMethod`` on a ``prim::GetAttr``
    chain from ``self``. Calls on the way to a hint (``features`` for ``features.13``, and
    methods of ``self``) are inlined one at a time until the hint module's own
    ``forward`` call sits in the graph; its output, copied right there, becomes an extra
    output. No scope metadata is involved, and every call site is counted exactly.
    """
    modules = dict(model.named_modules())
    for p in paths:
        if p not in modules:
            raise _unknown_path(p, list(modules))
    on_the_way = {".".join(p.split(".")[:i]) for p in paths for i in range(len(p.split(".")))}
    graph = model.forward.graph.copy()
    self_value = next(graph.inputs())
    copies: dict[str, list[torch._C.Value]] = {p: [] for p in paths}
    guarded: set[str] = set()  # hints whose call sits under control flow

    def record(path: str, node: torch._C.Node, value: torch._C.Value) -> None:
        if value.type().kind() != "TensorType":
            raise HintError(f"hint path {path!r}: module returns {value.type()}, not a tensor")
        if not _ts_in_top_block(node):
            guarded.add(path)  # refused below; nothing is inserted
            copies[path].append(value)
        else:
            copies[path].append(_ts_copy(graph, value, dtype))

    inlined = True
    while inlined:  # the node list changes with every inline: rescan
        inlined = False
        for node in graph.findAllNodes("prim::CallMethod", True):
            chain = _ts_attr_chain(node.inputsAt(0), self_value)
            name = ".".join(chain) if chain is not None else None
            if name not in on_the_way:
                continue
            callee = getattr(modules[name], node.s("name")).graph
            with graph.insert_point_guard(node):
                (out,) = graph.insertGraph(callee, list(node.inputs()))
                if name in copies and node.s("name") == "forward":
                    record(name, node, out)  # the copy lands after the inlined body
            node.output().replaceAllUsesWith(out)
            node.destroy()
            inlined = True
            break

    leaves = [p for p in paths if p not in on_the_way]
    if leaves:
        top = list(graph.nodes()) + [graph.return_node()]
        for node in graph.findAllNodes("prim::CallMethod", True):
            chain = _ts_attr_chain(node.inputsAt(0), self_value)
            name = ".".join(chain) if chain is not None else None
            if name in leaves and node.s("name") == "forward":
                after = top[top.index(node) + 1] if _ts_in_top_block(node) else node
                with graph.insert_point_guard(after):  # the copy goes right after the call
                    record(name, node, node.output())

    for p in paths:
        if p in guarded:
            raise HintError(f"hint path {p!r}: module is called under TorchScript control flow (if/loop); "
                            "its output cannot be captured")
        if not copies[p]:
            raise HintError(f"hint path {p!r}: the TorchScript forward never calls this module's forward")
        if len(copies[p]) > 1:
            raise HintError(f"hint path {p!r}: module is called from {len(copies[p])} places in the "
                            "TorchScript forward; a hint needs a module that runs exactly once")
        graph.registerOutput(copies[p][0])
    graph.makeMultiOutputIntoTuple()
    fn = torch._C._create_function_from_graph("forward_with_hints", graph)
    module_object = model._c

    def run(x: Tensor) -> tuple[object, dict[str, Tensor]]:
        out, *hints = fn(module_object, x)
        return out, dict(zip(paths, hints, strict=True))

    return run
