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
from .crd import CRDTerm
from .dist import DISTTerm
from .dkd import DKDTerm
from .fitnets import FitNetsTerm
from .fsp import FSPTerm
from .kd import CrossEntropyTerm, KDTerm
from .mlkd import MLKDTerm
from .nst import NSTTerm
from .relation import PKTTerm, RKDTerm, SPTerm
from .reviewkd import ReviewKDTerm
from .soft_targets import SoftTargetTerm

TERM_TYPES: dict[str, type[LossTerm]] = {
    "ce": CrossEntropyTerm,
    "kd": KDTerm,
    "hint": FitNetsTerm,
    "at": AttentionTransferTerm,
    "fsp": FSPTerm,
    "dkd": DKDTerm,
    "dist": DISTTerm,
    "mlkd": MLKDTerm,
    "crd": CRDTerm,
    "rkd": RKDTerm,
    "pkt": PKTTerm,
    "sp": SPTerm,
    "nst": NSTTerm,
    "reviewkd": ReviewKDTerm,
}
# Options every term takes on top of its own (``LossTerm.set_warmup``).
COMMON_OPTIONS = ("warmup_epochs",)


def term_options(type_name: str) -> tuple[list[str], list[str]]:
    """(required, optional) constructor options of a term type, ``name`` excluded."""
    params = list(inspect.signature(TERM_TYPES[type_name].__init__).parameters.values())[2:]
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    optional = [p.name for p in params if p.default is not inspect.Parameter.empty]
    return required, optional + [o for o in COMMON_OPTIONS if o not in optional]


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
    own = set(required) | set(inspect.signature(TERM_TYPES[type_name].__init__).parameters)
    common = {k: kwargs.pop(k) for k in COMMON_OPTIONS if k in kwargs and k not in own}
    term = TERM_TYPES[type_name](name, **kwargs)
    if "warmup_epochs" in common:
        term.set_warmup(common["warmup_epochs"])
    return term


__all__ = [
    "TERM_TYPES",
    "AttentionTransferTerm",
    "CRDTerm",
    "CrossEntropyTerm",
    "DISTTerm",
    "DKDTerm",
    "FSPTerm",
    "FitNetsTerm",
    "KDTerm",
    "LossInputs",
    "LossTerm",
    "MLKDTerm",
    "NSTTerm",
    "PKTTerm",
    "RKDTerm",
    "ReviewKDTerm",
    "SPTerm",
    "SoftTargetTerm",
    "build_term",
    "term_options",
]
