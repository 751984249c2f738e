import numpy as np
import pytest

from edge_agent.protocol.frame import Frame, MsgType, SampleFormat, samples_frame
from edge_agent.sources.assembler import FrameAssembler, frame_channels
from edge_agent.windower import Windower


def _frame(seq, n=256, ch=2, fs=25600.0, sensor=1, ts=None, mtype=MsgType.SAMPLES, fmt=SampleFormat.INT16, value=None):
    x = np.full((n, ch), (seq % 1000) if value is None else value, dtype=np.int16)
    t = round(seq * n * 1e6 / fs) if ts is None else ts
    return samples_frame(x, sensor_id=sensor, seq=seq, timestamp_us=t, sample_rate=fs, scale=0.001, msg_type=mtype, sample_format=fmt)


def test_consecutive_frames_give_consecutive_sample_sequences():
    a = FrameAssembler("ser")
    blocks = [b for s in range(3) for b in a.blocks(_frame(s))]
    assert [(b.channel, b.seq) for b in blocks] == [
        ("ser.s1.ch0", 0), ("ser.s1.ch1", 0), ("ser.s1.ch0", 256), ("ser.s1.ch1", 256), ("ser.s1.ch0", 512), ("ser.s1.ch1", 512)]
    assert blocks[2].samples.dtype == np.float32 and blocks[2].samples[0] == np.float32(0.001)
    assert blocks[0].full_scale == pytest.approx(32.767)
    assert a.seq_gaps == 0 and a.frames["samples"] == 3


def test_gap_is_counted_and_breaks_the_window():
    a = FrameAssembler("ser")
    w = Windower(length=512, hop=512, default_rpm=1.0)
    for s in (0, 1, 4, 5):  # frames 2 and 3 lost
        for b in a.blocks(_frame(s, ch=1)):
            w.push(b)
    assert a.seq_gaps == 1 and a.frames_missing == 2
    # frames 0-1 and 4-5 make one window each; the windower saw the jump and joined nothing across it
    assert w.windows["ser.s1.ch0"] == 2 and w.gaps["ser.s1.ch0"] == 1
    a.blocks(_frame(5, ch=1))
    assert a.duplicates == 1


def test_seq_wraps_around():
    a = FrameAssembler("ser")
    assert a.blocks(_frame(2**32 - 1, ch=1, ts=0)) and a.blocks(_frame(0, ch=1, ts=10000))
    assert a.seq_gaps == 0 and a.duplicates == 0


def test_timestamp_jump_and_rate_mismatch_are_counted():
    a = FrameAssembler("ser", expected_fs=25600.0)
    a.blocks(_frame(0, ts=0))
    a.blocks(_frame(1, ts=10_000 + 50_000))
    a.blocks(_frame(2, fs=12800.0, ts=100_000))
    assert a.timestamp_jumps >= 1 and a.rate_mismatches == 1


def test_speed_and_temperature_frames():
    a = FrameAssembler("ser")
    speed = samples_frame(np.array([1500.0, 1510.0], np.float32), sensor_id=9, seq=0, timestamp_us=0,
                          sample_rate=10.0, sample_format=SampleFormat.FLOAT32, msg_type=MsgType.SPEED)
    temp = samples_frame(np.array([41.5], np.float32), sensor_id=9, seq=0, timestamp_us=0, sample_rate=1.0,
                         sample_format=SampleFormat.FLOAT32, msg_type=MsgType.TEMPERATURE)
    assert a.blocks(speed) == [] and a.blocks(temp) == []
    assert a.rpm == 1505.0 and a.temperature_c == {9: 41.5}
    assert a.blocks(_frame(0))[0].rpm == 1505.0
    assert a.blocks(Frame(type=MsgType.PONG, sensor_id=9, payload=b"\x01\x00\x00\x00")) == [] and a.replies[-1].type == MsgType.PONG


def test_mcu_restart_is_a_restart_not_a_flood_of_duplicates():
    a = FrameAssembler("ser")
    w = Windower(length=512, hop=512, default_rpm=1.0)
    for s in range(1000, 1004):
        for b in a.blocks(_frame(s, ch=1)):
            w.push(b)
    a.blocks(_frame(1001, ch=1))  # a late duplicate: dropped
    after = [b for s in range(0, 4) for b in a.blocks(_frame(s, ch=1, ts=10**9 + s * 10000))]  # the MCU rebooted
    assert len(after) == 4 and a.restarts == 1 and a.duplicates == 1
    for b in after:
        w.push(b)
    assert w.gaps["ser.s1.ch0"] == 1  # nothing joined across the reboot
    assert w.windows["ser.s1.ch0"] == 4


def test_tacho_channel_gives_the_speed_and_is_not_vibration():
    fs, n, rpm = 25600.0, 256, 1500.0
    a = FrameAssembler("ser", tacho_channel=1, pulses_per_rev=2)
    t = np.arange(40 * n) / fs
    key = (((t * rpm / 60 * 2) % 1.0) < 0.25) * 20000  # 2 pulses a turn, int16 counts
    vib = np.random.default_rng(0).normal(0, 1000, len(t))
    x = np.stack([vib, key], axis=1).astype(np.int16)
    blocks = []
    for s in range(40):
        blocks += a.blocks(samples_frame(x[s * n : (s + 1) * n], sensor_id=2, seq=s, timestamp_us=round(s * n * 1e6 / fs),
                                         sample_rate=fs, scale=0.001))
    assert {b.channel for b in blocks} == {"ser.s2.ch0"}  # the tachometer channel is not analysed
    assert blocks[-1].rpm == pytest.approx(rpm, rel=2e-3) and a.rpm == blocks[-1].rpm


@pytest.mark.parametrize("fmt, dtype", [(SampleFormat.INT16, np.int16), (SampleFormat.INT32, np.int32),
                                        (SampleFormat.FLOAT32, np.float32)])
@pytest.mark.parametrize("scale", [1.0, 0.001, -3.7e-5])
def test_frame_channels_are_numpys_values_bit_for_bit(fmt, dtype, scale):
    """ext/frames.pyx against the NumPy expression it replaces (Frame.samples, then a column)."""
    rng = np.random.default_rng(int(fmt) * 10 + int(scale * 1000))
    if dtype is np.float32:
        raw = rng.normal(0, 1e3, size=(300, 3)).astype(np.float32)
        raw[5, 1], raw[7, 2], raw[9, 0] = np.nan, np.inf, -0.0
    else:
        info = np.iinfo(dtype)
        raw = rng.integers(info.min, info.max, size=(300, 3), endpoint=True, dtype=dtype)
        raw[0] = [info.min, info.max, 0]
    f = samples_frame(raw, sensor_id=1, seq=0, timestamp_us=0, sample_rate=1e4, scale=scale, sample_format=fmt)
    got = frame_channels(f)
    want = f.samples()
    assert got.shape == (3, 300) and got.dtype == np.float32 and got.flags.c_contiguous
    for c in range(3):
        assert np.ascontiguousarray(want[:, c]).tobytes() == got[c].tobytes()


def test_frame_channels_refuse_a_payload_that_does_not_fit():
    f = _frame(0, n=4, ch=2)
    bad = Frame(**{**{k: getattr(f, k) for k in Frame.__slots__}, "n_samples": 5})
    with pytest.raises(ValueError, match="does not hold 5 x 2"):
        frame_channels(bad)
