"""The agent's configuration: one TOML file, read with tomllib, validated once at start.

Why one schema: every key is declared once, as a Key in SCHEMA (the [sections]) or
SOURCE_TYPES (the [[source]] types): name, type, default, constraint and a one-line doc.
The frozen dataclasses, the validation, the defaults of an empty file, default_config() and
the documented example deploy/edge-agent.toml (example_toml()) are all derived from that
table, so they cannot drift apart.

Errors are values the user can act on: load_config() reports every problem at once, one
line each, as ``FILE:LINE: dotted.key: what is wrong``, in a ConfigError.
"""
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


REQUIRED: Any = object()  # the default of a key that has none
_BAD = object()  # a value that failed its check (and was reported)
Rule = tuple[Callable[[Any], bool], str]  # (test, what a good value is)


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key: the single source of its check, default and documentation."""

    name: str
    type: type
    default: Any
    doc: str
    lo: float | None = None  # inclusive bounds of an int or float
    hi: float | None = None
    choices: tuple[str, ...] = ()
    rule: Rule | None = None
    is_path: bool = False  # resolved against the config file's directory
    example: Any = None  # shown in the example file for a REQUIRED key


_SEG = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SEG_TEXT = "1 to 64 letters, digits, '_', '.' or '-'"
SEGMENT: Rule = (lambda v: _SEG.fullmatch(v) is not None, f"an MQTT topic segment: {_SEG_TEXT}")
PREFIX: Rule = (lambda v: all(_SEG.fullmatch(s) for s in v.split("/")),
                f"topic segments joined by '/', each {_SEG_TEXT}")
NONEMPTY: Rule = (bool, "non-empty")
_KIND = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
         tuple: "an array of numbers"}
_TOML_KINDS = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "table", tuple: "array",
               list: "array"}
_HEADER = re.compile(r"\s*(\[\[?)\s*([A-Za-z0-9_\-\s.]+?)\s*\]")  # [table] or [[array]]
_KEYLINE = re.compile(r"\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*=")  # key =
SCENARIOS = ("healthy", "inner_race", "outer_race", "ball", "flatline", "clipping", "disconnect")

SCHEMA: dict[str, tuple[str, tuple[Key, ...]]] = {  # section: (doc, keys)
    "device": ("Who this agent is.", (
        Key("site", str, "farm-a", "Site (wind farm) name", rule=SEGMENT),
        Key("id", str, "wtg-01", "Device (turbine) id", rule=SEGMENT),
        Key("group", str, "", "Fleet group for model rollouts (fleet push --target GROUP); empty = none",
            rule=(lambda v: v == "" or SEGMENT[0](v), f"empty or {SEGMENT[1]}")))),
    "broker": ("The MQTT broker that alerts, summaries and status go to.", (
        Key("enabled", bool, True, "Publish to the broker; false = local alert log only"),
        Key("host", str, "127.0.0.1", "Broker host name or IP address", rule=NONEMPTY),
        Key("port", int, 1883, "Broker TCP port", 1, 65535),
        Key("topic_prefix", str, "pdm", "Topics are {topic_prefix}/{site}/{id}/...", rule=PREFIX),
        Key("client_id", str, "", 'MQTT client id; empty = "edge-agent-{site}-{id}"'),
        Key("keepalive_s", int, 60, "MQTT keepalive, seconds", 5, 3600),
        Key("tls", bool, False, "Connect with TLS"),
        Key("ca_file", str, "", "CA certificates (PEM); empty = system store", is_path=True),
        Key("cert_file", str, "", "Client certificate (PEM); set with key_file", is_path=True),
        Key("key_file", str, "", "Private key (PEM) of cert_file", is_path=True),
        Key("tls_insecure", bool, False, "Skip the broker host name check; for tests only"),
        Key("username", str, "", "Broker user name; empty = no login"),
        Key("password_file", str, "", "File holding the password; mode 0600", is_path=True),
        Key("reconnect_min_s", float, 1.0, "Shortest wait before reconnecting, seconds", 0.1, 60),
        Key("reconnect_max_s", float, 60.0, "Longest wait, seconds; >= reconnect_min_s", 1, 3600))),
    "window": ("How the sample stream is cut into analysed windows.", (
        Key("length", int, 4096, "Samples per window", rule=(
            lambda v: 256 <= v <= 65536 and v & (v - 1) == 0, "a power of two from 256 to 65536")),
        Key("hop", int, 0, "Samples from one window start to the next", rule=(
            lambda v: 0 <= v <= 65536, "0 (= length // 2) or from 1 to window.length")))),
    "shaft": ("The machine.", (
        Key("rpm", float, 1500.0, "Shaft speed when a source gives none, rev/min", 60, 6000),)),
    "bearing": ("The monitored rolling-element bearing: its geometry gives the defect orders "
                "(edge_agent/bearing.py). Default: SKF 6205 (the CWRU test rig's).", (
        Key("n_balls", int, 9, "Rolling elements", 3, 100),
        Key("ball_diameter", float, 0.3126, "Rolling element diameter (any length unit, the same "
            "as pitch_diameter)", rule=(lambda v: 0 < v <= 10000, "a number > 0 and <= 10000")),
        Key("pitch_diameter", float, 1.537, "Pitch diameter; > ball_diameter",
            rule=(lambda v: 0 < v <= 10000, "a number > 0 and <= 10000")),
        Key("contact_angle_deg", float, 0.0, "Contact angle, degrees", 0, 60))),
    "features": ("The feature vector of each window (docs/FEATURES.md).", (
        Key("band_edges_hz", tuple, (10.0, 500.0, 1000.0, 2000.0, 3500.0, 5000.0),
            "Edges of the RMS bands, Hz (bands between consecutive edges)",
            rule=(lambda v: len(v) >= 2 and all(0 <= a < b <= 100000 for a, b in zip(v, v[1:])),
                  "at least 2 increasing numbers from 0 to 100000")),
        Key("envelope_band_hz", tuple, (), "Envelope band [lo, hi], Hz; [] = chosen per window by "
            "spectral kurtosis", rule=(lambda v: len(v) == 0 or (len(v) == 2 and 0 < v[0] < v[1] <= 100000),
                                       "[] or [lo, hi] with 0 < lo < hi <= 100000")),
        Key("order_tolerance", float, 0.02, "Relative speed error tolerated when locating defect "
            "orders", 0.001, 0.2),
        Key("noise_floor_bins", int, 20, "Envelope-spectrum bins each side of an order for its "
            "noise floor", 2, 200))),
    "model": ("The model that scores windows.", (
        Key("pack", str, "", "Model pack file; empty = the built-in baseline scorer", is_path=True),
        Key("backend", str, "auto", "TFLite interpreter; auto = the first one installed",
            choices=("auto", "ai_edge_litert", "tflite_runtime", "tensorflow")),
        Key("num_threads", int, 1, "Interpreter threads for a pack's model", 1, 8),
        Key("baseline_windows", int, 20, "Windows used to learn the healthy baseline", 4, 100000))),
    "alerts": ("When anomalous windows raise an alert, and when it clears.", (
        Key("anomaly_threshold", float, 6.0, "Score above which a window is anomalous",
            rule=(lambda v: 0 < v <= 1000, "a number > 0 and <= 1000")),
        Key("raise_after", int, 3, "Anomalous windows (of raise_window) to raise", 1, 1000),
        Key("raise_window", int, 5, "Windows looked back over; >= raise_after", 1, 1000),
        Key("clear_after", int, 10, "Normal windows in a row that clear it", 1, 100000))),
    "updates": ("Model updates over MQTT (docs/UPDATES.md): signed packs, shadow evaluation, "
                "health check after activation, automatic rollback.", (
        Key("enabled", bool, True, "Accept model offers on {base}/model/offer"),
        Key("trusted_keys_dir", str, "", "Directory of the operators' *.pub keys a pack must be signed "
            "by; empty = none trusted (every offer is rejected, unknown_key)", is_path=True),
        Key("max_pack_mb", float, 64.0, "Largest pack accepted, MB", 0.01, 1024),
        Key("max_chunk_kb", int, 256, "Largest chunk accepted, KiB", 1, 1024),
        Key("request_every_s", float, 5.0, "Seconds between asking again for missing chunks", 0.1, 3600),
        Key("transfer_timeout_s", float, 3600.0, "An update with no new chunk for this long is given up "
            "(rejected, transfer_timeout)", 1, 604800),
        Key("shadow_windows", int, 200, "Windows a candidate is scored beside the active model (shadow)",
            1, 1000000),
        Key("shadow_min_agreement", float, 0.9, "Top-label agreement with the active model a candidate "
            "needs", 0, 1),
        Key("shadow_max_extra_alert_rate", float, 0.05, "Alert-window rate a candidate may add over the "
            "active model's", 0, 1),
        Key("shadow_max_latency_ratio", float, 3.0, "Candidate inference time per window, at most this "
            "times the active model's", 1, 1000),
        Key("health_windows", int, 100, "Windows watched after an activation before it is healthy",
            1, 1000000),
        Key("health_max_alert_rate", float, 0.5, "Alert-window rate after an activation beyond which it "
            "is rolled back (unless the previous model saw as many)", 0, 1),
        Key("health_max_latency_ratio", float, 5.0, "Inference time per window after an activation, at "
            "most this times the previous model's", 1, 1000))),
    "drift": ("Drift monitoring (edge_agent/drift.py): per-feature quantile sketches per operating "
              "regime, PSI and KS against the model pack's reference, score-drift detectors.", (
        Key("enabled", bool, True, "Keep sketches, compute drift statistics and raise drift alerts"),
        Key("k", int, 200, "KLL sketch size parameter (Apache DataSketches); 200 = ~1.65% rank error",
            8, 65535),
        Key("speed_bins_rpm", tuple, (0.0, 600.0, 1200.0, 1800.0, 2400.0, 3600.0),
            "Shaft-speed bin edges of the operating regimes, rpm, increasing; beyond the last is one "
            "more regime", rule=(lambda v: len(v) >= 1 and all(0 <= a < b for a, b in zip(v, v[1:]))
                                 and v[0] >= 0, "increasing numbers >= 0")),
        Key("min_windows", int, 200, "Windows a regime's drift is judged over: its last min_windows "
            "windows (drift alerts), and the least an interval needs (summary statistics); PSI over "
            "10 bins needs a few hundred", 100, 100000),
        Key("judge_every", int, 50, "New windows of a regime between two judgements of its last "
            "min_windows windows", 1, 100000),
        Key("psi_warn", float, 0.1, "PSI at or above which a feature is reported as warn", 0.001, 100),
        Key("psi_drift", float, 0.25, "PSI at or above which a feature has drifted (drift alert)",
            0.001, 100),
        Key("raise_after", int, 2, "Judgements with drift (of raise_window) that raise a drift alert",
            1, 1000),
        Key("raise_window", int, 3, "Judgements looked back over; >= raise_after", 1, 1000),
        Key("clear_after", int, 8, "Judgements without drift in a row that clear it", 1, 100000),
        Key("score_detectors", bool, True, "Page-Hinkley and ADWIN on the model's confidence and "
            "anomaly score (their alarms are drift alerts)"))),
    "quality": ("Data-quality checks of every window before it is scored (edge_agent/quality.py).", (
        Key("action", str, "flag", "flag = score it, but no anomaly alert from it; drop = do not "
            "score it", choices=("flag", "drop")),
        Key("expected_fs", float, 0.0, "Sample rate windows must have (1% tolerance), Hz; 0 = any",
            rule=(lambda v: v == 0 or 1000 <= v <= 200000, "0 or from 1000 to 200000")),
        Key("range_g", float, 500.0, "A sample beyond +-range_g is out of range, g", 0.01, 1e6),
        Key("max_abs_g", float, 0.0, "Sensor full scale for clipping when frames do not give it, g;"
            " 0 = look for flat tops", rule=(lambda v: 0 <= v <= 1e6, "0 or a number up to 1e6")),
        Key("clip_fraction", float, 0.005, "Fraction of samples at full scale that is clipping",
            1e-4, 1),
        Key("flatline_ptp_g", float, 0.001, "Peak-to-peak below this is a flatline, g", 0, 1e3),
        Key("flatline_repeat", float, 0.5, "Fraction of samples repeating the previous one that "
            "is a flatline", 0.01, 1),
        Key("alert_after", int, 10, "Flagged windows in a row of one channel that raise a "
            "data_quality alert", 1, 100000),
        Key("clear_after", int, 10, "Sound windows in a row that clear it", 1, 100000))),
    "publish": ("What is sent, and how often.", (
        Key("summary_interval_s", float, 60.0, "Time between summaries, seconds", 1, 86400),
        Key("status_interval_s", float, 5.0, "Time between local status file rewrites, seconds",
            0.5, 3600),
        Key("qos", int, 1, "MQTT QoS of alerts and summaries", 0, 1))),
    "storage": ("Local state on disk.", (
        Key("dir", str, "/var/lib/edge-agent", "Outbox, alert log, state; created if missing",
            rule=NONEMPTY, is_path=True),
        Key("outbox_max_mb", float, 64.0, "Disk the outbox may fill while offline, MB", 0.1, 1e5))),
    "queues": ("Bounded queues between stages: back-pressure, not unbounded memory.", (
        Key("samples", int, 256, "Sample blocks between sources and processing", 8, 100000),)),
    "logging": ("Log output, to stdout (journald under systemd).", (
        Key("level", str, "info", "Lowest level logged",
            choices=("debug", "info", "warning", "error")),
        Key("format", str, "plain", "plain text, or json (one object per line)",
            choices=("plain", "json")))),
    "page": ("The technicians' local page (edge_agent/local_page.py): health, model, data quality, "
             "open alerts with an acknowledge button, feature trends, the envelope spectrum of the "
             "last alert. Read-only except acknowledgements; served by the agent itself.", (
        Key("enabled", bool, False, "Serve the page"),
        Key("listen", str, "127.0.0.1:8080", "Address to serve it on, HOST:PORT ([::1]:8080 for IPv6; "
            "port 0 = any free port)", rule=(lambda v: parse_listen(v) is not None,
                                             "HOST:PORT with a port from 0 to 65535")),
        Key("token_file", str, "", "File holding the local acknowledgement token; mode 0600. "
            "Empty = the page is read-only (no acknowledgements)", is_path=True),
        Key("trend_windows", int, 360, "Scored windows per channel kept for the trends", 10, 10000))),
}


def parse_listen(value: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[v6]:PORT``) as (host, port), or None when it is not one."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return None
    return host, int(port)
SOURCE_COMMON = (
    Key("type", str, REQUIRED, "Kind of source", choices=("serial", "mqtt", "emulator", "replay")),
    Key("name", str, "", "Unique source name; empty = type + index, e.g. serial0",
        rule=(lambda v: v == "" or SEGMENT[0](v), f"empty or {SEGMENT[1]}")))
# A tachometer's pulse train as one channel of the sensor frames: the shaft speed (tacho.py).
TACHO_KEYS = (
    Key("tacho_channel", int, -1, "Channel of the sample frames that carries a tachometer's pulses "
        "(shaft speed from them; not analysed as vibration); -1 = none", -1, 255),
    Key("pulses_per_rev", int, 1, "Tachometer pulses per shaft revolution", 1, 1000),
)
SOURCE_TYPES: dict[str, tuple[Key, ...]] = {
    "serial": (
        Key("port", str, REQUIRED, "Serial device of the sensor MCU", rule=NONEMPTY,
            example="/dev/ttyACM0"),
        Key("baud", int, 921600, "Baud rate, bit/s", 1200, 12_000_000),
        Key("read_timeout_s", float, 0.1, "Read timeout, seconds", 0.001, 10),
        *TACHO_KEYS),
    "mqtt": (
        Key("broker_host", str, "127.0.0.1", "Sensor broker host name or IP address", rule=NONEMPTY),
        Key("broker_port", int, 1883, "Sensor broker TCP port", 1, 65535),
        Key("topic", str, REQUIRED, "Topic of the sample blocks; + and # allowed", rule=NONEMPTY,
            example="sensors/wtg-01/vibration"),
        Key("qos", int, 1, "Subscription QoS", 0, 1),
        *TACHO_KEYS,
        Key("fs", float, 0.0, "Sample rate the sensors should send, Hz; 0 = any (others are "
            "counted as rate_mismatches)",
            rule=(lambda v: v == 0 or 1000 <= v <= 200000, "0 or from 1000 to 200000"))),
    "emulator": (
        Key("scenario", str, "healthy", "Simulated machine condition", choices=SCENARIOS),
        Key("fs", float, 25600.0, "Sample rate, Hz", 1000, 200000),
        Key("channels", int, 1, "Number of channels", 1, 16),
        Key("rpm", float, 1500.0, "Shaft speed, rev/min", 60, 6000),
        Key("seed", int, 0, "Random seed; the same seed gives the same signal", 0),
        Key("speedup", float, 1.0, "Speed relative to real time", 0.1, 100)),
    "replay": (
        Key("path", str, REQUIRED, "Recording: .npz, .csv or .wav", rule=NONEMPTY, is_path=True,
            example="recordings/inner_race.npz"),
        Key("fs", float, 0.0, "Sample rate, Hz; 0 = from the file",
            rule=(lambda v: v == 0 or 1000 <= v <= 200000, "0 or from 1000 to 200000")),
        Key("rpm", float, 0.0, "Shaft speed, rev/min; 0 = from the file",
            rule=(lambda v: v == 0 or 60 <= v <= 6000, "0 or from 60 to 6000")),
        Key("loop", bool, False, "Start again at the end of the recording")),
}

# Arrays of tables besides [[source]]: name -> (doc, keys, the key that must be unique or "").
ISO_COMPONENTS = ("nacelle_tower", "main_bearing", "gearbox", "generator")  # iso_zones.py
TABLE_LISTS: dict[str, tuple[str, tuple[Key, ...], str]] = {
    "alert_rule": ("A rule for one alert type; types without one use [alerts]. Repeat per type.", (
        Key("type", str, REQUIRED, "Alert type: a label of the model pack, or anomaly",
            rule=(SEGMENT[0], _SEG_TEXT), example="inner_race"),
        Key("raise_after", int, 0, "Hits (of raise_window) that raise it; 0 = [alerts] raise_after",
            0, 1000),
        Key("raise_window", int, 0, "Windows looked back over; 0 = [alerts] raise_window", 0, 1000),
        Key("clear_after", int, 0, "Quiet windows in a row that clear it; 0 = [alerts] clear_after",
            0, 100000),
        Key("severity", str, "auto", "auto = warning, alarm on a strong hit; or always this one",
            choices=("auto", "info", "warning", "alarm")),
        Key("enabled", bool, True, "false = this type never raises an alert")), "type"),
    "iso_zone": ("ISO 10816-21 velocity-zone rules (docs/ISO10816.md): the component the channels "
                 "measure on. Repeat per component.", (
        Key("channels", str, REQUIRED, "Channel names, a glob pattern (fnmatch)", rule=NONEMPTY,
            example="serial0.*"),
        Key("component", str, REQUIRED, "Wind-turbine component", choices=ISO_COMPONENTS,
            example="gearbox")), ""),
}


def _dataclass(name: str, doc: str, keys: Iterable[Key], neutral: bool = False) -> type:
    """A frozen dataclass with one field per key, defaulting to the key's default (or, with
    ``neutral``, to the type's zero value: "", 0, 0.0, False)."""
    cls = make_dataclass(name, [(k.name, k.type, field(default=k.type() if neutral else k.default))
                                for k in keys], frozen=True, slots=True)
    cls.__doc__, cls.__module__ = doc, __name__
    return cls


