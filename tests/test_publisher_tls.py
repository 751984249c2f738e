"""The uplink's connection (issue #7, part 3) with real parts: a test PKI made here with
`cryptography`, a real mosquitto with a TLS listener (LocalBroker(tls=...)), the real
Publisher with the agent's own outbox (an Agent without sources builds both), and a TLS
subscriber with its own client certificate.

What is checked: mutual TLS delivers; the host name check is on by default; a wrong CA, a
missing or foreign client certificate, a wrong password, DNS, a refused port and a
TLS/plain mismatch are each one clear log line and one count under their reason, while
the publisher keeps retrying (and the agent keeps processing); a password file readable
by others is refused by the config; a broker outage is bridged by reconnects whose waits
are jittered within [reconnect_min_s, reconnect_max_s], and nothing committed is lost.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.agent import Agent
from edge_agent.config import ConfigError, default_config, load_config
from edge_agent.local_broker import LocalBroker, TlsListener, free_port
from edge_agent.publisher import Backoff, describe_connack

pytestmark = pytest.mark.broker
LOGGER = "edge_agent.publisher"


# ------------------------------------------------------------------------ test PKI
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())  # P-256: quick to make, mosquitto and Python accept it


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, cn: str) -> Authority:
        key = _key()
        cert = (
            _validity(x509.CertificateBuilder())
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(self, cn: str, *, server: bool, hosts: tuple[str, ...] = ()) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = _key()
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            _validity(x509.CertificateBuilder())
            .subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if hosts:
            sans: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    sans.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class Pki:
    """Files of a test PKI: the CA the broker and clients use, a second unrelated CA, the
    broker's certificate (SAN 127.0.0.1 and localhost), one for a name we never connect to,
    two client certificates from the CA (agent, subscriber) and one from the other CA."""

    ca: Path
    other_ca: Path
    server_crt: Path
    server_key: Path
    misnamed_crt: Path
    misnamed_key: Path
    client_crt: Path
    client_key: Path
    sub_crt: Path
    sub_key: Path
    foreign_crt: Path
    foreign_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other = Authority.create("edge-agent test CA"), Authority.create("some other CA")
    files: dict[str, Path] = {"ca": _write_cert(d / "ca.crt", ca.cert), "other_ca": _write_cert(d / "other-ca.crt", other.cert)}
    for name, authority, cn, server, hosts in (
        ("server", ca, "test broker", True, ("127.0.0.1", "localhost")),
        ("misnamed", ca, "broker.example", True, ("broker.example",)),
        ("client", ca, "wtg-07", False, ()),
        ("sub", ca, "fleet-subscriber", False, ()),
        ("foreign", other, "wtg-99", False, ()),
    ):
        key, cert = authority.issue(cn, server=server, hosts=hosts)
        files[f"{name}_crt"] = _write_cert(d / f"{name}.crt", cert)
        files[f"{name}_key"] = _write_key(d / f"{name}.key", key)
    return Pki(**files)


# ------------------------------------------------------------------------ brokers
@pytest.fixture
def make_broker(mosquitto_binary: str, tmp_path: Path) -> Iterator[Callable[..., LocalBroker]]:
    """Factory of started brokers (stopped at teardown): ``make_broker(tls=..., password_file=...)``."""
    made: list[LocalBroker] = []

    def make(**kwargs: object) -> LocalBroker:
        broker = LocalBroker(tmp_path / f"broker{len(made)}", **kwargs)  # type: ignore[arg-type]
        made.append(broker)
        broker.start()
        return broker

    yield make
    for broker in made:
        broker.stop()


def mutual_tls(pki: Pki, **kwargs: object) -> TlsListener:
    return TlsListener(pki.ca, pki.server_crt, pki.server_key, **kwargs)  # type: ignore[arg-type]


def password_file(tmp_path: Path, user: str, password: str) -> Path:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed (Debian package mosquitto provides it)")
    path = tmp_path / "mosquitto.passwd"
    subprocess.run([tool, "-c", "-b", str(path), user, password], check=True, capture_output=True)
    return path


# ------------------------------------------------------------------------ subscriber over TLS
class TlsSubscriber:
    """A paho 2.x subscriber over mutual TLS with its own client certificate; reconnects on
    its own (0.1 s to 1 s) and subscribes again after each connect."""

    def __init__(self, broker: LocalBroker, pki: Pki, topic: str, *, client_id: str | None = None,
                 clean_session: bool = True) -> None:
        self.topic = topic
        self.messages: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        self.subacks = 0
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"sub-{uuid.uuid4().hex[:8]}",
                             clean_session=clean_session)
        client.tls_set(ca_certs=str(pki.ca), certfile=str(pki.sub_crt), keyfile=str(pki.sub_key))
        client.reconnect_delay_set(min_delay=0.1, max_delay=1)  # type: ignore[arg-type]
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1) if not rc.is_failure else None
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self.client = client
        client.connect(broker.host, broker.port, keepalive=30)
        client.loop_start()
        assert self.wait_subscribed(1), "TLS subscriber got no SUBACK"

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        with self.cond:
            self.subacks += 1
            self.cond.notify_all()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self.cond:
            self.messages.append((message.topic, bytes(message.payload)))
            self.cond.notify_all()

    def wait_subscribed(self, count: int, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.subacks >= count, timeout=timeout)

    def wait_until(self, predicate: Callable[[list[tuple[str, bytes]]], bool], timeout: float = 10.0) -> list[tuple[str, bytes]]:
        with self.cond:
            self.cond.wait_for(lambda: predicate(self.messages), timeout=timeout)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def tls_subscriber(pki: Pki) -> Iterator[Callable[..., TlsSubscriber]]:
    made: list[TlsSubscriber] = []

    def make(broker: LocalBroker, topic: str = "pdm/#", **kwargs: object) -> TlsSubscriber:
        sub = TlsSubscriber(broker, pki, topic, **kwargs)  # type: ignore[arg-type]
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


def seqs_of(messages: list[tuple[str, bytes]], kinds: tuple[str, ...] = ("alert", "summary")) -> list[int]:
    return [json.loads(p)["seq"] for t, p in messages if t.rsplit("/", 1)[-1] in kinds]


# ------------------------------------------------------------------------ the agent's publisher
def make_agent(tmp_path: Path, broker: LocalBroker | None = None, *, sources: tuple = (), **broker_keys: object) -> Agent:
    """An Agent (the agent's own outbox and Publisher) for ``broker`` with these [broker] keys;
    fast reconnects (0.1 s to 1 s) unless given."""
    cfg = default_config()
    keys: dict[str, object] = {"reconnect_min_s": 0.1, "reconnect_max_s": 1.0, "client_id": f"edge-agent-test-{uuid.uuid4().hex[:8]}"}
    if broker is not None:
        keys.update(host=broker.host, port=broker.port)
    keys.update(broker_keys)
    return Agent(replace(cfg, sources=sources, broker=replace(cfg.broker, **keys),
                         storage=replace(cfg.storage, dir=str(tmp_path / f"state-{uuid.uuid4().hex[:6]}"))))


def tls_keys(pki: Pki, *, ca: Path | None = None, client: bool = True) -> dict[str, object]:
    keys: dict[str, object] = {"tls": True, "ca_file": str(ca or pki.ca)}
    if client:
        keys.update(cert_file=str(pki.client_crt), key_file=str(pki.client_key))
    return keys


@contextmanager
def publishing(agent: Agent) -> Iterator[threading.Thread]:
    """The agent's publisher thread running; on exit it is stopped and must end promptly."""
    stop = threading.Event()
    thread = threading.Thread(target=agent.publisher.run, args=(stop,), name="publisher")
    thread.start()
    try:
        yield thread
    finally:
        t0 = time.monotonic()
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive(), "the publisher did not stop"
        assert time.monotonic() - t0 < 3.5


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def failure_lines(caplog: pytest.LogCaptureFixture, reason: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and f"failed ({reason}, attempt " in r.getMessage()]


def assert_clear_failure(agent: Agent, caplog: pytest.LogCaptureFixture, reason: str, *, attempts: int = 2) -> str:
    """``reason`` counted at least ``attempts`` times (it keeps retrying), each one a single
    log line without a traceback; returns the first line."""
    pub = agent.publisher
    assert wait_until(lambda: pub.counters()["failures_by_reason"].get(reason, 0) >= attempts, timeout=8), pub.counters()
    counters = pub.counters()
    assert counters["connected"] is False and counters["connects"] == 0
    assert set(counters["failures_by_reason"]) == {reason}, counters
    assert counters["last_error"].startswith(f"{reason}: ") and counters["retry_wait_s"] is not None
    assert 0 <= counters["next_attempt_in_s"] <= agent.cfg.broker.reconnect_max_s
    lines = failure_lines(caplog, reason)
    assert len(lines) >= attempts
    for record in lines:
        text = record.getMessage()
        assert "\n" not in text and record.exc_info is None and record.levelno >= logging.WARNING
    return lines[0].getMessage()


# ------------------------------------------------------------------------ backoff
def test_backoff_is_exponential_with_full_jitter_between_min_and_max() -> None:
    low, high = 1.0, 60.0
    assert [Backoff(low, high).ceiling(n) for n in range(7)] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    draws: list[list[float]] = [[] for _ in range(8)]
    backoff = Backoff(low, high, random.Random(7))
    for _ in range(2000):
        backoff.reset()
        for n in range(8):
            draws[n].append(backoff.next())
    for n, values in enumerate(draws):
        ceiling = min(high, low * 2 ** (n + 1))
        assert low <= min(values) and max(values) <= ceiling
        # uniform over [low, ceiling]: the whole range is used, mean and spread as uniform's
        width = ceiling - low
        assert min(values) < low + 0.02 * width and max(values) > ceiling - 0.02 * width
        assert statistics.mean(values) == pytest.approx(low + width / 2, rel=0.05)
        assert statistics.pstdev(values) == pytest.approx(width / 12 ** 0.5, rel=0.08)
    # no two gateways draw the same sequence (each Backoff has its own randomly seeded generator)
    a, b = Backoff(low, high), Backoff(low, high)
    assert [a.next() for _ in range(5)] != [b.next() for _ in range(5)]
    # min == max: no room for jitter, but still within bounds
    assert {Backoff(5, 5).next() for _ in range(10)} == {5.0}


def test_connack_refusals_are_named() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    cfg = replace(default_config().broker, username="wtg-07", password_file="/etc/edge-agent/broker.secret")
    named = {name: describe_connack(ReasonCode(PacketTypes.CONNACK, name), cfg) for name in (
        "Bad user name or password", "Not authorized", "Client identifier not valid", "Server unavailable")}
    assert named["Bad user name or password"] == (
        "bad_credentials", "bad user name or password (broker.username 'wtg-07', password from "
        "broker.password_file /etc/edge-agent/broker.secret)")
    assert named["Not authorized"][0] == "not_authorised"
    assert named["Client identifier not valid"] == (
        "broker_refused", f"the broker rejected the client id {cfg.client_id!r}")
    assert named["Server unavailable"] == ("broker_refused", "the broker refused the connection: Server unavailable")


# ------------------------------------------------------------------------ mutual TLS
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_mutual_tls_delivers_to_a_tls_subscriber(tmp_path, pki, make_broker, tls_subscriber, host) -> None:
    broker = make_broker(tls=mutual_tls(pki))
    sub = tls_subscriber(broker)
    agent = make_agent(tmp_path, broker, host=host, **tls_keys(pki))
    assert agent.cfg.broker.tls_insecure is False  # the host name is checked
    with publishing(agent):
        assert wait_until(agent.publisher.connected.is_set), agent.publisher.counters()
        seq = agent.outbox.commit("alert", {"schema": 1, "type": "inner_race", "severity": "warning"})
        msgs = sub.wait_until(lambda m: seq in seqs_of(m))
        assert wait_until(lambda: agent.outbox.depth() == 0)
    topics = [t for t, _ in msgs]
    assert topics[0].endswith("/status") and json.loads(msgs[0][1])["state"] == "online"
    alert = json.loads(next(p for t, p in msgs if t.endswith("/alert")))
    assert alert["seq"] == seq and alert["type"] == "inner_race"
    counters = agent.publisher.counters()
    assert counters["tls"] and counters["connects"] == 1 and counters["failures"] == 0 and counters["published"] >= 1
    # the broker saw a TLS client with our client id
    assert f"as {agent.publisher.client_id} " in broker.log_path.read_text()


def test_hostname_check_is_on_by_default_and_tls_insecure_skips_only_it(tmp_path, pki, make_broker, caplog) -> None:
    broker = make_broker(tls=TlsListener(pki.ca, pki.misnamed_crt, pki.misnamed_key))  # for broker.example only
    strict = make_agent(tmp_path, broker, **tls_keys(pki))
    with publishing(strict):
        line = assert_clear_failure(strict, caplog, "tls_certificate")
    assert "the broker's certificate is not valid for '127.0.0.1'" in line and "IP address mismatch" in line
    insecure = make_agent(tmp_path, broker, tls_insecure=True, **tls_keys(pki))
    with publishing(insecure):
        assert wait_until(insecure.publisher.connected.is_set), insecure.publisher.counters()
    # tls_insecure skips the name check only: a broker certificate from an unknown CA still fails
    untrusted = make_agent(tmp_path, broker, tls_insecure=True, **tls_keys(pki, ca=pki.other_ca))
    with publishing(untrusted):
        assert_clear_failure(untrusted, caplog, "tls_certificate")


def test_wrong_ca_is_one_clear_line_counted_and_retried(tmp_path, pki, make_broker, caplog) -> None:
    broker = make_broker(tls=mutual_tls(pki))
    agent = make_agent(tmp_path, broker, **tls_keys(pki, ca=pki.other_ca))
    with publishing(agent) as thread:
        line = assert_clear_failure(agent, caplog, "tls_certificate", attempts=3)
        assert thread.is_alive()
    assert line == (
        f"MQTT connect to 127.0.0.1:{broker.port} failed (tls_certificate, attempt 1): the broker's certificate "
        "was not accepted (self-signed certificate in certificate chain): is it signed by a CA in "
        f"broker.ca_file ({pki.other_ca})?; retrying in {agent.publisher.reconnect_waits[0]:.1f} s"
    )
    assert agent.publisher.counters()["attempts"] >= 3


def test_the_agent_keeps_processing_while_the_broker_is_unreachable(tmp_path, pki, make_broker) -> None:
    broker = make_broker(tls=mutual_tls(pki))
    cfg = default_config()
    source = replace(cfg.sources[0], scenario="inner_race", channels=1, speedup=8.0)
    agent = make_agent(tmp_path, broker, sources=(source,), **tls_keys(pki, ca=pki.other_ca))
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,))
    thread.start()
    try:
        assert wait_until(lambda: agent.publisher.counters()["failures"] >= 3, timeout=10)
        windows = agent.windows_total
        assert wait_until(lambda: agent.windows_total > windows + 10, timeout=5)  # still processing
        assert thread.is_alive()
        snap = agent.snapshot()
        assert snap["broker"]["connected"] is False and snap["counters"]["processing_errors"] == 0
        # the uplink's failures are in the status file, the summary and `edge-agent status`
        assert snap["broker"]["failures_by_reason"]["tls_certificate"] >= 3
        assert agent.summary()["uplink"]["failures_by_reason"]["tls_certificate"] >= 3
        from edge_agent.cli import _describe_link
        line = _describe_link(snap["broker"])
        assert "not connected (TLS)" in line and "failed attempts (tls_certificate " in line
        assert "last error: tls_certificate: the broker's certificate was not accepted" in line
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()  # and it stops cleanly


