"""``edge-agent fleet push`` (edge_agent/fleet_push.py, docs/UPDATES.md "Transfer" and "Fleet
side") against a real mosquitto and scripted device peers.

The device's updater is built alongside, so each device here is a :class:`Peer`: a real paho
client that publishes a retained status with its group, answers an offer by asking for the
chunks it is missing (in batches, again every 0.5 s while some are missing), checks every
chunk against the offer's sha256 and the assembled pack against the pack's, and publishes
retained progress (downloading, verifying, then its scripted ending: healthy, rejected or
rolled back). One peer drops its link mid-transfer (clean session: what was sent meanwhile is
lost) and asks again for exactly what it misses. The command runs as a subprocess, as an
operator runs it.
"""
from __future__ import annotations

import hashlib
import json
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from cli_helpers import edge_agent_cmd, run_cli
from edge_agent.fleet_push import (
    MAX_REQUEST_INDICES, PushServer, canary_count, make_offer, new_update_id, plan_waves,
)
from edge_agent.signing import keygen, load_private_key, sign_pack

DEFAULT_PACK = Path(__file__).resolve().parent.parent / "models" / "default.pack"
PREFIX = "pdm"
OFFER_KEYS = {"schema", "update_id", "mode", "time", "pack", "chunk_size", "chunks", "chunk_sha256"}


