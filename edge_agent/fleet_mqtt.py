"""The broker connection of the live fleet commands (``fleet push``, ``fleet status``).

Why one module: both commands take the same options (``--broker HOST[:PORT]``, ``--prefix``,
TLS and login, as ``fleet drift``), connect the same way (paho 2.x, callback API VERSION2,
clean session, a fresh client id) and read the same untrusted topics. Messages arrive on
paho's network thread and are only queued there; the command's own thread reads
:attr:`FleetConnection.inbox` and does the work, so a callback never raises and state has one
owner. The client reconnects on its own and subscribes again after every connect.

Everything read from the broker is untrusted: :func:`load_json_object` returns a dict or the
reason it is not one, never raises; :func:`device_topic` splits ``{prefix}/{site}/{device}/...``
and refuses anything else; :func:`clean` makes text from a topic or payload safe to print.
"""
from __future__ import annotations

import argparse
import json
import math
import queue
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

MAX_JSON_BYTES = 64 * 1024  # status, request and progress messages are small
_WILDCARDS = set("+#\x00")


class FleetMqttError(Exception):
    """The broker cannot be used; the message says why, in one line."""


class Message(NamedTuple):
    topic: str
    payload: bytes
    retain: bool
    received: float  # time.time() when paho handed it over


@dataclass
class MqttOptions:
    host: str
    port: int = 1883
    prefix: str = "pdm"
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    username: str | None = None
    password_file: str | None = None
    connect_timeout: float = 10.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


# ------------------------------------------------------------------------------ arguments
def parse_broker(text: str) -> tuple[str, int]:
    """argparse type of ``--broker``: ``HOST``, ``HOST:PORT`` or ``[V6]:PORT`` (default 1883)."""
    host, port = text, "1883"
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise argparse.ArgumentTypeError(f"not HOST[:PORT]: {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise argparse.ArgumentTypeError(f"not HOST[:PORT]: {text!r}")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port is not a number: {text!r}") from None
    if not host or not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"needs a host and a port from 1 to 65535, got {text!r}")
    return host, number


def positive_float(text: str) -> float:
    """argparse type of seconds, percentages and thresholds: a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def parse_prefix(text: str) -> str:
    """argparse type of ``--prefix``: topic levels without wildcards or empty levels."""
    if not text or any(c in _WILDCARDS for c in text) or "" in text.split("/"):
        raise argparse.ArgumentTypeError(f"not a topic prefix (no +, #, empty levels): {text!r}")
    return text


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """``--broker`` (required), ``--prefix`` and the TLS/login options of ``fleet drift``."""
    g = parser.add_argument_group("broker")
    g.add_argument("--broker", required=True, type=parse_broker, metavar="HOST[:PORT]",
                   help="the fleet's MQTT broker (port default 1883)")
    g.add_argument("--prefix", default="pdm", type=parse_prefix, metavar="P", help="topic prefix (default pdm)")
    g.add_argument("--tls", action="store_true", help="connect with TLS")
    g.add_argument("--ca-file", metavar="FILE", help="CA certificates (PEM); default the system store")
    g.add_argument("--cert-file", metavar="FILE", help="client certificate (PEM), with --key-file")
    g.add_argument("--key-file", metavar="FILE", help="private key (PEM) of --cert-file")
    g.add_argument("--tls-insecure", action="store_true", help="skip the broker host name check (tests only)")
    g.add_argument("--username", metavar="NAME", help="broker user name")
    g.add_argument("--password-file", metavar="FILE", help="file holding the password")


def options_from_args(args: argparse.Namespace) -> MqttOptions:
    host, port = args.broker
    return MqttOptions(host, port, args.prefix, args.tls, args.ca_file, args.cert_file, args.key_file,
                       args.tls_insecure, args.username, args.password_file)


# ------------------------------------------------------------------------------ untrusted input
def clean(text: Any, limit: int = 200) -> str:
    """Printable, one line, at most ``limit`` characters: safe for a terminal."""
    s = "".join(c if c.isprintable() else "?" for c in str(text))
    return s if len(s) <= limit else s[: limit - 3] + "..."


def load_json_object(payload: bytes, limit: int = MAX_JSON_BYTES) -> tuple[dict | None, str]:
    """``(object, "")`` or ``(None, reason)``: ``oversize``, ``json`` (not JSON, not an object,
    nested too deeply) or ``schema`` (``schema`` missing or not the integer 1)."""
    if len(payload) > limit:
        return None, "oversize"
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, "json"
    if not isinstance(obj, dict):
        return None, "json"
    if type(obj.get("schema")) is not int or obj["schema"] != 1:
        return None, "schema"
    return obj, ""


def device_topic(prefix: str, topic: str) -> tuple[str, str, str] | None:
    """``(site, device, kind)`` of ``{prefix}/{site}/{device}/{kind}``; None for anything else."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head):].split("/", 2)
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2]:
        return None
    return parts[0], parts[1], parts[2]


