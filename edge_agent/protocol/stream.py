"""Turn a byte stream from a serial line into frames, resynchronising at every 0x00.

Bytes arrive in arbitrary pieces; ``feed`` keeps the unfinished tail and returns the frames
completed. A chunk between delimiters that is not a good frame is counted by reason and
skipped: the next 0x00 is a fresh start, so one bad frame costs exactly that frame. A run of
bytes longer than the largest legal frame without a delimiter (noise, a babbling MCU) is
counted once as ``oversize`` and dropped up to the next 0x00 rather than buffered: the
decoder never holds more than ``max_encoded`` bytes between calls.

The result does not depend on how the stream is cut into pieces: the same bytes fed whole or
one at a time give the same frames and the same counters.
"""
from __future__ import annotations

import logging
from collections import Counter

from edge_agent.protocol.frame import MAX_ENCODED, Frame, FrameError, decode_wire_chunk

log = logging.getLogger(__name__)


class StreamDecoder:
    def __init__(self, max_encoded: int = MAX_ENCODED) -> None:
        self.max_encoded = max_encoded
        self._tail = bytearray()  # the unfinished frame (never contains 0x00)
        self._skipping = False  # inside an oversize run: drop bytes until the next 0x00
        self.frames_ok = 0
        self.rejected: Counter[str] = Counter()
        self.bytes_in = 0
        self.last_error = ""

    @property
    def pending_bytes(self) -> int:
        """Bytes held for the unfinished frame (at most ``max_encoded`` between calls)."""
        return len(self._tail)

    def feed(self, data: bytes) -> list[Frame]:
        self.bytes_in += len(data)
        frames: list[Frame] = []
        end = data.find(b"\x00")
        if end < 0:  # no delimiter: the unfinished frame goes on
            self._extend(data)
            return frames
        # The first chunk finishes whatever was pending before this call.
        if self._skipping:
            self._skipping = False  # the end of an oversize run: already counted
        elif self._tail:
            self._tail += data[:end]
            self._chunk(bytes(self._tail), frames)
            self._tail.clear()
        elif end:
            self._chunk(data[:end], frames)
        start = end + 1
        while (end := data.find(b"\x00", start)) >= 0:
            if end > start:  # an empty chunk is an idle line or a sync preamble
                self._chunk(data[start:end], frames)
            start = end + 1
        self._extend(data[start:])
        self.frames_ok += len(frames)
        return frames

    def _chunk(self, chunk: bytes, frames: list[Frame]) -> None:
        if len(chunk) > self.max_encoded:  # the same verdict as when it arrives in pieces
            self._count("oversize", f"oversize: {len(chunk)} bytes without a frame delimiter")
            return
        try:
            frames.append(decode_wire_chunk(chunk))
        except FrameError as exc:
            self._count(exc.reason, str(exc))

    def _extend(self, data: bytes) -> None:
        if self._skipping or not data:
            return
        self._tail += data
        if len(self._tail) > self.max_encoded:
            self._count("oversize", f"oversize: {len(self._tail)} bytes without a frame delimiter")
            self._tail.clear()
            self._skipping = True

    def _count(self, reason: str, message: str) -> None:
        self.rejected[reason] += 1
        self.last_error = message

    def reset(self) -> None:
        """Forget a partial frame (after a reconnect: the rest of it is never coming)."""
        if self._tail:
            self.rejected["short"] += 1
        self._tail.clear()
        self._skipping = False

    def counters(self) -> dict[str, int]:
        return {"frames_ok": self.frames_ok, "bytes_in": self.bytes_in, **{f"rejected_{k}": v for k, v in dict(self.rejected).items()}}
