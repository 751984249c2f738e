"""The replay's feature worker (edge_agent/feature_worker.py): a forked process computing the
feature vectors ahead. Whole replays with and without it give the same output, byte for
byte; a worker that dies, falls silent or sends other windows is dropped and the replay
computes the rest itself, losing nothing."""
import io
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent import feature_worker, replay_cmd
from edge_agent.emulator.signal import SignalGenerator, SignalSpec
from edge_agent.feature_worker import FeaturesAhead
from edge_agent.features import FeatureExtractor, FeatureSpec
from edge_agent.window import SampleBlock
from edge_agent.windower import Windower
from tests.cli_helpers import edge_agent_cmd

PACK = str(Path(__file__).resolve().parent.parent / "models" / "default.pack")
FS = 12000.0
SECONDS = 90  # 1.08 M samples a channel: over replay's WORKER_MIN_BATCHES
needs_two_cores = pytest.mark.skipif(feature_worker.why_not() is not None,
                                     reason=f"no feature worker here: {feature_worker.why_not()}")


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """Two channels (an inner-race fault and a healthy bearing) of the emulator, 90 s at 12 kHz."""
    n = int(SECONDS * FS)
    chans = []
    for scenario in ("inner_race", "healthy"):
        gen = SignalGenerator(SignalSpec(fs=FS, rpm=1700.0, scenario=scenario, seed=4, onset_s=10.0, ramp_s=20.0))
        chans.append(np.concatenate([gen.next_block(16384)[0] for _ in range(0, n, 16384)])[:n])
    path = tmp_path_factory.mktemp("worker") / "two_channels.npz"
    np.savez(path, data=np.stack(chans, axis=1).astype(np.float32), fs=FS, rpm=1700.0)
    return path


def replay(path: Path, serial: bool) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    assert replay_cmd.run_replay(str(path), model=PACK, jsonl=True, out=out, err=err, serial=serial) == 0
    return out.getvalue(), err.getvalue()


@needs_two_cores
def test_a_replay_with_the_worker_writes_what_a_serial_one_does(recording):
    serial_out, serial_err = replay(recording, serial=True)
    out, err = replay(recording, serial=False)
    lines = out.splitlines()
    assert len(lines) > 900 and out == serial_out  # every window, byte for byte
    assert f"feature worker: {len(lines)} windows' features computed ahead in a second process" in err
    assert "feature worker" not in serial_err
    assert serial_err.split("alert windows:")[1].split("\n")[0] == err.split("alert windows:")[1].split("\n")[0]


@needs_two_cores
def test_a_worker_that_dies_midway_is_replaced_by_this_process(recording, monkeypatch):
    """The worker's batches end in os._exit(3) after two: the replay finishes on its own
    extractor, its output the serial one's, and the summary says what happened."""
    start = FeaturesAhead.start.__func__

    def dying_start(cls, batches, windower, extractor):
        def dying():
            for i, batch in enumerate(batches()):
                if i == 2:
                    os._exit(3)  # in the child: the generator runs there
                yield batch
        return start(cls, dying, windower, extractor)

    monkeypatch.setattr(FeaturesAhead, "start", classmethod(dying_start))
    out, err = replay(recording, serial=False)
    assert out == replay(recording, serial=True)[0]
    assert "feature worker: stopped (the worker ended (exit code 3) before sending window" in err
    assert "the rest were computed here" in err


