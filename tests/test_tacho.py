import numpy as np
import pytest

from edge_agent.tacho import TachoSpeed


def pulse_train(rpm_of_t, fs, seconds, ppr=1, width=0.2, noise=0.02, seed=0):
    t = np.arange(int(seconds * fs)) / fs
    phase = np.cumsum(rpm_of_t(t) / 60.0) / fs * ppr  # pulses so far
    x = ((phase % 1.0) < width).astype(float) * 5.0  # a 5 V key pulse
    return x + np.random.default_rng(seed).normal(0, noise, len(x))


@pytest.mark.parametrize("ppr", [1, 4])
def test_constant_speed_in_blocks_of_any_size(ppr):
    fs = 25600.0
    x = pulse_train(lambda t: np.full_like(t, 1500.0), fs, 3.0, ppr=ppr)
    tacho = TachoSpeed(pulses_per_rev=ppr)
    for i in range(0, len(x), 1000):  # blocks shorter than a revolution (1024 samples)
        rpm = tacho.feed(x[i : i + 1000], fs)
    assert rpm == pytest.approx(1500.0, rel=2e-3)


def test_follows_a_speed_ramp():
    fs = 12000.0
    tacho = TachoSpeed()
    x = pulse_train(lambda t: 1200.0 + 200.0 * t, fs, 3.0)  # 1200 -> 1800 rpm
    block = 4096
    for i in range(0, len(x) - block + 1, block):
        rpm = tacho.feed(x[i : i + block], fs)
        true = 1200.0 + 200.0 * (i + block) / fs
        if i >= 2 * block:
            assert rpm == pytest.approx(true, rel=0.03)


def test_noise_on_a_flat_top_makes_no_edge_and_a_stop_reads_zero():
    fs = 10000.0
    tacho = TachoSpeed(stale_s=1.0)
    x = pulse_train(lambda t: np.full_like(t, 600.0), fs, 2.0, noise=0.3)  # noisy: 6% of the swing
    assert tacho.feed(x, fs) == pytest.approx(600.0, rel=3e-3)
    assert tacho.feed(np.zeros(int(0.5 * fs)), fs) == pytest.approx(600.0, rel=3e-3)  # still recent
    assert tacho.feed(np.zeros(int(1.0 * fs)), fs) == 0.0  # no edge for > stale_s: stopped


def test_bad_samples_change_nothing():
    tacho = TachoSpeed()
    assert tacho.feed(np.array([np.nan, 1.0]), 1000.0) is None
    with pytest.raises(ValueError):
        TachoSpeed(pulses_per_rev=0)
