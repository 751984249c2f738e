"""The uplink: one paho-mqtt 2.x client that drains the outbox to the central broker.

It owns the MQTT connection: a retained ``status`` birth message on every connect and a
retained ``offline`` last will; QoS 1 publishes of outbox items in commit order, each acked
in the outbox only on PUBACK (``on_publish``), so nothing is deleted before the broker
has it.

Connection (issue #7, part 3)
-----------------------------
*We drive the reconnects ourselves.* paho's own loop (``loop_start``/``loop_forever``)
reconnects with a plain doubling delay (``reconnect_delay_set``: min, 2 min, 4 min, ...,
max) and no jitter, and it swallows the exception of a failed connect (``on_connect_fail``
gets no reason), so it could tell neither a DNS failure from a refused port nor a bad
certificate from a broker that is down. So the publisher runs its own network thread
("publisher-net") with the same public calls paho's loop is made of: ``reconnect()``
(TCP connect, TLS handshake, CONNECT; raises the real exception), then ``loop()`` until
the link ends (reads, writes, keepalive pings), then a jittered wait, and again. paho is
told that someone else drives the socket (``on_socket_register_write``), so a
``publish()`` from the publisher thread only queues the packet and wakes the network
thread; only that thread ever touches the socket (an SSL socket must not be read and
written from two threads at once).

*Backoff: exponential with "full jitter" above a floor* (after the AWS Architecture Blog,
"Exponential Backoff And Jitter"). The n-th wait in a row (n = 0, 1, ...) is drawn
uniformly from ``[reconnect_min_s, min(reconnect_max_s, reconnect_min_s * 2**(n+1))]``.
Full jitter is what spreads a fleet out: when the central broker restarts, every gateway
loses its link at the same instant, and with a fixed or merely doubling delay they would
all come back in the same second, again and again. The floor keeps ``reconnect_min_s``
what its name says (the shortest wait) and the ceiling keeps ``reconnect_max_s`` the
longest; so every wait lies in ``[reconnect_min_s, reconnect_max_s]``. There is a wait
before *every* reconnect, the first one after a lost link included (that one is the
thundering herd); only the very first connect at start is immediate. The backoff starts
again from the bottom once a link has stayed up ``STABLE_AFTER_S`` (30 s): a link that
drops sooner (a flapping broker, a second gateway using our client id and kicking us out)
keeps backing off instead of reconnecting every second.

*Persistent session.* ``clean_session=False`` with a stable client id
(``broker.client_id``, default ``edge-agent-{site}-{id}``): the broker keeps our session
(subscriptions, and the messages queued for them while we are away: the command topic)
across reconnects, and paho keeps its QoS 1 messages in flight and sends them again, with
the DUP flag, after the reconnect; the outbox acks an item only on its PUBACK. So a
message in flight when the link drops is resent: a duplicate is possible, a loss is not
(consumers drop duplicates by ``seq``). ``session_present`` in the CONNACK is logged and
kept (:attr:`Publisher.session_present`). Across a restart of the agent, paho's state is
gone; the outbox (committed before publish) is what resends then.

*Failures are named and counted.* Each failed attempt is one log line
``MQTT connect to HOST:PORT failed (REASON, attempt N): what happened and what to check;
retrying in X s`` (ERROR when a person must act: certificates, credentials, a refusing
broker; WARNING for the network: refused, dns, timeout, network, closed), and one count
in :meth:`Publisher.counters` under REASON (``FAILURE_REASONS``). A lost link is one
WARNING line and counts in ``disconnects``. Nothing is raised: the agent keeps running
and keeps retrying, whatever the broker does.

*TLS* is one switch (``broker.tls``): TLS 1.2 or later, the broker's certificate checked
against ``broker.ca_file`` (or the system store) and its host name against
``broker.host`` (``broker.tls_insecure`` turns the name check off, for tests only; the
chain is still checked); ``cert_file`` + ``key_file`` add a client certificate (mutual
TLS). The files are loaded once, at start: an unreadable or malformed one (or an encrypted
key) stops start-up with one line naming the key (:class:`StartupError`, exit 2).
*Login*: ``broker.username`` with the password in ``broker.password_file`` (the config
refuses a file readable by group or others); the file is read again before every connect
attempt, so a changed password is used without a restart.
"""
from __future__ import annotations

