"""
Access control (SPEC section 11): who may connect, publish and subscribe.

  - L{globMatch}: Redis glob patterns, as C{PSUBSCRIBE} matches them.

Each name is loaded from its module on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backplane.auth.glob import compileGlob, globMatch

_WHERE = {
    "compileGlob": "backplane.auth.glob",
    "globMatch": "backplane.auth.glob",
}

__all__ = [
    "compileGlob",
    "globMatch",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'backplane.auth' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