def test_missing_client_certificate_is_refused_by_the_broker(tmp_path, pki, make_broker, caplog) -> None:
    broker = make_broker(tls=mutual_tls(pki))
    agent = make_agent(tmp_path, broker, **tls_keys(pki, client=False))
    with publishing(agent):
        line = assert_clear_failure(agent, caplog, "tls_client_certificate")
    # (TLS 1.3: the broker's alert "certificate required" usually arrives; when a reset beats it,
    # the line says "probably requires")
    assert "failed (tls_client_certificate, attempt 1): the broker " in line and "requires a client certificate (" in line
    assert "): set broker.cert_file and broker.key_file; retrying in " in line
    assert "peer did not return a certificate" in broker.log_path.read_text()


def test_client_certificate_from_another_ca_is_refused_by_the_broker(tmp_path, pki, make_broker, caplog) -> None:
    broker = make_broker(tls=mutual_tls(pki))
    agent = make_agent(tmp_path, broker, tls=True, ca_file=str(pki.ca), cert_file=str(pki.foreign_crt),
                       key_file=str(pki.foreign_key))
    with publishing(agent):
        line = assert_clear_failure(agent, caplog, "tls_client_certificate")
    assert "refused the client certificate (" in line  # "most likely refused" when a reset beat the alert
    assert f"is broker.cert_file ({pki.foreign_crt}) signed by a CA the broker trusts, and still valid?" in line
    assert "certificate verify failed" in broker.log_path.read_text()


