"""Loss terms by spec name.

Each spec term ``{type: <name>, weight: w, name: label, **options}`` becomes
``build_term(type, label, **options)``; the LightningModule sums
``weight * term(inputs)`` over the terms whose ``active(epoch)`` is true.
Terms with learned parameters (FitNets / FSP regressors) are ``nn.Module``s and
must be registered under the LightningModule so the optimizer sees them.
"""

from __future__ import annotations

import inspect
from typing import Any

from .attention import AttentionTransferTerm
from .base import LossInputs, LossTerm
from .dkd import DKDTerm
from .fitnets import FitNetsTerm
from .fsp import FSPTerm
from .kd import CrossEntropyTerm, KDTerm

TERM_TYPES: dict[str, type[LossTerm]] = {
    "ce": CrossEntropyTerm,
    "kd": KDTerm,
    "hint": FitNetsTerm,
    "at": AttentionTransferTerm,
    "fsp": FSPTerm,
    "dkd": DKDTerm,
}


def term_options(type_name: str) -> tuple[list[str], list[str]]:
    """(required, optional) constructor options of a term type, ``name`` excluded."""
    params = list(inspect.signature(TERM_TYPES[type_name].__init__).parameters.values())[2:]
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    optional = [p.name for p in params if p.default is not inspect.Parameter.empty]
    return required, optional


def build_term(type_name: str, name: str, **kwargs: Any) -> LossTerm:
    """Construct a term; unknown types, unknown options and missing options are one-line ValueErrors."""
    if type_name not in TERM_TYPES:
        raise ValueError(f"loss term {name!r}: unknown type {type_name!r}; known: {sorted(TERM_TYPES)}")
    required, optional = term_options(type_name)
    unknown = sorted(set(kwargs) - set(required) - set(optional))
    if unknown:
        raise ValueError(f"loss term {name!r} ({type_name}): unknown option(s) {unknown}; "
                         f"accepted: {required + optional}")
    missing = [k for k in required if k not in kwargs]
    if missing:
        raise ValueError(f"loss term {name!r} ({type_name}): missing option(s) {missing}")
    return TERM_TYPES[type_name](name, **kwargs)


__all__ = [
    "TERM_TYPES",
    "AttentionTransferTerm",
    "CrossEntropyTerm",
    "DKDTerm",
    "FSPTerm",
    "FitNetsTerm",
    "KDTerm",
    "LossInputs",
    "LossTerm",
    "build_term",
    "term_options",
]
