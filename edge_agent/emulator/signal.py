"""A physically plausible drivetrain vibration signal, generated block by block.

Why: the demo, the tests and model building need a sensor that behaves like a turbine's
without hardware, at any speed, with faults that develop. Everything is vectorised per
block (no per-sample Python) and deterministic for a given seed.

Model (McFadden & Smith, "Model for the vibration produced by a single point defect in a
rolling element bearing", J. Sound Vib. 96(1), 1984; Randall & Antoni, MSSP 25(2), 2011):

* shaft speed varies slowly like a wind turbine's (a few % over tens of seconds);
  the shaft phase is the integral of speed, so every component follows speed as an order;
* shaft orders 1x, 2x, 3x and a gear mesh at ``mesh_order`` with 1x sidebands;
* a localised bearing defect is a train of impulses at the defect order (BPFI, BPFO or
  2 x BSF of the bearing geometry), with ~1% random slip, each ringing a structural
  resonance (an exponentially decaying sine). Inner-race impulses are amplitude-modulated
  at shaft rate (the defect passes through the load zone), ball impulses at cage rate,
  outer-race impulses are steady (the defect sits in the load zone);
* broadband Gaussian noise.

Fault severity ramps from 0 at ``onset_s`` to 1 after ``ramp_s``. The sensor scenarios
``flatline`` (output stuck after onset) and ``clipping`` (saturates at full scale) model
bad sensors; ``disconnect`` is the source's business (see sources/emulator.py) and
produces a healthy signal here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_agent.bearing import SKF_6205, BearingGeometry

SCENARIOS = ("healthy", "inner_race", "outer_race", "ball", "flatline", "clipping", "disconnect")
FAULTS = ("inner_race", "outer_race", "ball")


@dataclass(frozen=True, slots=True)
class SignalSpec:
    fs: float = 25600.0
    rpm: float = 1500.0  # mean shaft speed
    scenario: str = "healthy"
    seed: int = 0
    bearing: BearingGeometry = SKF_6205
    onset_s: float = 5.0  # fault or sensor failure starts
    ramp_s: float = 20.0  # fault severity reaches 1 this long after onset
    noise_g: float = 0.05
    impulse_g: float = 0.8  # defect impulse amplitude at full severity
    resonance_hz: float = 3200.0
    resonance_decay_s: float = 0.0004
    mesh_order: float = 27.0
    full_scale_g: float = 1.0  # clipping scenario's sensor range

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; known: {', '.join(SCENARIOS)}")
        if self.resonance_hz >= self.fs / 2:
            object.__setattr__(self, "resonance_hz", 0.3 * self.fs)


class SignalGenerator:
    """Yields consecutive blocks of one accelerometer channel (in g) and the shaft speed."""

    def __init__(self, spec: SignalSpec, channel_index: int = 0) -> None:
        self.spec = spec
        self._rng = np.random.default_rng([spec.seed, channel_index])
        self._n = 0  # samples generated so far
        self._shaft_phase = 0.0  # cycles
        orders = spec.bearing.orders()
        self._defect_order = {
            "inner_race": orders.bpfi,
            "outer_race": orders.bpfo,
            "ball": 2.0 * orders.bsf,
        }.get(spec.scenario, 0.0)
        self._ftf = orders.ftf
        self._defect_phase = self._rng.uniform(0, 1)
        klen = int(8 * spec.resonance_decay_s * spec.fs) + 1
        k = np.arange(klen) / spec.fs
        self._kernel = np.exp(-k / spec.resonance_decay_s) * np.sin(2 * np.pi * spec.resonance_hz * k)
        self._tail = np.zeros(klen - 1)
        self._stuck: float | None = None

    @property
    def t(self) -> float:
        """Seconds generated so far."""
        return self._n / self.spec.fs

    def rpm_at(self, t: np.ndarray | float) -> np.ndarray | float:
        """Shaft speed: slow wind-driven variation around the mean, a few percent."""
        base = self.spec.rpm
        return base * (1.0 + 0.04 * np.sin(2 * np.pi * t / 47.0) + 0.015 * np.sin(2 * np.pi * t / 11.0 + 1.0))

    def severity_at(self, t: float) -> float:
        s = self.spec
        if s.scenario not in FAULTS:
            return 0.0
        return float(np.clip((t - s.onset_s) / s.ramp_s, 0.0, 1.0))

    def next_block(self, n: int) -> tuple[np.ndarray, float]:
        """The next ``n`` samples (float32, g) and the block's mean shaft speed (rpm)."""
        s = self.spec
        t = (self._n + np.arange(n)) / s.fs
        rpm = self.rpm_at(t)
        shaft_hz = rpm / 60.0
        phase = self._shaft_phase + np.cumsum(shaft_hz) / s.fs  # cycles
        two_pi = 2 * np.pi
        x = (
            0.05 * np.sin(two_pi * phase)
            + 0.02 * np.sin(two_pi * 2 * phase + 0.3)
            + 0.01 * np.sin(two_pi * 3 * phase + 1.1)
            + 0.04 * (1 + 0.3 * np.sin(two_pi * phase)) * np.sin(two_pi * s.mesh_order * phase)
            + self._rng.normal(0.0, s.noise_g, n)
        )
        sev = self.severity_at(float(t[-1]))
        if self._defect_order > 0 and sev > 0:
            x += self._impulses(phase, sev)
        self._shaft_phase = float(phase[-1])
        self._n += n
        if s.scenario == "flatline" and t[-1] >= s.onset_s:
            if self._stuck is None:
                self._stuck = float(x[0])
            start = max(0, int(np.searchsorted(t, s.onset_s)))
            x[start:] = self._stuck
        elif s.scenario == "clipping" and t[-1] >= s.onset_s:
            start = max(0, int(np.searchsorted(t, s.onset_s)))
            x[start:] = np.clip(x[start:] * 8.0, -s.full_scale_g, s.full_scale_g)
        return x.astype(np.float32), float(np.mean(rpm))

    def _impulses(self, phase: np.ndarray, severity: float) -> np.ndarray:
        s = self.spec
        n = len(phase)
        dphase = np.diff(phase, prepend=self._shaft_phase)
        slip = 1.0 + 0.01 * self._rng.standard_normal()  # ~1% slip, drawn per block
        defect = self._defect_phase + np.cumsum(dphase) * self._defect_order * slip
        hits = np.flatnonzero(np.diff(np.floor(defect), prepend=np.floor(self._defect_phase)) > 0)
        self._defect_phase = float(defect[-1])
        amp = np.full(len(hits), s.impulse_g * severity)
        if s.scenario == "inner_race":
            amp *= 0.6 + 0.4 * np.cos(2 * np.pi * phase[hits])
        elif s.scenario == "ball":
            amp *= 0.6 + 0.4 * np.cos(2 * np.pi * self._ftf * phase[hits])
        amp *= 1.0 + 0.1 * self._rng.standard_normal(len(hits))
        train = np.zeros(n + len(self._kernel) - 1)
        train[hits] = amp
        rung = np.convolve(train[:n], self._kernel)
        rung[: len(self._tail)] += self._tail
        self._tail = rung[n:].copy()
        return rung[:n]