import json
import logging
import random
import socket
import ssl
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import paho.mqtt.client as mqtt

from edge_agent.errors import StartupError
from edge_agent.topics import Topics

if TYPE_CHECKING:  # the outbox class is only an annotation here
    from edge_agent.outbox import Outbox

log = logging.getLogger(__name__)
STATUS_SCHEMA = 1
WILL_KEYS = ("site", "device", "group", "agent_version", "model")  # of the birth, kept in the last will
MAX_INFLIGHT = 20
MAX_COMMANDS_QUEUED = 256  # commands waiting for the processing thread; beyond: dropped, counted
INBOUND_TOPICS = ("cmd/+", "model/offer", "model/chunk/#")  # below the device's base
CONNECT_TIMEOUT_S = 5.0  # TCP connect + TLS handshake (paho's connect_timeout)
CONNACK_TIMEOUT_S = 10.0  # from CONNECT sent to CONNACK received
STABLE_AFTER_S = 30.0  # a link up this long resets the backoff
LOOP_TIMEOUT_S = 0.25  # longest select() in the network thread; bounds the reaction to stop

# Why a connect attempt failed: the keys of counters()["failures_by_reason"].
FAILURE_REASONS = (
    "refused",  # TCP connection refused: nothing listens there (broker down)
    "dns",  # the broker's host name does not resolve
    "timeout",  # no TCP/TLS answer within CONNECT_TIMEOUT_S, or no CONNACK within CONNACK_TIMEOUT_S
    "network",  # another socket error: unreachable, reset, ...
    "closed",  # the broker closed the connection before its CONNACK (e.g. plain MQTT to a TLS port)
    "tls_certificate",  # the broker's certificate: not signed by ca_file, expired, or not for broker.host
    "tls_client_certificate",  # the broker wants a client certificate, or refused ours
    "tls_handshake",  # another TLS failure (e.g. TLS to a port that does not speak TLS)
    "bad_credentials",  # CONNACK: bad user name or password
    "not_authorised",  # CONNACK: not authorised (mosquitto's answer to a wrong password, too)
    "broker_refused",  # CONNACK: another refusal (server unavailable, client id rejected, ...)
    "other",  # anything else (logged with its type)
)
_NEEDS_A_PERSON = {"tls_certificate", "tls_client_certificate", "tls_handshake", "bad_credentials",
                   "not_authorised", "broker_refused", "other"}
# OpenSSL alert names meaning "the broker does not accept our client certificate".
_CLIENT_CERT_ALERTS = ("CERTIFICATE_REQUIRED", "UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN",
                       "CERTIFICATE_EXPIRED", "CERTIFICATE_REVOKED", "UNSUPPORTED_CERTIFICATE",
                       "ACCESS_DENIED", "DECRYPT_ERROR")


class Backoff:
    """Exponential backoff with full jitter between ``low`` and ``high`` seconds.

    The n-th wait in a row (``next()`` called n times since ``reset()``) is uniform in
    ``[low, min(high, low * 2**(n+1))]`` (see the module docstring for why).
    """

    def __init__(self, low: float, high: float, rng: random.Random | None = None) -> None:
        self.low = float(low)
        self.high = max(float(high), self.low)
        self.failures = 0
        self._rng = rng or random.Random()

    def ceiling(self, n: int) -> float:
        """The largest wait the n-th retry in a row can draw."""
        return min(self.high, self.low * 2.0 ** min(n + 1, 64))

    def next(self) -> float:
        wait = self._rng.uniform(self.low, self.ceiling(self.failures))
        self.failures += 1
        return min(max(wait, self.low), self.high)

    def reset(self) -> None:
        self.failures = 0


def _one_line(text: object) -> str:
    """An error text as one short line: OpenSSL's "(_ssl.c:1006)" suffix and newlines gone."""
    out = " ".join(str(text).split())
    cut = out.rfind(" (_ssl.c:")
    return out[:cut] if cut > 0 and out.endswith(")") else out


def _where(cfg: Any) -> str:
    return f"{cfg.host}:{cfg.port}"


