"""The pipeline skeleton end to end, with real parts: emulator source -> windower ->
compiled features -> baseline model -> alert rules -> outbox -> paho -> real mosquitto ->
a subscriber."""
import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.config import default_config
from edge_agent.status_file import read_status


def _config(tmp_path, broker=None, scenario="inner_race", speedup=8.0):
    cfg = default_config()
    src = replace(cfg.sources[0], scenario=scenario, channels=2, speedup=speedup)
    b = replace(cfg.broker, host=broker.host, port=broker.port) if broker else replace(cfg.broker, enabled=False)
    return replace(
        cfg, sources=(src,), broker=b,
        storage=replace(cfg.storage, dir=str(tmp_path / "state")),
        publish=replace(cfg.publish, summary_interval_s=1.0, status_interval_s=0.5),
    )


def _run_for(agent, seconds):
    stop = threading.Event()
    t = threading.Thread(target=agent.run, args=(stop,))
    t.start()
    time.sleep(seconds)
    t0 = time.monotonic()
    stop.set()
    t.join(timeout=10)
    assert not t.is_alive()
    return time.monotonic() - t0


@pytest.mark.broker
def test_fault_alert_and_summaries_reach_a_subscriber(tmp_path, mosquitto, mqtt_subscriber):
    cfg = _config(tmp_path, mosquitto)
    sub = mqtt_subscriber(mosquitto, "pdm/#")
    agent = Agent(cfg)
    # at 8x real time, 4 s covers ~32 s of machine time: healthy baseline, onset at 5 s, ramp
    stop_time = _run_for(agent, 4.0)
    assert stop_time < 5.0
    msgs = sub.wait_for(1, timeout=5)
    by_topic = {}
    for topic, payload, retain in msgs:
        by_topic.setdefault(topic.rsplit("/", 1)[-1], []).append((json.loads(payload), retain))
    alerts = [m for m, _ in by_topic.get("alert", [])]
    assert any(a["state"] == "open" for a in alerts), by_topic.keys()
    assert all(a["schema"] == 1 and a["explanation"] and a["model_version"] for a in alerts)
    assert len(by_topic.get("summary", [])) >= 2
    status = by_topic["status"]
    assert status[0][0]["state"] == "online" and status[0][0]["backend"].startswith("ai_edge_litert")
    assert status[-1][0]["state"] == "offline"  # published on clean shutdown
    # seq: monotonic across alerts and summaries, no gaps, nothing left in the outbox
    seqs = sorted(m["seq"] for kind in ("alert", "summary") for m, _ in by_topic.get(kind, []))
    assert seqs == list(range(1, len(seqs) + 1))
    assert agent.outbox.depth() == 0
    snap = read_status(tmp_path / "state")
    assert snap["state"] == "stopped" and snap["counters"]["windows"] > 100
    assert snap["counters"]["processing_errors"] == 0 and snap["queues"]["samples"]["dropped"] == 0


def test_healthy_machine_raises_no_alert(tmp_path):
    agent = Agent(_config(tmp_path, scenario="healthy", speedup=10.0))
    _run_for(agent, 3.0)
    assert agent.windows_total > 100
    assert agent.alerts_raised == 0
    assert agent.labels["anomaly"] <= 0.02 * agent.windows_total


