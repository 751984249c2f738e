"""The command line of the contract: every command present, --help everywhere, bad
arguments one line and exit 2, never a traceback."""
import argparse
import json

import pytest

from edge_agent.cli import build_parser
from cli_helpers import run_cli


def _all_command_paths():
    paths = []

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    paths.append(prefix + [name])
                    walk(sub, prefix + [name])

    walk(build_parser(), [])
    return paths


def test_contract_commands_exist():
    paths = {" ".join(p) for p in _all_command_paths()}
    for cmd in ["run", "demo", "replay", "emulate", "config check", "model info", "model verify", "alerts",
                "alerts ack", "alerts export", "status", "fleet keygen", "fleet sign", "fleet push", "fleet status"]:
        assert cmd in paths, cmd


@pytest.mark.parametrize("path", [[]] + _all_command_paths(), ids=lambda p: " ".join(p) or "top")
def test_help_works_everywhere(path):
    r = run_cli(*path, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: edge-agent")


@pytest.mark.parametrize(
    "args,needle",
    [
        ([], "required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["run"], "--config"),
        (["demo", "--seconds", "soon"], "not a number: 'soon'"),
        (["demo", "--seconds", "-3"], "must be > 0"),
        (["emulate", "--link", "/tmp/x", "--scenario", "earthquake"], "invalid choice: 'earthquake'"),
        (["emulate", "--link", "/tmp/x", "--scenario", "healthy", "--corrupt", "2"], "must be from 0 to 1"),
        (["alerts", "ack", "abc"], "--by"),
        (["fleet", "push", "x.pack", "--target", "g", "--mode", "yolo"], "invalid choice: 'yolo'"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(args, needle):
    r = run_cli(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0] and "Traceback" not in r.stderr


def test_status_names_the_interpreter_backend(tmp_path):
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[storage]\ndir = "{tmp_path / "state"}"\n')
    r = run_cli("status", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "interpreter backend: ai_edge_litert" in r.stdout
    assert "no status file" in r.stdout
    r = run_cli("status", "--config", str(cfg), "--json")
    import json

    doc = json.loads(r.stdout)
    assert doc["interpreter_backend"].startswith("ai_edge_litert") and doc["daemon"] is None


@pytest.mark.parametrize(
    "text,needle",
    [
        ("[broker\nport = 1", "not TOML"),
        ("[broker]\nprot = 1883\n", "broker.prot: unknown key (did you mean 'port'?)"),
        ('[broker]\nport = "1883"\n', "broker.port: must be an integer"),
    ],
    ids=["non-toml", "unknown-key", "wrong-type"],
)
def test_config_check_reports_one_line_naming_the_problem(tmp_path, text, needle):
    f = tmp_path / "c.toml"
    f.write_text(text)
    r = run_cli("config", "check", str(f))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith(str(f))


def test_config_check_missing_file(tmp_path):
    r = run_cli("config", "check", str(tmp_path / "nope.toml"))
    assert r.returncode == 2
    assert r.stderr.strip() == f"{tmp_path / 'nope.toml'}: cannot read: file not found"


def test_config_check_ok_is_one_line(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[device]\nsite = "farm-z"\n')
    r = run_cli("config", "check", str(f))
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 1 and "ok" in r.stdout


def test_model_info_describes_a_pack_and_refuses_a_bad_one(tmp_path):
    from pathlib import Path

    tiny = Path(__file__).parent / "data" / "tiny.pack"
    r = run_cli("model", "info", str(tiny))
    assert r.returncode == 0, r.stderr
    assert "model:      tiny-test 0.1.0" in r.stdout and "labels:     normal, inner_race, outer_race, ball" in r.stdout
    assert "member:     model.tflite sha256 " in r.stdout and "signature:  none (unsigned)" in r.stdout
    r = run_cli("model", "info", str(tiny), "--json")
    assert json.loads(r.stdout)["manifest"]["name"] == "tiny-test"
    bad = tmp_path / "bad.pack"
    bad.write_bytes(tiny.read_bytes()[:100])
    r = run_cli("model", "info", str(bad))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "not a ZIP archive" in r.stderr


def test_status_tells_the_model_update_and_config_reloads(tmp_path):
    """The plain `status` shows what the daemon's status file says of updates and reloads."""
    import time

    from edge_agent.status_file import write_status

    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[storage]\ndir = "{state}"\n')
    write_status(state, {"schema": 1, "state": "running", "time": time.time(), "device": "pdm/s/d", "model": "m 1",
                         "backend": "x", "broker": {"enabled": False}, "queues": {}, "counters": {},
                         "updates": {"state": "rolled_back", "pack_version": "default 2", "reason": "health_check"},
                         "reloads": {"ok": 2, "refused": 1, "needs_restart": ["broker.host"], "last": None}})
    r = run_cli("status", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "model update:        rolled_back (default 2), reason health_check" in r.stdout
    assert "config reloads:      2 ok, 1 refused; needs a restart: broker.host" in r.stdout


def test_commands_other_than_fleet_do_not_import_the_fleet_modules():
    """main() leaves out fleet push/status/drift's options (and their imports: MQTT,
    transfers, sketches) unless the command is fleet: start-up time of run and replay."""
    import subprocess
    import sys

    probe = ("import sys, contextlib, io\nfrom edge_agent.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    try:\n        main({argv!r})\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('edge_agent.fleet_push', 'edge_agent.fleet_drift', 'edge_agent.fleet_status') if m in sys.modules))\n")
    for argv, imported in ((["replay", "--help"], "[]"),
                           (["fleet", "push", "--help"], "['edge_agent.fleet_drift', 'edge_agent.fleet_push', 'edge_agent.fleet_status']")):
        r = subprocess.run([sys.executable, "-c", probe.format(argv=argv)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().splitlines()[-1] == imported, (argv, r.stdout)
