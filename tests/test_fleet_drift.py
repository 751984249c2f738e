"""``edge-agent fleet drift`` (edge_agent/fleet_drift.py): the fleet merge of the gateways'
summary sketches, checked against the raw values they were built from; live from a real
mosquitto; every kind of bad input skipped with its reason; usage errors in one line.

The summaries are built exactly as the agent builds them (FeatureSketches with the pack's PSI
bins, sketches.encode, drift.evaluate), then go through JSON text, as on the wire."""
import base64
import json
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

datasketches = pytest.importorskip("datasketches", reason="datasketches (a runtime dependency) is not installed")

from cli_helpers import edge_agent_cmd, run_cli  # noqa: E402
from edge_agent.drift import (  # noqa: E402
    DriftThresholds, Profile, evaluate, ks_exact, make_profile, psi_exact,
)
from edge_agent.fleet_drift import FleetDrift, PackRef, Reporter, Thresholds, load_packs, read_file  # noqa: E402
from edge_agent.pack import read_pack, write_pack  # noqa: E402
from edge_agent.sketches import FeatureSketches, Regimes, encode  # noqa: E402

K = 200
STATED_ERROR = 0.0165  # DataSketches' normalised rank error at k = 200, 99% confidence
NAMES = ["a", "b"]
REGIMES = Regimes((0.0, 1200.0))  # rpm_0-1200, rpm_1200+
SLOW, FAST = "rpm_0-1200", "rpm_1200+"
MODEL = "fleet-test 1.0.0"
TINY = Path(__file__).parent / "data" / "tiny.pack"
DEVICES = 60
SUMMARIES_PER_DEVICE = 3
WINDOWS = 150  # per regime and summary
DRIFTED = set(range(20))  # feature a shifted by 2 sd in the fast regime, in every summary
DRIFTED_EARLIER_ONLY = 20  # drifted in its first two summaries, healthy in its latest
T0 = 1_795_000_000.0


def _reference():
    rng = np.random.default_rng(11)
    ref = np.column_stack([rng.normal(0, 1, 5000), rng.normal(5, 2, 5000)])
    return ref, make_profile(ref, NAMES, monitored=NAMES, population="healthy reference")


REF, PROFILE = _reference()
PROFILE_OBJ = Profile.from_manifest(PROFILE, NAMES)


def _pack(tmp_path, name="fleet-test", version="1.0.0", profile=PROFILE):
    tiny = read_pack(TINY)
    manifest = {k: v for k, v in tiny.manifest.items() if k not in ("members", "schema")}
    manifest.update(name=name, version=version, drift_profile=profile,
                    features=dict(manifest["features"], names=NAMES))
    path = tmp_path / f"{name}-{version}.pack"
    write_pack(path, manifest, tiny.members)
    return path


def _device_name(i):
    return f"farm-{'a' if i < DEVICES // 2 else 'b'}", f"wtg-{i:02d}"


def summary(site, device, seq, t, rows_by_rpm, k=K, model=MODEL, bins=True):
    """One summary as the agent publishes it (agent.summary + drift_monitor.summarize), as JSON."""
    edges = {f: PROFILE["features"][f]["edges"] for f in NAMES} if bins else None
    fs = FeatureSketches(NAMES, k, REGIMES, edges)
    for rpm, x in rows_by_rpm.items():
        fs.update(x, np.full(len(x), rpm))
    taken = fs.take()
    doc = {"schema": 1, "time": t, "interval_s": 60, "site": site, "device": device, "seq": seq,
           "agent_version": "0.1.0", "model_version": model,
           "windows_per_label": {"normal": int(sum(len(x) for x in rows_by_rpm.values()))},
           "sketches": encode(taken, REGIMES, k),
           "drift": evaluate(taken, PROFILE_OBJ, DriftThresholds(min_windows=50)),
           "data_quality": {}, "errors": {"processing": 0}}
    return json.loads(json.dumps(doc, separators=(",", ":")))


