"""ExecuTorch export: ``torch.export`` -> ``to_edge_transform_and_lower`` (XNNPACK) -> ``.pte``.

The program takes batch 1, the shape a phone app runs (a dynamic batch leaves the shape
arithmetic of the flatten outside the delegate, one more delegate call per inference). After
lowering, ``executorch.devtools.backend_debug.get_delegation_info`` says which operators run
inside XNNPACK; every conv and linear should, and ``Delegation.undelegated_compute`` names
those that did not (they would run on ExecuTorch's slow portable kernels).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import DeployError, require

# Graph bookkeeping that stays outside any delegate by construction (the delegate's outputs).
PLUMBING = ("getitem", "sym_size", "alloc", "output")
COMPUTE = ("convolution", "linear", "addmm", "mm", "bmm")


@dataclasses.dataclass
class Delegation:
    """Where the lowered program's operators run: XNNPACK delegate calls vs ExecuTorch's own kernels."""

    subgraphs: int
    delegated_nodes: int
    undelegated: dict[str, int]  # op name -> count of nodes outside the delegate, plumbing left out

    @property
    def undelegated_compute(self) -> list[str]:
        """Conv / linear / matmul ops left outside XNNPACK (empty when the export is as it should be)."""
        return sorted(op for op in self.undelegated if any(c in op for c in COMPUTE))

    def summary(self) -> str:
        outside = ", ".join(f"{op} x{n}" for op, n in sorted(self.undelegated.items())) or "none"
        return f"{self.delegated_nodes} nodes in {self.subgraphs} XNNPACK call(s); outside: {outside}"


def to_executorch(model: nn.Module, example: Tensor, path: str | Path, *,
                  calibration: Iterable[Tensor] | None = None, partitioners: list | None = None) -> Delegation:
    """Write ``model`` (eval mode) as an ExecuTorch program at ``path``, XNNPACK-delegated; with
    ``calibration``, PT2E static int8 first (``students.deploy.int8.pt2e_int8``). ``partitioners``
    replaces the default ``[XnnpackPartitioner()]`` (custom-op exports add their own steps)."""
    exir = require("executorch.exir", "ExecuTorch export")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    one = example[:1].contiguous()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        model = model.eval()
        if calibration is not None:  # the PT2E graph module refuses .eval(): it is already in eval form
            from .int8 import pt2e_int8

            model = pt2e_int8(model, example, calibration)
        try:
            program = torch.export.export(model, (one,))
            edge = exir.to_edge_transform_and_lower(program, partitioner=partitioners or [XnnpackPartitioner()])
            delegation = delegation_of(edge.exported_program().graph_module)
            path.write_bytes(edge.to_executorch().buffer)
        except DeployError:
            raise
        except Exception as exc:  # noqa: BLE001 - export/lowering raise many types; one line for the user
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DeployError(f"ExecuTorch export of {type(model).__name__} failed: {first}") from None
    return delegation


def delegation_of(graph_module: torch.fx.GraphModule) -> Delegation:
    """The ``Delegation`` of a lowered edge program's graph."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    outside = {op: b.non_delegated for op, b in info.delegation_by_operator.items()
               if b.non_delegated and not any(p in op for p in PLUMBING)}
    return Delegation(info.num_delegated_subgraphs, info.num_delegated_nodes, outside)
