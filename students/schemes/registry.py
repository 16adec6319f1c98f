"""Quantization schemes by name, as the student zoo registers architectures.

``@register_scheme`` records a scheme class under its ``name``; ``make_scheme(name, **options)``
builds one, rejecting an unknown name or option with a one-line ValueError (the dataclass
constructor would raise a TypeError from deep inside). A new scheme is one file in this
folder and one import line in ``students/schemes/__init__.py``.
"""

from __future__ import annotations

from typing import Any

from .base import Scheme

_SCHEMES: dict[str, type[Scheme]] = {}


def register_scheme(cls: type[Scheme]) -> type[Scheme]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    if not cls.name or cls.name in _SCHEMES:
        raise ValueError(f"scheme {cls.name!r} registered twice or without a name")
    _SCHEMES[cls.name] = cls
    return cls


def list_schemes() -> list[str]:
    """Registered scheme names, in registration order."""
    return list(_SCHEMES)


def scheme_class(name: str) -> type[Scheme]:
    if name not in _SCHEMES:
        raise ValueError(f"unknown quantization scheme {name!r}; choose one of {', '.join(_SCHEMES)}")
    return _SCHEMES[name]


def make_scheme(name: str, **options: Any) -> Scheme:
    """The scheme ``name`` with ``options`` (the rest at their defaults), validated."""
    cls = scheme_class(name)
    allowed = cls.option_names()
    for option in options:
        if option not in allowed:
            accepts = ", ".join(allowed) or "none"
            raise ValueError(f"unknown option {option!r} for scheme {name!r} (accepts: {accepts})")
    return cls(**options)


def schemes_with(target: str) -> list[str]:
    """Names of the schemes that have the export target ``target`` (a ``Scheme`` method, e.g. "packed")."""
    return [name for name, cls in _SCHEMES.items() if cls.supports(target)]
