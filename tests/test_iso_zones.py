"""ISO 10816-21 zone rules (edge_agent/iso_zones.py): band rms against analytic sines and a
scipy time-domain reference, zone boundaries, the unresolvable and clipped bands, the alert
hysteresis and the config parser."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.iso_zones import (
    COMPONENTS,
    G0,
    ZONE_TABLE,
    ZoneRules,
    acceleration_rms,
    parse_components,
    resolve_band,
    rule_set,
    velocity_rms,
    zone_of,
)
from edge_agent.window import Window

SHAPES = [(12000.0, 4096), (25600.0, 8192), (48000.0, 16384), (12000.0, 8192), (25600.0, 16384)]


def _sine_g(fs: float, n: int, f: float, amp_ms2: float, phase: float = 0.3, offset_g: float = 0.0) -> np.ndarray:
    t = np.arange(n) / fs
    return offset_g + amp_ms2 / G0 * np.sin(2 * np.pi * f * t + phase)


def _v_rms_mm_s(f: float, amp_ms2: float) -> float:
    return 1000.0 * amp_ms2 / (2 * np.pi * f) / math.sqrt(2)


# -- band rms: sines -----------------------------------------------------------------------------


@pytest.mark.parametrize("fs,n", SHAPES)
def test_on_bin_sines_read_the_analytic_rms(fs, n):
    """A sine on a bin: velocity a / (2 pi f) / sqrt(2) and acceleration a / sqrt(2), to
    rounding (the Hann spread 1/6, 2/3, 1/6 is deconvolved out of the weights), also with a
    1 g sensor offset (it lands in bins 0 and 1, which no band uses)."""
    df = fs / n
    band = (10.0, 1000.0)
    ks = [math.ceil(10.0 / df) + 1, math.ceil(10.0 / df) + 5, int(159.2 / df), int(700 / df), int(1000 / df) - 1]
    x = np.stack([_sine_g(fs, n, k * df, 3.0, offset_g=1.0) for k in ks]).astype(np.float32)
    v = velocity_rms(x, fs, band).values
    a = acceleration_rms(x, fs, band).values
    # float32 samples: about 1e-7 relative on the sine (the 1 g offset costs resolution)
    np.testing.assert_allclose(v, [_v_rms_mm_s(k * df, 3.0) for k in ks], rtol=2e-5)
    np.testing.assert_allclose(a, 3.0 / math.sqrt(2), rtol=2e-5)


@settings(max_examples=60, deadline=None)
@given(shape=st.sampled_from(SHAPES), pos=st.floats(0.0, 1.0), amp=st.floats(0.01, 50.0),
       phase=st.floats(0.0, 2 * math.pi))
def test_off_bin_sines_within_one_percent(shape, pos, amp, phase):
    """Between bins the Hann spread reaches 2 bins each side, so it no longer matches the
    deconvolution kernel exactly: at least 4 bins inside the band the reading is within 0.5 %
    (module docstring); 1 % is asserted. Acceleration rms is exact (Parseval) there."""
    fs, n = shape
    df = fs / n
    lo, hi = 10.0 + 4 * df, 1000.0 - 4 * df
    f = lo + pos * (hi - lo)
    x = _sine_g(fs, n, f, amp, phase)
    v = velocity_rms(x, fs, (10.0, 1000.0)).values[0]
    a = acceleration_rms(x, fs, (10.0, 2000.0)).values[0]
    assert v == pytest.approx(_v_rms_mm_s(f, amp), rel=0.01)
    assert a == pytest.approx(amp / math.sqrt(2), rel=0.005)


def test_off_bin_accuracy_improves_away_from_the_edges():
    fs, n = 12000.0, 4096
    df = fs / n
    for inside, tol in [(5, 0.002), (8, 0.0002)]:
        for f in np.linspace(10 + inside * df, 1000 - inside * df, 97):
            v = velocity_rms(_sine_g(fs, n, f, 1.0), fs, (10.0, 1000.0)).values[0]
            assert abs(v / _v_rms_mm_s(f, 1.0) - 1) < tol, (f, inside)


def test_without_the_deconvolution_hann_would_read_high_at_low_bins():
    """The reason for the deconvolved weights: weighting each bin by 1/f_k^2 alone reads
    2/3 + (k/(k-1))^2/6 + (k/(k+1))^2/6 = 1 + 1/k^2 + ... in mean square for a sine on bin k
    (the Hann spread 1/6, 2/3, 1/6 over 1/f^2): +2 % rms at 5 bins."""
    fs, n = 12000.0, 4096
    df = fs / n
    k = 5
    x = _sine_g(fs, n, k * df, 1.0)
    X = np.fft.rfft(x * G0 * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)))
    w2 = np.sum((0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)) ** 2)
    f = np.arange(len(X)) * df
    sel = (f >= 10) & (f <= 1000)
    naive = 1000 * np.sqrt(np.sum(2 * np.abs(X[sel]) ** 2 / (n * w2) / (2 * np.pi * f[sel]) ** 2))
    spread = 2 / 3 + (k / (k - 1)) ** 2 / 6 + (k / (k + 1)) ** 2 / 6
    assert naive / _v_rms_mm_s(k * df, 1.0) == pytest.approx(math.sqrt(spread), rel=1e-9)
    assert velocity_rms(x, fs, (10.0, 1000.0)).values[0] == pytest.approx(_v_rms_mm_s(k * df, 1.0), rel=1e-9)


@pytest.mark.parametrize("fs,n", SHAPES)
def test_white_noise_reads_the_analytic_band_value_in_expectation(fs, n):
    """For white noise E|X_k|^2 = sigma^2 sum w^2 in every bin, so the expected mean square is
    sigma^2 sum w^2 sum_k M_k exactly; it must match the band integral
    sigma^2 g0^2 (2 / fs) integral q(f) df within 0.5 % in rms (the lower edge is resolved to
    a bin, and 1/f^2 puts most of the velocity there)."""
    for comp in ("gearbox", "generator"):
        rs = rule_set(comp, fs, n)
        w2 = np.sum((0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)) ** 2)
        for j, col in zip(rs.judged, rs.weights.T, strict=True):
            lo, hi = j.band.band_hz
            expected = w2 * col.sum()
            if j.criterion.quantity == "velocity":
                analytic = 1e6 * G0**2 * 2 / fs * (1 / lo - 1 / hi) / (2 * np.pi) ** 2
            else:
                analytic = G0**2 * 2 / fs * (hi - lo)
            assert math.sqrt(expected / analytic) == pytest.approx(1.0, abs=0.005), (comp, j.criterion)


# -- band rms: a scipy reference on broadband noise ----------------------------------------------


@pytest.mark.parametrize("fs,n", [(12000.0, 4096), (25600.0, 8192), (48000.0, 16384)])
def test_broadband_noise_matches_a_time_domain_reference(fs, n):
    """Reference: band-pass (Butterworth order 10, one pass: its noise bandwidth is within
    0.5 % of the ideal band), integrated with the cumulative trapezoid, detrended; rms after
    the filter's start-up. Ours: the mean square of Hann windows at hop n/4 (Hann^2 sums to a
    constant at that hop, so every sample weighs the same) over the same stretch. Both see
    the same noise, so the statistical spread mostly cancels: within 3 %."""
    signal = pytest.importorskip("scipy.signal")
    integrate = pytest.importorskip("scipy.integrate")
    rng = np.random.default_rng(7)
    length = int(fs * 8)
    x = rng.normal(0.0, 0.05, length) + 0.02  # g, with a small sensor offset
    start = int(fs * 1.5)
    starts = np.arange(start, length - n + 1, n // 4)
    windows = np.stack([x[s:s + n] for s in starts])
    stop = starts[-1] + n
    for quantity, band in [("velocity", (10.0, 1000.0)), ("acceleration", (10.0, 2000.0))]:
        sos = signal.butter(10, band, btype="bandpass", fs=fs, output="sos")
        a = signal.sosfilt(sos, x * G0)
        if quantity == "velocity":
            v = signal.detrend(integrate.cumulative_trapezoid(a, dx=1 / fs, initial=0.0))
            ref = 1000 * np.sqrt(np.mean(v[start:stop] ** 2))
            ours = np.sqrt(np.mean(velocity_rms(windows, fs, band).values ** 2))
        else:
            ref = np.sqrt(np.mean(a[start:stop] ** 2))
            ours = np.sqrt(np.mean(acceleration_rms(windows, fs, band).values ** 2))
        assert ours == pytest.approx(ref, rel=0.03), quantity


# -- bands the window cannot resolve, and Nyquist ------------------------------------------------


def test_a_band_below_the_resolution_is_refused_with_the_window_length_needed():
    x = np.zeros(4096)
    with pytest.raises(ValueError) as e:
        velocity_rms(x, 12000.0, (0.1, 10.0))
    msg = str(e.value)
    assert "0.1-10 Hz" in msg and "20 s" in msg and "240000 samples" in msg and "0.341 s (4096 samples)" in msg
    with pytest.raises(ValueError, match=r"10-1000 Hz needs windows of at least 0\.2 s"):
        velocity_rms(np.zeros(4096), 48000.0, (10.0, 1000.0))  # 11.7 Hz bins: 10 Hz unresolved
    assert resolve_band(10.0, 1000.0, 48000.0, 9600).band_hz == (10.0, 1000.0)  # exactly 2 bins
    with pytest.raises(ValueError, match="above Nyquist"):
        acceleration_rms(np.zeros(4096), 1000.0, (600.0, 900.0))


def test_rule_sets_say_what_they_judge_and_skip():
    rs = rule_set("nacelle_tower", 12000.0, 4096)
    assert rs.judged == () and len(rs.skipped) == 2
    assert all("needs windows of at least 20 s" in reason for _c, reason in rs.skipped)
    gb = rule_set("gearbox", 12000.0, 4096)
    assert [(j.criterion.quantity, j.band.band_hz) for j in gb.judged] == [
        ("acceleration", (10.0, 2000.0)), ("velocity", (10.0, 1000.0))]
    assert [c.band_hz for c, _r in gb.skipped] == [(0.1, 10.0)]
    assert rule_set("main_bearing", 12000.0, 4096).judged[0].criterion.quantity == "velocity"
    long = rule_set("nacelle_tower", 1000.0, 32768)  # 32.8 s windows resolve 0.1 Hz
    assert len(long.judged) == 2 and long.skipped == ()
    with pytest.raises(ValueError, match="unknown component"):
        rule_set("blade", 12000.0, 4096)


def test_band_above_nyquist_is_clipped_and_flagged():
    fs, n = 6000.0, 2048
    df = fs / n
    r = acceleration_rms(_sine_g(fs, n, 900 * df, 2.0), fs, (10.0, 5000.0))  # 2637 Hz
    assert r.clipped and r.band_hz == (10.0, 3000.0) and r.unit == "m/s^2"
    assert r.values[0] == pytest.approx(2.0 / math.sqrt(2), rel=1e-9)
    # 3 bins below Nyquist: still exact (closer, the sine's mirror image overlaps it)
    near = acceleration_rms(_sine_g(fs, n, (n // 2 - 3) * df, 2.0), fs, (10.0, 5000.0))
    assert near.values[0] == pytest.approx(2.0 / math.sqrt(2), rel=1e-9)
    gen = rule_set("generator", fs, n)
    assert [(j.criterion.quantity, j.band.band_hz, j.band.clipped) for j in gen.judged] == [
        ("acceleration", (10.0, 3000.0), True), ("velocity", (10.0, 1000.0), False)]
    assert not velocity_rms(np.zeros(n), fs, (10.0, 1000.0)).clipped


# -- zones ---------------------------------------------------------------------------------------


def test_zone_boundaries_belong_to_the_worse_zone():
    assert zone_of(3.4999, 3.5, 5.6) == "B"
    assert zone_of(3.5, 3.5, 5.6) == "C"
    assert zone_of(5.5999, 3.5, 5.6) == "C"
    assert zone_of(5.6, 3.5, 5.6) == "D"
    assert zone_of(0.0, 3.5, 5.6) == "B"


def test_the_table_is_the_one_documented():
    table = {c: [(r.quantity, r.band_hz, r.boundary_bc, r.boundary_cd) for r in rows] for c, rows in ZONE_TABLE.items()}
    assert table == {
        "nacelle_tower": [("acceleration", (0.1, 10.0), 0.3, 0.5), ("velocity", (0.1, 10.0), 60.0, 100.0)],
        "main_bearing": [("acceleration", (0.1, 10.0), 0.3, 0.5), ("velocity", (10.0, 1000.0), 2.0, 3.2)],
        "gearbox": [("acceleration", (0.1, 10.0), 0.3, 0.5), ("acceleration", (10.0, 2000.0), 7.5, 12.0),
                    ("velocity", (10.0, 1000.0), 3.5, 5.6)],
        "generator": [("acceleration", (10.0, 5000.0), 10.0, 16.0), ("velocity", (10.0, 1000.0), 6.0, 10.0)],
    }
    assert tuple(ZONE_TABLE) == COMPONENTS


@pytest.mark.parametrize("v_mm_s,zone", [(3.49, "B"), (3.51, "C"), (5.59, "C"), (5.61, "D")])
def test_measured_sines_land_in_the_right_zone_at_the_boundaries(v_mm_s, zone):
    fs, n, f = 12000.0, 4096, 160.0
    amp = v_mm_s / 1000 * math.sqrt(2) * 2 * np.pi * f
    rs = rule_set("gearbox", fs, n)
    (acc, vel), = rs.measure(_sine_g(fs, n, f, amp))
    assert zone_of(vel, 3.5, 5.6) == zone and zone_of(acc, 7.5, 12.0) == "B"


# -- ZoneRules -----------------------------------------------------------------------------------

FS, N, F = 12000.0, 4096, 160.0


def _window(v_mm_s: float, channel: str = "serial0.ch0", t: int = 0, flags: frozenset = frozenset(),
            fs: float = FS, n: int = N) -> Window:
    amp = v_mm_s / 1000 * math.sqrt(2) * 2 * np.pi * F
    return Window(channel, _sine_g(fs, n, F, amp).astype(np.float32), fs, 1500.0, t, 0, n - 1, flags)


def _rules(**kw) -> ZoneRules:
    args = {"raise_after": 3, "raise_window": 5, "clear_after": 4, "model_version": "m1"}
    args.update(kw)
    return ZoneRules(args.pop("components", {"serial0.*": "gearbox"}), **args)


def test_raises_after_k_of_n_in_zone_d_and_clears_after_m_quiet():
    rules = _rules()
    out = [rules.update_batch([_window(v, t=i)]) for i, v in enumerate([6.1, 1.0, 6.1, 1.0, 1.0, 1.0, 1.0])]
    assert out == [[]] * 7  # never 3 hits in 5 windows
    out = [rules.update_batch([_window(6.1, t=10 + i)]) for i in range(3)]
    assert out[:2] == [[], []] and len(out[2]) == 1
    alert = out[2][0]
    assert set(alert) == {"schema", "id", "time", "state", "severity", "type", "label", "channel", "rpm",
                          "window_t_start_us", "explanation", "model_version", "zone", "component",
                          "measurements"}
    assert alert["state"] == "open" and alert["severity"] == "alarm" and alert["type"] == "iso_zone"
    assert alert["label"] == "zone_D" and alert["zone"] == "D" and alert["component"] == "gearbox"
    assert alert["channel"] == "serial0.ch0" and alert["rpm"] == 1500.0 and alert["window_t_start_us"] == 12
    assert alert["model_version"] == "m1" and len(alert["id"]) == 32 and alert["schema"] == 1
    assert alert["explanation"].startswith(
        "gearbox velocity 6.1 mm/s rms (10-1000 Hz) is in ISO 10816-21 zone D (C/D boundary 5.6 mm/s) "
        "on serial0.ch0 at 1500 rpm")
    vel = next(m for m in alert["measurements"] if m["quantity"] == "velocity")
    assert vel == {"quantity": "velocity", "band_hz": [10.0, 1000.0], "band_clipped": False,
                   "value": pytest.approx(6.1, rel=1e-4), "unit": "mm/s", "boundary_bc": 3.5,
                   "boundary_cd": 5.6, "zone": "D"}
    acc = next(m for m in alert["measurements"] if m["quantity"] == "acceleration")
    assert acc["zone"] == "B" and acc["band_hz"] == [10.0, 2000.0]
    # still in zone D: one open alert per channel, no second one
    assert rules.update_batch([_window(7.0)]) == [] and rules.open_alerts() == [alert]
    quiet = [rules.update_batch([_window(1.0)]) for _ in range(4)]
    assert quiet[:3] == [[], [], []]
    (cleared,) = quiet[3]
    assert cleared["state"] == "cleared" and cleared["id"] == alert["id"] and "cleared_at" in cleared
    assert rules.open_alerts() == []


def test_zone_c_is_a_warning_explained_against_the_bc_boundary():
    rules = _rules(raise_after=1, raise_window=1)
    (alert,) = rules.update_batch([_window(4.2)])
    assert alert["severity"] == "warning" and alert["label"] == "zone_C" and alert["zone"] == "C"
    assert "zone C (B/C boundary 3.5 mm/s)" in alert["explanation"]


def test_the_alert_describes_the_most_frequent_zone_with_its_last_window():
    rules = _rules(raise_after=3, raise_window=3)
    out = rules.update_batch([_window(6.0, t=1), _window(4.0, t=2), _window(7.0, t=3), _window(4.5, t=4)])
    (alert,) = out  # raised at the third hit: two D, one C -> zone D, from the window at t=3
    assert alert["zone"] == "D" and alert["window_t_start_us"] == 3 and "velocity 7 mm/s" in alert["explanation"]


def test_unmatched_channels_are_ignored():
    rules = _rules(raise_after=1, raise_window=1)
    assert rules.update_batch([_window(9.0, channel="serial1.ch0"), _window(9.0, channel="SERIAL0.ch0")]) == []
    assert rules.open_alerts() == [] and rules.component_of("serial1.ch0") is None


def test_flagged_windows_neither_raise_nor_clear_nor_count():
    rules = _rules(raise_after=2, raise_window=2, clear_after=3)
    bad = frozenset({"clipped"})
    assert rules.update_batch([_window(9.0, flags=bad) for _ in range(5)]) == []
    assert rules.update_batch([_window(9.0), _window(9.0, flags=bad)]) == []  # 1 hit, the flagged one not counted
    assert len(rules.update_batch([_window(9.0)])) == 1
    assert rules.update_batch([_window(1.0), _window(1.0)]) == []
    assert rules.update_batch([_window(1.0, flags=bad), _window(9.0, flags=bad)]) == []  # no reset, no clear
    (cleared,) = rules.update_batch([_window(1.0)])  # the third quiet window in a row
    assert cleared["state"] == "cleared"


def test_non_finite_windows_are_not_judged():
    rules = _rules(raise_after=1, raise_window=1)
    w = _window(9.0)
    w.samples[10] = np.nan
    assert rules.update_batch([w]) == [] and rules.judge_batch([w]) == [None]


def test_a_batch_of_mixed_shapes_and_channels_keeps_each_channels_order():
    rules = _rules(components={"serial0.*": "gearbox", "serial1.*": "generator"}, raise_after=2, raise_window=2)
    batch = [
        _window(6.0, "serial0.a", t=1), _window(12.0, "serial1.a", t=1, fs=25600.0, n=8192),
        _window(1.0, "serial0.a", t=2), _window(12.0, "serial1.a", t=2, fs=25600.0, n=8192),
        _window(6.0, "serial0.a", t=3), _window(6.0, "serial0.b", t=3, fs=25600.0, n=8192),
        _window(6.0, "serial0.a", t=4), _window(6.0, "serial0.b", t=4, fs=25600.0, n=8192),
    ]
    out = rules.update_batch(batch)
    assert [(m["channel"], m["component"], m["zone"], m["window_t_start_us"]) for m in out] == [
        ("serial1.a", "generator", "D", 2), ("serial0.a", "gearbox", "D", 4), ("serial0.b", "gearbox", "D", 4)]
    assert "generator velocity 12 mm/s rms" in out[0]["explanation"]
    judged = rules.judge_batch(batch)
    assert [j.zone for j in judged] == ["D", "D", "B", "D", "D", "D", "D", "D"]


def test_a_component_nothing_can_be_judged_for_is_skipped_with_a_logged_reason(caplog):
    rules = _rules(components={"tower.*": "nacelle_tower"}, raise_after=1, raise_window=1)
    with caplog.at_level(logging.WARNING, logger="edge_agent.iso_zones"):
        assert rules.update_batch([_window(500.0, channel="tower.x")]) == []
    assert "needs windows of at least 20 s" in caplog.text
    assert len(rules.skipped()) == 2


def test_first_matching_pattern_wins():
    rules = _rules(components={"serial0.ch0": "generator", "serial0.*": "gearbox"})
    assert rules.component_of("serial0.ch0") == "generator" and rules.component_of("serial0.ch1") == "gearbox"


def test_zone_rules_refuse_an_unknown_component():
    with pytest.raises(ValueError, match="unknown component 'blade'"):
        _rules(components={"x": "blade"})


# -- config --------------------------------------------------------------------------------------


def test_parse_components_builds_the_mapping():
    entries = [{"channels": "serial0.*", "component": "gearbox"}, {"channels": "serial1.ch2", "component": "generator"}]
    assert parse_components(entries) == {"serial0.*": "gearbox", "serial1.ch2": "generator"}
    assert parse_components([]) == {}

    class Entry:  # like config.IsoZoneConfig
        channels = "mb.*"
        component = "main_bearing"
    assert parse_components([Entry()]) == {"mb.*": "main_bearing"}


@pytest.mark.parametrize("entries,message", [
    ([{"channels": "s.*", "component": "gear"}], ("iso_zone[0].component: unknown component 'gear'; one of "
                                                  "nacelle_tower, main_bearing, gearbox, generator")),
    ([{"channels": "", "component": "gearbox"}], "iso_zone[0].channels: must be a non-empty glob pattern, got ''"),
    ([{"channels": "  ", "component": "gearbox"}], "iso_zone[0].channels: must be a non-empty glob pattern"),
    ([{"component": "gearbox"}], "iso_zone[0].channels: missing"),
    ([{"channels": "a"}], "iso_zone[0].component: missing"),
    ([{"channels": 3, "component": "gearbox"}], "iso_zone[0].channels: must be a non-empty glob pattern, got 3"),
    ([{"channels": "a", "component": "gearbox", "axis": "x"}], "iso_zone[0].axis: unknown key"),
    ([{"channels": "a", "component": "gearbox"}, {"channels": "a", "component": "generator"}],
     "iso_zone[1].channels: pattern 'a' given twice"),
    (["serial0.*"], "iso_zone[0]: expected a table"),
])
def test_parse_components_errors_name_the_key(entries, message):
    with pytest.raises(ValueError) as e:
        parse_components(entries)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


# -- in the agent ------------------------------------------------------------------------------

def _sine_blocks(channel, fs, f, accel_g, seconds, block=2048):
    t = np.arange(int(fs * seconds)) / fs
    x = (accel_g * np.sin(2 * np.pi * f * t)).astype(np.float32)
    from edge_agent.window import SampleBlock
    return [SampleBlock(channel, x[i:i + block], fs, i, i, 1500.0) for i in range(0, len(x) - block + 1, block)]


def test_the_agent_raises_an_iso_zone_alert_from_its_config(tmp_path):
    """[[iso_zone]] in the config + [[alert_rule]] iso_zone: a gearbox at 8 mm/s rms (zone D)
    raises one alarm on that channel; a channel the config does not name raises nothing."""
    from dataclasses import replace

    from edge_agent.agent import Agent
    from edge_agent.config import default_config

    cfg = default_config(iso_zone=[{"channels": "gbx.*", "component": "gearbox"}],
                         alert_rule=[{"type": "iso_zone", "raise_after": 2, "raise_window": 3}])
    cfg = replace(cfg, broker=replace(cfg.broker, enabled=False), storage=replace(cfg.storage, dir=str(tmp_path)),
                  window=replace(cfg.window, length=8192, hop=4096))  # 0.32 s: resolves the 10 Hz edge
    agent = Agent(cfg)
    f, v_rms = 120.0, 8.0  # mm/s: acceleration amplitude a = v_rms * sqrt(2) * 2 pi f
    a_g = v_rms * 1e-3 * np.sqrt(2) * 2 * np.pi * f / 9.80665
    results = agent.process_blocks(_sine_blocks("gbx.ch0", 25600.0, f, a_g, 2.0)
                                   + _sine_blocks("other.ch0", 25600.0, f, a_g, 2.0))
    alerts = [m for r in results for m in r.alerts if m["type"] == "iso_zone"]
    assert len(alerts) == 1
    a = alerts[0]
    assert (a["channel"], a["zone"], a["severity"], a["component"]) == ("gbx.ch0", "D", "alarm", "gearbox")
    velocity = next(m for m in a["measurements"] if m["quantity"] == "velocity")
    assert velocity["value"] == pytest.approx(v_rms, rel=0.01)
    assert "zone D" in a["explanation"] and "window_completed_at" in a
    snap = agent.snapshot()
    assert snap["counters"]["open_alerts"] >= 1
    assert not any("velocity" in s for s in snap["iso_zones"]["skipped"])  # only the 0.1-10 Hz row


def test_windows_too_short_for_a_band_are_reported_in_the_status(tmp_path):
    from dataclasses import replace

    from edge_agent.agent import Agent
    from edge_agent.config import default_config

    cfg = default_config(iso_zone=[{"channels": "gbx.*", "component": "gearbox"}])
    cfg = replace(cfg, broker=replace(cfg.broker, enabled=False), storage=replace(cfg.storage, dir=str(tmp_path)))
    agent = Agent(cfg)  # 4096 samples at 25.6 kHz: 0.16 s
    agent.process_blocks(_sine_blocks("gbx.ch0", 25600.0, 120.0, 1.0, 1.0))
    skipped = agent.snapshot()["iso_zones"]["skipped"]
    assert any("gearbox velocity" in s and "needs windows of at least 0.2 s" in s for s in skipped)