# ----------------------------------------------------------------------------- a scripted device
class Peer:
    """One scripted device on the broker (see the module docstring).

    ``behaviour``: ``healthy``; ``reject`` (rejected, shadow_gate, after verifying);
    ``rollback`` (active, then rolled_back, alert_rate); ``silent`` (never answers an offer).
    ``drop_after``: after that many chunks, disconnect, wait, reconnect (clean session), ask
    again for the missing ones. ``hold``: an Event the peer waits for before its first request.
    """

    def __init__(self, broker, site: str, device: str, *, group: str | None = "g1", behaviour: str = "healthy",
                 batch: int = 8, drop_after: int | None = None, hold: threading.Event | None = None,
                 health_s: float = 0.2, agent_version: str = "0.1.0", model: str = "default 2026.11.22-2") -> None:
        self.broker, self.site, self.device = broker, site, device
        self.name = f"{site}/{device}"
        self.base = f"{PREFIX}/{site}/{device}"
        self.behaviour, self.batch, self.drop_after, self.hold, self.health_s = behaviour, batch, drop_after, hold, health_s
        self.model = model
        self.offers: list[tuple[float, dict | None]] = []  # (received at, offer or None when cleared)
        self.requests: list[list[int]] = []
        self.requests_after_drop: list[list[int]] = []
        self.missing_at_drop: set[int] | None = None
        self.states: list[tuple[float, str]] = []
        self.chunk_messages = 0
        self.bad_chunks = 0
        self.assembled: bytes | None = None
        self.offer: dict | None = None
        self.have: dict[int, bytes] = {}
        self._events: queue.Queue = queue.Queue()
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._last_request = 0.0
        self._dropped = False
        self._chunks_before_drop = 0
        self._finished = False
        self.status = {"schema": 1, "state": "online", "time": time.time(), "agent_version": agent_version,
                       "model": model, "backend": "scripted", "host": device, "site": site, "device": device}
        if group is not None:
            self.status["group"] = group
        self.client = self._client()
        self._connect()
        self._thread = threading.Thread(target=self._run, name=f"peer-{device}", daemon=True)
        self._thread.start()

    def _client(self) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"peer-{self.site}-{self.device}", clean_session=True)
        c.will_set(f"{self.base}/status", json.dumps({"schema": 1, "state": "offline", "time": time.time()}), 1, True)
        c.on_connect = self._on_connect
        c.on_subscribe = lambda *a: (self._subscribed.set(), self._events.put(("subscribed",)))
        c.on_message = self._on_message
        return c

    def _on_message(self, client, userdata, m) -> None:  # noqa: ANN001
        if "/model/chunk/" in m.topic and self.drop_after is not None and not self._dropped:
            self._chunks_before_drop += 1
            if self._chunks_before_drop > self.drop_after:
                return  # the link is going down: lost (the peer thread disconnects)
        self._events.put(("msg", m.topic, bytes(m.payload), time.time()))

    def _on_connect(self, client, userdata, flags, rc, props) -> None:  # noqa: ANN001
        client.publish(f"{self.base}/status", json.dumps(self.status), qos=1, retain=True)
        client.subscribe([(f"{self.base}/model/offer", 1), (f"{self.base}/model/chunk/#", 1)])

    def _connect(self) -> None:
        self._subscribed.clear()
        self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        self.client.loop_start()
        assert self._subscribed.wait(5), f"{self.name}: not subscribed"

    # -- the device's side of the protocol -------------------------------------------------
    def _publish_progress(self, state: str, reason: str = "") -> None:
        o = self.offer
        doc = {"schema": 1, "update_id": o["update_id"], "state": state, "time": time.time(),
               "pack_version": o["pack"]["version"], "active_version": self.model, "received": len(self.have),
               "chunks": o["chunks"], "reason": reason, "figures": {}}
        self.states.append((time.time(), state))
        self.client.publish(f"{self.base}/model/progress", json.dumps(doc), qos=1, retain=True).wait_for_publish(5)

    def _missing(self) -> list[int]:
        return [i for i in range(self.offer["chunks"]) if i not in self.have] if self.offer else []

    def _request(self) -> None:
        missing = self._missing()
        if not missing or self._finished or (self.hold is not None and not self.hold.is_set()):
            return
        self._last_request = time.monotonic()
        for i in range(0, len(missing), self.batch):
            part = missing[i:i + self.batch]
            (self.requests_after_drop if self._dropped else self.requests).append(part)
            self.client.publish(f"{self.base}/model/request",
                                json.dumps({"schema": 1, "update_id": self.offer["update_id"], "missing": part}), qos=1)

    def _on_offer(self, payload: bytes, at: float) -> None:
        if not payload:
            self.offers.append((at, None))
            return
        offer = json.loads(payload)
        self.offers.append((at, offer))
        if self.offer is not None and offer["update_id"] == self.offer["update_id"]:
            self._request()  # the retained offer again after a reconnect: only what is missing
            return
        self.offer, self.have, self._finished = offer, {}, False
        if self.behaviour == "silent":
            self._finished = True
            return
        self._publish_progress("downloading")
        self._request()

    def _on_chunk(self, topic: str, payload: bytes) -> None:
        self.chunk_messages += 1
        uid, index = topic.split("/")[-2:]
        o = self.offer
        if o is None or uid != o["update_id"] or self._finished:
            return
        i = int(index)
        if hashlib.sha256(payload).hexdigest() != o["chunk_sha256"][i]:
            self.bad_chunks += 1
            return
        self.have[i] = payload
        if self.drop_after is not None and not self._dropped and len(self.have) >= self.drop_after:
            self._drop()
        if len(self.have) == o["chunks"]:
            self._finish()

    def _drop(self) -> None:
        self._dropped = True
        self.client.disconnect()
        self.client.loop_stop()
        time.sleep(0.3)  # chunks sent now are lost (clean session)
        self.missing_at_drop = set(self._missing())
        self._connect()  # "subscribed" -> ask for what is missing

    def _finish(self) -> None:
        self._finished = True
        data = b"".join(self.have[i] for i in range(self.offer["chunks"]))
        assert hashlib.sha256(data).hexdigest() == self.offer["pack"]["sha256"]
        self.assembled = data
        self._publish_progress("verifying")
        shadow = self.offer["mode"] == "shadow"
        if self.behaviour == "reject":
            self._publish_progress("rejected", "shadow_gate")
            return
        if shadow:
            self._publish_progress("shadow")
        self._publish_progress("activating")
        self._publish_progress("active")
        time.sleep(self.health_s)
        if self.behaviour == "rollback":
            self._publish_progress("rolled_back", "alert_rate")
        else:
            self._publish_progress("healthy")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ev = self._events.get(timeout=0.1)
            except queue.Empty:
                ev = None
            if ev and ev[0] == "subscribed":
                self._request()
            elif ev and ev[0] == "msg":
                _, topic, payload, at = ev
                if topic.endswith("/model/offer"):
                    self._on_offer(payload, at)
                else:
                    self._on_chunk(topic, payload)
            if self.offer and not self._finished and time.monotonic() - self._last_request > 0.5:
                self._request()

    # -- for the assertions -----------------------------------------------------------------
    def offered(self) -> list[tuple[float, dict]]:
        return [(t, o) for t, o in self.offers if o is not None]

    def first_offer_at(self) -> float | None:
        got = self.offered()
        return got[0][0] if got else None

    def state_at(self, state: str) -> float | None:
        return next((t for t, s in self.states if s == state), None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers():
    made: list[Peer] = []

    def make(broker, site: str, device: str, **kw) -> Peer:
        p = Peer(broker, site, device, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def signed_pack(tmp_path) -> Path:
    pack = tmp_path / "candidate.pack"
    pack.write_bytes(DEFAULT_PACK.read_bytes())
    key, _ = keygen(tmp_path / "ops")
    sign_pack(pack, load_private_key(key))
    return pack


def push_cmd(broker, pack: Path, target: str, *extra: str, as_json: bool = True) -> list[str]:
    return [*edge_agent_cmd(), "fleet", "push", str(pack), "--target", target, "--broker",
            f"{broker.host}:{broker.port}", "--discover-s", "1", *(["--json"] if as_json else []), *extra]


def run_push(broker, pack: Path, target: str, *extra: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, dict | None]:
    r = subprocess.run(push_cmd(broker, pack, target, *extra), capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in r.stderr, r.stderr
    return r, (json.loads(r.stdout) if r.stdout.strip() else None)


def retained_offers(mqtt_subscriber, broker, wait: float = 0.5) -> list[str]:
    """Topics under pdm/+/+/model/offer that still hold a retained offer."""
    sub = mqtt_subscriber(broker, f"{PREFIX}/+/+/model/offer")
    time.sleep(wait)
    return [t for t, payload, retain in sub.messages if retain and payload]


# ----------------------------------------------------------------------------- pure parts
def test_canary_count_is_the_exact_ceiling_and_at_least_one():
    assert canary_count(20, 10) == 2
    assert canary_count(21, 10) == 3
    assert canary_count(100, 7) == 7  # 0.07 * 100 is 7.000000000000001 in floats
    assert canary_count(3, 1) == 1
    assert canary_count(5, 100) == 5
    assert plan_waves(["b/2", "a/1", "c/3"], None) == [["a/1", "b/2", "c/3"]]
    assert plan_waves(["b/2", "a/1", "c/3"], 34) == [["a/1", "b/2"], ["c/3"]]
    assert plan_waves(["a/1"], 10) == [["a/1"]]


def test_the_offer_is_the_spec_manifest():
    data = bytes(range(256)) * 100  # 25,600 bytes
    uid = new_update_id()
    assert re.fullmatch(r"[0-9a-f]{16}", uid) and uid != new_update_id()
    offer, chunks = make_offer(data, uid, "activate", 16384, name="default", version="v2", now=5.0)
    assert set(offer) == OFFER_KEYS and offer["schema"] == 1 and offer["time"] == 5.0
    assert offer["pack"] == {"name": "default", "version": "v2", "size": 25600, "sha256": hashlib.sha256(data).hexdigest()}
    assert offer["chunks"] == 2 == len(chunks) and [len(c) for c in chunks] == [16384, 9216]
    assert offer["chunk_sha256"] == [hashlib.sha256(c).hexdigest() for c in chunks]
    assert b"".join(chunks) == data
    json.dumps(offer)


def test_the_offer_is_what_the_device_side_parses():
    """The same wire form as edge_agent/update_transfer.py (built alongside) when it is there."""
    transfer = pytest.importorskip("edge_agent.update_transfer")
    data = DEFAULT_PACK.read_bytes()
    ours, our_chunks = make_offer(data, "0123456789abcdef", "shadow", 16384, name="default", version="v", now=1.0)
    parsed = transfer.parse_offer(json.dumps(ours).encode(), len(data), 16384)
    assert (parsed.update_id, parsed.size, parsed.chunks, list(parsed.chunk_sha256)) == (
        "0123456789abcdef", len(data), ours["chunks"], ours["chunk_sha256"])
    theirs, their_chunks = transfer.make_offer(data, "0123456789abcdef", "shadow", 16384, name="default", version="v", now=1.0)
    assert json.loads(theirs.to_json()) == ours and their_chunks == our_chunks


class _Recorder:
    def __init__(self):
        self.sent: list[tuple[str, bytes | str, bool]] = []

    def __call__(self, topic, payload, retain):
        self.sent.append((topic, payload, retain))


def _server(targets=("s/a", "s/b", "s/c"), canary=None, chunks=5):
    data = bytes(1000 * chunks)
    offer, parts = make_offer(data, "0123456789abcdef", "activate", 1000, name="n", version="v")
    rec = _Recorder()
    server = PushServer(offer, parts, plan_waves(list(targets), canary), "pdm", rec, resend_after=0)
    server.start()
    return server, rec


def _progress(state, uid="0123456789abcdef", **kw):
    return json.dumps({"schema": 1, "update_id": uid, "state": state, **kw}).encode()


def test_server_waves_halt_and_already_active_without_a_broker():
    server, rec = _server(canary=34)
    assert [t for t, _, r in rec.sent if r] == ["pdm/s/a/model/offer", "pdm/s/b/model/offer"]
    server.handle("pdm/s/a/model/request", json.dumps({"schema": 1, "update_id": "0123456789abcdef", "missing": [4, 0, 4]}).encode())
    assert [t for t, _, _ in rec.sent[2:]] == ["pdm/s/a/model/chunk/0123456789abcdef/4", "pdm/s/a/model/chunk/0123456789abcdef/0"]
    server.handle("pdm/s/a/model/progress", _progress("healthy"))
    server.handle("pdm/s/b/model/progress", _progress("active"))  # no transfer: it already runs this pack
    assert server.devices["s/b"].already_active and server.devices["s/b"].ok
    assert "pdm/s/c/model/offer" in [t for t, _, _ in rec.sent]  # canaries done: the rest
    server.handle("pdm/s/c/model/progress", _progress("rolled_back", reason="latency"))
    assert server.done and not server.all_ok and server.outcome() == "failed"

    server, rec = _server(canary=34)
    server.handle("pdm/s/b/model/progress", _progress("rejected", reason="self_test"))
    server.handle("pdm/s/a/model/progress", _progress("healthy"))
    assert server.halted and "s/b" in server.halted and "self_test" in server.halted
    assert server.done and server.outcome() == "halted"
    assert "pdm/s/c/model/offer" not in [t for t, _, _ in rec.sent]
    assert server.result()["devices"][2]["state"] == "not_offered"


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
_messages = st.one_of(
    st.binary(max_size=200),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"schema": st.sampled_from([1, True, 1.0, "1"]),
                           "update_id": st.sampled_from(["0123456789abcdef", "f" * 16, 7, None]),
                           "missing": st.lists(st.integers(-3, 8) | st.floats() | st.booleans(), max_size=70) | _json_values,
                           "state": st.sampled_from(["healthy", "bogus", None, 3, "downloading"]),
                           "received": _json_values, "reason": _json_values}).map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["pdm/s/a/model/request", "pdm/s/a/model/progress", "pdm/s/zz/model/request",
                                           "pdm/s/a/model/progress/x", "pdm//a/model/request", "other/s/a/model/request"]),
                          _messages), max_size=20))
