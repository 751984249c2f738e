"""ISO 10816-21 evaluation zones for wind-turbine components: optional alert rules (issue #7).

Why: the learned models say "unlike this machine's healthy self"; operators, insurers and
service contracts also ask "how bad by the book?". ISO 10816-21:2015 (horizontal-axis wind
turbines with gearbox, > 200 kW) answers with broadband rms values per component and
evaluation zones. Its informative Annex A gives the zone boundaries for onshore turbines up
to 3 MW (the values of VDI 3834 Part 1:2009). This module holds that table as data,
measures the band-limited rms values from the windows the daemon already has, and raises one
"iso_zone" alert per channel with the shared hysteresis (alerts.Hysteresis). Background and
limits: docs/ISO10816.md.

Zone boundaries (rms; zone B below B/C, C from B/C, D from C/D). The standard gives no A/B
boundary for these machines, so zone A is not separated from B; zone C = warning ("not
suitable for long-term continuous operation"), zone D = alarm ("potentially damaging")::

    component       quantity      band            B/C        C/D
    nacelle_tower   acceleration  0.1-10 Hz       0.3 m/s^2  0.5 m/s^2
                    velocity      0.1-10 Hz       60 mm/s    100 mm/s
    main_bearing    acceleration  0.1-10 Hz       0.3 m/s^2  0.5 m/s^2
    (rolling brg.)  velocity      10-1000 Hz      2.0 mm/s   3.2 mm/s
    gearbox         acceleration  0.1-10 Hz       0.3 m/s^2  0.5 m/s^2
                    acceleration  10-2000 Hz      7.5 m/s^2  12 m/s^2
                    velocity      10-1000 Hz      3.5 mm/s   5.6 mm/s
    generator       acceleration  10-5000 Hz      10 m/s^2   16 m/s^2
    (rolling brg.)  velocity      10-1000 Hz      6.0 mm/s   10 mm/s

Verification (ISO 10816-21 and VDI 3834-1 are paywalled; neither text was read, see
docs/ISO10816.md): from publishers' abstracts (ISO, DIN): the title, first edition 2015, the
scope (horizontal axis, gearbox, > 200 kW), and that the boundaries are informative, for
onshore turbines, from about 1000 turbines up to 3 MW, offshore ones not available. The
eleven values with their bands and the zone rule (a value on a boundary is in the worse zone,
no A/B boundary) agree exactly with an independent public implementation of VDI 3834-1 (a
MATLAB evaluation function by P. Riabtsev, 2017). Not verified: the printed ISO table itself
(that it equals VDI 3834-1 comes from the issue and the matching scope), its notes on
measurement direction and position, and whether VDI 3834-1:2015 or ISO 20816-21, which
replaces ISO 10816-21, changed any value.

Band rms, in the frequency domain (one rfft per batch of equal windows). A window of N
samples x_n in g at rate fs: a_n = g0 x_n (g0 = 9.80665 m/s^2), periodic Hann window
w_n = 1/2 - 1/2 cos(2 pi n / N), bins f_k = k df, df = fs / N:

    X_k   = sum_n w_n a_n exp(-2 pi i k n / N)                       k = 0 .. N/2
    P_k   = c_k |X_k|^2 / (N sum_n w_n^2),   c_0 = c_{N/2} = 1, else c_k = 2
    u_k   = q(f_k) * (share of [f_k - df/2, f_k + df/2] inside [f_lo, f_hi])
            q = 1 for acceleration (m/s^2)^2, q = 10^6 / (2 pi f)^2 for velocity (mm/s)^2
    W     = H^-1 u, then W_0 = W_1 = 0;   (H W)_k = W_{k-1}/6 + 2 W_k/3 + W_{k+1}/6
    rms   = sqrt( max(0, sum_k W_k P_k) )

Parseval: sum_k P_k = sum_n w_n^2 a_n^2 / sum_n w_n^2 (the window's power correction; Heinzel,
Ruediger, Schilling, "Spectrum and spectral density estimation by the DFT", MPI
Gravitationsphysik 2002, sect. 9), so a sine of amplitude a has sum_k P_k = a^2 / 2.
Velocity: a = dv/dt, so V(f) = A(f) / (2 pi i f) (the Fourier transform's derivative rule),
hence the factor 1 / (2 pi f_k)^2 on each bin's power. The Hann window puts a sine on bin k
into bins k-1, k, k+1 in the power ratios 1/6, 2/3, 1/6, so it reads (a^2 / 2) (H W)_k.
Weighting the bins with u directly would read (H u)_k, about (1 + 1/k^2) u_k for velocity
(+3 % rms at 4 bins); with W = H^-1 u (circular deconvolution by FFT over the two-sided
spectrum: H's DFT is 2/3 + cos(2 pi m / N) / 3 >= 1/3, well conditioned) it reads u_k
exactly: a sine on a bin gives a / sqrt(2) m/s^2 and 1000 a / (2 pi f) / sqrt(2) mm/s to
rounding, at a band edge too (where u_k is the in-band share). Between bins the Hann spread
reaches two bins each side: measured within 0.2 % of the analytic value 5 or more bins inside
the band, 0.5 % at 4 bins, 1.3 % at 3, up to 8 % within 1 bin of an edge (an edge is resolved
to about a bin), and within 2 bins of Nyquist the positive- and negative-frequency halves of
a real sine overlap, so the reading there depends on its phase. A stationary random signal
reads sum_k W_k E[P_k] on average, the same response per frequency: white noise reads within
0.5 % of its analytic band value (the edges resolved to a bin).

Why Hann and not no window: without one, a sine between bins leaks power as 1/distance^2
into the low bins, where 1/f^2 multiplies it (+4 to +5 % for a half-bin sine in 10-1000 Hz
at 12 kHz, 4096 samples: the velocity feature in features.py is computed that way). Hann
leakage falls as 1/distance^6, and a constant offset (sensor bias, gravity) lands only in
bins 0 and 1, which get weight 0: a band is resolvable when f_lo >= 2 df, i.e. the window
holds at least two periods of f_lo (0.1-10 Hz needs 20 s windows, so the nacelle/tower and
low-frequency criteria are skipped at the usual 0.34 s). f_hi above Nyquist is clipped to
fs / 2 and reported; the quantity is still judged (a clipped band can only read low).
"""
from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import numpy as np

