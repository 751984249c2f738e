"""The one place that imports the compiled modules built from ext/.

Why: the hot loops exist only compiled. A missing build must be a clear error that says
how to build, never a silent fall back to slow Python.
"""
from __future__ import annotations

import importlib
from types import ModuleType

MODULES = ("time_domain", "spectral", "quality", "change", "frames")


class NativeExtensionMissing(ImportError):
    """The Cython extension was not built (or was built for another Python)."""


def load(name: str) -> ModuleType:
    """Return the compiled module ``edge_agent._native.<name>`` or raise a clear error."""
    if name not in MODULES:
        raise ValueError(f"unknown native module {name!r}; known: {', '.join(MODULES)}")
    try:
        return importlib.import_module(f"edge_agent._native.{name}")
    except ImportError as exc:
        raise NativeExtensionMissing(
            f"the compiled extension edge_agent._native.{name} is not built ({exc}); "
            "run `make install` (or `pip install -e .`) to build ext/"
        ) from exc


def require() -> None:
    """Import every compiled module; raise NativeExtensionMissing for the first one missing."""
    for name in MODULES:
        load(name)