def _client_certificate_problem(text: str, cfg: Any, *, probably: bool = False) -> tuple[str, str]:
    if not cfg.cert_file:
        said = "probably requires" if probably else "requires"
        return "tls_client_certificate", f"the broker {said} a client certificate ({text}): set broker.cert_file and broker.key_file"
    said = "most likely refused" if probably else "refused"
    return ("tls_client_certificate", f"the broker {said} the client certificate ({text}): is broker.cert_file "
            f"({cfg.cert_file}) signed by a CA the broker trusts, and still valid?")


def describe_tls_error(text: str, cfg: Any) -> tuple[str, str]:
    """(reason, detail) for an OpenSSL error text during the handshake, or an alert the
    broker sent after it (with TLS 1.3 a refused client certificate arrives only then)."""
    text = _one_line(text)
    upper = text.upper()
    if any(alert in upper for alert in _CLIENT_CERT_ALERTS) or (
        "HANDSHAKE_FAILURE" in upper and not cfg.cert_file
    ):
        return _client_certificate_problem(text, cfg)
    hint = ""
    if any(s in upper for s in ("WRONG_VERSION_NUMBER", "UNEXPECTED_EOF", "EOF OCCURRED", "RECORD_LAYER",
                                "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST")):
        hint = f": does port {cfg.port} speak TLS? (broker.tls = true needs the broker's TLS listener)"
    return "tls_handshake", f"TLS handshake failed ({text}){hint}"


def describe_exception(exc: BaseException, cfg: Any) -> tuple[str, str]:
    """(reason, detail) for an exception raised by a connect attempt (paho's reconnect())."""
    if isinstance(exc, ssl.SSLCertVerificationError):  # also ssl.CertificateError
        why = _one_line(getattr(exc, "verify_message", "") or exc)
        if "mismatch" in why.lower():
            return ("tls_certificate", f"the broker's certificate is not valid for {cfg.host!r} ({why}): "
                    "broker.host must be a name or address the certificate lists")
        ca = f"broker.ca_file ({cfg.ca_file})" if cfg.ca_file else "the system CA store (broker.ca_file is empty)"
        return "tls_certificate", f"the broker's certificate was not accepted ({why}): is it signed by a CA in {ca}?"
    if isinstance(exc, ssl.SSLError):
        return describe_tls_error(str(exc), cfg)
    if isinstance(exc, socket.gaierror):
        return "dns", f"cannot resolve the broker host name {cfg.host!r}: {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", f"connection refused: nothing listens on {_where(cfg)} (is the broker running?)"
    if isinstance(exc, TimeoutError):
        return "timeout", f"no answer from {_where(cfg)} within {CONNECT_TIMEOUT_S:g} s"
    if cfg.tls and isinstance(exc, (ConnectionResetError, BrokenPipeError)):  # TCP was up: the handshake
        return ("tls_handshake", f"the broker reset the connection during the TLS handshake ({exc.strerror or exc}): "
                f"does port {cfg.port} speak TLS? (broker.tls = true needs the broker's TLS listener)")
    if isinstance(exc, OSError):
        return "network", _one_line(exc.strerror or exc)
    return "other", f"{type(exc).__name__}: {_one_line(exc)}"


def describe_closed(socket_error: str, cfg: Any) -> tuple[str, str]:
    """(reason, detail) when the connection ended before the broker's CONNACK; ``socket_error``
    is paho's log line about it ("" when the broker simply closed)."""
    text = _one_line(socket_error).removeprefix("failed to receive on socket: ")
    upper = text.upper()
    if any(alert in upper for alert in _CLIENT_CERT_ALERTS):  # the alert came through
        return _client_certificate_problem(text, cfg)
    if cfg.tls and text:
        # The TLS handshake had succeeded (reconnect() returned), then the broker dropped us
        # with an EOF or a reset before answering. With TLS 1.3 the broker's verdict on our
        # client certificate comes after the handshake, and its alert is often lost to the
        # reset that closing on our unread CONNECT causes: by far the likeliest cause.
        return _client_certificate_problem(f"dropped right after the TLS handshake: {text}", cfg, probably=True)
    why = f" ({text})" if text else ""
    hint = "" if cfg.tls else ": a TLS-only port? then set broker.tls = true"
    return "closed", f"the broker closed the connection before answering{why}{hint}"