def fleet(seed=0, drifted=DRIFTED, shift=2.0):
    """60 devices x 3 summaries; the raw float32 values of every (regime, feature)."""
    rng = np.random.default_rng(seed)
    out, raw = [], {(r, f): [] for r in (SLOW, FAST) for f in NAMES}
    for i in range(DEVICES):
        site, dev = _device_name(i)
        loc = rng.normal(0, 0.05)  # each machine a little different
        for s in range(SUMMARIES_PER_DEVICE):
            slow = np.column_stack([rng.normal(loc, 1, WINDOWS), rng.normal(5, 2, WINDOWS)])
            fast = np.column_stack([rng.normal(loc, 1, WINDOWS), rng.normal(5, 2, WINDOWS)])
            if i in drifted or (i == DRIFTED_EARLIER_ONLY and s < SUMMARIES_PER_DEVICE - 1):
                fast[:, 0] += shift
            rows = {800.0: slow.astype(np.float32), 1500.0: fast.astype(np.float32)}
            for (rpm, x), regime in zip(rows.items(), (SLOW, FAST)):
                for j, f in enumerate(NAMES):
                    raw[(regime, f)].append(x[:, j])
            out.append(summary(site, dev, s + 1, T0 + 60 * s + i * 0.01, rows))
    return out, {key: np.concatenate(v) for key, v in raw.items()}


@pytest.fixture(scope="module")
def simulated():
    return fleet()


def _packs(tmp_path):
    path = _pack(tmp_path)
    return {MODEL: PackRef(str(path), MODEL, PROFILE_OBJ)}, path


# ----------------------------------------------------------------------------- (1) files
def test_merged_fleet_equals_the_raw_values_within_the_stated_error_and_counts_exactly(simulated, tmp_path, capsys):
    summaries, raw = simulated
    packs, _ = _packs(tmp_path)
    m = FleetDrift(packs, Thresholds(min_windows=100))
    for i, s in enumerate(summaries):
        assert m.add(s, f"summary {i}")
    assert capsys.readouterr().err == ""  # nothing skipped, nothing said
    res = m.result()
    assert res["summaries"] == DEVICES * SUMMARIES_PER_DEVICE and res["devices"] == DEVICES
    assert res["skipped"] == {} and [(g["model_version"], g["regime"]) for g in res["groups"]] == [(MODEL, SLOW), (MODEL, FAST)]
    probe = np.linspace(0.001, 0.999, 999)
    for g in res["groups"]:
        group = m.groups[(MODEL, g["regime"])]
        assert g["devices"] == DEVICES and g["summaries"] == DEVICES * SUMMARIES_PER_DEVICE
        assert g["windows"] == DEVICES * SUMMARIES_PER_DEVICE * WINDOWS and g["k"] == K
        for f in NAMES:
            values = raw[(g["regime"], f)]
            allv = np.sort(values)
            sk = group.features[f].sketch
            assert sk.n == len(values) == g["features"][f]["n"]
            # the merged sketch's ranks against the exact ranks of all 27,000 values
            qs = np.quantile(allv, probe).astype(np.float32)
            exact_rank = np.searchsorted(allv, qs, side="left") / len(allv)
            est_rank = np.asarray(sk.get_cdf(qs.tolist(), inclusive=False))[:-1]
            assert np.max(np.abs(est_rank - exact_rank)) <= STATED_ERROR
            for q, key in zip((0.05, 0.5, 0.95), ("p05", "p50", "p95")):
                r = np.searchsorted(allv, np.float32(g["features"][f][key]), side="right") / len(allv)
                assert abs(r - q) <= STATED_ERROR, (g["regime"], f, key)
            # the bin counts are exact: the totals of the raw values in the pack's bins
            inner = np.asarray(PROFILE["features"][f]["edges"])[1:-1]
            exact_counts = np.bincount(np.searchsorted(inner, values.astype(np.float64), side="right"),
                                       minlength=len(inner) + 1)
            got = g["features"][f]
            assert got["bin_counts"] == exact_counts.tolist()
            assert got["psi_from"] == "bin_counts"
            assert got["psi"] == pytest.approx(psi_exact(values, PROFILE["features"][f]), abs=1e-12)
            assert abs(got["ks"] - ks_exact(values, REF[:, NAMES.index(f)].astype(np.float32))) <= 0.02
            level = "drift" if got["psi"] >= 0.25 else "warn" if got["psi"] >= 0.1 else "ok"
            assert got["status"] == level
    slow, fast = res["groups"]
    assert slow["status"] == "ok" and slow["drift_devices"] == []
    # 20 of 60 turbines shifted: the fleet's feature a drifts; b does not
    assert fast["features"]["a"]["status"] == "drift" and fast["features"]["b"]["status"] == "ok"
    assert fast["status"] == "drift"
    # which turbines: the devices whose own latest verdict was drift (not wtg-20: healthy in its latest)
    assert fast["drift_devices"] == sorted("/".join(_device_name(i)) for i in DRIFTED)
    assert fast["device_verdicts"]["drift"] == len(DRIFTED) and sum(fast["device_verdicts"].values()) == DEVICES


