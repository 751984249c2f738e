"""A fleet rollout with real agents (issue #8, acceptance "Fleet"): 50 agents in this process,
each with its own MQTT client, emulator source, state directory and model store, all on one
real mosquitto; the operator's own commands (`edge-agent fleet push`, `edge-agent fleet
status`) run as subprocesses against it.

* one push to the group with ``--canary 10``: the 5 canaries (the first by site/device) get
  the offer, and the other 45 only after every canary reported ``healthy`` (their first
  progress comes after the canaries' last ``healthy``, as seen by an independent
  subscriber); devices of another group are not touched; ``fleet status`` lists all 50 with
  the new model version;
* an unhealthy canary (a pack that calls every window a fault, rolled back by its health
  check) halts the rollout: no other device is ever offered the pack.

The agents run at a low sample rate (12 kHz, one channel: about 6 windows a second each) and
with a short health check (``health_windows``) so 50 of them fit on two cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_agent.agent import Agent
from edge_agent.config import default_config
from edge_agent.signing import keygen, load_private_key
from tests.test_pack_verify import _build

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PACK = ROOT / "models" / "default.pack"
GROUP = "north"
pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _wait(cond, timeout, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    trusted = d / "trusted"
    trusted.mkdir()
    keygen(trusted / "ops")
    (trusted / "ops.key").rename(d / "ops.key")  # only the public key stays where devices look
    return {"dir": trusted, "ops": load_private_key(d / "ops.key"), "ops_key_file": d / "ops.key"}


def _config(tmp_path, broker, keys, device: str, group: str, seed: int):
    cfg = default_config()
    src = replace(cfg.sources[0], scenario="healthy", channels=1, fs=12000.0, seed=seed)
    return replace(
        cfg, sources=(src,),
        device=replace(cfg.device, site="farm-n", id=device, group=group),
        broker=replace(cfg.broker, host=broker.host, port=broker.port, reconnect_max_s=2.0,
                       client_id=f"edge-agent-farm-n-{device}"),  # as the config loader names it
        storage=replace(cfg.storage, dir=str(tmp_path / device)),
        model=replace(cfg.model, pack=str(DEFAULT_PACK), num_threads=1),
        publish=replace(cfg.publish, summary_interval_s=600.0, status_interval_s=1.0),
        updates=replace(cfg.updates, trusted_keys_dir=str(keys["dir"]), health_windows=8, request_every_s=1.0))


class Fleet:
    """Agents running in threads of this process; closed together."""

    def __init__(self, tmp_path, broker, keys, group_size: int, others: int = 0):
        self.agents: dict[str, Agent] = {}
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        names = [(f"wtg-{i:02d}", GROUP) for i in range(group_size)] + [(f"wts-{i:02d}", "south") for i in range(others)]
        for seed, (name, group) in enumerate(names):
            agent = Agent(_config(tmp_path, broker, keys, name, group, seed))
            self.agents[f"farm-n/{name}"] = agent
            t = threading.Thread(target=agent.run, args=(self.stop,), name=f"agent-{name}", daemon=True)
            t.start()
            self.threads.append(t)
        ok = _wait(lambda: all(a.publisher.connected.is_set() and a.windows_scored > 2 for a in self.agents.values()), 90)
        assert ok, [n for n, a in self.agents.items() if not (a.publisher.connected.is_set() and a.windows_scored > 2)]

    def group(self) -> dict[str, Agent]:
        return {n: a for n, a in self.agents.items() if a.cfg.device.group == GROUP}

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=20)
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"agents did not stop: {alive}"


@pytest.fixture
def fleet(tmp_path, mosquitto, keys):
    made = []

    def make(group_size, others=0):
        f = Fleet(tmp_path, mosquitto, keys, group_size, others)
        made.append(f)
        return f
    yield make
    for f in made:
        f.close()


def _cli(*args, timeout):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def _release(tmp_path, keys, version, manifest_edit=None) -> Path:
    def edit(m):
        m["version"] = version
        if manifest_edit:
            manifest_edit(m)
    return _build(tmp_path, keys["ops"], source=DEFAULT_PACK, manifest_edit=edit, name=f"{version}.pack")


class ProgressLog:
    """Every ``model/progress`` message of the fleet with its arrival time (a real paho client
    of its own, independent of the push command)."""

    def __init__(self, broker):
        self.got: list[tuple[float, str, bytes]] = []
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="test-progress-log")
        self.client.on_message = lambda c, u, m: self.got.append((time.monotonic(), m.topic, bytes(m.payload)))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe("pdm/+/+/model/progress", qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def by_device(self, update_id) -> dict[str, list[tuple[float, str]]]:
        seen: dict[str, list[tuple[float, str]]] = {}
        for t, topic, payload in list(self.got):
            if not payload:
                continue
            doc = json.loads(payload)
            if doc.get("update_id") == update_id:
                site, device = topic.split("/")[1:3]
                seen.setdefault(f"{site}/{device}", []).append((t, doc["state"]))
        return seen

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def progress(mosquitto):
    log = ProgressLog(mosquitto)
    yield log
    log.close()


def _push(mosquitto, keys, pack, canary, timeout=240):
    r = _cli("fleet", "push", str(pack), "--target", GROUP, "--mode", "activate", "--canary", str(canary),
             "--trusted-key", str(keys["dir"]), "--broker", f"{mosquitto.host}:{mosquitto.port}",
             "--discover-s", "3", "--timeout", str(timeout), "--json", timeout=timeout + 60)
    assert r.stdout.strip(), r.stderr
    return r, json.loads(r.stdout)


def test_a_group_push_with_a_10_percent_canary_updates_the_canaries_first_then_the_rest(
        tmp_path, mosquitto, progress, fleet, keys):
    t0 = time.monotonic()
    f = fleet(50, others=3)
    started = time.monotonic() - t0
    old = next(iter(f.agents.values())).model.version
    new = _release(tmp_path, keys, "2026.12.03-1")

    r, result = _push(mosquitto, keys, new, canary=10)
    print(r.stderr)
    assert r.returncode == 0, r.stderr
    assert result["outcome"] == "healthy"
    devices = {d["device"]: d for d in result["devices"]}
    group = f.group()
    assert set(devices) == set(group), "the push targets exactly the group's 50 devices"
    canaries = sorted(n for n, d in devices.items() if d["wave"] == 1)
    rest = sorted(n for n, d in devices.items() if d["wave"] == 2)
    assert canaries == sorted(group)[:5] and len(rest) == 45
    assert all(d["state"] == "healthy" and d["ok"] for d in devices.values()), \
        {n: (d["state"], d["reason"]) for n, d in devices.items() if not d["ok"]}

    # the rest were offered only after every canary was healthy: by the push's own clock...
    last_canary_healthy = max(devices[n]["ended_at"] for n in canaries)
    first_rest_offer = min(devices[n]["offered_at"] for n in rest)
    assert first_rest_offer >= last_canary_healthy
    # ...and by what an independent subscriber saw the devices say
    uid = result["update_id"]
    assert _wait(lambda: len(seen := progress.by_device(uid)) == len(group)
                 and all(v[-1][1] == "healthy" for v in seen.values()), 20)
    seen = progress.by_device(uid)
    assert set(seen) == set(group)
    canary_healthy = max(t for n in canaries for t, s in seen[n] if s == "healthy")
    rest_first = min(seen[n][0][0] for n in rest)
    assert rest_first > canary_healthy, "a device of the second wave moved before the canaries were healthy"
    for n, states in seen.items():
        names = [s for _, s in states]
        assert names[0] == "downloading" and names[-1] == "healthy", (n, names)
        assert "active" in names, (n, names)

    # every agent of the group runs the new pack; the others were left alone
    for n, a in f.agents.items():
        want = "default 2026.12.03-1" if n in group else old
        assert a.model.version == want, (n, a.model.version)
        if n not in group:
            assert a.updater.counts["offers"] == 0

    # fleet status: all 50 (and the 3 others), online, with their model versions
    assert _wait(lambda: all(a._status_said and a._status_said["model"] == a.model.version for a in f.agents.values()), 10)
    st = _cli("fleet", "status", "--broker", f"{mosquitto.host}:{mosquitto.port}", "--seconds", "3", "--json",
              timeout=60)
    assert st.returncode == 0, st.stderr
    rows = {f"{r['site']}/{r['device']}": r for r in json.loads(st.stdout)}
    assert set(rows) == set(f.agents)
    for n, row in rows.items():
        assert row["online"] is True and row["agent_version"], (n, row)
        if n in group:
            assert (row["model"], row["group"], row["update_state"], row["health"]) == \
                ("default 2026.12.03-1", GROUP, "healthy", "healthy"), (n, row)
        else:
            assert (row["model"], row["group"], row["update_state"]) == (old, "south", None), (n, row)
        assert row["open_alerts"] == 0, (n, row)
    table = _cli("fleet", "status", "--broker", f"{mosquitto.host}:{mosquitto.port}", "--seconds", "3",
                 timeout=60).stdout
    assert sum("default 2026.12.03-1" in line for line in table.splitlines()) == 50
    print(f"50 + 3 agents started in {started:.1f} s; rollout {time.monotonic() - t0 - started:.1f} s")


def test_an_unhealthy_canary_halts_the_rollout(tmp_path, mosquitto, progress, fleet, keys):
    f = fleet(10)
    old = next(iter(f.agents.values())).model.version
    loud = _release(tmp_path, keys, "2026.12.03-2", lambda m: m["thresholds"].__setitem__("anomaly", 1e-6))

    r, result = _push(mosquitto, keys, loud, canary=10, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "halted" in r.stderr and "rolled_back" in r.stderr
    devices = {d["device"]: d for d in result["devices"]}
    canary = sorted(devices)[0]
    assert (devices[canary]["state"], devices[canary]["reason"]) == ("rolled_back", "health_check")
    others = [n for n in devices if n != canary]
    assert all(devices[n]["state"] == "not_offered" and devices[n]["offered_at"] is None for n in others)
    seen = progress.by_device(result["update_id"])
    assert set(seen) == {canary}, "only the canary ever heard of the update"
    time.sleep(1.0)  # a straggler would have asked by now
    for n, a in f.agents.items():
        assert a.model.version == old, (n, a.model.version)  # the canary rolled back; the rest untouched
        assert a.updater.counts["offers"] == (1 if n == canary else 0)