# Section objects: fields, in order, are the keys of SCHEMA[section]. Once parsed, window.hop is
# never 0, broker.client_id never empty, and paths are absolute (or "" when not set).
# The classes are made on first use (:func:`section_classes`; module attributes too, e.g.
# ``config.ShaftConfig``): making them, 21 dataclasses' generated methods compiled, is most
# of this module's import time (~10 of ~16 ms here), which replay's feature worker would
# otherwise wait for (replay_cmd.py).
SECTION_CLASSES = {section: section.title().replace("_", "") + "Config" for section in SCHEMA}
_OTHER_CLASSES = {
    "AlertRuleConfig": lambda: _dataclass("AlertRuleConfig", *TABLE_LISTS["alert_rule"][:2]),
    "IsoZoneConfig": lambda: _dataclass("IsoZoneConfig", *TABLE_LISTS["iso_zone"][:2]),
    # type, name, then every source type's keys (first occurrence): port, baud, read_timeout_s,
    # host, topic, qos, fs, scenario, channels, rpm, seed, speedup, path, loop. ``port`` is the
    # serial device (str) for "serial" and the broker's TCP port (int) for "mqtt".
    "SourceConfig": lambda: _dataclass(
        "SourceConfig", "One [[source]]; keys its type does not use keep neutral values.",
        {k.name: k for k in SOURCE_COMMON + sum(SOURCE_TYPES.values(), ())}.values(), neutral=True),
}
_classes: dict[str, type] = {}


