"""Sources of samples. Each one runs on its own thread and emits SampleBlocks.

The interface (see base.py) is one method, ``run(emit, stop)``; decoding of wire frames
happens inside the source, on its thread, so the processing thread only sees samples.
"""
from __future__ import annotations

from typing import Any

from edge_agent.sources.base import Source, SourceUnavailable


def make_source(cfg: Any) -> Source:
    """The source for one ``[[source]]`` config entry."""
    if cfg.type == "emulator":
        from edge_agent.sources.emulator import EmulatorSource

        return EmulatorSource(cfg)
    raise SourceUnavailable(f"source type {cfg.type!r} ({cfg.name}) lands with issue #3 (sensor ingestion)")


__all__ = ["Source", "SourceUnavailable", "make_source"]