from edge_agent.alerts import SCHEMA, Hysteresis
from edge_agent.window import Window

log = logging.getLogger(__name__)

G0 = 9.80665  # m/s^2 per g
COMPONENTS = ("nacelle_tower", "main_bearing", "gearbox", "generator")
ALERT_TYPE = "iso_zone"
STANDARD = "ISO 10816-21"
MIN_BIN = 2  # lowest usable bin: bins 0 and 1 carry a constant offset through the Hann window
ZONE_RANK = {"B": 0, "C": 1, "D": 2}
SEVERITY = {"C": "warning", "D": "alarm"}
_NAMES = {"nacelle_tower": "nacelle/tower", "main_bearing": "main bearing", "gearbox": "gearbox",
          "generator": "generator"}
_ADVICE = {"C": "not fit for long-term operation, find the cause", "D": "potentially damaging, inspect"}


@dataclass(frozen=True, slots=True)
class Criterion:
    """One row of the zone table: an rms quantity over a band and its B/C and C/D boundaries."""

    component: str
    quantity: str  # "acceleration" (m/s^2) or "velocity" (mm/s)
    band_hz: tuple[float, float]
    boundary_bc: float
    boundary_cd: float

    @property
    def unit(self) -> str:
        return "mm/s" if self.quantity == "velocity" else "m/s^2"