@needs_two_cores
@pytest.mark.parametrize("damage", ["crc", "nan"])
def test_a_recording_that_fails_its_checks_ends_the_worker_and_writes_nothing(recording, tmp_path, monkeypatch,
                                                                              capsys, damage):
    """The worker forks before the file's CRC-32 and non-finite checks have run (replay_cmd.py):
    when one fails (a flipped byte in the samples; a NaN), the replay ends with its one line
    and exit 2, nothing on stdout, and the worker it started has ended."""
    started = []
    start = FeaturesAhead.start.__func__

    def kept_start(cls, *args):
        ahead = start(cls, *args)
        started.append(ahead)
        return ahead

    monkeypatch.setattr(FeaturesAhead, "start", classmethod(kept_start))
    with np.load(recording) as z:
        data, fs = z["data"].copy(), float(z["fs"])
    if damage == "nan":
        data[len(data) // 2, 1] = np.nan
    path = tmp_path / "damaged.npz"
    np.savez(path, data=data, fs=fs, rpm=1700.0)
    if damage == "crc":
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF  # inside the samples: only the CRC-32 tells
        path.write_bytes(bytes(raw))
    out, err = io.StringIO(), io.StringIO()
    assert replay_cmd.run_replay(str(path), model=PACK, jsonl=True, out=out, err=err) == 2
    assert out.getvalue() == ""
    want = "cannot read 'data': Bad CRC-32 for file 'data.npy'" if damage == "crc" else \
        f"channel 'data1' has 1 non-finite value(s) (NaN or Inf), the first at sample {len(data) // 2}; " \
        "clean the file before replaying it"
    assert err.getvalue() == ""
    assert capsys.readouterr().err == f"edge-agent replay: recording {path}: {want}\n"
    assert len(started) == 1 and started[0]._process.exitcode is not None  # it was started, and has ended


@needs_two_cores
def test_a_worker_that_fails_says_so_in_one_line(recording, monkeypatch, capfd):
    """An exception in the worker (here its third batch's extraction): one line on stderr, no
    child's traceback, exit 1, and the replay completes on its own extractor."""
    class Failing(FeatureExtractor):
        calls = 0

        def extract(self, windows, **kwargs):
            Failing.calls += 1
            if Failing.calls == 3:
                raise MemoryError("no room for the workspace")
            return super().extract(windows, **kwargs)

    monkeypatch.setattr(feature_worker, "FeatureExtractor", Failing)  # the child builds its own from this
    out, err = replay(recording, serial=False)
    child = capfd.readouterr().err
    assert out == replay(recording, serial=True)[0]
    assert "feature worker: stopped (the worker ended (exit code 1)" in err
    assert "edge-agent: feature worker failed (MemoryError('no room for the workspace'))" in child
    assert "Traceback" not in child


def _blocks(channel: str, x: np.ndarray, first_seq: int = 0, block: int = 4096):
    return [SampleBlock(channel, x[i:i + block], FS, round((first_seq + i) * 1e6 / FS), first_seq + i, 1700.0)
            for i in range(0, len(x), block)]


def _windows(blocks):
    w = Windower(4096, 2048, 1700.0)
    return [win for b in blocks for win in w.push(b)]


@needs_two_cores
def test_rows_are_matched_to_windows_and_unscored_ones_skipped():
    x = np.random.default_rng(1).normal(size=120_000).astype(np.float32)
    blocks = _blocks("a", x)
    batches = [blocks[i:i + 4] for i in range(0, len(blocks), 4)]
    ex = FeatureExtractor()
    ahead = FeaturesAhead.start(lambda: iter(batches), Windower(4096, 2048, 1700.0), ex)
    try:
        wins = _windows(blocks)
        asked = wins[::3]  # as if the others were flagged and dropped
        got = ahead.take(asked[:5], ex.spec)
        rest = ahead.take(asked[5:], ex.spec)
        assert ahead.stopped is None and ahead.rows_taken == len(asked)
        np.testing.assert_array_equal(np.concatenate([got, rest]), FeatureExtractor().extract(asked))
    finally:
        ahead.close()


@needs_two_cores
def test_a_worker_with_other_windows_is_dropped():
    """The worker cuts its windows from sample 0, the agent from sample 1000: no window of
    the agent's ever comes, and take says so instead of handing over another window's row."""
    x = np.random.default_rng(2).normal(size=60_000).astype(np.float32)
    ex = FeatureExtractor()
    batches = [_blocks("a", x)]
    ahead = FeaturesAhead.start(lambda: iter(batches), Windower(4096, 2048, 1700.0), ex)
    try:
        assert ahead.take(_windows(_blocks("a", x[1000:], first_seq=1000))[:2], ex.spec) is None
        assert "the worker never sent window 1000 of a (its windows differ)" in ahead.stopped
        assert ahead.take(_windows(batches[0])[:1], ex.spec) is None  # dropped for good
    finally:
        ahead.close()


@needs_two_cores
def test_another_feature_spec_is_not_served():
    x = np.random.default_rng(3).normal(size=30_000).astype(np.float32)
    ex = FeatureExtractor()
    ahead = FeaturesAhead.start(lambda: iter([_blocks("a", x)]), Windower(4096, 2048, 1700.0), ex)
    try:
        other = FeatureSpec(orders=ex.spec.orders, envelope_band_hz=(2000.0, 5000.0))
        assert ahead.take(_windows(_blocks("a", x))[:1], other) is None
        assert ahead.stopped == "the feature spec changed (another model pack)"
    finally:
        ahead.close()


@needs_two_cores
def test_a_silent_worker_is_dropped_after_the_wait(monkeypatch):
    monkeypatch.setattr(feature_worker, "WAIT_S", 0.3)
    x = np.random.default_rng(4).normal(size=30_000).astype(np.float32)

    def stalled():
        time.sleep(30)  # in the child; close() ends it
        yield _blocks("a", x)

    ex = FeatureExtractor()
    ahead = FeaturesAhead.start(stalled, Windower(4096, 2048, 1700.0), ex)
    t = time.monotonic()
    assert ahead.take(_windows(_blocks("a", x))[:1], ex.spec) is None
    assert time.monotonic() - t < 5.0 and ahead.stopped == "no batch from the worker in 0.3 s"
    assert not ahead._process.is_alive()


def test_no_worker_on_one_core(recording, monkeypatch):
    monkeypatch.setattr(feature_worker, "usable_cores", lambda: 1)
    assert feature_worker.why_not() == "one usable core"
    out, err = replay(recording, serial=False)
    assert "feature worker" not in err and len(out.splitlines()) > 900


@needs_two_cores
def test_ctrl_c_ends_the_replay_and_its_worker(recording, tmp_path):
    """SIGINT to the terminal's process group (what Ctrl-C sends): exit 130, no traceback,
    and no worker left behind."""
    longer = tmp_path / "longer.npz"
    data = np.load(recording)["data"]
    np.savez(longer, data=np.tile(data, (12, 1)), fs=FS, rpm=1700.0)  # 18 min: seconds to replay
    p = subprocess.Popen([*edge_agent_cmd(), "replay", str(longer), "--model", PACK, "--jsonl"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    while "window 4096 hop 2048" not in p.stderr.readline():  # the header: the windows start now
        assert p.poll() is None
    time.sleep(0.3)  # the worker is running ahead; ~15 k windows to go
    os.killpg(p.pid, signal.SIGINT)
    assert p.wait(20) == 130
    rest = p.stderr.read()
    assert "Traceback" not in rest and "replay summary" not in rest
    time.sleep(0.3)
    with pytest.raises(ProcessLookupError):
        os.killpg(p.pid, 0)  # nobody left in the group


def test_serial_flag_in_help():
    out = subprocess.run([*edge_agent_cmd(), "replay", "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "--serial" in out and "feature worker" in out