def test_the_server_never_raises_on_what_devices_send(messages):
    server, rec = _server()
    for topic, payload in messages:
        server.handle(topic, payload)
    for topic, payload, retain in rec.sent:
        if "/chunk/" in topic:
            index = int(topic.rsplit("/", 1)[1])
            assert 0 <= index < 5 and payload == server.chunks[index] and not retain
    json.dumps(server.result())


# ----------------------------------------------------------------------------- over a real broker
@pytest.mark.broker
def test_single_device_push_ends_healthy_and_clears_its_offer(mosquitto, peers, signed_pack, mqtt_subscriber):
    peer = peers(mosquitto, "farm-a", "wtg-07", group=None)
    r, result = run_push(mosquitto, signed_pack, "farm-a/wtg-07", "--mode", "activate", "--chunk-kb", "8")
    assert r.returncode == 0, r.stderr
    assert peer.assembled == signed_pack.read_bytes() and peer.bad_chunks == 0
    (t_offer, offer), = peer.offered()
    assert set(offer) == OFFER_KEYS and offer["mode"] == "activate" and offer["chunk_size"] == 8192
    assert re.fullmatch(r"[0-9a-f]{16}", offer["update_id"]) and offer["update_id"] == result["update_id"]
    assert offer["pack"]["sha256"] == hashlib.sha256(signed_pack.read_bytes()).hexdigest()
    assert all(len(req) <= MAX_REQUEST_INDICES for req in peer.requests)
    assert result["outcome"] == "healthy" and result["garbage"] == {}
    (dev,) = result["devices"]
    assert dev["device"] == "farm-a/wtg-07" and dev["state"] == "healthy" and dev["received"] == dev["chunks"] == offer["chunks"]
    for state in ("downloading", "verifying", "active", "healthy"):  # a line per change of state on stderr
        assert re.search(rf"farm-a/wtg-07: {state} \d+/{offer['chunks']}", r.stderr), r.stderr
    assert peer.offers[-1][1] is None  # the empty retained message that clears it
    assert retained_offers(mqtt_subscriber, mosquitto) == []