def _rows(component: str, *rows: tuple[str, float, float, float, float]) -> tuple[Criterion, ...]:
    return tuple(Criterion(component, q, (lo, hi), bc, cd) for q, lo, hi, bc, cd in rows)


# ISO 10816-21:2015 Annex A (informative; onshore, <= 3 MW), from VDI 3834-1:2009. See the
# module docstring for what was verified.
ZONE_TABLE: dict[str, tuple[Criterion, ...]] = {
    "nacelle_tower": _rows("nacelle_tower", ("acceleration", 0.1, 10.0, 0.3, 0.5),
                           ("velocity", 0.1, 10.0, 60.0, 100.0)),
    "main_bearing": _rows("main_bearing", ("acceleration", 0.1, 10.0, 0.3, 0.5),
                          ("velocity", 10.0, 1000.0, 2.0, 3.2)),
    "gearbox": _rows("gearbox", ("acceleration", 0.1, 10.0, 0.3, 0.5),
                     ("acceleration", 10.0, 2000.0, 7.5, 12.0),
                     ("velocity", 10.0, 1000.0, 3.5, 5.6)),
    "generator": _rows("generator", ("acceleration", 10.0, 5000.0, 10.0, 16.0),
                       ("velocity", 10.0, 1000.0, 6.0, 10.0)),
}


def zone_of(value: float, boundary_bc: float, boundary_cd: float) -> str:
    """"B" below B/C (A is not separated), "C" from B/C, "D" from C/D: a value on a boundary
    belongs to the worse zone."""
    if value >= boundary_cd:
        return "D"
    return "C" if value >= boundary_bc else "B"


# ---------------------------------------------------------------------------------------------
# Band rms


@dataclass(frozen=True, slots=True)
class Band:
    """A band as windows of ``n`` samples at ``fs`` resolve it: ``band_hz`` is the band used,
    f_hi clipped to Nyquist when ``clipped``; ``df`` the bin spacing fs / n."""

    requested_hz: tuple[float, float]
    band_hz: tuple[float, float]
    clipped: bool
    df: float


def resolve_band(f_lo: float, f_hi: float, fs: float, n: int) -> Band:
    """How windows of ``n`` samples at ``fs`` resolve [f_lo, f_hi]; ValueError when they
    cannot (f_lo < 2 fs / n, the band above Nyquist or narrower than a bin)."""
    if not (0.0 < f_lo < f_hi) or not math.isfinite(f_hi):
        raise ValueError(f"band {f_lo:g}-{f_hi:g} Hz: need 0 < f_lo < f_hi")
    if fs <= 0 or n < 2 * MIN_BIN:
        raise ValueError(f"band {f_lo:g}-{f_hi:g} Hz: bad window ({n} samples at {fs:g} Hz)")
    df = fs / n
    nyquist = fs / 2.0
    if f_lo < MIN_BIN * df * (1.0 - 1e-9):
        need_s = MIN_BIN / f_lo
        raise ValueError(
            f"band {f_lo:g}-{f_hi:g} Hz needs windows of at least {need_s:g} s "
            f"({math.ceil(need_s * fs)} samples at {fs:g} Hz) to resolve {f_lo:g} Hz; "
            f"these are {n / fs:.3g} s ({n} samples)")
    if f_lo >= nyquist:
        raise ValueError(f"band {f_lo:g}-{f_hi:g} Hz lies above Nyquist ({nyquist:g} Hz at fs {fs:g} Hz)")
    clipped = f_hi > nyquist
    hi = nyquist if clipped else f_hi
    if hi - f_lo < df:
        raise ValueError(f"band {f_lo:g}-{hi:g} Hz is narrower than one frequency bin ({df:g} Hz)")
    return Band((float(f_lo), float(f_hi)), (float(f_lo), float(hi)), clipped, df)


_HANN: dict[int, np.ndarray] = {}


def _hann(n: int) -> np.ndarray:
    w = _HANN.get(n)
    if w is None:
        w = _HANN[n] = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    return w