# ------------------------------------------------------------------------ user name and password file
def test_username_and_password_file_right_and_wrong(tmp_path, pki, make_broker, caplog) -> None:
    users = password_file(tmp_path, "wtg-07", "correct horse")
    # server-authenticated TLS (no client certificate needed), login required
    broker = make_broker(tls=mutual_tls(pki, require_certificate=False), password_file=users)
    right, wrong = tmp_path / "right.secret", tmp_path / "wrong.secret"
    right.write_text("correct horse\n")
    wrong.write_text("battery staple\n")
    for f in (right, wrong):
        f.chmod(0o600)
    tls = tls_keys(pki, client=False)

    caplog.clear()
    anonymous = make_agent(tmp_path, broker, **tls)
    with publishing(anonymous):
        line = assert_clear_failure(anonymous, caplog, "not_authorised")
    assert "not authorised: the broker wants a login; set broker.username and broker.password_file" in line

    caplog.clear()
    bad = make_agent(tmp_path, broker, username="wtg-07", password_file=str(wrong), **tls)
    with publishing(bad):
        line = assert_clear_failure(bad, caplog, "not_authorised")  # mosquitto answers a wrong password so
    assert f"the broker refused user 'wtg-07' (wrong password in broker.password_file {wrong}" in line

    good = make_agent(tmp_path, broker, username="wtg-07", password_file=str(right), **tls)
    with publishing(good):
        assert wait_until(good.publisher.connected.is_set), good.publisher.counters()
        seq = good.outbox.commit("alert", {"schema": 1, "type": "ball"})
        assert wait_until(lambda: good.outbox.depth() == 0), "no PUBACK"
    assert seq == 1 and good.publisher.counters()["failures"] == 0