def test_a_fleet_can_be_ok_while_some_turbines_drift(tmp_path):
    """12 of 60 turbines shifted by 1.5 sd: the fleet's PSI stays below warn, and the list of
    turbines is what shows them (docs/FLEET.md)."""
    few = set(range(12))
    summaries, raw = fleet(seed=1, drifted=few, shift=1.5)
    packs, _ = _packs(tmp_path)
    m = FleetDrift(packs, Thresholds(min_windows=100))
    assert all(m.add(s, "s") for s in summaries)
    fast = m.result()["groups"][1]
    assert fast["regime"] == FAST and fast["features"]["a"]["psi"] < 0.1 and fast["status"] == "ok"
    assert fast["features"]["a"]["psi"] == pytest.approx(psi_exact(raw[(FAST, "a")], PROFILE["features"]["a"]), abs=1e-12)
    assert fast["drift_devices"] == sorted("/".join(_device_name(i)) for i in few)


def test_the_command_merges_files_and_stdin_into_the_same_result(simulated, tmp_path):
    summaries, raw = simulated
    _, pack = _packs(tmp_path)
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps(s) + "\n" for s in summaries[:90]))
    array = tmp_path / "b.json"
    array.write_text(json.dumps(summaries[90:150], indent=1))  # a JSON array of summaries
    single = tmp_path / "c.json"
    single.write_text(json.dumps(summaries[150], indent=2))  # one pretty-printed summary
    sub = tmp_path / "d.log"  # mosquitto_sub -v: "topic payload" lines
    sub.write_text("".join(f"pdm/{s['site']}/{s['device']}/summary {json.dumps(s)}\n" for s in summaries[151:170]))
    stdin = "".join(json.dumps(s) + "\n" for s in summaries[170:])
    r = run_cli("fleet", "drift", str(jsonl), str(array), str(single), str(sub), "-", "--pack", str(pack),
                "--min-windows", "100", "--json", input=stdin)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "skipped" not in r.stderr
    res = json.loads(r.stdout)
    assert res["summaries"] == len(summaries) and res["devices"] == DEVICES and res["skipped"] == {}
    fast = next(g for g in res["groups"] if g["regime"] == FAST)
    values = raw[(FAST, "a")]
    assert fast["features"]["a"]["psi"] == pytest.approx(psi_exact(values, PROFILE["features"]["a"]), abs=1e-12)
    assert fast["drift_devices"] == sorted("/".join(_device_name(i)) for i in DRIFTED)
    assert res["packs"] == {MODEL: str(pack)}

    table = run_cli("fleet", "drift", str(jsonl), "--pack", str(pack), "--min-windows", "100")
    assert table.returncode == 0, table.stderr
    out = table.stdout
    assert "fleet drift: 90 summaries from 30 devices" in out
    assert f"{MODEL}  {FAST} (>= 1200 rpm): 30 devices" in out and "DRIFT" in out
    assert "bin counts (exact)" in out and "drift on: farm-a/wtg-00, farm-a/wtg-01" in out