def device_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be one topic level (site or device id), or None."""
    if not name:
        return "is empty"
    if "/" in name or any(c in _WILDCARDS for c in name):
        return "contains /, + or #"
    return None


# ------------------------------------------------------------------------------ connection
class FleetConnection:
    """A connected, subscribed paho client whose messages wait in :attr:`inbox`."""

    def __init__(self, opts: MqttOptions, subscriptions: list[str], role: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.opts = opts
        self.subscriptions = list(subscriptions)
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.connects = 0
        self.disconnects = 0
        self._granted = threading.Event()
        self._failure: list[str] = []
        self._pending_mid: int | None = None
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-agent-fleet-{role}-{uuid.uuid4().hex[:12]}",
                             clean_session=True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client = client

    # paho callbacks (network thread): short, never raise
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            self._failure.append(f"the broker refused the connection: {reason_code}")
            self._granted.set()
            return
        self.connects += 1
        result, mid = client.subscribe([(t, 1) for t in self.subscriptions])
        self._pending_mid = mid

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # noqa: ANN001
        bad = [rc for rc in reason_codes if rc.is_failure]
        if bad:
            self._failure.append(f"the broker refused the subscription to {', '.join(self.subscriptions)}: {bad[0]}")
        self._granted.set()

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001
        self.inbox.put(Message(message.topic, bytes(message.payload), bool(message.retain), time.time()))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self.disconnects += 1

    # the command's thread
    def connect(self) -> None:
        """Connect and subscribe; FleetMqttError with one line when the broker cannot be used."""
        o, client = self.opts, self.client
        try:
            if o.tls:
                client.tls_set(ca_certs=o.ca_file or None, certfile=o.cert_file or None,
                               keyfile=o.key_file or None, cert_reqs=ssl.CERT_REQUIRED)
                client.tls_insecure_set(bool(o.tls_insecure))
            if o.username:
                password = None
                if o.password_file:
                    with open(o.password_file, encoding="utf-8") as f:
                        password = f.read().strip()
                client.username_pw_set(o.username, password)
        except (OSError, ValueError) as exc:
            raise FleetMqttError(f"TLS/login options unusable: {exc}") from None
        try:
            client.connect(o.host, o.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise FleetMqttError(f"cannot connect to {o.address}: {getattr(exc, 'strerror', None) or exc}") from None
        client.loop_start()
        if not self._granted.wait(o.connect_timeout):
            self.close()
            raise FleetMqttError(f"no CONNACK/SUBACK from {o.address} within {o.connect_timeout:g} s")
        if self._failure:
            self.close()
            raise FleetMqttError(self._failure[0])

    def publish(self, topic: str, payload: bytes | str, retain: bool = False):  # -> MQTTMessageInfo
        """QoS 1; paho keeps it queued across a reconnect."""
        return self.client.publish(topic, payload, qos=1, retain=retain)

    def is_connected(self) -> bool:
        return bool(self.client.is_connected())

    def get(self, timeout: float) -> Message | None:
        try:
            return self.inbox.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


def wait_published(infos: list, timeout: float) -> int:
    """Wait until every publish in ``infos`` was acknowledged (or ``timeout`` passed);
    return how many were not."""
    deadline = time.monotonic() + timeout
    left = 0
    for info in infos:
        try:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        except (RuntimeError, ValueError):  # not queued, or published while the link was down
            pass
        try:
            done = info.is_published()
        except (RuntimeError, ValueError):
            done = False
        left += not done
    return left