@pytest.mark.broker
def test_a_device_that_drops_its_link_asks_only_for_what_it_misses(mosquitto, peers, signed_pack, mqtt_subscriber):
    peer = peers(mosquitto, "farm-a", "wtg-03", group=None, drop_after=4, batch=3)
    r, result = run_push(mosquitto, signed_pack, "farm-a/wtg-03", "--mode", "activate", "--chunk-kb", "8")
    assert r.returncode == 0, r.stderr
    assert peer.assembled == signed_pack.read_bytes()
    assert peer.missing_at_drop and len(peer.missing_at_drop) < result["chunks"]
    asked_again = {i for req in peer.requests_after_drop for i in req}
    assert asked_again and asked_again <= peer.missing_at_drop  # never a chunk it had
    assert result["devices"][0]["requests"] > len(peer.requests)  # the server answered the new requests
    assert retained_offers(mqtt_subscriber, mosquitto) == []


@pytest.mark.broker
def test_group_canary_waves_offer_the_rest_only_after_the_canaries_are_healthy(mosquitto, peers, signed_pack, mqtt_subscriber):
    group = [peers(mosquitto, "farm-b", f"wtg-{i:02d}", group="north") for i in range(20)]
    other = peers(mosquitto, "farm-b", "wtg-99", group="south")
    r, result = run_push(mosquitto, signed_pack, "north", "--mode", "activate", "--canary", "10", "--chunk-kb", "16")
    assert r.returncode == 0, r.stderr
    assert result["outcome"] == "healthy" and result["waves"] == 2
    canaries, rest = group[:2], group[2:]  # the first two by site/device
    assert [d["device"] for d in result["devices"] if d["wave"] == 1] == ["farm-b/wtg-00", "farm-b/wtg-01"]
    assert all(p.assembled == signed_pack.read_bytes() for p in group)
    canaries_healthy = max(p.state_at("healthy") for p in canaries)
    first_rest_offer = min(p.first_offer_at() for p in rest)
    assert first_rest_offer > canaries_healthy
    assert max(p.first_offer_at() for p in canaries) < first_rest_offer
    assert other.offered() == []  # not in the group
    assert "wave 2 of 2 (the rest): offering to 18 device(s)" in r.stderr
    assert retained_offers(mqtt_subscriber, mosquitto) == []