def test_without_bin_counts_the_fleet_psi_comes_from_the_merged_sketch(tmp_path):
    rng = np.random.default_rng(4)
    packs, _ = _packs(tmp_path)
    docs, values = [], []
    for i in range(20):
        x = np.column_stack([rng.normal(0.4, 1, 400), rng.normal(5, 2, 400)]).astype(np.float32)
        docs.append(summary("farm-c", f"wtg-{i}", 1, T0, {1500.0: x}, bins=i != 7))  # one device without counts
        values.append(x[:, 0])
    m = FleetDrift(packs)
    assert all(m.add(d, "s") for d in docs)
    got = m.result()["groups"][0]["features"]["a"]
    exact = psi_exact(np.concatenate(values), PROFILE["features"]["a"])
    assert got["psi_from"].startswith("sketch (bin counts missing from farm-c/wtg-7")
    assert "bin_counts" not in got
    assert abs(got["psi"] - exact) <= max(0.03, 0.03 * exact)


def test_without_a_pack_only_quantiles_and_several_model_versions_stay_apart(tmp_path):
    rng = np.random.default_rng(5)
    docs = [summary("farm-a", f"wtg-{i}", 1, T0, {500.0: rng.normal(size=(300, 2)).astype(np.float32)},
                    model=MODEL if i % 2 else "fleet-test 2.0.0") for i in range(6)]
    m = FleetDrift()
    for d in docs:
        assert m.add(d, "s")
    groups = m.result()["groups"]
    assert [(g["model_version"], g["devices"], g["status"]) for g in groups] == [
        (MODEL, 3, "no_reference"), ("fleet-test 2.0.0", 3, "no_reference")]
    assert "psi" not in groups[0]["features"]["a"] and groups[0]["features"]["a"]["n"] == 900


