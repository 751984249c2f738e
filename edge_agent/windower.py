"""Cut each channel's sample stream into fixed-length windows, ``hop`` samples apart.

One buffer per channel holds the samples short of its next window. A block whose first
sequence number does not follow the previous one, or whose sample rate differs, is a gap:
the partial window is discarded (counted in ``gaps``/``discarded_samples``) and windowing
restarts, so a window never spans a discontinuity. Timestamps of a window are derived from the first
block after the last restart and the sample count, not from per-block clocks, so jitter in
frame timestamps does not jitter the window grid.

With ``reference_fs`` set, the length and hop are those at that rate and every channel's
window keeps (about) the same *duration* at its own rate: at ``fs`` they are scaled by
``2^round(log2(fs / reference_fs))`` (the length stays a power of two, 256 .. 65536). A
4096-sample window at 12 kHz is then 16384 samples at 48 kHz and 8192 at 25.6 kHz, so the
envelope spectrum's resolution (fs / N, about 3 Hz) and the features built on it mean the
same thing at every rate; a fixed 4096 at 48 kHz would be 85 ms, 2.5 turns of a 1800 rpm
shaft, too short to resolve shaft sidebands.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from edge_agent.window import SampleBlock, Window


@dataclass(slots=True)
class _ChannelBuffer:
    buf: np.ndarray
    n: int = 0  # samples held
    seq_first: int = 0  # sequence number of buf[0]
    anchor_seq: int = 0  # sequence number at the last restart
    anchor_t0_us: int = 0  # its timestamp
    fs: float = 0.0
    rpm: float | None = None
    length: int = 0  # window length and hop at this channel's rate
    hop: int = 0
    block_n: int = 0  # samples in the last block pushed (how the source cuts the stream)


MIN_LENGTH, MAX_LENGTH = 256, 65536


class Windower:
    def __init__(self, length: int, hop: int, default_rpm: float, reference_fs: float | None = None) -> None:
        if length < 1 or length & (length - 1):
            raise ValueError(f"window length must be a power of two, got {length}")
        if not 1 <= hop <= length:
            raise ValueError(f"hop must be from 1 to the window length {length}, got {hop}")
        if reference_fs is not None and not (np.isfinite(reference_fs) and reference_fs > 0):
            raise ValueError(f"reference sample rate must be a positive number, got {reference_fs!r}")
        self.length = length
        self.hop = hop
        self.reference_fs = reference_fs
        self.default_rpm = default_rpm
        self._channels: dict[str, _ChannelBuffer] = {}
        self.gaps: Counter[str] = Counter()
        self.discarded_samples: Counter[str] = Counter()
        self.windows: Counter[str] = Counter()

    def length_at(self, fs: float) -> tuple[int, int]:
        """(window length, hop) for a channel at rate ``fs``."""
        if self.reference_fs is None:
            return self.length, self.hop
        k = int(round(np.log2(fs / self.reference_fs)))
        k = max(k, int(np.log2(MIN_LENGTH / self.length)))
        k = min(k, int(np.log2(MAX_LENGTH / self.length)))
        scale = 2.0 ** k
        return int(self.length * scale), max(1, int(round(self.hop * scale)))

    def push(self, block: SampleBlock) -> list[Window]:
        """Add a block; return the windows it completed (possibly none).

        Raises ValueError for a block no window can be made of (rate not a positive
        finite number, samples not one-dimensional); the windower's state is unchanged.
        """
        if not (np.isfinite(block.fs) and block.fs > 0):
            raise ValueError(f"block for channel {block.channel!r} has sample rate {block.fs!r}")
        if np.ndim(block.samples) != 1:
            raise ValueError(f"block for channel {block.channel!r} is not one-dimensional")
        ch = self._channels.get(block.channel)
        if ch is None:
            ch = _ChannelBuffer(buf=np.empty(0, dtype=np.float32))
            self._channels[block.channel] = ch
            self._restart(ch, block)
        elif block.seq != ch.seq_first + ch.n or block.fs != ch.fs:
            self.gaps[block.channel] += 1
            self.discarded_samples[block.channel] += ch.n
            self._restart(ch, block)
        if block.rpm is not None:
            ch.rpm = block.rpm

        out: list[Window] = []
        samples = np.asarray(block.samples, dtype=np.float32).ravel()
        if len(samples):
            ch.block_n = len(samples)
        if ch.n + len(samples) < ch.length:  # no window completes (a live source's usual block): hold them
            ch.buf[ch.n : ch.n + len(samples)] = samples
            ch.n += len(samples)
            return out
        # the held samples and the block as one stretch; its windows are cut from it (a copy
        # each) and what is left after the last one is held (less than a window): each sample
        # is copied about twice, where filling and shifting the ring per window copied it ~4 times
        data = np.concatenate((ch.buf[: ch.n], samples)) if ch.n else samples
        start = 0
        while len(data) - start >= ch.length:
            out.append(self._emit(block.channel, ch, data[start : start + ch.length]))
            start += ch.hop
            ch.seq_first += ch.hop
        ch.n = len(data) - start
        ch.buf[: ch.n] = data[start:]
        return out

    def next_due(self, channels: Iterable[str]) -> tuple[float, int] | None:
        """When the next window can complete, for a consumer that would rather sleep than
        wake for every block: ``(seconds, blocks)`` over ``channels`` (those still sending),
        or None when none of them has had a block.

        ``seconds``: the signal still missing before the first of them completes a window
        (min over them of (length - held) / fs), so a live source delivers it about that long
        after the last block pushed. ``blocks``: how many blocks they bring in that time, cut
        as their last blocks were; the channel that completes counts its completing block in
        full (ceil), the others only whole blocks (floor), so the count errs low and a
        consumer that waits for it wakes early, not late. A channel left out (it stopped
        sending) cannot hold the estimate short: its window will not complete.
        """
        live = [(name, ch) for name in dict.fromkeys(channels)
                if (ch := self._channels.get(name)) is not None and ch.block_n]
        if not live:
            return None
        first, seconds = min(((name, (ch.length - ch.n) / ch.fs) for name, ch in live), key=lambda x: x[1])
        blocks = 0
        for name, ch in live:
            due = seconds * ch.fs / ch.block_n
            blocks += math.ceil(due - 1e-9) if name == first else math.floor(due + 1e-9)
        return seconds, max(1, blocks)

    def _restart(self, ch: _ChannelBuffer, block: SampleBlock) -> None:
        ch.n = 0
        ch.seq_first = block.seq
        ch.anchor_seq = block.seq
        ch.anchor_t0_us = block.t0_us
        ch.fs = block.fs
        ch.length, ch.hop = self.length_at(block.fs)
        if len(ch.buf) != ch.length:  # it holds less than a window
            ch.buf = np.empty(ch.length, dtype=np.float32)

    def _emit(self, channel: str, ch: _ChannelBuffer, samples: np.ndarray) -> Window:
        self.windows[channel] += 1
        t_start = ch.anchor_t0_us + round((ch.seq_first - ch.anchor_seq) * 1e6 / ch.fs)
        return Window(
            channel=channel,
            samples=samples.copy(),
            fs=ch.fs,
            rpm=ch.rpm if ch.rpm is not None else self.default_rpm,
            t_start_us=t_start,
            seq_first=ch.seq_first,
            seq_last=ch.seq_first + ch.length - 1,
        )