@pytest.mark.broker
def test_a_canary_that_rolls_back_halts_the_rollout(mosquitto, peers, signed_pack, mqtt_subscriber):
    group = [peers(mosquitto, "farm-c", f"wtg-{i:02d}", group="east", behaviour="rollback" if i == 0 else "healthy")
             for i in range(10)]
    r, result = run_push(mosquitto, signed_pack, "east", "--mode", "activate", "--canary", "20")
    assert r.returncode == 2
    assert result["outcome"] == "halted" and "farm-c/wtg-00 ended rolled_back (alert_rate)" in result["halted"]
    assert "rollout halted: canary farm-c/wtg-00 ended rolled_back (alert_rate)" in r.stderr
    assert [p.offered() != [] for p in group] == [True, True] + [False] * 8  # the rest never got it
    states = {d["device"]: d["state"] for d in result["devices"]}
    assert states["farm-c/wtg-00"] == "rolled_back" and states["farm-c/wtg-01"] == "healthy"
    assert {states[f"farm-c/wtg-{i:02d}"] for i in range(2, 10)} == {"not_offered"}
    assert retained_offers(mqtt_subscriber, mosquitto) == []


@pytest.mark.broker
def test_shadow_push_without_canary_reports_a_shadow_gate_rejection(mosquitto, peers, signed_pack):
    for i, behaviour in enumerate(["healthy", "reject", "healthy"]):
        peers(mosquitto, "farm-d", f"wtg-{i}", group="west", behaviour=behaviour)
    r = subprocess.run(push_cmd(mosquitto, signed_pack, "west", "--mode", "shadow", as_json=False),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.startswith("farm-d/")}
    assert "healthy" in lines["farm-d/wtg-0"] and "healthy" in lines["farm-d/wtg-2"]
    assert "rejected" in lines["farm-d/wtg-1"] and "shadow_gate" in lines["farm-d/wtg-1"]
    assert "2 of 3 healthy; failed" in r.stdout
    assert "farm-d/wtg-1: rejected 7/7 (shadow_gate)" in r.stderr and "farm-d/wtg-0: shadow 7/7" in r.stderr