def test_password_file_readable_by_others_is_refused_by_the_config(tmp_path, pki, make_broker, monkeypatch) -> None:
    users = password_file(tmp_path, "wtg-07", "s3cret")
    broker = make_broker(tls=mutual_tls(pki), password_file=users)  # mutual TLS and a login
    secret = tmp_path / "broker.secret"
    secret.write_text("s3cret\n")
    toml = tmp_path / "edge-agent.toml"
    toml.write_text(
        f'[broker]\nhost = "localhost"\nport = {broker.port}\ntls = true\nca_file = "{pki.ca}"\n'
        f'cert_file = "{pki.client_crt}"\nkey_file = "{pki.client_key}"\nusername = "wtg-07"\n'
        'password_file = "broker.secret"\nreconnect_min_s = 0.1\nreconnect_max_s = 1\n'
        f'[storage]\ndir = "{tmp_path / "state"}"\n'
    )
    monkeypatch.chdir(tmp_path)
    for mode in (0o644, 0o604, 0o640):
        secret.chmod(mode)
        with pytest.raises(ConfigError) as err:
            load_config("edge-agent.toml")
        assert err.value.problems == [
            f"edge-agent.toml:9: broker.password_file: {secret} has mode {mode:04o}; secrets must not be "
            f"readable by others: chmod 600 {secret}"]
    secret.chmod(0o600)
    cfg = load_config("edge-agent.toml")
    agent = Agent(replace(cfg, sources=()))
    with publishing(agent):
        assert wait_until(agent.publisher.connected.is_set), agent.publisher.counters()


