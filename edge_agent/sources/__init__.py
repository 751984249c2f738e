"""Sources of samples. Each one runs on its own thread and emits SampleBlocks.

The interface (see base.py) is ``run(emit, stop)`` and ``counters()``; decoding of wire
frames happens inside the source, on its thread (protocol/ and assembler.py), so the
processing thread only sees samples.
"""
from __future__ import annotations

import importlib
from typing import Any

from edge_agent.sources.base import Source

# config [[source]] type -> (module, class)
SOURCE_CLASSES = {
    "emulator": ("edge_agent.sources.emulator", "EmulatorSource"),
    "serial": ("edge_agent.sources.serial_port", "SerialSource"),
    "mqtt": ("edge_agent.sources.mqtt_sensors", "MqttSensorSource"),
    "replay": ("edge_agent.sources.replay", "ReplaySource"),
}


def make_source(cfg: Any) -> Source:
    """The source for one ``[[source]]`` config entry."""
    module_name, class_name = SOURCE_CLASSES[cfg.type]
    return getattr(importlib.import_module(module_name), class_name)(cfg)


__all__ = ["Source", "make_source", "SOURCE_CLASSES"]