@pytest.mark.broker
def test_garbage_on_the_request_and_progress_topics_does_not_crash_the_server(mosquitto, peers, signed_pack, mqtt_subscriber):
    hold = threading.Event()
    peer = peers(mosquitto, "farm-e", "wtg-01", group=None, hold=hold)
    proc = subprocess.Popen(push_cmd(mosquitto, signed_pack, "farm-e/wtg-01", "--mode", "activate"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not peer.offered() and time.monotonic() < deadline:
            time.sleep(0.05)
        uid = peer.offered()[0][1]["update_id"]
        base = f"{PREFIX}/farm-e/wtg-01/model"
        junk = [b"", b"\xff\xfe\x00", b"not json", b"[1, 2]", b"null", b"1e999", b"[" * 50000, b"{" + b" " * 70000 + b"}",
                json.dumps({"schema": True, "update_id": uid, "missing": [0]}).encode(),
                json.dumps({"schema": 1}).encode(), json.dumps({"schema": 1, "update_id": 12}).encode()]
        bad_requests = [{"missing": "all"}, {"missing": [-1]}, {"missing": [10 ** 30]}, {"missing": [1.5]},
                        {"missing": [True]}, {"missing": []}, {"missing": list(range(MAX_REQUEST_INDICES + 1))},
                        {"missing": [999]}, {"missing": None}, {}]
        bad_progress = [{"state": "exploded"}, {"state": None}, {"state": 5}, {"state": ["healthy"]}]
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="garbage")
        c.connect(mosquitto.host, mosquitto.port)
        c.loop_start()
        infos = []
        for topic in (f"{base}/request", f"{base}/progress"):
            infos += [c.publish(topic, p, qos=1) for p in junk]
        infos += [c.publish(f"{base}/request", json.dumps({"schema": 1, "update_id": uid, **b}), qos=1) for b in bad_requests]
        infos += [c.publish(f"{base}/progress", json.dumps({"schema": 1, "update_id": uid, **b}), qos=1) for b in bad_progress]
        infos.append(c.publish(f"{base}/request", json.dumps({"schema": 1, "update_id": "f" * 16, "missing": [0]}), qos=1))
        infos.append(c.publish(f"{PREFIX}/farm-e/ghost/model/progress", _progress("healthy", uid), qos=1, retain=True))
        infos.append(c.publish(f"{PREFIX}/farm-e/ghost/model/request",
                               json.dumps({"schema": 1, "update_id": uid, "missing": [0]}), qos=1))
        for info in infos:
            info.wait_for_publish(5)
        c.publish(f"{PREFIX}/farm-e/ghost/model/progress", b"", qos=1, retain=True).wait_for_publish(5)
        c.disconnect()
        c.loop_stop()
        time.sleep(0.3)
        hold.set()  # now the real device asks
        out, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    result = json.loads(out)
    assert result["outcome"] == "healthy" and peer.assembled == signed_pack.read_bytes()
    g = result["garbage"]
    assert g == {"json": 12, "oversize": 2, "schema": 2, "field": 4, "missing": len(bad_requests),
                 "state": len(bad_progress)}
    assert result["ignored"] == {"other_update": 1, "not_offered": 2, "empty": 3}
    assert "malformed messages ignored" in err
    assert retained_offers(mqtt_subscriber, mosquitto) == []


@pytest.mark.broker
def test_timeout_and_ctrl_c_clear_the_retained_offers(mosquitto, peers, signed_pack, mqtt_subscriber):
    peer = peers(mosquitto, "farm-f", "wtg-01", group=None, behaviour="silent")
    r, result = run_push(mosquitto, signed_pack, "farm-f/wtg-01", "--timeout", "1")
    assert r.returncode == 2 and result["outcome"] == "timeout"
    assert "timeout after 1 s; no end state from: farm-f/wtg-01" in r.stderr
    assert result["devices"][0]["state"] == "offered"
    assert retained_offers(mqtt_subscriber, mosquitto) == []

    proc = subprocess.Popen(push_cmd(mosquitto, signed_pack, "farm-f/wtg-01"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while len(peer.offered()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "cleared 1 retained offer(s)" in err and "Traceback" not in err
    assert json.loads(out)["outcome"] == "interrupted"
    assert retained_offers(mqtt_subscriber, mosquitto) == []


# ----------------------------------------------------------------------------- refusals
def test_an_unsigned_pack_is_refused_before_the_broker(tmp_path):
    from edge_agent.local_broker import free_port

    unsigned = tmp_path / "u.pack"
    unsigned.write_bytes(DEFAULT_PACK.read_bytes())
    r = run_cli("fleet", "push", str(unsigned), "--target", "farm-a/wtg-07", "--broker", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"edge-agent fleet push: {unsigned}: refusing to push: unsigned: no signature.json "
        "(sign it: edge-agent fleet sign PACK --key NAME.key)"]


def test_a_pack_signed_by_another_key_is_refused_with_trusted_key(tmp_path, signed_pack):
    from edge_agent.local_broker import free_port

    _, other_pub = keygen(tmp_path / "other")
    r = run_cli("fleet", "push", str(signed_pack), "--target", "farm-a/wtg-07", "--trusted-key", str(other_pub),
                "--broker", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "refusing to push: unknown_key" in line
    # the right key passes the check; then the (absent) broker is the one problem
    r = run_cli("fleet", "push", str(signed_pack), "--target", "farm-a/wtg-07", "--trusted-key", str(tmp_path / "ops.pub"),
                "--broker", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "cannot connect to 127.0.0.1:" in line


@pytest.mark.broker
def test_a_group_with_no_device_is_one_line_and_exit_2(mosquitto, peers, signed_pack):
    peers(mosquitto, "farm-g", "wtg-01", group="other")
    r, result = run_push(mosquitto, signed_pack, "nobody")
    assert r.returncode == 2 and result is None
    assert r.stderr.strip().splitlines() == [
        "edge-agent fleet push: no device says it is in group 'nobody' (retained pdm/+/+/status \"group\")"]


@pytest.mark.parametrize("args,needle", [
    (["--target", "a/b/c", "--broker", "h"], "the device contains /, + or #"),
    (["--target", "g+", "--broker", "h"], "GROUP contains /, + or #"),
    (["--target", "g", "--broker", "h", "--canary", "0"], "must be > 0"),
    (["--target", "g", "--broker", "h", "--canary", "150"], "must be from 0 (excluded) to 100"),
    (["--target", "g", "--broker", "h", "--chunk-kb", "0"], "must be from 1 to 1024"),
    (["--target", "g", "--broker", "h", "--prefix", "pdm/#"], "not a topic prefix"),
    (["--target", "g", "--broker", "h:0"], "a port from 1 to 65535"),
    (["--target", "g"], "the following arguments are required: --broker"),
])
def test_bad_push_arguments_are_one_line(args, needle):
    r = run_cli("fleet", "push", "x.pack", *args)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert needle in line