def describe_connack(reason_code: Any, cfg: Any) -> tuple[str, str]:
    """(reason, detail) for a CONNACK that refuses (MQTT 3.1.1 codes as paho 2.x reason codes)."""
    value = getattr(reason_code, "value", reason_code)
    if value == 134:  # 3.1.1 code 4
        return ("bad_credentials", f"bad user name or password (broker.username {cfg.username!r}, "
                f"password from broker.password_file {cfg.password_file})")
    if value == 135:  # 3.1.1 code 5
        if not cfg.username:
            return ("not_authorised", "not authorised: the broker wants a login; set broker.username and "
                    "broker.password_file")
        return ("not_authorised", f"not authorised: the broker refused user {cfg.username!r} (wrong password "
                f"in broker.password_file {cfg.password_file}, or the user is not allowed)")
    if value == 133:  # 3.1.1 code 2
        return "broker_refused", f"the broker rejected the client id {cfg.client_id!r}"
    return "broker_refused", f"the broker refused the connection: {reason_code}"


def _refuse_encrypted_key() -> str:
    raise _EncryptedKey()


class _EncryptedKey(Exception):
    pass


def tls_context(cfg: Any) -> ssl.SSLContext:
    """The client SSL context for ``[broker]``: TLS >= 1.2, broker certificate and host name
    checked; a client certificate when ``cert_file`` is set. A file that does not load is a
    StartupError naming its key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname on
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if cfg.ca_file:
            ctx.load_verify_locations(cafile=cfg.ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"broker.ca_file: cannot load CA certificates from {cfg.ca_file}: "
                           f"{_one_line(exc)}") from None
    if cfg.cert_file:
        try:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None, password=_refuse_encrypted_key)
        except _EncryptedKey:
            raise StartupError(f"broker.key_file: {cfg.key_file} is encrypted; the agent needs the key "
                               "unencrypted (protect it with mode 0600)") from None
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"broker.cert_file/key_file: cannot load the client certificate "
                               f"{cfg.cert_file} with key {cfg.key_file}: {_one_line(exc)}") from None
    if cfg.tls_insecure:
        ctx.check_hostname = False  # the chain is still verified
    return ctx


def read_password(path: str) -> str:
    """The password in ``path``: the file's text without surrounding whitespace."""
    return Path(path).read_text(encoding="utf-8").strip()