def _weights(n: int, fs: float, bands: Sequence[tuple[str, Band]]) -> np.ndarray:
    """(n//2 + 1, len(bands)) matrix M with rms^2 = |X|^2 @ M, X = rfft(hann * x), x in g:
    the ideal weights u_k, deconvolved by the Hann kernel (module docstring), times the
    one-sided factor c_k, g0^2 and the Hann power correction."""
    w = _hann(n)
    half = n // 2 + 1
    k = np.arange(half, dtype=np.float64)
    df = fs / n
    c = np.full(half, 2.0)
    c[0] = 1.0
    if n % 2 == 0:
        c[-1] = 1.0
    scale = c * G0 * G0 / (n * float(np.dot(w, w)))
    # bin k stands for [f_k - df/2, f_k + df/2] (the Nyquist bin for its lower half)
    cell_lo = np.maximum((k - 0.5) * df, 0.0)
    cell_hi = np.minimum((k + 0.5) * df, fs / 2.0)
    m = np.arange(n)
    mirror = np.minimum(m, n - m)  # two-sided bin -> one-sided bin
    symbol = 2.0 / 3.0 + np.cos(2.0 * np.pi * m / n) / 3.0  # DFT of the kernel (1/6, 2/3, 1/6): >= 1/3
    out = np.zeros((half, len(bands)))
    for j, (quantity, band) in enumerate(bands):
        lo, hi = band.band_hz
        inside = np.clip(np.minimum(cell_hi, hi) - np.maximum(cell_lo, lo), 0.0, None) / (cell_hi - cell_lo)
        if quantity == "velocity":
            u = np.zeros(half)
            u[1:] = inside[1:] * 1e6 / (2.0 * np.pi * k[1:] * df) ** 2  # (mm/s)^2 per (m/s^2)^2
        elif quantity == "acceleration":
            u = inside
        else:
            raise ValueError(f"unknown quantity {quantity!r}: acceleration or velocity")
        W = np.fft.ifft(np.fft.fft(u[mirror]) / symbol).real[:half]
        W[:MIN_BIN] = 0.0  # a constant offset lands in bins 0 and 1 only
        out[:, j] = W * scale
    return out


def _spectrum_power(x_g: np.ndarray) -> np.ndarray:
    """|rfft(hann * x)|^2 per row (x in g; g0 is in the weights)."""
    X = np.fft.rfft(x_g * _hann(x_g.shape[1]), axis=1)
    return X.real * X.real + X.imag * X.imag


@dataclass(frozen=True, slots=True)
class BandRms:
    """rms values of a batch of windows (one per row) over ``band_hz`` (f_hi clipped to
    Nyquist when ``clipped``), in ``unit``."""

    values: np.ndarray
    band_hz: tuple[float, float]
    clipped: bool
    unit: str


def _band_rms(quantity: str, x_g: np.ndarray, fs: float, band_hz: tuple[float, float]) -> BandRms:
    x = np.atleast_2d(np.asarray(x_g, dtype=np.float64))
    band = resolve_band(band_hz[0], band_hz[1], fs, x.shape[1])
    m = _weights(x.shape[1], fs, [(quantity, band)])
    values = np.sqrt(np.maximum(_spectrum_power(x) @ m, 0.0))[:, 0]
    return BandRms(values, band.band_hz, band.clipped, "mm/s" if quantity == "velocity" else "m/s^2")


def velocity_rms(x_g: np.ndarray, fs: float, band_hz: tuple[float, float]) -> BandRms:
    """Velocity rms (mm/s) over ``band_hz`` of each row of ``x_g`` (acceleration in g; a 1-D
    array is one window). ValueError when the window cannot resolve the band."""
    return _band_rms("velocity", x_g, fs, band_hz)