def test_the_processing_thread_sleeps_while_a_window_gathers_and_loses_no_block(tmp_path):
    """Agent._gather: a live source in real time (2 channels x 25.6 kHz, 1024-sample blocks,
    a window every 4 blocks per channel) is processed in a few rounds per window, not one
    per block, and every block emitted before the stop reaches the windower in order."""
    agent = Agent(_config(tmp_path, scenario="healthy", speedup=1.0))
    rounds: list[int] = []
    seen: list[tuple[str, int]] = []
    process = agent.process_blocks

    def counting(blocks, arrived=None):
        rounds.append(len(blocks))
        seen.extend((b.channel, b.seq) for b in blocks)
        return process(blocks, arrived)

    agent.process_blocks = counting
    _run_for(agent, 4.0)
    per_channel = {}
    for channel, seq in seen:
        per_channel.setdefault(channel, []).append(seq)
    assert len(per_channel) == 2
    for seqs in per_channel.values():
        assert seqs == list(range(0, 1024 * len(seqs), 1024))  # none skipped, none reordered
    windows = sum(agent.windower.windows.values())
    assert windows >= 40 and agent.windows_total == windows
    # without the gather the thread wakes for (about) every block: 8 per window pair here
    assert len(rounds) <= len(seen) / 3, (len(rounds), len(seen))
    assert agent.samples.dropped == 0 and agent.windower.gaps.total() == 0
    # every window's lag, completion -> processed, is kept (the last 1000) and reported
    lag = read_status(tmp_path / "state")["counters"]["window_latency_ms"]
    assert lag["windows"] == min(1000, windows) and 0 <= lag["p50"] <= lag["p99"] <= lag["max"]


class _OneChannelStops:
    """An in-process source at real time: channel "live" sends 256-sample blocks at 25.6 kHz
    for ever; channel "lost" stops one block short of its first window (a sensor unplugged)."""
    name = "two"

    def __init__(self, window: int) -> None:
        self.lost_blocks = window // 256 - 1

    def counters(self) -> dict:
        return {}

    def run(self, emit, stop) -> None:
        from edge_agent.window import SampleBlock
        import numpy as np

        fs, n, rng = 25600.0, 256, np.random.default_rng(0)
        start, k = time.monotonic(), 0
        while not stop.is_set():
            x = (0.1 * rng.standard_normal(n)).astype(np.float32)
            emit(SampleBlock("live", x, fs, round(k * n * 1e6 / fs), k * n))
            if k < self.lost_blocks:
                emit(SampleBlock("lost", x.copy(), fs, round(k * n * 1e6 / fs), k * n))
            k += 1
            ahead = k * n / fs - (time.monotonic() - start)
            if ahead > 0:
                stop.wait(ahead)


def test_a_channel_that_stopped_does_not_make_the_processing_thread_wake_per_block(tmp_path):
    """Agent._gather waits only for channels that sent a block in the last LIVE_CHANNEL_S: a
    channel that stopped one block short of a window would otherwise look due any moment."""
    agent = Agent(_config(tmp_path, scenario="healthy", speedup=1.0))
    agent.sources = [_OneChannelStops(agent.windower.length_at(25600.0)[0])]
    agent._sources_running = 1
    rounds: list[tuple[float, int]] = []
    process = agent.process_blocks

    def counting(blocks, arrived=None):
        rounds.append((time.monotonic(), len(blocks)))
        return process(blocks, arrived)

    agent.process_blocks = counting
    t0 = time.monotonic()
    _run_for(agent, 4.0)
    late = [n for t, n in rounds if t - t0 > 2.0]  # "lost" stopped at ~0.15 s: over a second ago
    assert agent.windower.windows["live"] > 20 and agent.windower.windows["lost"] == 0
    # a window every 8 blocks of "live": a few rounds per window, not one per block
    assert len(late) <= sum(late) / 3, (len(late), sum(late))


def test_bad_block_is_counted_and_processing_goes_on(tmp_path):
    import numpy as np

    from edge_agent.window import SampleBlock

    agent = Agent(_config(tmp_path, scenario="healthy"))
    stop = threading.Event()
    t = threading.Thread(target=agent._process, args=(stop,))
    t.start()
    agent.samples.offer((time.time(), SampleBlock("x", np.zeros(8192, np.float32), 0.0, 0, 0)))  # fs 0: unusable
    good = np.random.default_rng(0).normal(size=8192).astype(np.float32)
    agent.samples.offer((time.time(), SampleBlock("y", good, 25600.0, 0, 0)))
    deadline = time.monotonic() + 5
    while agent.windows_total == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    t.join(5)
    assert agent.bad_blocks == {"x": 1}
    assert agent.windows_total == agent.windower.windows["y"] > 0  # the good block, whole