def section_classes() -> dict[str, type]:
    """Every configuration dataclass by name (DeviceConfig ... PageConfig, AlertRuleConfig,
    IsoZoneConfig, SourceConfig), made on the first call."""
    if not _classes:
        made = {name: _dataclass(name, *SCHEMA[section]) for section, name in SECTION_CLASSES.items()}
        made.update((name, make()) for name, make in _OTHER_CLASSES.items())
        _classes.update(made)
    return _classes


def __getattr__(name: str) -> type:  # PEP 562: config.ShaftConfig and the like
    if name in _OTHER_CLASSES or name in SECTION_CLASSES.values():
        return section_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def schema_defaults(section: str) -> SimpleNamespace:
    """A section's keys with their schema defaults, as attributes, without making the
    classes: what default_config() holds for the keys whose default needs no checking
    (replay's feature worker reads the window, shaft, bearing and features sections from
    it; the agent then checks it was built alike: feature_worker.FeaturesAhead.serves)."""
    return SimpleNamespace(**{k.name: k.default for k in SCHEMA[section][1]})


if TYPE_CHECKING:  # made on first use (section_classes); named here for the annotations
    DeviceConfig = BrokerConfig = SourceConfig = WindowConfig = ShaftConfig = BearingConfig = Any
    FeaturesConfig = ModelConfig = AlertsConfig = UpdatesConfig = DriftConfig = QualityConfig = Any
    PublishConfig = StorageConfig = QueuesConfig = LoggingConfig = PageConfig = Any
    AlertRuleConfig = IsoZoneConfig = Any


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration, as built by load_config, parse_config or default_config."""

    device: "DeviceConfig"
    broker: "BrokerConfig"
    sources: "tuple[SourceConfig, ...]"
    window: "WindowConfig"
    shaft: "ShaftConfig"
    bearing: "BearingConfig"
    features: "FeaturesConfig"
    model: "ModelConfig"
    alerts: "AlertsConfig"
    updates: "UpdatesConfig"
    drift: "DriftConfig"
    quality: "QualityConfig"
    publish: "PublishConfig"
    storage: "StorageConfig"
    queues: "QueuesConfig"
    logging: "LoggingConfig"
    page: "PageConfig"
    alert_rules: "tuple[AlertRuleConfig, ...]"
    iso_zones: "tuple[IsoZoneConfig, ...]"
    origin: str


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the TOML file at ``path``; raise ConfigError listing every problem."""
    origin, file = os.fspath(path), Path(path)
    try:
        raw = file.read_bytes().removeprefix(b"\xef\xbb\xbf")  # the BOM some editors write
    except OSError as exc:
        why = {FileNotFoundError: "file not found", IsADirectoryError: "is a directory, not a "
               "file", PermissionError: "permission denied"}.get(type(exc), exc.strerror)
        raise ConfigError([f"{origin}: cannot read: {why or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError([f"{origin}:{line}: not UTF-8: invalid byte 0x{raw[exc.start]:02x}; "
                           "save the file as UTF-8"]) from None
    return parse_config(text, origin, file.absolute().parent)


