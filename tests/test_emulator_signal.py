import numpy as np
import pytest

from edge_agent.bearing import SKF_6205
from edge_agent.emulator.signal import SCENARIOS, SignalGenerator, SignalSpec


def test_deterministic_for_a_seed():
    a = SignalGenerator(SignalSpec(scenario="inner_race", seed=7, onset_s=0))
    b = SignalGenerator(SignalSpec(scenario="inner_race", seed=7, onset_s=0))
    for _ in range(5):
        np.testing.assert_array_equal(a.next_block(1000)[0], b.next_block(1000)[0])


def test_blocks_join_without_seams():
    # one long block equals the same samples generated in pieces: shaft phase carries over
    healthy = SignalSpec(scenario="healthy", seed=1, noise_g=0.0)
    whole = SignalGenerator(healthy).next_block(4096)[0]
    g = SignalGenerator(healthy)
    pieces = np.concatenate([g.next_block(n)[0] for n in (1000, 1096, 2000)])
    np.testing.assert_allclose(whole, pieces, atol=1e-5)


@pytest.mark.parametrize("scenario,order", [("inner_race", SKF_6205.orders().bpfi), ("outer_race", SKF_6205.orders().bpfo)])
def test_fault_impulses_repeat_at_the_defect_order(scenario, order):
    fs, rpm = 25600.0, 1500.0
    gen = SignalGenerator(SignalSpec(fs=fs, rpm=rpm, scenario=scenario, seed=2, onset_s=0, ramp_s=0.001))
    x = np.concatenate([gen.next_block(8192)[0] for _ in range(8)]).astype(np.float64)
    # envelope spectrum: |analytic signal| of the signal, then its spectrum
    spec = np.fft.rfft(x)
    spec[: int(1500 * len(x) / fs)] = 0  # keep the resonance band
    env = np.abs(np.fft.irfft(spec * 2, len(x)))
    env -= env.mean()
    es = np.abs(np.fft.rfft(env))
    freqs = np.fft.rfftfreq(len(env), 1 / fs)
    band = (freqs > 20) & (freqs < 300)
    peak_hz = freqs[band][np.argmax(es[band])]
    shaft_hz = gen.rpm_at(len(x) / 2 / fs) / 60.0
    assert peak_hz / shaft_hz == pytest.approx(order, rel=0.06)


def test_sensor_scenarios():
    flat = SignalGenerator(SignalSpec(scenario="flatline", onset_s=0.01))
    x = np.concatenate([flat.next_block(1024)[0] for _ in range(4)])
    assert np.ptp(x[1024:]) == 0.0
    clip = SignalGenerator(SignalSpec(scenario="clipping", onset_s=0.0, full_scale_g=1.0))
    y = clip.next_block(25600)[0]
    assert np.max(np.abs(y)) == pytest.approx(1.0) and np.mean(np.abs(y) >= 0.999) > 0.01


def test_unknown_scenario_is_refused():
    with pytest.raises(ValueError, match="unknown scenario"):
        SignalSpec(scenario="tornado")
    assert set(SCENARIOS) >= {"healthy", "inner_race", "outer_race", "ball", "flatline", "clipping", "disconnect"}
