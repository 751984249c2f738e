"""Feature extraction stage: one feature vector per window, as specified in docs/FEATURES.md.

The per-sample work is compiled (ext/time_domain.pyx, ext/spectral.pyx; typed memoryviews,
GIL released); FFTs are numpy's, batched over all windows of one shape in a round. This
module is the typed Python face of it. Importing it without a built extension raises
:class:`edge_agent.native.NativeExtensionMissing` (never a slow fallback).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent import native
from edge_agent.bearing import SKF_6205, BearingGeometry, DefectOrders
from edge_agent.window import Window

_time_domain = native.load("time_domain")
_spectral = native.load("spectral")

TIME_FEATURES: tuple[str, ...] = tuple(_time_domain.FEATURE_NAMES)
DEFAULT_BAND_EDGES_HZ = (10.0, 500.0, 1000.0, 2000.0, 3500.0, 5000.0)
ENVELOPE_FAMILIES = ("bpfo", "bpfi", "bsf", "ftf")
ENVELOPE_EXTRA = ("env_bpfi_sb_lo", "env_bpfi_sb_hi", "env_bsf2_sb_lo", "env_bsf2_sb_hi", "env_shaft_1", "env_shaft_2")
G0 = 9.80665  # m/s^2 per g
VELOCITY_BAND_HZ = (10.0, 1000.0)


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """What the feature vector contains and how it is computed (docs/FEATURES.md, Inputs)."""

    orders: DefectOrders
    band_edges_hz: tuple[float, ...] = DEFAULT_BAND_EDGES_HZ
    envelope_band_hz: tuple[float, float] | None = None  # None = chosen by spectral kurtosis
    order_tolerance: float = 0.02
    noise_floor_bins: int = 20

    @classmethod
    def default(cls, bearing: BearingGeometry = SKF_6205) -> FeatureSpec:
        return cls(orders=bearing.orders())

    @classmethod
    def from_config(cls, cfg: Any) -> FeatureSpec:
        """From a Config's ``[bearing]`` and ``[features]`` sections."""
        b, f = cfg.bearing, cfg.features
        geometry = BearingGeometry(b.n_balls, b.ball_diameter, b.pitch_diameter, b.contact_angle_deg)
        band = tuple(f.envelope_band_hz) if f.envelope_band_hz else None
        return cls(geometry.orders(), tuple(f.band_edges_hz), band, f.order_tolerance, f.noise_floor_bins)

    def envelope_targets(self, shaft_hz: float) -> np.ndarray:
        """Target frequencies (Hz) of the envelope features, in vector order."""
        o = self.orders
        fams = [k * getattr(o, fam) for fam in ENVELOPE_FAMILIES for k in (1, 2, 3)]
        extra = [o.bpfi - 1, o.bpfi + 1, 2 * o.bsf - o.ftf, 2 * o.bsf + o.ftf, 1.0, 2.0]
        return np.array(fams + extra, dtype=np.float64) * shaft_hz


def feature_names(spec: FeatureSpec) -> tuple[str, ...]:
    """The names of the vector's entries, in order (docs/FEATURES.md, Order of the vector)."""
    edges = spec.band_edges_hz
    bands = tuple(f"band_rms_{lo:g}_{hi:g}" for lo, hi in zip(edges[:-1], edges[1:]))
    env = tuple(f"env_{fam}_{k}" for fam in ENVELOPE_FAMILIES for k in (1, 2, 3))
    return TIME_FEATURES + bands + ("spectral_centroid_hz", "velocity_rms_mm_s") + env + ENVELOPE_EXTRA


def time_features(samples: np.ndarray) -> np.ndarray:
    """Time-domain features of one window (float64, ordered as :data:`TIME_FEATURES`)."""
    x = np.ascontiguousarray(samples)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    out = np.empty(len(TIME_FEATURES), dtype=np.float64)
    _time_domain.time_features(x, out)
    return out