def parse_config(text: str, origin: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate TOML ``text``; relative paths resolve against ``base_dir`` (default: cwd)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{origin}: not TOML: {exc}"]) from None
    return _Checker(origin, Path(base_dir or Path.cwd()), _key_lines(text)).config(data)


def default_config(**overrides: Any) -> Config:
    """All defaults (one emulator source). Overrides are shaped like the TOML and validated,
    e.g. ``default_config(storage={"dir": tmp}, source=[{"type": "emulator", "seed": 3}])``."""
    return _Checker("<defaults>", Path.cwd(), {}).config(overrides)


def example_toml() -> str:
    """The documented full example, deploy/edge-agent.toml, rendered from the schema."""
    out = ["# edge-agent configuration: every key with its default. Relative paths are resolved",
           "# against this file's directory. Generated by edge_agent.config.example_toml()."]
    blocks = [(f"[{section}]", doc, keys, "") for section, (doc, keys) in SCHEMA.items()]
    blocks[2:2] = [  # after [broker], as in the contract; only the serial source is active
        ("[[source]]", f"A source of type {kind!r}; " + ("at least one [[source]] is needed."
         if kind == "serial" else "un-comment to use it."), SOURCE_COMMON + own, kind)
        for kind, own in SOURCE_TYPES.items()]
    blocks += [(f"[[{name}]]", doc + " Un-comment to use it.", keys, name)
               for name, (doc, keys, _) in TABLE_LISTS.items()]
    for header, doc, keys, kind in blocks:
        off = "# " if kind not in ("", "serial") else ""
        out += ["", f"## {doc}", off + header]
        for k in keys:
            value = kind if k.name == "type" and kind in SOURCE_TYPES else k.example if k.default is REQUIRED else k.default
            need = " (required)" if k.default is REQUIRED and not (k.name == "type" and kind in SOURCE_TYPES) else ""
            out += [f"## {k.doc}{need}; {_constraint(k)}".removesuffix("; "),
                    f"{off}{k.name} = {_show(value)}"]
    return "\n".join(out) + "\n"


def _constraint(k: Key) -> str:
    """What a good value is, e.g. 'an integer from 1 to 65535'; '' when any value will do."""
    if k.choices or k.rule:
        return k.rule[1] if k.rule else "one of " + ", ".join(json.dumps(c) for c in k.choices)
    if k.lo is None:
        return _KIND[bool] if k.type is bool else ""
    num = lambda x: str(int(x)) if x == int(x) else str(x)  # noqa: E731
    return _KIND[k.type] + (f" >= {num(k.lo)}" if k.hi is None
                            else f" from {num(k.lo)} to {num(k.hi)}")


def _show(v: Any, with_kind: bool = False) -> str:
    """A value as TOML writes it, e.g. 'true', '"fast"'; with its kind: 'string "fast"'."""
    kind = _TOML_KINDS.get(type(v), type(v).__name__)
    if isinstance(v, tuple):  # an array of numbers (a checked value or a default)
        return "[" + ", ".join(str(float(x)) for x in v) + "]"
    if isinstance(v, list):
        text = json.dumps(v, ensure_ascii=False, default=str)
        text = text if len(text) <= 60 else text[:57] + "..."
        return f"{kind} {text}" if with_kind else text
    if isinstance(v, dict):
        return kind
    text = json.dumps(v, ensure_ascii=False) if isinstance(v, str | bool) else str(v)
    return f"{kind} {text}" if with_kind else text


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _key_lines(text: str) -> dict[str, int]:
    """Best-effort map of each table and dotted key path (``source[1].baud``) to its line."""
    found: dict[str, int] = {}
    table, counts = "", {}
    for number, line in enumerate(text.splitlines(), 1):
        if m := _HEADER.match(line):
            table = re.sub(r"\s+", "", m[2])
            if m[1] == "[[":  # the n-th [[source]] is source[n-1]
                counts[table] = counts.get(table, -1) + 1
                table = f"{table}[{counts[table]}]"
            found.setdefault(table, number)
        elif m := _KEYLINE.match(line):
            name = re.sub(r"\s+", "", m[1])
            found.setdefault(f"{table}.{name}" if table else name, number)
    return found


class _Checker:
    """Checks parsed TOML against the schema, collecting every problem with its line.

    Tables are checked into dicts of their valid values (defaults filled in); a key that
    failed its check is left out, so the checks between keys skip it instead of piling on."""

    def __init__(self, origin: str, base: Path, lines: dict[str, int]) -> None:
        self.origin, self.base, self.lines, self.problems = origin, base, lines, []

    def add(self, path: str, message: str) -> None:
        probe = path  # the key's own line, else the line of its table's header
        while probe not in self.lines and "." in probe:
            probe = probe.rsplit(".", 1)[0]
        line = self.lines.get(probe)
        where = f"{self.origin}:{line}" if line else self.origin
        self.problems.append((line or math.inf, f"{where}: {path}: {message}"))

    def config(self, data: dict[str, Any]) -> Config:
        for name, value in data.items():
            if name not in SCHEMA and name != "source" and name not in TABLE_LISTS:
                what = "unknown section" if isinstance(value, dict) else "unknown top-level key"
                self.add(name, what + _suggest(name, [*SCHEMA, "source", *TABLE_LISTS]))
        values = {}
        for section, (_, keys) in SCHEMA.items():
            if not isinstance(table := data.get(section, {}), dict):
                self.add(section, f"must be a table ([{section}]), got {_show(table, True)}")
            values[section] = self.table(table if isinstance(table, dict) else {}, keys, section)
        sources = self.sources(data.get("source", [{"type": "emulator"}]))
        lists = {name: self.table_list(name, data.get(name, [])) for name in TABLE_LISTS}
        self.relations(values)
        self.rule_relations(values["alerts"], lists["alert_rule"])
        if self.problems:
            raise ConfigError(m for _, m in sorted(self.problems, key=lambda item: item[0]))
        cls = section_classes()
        sections = {name: cls[SECTION_CLASSES[name]](**values[name]) for name in SCHEMA}
        return Config(sources=tuple(cls["SourceConfig"](**s) for s in sources), origin=self.origin,
                      alert_rules=tuple(cls["AlertRuleConfig"](**r) for r in lists["alert_rule"]),
                      iso_zones=tuple(cls["IsoZoneConfig"](**z) for z in lists["iso_zone"]), **sections)

    def table(self, table: dict[str, Any], keys: Iterable[Key], at: str, kind: str = "") -> dict:
        known = {k.name: k for k in keys}
        for name in [name for name in table if name not in known]:
            self.add(f"{at}.{name}", (f"unknown key for source type '{kind}'" if kind
                                      else "unknown key") + _suggest(name, known))
        out = {}
        for k in known.values():
            if k.name in table:
                out[k.name] = self.value(k, table[k.name], f"{at}.{k.name}")
            elif k.default is REQUIRED:
                self.add(f"{at}.{k.name}", f"required for source type '{kind}'" if kind
                         else f"required, {_constraint(k)}")
            else:
                out[k.name] = self.resolve(k.default) if k.is_path else k.default
        return {name: v for name, v in out.items() if v is not _BAD}

    def value(self, k: Key, raw: Any, path: str) -> Any:
        """The checked value (ints widened to float, paths resolved), or _BAD."""
        value = float(raw) if k.type is float and type(raw) is int else raw
        if k.type is tuple and type(raw) is list and all(type(x) in (int, float) for x in raw):
            value = tuple(float(x) for x in raw)  # an array of numbers (no bools, no strings)
        problem = ""
        if type(value) is not k.type:  # exact, so a bool is not an int
            problem = f"must be {_KIND[k.type]}, got {_show(raw, True)}"
        elif k.choices and value not in k.choices:
            problem = f"must be {_constraint(k)}, got {_show(raw)}" + _suggest(value, k.choices)
        elif (k.rule and not k.rule[0](value)) or (
                k.lo is not None and not k.lo <= value <= (math.inf if k.hi is None else k.hi)):
            problem = f"must be {_constraint(k)}, got {_show(raw)}"
        if problem:
            self.add(path, problem)
            return _BAD
        return self.resolve(value) if k.is_path else value

    def resolve(self, path: str) -> str:
        return os.path.abspath(self.base / Path(path).expanduser()) if path else ""

    def sources(self, raw: Any) -> list[dict[str, Any]]:
        if not isinstance(raw, list):
            self.add("source", f"must be an array of tables ([[source]]), got {_show(raw, True)}")
            return []
        if not raw:
            self.add("source", "at least one [[source]] is required")
        sources, first, common = [], {}, {k.name for k in SOURCE_COMMON}
        for i, table in enumerate(raw):
            at = f"source[{i}]"
            if not isinstance(table, dict):
                self.add(at, f"must be a table, got {_show(table, True)}")
                continue
            values = self.table({k: v for k, v in table.items() if k in common}, SOURCE_COMMON, at)
            if (kind := values.get("type")) is None:  # reported; the rest cannot be judged
                continue
            values |= self.table({k: v for k, v in table.items() if k not in common},
                                 SOURCE_TYPES[kind], at, kind)
            if values.get("name") == "":
                values["name"] = f"{kind}{i}"
            if "name" in values and first.setdefault(values["name"], i) != i:
                self.add(f"{at}.name", f"{_show(values['name'])} is already used by "
                         f"source[{first[values['name']]}]")
            if kind == "replay" and values.get("path"):
                self.file(values["path"], f"{at}.path")
            sources.append(values)
        return sources

    def table_list(self, name: str, raw: Any) -> list[dict[str, Any]]:
        """An array of tables of TABLE_LISTS (e.g. [[alert_rule]]): each table checked."""
        _, keys, unique = TABLE_LISTS[name]
        if not isinstance(raw, list):
            self.add(name, f"must be an array of tables ([[{name}]]), got {_show(raw, True)}")
            return []
        out, first = [], {}
        for i, table in enumerate(raw):
            at = f"{name}[{i}]"
            if not isinstance(table, dict):
                self.add(at, f"must be a table, got {_show(table, True)}")
                continue
            values = self.table(table, keys, at)
            if unique and unique in values and first.setdefault(values[unique], i) != i:
                self.add(f"{at}.{unique}", f"{_show(values[unique])} already has a rule: "
                         f"{name}[{first[values[unique]]}]")
                continue
            if len(values) == len(keys):  # only whole tables (each problem is reported)
                out.append(values)
        return out

    def rule_relations(self, alerts: dict[str, Any], rules: list[dict[str, Any]]) -> None:
        """Each [[alert_rule]]'s k of n, with [alerts] filling its zeros, must be possible."""
        for i, r in enumerate(rules):
            k = r["raise_after"] or alerts.get("raise_after")
            n = r["raise_window"] or alerts.get("raise_window")
            if k is not None and n is not None and n < k:
                self.add(f"alert_rule[{i}].raise_window", f"must be >= raise_after ({k}), got {n} "
                         f"(for type {_show(r['type'])}; 0 means the value in [alerts])")

    def file(self, path: str, key_path: str) -> bool:
        file = Path(path)
        why = ("file not found" if not file.exists() else "not a file" if not file.is_file()
               else "permission denied" if not os.access(file, os.R_OK) else "")
        if why:
            self.add(key_path, f"{why}: {path}")
        return not why

    def secret_mode(self, path: str, key_path: str) -> bool:
        """A secret's file must not be readable by group or others (mode 0600)."""
        if (mode := os.stat(path).st_mode & 0o777) & 0o077:
            self.add(key_path, f"{path} has mode {mode:04o}; secrets must "
                     f"not be readable by others: chmod 600 {path}")
            return False
        return True

    def relations(self, v: dict[str, dict[str, Any]]) -> None:
        """Checks between keys, and the values derived from others."""
        b, w, d, br = v["broker"], v["window"], v["device"], v["bearing"]
        if {"ball_diameter", "pitch_diameter"} <= br.keys() and br["pitch_diameter"] <= br["ball_diameter"]:
            self.add("bearing.pitch_diameter", f"must be > bearing.ball_diameter ({_show(br['ball_diameter'])}), "
                     f"got {_show(br['pitch_diameter'])}")
        if "cert_file" in b and "key_file" in b and bool(b["cert_file"]) != bool(b["key_file"]):
            given, missing = sorted(("cert_file", "key_file"), key=lambda n: not b[n])
            self.add(f"broker.{missing}", f"required when broker.{given} is set")
        for name in ("ca_file", "cert_file", "key_file"):
            if b.get("tls") and b.get(name):
                self.file(b[name], f"broker.{name}")
        secret = b.get("password_file")
        if b.get("username") and secret == "":
            self.add("broker.password_file", "required when broker.username is set")
        elif b.get("username") and secret and self.file(secret, "broker.password_file"):
            self.secret_mode(secret, "broker.password_file")
        token = v["page"].get("token_file")
        if v["page"].get("enabled") and token and self.file(token, "page.token_file") \
                and self.secret_mode(token, "page.token_file") and not Path(token).read_text(errors="replace").strip():
            self.add("page.token_file", f"{token} is empty; put the acknowledgement token in it")
        for sec, low, high in (("broker", "reconnect_min_s", "reconnect_max_s"),
                               ("alerts", "raise_after", "raise_window"),
                               ("drift", "raise_after", "raise_window"),
                               ("drift", "psi_warn", "psi_drift"),
                               ("window", "hop", "length")):
            if {low, high} <= v[sec].keys() and v[sec][high] < v[sec][low]:
                wrong, other, rel = (high, low, ">=") if sec != "window" else (low, high, "<=")
                self.add(f"{sec}.{wrong}", f"must be {rel} {sec}.{other} "
                         f"({_show(v[sec][other])}), got {_show(v[sec][wrong])}")
        if b.get("client_id") == "" and {"site", "id"} <= d.keys():
            b["client_id"] = f"edge-agent-{d['site']}-{d['id']}"
        if "hop" in w and "length" in w:
            w["hop"] = w["hop"] or w["length"] // 2
        if v["model"].get("pack"):
            self.file(v["model"]["pack"], "model.pack")
        keys = v["updates"].get("trusted_keys_dir")
        if keys and not Path(keys).is_dir():
            self.add("updates.trusted_keys_dir", f"not a directory: {keys}" if Path(keys).exists()
                     else f"directory not found: {keys}")

