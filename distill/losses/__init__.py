"""Loss terms by spec name (the losses engineer extends this registry)."""

from .base import LossInputs, LossTerm
from .kd import CrossEntropyTerm, KDTerm

TERM_TYPES: dict[str, type[LossTerm]] = {"ce": CrossEntropyTerm, "kd": KDTerm}


def build_term(type_name: str, name: str, **kwargs) -> LossTerm:
    if type_name not in TERM_TYPES:
        raise ValueError(f"unknown loss term {type_name!r}; known: {sorted(TERM_TYPES)}")
    try:
        return TERM_TYPES[type_name](name, **kwargs)
    except TypeError as exc:
        raise ValueError(f"loss term {name!r}: {exc}") from None


__all__ = ["TERM_TYPES", "CrossEntropyTerm", "KDTerm", "LossInputs", "LossTerm", "build_term"]