def acceleration_rms(x_g: np.ndarray, fs: float, band_hz: tuple[float, float]) -> BandRms:
    """Acceleration rms (m/s^2) over ``band_hz`` of each row of ``x_g`` (in g)."""
    return _band_rms("acceleration", x_g, fs, band_hz)


# ---------------------------------------------------------------------------------------------
# Rule sets


@dataclass(frozen=True, slots=True)
class Judged:
    """A criterion the window can judge, with the band as resolved (maybe clipped)."""

    criterion: Criterion
    band: Band


@dataclass(frozen=True)
class RuleSet:
    """The criteria of one component that windows of ``n`` samples at ``fs`` can judge, and
    the ones skipped with the reason. ``measure`` gives one row of values per window."""

    component: str
    n: int
    fs: float
    judged: tuple[Judged, ...]
    skipped: tuple[tuple[Criterion, str], ...]
    weights: np.ndarray = field(repr=False)

    def measure_power(self, power: np.ndarray) -> np.ndarray:
        """Values (rows, len(judged)) from |rfft(hann * x)|^2 rows."""
        return np.sqrt(np.maximum(power @ self.weights, 0.0))

    def measure(self, x_g: np.ndarray) -> np.ndarray:
        """Values (rows, len(judged)) of windows of acceleration in g, one per row."""
        return self.measure_power(_spectrum_power(np.atleast_2d(np.asarray(x_g, dtype=np.float64))))


def rule_set(component: str, fs: float, n: int) -> RuleSet:
    """Which of ``component``'s criteria windows of ``n`` samples at ``fs`` can judge; the
    others are skipped with the reason (e.g. the 0.1-10 Hz bands with short windows)."""
    if component not in ZONE_TABLE:
        raise ValueError(f"unknown component {component!r}: one of {', '.join(COMPONENTS)}")
    judged: list[Judged] = []
    skipped: list[tuple[Criterion, str]] = []
    for crit in ZONE_TABLE[component]:
        try:
            judged.append(Judged(crit, resolve_band(crit.band_hz[0], crit.band_hz[1], fs, n)))
        except ValueError as exc:
            skipped.append((crit, f"{component} {crit.quantity}: {exc}"))
    weights = _weights(n, fs, [(j.criterion.quantity, j.band) for j in judged])
    return RuleSet(component, n, float(fs), tuple(judged), tuple(skipped), weights)


# ---------------------------------------------------------------------------------------------
# Config


def parse_components(entries: Iterable[Mapping[str, str] | object]) -> dict[str, str]:
    """Channel glob pattern -> component from ``[[iso_zone]]`` entries: dicts (or objects
    with attributes) with keys ``channels`` and ``component``. ValueError, one line, naming
    the entry and key, for a missing, unknown or empty key, an unknown component or a
    pattern given twice."""
    out: dict[str, str] = {}
    for i, entry in enumerate(entries):
        where = f"iso_zone[{i}]"
        if isinstance(entry, Mapping):
            extra = sorted(set(entry) - {"channels", "component"})
            if extra:
                raise ValueError(f"{where}.{extra[0]}: unknown key (keys: channels, component)")
            get = entry.get
        elif hasattr(entry, "channels") and hasattr(entry, "component"):
            def get(k: str, _e: object = entry) -> object:
                return getattr(_e, k)
        else:
            raise ValueError(f"{where}: expected a table with keys channels and component, got {entry!r}")
        pattern, component = get("channels"), get("component")
        if pattern is None:
            raise ValueError(f"{where}.channels: missing (a channel-name glob pattern, e.g. \"serial0.*\")")
        if not isinstance(pattern, str) or not pattern.strip():
            raise ValueError(f"{where}.channels: must be a non-empty glob pattern, got {pattern!r}")
        if component is None:
            raise ValueError(f"{where}.component: missing (one of {', '.join(COMPONENTS)})")
        if component not in COMPONENTS:
            raise ValueError(f"{where}.component: unknown component {component!r}; one of {', '.join(COMPONENTS)}")
        if pattern in out:
            raise ValueError(f"{where}.channels: pattern {pattern!r} given twice")
        out[pattern] = component
    return out