# ------------------------------------------------------------------------ other failure reasons
@pytest.mark.parametrize("case", ["dns", "refused", "plain_to_tls", "tls_to_plain"])
def test_each_failure_reason_is_named(tmp_path, pki, make_broker, caplog, case) -> None:
    if case == "dns":
        agent = make_agent(tmp_path, host="no-such-broker.invalid", port=1883)
        reason, says = "dns", "cannot resolve the broker host name 'no-such-broker.invalid'"
    elif case == "refused":
        port = free_port()
        agent = make_agent(tmp_path, host="127.0.0.1", port=port)
        reason, says = "refused", f"connection refused: nothing listens on 127.0.0.1:{port} (is the broker running?)"
    elif case == "plain_to_tls":
        agent = make_agent(tmp_path, make_broker(tls=mutual_tls(pki)))
        reason, says = "closed", "the broker closed the connection before answering"
    else:
        agent = make_agent(tmp_path, make_broker(), **tls_keys(pki))
        reason, says = "tls_handshake", "the broker reset the connection during the TLS handshake ("
    with publishing(agent):
        line = assert_clear_failure(agent, caplog, reason)
    assert f"failed ({reason}, attempt 1): {says}" in line
    if case == "tls_to_plain":
        assert f"does port {agent.cfg.broker.port} speak TLS?" in line
    if case == "plain_to_tls":
        assert line.endswith("a TLS-only port? then set broker.tls = true; retrying in " + line.rsplit(" in ", 1)[1])


