"""The plain types that cross stage boundaries.

Everything between a source and the publisher is one of these, so each stage can be
read, tested and replaced on its own (see docs/ARCHITECTURE.md):

* :class:`SampleBlock` — a run of consecutive samples of one channel, as decoded from a
  sensor frame (source/decoder -> windower).
* :class:`Window` — a fixed-length, hop-spaced slice of one channel, with the rate, shaft
  speed, timestamps and sample sequence range it covers (windower -> features -> model).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class SampleBlock:
    """Consecutive samples of one channel.

    ``seq`` is the sequence number of the first sample in the channel's own sample count,
    so the windower can tell a gap (``seq`` jumps) from a continuation.
    """

    channel: str
    samples: np.ndarray  # 1-D float32, physical units (g for accelerometers)
    fs: float  # samples per second
    t0_us: int  # timestamp of the first sample, microseconds (source clock)
    seq: int  # index of the first sample in the channel's sample count
    rpm: float | None = None  # shaft speed while recorded, when the source knows it
    full_scale: float | None = None  # largest magnitude the sensor can report (clipping checks)

    @property
    def seq_end(self) -> int:
        """Sequence number one past the last sample."""
        return self.seq + len(self.samples)


@dataclass(frozen=True, slots=True)
class Window:
    """One analysis window of one channel: the unit features and models work on."""

    channel: str
    samples: np.ndarray  # 1-D float32, C-contiguous, length = window length (a power of two)
    fs: float
    rpm: float  # shaft speed during the window (source, speed channel or config)
    t_start_us: int  # timestamp of samples[0]
    seq_first: int  # sequence number of samples[0]
    seq_last: int  # sequence number of samples[-1] (inclusive)
    flags: frozenset[str] = field(default_factory=frozenset)  # data-quality flags

    @property
    def t_end_us(self) -> int:
        """Timestamp one sample period after the last sample."""
        return self.t_start_us + round(len(self.samples) * 1e6 / self.fs)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.fs