# ---------------------------------------------------------------------------------------------
# Alert rules


@dataclass(slots=True)
class Judgement:
    """One window's verdict: its worst zone over the judged quantities and every measurement
    (dicts as in the alert's "measurements")."""

    window: Window
    component: str
    zone: str
    measurements: list[dict]


@dataclass(slots=True)
class ZoneRules:
    """ISO 10816-21 zone alerts: one open "iso_zone" alert per channel, k of n to raise and m
    quiet to clear (alerts.Hysteresis). A window is a hit when any judged quantity is in zone
    C or D; the alert's severity is warning for C and alarm for D. ``components`` maps
    channel glob patterns (fnmatch, case-sensitive; the first match wins) to a component;
    channels that match none are ignored. Windows with quality flags, or with non-finite
    values, neither raise nor clear (as in the agent), and do not count in the k of n."""

    components: Mapping[str, str]
    raise_after: int
    raise_window: int
    clear_after: int
    model_version: str
    _hysteresis: Hysteresis | None = None
    _channel_component: dict[str, str | None] = field(default_factory=dict)
    _rule_sets: dict[tuple[str, int, float], RuleSet] = field(default_factory=dict)
    _last_hit: dict[tuple[str, str], Judgement] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for pattern, component in self.components.items():
            if component not in COMPONENTS:
                raise ValueError(f"channels {pattern!r}: unknown component {component!r}; "
                                 f"one of {', '.join(COMPONENTS)}")
        self.components = dict(self.components)
        self._hysteresis = Hysteresis(self.raise_after, self.raise_window, self.clear_after)

    def open_alerts(self) -> list[dict]:
        return self._hysteresis.open_alerts()

    def component_of(self, channel: str) -> str | None:
        if channel not in self._channel_component:
            self._channel_component[channel] = next(
                (c for p, c in self.components.items() if fnmatchcase(channel, p)), None)
        return self._channel_component[channel]

    def rule_set(self, component: str, n: int, fs: float) -> RuleSet:
        key = (component, n, float(fs))
        rs = self._rule_sets.get(key)
        if rs is None:
            rs = self._rule_sets[key] = rule_set(component, fs, n)
            for _crit, reason in rs.skipped:
                log.warning("ISO 10816-21 criterion not judged: %s", reason)
            for j in rs.judged:
                if j.band.clipped:
                    log.warning("ISO 10816-21 %s %s band clipped to %g-%g Hz (Nyquist at fs %g Hz)", component,
                                j.criterion.quantity, *j.band.band_hz, fs)
        return rs

    def skipped(self) -> list[str]:
        """Why each criterion not judged so far is skipped (one line each)."""
        return [reason for rs in self._rule_sets.values() for _c, reason in rs.skipped]

    def judge_batch(self, windows: Sequence[Window]) -> list[Judgement | None]:
        """Each window's zone and measurements (None: unmatched, flagged, nothing judged or
        non-finite). One rfft per (length, rate) group."""
        out: list[Judgement | None] = [None] * len(windows)
        groups: dict[tuple[int, float], list[int]] = {}
        for i, w in enumerate(windows):
            if w.flags:
                continue
            component = self.component_of(w.channel)
            if component is None or not self.rule_set(component, len(w.samples), w.fs).judged:
                continue
            groups.setdefault((len(w.samples), float(w.fs)), []).append(i)
        for (n, fs), idx in groups.items():
            x = np.empty((len(idx), n))
            for row, i in enumerate(idx):
                x[row] = windows[i].samples
            power = _spectrum_power(x)
            by_component: dict[str, list[int]] = {}
            for row, i in enumerate(idx):
                by_component.setdefault(self._channel_component[windows[i].channel], []).append(row)
            for component, rows in by_component.items():
                rs = self.rule_set(component, n, fs)
                values = rs.measure_power(power[rows] if len(rows) < len(idx) else power)
                for r, row in enumerate(rows):
                    if np.all(np.isfinite(values[r])):
                        out[idx[row]] = _judge(windows[idx[row]], rs, values[r])
        return out

    def update_batch(self, windows: Sequence[Window]) -> list[dict]:
        """Feed a batch of windows (in arrival order); return the alert messages (raised or
        cleared) they cause, in window order."""
        messages: list[dict] = []
        for w, j in zip(windows, self.judge_batch(windows), strict=True):
            if j is None:
                continue
            hit = f"zone_{j.zone}" if j.zone != "B" else None
            if hit:
                self._last_hit[(w.channel, hit)] = j
            messages += self._hysteresis.step(w.channel, hit, lambda label, ch=w.channel: self._raised(ch, label))
        return messages

    def _raised(self, channel: str, label: str) -> dict:
        # The most frequent zone among the recent hits; described by the last window in it.
        j = self._last_hit[(channel, label)]
        w = j.window
        return {
            "schema": SCHEMA,
            "id": uuid.uuid4().hex,
            "time": time.time(),
            "state": "open",
            "severity": SEVERITY[j.zone],
            "type": ALERT_TYPE,
            "label": label,
            "channel": w.channel,
            "rpm": round(w.rpm, 1),
            "window_t_start_us": w.t_start_us,
            "explanation": explain(j.component, j.measurements, w.channel, w.rpm),
            "model_version": self.model_version,
            "zone": j.zone,
            "component": j.component,
            "measurements": j.measurements,
        }


