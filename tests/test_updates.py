"""Model updates end to end on one device (issue #8): a real agent (emulator source, the
default pack active) and a real mosquitto; the fleet side is a peer with its own paho client
speaking the wire protocol of docs/UPDATES.md (offer, chunk requests, chunks), so each test
can break one thing on purpose. The operator's CLI (`fleet push`) and many agents are in
tests/test_fleet_rollout.py."""
from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_agent.agent import Agent
from edge_agent.config import default_config
from edge_agent.pack import read_pack
from edge_agent.signing import keygen, load_private_key
from edge_agent.update_transfer import make_offer, new_update_id
from tests.test_pack_verify import NAN, _build, _entries, _rezip, _set_member

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PACK = ROOT / "models" / "default.pack"
END = ("healthy", "rejected", "rolled_back")
pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    trusted = d / "trusted"
    trusted.mkdir()
    ops_key, _ = keygen(trusted / "ops")
    (trusted / "ops.key").rename(d / "ops.key")  # only the .pub stays in the trusted dir
    other_key, _ = keygen(d / "other")
    return {"dir": trusted, "ops": load_private_key(d / "ops.key"), "other": load_private_key(other_key)}


def _config(tmp_path, broker, keys, **updates):
    cfg = default_config()
    src = replace(cfg.sources[0], scenario="healthy", channels=1, speedup=4.0)
    up = dict(trusted_keys_dir=str(keys["dir"]), shadow_windows=30, health_windows=30, request_every_s=0.5)
    up.update(updates)
    return replace(cfg, sources=(src,), broker=replace(cfg.broker, host=broker.host, port=broker.port, reconnect_max_s=2.0),
                   storage=replace(cfg.storage, dir=str(tmp_path / "state")),
                   model=replace(cfg.model, pack=str(DEFAULT_PACK)),
                   publish=replace(cfg.publish, summary_interval_s=30.0, status_interval_s=0.5),
                   updates=replace(cfg.updates, **up))


class Running:
    def __init__(self, cfg):
        self.agent = Agent(cfg)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.agent.run, args=(self.stop,))
        self.thread.start()
        assert _wait(lambda: self.agent.publisher.connected.is_set() and self.agent.windows_scored > 5, 15)
        self.base = self.agent.topics.base

    def close(self):
        self.stop.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive()


@pytest.fixture
def device(tmp_path, mosquitto, keys):
    made = []

    def make(**updates):
        r = Running(_config(tmp_path, mosquitto, keys, **updates))
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