def time_features_into(windows: Sequence[Window], out: np.ndarray) -> None:
    """Each window's time-domain features into the first len(TIME_FEATURES) columns of its
    row of ``out`` (float64, one row per window, C-contiguous rows)."""
    n = len(TIME_FEATURES)
    for i, w in enumerate(windows):
        _time_domain.time_features(w.samples, out[i, :n])


def sk_segment_lengths(fs: float, n: int, bpfi_hz: np.ndarray) -> np.ndarray:
    """Spectral-kurtosis segment length per BPFI (Hz): 2^floor(log2(fs / (2 BPFI f_r))), clipped
    to [16, n/4]: at most half the shortest defect period (docs/FEATURES.md section 3)."""
    # a stopped shaft (BPFI 0) gets the longest segment; NaN the shortest (fmax/fmin skip it)
    bpfi = np.clip(np.asarray(bpfi_hz, dtype=np.float64), 1e-300, 1e300)  # not np.errstate: 11 us a call
    seg = np.exp2(np.floor(np.log2(fs / (2.0 * bpfi))))
    return np.fmin(np.fmax(seg, 16.0), n // 4).astype(np.int64)


def sk_bandwidths(fs: float, bpfi_hz: np.ndarray) -> np.ndarray:
    """The envelope band's width per BPFI (Hz): min(max(6 BPFI f_r, fs/16), fs/4)
    (docs/FEATURES.md section 3)."""
    return np.minimum(np.maximum(6.0 * bpfi_hz, fs / 16.0), fs / 4.0)


def _cached(cache: dict, key: Any, make: Any, limit: int = 8) -> Any:
    """``cache[key]``, made by ``make()`` when missing; the oldest entry goes beyond ``limit``
    (odd shapes and speeds come and go: the caches of buffers stay small)."""
    value = cache.get(key)
    if value is None:
        value = cache[key] = make()
        if len(cache) > limit:
            cache.pop(next(iter(cache)))
    return value


def _hann_periodic(length: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)


# Windows per batched FFT call: about 64 k samples, so the work buffers (~1.2 MB per 16 k
# samples) stay small and are reused, instead of fresh multi-MB arrays page-faulted per call.
CHUNK_SAMPLES = 65536


class _Workspace:
    """Preallocated buffers for one (rows, n, fs) chunk shape, reused call after call."""

    def __init__(self, rows: int, n: int) -> None:
        half = n // 2 + 1
        self.x = np.empty((rows, n))
        self.X = np.empty((rows, half), np.complex128)
        self.k0 = np.empty(rows, np.intp)
        self.nb = np.empty(rows, np.intp)
        self.m_len = np.empty(rows, np.intp)
        self.rows = np.arange(rows, dtype=np.intp)
        self.bands = np.empty((rows, 2))
        self.block = np.empty((rows, 0))
        # follows[r]: row r is the window half a window after row r - 1's, same channel
        self.follows = np.zeros(rows, bool)


class FeatureExtractor:
    """Feature vectors for a batch of windows, as one (n_windows, n_features) array.

    Windows are grouped by (length, rate) and cut into chunks of about CHUNK_SAMPLES; each
    chunk's FFTs run as one batched numpy call into reused buffers, and the per-bin loops in
    ext/spectral.pyx. ``last_bands`` holds the envelope band (lo, hi) of each window of the
    last call. One extractor per thread: the buffers are not shared. A window that follows
    the one before it in the batch by half a window (same channel, ``seq_first`` n/2 on: as
    the windower cuts them, the two share those samples) shares its spectral-kurtosis work.
    """

    def __init__(self, spec: FeatureSpec | None = None) -> None:
        self.spec = spec or FeatureSpec.default()
        self.names = feature_names(self.spec)
        self._edges = np.asarray(self.spec.band_edges_hz, dtype=np.float64)
        self._n_time = len(TIME_FEATURES)
        self._n_spec = len(self._edges) + 1  # bands, centroid, velocity
        self._targets = self.spec.envelope_targets(1.0)
        self._hann: dict[int, np.ndarray] = {}
        self._work: dict[tuple[int, int], _Workspace] = {}
        self._stft: dict[tuple[int, int, int, int], tuple[np.ndarray, ...]] = {}
        self._sk_plans: dict[tuple[float, int, float], tuple[int, float]] = {}
        self._env: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}
        self.last_bands = np.empty((0, 2))

    def extract(self, windows: Sequence[Window], time_domain: bool = True) -> np.ndarray:
        """The windows' vectors. ``time_domain`` False leaves the time-domain block (the first
        len(TIME_FEATURES) columns) NaN, for a caller that computes it itself
        (:func:`time_features_into`: replay's feature worker and the main process share the
        work so)."""
        out = np.empty((len(windows), len(self.names)), dtype=np.float64)
        self.last_bands = np.empty((len(windows), 2))
        groups: dict[tuple[int, float], list[int]] = {}
        if time_domain:
            time_features_into(windows, out)
        else:
            out[:, : self._n_time] = np.nan
        for i, w in enumerate(windows):
            groups.setdefault((len(w.samples), float(w.fs)), []).append(i)
        for (n, fs), idx in groups.items():
            per_chunk = max(1, CHUNK_SAMPLES // n)
            for start in range(0, len(idx), per_chunk):
                chunk = idx[start : start + per_chunk]
                ws = self._workspace(len(chunk), n, fs)
                prev = None
                for row, i in enumerate(chunk):
                    w = windows[i]
                    ws.x[row] = w.samples
                    ws.follows[row] = (prev is not None and w.seq_first == prev.seq_first + n // 2
                                       and w.channel == prev.channel)
                    prev = w
                rpms = [windows[i].rpm for i in chunk]
                self._spectral_block(ws, fs, np.array(rpms, dtype=np.float64), rpms.count(rpms[0]) == len(rpms))
                out[chunk, self._n_time :] = ws.block
                self.last_bands[chunk] = ws.bands
        return out

    def extract_one(self, x: np.ndarray, fs: float, rpm: float) -> np.ndarray:
        """The vector of one window given as samples (tests, replay of single windows)."""
        w = Window("x", np.ascontiguousarray(x, dtype=np.float32), fs, rpm, 0, 0, len(x) - 1)
        return self.extract([w])[0]

    def _workspace(self, rows: int, n: int, fs: float) -> _Workspace:
        def make() -> _Workspace:
            ws = _Workspace(rows, n)
            ws.block = np.empty((rows, len(self.names) - self._n_time))
            return ws
        return _cached(self._work, (rows, n), make)

    def _spectral_block(self, ws: _Workspace, fs: float, rpm: np.ndarray, uniform: bool = False) -> None:
        """Spectral and envelope features of the rows of ``ws.x`` into ``ws.block``, the
        envelope bands used into ``ws.bands`` (docs/FEATURES.md sections 2 and 3)."""
        n = ws.x.shape[1]
        spec = self.spec
        np.fft.rfft(ws.x, axis=1, out=ws.X)
        _spectral.spectrum_features(ws.X, n, fs, self._edges, ws.block, 0)
        shaft_hz = rpm / 60.0
        if spec.envelope_band_hz is not None:
            ws.bands[:] = spec.envelope_band_hz
        else:
            self._sk_bands(ws, fs, shaft_hz, uniform)
        targets = np.multiply.outer(shaft_hz, self._targets)
        self._envelope(ws, fs, targets)

    def _envelope(self, ws: _Workspace, fs: float, targets: np.ndarray) -> None:
        """Envelope spectra and order amplitudes (docs/FEATURES.md section 3): the band shifted
        to baseband and decimated to M points; rows that share M share one batched FFT (the
        whole chunk, as a rule: then straight into ``ws.block``)."""
        rows, n = ws.x.shape
        spec, df, col0 = self.spec, fs / n, self._n_spec
        _spectral.band_bins(n, fs, ws.bands, ws.k0, ws.nb)
        common = _spectral.envelope_lengths(n, fs, targets.max(axis=1), spec.order_tolerance,
                                            spec.noise_floor_bins, ws.nb, ws.m_len)
        if common:
            E = self._envelope_spectra(ws, ws.rows, common)
            _spectral.order_snr(E, df, targets, spec.order_tolerance, spec.noise_floor_bins, ws.block, col0)
            return
        ws.block[ws.nb == 0, col0:] = 0.0
        for m in sorted(set(ws.m_len[ws.nb > 0].tolist())):
            sel = np.flatnonzero((ws.m_len == m) & (ws.nb > 0))
            E = self._envelope_spectra(ws, sel, m)
            block = np.empty((len(sel), ws.block.shape[1]))
            _spectral.order_snr(E, df, np.ascontiguousarray(targets[sel]), spec.order_tolerance, spec.noise_floor_bins, block, col0)
            ws.block[sel, col0:] = block[:, col0:]

    def _envelope_spectra(self, ws: _Workspace, sel: np.ndarray, m: int) -> np.ndarray:
        """Rows ``sel``: the band shifted to baseband in M = ``m`` points, its magnitude (the
        envelope), mean removed, one-sided amplitude spectrum (bins of fs / n Hz)."""
        n = ws.x.shape[1]
        Z, env, S, E = self._envelope_buffers(len(sel), m)
        _spectral.baseband(ws.X, sel, ws.k0, ws.nb, Z)
        np.fft.ifft(Z, axis=1, out=Z)
        _spectral.magnitudes(Z, m / n, True, env)
        np.fft.rfft(env, axis=1, out=S)
        _spectral.magnitudes(S, 2.0 / m, False, E)
        return E

    def _envelope_buffers(self, rows: int, m: int) -> tuple[np.ndarray, ...]:
        return _cached(self._env, (rows, m), lambda: (
            np.empty((rows, m), np.complex128), np.empty((rows, m)),
            np.empty((rows, m // 2 + 1), np.complex128), np.empty((rows, m // 2 + 1))))

    def envelope_spectrum(self, samples: np.ndarray, fs: float,
                          shaft_hz: float) -> tuple[np.ndarray, float, tuple[float, float]] | None:
        """One window's envelope spectrum exactly as its features see it (the same band,
        fixed or by spectral kurtosis, the same M and steps as :meth:`_envelope`), for
        display: (amplitudes in g at bins of fs / n Hz from 0 Hz, bin width, band). None when
        the band is empty. Call it from the thread that owns this extractor (it uses its
        buffers)."""
        x = np.asarray(samples, dtype=np.float64)
        n = len(x)
        ws = _Workspace(1, n)
        ws.x[0] = x
        np.fft.rfft(ws.x, axis=1, out=ws.X)
        if self.spec.envelope_band_hz is not None:
            ws.bands[:] = self.spec.envelope_band_hz
        else:
            self._sk_bands(ws, fs, np.array([shaft_hz]))
        _spectral.band_bins(n, fs, ws.bands, ws.k0, ws.nb)
        if ws.nb[0] <= 0:
            return None
        top = np.array([self.spec.envelope_targets(shaft_hz).max()])
        m = _spectral.envelope_lengths(n, fs, top, self.spec.order_tolerance, self.spec.noise_floor_bins, ws.nb, ws.m_len)
        E = self._envelope_spectra(ws, ws.rows, m)
        return E[0].copy(), fs / n, (float(ws.bands[0, 0]), float(ws.bands[0, 1]))

    def _sk_bands(self, ws: _Workspace, fs: float, shaft_hz: np.ndarray, uniform: bool = False) -> None:
        """The envelope band of each row by spectral kurtosis (docs/FEATURES.md section 3).
        The segment length follows each row's speed; rows that share it share one STFT
        (``uniform``: every row has the same speed, the usual case).

        The STFT runs on half windows: windows half a window apart (the default hop; the
        rows' ``follows``) share a half, whose segments are transformed once. A chunk of R
        such windows takes R + 1 halves' STFTs instead of 2 R. The segments are the same
        (a half is a whole number of segments), so is SK but for the order of its sums."""
        rows, n = ws.x.shape
        if uniform:
            seg, bw = self._sk_plan(fs, n, float(shaft_hz[0]))
            groups = [(seg, ws.rows, np.full(rows, bw))]
        else:
            bpfi_hz = self.spec.orders.bpfi * shaft_hz
            seg_lens = sk_segment_lengths(fs, n, bpfi_hz)
            bandwidth = sk_bandwidths(fs, bpfi_hz)
            groups = []
            for seg in sorted(set(seg_lens.tolist())):
                sel = np.flatnonzero(seg_lens == seg)
                groups.append((seg, sel, np.ascontiguousarray(bandwidth[sel])))
        for seg, sel, bandwidth in groups:
            every = len(sel) == rows
            halves = (n // 2) % seg == 0
            piece = n // 2 if halves else n
            per_piece = piece // seg
            # runs of consecutive selected rows, each following the one before by half a window
            if halves and every and ws.follows[1:].all():
                starts, ends = [0], [rows]
            elif halves:
                cont = ws.follows[sel[1:]] & (np.diff(sel) == 1)
                starts = np.flatnonzero(np.concatenate(([True], ~cont))).tolist()
                ends = starts[1:] + [len(sel)]
            else:
                starts, ends = list(range(len(sel))), list(range(1, len(sel) + 1))
            pieces = 2 if halves else 1
            n_pieces = len(sel) + (len(starts) if halves else 0)
            frames, S, sk, first = self._stft_buffers(n_pieces, len(sel), per_piece, seg)
            hann = self._hann_window(seg)
            h = 0
            for a, b in zip(starts, ends):
                r0, length = int(sel[a]), b - a
                first[a:b] = ws.rows[:length] if h == 0 else np.arange(h, h + length)
                np.multiply(ws.x[r0 : r0 + length, :piece].reshape(length, per_piece, seg), hann,
                            out=frames[h : h + length])
                h += length
                if halves:  # the run's last window's second half
                    np.multiply(ws.x[r0 + length - 1, piece:].reshape(per_piece, seg), hann, out=frames[h])
                    h += 1
            np.fft.rfft(frames, axis=2, out=S)
            _spectral.spectral_kurtosis(S, first, pieces, sk)
            if every:
                _spectral.choose_bands(sk, fs, seg, bandwidth, ws.bands)
            else:
                bands = np.empty((len(sel), 2))
                _spectral.choose_bands(sk, fs, seg, bandwidth, bands)
                ws.bands[sel] = bands

    def _sk_plan(self, fs: float, n: int, shaft_hz: float) -> tuple[int, float]:
        """(segment length, band width) of a window of n samples at fs and this speed."""
        def make() -> tuple[int, float]:
            bpfi_hz = self.spec.orders.bpfi * np.array([shaft_hz])
            return int(sk_segment_lengths(fs, n, bpfi_hz)[0]), float(sk_bandwidths(fs, bpfi_hz)[0])
        return _cached(self._sk_plans, (fs, n, shaft_hz), make, limit=64)  # speeds that vary

    def _hann_window(self, seg: int) -> np.ndarray:
        hann = self._hann.get(seg)
        if hann is None:
            hann = self._hann[seg] = _hann_periodic(seg)
        return hann

    def _stft_buffers(self, n_pieces: int, rows: int, per_piece: int, seg: int) -> tuple[np.ndarray, ...]:
        return _cached(self._stft, (n_pieces, rows, per_piece, seg), lambda: (
            np.empty((n_pieces, per_piece, seg)), np.empty((n_pieces, per_piece, seg // 2 + 1), np.complex128),
            np.empty((rows, seg // 2 + 1)), np.empty(rows, np.intp)))