def test_unloadable_tls_files_stop_startup_with_one_line(tmp_path, pki) -> None:
    from edge_agent.errors import StartupError

    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(StartupError, match=r"^broker.ca_file: cannot load CA certificates from .*junk.pem: "):
        make_agent(tmp_path, tls=True, ca_file=str(junk))
    with pytest.raises(StartupError, match=r"^broker.cert_file/key_file: cannot load the client certificate"):
        make_agent(tmp_path, tls=True, ca_file=str(pki.ca), cert_file=str(pki.client_crt), key_file=str(pki.sub_key))


# ------------------------------------------------------------------------ reconnect
def test_broker_outage_reconnects_with_jittered_backoff_and_loses_nothing(tmp_path, pki, make_broker, tls_subscriber, caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    low, high = 0.2, 1.0
    broker = make_broker(tls=mutual_tls(pki))
    sub = tls_subscriber(broker, client_id="fleet-sub-outage", clean_session=False)  # its queue survives restarts
    agent = make_agent(tmp_path, broker, reconnect_min_s=low, reconnect_max_s=high, **tls_keys(pki))
    pub, outbox = agent.publisher, agent.outbox
    committed: list[int] = []
    with publishing(agent):
        assert wait_until(pub.connected.is_set)
        committed += [outbox.commit("alert", {"schema": 1, "n": i}) for i in range(5)]
        sub.wait_until(lambda m: set(committed) <= set(seqs_of(m)))
        assert wait_until(lambda: outbox.depth() == 0)
        broker.stop()  # outage: the link drops, reconnects are refused
        committed += [outbox.commit("summary" if i % 2 else "alert", {"schema": 1, "n": i}) for i in range(5, 15)]
        assert wait_until(lambda: pub.counters()["failures_by_reason"].get("refused", 0) >= 4, timeout=10)
        assert outbox.depth() == 10 and not pub.connected.is_set()
        broker.start()  # same port
        assert sub.wait_subscribed(2, timeout=5)
        msgs = sub.wait_until(lambda m: set(committed) <= set(seqs_of(m)), timeout=10)
        assert wait_until(lambda: outbox.depth() == 0)
    # nothing committed is lost; duplicates only as QoS 1 allows
    seen = seqs_of(msgs)
    assert set(seen) == set(committed) == set(range(1, 16))
    duplicates = len(seen) - len(set(seen))
    assert duplicates <= 5
    for kind in ("alert", "summary"):  # in commit order per topic (a resent duplicate may come late)
        first_seen = list(dict.fromkeys(seqs_of(msgs, (kind,))))
        assert first_seen == sorted(first_seen)
    counters = pub.counters()
    assert counters["connects"] == 2 and counters["disconnects"] == 1
    assert counters["last_disconnect"] == "the broker closed the connection"
    assert counters["consecutive_failures"] == 0 and counters["next_attempt_in_s"] is None
    assert counters["session_present"] is True  # clean_session=False: the broker kept our session
    # the waits: one before each reconnect attempt (link lost, then each refusal), within
    # [min, max], growing ceilings, jittered (not the plain doubling 0.2, 0.4, 0.8, 1.0)
    waits = list(pub.reconnect_waits)
    refusals = counters["failures_by_reason"]["refused"]
    assert len(waits) == 1 + refusals >= 5
    for n, wait in enumerate(waits):
        assert low <= wait <= min(high, low * 2 ** (n + 1)), (n, waits)
    assert len({round(w, 6) for w in waits}) == len(waits)
    assert waits[:4] != [0.2, 0.4, 0.8, 1.0]
    # ... and really waited: the time between one report and the next attempt's report is
    # that wait (a refused connect takes about no time)
    reports = [r for r in caplog.records if r.name == LOGGER and ("lost after" in r.getMessage() or "failed (refused" in r.getMessage())]
    assert len(reports) == len(waits) and "lost after" in reports[0].getMessage()
    for before, after, wait in zip(reports, reports[1:], waits):
        assert wait - 0.02 <= after.created - before.created <= wait + 1.0, (waits, [r.created for r in reports])


def test_messages_in_flight_when_the_broker_dies_are_resent_after_reconnect(tmp_path, pki, make_broker, tls_subscriber) -> None:
    # debug logging: mosquitto logs every PUBLISH it receives with its DUP flag
    broker = make_broker(tls=mutual_tls(pki), extra_conf="log_type debug")
    agent = make_agent(tmp_path, broker, reconnect_min_s=1.0, reconnect_max_s=2.0, **tls_keys(pki))
    pub, outbox = agent.publisher, agent.outbox
    with publishing(agent):
        assert wait_until(pub.connected.is_set)
        os.kill(broker.pid, signal.SIGSTOP)  # frozen: the kernel takes our packets, nobody answers
        try:
            committed = [outbox.commit("alert", {"schema": 1, "n": i}) for i in range(5)]
            time.sleep(0.3)  # published: in flight, no PUBACK
            assert outbox.depth() == 5 and pub.connected.is_set()
        finally:
            broker.kill()  # the crash: the link drops with 5 messages in flight
        assert wait_until(lambda: not pub.connected.is_set())
        broker.start()
        # subscribed before the publisher's first retry, which waits at least reconnect_min_s
        sub = tls_subscriber(broker)
        msgs = sub.wait_until(lambda m: set(committed) <= set(seqs_of(m)), timeout=8)
        assert wait_until(lambda: outbox.depth() == 0)
    assert set(committed) <= set(seqs_of(msgs))
    counters = pub.counters()
    assert counters["connects"] == 2 and counters["disconnects"] == 1
    assert counters["session_present"] is False  # the crash lost the broker's copy of our session
    # paho sent the five again after the reconnect, flagged as duplicates (DUP = 1)
    resent = re.findall(rf"Received PUBLISH from {re.escape(pub.client_id)} \(d1, q1, r0, m\d+, '[^']*/alert'",
                        broker.log_path.read_text())
    assert len(resent) == 5
