"""The one seam to a TFLite interpreter, whichever package provides it.

Order of preference (``backend = "auto"``):

1. ``ai_edge_litert`` — LiteRT, the maintained successor, works with NumPy 2;
2. ``tflite_runtime`` — for older Raspberry Pi images (needs NumPy < 2);
3. ``tensorflow.lite`` — last resort where full TensorFlow happens to be installed
   (never a dependency of the agent; TensorFlow is build-time only).

All three expose the same ``Interpreter(model_path=..., num_threads=...)`` API. Imports are
lazy: nothing is imported until a backend is asked for, so ``edge-agent --help`` stays fast.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

BACKENDS: dict[str, str] = {
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow.lite",
}


class NoInterpreterBackend(ImportError):
    """No TFLite interpreter package could be imported."""


@dataclass(frozen=True, slots=True)
class Backend:
    name: str  # key of BACKENDS
    version: str
    interpreter_class: Any

    def describe(self) -> str:
        return f"{self.name} {self.version}"


def _try(name: str) -> Backend:
    module = importlib.import_module(BACKENDS[name])
    interpreter_class = getattr(module, "Interpreter")
    top = importlib.import_module(name)
    version = getattr(top, "__version__", None)
    if version is None:
        from importlib.metadata import PackageNotFoundError, version as dist_version

        dist = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}.get(name, name)
        try:
            version = dist_version(dist)
        except PackageNotFoundError:
            version = "unknown"
    return Backend(name, str(version), interpreter_class)


def load_backend(preference: str = "auto") -> Backend:
    """The interpreter backend to use: ``preference`` if given, else the first that imports."""
    names = list(BACKENDS) if preference == "auto" else [preference]
    if preference != "auto" and preference not in BACKENDS:
        raise ValueError(f"unknown interpreter backend {preference!r}; known: auto, {', '.join(BACKENDS)}")
    errors = []
    for name in names:
        try:
            return _try(name)
        except Exception as exc:  # ImportError, or a NumPy ABI error raised at import
            errors.append(f"{name}: {exc.__class__.__name__}: {exc}")
    raise NoInterpreterBackend(
        "no TFLite interpreter could be imported (" + "; ".join(errors) + "); "
        "install ai-edge-litert (pip install ai-edge-litert), or tflite-runtime with numpy<2 on old Pi images"
    )