class Publisher:
    def __init__(
        self, broker_cfg: Any, topics: Topics, outbox: Outbox, birth: Callable[[], dict], qos: int = 1
    ) -> None:
        self.cfg = broker_cfg
        self.qos = qos
        self.topics = topics
        self.outbox = outbox
        self._birth = birth
        self._inflight: dict[int, int] = {}  # paho mid -> outbox id
        self._pubacks: deque[int] = deque()  # mids PUBACKed, handed from paho's thread (see _on_publish)
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.connects = 0
        self.disconnects = 0
        self.published = 0
        self.last_error = ""
        self.session_present: bool | None = None
        self._closing = False
        # connection state: written by the network thread, counters read under _stats_lock
        self.backoff = Backoff(broker_cfg.reconnect_min_s, broker_cfg.reconnect_max_s)
        self.reconnect_waits: deque[float] = deque(maxlen=64)  # the latest waits chosen, seconds
        self._stats_lock = threading.Lock()
        self._attempts = 0
        self._failures: Counter[str] = Counter()
        self._consecutive_failures = 0
        self._last_reason = ""
        self._last_error_time: float | None = None
        self._last_loss = ""  # why the last established link ended
        self._retry_in: float | None = None  # the wait chosen after the last failure or loss
        self._next_attempt_at: float | None = None  # its end, time.time()
        self._up_since: float | None = None  # monotonic time of the current link's CONNACK
        self._refusal: tuple[str, str] | None = None  # this attempt's CONNACK refusal
        self._socket_error = ""  # paho's first error log line of this attempt
        self._net_stop = threading.Event()
        self._net_thread: threading.Thread | None = None
        # Commands and model updates from the fleet (INBOUND_TOPICS): handed over as (topic below
        # the device's base, payload) to the processing
        # thread, which checks and acts on them (commands.py). Bounded: a flood is dropped, counted.
        self.commands: deque[tuple[str, bytes]] = deque()
        self.commands_dropped = 0

        client_id = broker_cfg.client_id or f"edge-agent-{topics.site}-{topics.device}"
        self.client_id = client_id  # stable: the broker keeps our session under it
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
        )
        self.client.connect_timeout = CONNECT_TIMEOUT_S
        self.client.will_set(self.topics.of("status"), self._status_payload("offline"), qos=1, retain=True)
        self.client.max_inflight_messages_set(MAX_INFLIGHT)
        if broker_cfg.tls:
            self.client.tls_set_context(tls_context(broker_cfg))
        if broker_cfg.username:
            try:
                password = read_password(broker_cfg.password_file) if broker_cfg.password_file else None
            except (OSError, UnicodeError) as exc:
                raise StartupError(f"broker.password_file: cannot read {broker_cfg.password_file}: "
                                   f"{_one_line(exc)}") from None
            self.client.username_pw_set(broker_cfg.username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_log = self._on_log
        # Our network thread drives the socket: with this set, publish() from another thread
        # only queues the packet and wakes that thread instead of writing to the socket itself.
        self.client.on_socket_register_write = lambda client, userdata, sock: None

    # -- what the status and the summary read ----------------------------------------------
    def counters(self) -> dict:
        """The connection's health, cumulative since start (thread-safe)."""
        up = self.connected.is_set()
        with self._stats_lock:
            next_at = self._next_attempt_at
            return {
                "connected": up,
                "address": _where(self.cfg),
                "tls": bool(self.cfg.tls),
                "connects": self.connects,
                "attempts": self._attempts,
                "failures": sum(self._failures.values()),
                "failures_by_reason": dict(self._failures),
                "consecutive_failures": self._consecutive_failures,
                "disconnects": self.disconnects,
                "last_disconnect": self._last_loss,
                "published": self.published,
                "commands_dropped": self.commands_dropped,
                "session_present": self.session_present,
                "last_error": self.last_error,
                "last_error_reason": self._last_reason,
                "last_error_time": self._last_error_time,
                "retry_wait_s": None if up else self._retry_in,
                "next_attempt_in_s": None if up or next_at is None else round(max(0.0, next_at - time.time()), 3),
            }

    # -- paho callbacks (run on the network thread) -----------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusal = describe_connack(reason_code, self.cfg)
            return
        with self._stats_lock:
            self.connects += 1
            self._consecutive_failures = 0
            self._retry_in = self._next_attempt_at = None
        self._up_since = time.monotonic()
        self.session_present = bool(flags.session_present)
        sock = client.socket()
        over = f" over {sock.version()}" if self.cfg.tls and hasattr(sock, "version") else ""
        log.info("MQTT connected to %s%s as %s (session %s)", _where(self.cfg), over,
                 self.client_id,
                 "resumed" if self.session_present else "new")
        client.publish(self.topics.of("status"), json.dumps(self._birth()), qos=1, retain=True)
        # the fleet's commands and model updates; again on every connect: harmless with a kept session
        client.subscribe([(self.topics.of(t), 1) for t in INBOUND_TOPICS])
        self.connected.set()
        self.outbox.new_item.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()

    def _on_log(self, client, userdata, level, buf) -> None:
        if level == mqtt.MQTT_LOG_ERR and not self._socket_error:
            self._socket_error = buf  # the first error of an attempt is the cause; later ones follow from it

    def _on_message(self, client, userdata, message) -> None:
        """A command or model-update message from the fleet: only queued here (paho's thread
        stays short) as (topic below the device's base, payload); the processing thread
        checks it. Only this device's own topics are taken."""
        prefix = self.topics.base + "/"
        if not message.topic.startswith(prefix):
            return
        if len(self.commands) >= MAX_COMMANDS_QUEUED:
            self.commands_dropped += 1
            return
        self.commands.append((message.topic[len(prefix):], bytes(message.payload)))

    def send_now(self, kind: str, payload: dict, retain: bool = False) -> bool:
        """Publish outside the outbox (QoS 1): the model-update protocol's requests and
        progress, which are about now (progress is sent again on every connect). Returns
        False when the link is down (nothing is queued)."""
        if not self.connected.is_set():
            return False
        info = self.client.publish(self.topics.of(kind), json.dumps(payload, separators=(",", ":")), qos=1, retain=retain)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # paho calls this holding its own locks (_out_message_mutex, _callback_mutex), which
        # client.publish() also takes: taking self._lock here while the publisher thread holds
        # it inside publish() deadlocked the uplink. So only a lock-free hand-over; the
        # publisher thread, which records the mids, resolves them (_take_pubacks).
        self._pubacks.append(mid)
        self.outbox.new_item.set()

    def _take_pubacks(self) -> None:
        """Ack in the outbox the items whose PUBACK has come (publisher thread)."""
        while self._pubacks:
            mid = self._pubacks.popleft()
            with self._lock:
                item_id = self._inflight.pop(mid, None)
            if item_id is not None:
                self.outbox.ack(item_id)
                self.published += 1

    # -- the network thread: connect, serve, back off, again ---------------------------------
    def _network(self) -> None:
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        wait = 0.0
        while not self._net_stop.is_set():
            if wait > 0 and self._net_stop.wait(wait):
                break
            try:
                outcome = self._connect_and_serve()
            except Exception as exc:  # noqa: BLE001 - a bug must not end the uplink: log, count, retry
                log.exception("MQTT network loop failed")
                self.connected.clear()
                outcome = ("other", f"{type(exc).__name__}: {_one_line(exc)}", None)
            if outcome is None or self._closing or self._net_stop.is_set():
                break
            reason, detail, up_for = outcome
            if up_for is not None and up_for >= STABLE_AFTER_S:
                self.backoff.reset()
            wait = self.backoff.next()
            self.reconnect_waits.append(wait)
            self._report(reason, detail, up_for, wait)
        self._close_socket()

    def _connect_and_serve(self) -> tuple[str, str, float | None] | None:
        """One connection: connect, then run paho's loop until the link ends. Returns
        (reason, detail, seconds the link was up or None) or None when told to stop."""
        self._refusal = None
        self._socket_error = ""
        self._up_since = None
        self._refresh_password()
        with self._stats_lock:
            self._attempts += 1
        # the will names the model running now (it may have changed since the last connect)
        self.client.will_set(self.topics.of("status"), self._status_payload("offline"), qos=1, retain=True)
        try:
            self.client.reconnect()
        except Exception as exc:  # noqa: BLE001 - every failure is named and counted
            return (*describe_exception(exc, self.cfg), None)
        deadline = time.monotonic() + CONNACK_TIMEOUT_S
        while True:
            rc = self.client.loop(timeout=LOOP_TIMEOUT_S)
            if self._closing or self._net_stop.is_set():
                return None
            if rc != mqtt.MQTT_ERR_SUCCESS:
                break
            if self._up_since is None and self._refusal is None and time.monotonic() > deadline:
                return "timeout", f"no CONNACK from {_where(self.cfg)} within {CONNACK_TIMEOUT_S:g} s", None
        self.connected.clear()
        if self._up_since is not None:
            if self._socket_error:
                cause = _one_line(self._socket_error)
            elif rc == mqtt.MQTT_ERR_CONN_LOST:
                cause = "the broker closed the connection"
            else:
                cause = mqtt.error_string(rc).rstrip(".")
            return "link_lost", cause, time.monotonic() - self._up_since
        if self._refusal is not None:
            return (*self._refusal, None)
        return (*describe_closed(self._socket_error, self.cfg), None)

    def _report(self, reason: str, detail: str, up_for: float | None, wait: float) -> None:
        """One log line and the counts for a failed attempt or a lost link."""
        if reason == "link_lost":
            with self._stats_lock:
                self.disconnects += 1
                self._last_loss = detail
                self._retry_in, self._next_attempt_at = wait, time.time() + wait
            log.warning("MQTT link to %s lost after %.1f s (%s); reconnecting in %.1f s",
                        _where(self.cfg), up_for or 0.0, detail, wait)
            return
        now = time.time()
        with self._stats_lock:
            self._failures[reason] += 1
            self._consecutive_failures += 1
            attempt = self._consecutive_failures
            self.last_error = f"{reason}: {detail}"
            self._last_reason = reason
            self._last_error_time = now
            self._retry_in, self._next_attempt_at = wait, now + wait
        log.log(logging.ERROR if reason in _NEEDS_A_PERSON else logging.WARNING,
                "MQTT connect to %s failed (%s, attempt %d): %s; retrying in %.1f s",
                _where(self.cfg), reason, attempt, detail, wait)

    def _refresh_password(self) -> None:
        if not (self.cfg.username and self.cfg.password_file):
            return
        try:
            self.client.username_pw_set(self.cfg.username, read_password(self.cfg.password_file))
        except (OSError, UnicodeError) as exc:
            log.warning("broker.password_file: cannot read %s (%s); using the password read before",
                        self.cfg.password_file, _one_line(exc))

    def _close_socket(self) -> None:
        """Leave no socket open when the network thread ends (a stop during a connect)."""
        try:
            if self.client.socket() is not None:
                self.client.disconnect()
                for _ in range(4):
                    if self.client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                        break
        except Exception:  # noqa: BLE001 - shutting down: nothing left to report to
            log.debug("closing the MQTT socket failed", exc_info=True)

    def _stop_network(self, timeout: float = 0.5) -> None:
        """After disconnect(): let the network thread send it, then end the thread."""
        thread = self._net_thread
        if thread is None:
            return
        deadline = time.monotonic() + 1.0
        while thread.is_alive() and self.client.socket() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        self._net_stop.set()
        thread.join(timeout=timeout)

    # -- the publisher thread ---------------------------------------------------------------
    def _status_payload(self, state: str, reason: str = "") -> str:
        """The last will / goodbye: ``state`` plus who this is (site, device, group, versions,
        from the birth), so the fleet still finds an offline device of a group (fleet push
        offers it the update, retained, for when it comes back). The goodbye says
        ``"reason": "shutdown"``; the will has no reason (the broker sends it for a lost link)."""
        doc = {"schema": STATUS_SCHEMA, "state": state, "time": time.time()}
        if reason:
            doc["reason"] = reason
        try:
            birth = self._birth()
        except Exception:  # noqa: BLE001 - the will must be set even if the birth cannot be made yet
            birth = {}
        doc.update({k: birth[k] for k in WILL_KEYS if k in birth})
        return json.dumps(doc)

    def run(self, stop: threading.Event) -> None:
        """Connect, then publish outbox items until ``stop`` is set."""
        self._net_thread = threading.Thread(target=self._network, name="publisher-net", daemon=True)
        self._net_thread.start()
        try:
            while not stop.is_set():
                if not self.connected.wait(0.2):
                    continue
                self.outbox.new_item.wait(0.2)
                self.outbox.new_item.clear()
                self._publish_pending()
        finally:
            self._shutdown()

    def _publish_pending(self) -> None:
        self._take_pubacks()
        with self._lock:
            room = MAX_INFLIGHT - len(self._inflight)
            skip = set(self._inflight.values())
        if room <= 0:
            return
        for item in self.outbox.pending(room, skip):
            info = self.client.publish(self.topics.of(item.kind), item.payload, qos=self.qos)  # not under self._lock
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                break
            with self._lock:  # a PUBACK arriving meanwhile waits in _pubacks until this is recorded
                self._inflight[info.mid] = item.id

    def _shutdown(self, drain_s: float = 1.5, goodbye_s: float = 0.5) -> None:
        """Give in-flight messages a moment, publish ``offline``, disconnect cleanly. Bounded:
        ``drain_s`` + ``goodbye_s`` + 1 s for the DISCONNECT (the daemon's stop has 5 s).

        The goodbye must reach the socket before the DISCONNECT: a clean disconnect makes the
        broker discard the will, so a goodbye left behind would leave ``online`` retained.
        With messages still in flight (a backlog, a slow broker) a QoS 1 goodbye would wait in
        paho's queue behind them (at most MAX_INFLIGHT in flight) and never be written; so
        then it goes at QoS 0, written at once (the broker reads it before the DISCONNECT)."""
        deadline = time.monotonic() + drain_s
        if self.connected.is_set():
            self._publish_pending()
            while time.monotonic() < deadline:
                self._take_pubacks()
                with self._lock:
                    if not self._inflight:
                        break
                time.sleep(0.02)
            self._take_pubacks()
            with self._lock:
                qos = 0 if self._inflight else 1
            info = self.client.publish(self.topics.of("status"), self._status_payload("offline", "shutdown"),
                                       qos=qos, retain=True)
            try:
                info.wait_for_publish(timeout=goodbye_s)
            except (RuntimeError, ValueError):
                pass
            self._take_pubacks()
        self._closing = True
        self.client.disconnect()
        self._stop_network()