# -- data quality ---------------------------------------------------------------------------
import numpy as np  # noqa: E402

from edge_agent.emulator.signal import SignalGenerator, SignalSpec  # noqa: E402
from edge_agent.window import SampleBlock  # noqa: E402

FS = 25600.0


def emulator_blocks(scenario, seconds, channels=2, seed=0, block=1024):
    """Blocks of the emulator's signal, as EmulatorSource emits them, without the pacing."""
    gens = [SignalGenerator(SignalSpec(fs=FS, scenario=scenario, seed=seed), i) for i in range(channels)]
    out = []
    for k in range(int(seconds * FS) // block):
        for i, gen in enumerate(gens):
            x, rpm = gen.next_block(block)
            out.append(SampleBlock(f"emu.accel{i}", x, FS, round(k * block * 1e6 / FS), k * block, rpm))
    return out


def feed(agent, blocks, batch=64):
    results = []
    for i in range(0, len(blocks), batch):
        results += agent.process_blocks(blocks[i:i + batch])
    return results


def quality_agent(tmp_path, action="flag"):
    cfg = _config(tmp_path, scenario="healthy")
    return Agent(replace(cfg, quality=replace(cfg.quality, action=action)))


def committed(agent, kind):
    return [json.loads(item.payload) for item in agent.outbox.pending(10**6) if item.kind == kind]


@pytest.mark.parametrize("scenario, flag", [("flatline", "flatline"), ("clipping", "clipping")])
def test_flagged_windows_are_scored_but_raise_no_anomaly_alert(tmp_path, scenario, flag):
    agent = quality_agent(tmp_path, "flag")
    results = feed(agent, emulator_blocks(scenario, 30.0))
    flagged = [r for r in results if r.window.flags]
    per_channel = {ch: sum(1 for r in flagged if r.window.channel == ch) for ch in ("emu.accel0", "emu.accel1")}
    # onset at 5 s: of ~373 windows per channel, all after the onset (~310) are flagged
    assert all(300 <= n <= 312 for n in per_channel.values()), per_channel
    assert {f for r in flagged for f in r.window.flags} == {flag}
    # flagged windows are scored (the baseline was learnt before the onset), flags travel with them
    assert all(r.prediction is not None for r in flagged)
    assert agent.windows_scored == agent.windows_total == len(results)
    # no anomaly alert at all: not from flagged windows, and the lone partial window at the
    # onset is not enough for k-of-n; instead one data_quality alert per channel
    assert all(a["type"] != "anomaly" for r in flagged for a in r.alerts)
    alerts = committed(agent, "alert")
    assert [(a["type"], a["label"], a["state"]) for a in alerts] == [("data_quality", flag, "open")] * 2
    assert {a["channel"] for a in alerts} == {"emu.accel0", "emu.accel1"}
    assert agent.alerts_by_type == {"data_quality": 2}
    # counters in the status snapshot and in the summary
    for dq in (agent.snapshot()["data_quality"], agent.summary()["data_quality"]):
        assert dq["action"] == "flag"
        assert dq["windows_flagged"] == per_channel
        assert dq["flags"] == {ch: {flag: n} for ch, n in per_channel.items()}
        assert dq["windows_unscored"] == {}
        assert dq["windows_checked"] == {ch: len(results) // 2 for ch in per_channel}
        assert dq["open_alerts"] == 2
    assert agent.snapshot()["counters"]["open_alerts"] == 2


def test_drop_mode_keeps_flagged_windows_from_the_model(tmp_path):
    agent = quality_agent(tmp_path, "drop")
    extracted = []
    extract = agent.extractor.extract

    def spy(windows):  # the model only ever sees what the extractor was given
        extracted.extend(windows)
        return extract(windows)

    agent.extractor.extract = spy
    results = feed(agent, emulator_blocks("flatline", 30.0))
    flagged = [r for r in results if r.window.flags]
    assert len(flagged) > 500
    assert all(r.prediction is None for r in flagged)
    assert all(r.prediction is not None for r in results if not r.window.flags)
    assert extracted and not any(w.flags for w in extracted)
    assert len(extracted) == agent.windows_scored == len(results) - len(flagged)
    dq = agent.snapshot()["data_quality"]
    assert dq["action"] == "drop"
    assert dq["windows_unscored"] == dq["windows_flagged"] and sum(dq["windows_unscored"].values()) == len(flagged)
    assert [a["type"] for a in committed(agent, "alert")] == ["data_quality", "data_quality"]
    assert "they are not scored" in committed(agent, "alert")[0]["explanation"]


def test_healthy_windows_are_not_flagged(tmp_path):
    agent = quality_agent(tmp_path)
    results = feed(agent, emulator_blocks("healthy", 20.0))
    assert len(results) > 400
    assert not any(r.window.flags for r in results)
    dq = agent.summary()["data_quality"]
    assert dq["windows_flagged"] == {} and dq["flags"] == {} and dq["open_alerts"] == 0
    assert sum(dq["windows_checked"].values()) == len(results)
    assert committed(agent, "alert") == []


def test_nan_samples_are_flagged_never_scored_and_processing_goes_on(tmp_path):
    agent = quality_agent(tmp_path)
    blocks = emulator_blocks("healthy", 8.0, channels=1)
    feed(agent, blocks[:150])  # baseline learnt
    bad = blocks[150].samples.copy()
    bad[10:20] = np.nan
    results = feed(agent, [replace(blocks[150], samples=bad), *blocks[151:]])
    hit = [r for r in results if "nonfinite" in r.window.flags]
    first, last = blocks[150].seq + 10, blocks[150].seq + 19  # the NaN samples
    hop, length = agent.cfg.window.hop, agent.cfg.window.length
    covering = [k * hop for k in range(last // hop + 1) if k * hop <= last and first < k * hop + length]
    assert [r.window.seq_first for r in hit] == covering and len(hit) == 2
    assert all(r.prediction is None for r in hit)
    assert all(r.prediction is not None for r in results if not r.window.flags)
    dq = agent.snapshot()["data_quality"]
    assert dq["flags"] == {"emu.accel0": {"nonfinite": len(hit)}}
    assert dq["windows_unscored"] == {"emu.accel0": len(hit)}
    assert agent.processing_errors == 0 and agent.alerts_raised == 0


@pytest.mark.parametrize("scenario", ["flatline", "clipping", "healthy"])
def test_agent_run_reports_data_quality_in_status_and_summaries(tmp_path, scenario):
    agent = Agent(_config(tmp_path, scenario=scenario, speedup=10.0))
    _run_for(agent, 3.5)  # ~35 s of machine time; a sensor fault from 5 s on
    snap = read_status(tmp_path / "state")
    dq = snap["data_quality"]
    summaries = committed(agent, "summary")
    assert len(summaries) >= 2
    last = summaries[-1]["data_quality"]
    alerts = committed(agent, "alert")
    assert all(a["type"] != "anomaly" for a in alerts)
    assert sum(dq["windows_checked"].values()) == snap["counters"]["windows"] > 100
    if scenario == "healthy":
        assert dq["windows_flagged"] == {} and last["windows_flagged"] == {} and alerts == []
        return
    assert set(dq["windows_flagged"]) == {"emulator0.accel0", "emulator0.accel1"}
    assert all(n > 50 for n in dq["windows_flagged"].values())
    assert {f for per in dq["flags"].values() for f in per} == {scenario}
    assert set(last["windows_flagged"]) == set(dq["windows_flagged"])
    assert 0 < sum(last["windows_flagged"].values()) <= sum(dq["windows_flagged"].values())
    assert {(a["type"], a["label"]) for a in alerts} == {("data_quality", scenario)}
    assert snap["counters"]["alerts_raised_by_type"] == {"data_quality": 2}


# -- with a model pack ([model] pack) -------------------------------------------------------
TINY_PACK = str(Path(__file__).parent / "data" / "tiny.pack")


def pack_agent(tmp_path, scenario="inner_race"):
    cfg = _config(tmp_path, scenario=scenario)
    return Agent(replace(cfg, model=replace(cfg.model, pack=TINY_PACK)))


def test_agent_with_a_pack_runs_end_to_end_and_publishes_sound_messages(tmp_path):
    agent = pack_agent(tmp_path)
    assert agent.model.version == "tiny-test 0.1.0"
    assert (agent.windower.length, agent.windower.hop) == (4096, 2048)  # the pack's window
    _run_for(agent, 3.0)
    assert agent.processing_errors == 0 and agent.windows_scored > 0
    assert set(agent.labels) <= {"normal", "inner_race", "outer_race", "ball"}
    status = read_status(agent.storage_dir)
    assert status["model"] == "tiny-test 0.1.0" and status["state"] == "stopped"
    for kind in ("alert", "summary"):
        for msg in committed(agent, kind):
            assert msg["schema"] == 1 and json.loads(json.dumps(msg)) == msg
    for alert in committed(agent, "alert"):
        assert alert["model_version"] == "tiny-test 0.1.0" and alert["explanation"]
        if alert["type"] != "data_quality":
            assert alert["type"] in {"inner_race", "outer_race", "ball", "anomaly"}
            assert "rpm" in alert["explanation"] and "tiny-test 0.1.0" in alert["explanation"]
    summaries = committed(agent, "summary")
    assert summaries and all(s["model_version"] == "tiny-test 0.1.0" for s in summaries)


def test_agent_with_a_pack_scores_fed_windows_with_pack_labels(tmp_path):
    agent = pack_agent(tmp_path)
    results = feed(agent, emulator_blocks("inner_race", 20.0, channels=1))
    preds = [r.prediction for r in results if r.prediction is not None]
    assert preds and all(p.label in agent.model.labels and set(p.scores) == set(agent.model.labels) for p in preds)
    alerts = [m for r in results for m in r.alerts if m["type"] != "data_quality"]
    for a in alerts:
        assert a["model_version"] == "tiny-test 0.1.0" and a["type"] in {"inner_race", "outer_race", "ball", "anomaly"}


def test_a_bad_pack_stops_start_up_with_one_line(tmp_path):
    from edge_agent.errors import StartupError

    bad = tmp_path / "bad.pack"
    bad.write_bytes(b"garbage")
    cfg = _config(tmp_path)
    with pytest.raises(StartupError) as exc:
        Agent(replace(cfg, model=replace(cfg.model, pack=str(bad))))
    assert "bad.pack" in str(exc.value) and "\n" not in str(exc.value)


def _bad_packs(tmp_path):
    """One pack per way a pack can be bad at the agent: corrupted (a member's bytes changed
    after signing its hash), truncated (half the file), mismatched (the manifest's tensor spec
    is not the model's), failing its self-test (expected outputs wrong), and not a pack."""
    import io
    import zipfile

    import numpy as np

    from edge_agent.pack import read_pack, write_pack

    tiny = Path(TINY_PACK)
    out = {}
    with zipfile.ZipFile(tiny) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    model = bytearray(entries["model.tflite"])
    model[len(model) // 2] ^= 0x01
    entries["model.tflite"] = bytes(model)
    out["corrupted"] = tmp_path / "corrupted.pack"
    with zipfile.ZipFile(out["corrupted"], "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    out["truncated"] = tmp_path / "truncated.pack"
    out["truncated"].write_bytes(tiny.read_bytes()[: tiny.stat().st_size - 200])
    pack = read_pack(tiny)
    manifest = {k: v for k, v in json.loads(pack.manifest_bytes).items() if k not in ("members", "schema")}
    manifest["tensors"]["input"]["shape"] = [-1, manifest["tensors"]["input"]["shape"][1] + 1]
    out["mismatched"] = tmp_path / "mismatched.pack"
    write_pack(out["mismatched"], manifest, dict(pack.members))
    manifest = {k: v for k, v in json.loads(pack.manifest_bytes).items() if k not in ("members", "schema")}
    ref = dict(np.load(io.BytesIO(pack.members["reference.npz"])))
    ref = {k: (v[:, ::-1].copy() if k.startswith("out_") and v.shape[1] > 1 else v) for k, v in ref.items()}
    buf = io.BytesIO()
    np.savez(buf, **ref)
    out["self-test"] = tmp_path / "selftest.pack"
    write_pack(out["self-test"], manifest, {**pack.members, "reference.npz": buf.getvalue()})
    out["garbage"] = tmp_path / "bad.pack"
    out["garbage"].write_bytes(b"garbage")
    return out


def test_a_refused_pack_keeps_the_current_model(tmp_path):
    agent = pack_agent(tmp_path)
    for kind, bad in _bad_packs(tmp_path).items():
        reason = agent.load_pack(str(bad))
        assert reason and bad.name in reason and "\n" not in reason, (kind, reason)
        assert agent.model.version == "tiny-test 0.1.0", kind
    assert feed(agent, emulator_blocks("inner_race", 2.0, channels=1))  # still scoring with the pack it had
    assert agent.processing_errors == 0 and agent.windows_scored > 0
    bad = tmp_path / "bad.pack"
    baseline = Agent(_config(tmp_path / "b"))
    assert baseline.load_pack(str(bad)) is not None and baseline.model.version == "baseline-0.1"
    assert baseline.load_pack(TINY_PACK) is None and baseline.model.version == "tiny-test 0.1.0"
    assert baseline.windower.length == 4096 and baseline.windower.hop == 2048
    assert feed(baseline, emulator_blocks("healthy", 2.0, channels=1))


def test_alerts_open_at_a_restart_are_taken_over_or_cleared_never_left_open_or_raised_twice(tmp_path):
    """A restarted agent (same storage) takes over the model-rule alerts the last run left
    open (same id, no second raise while the fault persists, cleared by the usual quiet
    windows) and clears the others with cleared_by "restart"."""
    default_pack = str(Path(__file__).resolve().parents[1] / "models" / "default.pack")

    def agent(clear_after):
        cfg = _config(tmp_path)
        return Agent(replace(cfg, model=replace(cfg.model, pack=default_pack),
                             alerts=replace(cfg.alerts, clear_after=clear_after)))

    first = agent(1000)
    feed(first, emulator_blocks("inner_race", 30.0))
    left = {a["id"]: a for a in first.rules.open_alerts()}
    assert {a["type"] for a in left.values()} == {"inner_race"} and len(left) == 2  # one per channel
    others = [a for a in first.quality_problems.open_alerts() + first.drift.open_alerts()]
    log_open = {a["id"] for a in first.alert_log.list(open_only=True)}
    assert set(left) <= log_open

    second = agent(1000)  # the fault goes on: nothing raised a second time
    assert {a["id"] for a in second.rules.open_alerts()} == set(left)
    restart_clears = [m for m in committed(second, "alert") if m.get("cleared_by") == "restart"]
    assert {m["id"] for m in restart_clears} == log_open - set(left)
    assert len(restart_clears) >= len(others)
    results = feed(second, emulator_blocks("inner_race", 30.0, seed=1))
    assert sum(r.prediction.label == "inner_race" for r in results if r.prediction) > 100
    assert second.alerts_by_type.get("inner_race", 0) == 0
    assert {a["id"] for a in second.alert_log.list(open_only=True) if a["type"] == "inner_race"} == set(left)

    third = agent(10)  # repaired machine: the same alerts clear, under their ids
    feed(third, emulator_blocks("healthy", 20.0))
    cleared = {m["id"] for m in committed(third, "alert") if m["state"] == "cleared" and m["type"] == "inner_race"}
    assert cleared == set(left)
    assert not [a for a in third.alert_log.list(open_only=True) if a["type"] == "inner_race"]
    assert third.alerts_by_type.get("inner_race", 0) == 0
