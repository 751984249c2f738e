"""The replay source: a recording (.npz, .csv, .wav; see recordings.py) as SampleBlocks.

The file is loaded and checked when the source is built, so a bad path or file stops the
agent at start-up with one line (RecordingError). ``run`` then emits every channel in
blocks of BLOCK samples, in order, as fast as processing takes them, and returns at the
end of the recording (or starts again with ``loop = true``).

No drops: a file can wait, unlike a serial port, so the replay source asks the agent for
a *waiting* emit (``wants_waiting_emit``): the agent hands it a function that waits for
room in the samples queue instead of refusing (``BoundedQueue.put_until``). The
source treats ``emit(...) is False`` as "stopped" and returns. Any other emit (a list's
``append`` in tests) is taken as accepted.

Timestamps are recording time: ``t0_us`` of sample ``seq`` is ``seq / fs`` seconds.
With ``loop = true`` the sample sequence skips one number at each wrap, so the windower
sees (and counts, in ``gaps``) a discontinuity there and no window joins the end of the
recording to its start; the timestamps go on from the skipped number.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from edge_agent.recordings import Recording, load_recording
from edge_agent.sources.base import Emit
from edge_agent.window import SampleBlock

log = logging.getLogger(__name__)
BLOCK = 4096  # samples per channel per emitted block


class ReplaySource:
    wants_waiting_emit = True  # see the module docstring: replay never drops

    def __init__(self, cfg: Any, block: int = BLOCK) -> None:
        self.name = cfg.name
        self.loop = bool(cfg.loop)
        self.block = block
        self.recording: Recording = load_recording(cfg.path, fs=cfg.fs or None, rpm=cfg.rpm or None)
        self.channel_names = {ch: f"{self.name}.{ch}" for ch in self.recording.channels}
        self._blocks = 0
        self._samples = 0
        self._loops = 0
        self._finished = False

    def counters(self) -> dict[str, int]:
        return {"blocks": self._blocks, "samples": self._samples, "loops": self._loops, "finished": int(self._finished)}

    def run(self, emit: Emit, stop: threading.Event) -> None:
        rec = self.recording
        log.info("replay %s: %s%s", self.name, rec.source_desc, ", looping" if self.loop else "")
        n = rec.n_samples
        seq0 = 0  # sample sequence number of the recording's first sample in this pass
        while not stop.is_set():
            for start in range(0, n, self.block):
                end = min(n, start + self.block)
                seq = seq0 + start
                t0_us = round(seq * 1e6 / rec.fs)
                for ch, x in rec.channels.items():
                    if stop.is_set():
                        return
                    block = SampleBlock(self.channel_names[ch], x[start:end], rec.fs, t0_us, seq, rec.rpm, rec.full_scale)
                    if emit(block) is False:  # type: ignore[func-returns-value]
                        return  # stopped while waiting for room
                    self._blocks += 1
                    self._samples += end - start
            if not self.loop:
                self._finished = True
                log.info("replay %s: end of the recording, %d samples per channel emitted", self.name, n)
                return
            self._loops += 1
            seq0 += n + 1  # skip one number: the wrap is a discontinuity (see the docstring)
