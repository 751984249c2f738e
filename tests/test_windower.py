import numpy as np
import pytest

from edge_agent.window import SampleBlock
from edge_agent.windower import Windower


def blocks(n_blocks, size, fs=1000.0, start_seq=0, channel="a", t0_us=1_000_000):
    x = np.arange(n_blocks * size, dtype=np.float32) + start_seq
    for i in range(n_blocks):
        seq = start_seq + i * size
        yield SampleBlock(channel, x[i * size : (i + 1) * size], fs, t0_us + round((seq - start_seq) * 1e6 / fs), seq)


def test_windows_have_length_hop_and_exact_content():
    w = Windower(length=256, hop=128, default_rpm=1500.0)
    out = [win for b in blocks(10, 100) for win in w.push(b)]
    # 1000 samples, length 256, hop 128 -> floor((1000 - 256) / 128) + 1 = 6 windows
    assert len(out) == 6
    for i, win in enumerate(out):
        assert win.seq_first == i * 128 and win.seq_last == i * 128 + 255
        np.testing.assert_array_equal(win.samples, np.arange(i * 128, i * 128 + 256, dtype=np.float32))
        assert win.t_start_us == 1_000_000 + round(i * 128 * 1e6 / 1000.0)
        assert win.rpm == 1500.0 and win.samples.flags.c_contiguous


def test_block_larger_than_buffer_is_cut_into_all_its_windows():
    w = Windower(length=256, hop=256, default_rpm=1.0)
    out = w.push(SampleBlock("a", np.arange(2560, dtype=np.float32), 1000.0, 0, 0))
    assert [win.seq_first for win in out] == list(range(0, 2560, 256))


@pytest.mark.parametrize("hop", [1, 100, 256, 512])
def test_the_windows_do_not_depend_on_how_the_stream_is_cut(hop):
    """Blocks of random sizes (empty, shorter than a window, several windows long) give the
    windows a single block gives: x[s : s + length] for s = 0, hop, 2 hop, ..., each its own
    copy (a later push or a change to the block does not touch it)."""
    length, n = 512, 20_000
    x = np.random.default_rng(hop).normal(size=n).astype(np.float32)
    whole = Windower(length, hop, 1.0).push(SampleBlock("a", x.copy(), 1000.0, 0, 0))
    assert [win.seq_first for win in whole] == list(range(0, n - length + 1, hop))
    rng = np.random.default_rng(7)
    cuts = np.unique(np.concatenate([[0, n], rng.integers(0, n, 60), [100, 100, 5000]]))  # 100: an empty block
    w, got = Windower(length, hop, 1.0), []
    for a, b in zip(cuts[:-1], cuts[1:]):
        block = x[a:b].copy()
        got += w.push(SampleBlock("a", block, 1000.0, round(a * 1e3), int(a)))
        block[:] = np.nan  # the source reuses its buffer
    assert [win.seq_first for win in got] == [win.seq_first for win in whole]
    for win in got:
        np.testing.assert_array_equal(win.samples, x[win.seq_first : win.seq_first + length])
        assert win.samples.flags.owndata and win.t_start_us == round(win.seq_first * 1e3)


def test_gap_restarts_windowing_and_is_counted():
    w = Windower(length=256, hop=256, default_rpm=1.0)
    assert w.push(SampleBlock("a", np.zeros(200, np.float32), 1000.0, 0, 0)) == []
    out = w.push(SampleBlock("a", np.ones(300, np.float32), 1000.0, 10**6, 500))  # samples 200..499 missing
    assert w.gaps["a"] == 1 and w.discarded_samples["a"] == 200
    assert len(out) == 1 and out[0].seq_first == 500 and np.all(out[0].samples == 1)


def test_channels_are_independent_and_rpm_follows_source():
    w = Windower(length=256, hop=256, default_rpm=1.0)
    w.push(SampleBlock("a", np.zeros(255, np.float32), 1000.0, 0, 0, rpm=1700.0))
    out_b = w.push(SampleBlock("b", np.zeros(256, np.float32), 1000.0, 0, 0))
    out_a = w.push(SampleBlock("a", np.zeros(1, np.float32), 1000.0, 0, 255))
    assert [x.channel for x in out_b] == ["b"] and out_b[0].rpm == 1.0
    assert [x.channel for x in out_a] == ["a"] and out_a[0].rpm == 1700.0


@pytest.mark.parametrize("length,hop", [(100, 50), (256, 0), (256, 300)])
def test_bad_geometry_is_refused(length, hop):
    with pytest.raises(ValueError):
        Windower(length=length, hop=hop, default_rpm=1.0)


