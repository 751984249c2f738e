"""edge_agent.config: the schema table, its defaults, the documented example, and one exact
line (key, line number, what is wrong) per configuration problem."""
import dataclasses
import os
import re
import tomllib
from pathlib import Path

import pytest

from edge_agent.config import (
    SCHEMA, SECTION_CLASSES, SOURCE_COMMON, SOURCE_TYPES, Config, ConfigError, SourceConfig, WindowConfig,
    default_config, example_toml, load_config, parse_config, section_classes,
)

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "edge-agent.toml"
CONFIG = "edge-agent.toml"  # tests run in tmp_path, so problems start with this name


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def problems_of(text: str) -> list[str]:
    Path(CONFIG).write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(CONFIG)
    return err.value.problems


def load_config_text(text: str) -> Config:
    Path(CONFIG).write_text(text)
    return load_config(CONFIG)


def without_origin(config: Config) -> Config:
    return dataclasses.replace(config, origin="")


# --- the documented example ----------------------------------------------------------------

def test_deploy_example_loads_as_is() -> None:
    config = load_config(DEPLOY)
    assert config.sources == (SourceConfig(type="serial", name="serial0", port="/dev/ttyACM0",
                                           baud=921600, read_timeout_s=0.1, tacho_channel=-1, pulses_per_rev=1),)
    defaults = default_config()
    for section in SCHEMA:
        assert getattr(config, section) == getattr(defaults, section), section


def test_deploy_example_shows_every_schema_key_with_a_doc_line() -> None:
    text = DEPLOY.read_text()
    # Un-comment the commented-out blocks ("# [[source]]", "# key = ..."), then parse it all.
    uncommented = re.sub(r"(?m)^# (?=\[|\w+ = )", "", text)
    data = tomllib.loads(uncommented)
    for section, (_, keys) in SCHEMA.items():
        assert set(data[section]) == {k.name for k in keys}, section
    assert {s["type"]: set(s) for s in data["source"]} == {
        kind: {k.name for k in SOURCE_COMMON + own} for kind, own in SOURCE_TYPES.items()}
    assert [s["type"] for s in tomllib.loads(text)["source"]] == ["serial"]  # only one active
    lines = uncommented.splitlines()
    for before, line in zip(lines, lines[1:]):
        if "=" in line and not line.startswith("#"):
            assert before.startswith("## "), f"no doc line above {line!r}"


def test_deploy_example_is_rendered_from_the_schema() -> None:
    assert DEPLOY.read_text() == example_toml(), (
        "deploy/edge-agent.toml is stale; regenerate it: .venv/bin/python -c "
        "\"from edge_agent.config import example_toml; print(example_toml(), end='')\" "
        "> deploy/edge-agent.toml")


def test_dataclass_fields_follow_the_schema() -> None:
    for section, (_, keys) in SCHEMA.items():
        cls = section_classes()[SECTION_CLASSES[section]]
        assert Config.__annotations__[section] == cls.__name__
        assert [f.name for f in dataclasses.fields(cls)] == [k.name for k in keys]
    assert [f.name for f in dataclasses.fields(SourceConfig)] == [
        "type", "name", "port", "baud", "read_timeout_s", "tacho_channel", "pulses_per_rev", "broker_host",
        "broker_port", "topic", "qos", "fs", "scenario",
        "channels", "rpm", "seed", "speedup", "path", "loop"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        default_config().broker.port = 1  # type: ignore[misc]


# --- defaults ------------------------------------------------------------------------------

def test_empty_file_gives_the_defaults(in_tmp: Path) -> None:
    Path(CONFIG).write_text("")
    config = load_config(CONFIG)
    assert config.origin == CONFIG
    assert without_origin(config) == without_origin(default_config())
    assert config.sources == (SourceConfig(
        type="emulator", name="emulator0", scenario="healthy", fs=25600.0, channels=1,
        rpm=1500.0, seed=0, speedup=1.0),)
    assert config.window == WindowConfig(length=4096, hop=2048)
    assert (config.broker.host, config.broker.port, config.storage.dir) == (
        "127.0.0.1", 1883, "/var/lib/edge-agent")
    assert config.broker.client_id == "edge-agent-farm-a-wtg-01"


@pytest.mark.parametrize("length, hop, resolved", [(1024, 0, 512), (1024, 100, 100),
                                                   (256, 256, 256)])
def test_hop_zero_means_half_the_length(length: int, hop: int, resolved: int) -> None:
    config = parse_config(f"[window]\nlength = {length}\nhop = {hop}\n")
    assert config.window == WindowConfig(length=length, hop=resolved)


def test_an_integer_is_accepted_for_a_number() -> None:
    value = parse_config("[broker]\nreconnect_min_s = 2\n").broker.reconnect_min_s
    assert value == 2.0 and type(value) is float


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "rec.npz").write_bytes(b"")
    (etc / CONFIG).write_text('[[source]]\ntype = "replay"\npath = "rec.npz"\n'
                              '[storage]\ndir = "state"\n')
    config = load_config(etc / CONFIG)
    assert config.sources[0].path == str(etc / "rec.npz")
    assert config.storage.dir == str(etc / "state")  # need not exist yet
    assert parse_config('[model]\npack = "rec.npz"\n', base_dir=etc).model.pack == str(
        etc / "rec.npz")


