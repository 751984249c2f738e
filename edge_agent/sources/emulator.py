"""The in-process sensor emulator source: SignalGenerator blocks, paced in real time.

Used by ``edge-agent demo`` and by tests: the signal without the wire. The MCU emulator
behind a pty that speaks the wire protocol is ``edge-agent emulate`` (emulator/mcu.py).
``speedup`` runs faster than real time.
The ``disconnect`` scenario drops the sensor for 3 s in every 10 s after onset: those
samples are never emitted, so downstream sees a sequence gap, as with a real unplugged MCU.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from edge_agent.emulator.signal import SignalGenerator, SignalSpec
from edge_agent.sources.base import Emit
from edge_agent.window import SampleBlock

BLOCK = 1024


class EmulatorSource:
    def __init__(self, cfg: Any) -> None:
        self.name = cfg.name
        self.speedup = cfg.speedup
        self.spec = SignalSpec(fs=cfg.fs, rpm=cfg.rpm, scenario=cfg.scenario, seed=cfg.seed)
        self.generators = [SignalGenerator(self.spec, i) for i in range(cfg.channels)]
        self.channel_names = [f"{self.name}.accel{i}" for i in range(cfg.channels)]
        self._blocks = 0
        self._skipped = 0

    def counters(self) -> dict[str, int]:
        return {"blocks": self._blocks, "blocks_not_sent": self._skipped}

    def _connected(self, t: float) -> bool:
        if self.spec.scenario != "disconnect" or t < self.spec.onset_s:
            return True
        return (t - self.spec.onset_s) % 10.0 >= 3.0

    def run(self, emit: Emit, stop: threading.Event) -> None:
        fs = self.spec.fs
        start = time.monotonic()
        t0_us = int(time.time() * 1e6)
        seq = 0
        while not stop.is_set():
            t = seq / fs
            for name, gen in zip(self.channel_names, self.generators):
                x, rpm = gen.next_block(BLOCK)
                if self._connected(t):
                    emit(SampleBlock(name, x, fs, t0_us + round(t * 1e6), seq, rpm))
                    self._blocks += 1
                else:
                    self._skipped += 1
            seq += BLOCK
            ahead = seq / fs / self.speedup - (time.monotonic() - start)
            if ahead > 0:
                stop.wait(ahead)