def _block(fs: float, n: int, seq: int = 0, ch: str = "x") -> SampleBlock:
    return SampleBlock(ch, np.arange(seq, seq + n, dtype=np.float32), fs, 0, seq, rpm=1500.0)


@pytest.mark.parametrize("fs, length, hop", [(12000.0, 4096, 2048), (48000.0, 16384, 8192), (25600.0, 8192, 4096),
                                             (6400.0, 2048, 1024), (1000.0, 256, 128), (10.0e6, 65536, 32768)])
def test_a_reference_rate_keeps_the_window_duration_at_every_rate(fs, length, hop):
    w = Windower(length=4096, hop=2048, default_rpm=1500.0, reference_fs=12000.0)
    assert w.length_at(fs) == (length, hop)
    out = w.push(_block(fs, length + 2 * hop))
    assert [len(x.samples) for x in out] == [length] * 3
    assert [x.seq_first for x in out] == [0, hop, 2 * hop]
    assert all(x.seq_last == x.seq_first + length - 1 for x in out)
    assert out[1].samples[0] == hop  # the samples are the stream's, in order


def test_a_rate_change_restarts_with_that_rates_length():
    w = Windower(length=4096, hop=4096, default_rpm=1500.0, reference_fs=12000.0)
    assert len(w.push(_block(12000.0, 4096))) == 1
    out = w.push(_block(48000.0, 16384, seq=4096))  # rate changed: a gap, then 48 kHz windows
    assert w.gaps["x"] == 1 and [len(x.samples) for x in out] == [16384]
    fixed = Windower(length=4096, hop=4096, default_rpm=1500.0)
    assert [len(x.samples) for x in fixed.push(_block(48000.0, 16384))] == [4096] * 4


def test_a_bad_reference_rate_is_refused():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            Windower(length=4096, hop=2048, default_rpm=1.0, reference_fs=bad)


def test_next_due_says_how_much_signal_and_how_many_blocks_complete_the_next_window():
    w = Windower(length=1024, hop=512, default_rpm=1.0)
    assert w.next_due(["a"]) is None  # nothing pushed yet
    # four channels, one 100-sample block each per "frame", as an interleaving serial source
    for b in range(3):
        for c in "abcd":
            assert w.push(SampleBlock(c, np.zeros(100, np.float32), 1000.0, 0, b * 100)) == []
    seconds, n = w.next_due("abcd")
    assert seconds == pytest.approx((1024 - 300) / 1000.0)
    # 724 samples missing: 8 blocks of 100 for the channel that completes (ceil), 7 whole
    # blocks for each other channel (floor): the count errs low, never high
    assert n == 8 + 3 * 7
    # only the channels still sending count; a channel that stopped does not hold the wait
    assert w.next_due(["a"])[1] == 8
    assert w.next_due(["nobody"]) is None
    # after the window, the hop is what is missing
    for b in range(3, 11):
        out = w.push(SampleBlock("a", np.zeros(100, np.float32), 1000.0, 0, b * 100))
    assert len(out) == 1
    seconds, n = w.next_due(["a"])
    assert seconds == pytest.approx((1024 - (1100 - 512)) / 1000.0) and n == 5


def test_next_due_follows_each_channels_rate_and_block_size():
    w = Windower(length=1024, hop=1024, default_rpm=1.0)
    w.push(SampleBlock("fast", np.zeros(256, np.float32), 4000.0, 0, 0))  # 768 missing: 0.192 s
    w.push(SampleBlock("slow", np.zeros(10, np.float32), 100.0, 0, 0))  # 1014 missing: 10.14 s
    seconds, n = w.next_due(["fast", "slow"])
    assert seconds == pytest.approx(0.192)
    assert n == 3 + 1  # fast: ceil(768 / 256); slow: floor(0.192 * 100 / 10)


def test_a_channel_that_stopped_one_block_short_does_not_set_the_pace():
    w = Windower(length=1024, hop=1024, default_rpm=1.0)
    for b in range(9):  # "z" stops 124 samples short of its window
        w.push(SampleBlock("z", np.zeros(100, np.float32), 1000.0, 0, b * 100))
    w.push(SampleBlock("a", np.zeros(100, np.float32), 1000.0, 0, 0))
    assert w.next_due(["a", "z"])[0] == pytest.approx(0.124)  # were "z" still sending
    seconds, n = w.next_due(["a"])  # it is not: "a" alone sets the pace
    assert seconds == pytest.approx(0.924) and n == 10