def test_default_config_takes_validated_overrides(tmp_path: Path) -> None:
    config = default_config(storage={"dir": str(tmp_path)},
                            source=[{"type": "emulator", "scenario": "ball", "seed": 3}])
    assert config.storage.dir == str(tmp_path)
    assert (config.sources[0].scenario, config.sources[0].seed) == ("ball", 3)
    with pytest.raises(ConfigError) as err:
        default_config(window={"length": 1000})
    assert err.value.problems == [
        "<defaults>: window.length: must be a power of two from 256 to 65536, got 1000"]


# --- problems: one line each, naming the key and its line -----------------------------------

@pytest.mark.parametrize("text, expected", [
    pytest.param('[device]\nsite = "farm-a"\nid "wtg-01"\n',
                 "edge-agent.toml: not TOML: Expected '=' after a key in a key/value pair "
                 "(at line 3, column 4)", id="not-toml"),
    pytest.param('# site\n[device]\nid = "wtg-01"\nsit = "farm-b"\n',
                 "edge-agent.toml:4: device.sit: unknown key (did you mean 'site'?)",
                 id="unknown-key"),
    pytest.param("[alert]\nraise_after = 2\n",
                 "edge-agent.toml:1: alert: unknown section (did you mean 'alerts'?)",
                 id="unknown-section"),
    pytest.param("device = 3\n",
                 "edge-agent.toml:1: device: must be a table ([device]), got integer 3",
                 id="section-not-a-table"),
    pytest.param('[[source]]\ntype = "serial"\nport = "/dev/ttyACM0"\nbaud = "fast"\n',
                 'edge-agent.toml:4: source[0].baud: must be an integer, got string "fast"',
                 id="wrong-type"),
    pytest.param("[broker]\nport = true\n",
                 "edge-agent.toml:2: broker.port: must be an integer, got boolean true",
                 id="bool-for-int"),
    pytest.param("[broker]\nenabled = 1\n",
                 "edge-agent.toml:2: broker.enabled: must be true or false, got integer 1",
                 id="int-for-bool"),
    pytest.param("[broker]\nhost = \"h\"\nport = 70000\n",
                 "edge-agent.toml:3: broker.port: must be an integer from 1 to 65535, got 70000",
                 id="out-of-range"),
    pytest.param("[shaft]\nrpm = nan\n",
                 "edge-agent.toml:2: shaft.rpm: must be a number from 60 to 6000, got nan",
                 id="nan"),
    pytest.param('[logging]\nlevel = "warn"\n',
                 'edge-agent.toml:2: logging.level: must be one of "debug", "info", "warning", '
                 '"error", got "warn" (did you mean \'warning\'?)', id="bad-enum"),
    pytest.param("[window]\nlength = 1000\n",
                 "edge-agent.toml:2: window.length: must be a power of two from 256 to 65536, "
                 "got 1000", id="not-power-of-two"),
    pytest.param("[window]\nlength = 1024\nhop = 2048\n",
                 "edge-agent.toml:3: window.hop: must be <= window.length (1024), got 2048",
                 id="hop-over-length"),
    pytest.param('[device]\nsite = "farm/a"\n',
                 "edge-agent.toml:2: device.site: must be an MQTT topic segment: 1 to 64 "
                 "letters, digits, '_', '.' or '-', got \"farm/a\"", id="topic-segment"),
    pytest.param('[broker]\ntopic_prefix = "pdm//x"\n',
                 "edge-agent.toml:2: broker.topic_prefix: must be topic segments joined by '/', "
                 "each 1 to 64 letters, digits, '_', '.' or '-', got \"pdm//x\"",
                 id="topic-prefix"),
    pytest.param("[broker]\nreconnect_min_s = 5\nreconnect_max_s = 2\n",
                 "edge-agent.toml:3: broker.reconnect_max_s: must be >= broker.reconnect_min_s "
                 "(5.0), got 2.0", id="reconnect-order"),
    pytest.param("[alerts]\nraise_after = 4\nraise_window = 3\n",
                 "edge-agent.toml:3: alerts.raise_window: must be >= alerts.raise_after (4), "
                 "got 3", id="raise-window-order"),
    pytest.param('[broker]\ncert_file = "c.pem"\n',
                 "edge-agent.toml:1: broker.key_file: required when broker.cert_file is set",
                 id="cert-without-key"),
    pytest.param('[broker]\nusername = "agent"\n',
                 "edge-agent.toml:1: broker.password_file: required when broker.username is set",
                 id="username-without-password-file"),
    pytest.param('[[source]]\ntype = "serial"\n',
                 "edge-agent.toml:1: source[0].port: required for source type 'serial'",
                 id="serial-without-port"),
    pytest.param('[[source]]\ntype = "serial"\nport = "/dev/ttyACM0"\nscenario = "ball"\n',
                 "edge-agent.toml:4: source[0].scenario: unknown key for source type 'serial'",
                 id="key-of-another-source-type"),
    pytest.param('[[source]]\ntype = "serail"\nport = "/dev/ttyACM0"\n',
                 'edge-agent.toml:2: source[0].type: must be one of "serial", "mqtt", '
                 '"emulator", "replay", got "serail" (did you mean \'serial\'?)',
                 id="bad-source-type"),
    pytest.param('[[source]]\nport = "/dev/ttyACM0"\n',
                 'edge-agent.toml:1: source[0].type: required, one of "serial", "mqtt", '
                 '"emulator", "replay"', id="source-without-type"),
    pytest.param('[[source]]\ntype = "emulator"\n[[source]]\ntype = "emulator"\n'
                 'name = "emulator0"\n',
                 'edge-agent.toml:5: source[1].name: "emulator0" is already used by source[0]',
                 id="duplicate-source-names"),
    pytest.param('[source]\ntype = "emulator"\n',
                 "edge-agent.toml:1: source: must be an array of tables ([[source]]), got table",
                 id="source-not-an-array"),
    pytest.param("source = []\n",
                 "edge-agent.toml:1: source: at least one [[source]] is required",
                 id="no-source"),
    pytest.param('[[alert_rule]]\ntype = "ball"\n[[alert_rule]]\ntype = "ball"\n',
                 'edge-agent.toml:4: alert_rule[1].type: "ball" already has a rule: alert_rule[0]',
                 id="two-rules-for-one-type"),
    pytest.param('[alerts]\nraise_window = 5\n[[alert_rule]]\ntype = "ball"\nraise_after = 7\n',
                 'edge-agent.toml:3: alert_rule[0].raise_window: must be >= raise_after (7), got 5 '
                 '(for type "ball"; 0 means the value in [alerts])', id="rule-k-over-n"),
    pytest.param('[[alert_rule]]\ntype = "ball"\nseverity = "critical"\n',
                 'edge-agent.toml:3: alert_rule[0].severity: must be one of "auto", "info", '
                 '"warning", "alarm", got "critical"', id="rule-severity"),
    pytest.param('[[alert_rule]]\nraise_after = 2\n',
                 "edge-agent.toml:1: alert_rule[0].type: required, 1 to 64 letters, digits, "
                 "'_', '.' or '-'", id="rule-without-type"),
    pytest.param('[[iso_zone]]\nchannels = "s.*"\ncomponent = "gear"\n',
                 'edge-agent.toml:3: iso_zone[0].component: must be one of "nacelle_tower", '
                 '"main_bearing", "gearbox", "generator", got "gear" (did you mean \'gearbox\'?)',
                 id="iso-component"),
    pytest.param('[alert_rule]\ntype = "ball"\n',
                 "edge-agent.toml:1: alert_rule: must be an array of tables ([[alert_rule]]), got table",
                 id="rule-not-an-array"),
])
def test_each_problem_is_one_exact_line(in_tmp: Path, text: str, expected: str) -> None:
    assert problems_of(text) == [expected]