def _wait(cond, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


class FleetPeer:
    """The fleet's side of one update to one device: the offer (retained), then every chunk the
    device asks for; ``corrupt`` replaces chunks by index (what a broken transfer sends)."""

    def __init__(self, broker, base: str, offer_json: bytes, chunks: list[bytes], corrupt=None, serve=True):
        self.base, self.offer_json, self.chunks = base, offer_json, chunks
        self.corrupt = corrupt or {}
        self.serve = serve
        self.update_id = json.loads(offer_json)["update_id"]
        self.requests: list[list[int]] = []
        self.served: Counter[int] = Counter()
        self.progress: list[dict] = []
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"fleet-{self.update_id}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe([(f"{base}/model/request", 1), (f"{base}/model/progress", 1)])
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert _wait(lambda: self.client.is_connected(), 5)
        time.sleep(0.2)  # the subscription is in place before the offer goes out
        self.client.publish(f"{base}/model/offer", offer_json, qos=1, retain=True).wait_for_publish(5)

    def _on_message(self, client, userdata, msg):
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        if doc.get("update_id") != self.update_id:
            return
        if msg.topic.endswith("/progress"):
            self.progress.append(doc)
        elif self.serve:
            self.requests.append(list(doc["missing"]))
            for i in doc["missing"]:
                self.served[i] += 1
                client.publish(f"{self.base}/model/chunk/{self.update_id}/{i}", self.corrupt.get(i, self.chunks[i]), qos=1)

    def states(self) -> list[str]:
        return [p["state"] for p in self.progress]

    def wait_end(self, timeout=30) -> dict:
        assert _wait(lambda: any(s in END for s in self.states()), timeout), self.states()
        return next(p for p in self.progress if p["state"] in END)

    def close(self):
        self.client.publish(f"{self.base}/model/offer", b"", qos=1, retain=True).wait_for_publish(5)
        self.client.loop_stop()
        self.client.disconnect()


def _offer(pack: Path | bytes, mode="activate", chunk_size=16384, edits=None):
    data = pack.read_bytes() if isinstance(pack, Path) else pack
    offer, chunks = make_offer(data, new_update_id(), mode, chunk_size)
    doc = json.loads(offer.to_json())
    doc.update(edits or {})
    return json.dumps(doc).encode(), chunks


def _push(broker, dev, pack, mode="activate", corrupt=None, chunk_size=16384, edits=None):
    offer_json, chunks = _offer(pack, mode, chunk_size, edits)
    peer = FleetPeer(broker, dev.base, offer_json, chunks, corrupt)
    try:
        return peer.wait_end(), peer
    finally:
        peer.close()


def _release(tmp_path, key, version, manifest_edit=None, name=None) -> Path:
    """The default pack as a new release: another version, optionally changed, signed."""
    def edit(m):
        m["version"] = version
        if manifest_edit:
            manifest_edit(m)
    return _build(tmp_path, key, source=DEFAULT_PACK, manifest_edit=edit, name=name or f"{version}.pack")


def _still_scoring(dev, version: str):
    n = dev.agent.windows_scored
    assert _wait(lambda: dev.agent.windows_scored > n + 5, 10), "the agent stopped scoring"
    assert dev.agent.model.version == version


def test_ten_kinds_of_bad_update_are_each_rejected_with_their_reason(tmp_path, mosquitto, device, keys):
    dev = device()
    active = dev.agent.model.version
    good = _release(tmp_path, keys["ops"], "2026.12.01-1")
    good_bytes = good.read_bytes()
    signed_entries = _entries(good)
    altered = dict(signed_entries, **{"reference.npz": signed_entries["reference.npz"][:-1]
                                      + bytes([signed_entries["reference.npz"][-1] ^ 1])})
    sig = json.loads(signed_entries["signature.json"])
    raw = bytearray(base64.b64decode(sig["signature"]))
    raw[10] ^= 0x01  # one bit of the signature: still 64 bytes, no longer valid
    bad_sig = dict(signed_entries, **{"signature.json": json.dumps(dict(sig, signature=base64.b64encode(bytes(raw)).decode())).encode()})
    offer_json, chunks = _offer(good_bytes)
    cases = [
        ("bad_signature", _rezip(tmp_path / "badsig.pack", bad_sig).read_bytes(), {}, {}),
        ("unknown_key", _release(tmp_path, keys["other"], "2026.12.01-2").read_bytes(), {}, {}),
        ("unsigned", _release(tmp_path, None, "2026.12.01-3").read_bytes(), {}, {}),
        ("manifest_hash", _rezip(tmp_path / "altered.pack", altered).read_bytes(), {}, {}),
        ("chunk_hash", good_bytes, {0: b"\x00" + chunks[0][1:]}, {}),
        ("truncated", good_bytes, {len(chunks) - 1: chunks[-1][:-10]}, {}),
        ("oversize", good_bytes, {}, {"pack": dict(json.loads(offer_json)["pack"], size=200 * 1024 * 1024),
                                      "chunks": 200 * 64, "chunk_sha256": ["0" * 64] * (200 * 64)}),
        ("not_tflite", _build(tmp_path, keys["ops"], source=DEFAULT_PACK, name="elf.pack",
                              members_edit=_set_member("model.tflite", b"\x7fELF" + b"\x00" * 400)).read_bytes(), {}, {}),
        ("tensors", _release(tmp_path, keys["ops"], "2026.12.01-5",
                             lambda m: m["tensors"]["input"].__setitem__("dtype", "float32")).read_bytes(), {}, {}),
        ("self_test", _build(tmp_path, keys["ops"], source=NAN, name="nan.pack").read_bytes(), {}, {}),
    ]
    seen = {}
    for reason, pack_bytes, corrupt, edits in cases:
        end, _ = _push(mosquitto, dev, pack_bytes, corrupt=corrupt, edits=edits)
        seen[reason] = (end["state"], end["reason"])
        assert (end["state"], end["reason"]) == ("rejected", reason), (reason, end)
        assert end["detail"] and "\n" not in end["detail"]
        _still_scoring(dev, active)
    assert len(seen) == 10
    assert dev.agent.model_store.current() is None  # nothing was ever activated
    assert dev.agent.updater.counts["rejected"] == 10


def test_a_good_update_in_shadow_is_promoted_and_healthy(tmp_path, mosquitto, device, keys):
    dev = device()
    new = _release(tmp_path, keys["ops"], "2026.12.01-7")
    end, peer = _push(mosquitto, dev, new, mode="shadow")
    assert end["state"] == "healthy", end
    states = peer.states()
    for s in ("downloading", "verifying", "shadow", "promoted", "activating", "active", "healthy"):
        assert s in states, states
    promoted = next(p for p in peer.progress if p["state"] == "promoted")
    assert promoted["figures"]["agreement"] == 1.0 and promoted["figures"]["windows"] >= 30
    _still_scoring(dev, "default 2026.12.01-7")
    assert read_pack(dev.agent.model_store.current()).version == "2026.12.01-7"
    assert read_pack(dev.agent.model_store.previous()).version == read_pack(DEFAULT_PACK).version
    # the same offer seen again (retained, a reconnect) does nothing
    assert dev.agent.updater.counts["offers"] == 1


def test_a_pack_that_calls_every_window_a_fault_is_rolled_back(tmp_path, mosquitto, device, keys):
    dev = device()
    old = dev.agent.model.version
    loud = _release(tmp_path, keys["ops"], "2026.12.01-8",
                    lambda m: m["thresholds"].__setitem__("anomaly", 1e-6))  # every window is anomalous
    t = time.monotonic()
    end, peer = _push(mosquitto, dev, loud, mode="activate")
    assert (end["state"], end["reason"]) == ("rolled_back", "health_check"), end
    assert "alert-window rate 1.000" in end["detail"] and end["figures"]["windows"] >= 30
    assert "active" in peer.states()
    _still_scoring(dev, old)
    print(f"rolled back {time.monotonic() - t:.1f} s after the push")


def test_a_shadow_candidate_that_alerts_too_much_is_rejected_with_the_figures(tmp_path, mosquitto, device, keys):
    dev = device()
    old = dev.agent.model.version
    loud = _release(tmp_path, keys["ops"], "2026.12.01-9", lambda m: m["thresholds"].__setitem__("anomaly", 1e-6))
    end, _ = _push(mosquitto, dev, loud, mode="shadow")
    assert (end["state"], end["reason"]) == ("rejected", "shadow_gate"), end
    assert end["figures"]["candidate_alert_rate"] == 1.0 and end["figures"]["active_alert_rate"] < 0.05
    _still_scoring(dev, old)
    assert dev.agent.model_store.current() is None


def test_a_link_cut_mid_transfer_resumes_without_refetching_verified_chunks(tmp_path, mosquitto, device, keys):
    dev = device(request_every_s=0.3)
    new = _release(tmp_path, keys["ops"], "2026.12.02-1")
    offer_json, chunks = _offer(new, chunk_size=2048)  # ~50 chunks
    assert len(chunks) >= 40
    peer = FleetPeer(mosquitto, dev.base, offer_json, chunks, serve=False)
    store = dev.agent.updater.store
    try:
        assert _wait(lambda: peer.progress and store.current() is not None, 10)
        # serve only the first half, by hand, then cut the link
        for i in range(len(chunks) // 2):
            peer.client.publish(f"{dev.base}/model/chunk/{peer.update_id}/{i}", chunks[i], qos=1)
        assert _wait(lambda: store.received() >= len(chunks) // 2, 10)
        held = set(range(len(chunks))) - set(store.missing(10_000))
        mosquitto.stop()
        time.sleep(2.0)
        mosquitto.start()
        peer.requests.clear()
        peer.serve = True
        end = peer.wait_end(60)
    finally:
        peer.close()
    assert end["state"] == "healthy", end
    asked = {i for r in peer.requests for i in r}
    assert asked and not (asked & held), f"verified chunks fetched again: {sorted(asked & held)}"
    assert asked == set(range(len(chunks))) - held
    _still_scoring(dev, "default 2026.12.02-1")
