"""Turn a byte stream from a serial line into frames, resynchronising at every 0x00.

Bytes arrive in arbitrary pieces; ``feed`` keeps the unfinished tail and returns the frames
completed. A chunk between delimiters that is not a good frame is counted by reason and
skipped: the next 0x00 is a fresh start, so one bad frame costs exactly that frame. A run of
bytes longer than the largest legal frame without a delimiter (noise, a babbling MCU) is
dropped and counted as ``oversize`` rather than buffered without bound.
"""
from __future__ import annotations

import logging
from collections import Counter

from edge_agent.protocol.frame import MAX_ENCODED, Frame, FrameError, decode_wire_chunk

log = logging.getLogger(__name__)


class StreamDecoder:
    def __init__(self, max_encoded: int = MAX_ENCODED) -> None:
        self.max_encoded = max_encoded
        self._tail = b""
        self._skipping = False  # inside an oversize run: drop bytes until the next 0x00
        self.frames_ok = 0
        self.rejected: Counter[str] = Counter()
        self.bytes_in = 0
        self.last_error = ""

    def feed(self, data: bytes) -> list[Frame]:
        self.bytes_in += len(data)
        chunks = (self._tail + data).split(b"\x00") if self._tail else data.split(b"\x00")
        self._tail = chunks.pop()
        frames: list[Frame] = []
        for chunk in chunks:
            if self._skipping:  # the end of an oversize run: already counted
                self._skipping = False
                continue
            if not chunk:
                continue  # consecutive delimiters: idle line or a sync preamble
            try:
                frames.append(decode_wire_chunk(chunk))
            except FrameError as exc:
                self.rejected[exc.reason] += 1
                self.last_error = str(exc)
        if len(self._tail) > self.max_encoded:
            self.rejected["oversize"] += 1
            self.last_error = f"oversize: {len(self._tail)} bytes without a frame delimiter"
            self._tail = b""
            self._skipping = True
        self.frames_ok += len(frames)
        return frames

    def reset(self) -> None:
        """Forget a partial frame (after a reconnect: the rest of it is never coming)."""
        if self._tail:
            self.rejected["short"] += 1
        self._tail = b""
        self._skipping = False

    def counters(self) -> dict[str, int]:
        return {"frames_ok": self.frames_ok, "bytes_in": self.bytes_in, **{f"rejected_{k}": v for k, v in self.rejected.items()}}