def test_missing_referenced_files_are_named_with_their_path(in_tmp: Path) -> None:
    assert problems_of('[[source]]\ntype = "replay"\npath = "rec.npz"\n[model]\npack = "m.pack"\n'
                       ) == [f"edge-agent.toml:3: source[0].path: file not found: {in_tmp}/rec.npz",
                             f"edge-agent.toml:5: model.pack: file not found: {in_tmp}/m.pack"]


def test_missing_config_file(in_tmp: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("missing.toml")
    assert err.value.problems == ["missing.toml: cannot read: file not found"]
    assert str(err.value) == "missing.toml: cannot read: file not found"


def test_directory_instead_of_file(in_tmp: Path) -> None:
    Path("conf.toml").mkdir()
    with pytest.raises(ConfigError) as err:
        load_config("conf.toml")
    assert err.value.problems == ["conf.toml: cannot read: is a directory, not a file"]


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_not_utf8(in_tmp: Path, bom: bytes) -> None:
    Path(CONFIG).write_bytes(bom + b'[device]\nsite = "farm-\xff"\n')
    with pytest.raises(ConfigError) as err:
        load_config(CONFIG)
    assert err.value.problems == [
        "edge-agent.toml:2: not UTF-8: invalid byte 0xff; save the file as UTF-8"]
    Path(CONFIG).write_bytes(bom + b'[device]\nsite = "farm-b"\n')
    assert load_config(CONFIG).device.site == "farm-b"


def test_tls_files_must_exist_when_tls_is_on(in_tmp: Path) -> None:
    text = '[broker]\ntls = {tls}\nca_file = "ca.pem"\n'
    assert problems_of(text.format(tls="true")) == [
        f"edge-agent.toml:3: broker.ca_file: file not found: {in_tmp}/ca.pem"]
    assert load_config_text(text.format(tls="false")).broker.ca_file == str(in_tmp / "ca.pem")
    Path("ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    assert load_config_text(text.format(tls="true")).broker.ca_file == str(in_tmp / "ca.pem")


def test_password_file_must_not_be_readable_by_others(in_tmp: Path) -> None:
    secret = in_tmp / "broker.secret"
    secret.write_text("hunter2\n")
    text = '[broker]\nusername = "agent"\npassword_file = "broker.secret"\n'
    for mode in (0o644, 0o640):  # readable by others, or by the group
        secret.chmod(mode)
        assert problems_of(text) == [
            f"edge-agent.toml:3: broker.password_file: {secret} has mode {mode:04o}; secrets "
            f"must not be readable by others: chmod 600 {secret}"]
    secret.chmod(0o600)
    assert load_config_text(text).broker.password_file == str(secret)


def test_every_problem_in_a_file_is_reported_in_line_order(in_tmp: Path) -> None:
    text = """\
[device]
site = "farm a"

[broker]
port = 0
keepalive = 60

[[source]]
type = "serial"

[logging]
level = "loud"
"""
    assert problems_of(text) == [
        "edge-agent.toml:2: device.site: must be an MQTT topic segment: 1 to 64 letters, "
        "digits, '_', '.' or '-', got \"farm a\"",
        "edge-agent.toml:5: broker.port: must be an integer from 1 to 65535, got 0",
        "edge-agent.toml:6: broker.keepalive: unknown key (did you mean 'keepalive_s'?)",
        "edge-agent.toml:8: source[0].port: required for source type 'serial'",
        'edge-agent.toml:12: logging.level: must be one of "debug", "info", "warning", '
        '"error", got "loud"',
    ]


def test_line_numbers_inside_the_second_source(in_tmp: Path) -> None:
    text = """\
[[source]]
type = "serial"
port = "/dev/ttyACM0"
baud = "fast"

[[source]]
type = "serial"
port = "/dev/ttyACM1"
baud = "slow"
[[source]]
type = "mqtt"
"""
    assert problems_of(text) == [
        'edge-agent.toml:4: source[0].baud: must be an integer, got string "fast"',
        'edge-agent.toml:9: source[1].baud: must be an integer, got string "slow"',
        "edge-agent.toml:10: source[2].topic: required for source type 'mqtt'",
    ]


def test_file_names_keep_their_spelling_in_problems(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[queues]\nsamples = 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(os.fspath(path))
    assert err.value.problems == [
        f"{path}:2: queues.samples: must be an integer from 8 to 100000, got 4"]


# --- arrays of numbers and the bearing --------------------------------------------------------

def test_trusted_keys_dir_must_be_a_directory(in_tmp: Path) -> None:
    assert problems_of('[updates]\ntrusted_keys_dir = "keys"\n') == [
        f"edge-agent.toml:2: updates.trusted_keys_dir: directory not found: {in_tmp / 'keys'}"]
    (in_tmp / "keys").write_text("")
    assert problems_of('[updates]\ntrusted_keys_dir = "keys"\n') == [
        f"edge-agent.toml:2: updates.trusted_keys_dir: not a directory: {in_tmp / 'keys'}"]


def test_alert_rules_and_iso_zones_are_parsed() -> None:
    cfg = parse_config('[[alert_rule]]\ntype = "inner_race"\nraise_after = 1\nseverity = "alarm"\n'
                       '[[iso_zone]]\nchannels = "serial0.*"\ncomponent = "gearbox"\n')
    (rule,), (zone,) = cfg.alert_rules, cfg.iso_zones
    assert (rule.type, rule.raise_after, rule.raise_window, rule.severity, rule.enabled) == \
        ("inner_race", 1, 0, "alarm", True)
    assert (zone.channels, zone.component) == ("serial0.*", "gearbox")
    assert parse_config("").alert_rules == () and parse_config("").iso_zones == ()


def test_feature_arrays_and_bearing_geometry() -> None:
    config = parse_config('[features]\nband_edges_hz = [10, 2000.5, 6000]\nenvelope_band_hz = [2000, 4000]\n'
                          '[bearing]\nn_balls = 8\nball_diameter = 7.9\npitch_diameter = 34.5\n')
    assert config.features.band_edges_hz == (10.0, 2000.5, 6000.0)
    assert config.features.envelope_band_hz == (2000.0, 4000.0)
    assert (config.bearing.n_balls, config.bearing.pitch_diameter) == (8, 34.5)
    assert default_config().features.envelope_band_hz == ()


@pytest.mark.parametrize("text,problem", [
    ("[features]\nband_edges_hz = [10, 5]\n",
     "<config>:2: features.band_edges_hz: must be at least 2 increasing numbers from 0 to 100000, got [10, 5]"),
    ("[features]\nband_edges_hz = [10, true]\n", "<config>:2: features.band_edges_hz: must be an array of numbers, got array [10, true]"),
    ("[features]\nenvelope_band_hz = [3000]\n",
     "<config>:2: features.envelope_band_hz: must be [] or [lo, hi] with 0 < lo < hi <= 100000, got [3000]"),
    ("[features]\nenvelope_band_hz = 3000\n", "<config>:2: features.envelope_band_hz: must be an array of numbers, got integer 3000"),
    ("[bearing]\nball_diameter = 2.0\npitch_diameter = 1.0\n",
     "<config>:3: bearing.pitch_diameter: must be > bearing.ball_diameter (2.0), got 1.0"),
])
def test_bad_arrays_and_geometry_are_one_line_each(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert e.value.problems == [problem]


def test_the_classes_are_made_on_first_use_and_are_the_modules_attributes():
    """config's dataclasses are made on first use (section_classes), and reached as module
    attributes as before; a name that is not one is an AttributeError."""
    import edge_agent.config as config

    cfg = config.default_config()
    assert type(cfg.shaft) is config.ShaftConfig is config.section_classes()["ShaftConfig"]
    assert type(cfg.sources[0]) is config.SourceConfig
    assert dataclasses.is_dataclass(config.IsoZoneConfig) and dataclasses.is_dataclass(config.AlertRuleConfig)
    assert {type(getattr(cfg, section)).__name__ for section in config.SCHEMA} == set(config.SECTION_CLASSES.values())
    with pytest.raises(AttributeError):
        config.NoSuchConfig  # noqa: B018


@pytest.mark.parametrize("section", ["window", "shaft", "bearing", "features"])
def test_schema_defaults_are_default_configs_values(section):
    """What replay's feature worker is set up from before the classes exist: the defaults as
    default_config() holds them (window.hop 0 means length // 2 there)."""
    import edge_agent.config as config

    raw = vars(config.schema_defaults(section))
    made = dataclasses.asdict(getattr(config.default_config(), section))
    if section == "window":
        assert raw.pop("hop") == 0 and made.pop("hop") == made["length"] // 2
    assert raw == made