def _judge(window: Window, rs: RuleSet, values: np.ndarray) -> Judgement:
    measurements = []
    for j, v in zip(rs.judged, values.tolist(), strict=True):
        c = j.criterion
        v = round(v, 4)  # judged as reported
        measurements.append({
            "quantity": c.quantity,
            "band_hz": list(j.band.band_hz),
            "band_clipped": j.band.clipped,
            "value": v,
            "unit": c.unit,
            "boundary_bc": c.boundary_bc,
            "boundary_cd": c.boundary_cd,
            "zone": zone_of(v, c.boundary_bc, c.boundary_cd),
        })
    zone = max((m["zone"] for m in measurements), key=ZONE_RANK.__getitem__)
    return Judgement(window, rs.component, zone, measurements)


def _severity_key(m: dict) -> tuple[int, float]:
    boundary = m["boundary_cd"] if m["zone"] == "D" else m["boundary_bc"]
    return ZONE_RANK[m["zone"]], m["value"] / boundary


def _describe(component: str, m: dict) -> str:
    lo, hi = m["band_hz"]
    band = f"{lo:g}-{hi:g} Hz" + (", clipped at Nyquist" if m["band_clipped"] else "")
    return f"{_NAMES[component]} {m['quantity']} {m['value']:.3g} {m['unit']} rms ({band})"


def explain(component: str, measurements: Sequence[dict], channel: str, rpm: float) -> str:
    """One sentence: the worst quantity, its zone and boundary, where, and what to do; other
    quantities in zone C or D are appended."""
    worst, *others = sorted(measurements, key=_severity_key, reverse=True)
    z = worst["zone"]
    if z == "D":
        boundary = f"C/D boundary {worst['boundary_cd']:g} {worst['unit']}"
    else:
        boundary = f"B/C boundary {worst['boundary_bc']:g} {worst['unit']}"
    text = (f"{_describe(component, worst)} is in {STANDARD} zone {z} ({boundary}) on {channel} "
            f"at {rpm:.0f} rpm: {_ADVICE.get(z, 'no action')}")
    also = [f"{_describe(component, m)} in zone {m['zone']}" for m in others if m["zone"] != "B"]
    if also:
        text += "; also " + "; ".join(also)
    return text