def test_since_and_last_leave_older_summaries_out(simulated, tmp_path):
    summaries, _ = simulated
    f = tmp_path / "s.jsonl"
    f.write_text("".join(json.dumps(s) + "\n" for s in summaries))
    since = T0 + 60 * (SUMMARIES_PER_DEVICE - 1)  # only the latest summary of each device
    r = run_cli("fleet", "drift", str(f), "--since", str(since), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["summaries"] == DEVICES and res["filtered"] == DEVICES * (SUMMARIES_PER_DEVICE - 1)
    assert "left out (--since/--last)" in r.stderr
    later = datetime.fromtimestamp(T0 + 3600, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")  # no zone: UTC
    iso = run_cli("fleet", "drift", str(f), "--since", later, "--json")
    assert iso.returncode == 2 and json.loads(iso.stdout)["summaries"] == 0  # all older than that
    assert "nothing usable was merged" in iso.stderr
    now = time.time()
    recent = tmp_path / "recent.jsonl"
    recent.write_text(json.dumps(dict(summaries[0], time=now - 10 * 86400)) + "\n"
                      + json.dumps(dict(summaries[1], time=now - 60)) + "\n")
    last = run_cli("fleet", "drift", str(recent), "--last", "7d", "--json")
    assert last.returncode == 0 and (json.loads(last.stdout)["summaries"], json.loads(last.stdout)["filtered"]) == (1, 1)


def test_rows_are_one_line_per_summary_regime_and_feature_and_merge_back(simulated, tmp_path):
    summaries, raw = simulated
    f = tmp_path / "s.jsonl"
    f.write_text("".join(json.dumps(s) + "\n" for s in summaries[:30]))
    r = run_cli("fleet", "drift", str(f), "--rows")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 30 * 2 * len(NAMES)
    assert set(rows[0]) == {"time", "site", "device", "seq", "model_version", "regime", "rpm_lo", "rpm_hi", "windows",
                            "feature", "k", "sketch", "bin_counts"}
    merged = datasketches.kll_floats_sketch(K)  # what Druid's/Spark's merge does with the rows
    for row in rows:
        if row["regime"] == FAST and row["feature"] == "a":
            merged.merge(datasketches.kll_floats_sketch.deserialize(base64.b64decode(row["sketch"])))
    assert merged.n == 30 * WINDOWS


# ----------------------------------------------------------------------------- (2) broker
def _publish(broker, messages):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-fleet-publisher")
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        for topic, payload in messages:
            c.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def test_live_summaries_from_a_real_mosquitto(mosquitto, tmp_path):
    _, pack = _packs(tmp_path)
    rng = np.random.default_rng(9)
    messages = []
    for i in range(5):
        for s in range(2):
            fast = np.column_stack([rng.normal(1.5 if i == 0 else 0, 1, 300), rng.normal(5, 2, 300)])
            doc = summary("farm-a", f"wtg-{i}", s + 1, T0 + 60 * s, {1500.0: fast.astype(np.float32)})
            if i == 4:  # older agents: site and device only in the topic
                del doc["site"], doc["device"]
            messages.append((f"pdm/farm-a/wtg-{i}/summary", json.dumps(doc)))
    messages.append(("pdm/farm-a/wtg-9/summary", b"\x00garbage"))
    messages.append(("pdm/farm-a/wtg-0/status", json.dumps({"schema": 1, "state": "online"})))  # not a summary
    proc = subprocess.Popen(
        [*edge_agent_cmd(), "fleet", "drift", "--broker", f"{mosquitto.host}:{mosquitto.port}", "--prefix", "pdm",
         "--seconds", "3", "--pack", str(pack), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines, listening = [], threading.Event()

    def read_err():
        for line in proc.stderr:
            err_lines.append(line)
            if "listening on" in line:
                listening.set()

    reader = threading.Thread(target=read_err, daemon=True)
    reader.start()
    try:
        assert listening.wait(20), "".join(err_lines)
        _publish(mosquitto, messages)
        out = proc.stdout.read()
        assert proc.wait(30) == 0, "".join(err_lines)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    err = "".join(err_lines)
    assert "Traceback" not in err
    res = json.loads(out)
    assert res["summaries"] == 10 and res["devices"] == 5 and res["skipped"] == {"json": 1}
    assert "skipped topic pdm/farm-a/wtg-9/summary: not JSON" in err and "11 message(s) received" in err
    g = res["groups"][0]
    assert g["regime"] == FAST and g["windows"] == 3000 and g["devices"] == 5
    assert g["drift_devices"] == ["farm-a/wtg-0"]


def test_login_to_a_broker_that_requires_it(mosquitto_binary, tmp_path):
    import shutil

    from edge_agent.local_broker import LocalBroker

    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.skip("mosquitto_passwd is not installed")
    subprocess.run([passwd, "-c", "-b", str(tmp_path / "passwd"), "fleet", "s3cret"], check=True, capture_output=True)
    good, bad = tmp_path / "good.pw", tmp_path / "bad.pw"
    good.write_text("s3cret\n")
    bad.write_text("guess\n")
    broker = LocalBroker(tmp_path / "broker", extra_conf=f"allow_anonymous false\npassword_file {tmp_path / 'passwd'}")
    broker.start()
    try:
        base = ["fleet", "drift", "--broker", f"{broker.host}:{broker.port}", "--seconds", "0.5"]
        anonymous = run_cli(*base)
        wrong = run_cli(*base, "--username", "fleet", "--password-file", str(bad))
        right = run_cli(*base, "--username", "fleet", "--password-file", str(good))
    finally:
        broker.stop()
    for r in (anonymous, wrong):
        assert r.returncode == 2 and r.stderr.strip() == "edge-agent fleet drift: the broker refused the connection: Not authorized"
    assert "listening on" in right.stderr and "0 message(s) received" in right.stderr
    assert right.returncode == 2 and "nothing usable was merged" in right.stderr  # connected, but no summaries came


def test_an_unreachable_broker_is_one_line_and_exit_2():
    from edge_agent.local_broker import free_port

    r = run_cli("fleet", "drift", "--broker", f"127.0.0.1:{free_port()}", "--seconds", "1")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to 127.0.0.1:" in lines[0] and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- (3) bad input
def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _bad_inputs(good):
    """(line, reason, what the stderr line says) for every kind of unusable input."""
    def variant(**changes):
        d = json.loads(json.dumps(good))
        for path, value in changes.items():
            target = d
            keys = path.split(".")
            for key in keys[:-1]:
                target = target[key]
            if value is DELETE:
                del target[keys[-1]]
            else:
                target[keys[-1]] = value
        return json.dumps(d)

    feat = f"sketches.regimes.{FAST}.features.a"
    k100 = datasketches.kll_floats_sketch(100)
    k100.update(np.arange(500, dtype=np.float32))
    doubles = datasketches.kll_doubles_sketch(200)
    for v in range(100):
        doubles.update(float(v))
    rng = np.random.default_rng(1)
    other_k = summary("farm-z", "wtg-k", 1, T0, {1500.0: rng.normal(size=(300, 2)).astype(np.float32)}, k=100)
    other_model = summary("farm-z", "wtg-m", 1, T0, {1500.0: rng.normal(size=(300, 2)).astype(np.float32)},
                          model="fleet-test 9.9.9")
    return [
        ("this is not json", "json", "not JSON"),
        ("[1, 2, 3]", "json", "a JSON list, not an object"),
        ("[" * 100000, "json", "nested too deeply"),
        (variant(schema=2), "schema", "schema 2, this reads 1"),
        (variant(model_version=DELETE), "field", "model_version None"),
        (variant(time=float("nan")), "field", "time nan"),
        (variant(site=DELETE, device=DELETE), "field", "no site/device"),
        (variant(sketches=DELETE), "no_sketches", "drift monitoring disabled"),
        (variant(**{"sketches.kind": "tdigest"}), "sketch_format", "kind 'datasketches-kll-floats'"),
        (variant(**{f"sketches.regimes.{FAST}.windows": -3}), "sketch_format", "windows -3"),
        (variant(**{feat: "@@@not base64@@@"}), "sketch", "not base64"),
        (variant(**{feat: _b64(b"hello world, no sketch")}), "sketch", "not a DataSketches KLL float sketch"),
        (variant(**{feat: _b64(doubles.serialize())}), "sketch", "not a DataSketches KLL float sketch"),
        (variant(**{feat: _b64(k100.serialize())}), "k", "the sketch has k 100, the summary says 200"),
        (json.dumps(other_k), "k", "k 100, but the fleet's k is 200 (that of the first merged summary"),
        (json.dumps(other_model), "model", "model version 'fleet-test 9.9.9' has no --pack"),
        (variant(**{f"sketches.regimes.{FAST}.bin_counts.a": [1, -2, "x"]}), "bin_counts", "bin_counts.a"),
        (json.dumps(good), "duplicate", "already merged"),
        ('{"schema": 1, "pad": "' + "x" * (16 * 1024 * 1024) + '"}', "oversize", "a summary is at most"),
    ]


class _Delete:
    pass


DELETE = _Delete()


def test_every_kind_of_bad_input_is_skipped_with_its_reason_and_counted(simulated, tmp_path):
    summaries, _ = simulated
    _, pack = _packs(tmp_path)
    good = summaries[:6]
    bad = _bad_inputs(good[0])
    f = tmp_path / "mixed.jsonl"
    lines = [json.dumps(good[0])] + [line for line, _, _ in bad] + [json.dumps(s) for s in good[1:]]
    f.write_text("\n".join(lines) + "\n")
    missing = tmp_path / "nope.jsonl"
    r = run_cli("fleet", "drift", str(f), str(missing), "--pack", str(pack), "--json", timeout=120)
    assert r.returncode == 0, r.stderr  # the good ones were merged
    assert "Traceback" not in r.stderr
    res = json.loads(r.stdout)
    assert res["summaries"] == len(good)
    expected = {}
    for _, reason, _ in bad:
        expected[reason] = expected.get(reason, 0) + 1
    expected["file"] = 1
    assert res["skipped"] == expected
    skip_lines = [ln for ln in r.stderr.splitlines() if ": skipped " in ln]
    assert len(skip_lines) == len(bad) + 1
    for i, (_, reason, needle) in enumerate(bad):  # one line each, naming where and why
        line = skip_lines[i]
        assert f"{f}:{i + 2}" in line and needle in line, (reason, line)
    assert f"skipped {missing}: cannot read: No such file or directory" in r.stderr
    assert f"{len(bad) + 1} skipped: " in r.stderr


def test_nothing_usable_is_exit_2_and_never_a_traceback(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text("nope\n{}\n[]\n")
    pretty = tmp_path / "broken.json"
    pretty.write_text('{\n  "schema": 1,\n  "oops"\n}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(bytes(range(256)) * 4)
    r = run_cli("fleet", "drift", str(f), str(pretty), str(empty), str(binary), str(tmp_path))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "nothing usable was merged" in r.stderr
    assert f"skipped {pretty}: not JSON" in r.stderr and "(read as one JSON value)" in r.stderr
    assert f"skipped {tmp_path}: cannot read" in r.stderr and f"{empty}: empty" in r.stderr
    assert r.stdout.startswith("fleet drift: 0 summaries from 0 devices")


def test_skip_lines_are_capped_per_reason_but_all_counted(tmp_path, capsys):
    import io

    stream = io.StringIO()
    m = FleetDrift(reporter=Reporter(stream, cap=3))
    for i in range(10):
        m.add_payload("nope", f"line {i}")
    text = stream.getvalue()
    assert text.count(": skipped ") == 3 and "further 'json' skips are counted, not shown" in text
    assert m.result()["skipped"] == {"json": 10}


# ----------------------------------------------------------------------------- (4) usage
def test_help():
    r = run_cli("fleet", "drift", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: edge-agent fleet drift")
    for flag in ("--broker", "--seconds", "--pack", "--psi-warn", "--psi-drift", "--since", "--last", "--json", "--rows"):
        assert flag in r.stdout


@pytest.mark.parametrize("args,needle", [
    ([], "give summary FILEs"),
    (["x.jsonl", "--seconds", "3"], "--seconds is for --broker"),
    (["--broker", "localhost"], "--broker needs --seconds"),
    (["--broker", "localhost:99999", "--seconds", "1"], "a port from 1 to 65535"),
    (["--broker", "localhost:http", "--seconds", "1"], "port is not a number"),
    (["x.jsonl", "--since", "yesterday"], "not unix seconds nor an ISO 8601 time"),
    (["x.jsonl", "--last", "soon"], "not a duration"),
    (["x.jsonl", "--since", "0", "--last", "1h"], "not allowed with argument"),
    (["x.jsonl", "--psi-warn", "0.5", "--psi-drift", "0.2"], "--psi-warn 0.5 is above --psi-drift 0.2"),
    (["x.jsonl", "--psi-drift", "-1"], "must be > 0"),
    (["x.jsonl", "--k", "4"], "must be from 8 to 65535"),
    (["x.jsonl", "--json", "--rows"], "not allowed with argument"),
    (["-", "-"], "stdin (-) can be read once"),
    (["x.jsonl", "--pack", "/nonexistent.pack"], "cannot read"),
])
def test_usage_errors_are_one_line_exit_2(args, needle):
    r = run_cli("fleet", "drift", *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0] and "Traceback" not in r.stderr


def test_a_pack_without_a_drift_profile_or_twice_the_same_version_is_refused(tmp_path):
    bare = _pack(tmp_path, name="bare", profile={})
    with pytest.raises(ValueError, match="no drift profile"):
        load_packs([str(bare)])
    one = _pack(tmp_path)
    copy = tmp_path / "copy.pack"
    copy.write_bytes(one.read_bytes())
    with pytest.raises(ValueError, match="are both 'fleet-test 1.0.0'"):
        load_packs([str(one), str(copy)])
    r = run_cli("fleet", "drift", "x.jsonl", "--pack", str(bare))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_read_file_accepts_a_single_summary_line(simulated, tmp_path):
    summaries, _ = simulated
    f = tmp_path / "one.jsonl"
    f.write_text(json.dumps(summaries[0]))
    m = FleetDrift()
    assert read_file(str(f), m) == 1 and m.result()["summaries"] == 1
