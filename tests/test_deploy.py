"""deploy/ (issue #9, part 2): the systemd unit, the install script and the central broker's
mosquitto configuration, each checked with the real tool.

* the unit: ``systemd-analyze verify`` (a copy whose ExecStart names an existing binary; the
  shipped file's only complaint must be that /opt/edge-agent/venv is not installed here), and
  every hardening directive the issue asks for;
* install.sh: run with ``--root`` into tmp_path (``--no-venv``: no pip), layout, modes, the
  configuration never overwritten, idempotent, and what it says it would run for the user,
  ownership and systemd (nothing of that is done to this machine);
* mosquitto: deploy/mosquitto/edge-agent-broker.conf and edge-agent.acl as shipped, only the
  ports and the file locations swapped for the test's, in a real mosquitto with a PKI made by
  deploy/mosquitto/issue-cert.sh (openssl): gateways write only their own topics and read only
  their own inbound ones, the operator identity reads everything and writes offers, chunks and
  commands, and the agent's own publisher gets through.
"""
from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cli_helpers import run_cli
from conftest import running_under_ci
from edge_agent.agent import Agent
from edge_agent.config import default_config
from edge_agent.local_broker import find_mosquitto, free_port
from edge_agent.publisher import INBOUND_TOPICS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy"
UNIT = DEPLOY / "edge-agent.service"
INSTALL = DEPLOY / "install.sh"
TEMPLATE = DEPLOY / "edge-agent.toml"
MOSQ_DIR = DEPLOY / "mosquitto"
BROKER_CONF = MOSQ_DIR / "edge-agent-broker.conf"
ACL = MOSQ_DIR / "edge-agent.acl"
ISSUE_CERT = MOSQ_DIR / "issue-cert.sh"

# what a gateway publishes below {prefix}/{site}/{device}/ (docs/MQTT.md, docs/UPDATES.md)
OUTBOUND_KINDS = ("status", "alert", "summary", "ack", "model/request", "model/progress")


# ======================================================================== the unit
def unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}} of a unit file (comments and blanks skipped)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"directive outside a section: {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_has_the_hardening_the_issue_asks_for() -> None:
    service = unit_directives(UNIT.read_text())["Service"]
    one = {key: values[-1] for key, values in service.items()}
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "ExecStart": "/opt/edge-agent/venv/bin/edge-agent run --config /etc/edge-agent/edge-agent.toml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "User": "edge-agent",
        "Group": "edge-agent",
        "SupplementaryGroups": "dialout",
        "StateDirectory": "edge-agent",
        "ReadWritePaths": "/var/lib/edge-agent",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "TimeoutStopSec": "10",
        "KillMode": "mixed",
        "CapabilityBoundingSet": "",
    }
    wrong = {k: (one.get(k), v) for k, v in expected.items() if one.get(k) != v}
    assert not wrong, f"(found, expected): {wrong}"
    assert re.fullmatch(r"\d+[KMG]", one["MemoryMax"]), one.get("MemoryMax")
    # every key given once, except the ones systemd accumulates
    repeated = {k for k, v in service.items() if len(v) > 1} - {"Environment", "SystemCallFilter"}
    assert not repeated, repeated
    # the serial sensor ports stay reachable: nothing that hides /dev or whitelists devices
    # (ProtectClock=yes implies DeviceAllow=char-rtc on systemd < 253, which blocks the rest)
    for key in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock", "PrivateUsers"):
        assert key not in service, f"{key} would cut the daemon off the serial sensor ports"
    assert unit_directives(UNIT.read_text())["Install"]["WantedBy"] == ["multi-user.target"]


def test_every_unit_directive_is_commented() -> None:
    lines = UNIT.read_text().splitlines()
    bare = [line for prev, line in zip(lines, lines[1:])
            if "=" in line and not line.startswith("#") and not prev.startswith("#")]
    assert not bare, f"directives without a comment line above them: {bare}"


def test_unit_execstart_is_the_real_cli() -> None:
    """ExecStart's arguments are the CLI's: `edge-agent run --config FILE`."""
    script = Path(sys.executable).parent / "edge-agent"
    if not script.exists():
        pytest.skip(f"{script} is not installed (make install)")
    out = subprocess.run([str(script), "run", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--config" in out.stdout, out.stdout + out.stderr


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd); the unit is not verified")
    return tool


def _verify(tool: str, unit: Path) -> tuple[int, list[str]]:
    out = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    return out.returncode, [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` exits 0 even for unknown keys and bad values (it only prints
    them), so the test requires it to print nothing at all about our unit. The shipped
    ExecStart (/opt/edge-agent/venv) does not exist on this machine: a copy names the venv's
    edge-agent instead, and the shipped file's only complaint must be exactly that."""
    tool = _systemd_analyze()
    text = UNIT.read_text()
    real = Path(sys.executable).parent / "edge-agent"
    binary = real if real.exists() else Path(sys.executable)
    copy_text, n = re.subn(r"^ExecStart=/opt/edge-agent/venv/bin/edge-agent ",
                           f"ExecStart={binary} ", text, flags=re.M)
    assert n == 1, "ExecStart is not /opt/edge-agent/venv/bin/edge-agent"
    copy = tmp_path / "edge-agent.service"  # same name: verify derives the unit name from it
    copy.write_text(copy_text)
    code, lines = _verify(tool, copy)
    assert code == 0 and lines == [], "\n".join(lines)

    if Path("/opt/edge-agent/venv/bin/edge-agent").exists():
        return  # installed here: the shipped file verifies as it is
    code, lines = _verify(tool, UNIT)
    assert lines == ["edge-agent.service: Command /opt/edge-agent/venv/bin/edge-agent is not executable: "
                     "No such file or directory"], "\n".join(lines)


def test_systemd_analyze_would_catch_a_broken_directive(tmp_path: Path) -> None:
    """The verify test above means something: a typo in a key and a bad value are printed."""
    tool = _systemd_analyze()
    broken = re.sub(r"^ExecStart=\S+", f"ExecStart={sys.executable}", UNIT.read_text(), flags=re.M)
    broken = broken.replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomes=yes").replace("WatchdogSec=30", "WatchdogSec=thirty")
    unit = tmp_path / "edge-agent.service"
    unit.write_text(broken)
    _, lines = _verify(tool, unit)
    text = "\n".join(lines)
    assert "Unknown key" in text and "ProtectHomes" in text and "thirty" in text, text


# ======================================================================== install.sh
def run_install(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["bash", str(INSTALL), *map(str, args)], capture_output=True, text=True, timeout=60)
    if check:
        assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every path below root: (mode, sha256 of a file's bytes or '' for a directory)."""
    found = {}
    for path in sorted(root.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        found[str(path.relative_to(root))] = (mode(path), digest)
    return found


def would_run(stdout: str) -> list[str]:
    return [line.removeprefix("would run: ") for line in stdout.splitlines() if line.startswith("would run: ")]


def host_state() -> tuple[bool, bool, bool]:
    try:
        pwd.getpwnam("edge-agent")
        user = True
    except KeyError:
        user = False
    return (user, Path("/etc/systemd/system/edge-agent.service").exists(), Path("/etc/edge-agent").exists())


def test_install_help_and_bad_arguments(tmp_path: Path) -> None:
    out = run_install("--help")
    for word in ("--root DIR", "--no-venv", "default.pack", "--python", "--find-links", "would run:", "never overwritten"):
        assert word in out.stdout, word
    for args, message in ((["--bogus"], "unknown option: --bogus"),
                          (["--root", tmp_path / "absent", "--no-venv"], "no such directory"),
                          (["--root", tmp_path, "--no-venv", "pkg.whl"], "given with --no-venv"),
                          (["--root", tmp_path, tmp_path / "nothing.whl"], "no such file or directory"),
                          (["--root", tmp_path, "--python", "/nonexistent/python3"], "not found")):
        out = run_install(*args, check=False)
        lines = out.stderr.splitlines()
        assert out.returncode == 1 and len(lines) == 1 and message in lines[0], (args, out.stdout, out.stderr)
    assert list(tmp_path.iterdir()) == []  # the checks run before anything is changed


def test_install_into_a_root_lays_out_files_and_only_reports_system_changes(tmp_path: Path) -> None:
    before = host_state()
    root = tmp_path / "root"
    root.mkdir()
    out = run_install("--root", root, "--no-venv")

    dirs = {"opt/edge-agent": 0o755, "opt/edge-agent/models": 0o755, "etc/edge-agent": 0o750, "etc/edge-agent/trusted-keys": 0o750,
            "etc/edge-agent/tls": 0o750, "var/lib/edge-agent": 0o750, "etc/systemd/system": 0o755}
    for rel, want in dirs.items():
        assert (root / rel).is_dir() and mode(root / rel) == want, (rel, oct(mode(root / rel)))
    config = root / "etc/edge-agent/edge-agent.toml"
    assert mode(config) == 0o640
    # the documented configuration, with the trusted keys directory the script made
    template, installed = TEMPLATE.read_text().splitlines(), config.read_text().splitlines()
    changed = [(a, b) for a, b in zip(template, installed) if a != b]
    assert len(template) == len(installed) and changed == [
        ('pack = ""', 'pack = "/opt/edge-agent/models/default.pack"'),
        ('trusted_keys_dir = ""', 'trusted_keys_dir = "/etc/edge-agent/trusted-keys"')], changed
    pack = root / "opt/edge-agent/models/default.pack"
    assert pack.read_bytes() == (REPO_ROOT / "models/default.pack").read_bytes() and mode(pack) == 0o644
    # and it is a valid configuration once its absolute paths are read inside the root
    rerooted = tmp_path / "rerooted.toml"
    rerooted.write_text(re.sub(r'"(/opt/edge-agent|/etc/edge-agent|/var/lib/edge-agent)', rf'"{root}\1', config.read_text()))
    check = run_cli("config", "check", str(rerooted))
    assert check.returncode == 0 and check.stdout.count("\n") == 1, check.stdout + check.stderr
    unit = root / "etc/systemd/system/edge-agent.service"
    assert unit.read_bytes() == UNIT.read_bytes() and mode(unit) == 0o644
    assert not (root / "opt/edge-agent/venv").exists() and "skipped: venv and pip install (--no-venv)" in out.stdout

    # users, ownership and systemd: reported with the target's paths, never done
    commands = would_run(out.stdout)
    useradd = [c for c in commands if c.startswith("useradd ")]
    assert len(useradd) == 1 and useradd[0].endswith(" edge-agent")
    for flag in ("--system", "--user-group", "--groups dialout", "--shell /usr/sbin/nologin"):
        assert flag in useradd[0], flag
    for expected in ("chown root:edge-agent /etc/edge-agent/edge-agent.toml",
                     "chown root:edge-agent /etc/edge-agent", "chown root:edge-agent /etc/edge-agent/trusted-keys",
                     "chown edge-agent:edge-agent /var/lib/edge-agent",
                     "systemctl daemon-reload", "systemctl enable edge-agent.service"):
        assert expected in commands, (expected, commands)
    assert not any(c.startswith("systemctl restart") for c in commands)  # not started unless --start
    assert not [line for line in out.stdout.splitlines() if line.startswith("run: ")]
    assert str(root) not in "\n".join(commands)  # the target's paths, not ours
    assert host_state() == before  # this machine: no user, no unit, no /etc/edge-agent made
    assert out.stdout.rstrip().endswith("done")


def test_install_twice_is_idempotent_and_never_overwrites_the_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    run_install("--root", root, "--no-venv")
    first = snapshot(root)

    again = run_install("--root", root, "--no-venv")
    assert snapshot(root) == first
    assert "kept: /etc/edge-agent/edge-agent.toml (exists; not overwritten)" in again.stdout

    # an operator's edited configuration, and drifted modes of our directories
    config = root / "etc/edge-agent/edge-agent.toml"
    config.write_text('[device]\nsite = "farm-b"\nid = "wtg-42"\n')
    config.chmod(0o600)
    (root / "var/lib/edge-agent").chmod(0o777)
    (root / "etc/edge-agent/trusted-keys/ops.pub").write_text("key\n")
    third = run_install("--root", root, "--no-venv", "--start")
    assert config.read_text() == '[device]\nsite = "farm-b"\nid = "wtg-42"\n' and mode(config) == 0o600
    assert mode(root / "var/lib/edge-agent") == 0o750
    assert (root / "etc/edge-agent/trusted-keys/ops.pub").read_text() == "key\n"
    assert "systemctl restart edge-agent.service" in would_run(third.stdout)


def test_install_with_an_existing_user_in_the_root(tmp_path: Path) -> None:
    """An image that already has the user: no useradd; one not yet in dialout: usermod."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n"
                                     "edge-agent:x:998:998::/var/lib/edge-agent:/usr/sbin/nologin\n")
    (root / "etc/group").write_text("root:x:0:\ndialout:x:20:pi\nedge-agent:x:998:\n")
    commands = would_run(run_install("--root", root, "--no-venv", "--no-enable").stdout)
    assert not any(c.startswith("useradd") for c in commands)
    assert "usermod -a -G dialout edge-agent" in commands
    assert "systemctl enable edge-agent.service" not in commands

    (root / "etc/group").write_text("root:x:0:\ndialout:x:20:pi,edge-agent\nedge-agent:x:998:\n")
    commands = would_run(run_install("--root", root, "--no-venv").stdout)
    assert not any(c.startswith(("useradd", "usermod")) for c in commands)


# ======================================================================== the central broker
@dataclass(frozen=True)
class Pki:
    dir: Path        # issue-cert.sh --dir: the CAs and the broker's certificate
    other: Path      # an unrelated CA's --dir (same CNs, not trusted by the broker)

    def device(self, site: str, device: str, *, other: bool = False) -> tuple[Path, Path, Path]:
        d = (self.other if other else self.dir) / "devices" / site / device
        return d / "ca.crt", d / "device.crt", d / "device.key"

    def operator(self, name: str = "fleet-ops") -> tuple[Path, Path, Path]:
        d = self.dir / "operators"
        return self.dir / "edge-agent-ca.crt", d / f"{name}.crt", d / f"{name}.key"


def issue(pki_dir: Path, *args: str) -> str:
    out = subprocess.run(["bash", str(ISSUE_CERT), "--dir", str(pki_dir), *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"issue-cert.sh {args}: {out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The documented PKI, made with deploy/mosquitto/issue-cert.sh (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (Debian package openssl); issue-cert.sh needs it")
    base = tmp_path_factory.mktemp("broker-pki")
    pki = Pki(base / "pki", base / "other")
    issue(pki.dir, "ca")
    issue(pki.dir, "broker", "127.0.0.1", "localhost")
    for device in ("wtg-01", "wtg-02"):
        issue(pki.dir, "device", "farm-a", device)
    issue(pki.dir, "operator")
    issue(pki.other, "ca")
    issue(pki.other, "device", "farm-a", "wtg-01")  # wtg-01's CN from a CA the broker does not trust
    return pki


def test_issue_cert_makes_the_documented_identities(pki: Pki, tmp_path: Path) -> None:
    def subject(cert: Path) -> str:
        return subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-subject", "-nameopt", "RFC2253"],
                              capture_output=True, text=True, check=True).stdout.strip()

    assert subject(pki.device("farm-a", "wtg-01")[1]) == "subject=CN=farm-a/wtg-01"
    assert subject(pki.operator()[1]) == "subject=CN=fleet-ops"
    for key in (pki.device("farm-a", "wtg-01")[2], pki.operator()[2], pki.dir / "edge-agent-ca.key"):
        assert mode(key) == 0o600, key
    # never overwrites; refuses what is not a topic segment ([device] site / id)
    for args, message in ((("device", "farm-a", "wtg-01"), "exists; not overwriting"),
                          (("device", "farm+a", "wtg-09"), "not a topic segment"),
                          (("device", "farm-a", "a/b"), "not a topic segment")):
        out = subprocess.run(["bash", str(ISSUE_CERT), "--dir", str(pki.dir), *args], capture_output=True, text=True)
        assert out.returncode == 1 and message in out.stderr, (args, out.stderr)


def test_acl_covers_exactly_the_topics_the_agent_uses() -> None:
    lines = [line.split() for line in ACL.read_text().splitlines() if line.strip() and not line.startswith("#")]
    patterns = {(access, topic) for kind, access, topic in (x for x in lines if x[0] == "pattern")}
    assert patterns == {("write", f"pdm/%u/{k}") for k in OUTBOUND_KINDS} | {("read", f"pdm/%u/{t}") for t in INBOUND_TOPICS}
    assert ["user", "fleet-ops"] in lines


class AclBroker:
    """mosquitto with deploy/mosquitto/edge-agent-broker.conf as shipped, except: listeners on
    free loopback ports, the certificate/ACL paths pointing at the test's files, and logging,
    persistence and (as root) `user root` for a private test broker."""

    FILE_KEYS = ("cafile", "certfile", "keyfile", "acl_file", "crlfile")

    def __init__(self, binary: str, workdir: Path, pki: Pki) -> None:
        self.workdir = workdir
        self.device_port, self.operator_port = free_port(), free_port()
        files = {p.name: p for p in pki.dir.glob("*.crt")} | {p.name: p for p in pki.dir.glob("*.key")}
        files[ACL.name] = ACL
        self.log = workdir / "mosquitto.log"
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(self.adapt(BROKER_CONF.read_text(), {8883: self.device_port, 8884: self.operator_port}, files)
                             + f"\n# test only\nlog_dest file {self.log}\nlog_type all\nconnection_messages true\n"
                             + "persistence false\n" + ("user root\n" if os.geteuid() == 0 else ""))
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=open(workdir / "mosquitto.out", "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while not (" running" in self.log_text() and all(map(self._accepts, (self.device_port, self.operator_port)))):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                out = (workdir / "mosquitto.out").read_text(errors="replace")
                raise RuntimeError(f"mosquitto with the shipped config did not start:\n{out}\n{self.log_text()}")
            time.sleep(0.02)

    @classmethod
    def adapt(cls, text: str, ports: dict[int, int], files: dict[str, Path]) -> str:
        out, seen = [], set()
        for line in text.splitlines():
            words = line.split()
            if words[:1] == ["listener"]:
                port = int(words[1])
                assert port in ports, f"unexpected listener {line!r}"
                seen.add(port)
                line = f"listener {ports[port]} 127.0.0.1"
            elif words and words[0] in cls.FILE_KEYS:
                name = Path(words[1]).name
                assert name in files, f"{line!r}: the test has no {name}"
                line = f"{words[0]} {files[name]}"
            out.append(line)
        assert seen == set(ports), f"listeners {sorted(seen)} in the config, expected {sorted(ports)}"
        return "\n".join(out) + "\n"

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclBroker]:
    binary = find_mosquitto()
    if binary is None:
        reason = "mosquitto is not installed (scripts/ensure-system.sh mosquitto; `make test` does)"
        if running_under_ci():
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason)
    b = AclBroker(binary, tmp_path_factory.mktemp("acl-broker"), pki)
    try:
        yield b
    finally:
        b.stop()


class Client:
    """A paho 2.x client over mutual TLS (MQTT 3.1.1, as the agent): connected, and subscribed
    to ``subscribe`` (SUBACK received), when the constructor returns."""

    def __init__(self, port: int, files: tuple[Path, Path, Path], subscribe: tuple[str, ...] = (),
                 client_id: str | None = None) -> None:
        ca, cert, key = files
        self.messages: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.connects = self.disconnects = self.subacks = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:10]}")
        self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        for topic in subscribe:
            assert self._wait(lambda: self.connects >= 1), "no CONNACK"
            before = self.subacks
            self.client.subscribe(topic, qos=1)
            assert self._wait(lambda: self.subacks > before), f"no SUBACK for {topic}"
        assert self._wait(lambda: self.connects >= 1), "no CONNACK"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        with self.cond:
            self.connects += 0 if reason_code.is_failure else 1
            self.cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        with self.cond:
            self.disconnects += 1
            self.cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        with self.cond:
            self.subacks += 1
            self.cond.notify_all()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self.cond:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))
            self.cond.notify_all()

    def _wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout=timeout)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=5)  # PUBACK: also for a denied publish (MQTT 3.1.1)
        assert info.is_published(), f"no PUBACK for {topic}"

    def wait_for_payload(self, payload: bytes, timeout: float = 5.0) -> list[tuple[str, bytes, bool]]:
        """Wait until ``payload`` has arrived; every message so far (in arrival order)."""
        self._wait(lambda: any(p == payload for _, p, _ in self.messages), timeout)
        with self.cond:
            got = list(self.messages)
        assert any(p == payload for _, p, _ in got), f"{payload!r} never arrived; got {got}"
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def connect(broker: AclBroker) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(files: tuple[Path, Path, Path], *subscribe: str, operator: bool = False, client_id: str | None = None) -> Client:
        client = Client(broker.operator_port if operator else broker.device_port, files, subscribe, client_id)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def token(what: str) -> bytes:
    return f"{what}-{uuid.uuid4().hex[:8]}".encode()


A, B = ("farm-a", "wtg-01"), ("farm-a", "wtg-02")
BASE_A, BASE_B = "pdm/farm-a/wtg-01", "pdm/farm-a/wtg-02"


@pytest.mark.broker
def test_a_gateway_publishes_its_own_topics_and_the_fleet_sees_them(pki: Pki, connect) -> None:
    fleet = connect(pki.operator(), "pdm/#", operator=True)
    a = connect(pki.device(*A))
    sent = {kind: token(kind) for kind in OUTBOUND_KINDS}
    for kind, payload in sent.items():
        a.publish(f"{BASE_A}/{kind}", payload)
    got = fleet.wait_for_payload(sent[OUTBOUND_KINDS[-1]])
    assert {(t, p) for t, p, _ in got} >= {(f"{BASE_A}/{k}", p) for k, p in sent.items()}


@pytest.mark.broker
def test_a_gateway_cannot_write_another_gateways_topics(pki: Pki, connect) -> None:
    fleet = connect(pki.operator(), "pdm/#", operator=True)
    b = connect(pki.device(*B), *(f"{BASE_B}/{t}" for t in INBOUND_TOPICS))
    a = connect(pki.device(*A))
    forged = {f"{BASE_B}/alert": token("forged-alert"), f"{BASE_B}/status": token("forged-status"),
              f"{BASE_B}/model/offer": token("forged-offer"), f"{BASE_B}/cmd/ack": token("forged-cmd"),
              f"{BASE_A}/model/offer": token("self-offer"), "pdm/farm-a/status": token("short"),
              "pdm/other": token("elsewhere")}
    for topic, payload in forged.items():
        a.publish(topic, payload)
    sentinel = token("sentinel")
    a.publish(f"{BASE_A}/alert", sentinel)  # same connection, after the forged ones: in order
    got = fleet.wait_for_payload(sentinel)
    assert [p for _, p, _ in got] == [sentinel], f"delivered although denied: {got}"
    # nor did B get the forged offer or command (the fleet's sentinel arrives after them)
    fleet_sentinel = token("fleet-sentinel")
    fleet.publish(f"{BASE_B}/cmd/ack", fleet_sentinel)
    assert [p for _, p, _ in b.wait_for_payload(fleet_sentinel)] == [fleet_sentinel]


@pytest.mark.broker
def test_a_gateway_cannot_read_another_gateways_topics(pki: Pki, connect) -> None:
    """mosquitto 2.0 grants any SUBSCRIBE and checks read access per message delivered: A's
    pdm/# subscription receives A's own inbound topics and nothing of B's."""
    a = connect(pki.device(*A), "pdm/#")
    b = connect(pki.device(*B))
    fleet = connect(pki.operator(), operator=True)
    b.publish(f"{BASE_B}/alert", token("b-alert"))
    fleet.publish(f"{BASE_B}/model/offer", token("b-offer"))
    fleet.publish(f"{BASE_B}/model/chunk/0123456789abcdef/0", token("b-chunk"))
    fleet.publish(f"{BASE_B}/cmd/ack", token("b-cmd"))
    mine = token("a-offer")
    fleet.publish(f"{BASE_A}/model/offer", mine)
    got = a.wait_for_payload(mine)
    assert [(t, p) for t, p, _ in got] == [(f"{BASE_A}/model/offer", mine)], got
    # A cannot read even its own outbound topics back (nobody's but the fleet's business)
    a.publish(f"{BASE_A}/status", token("a-status"))
    last = token("a-cmd")
    fleet.publish(f"{BASE_A}/cmd/ack", last)
    assert [p for _, p, _ in a.wait_for_payload(last)] == [mine, last]


@pytest.mark.broker
def test_the_fleet_offers_a_model_and_the_gateway_receives_it(pki: Pki, connect) -> None:
    """The operator identity writes A's offer (retained), chunks and commands; A, subscribed
    as the agent is (INBOUND_TOPICS), receives them, and a retained offer also after it
    reconnects. The fleet cannot forge a gateway's own topics."""
    a = connect(pki.device(*A), *(f"{BASE_A}/{t}" for t in INBOUND_TOPICS))
    fleet = connect(pki.operator(), f"{BASE_A}/#", operator=True)
    offer, chunk, cmd = token("offer"), token("chunk"), token("cmd")
    fleet.publish(f"{BASE_A}/model/offer", offer, retain=True)
    fleet.publish(f"{BASE_A}/model/chunk/0123456789abcdef/3", chunk)
    fleet.publish(f"{BASE_A}/cmd/ack", cmd)
    got = a.wait_for_payload(cmd)
    assert [(t, p) for t, p, _ in got] == [(f"{BASE_A}/model/offer", offer),
                                          (f"{BASE_A}/model/chunk/0123456789abcdef/3", chunk),
                                          (f"{BASE_A}/cmd/ack", cmd)]
    a.close()  # one connection per identity: a second one would take over the first's session
    late = connect(pki.device(*A), f"{BASE_A}/model/offer")
    assert late.wait_for_payload(offer)[0] == (f"{BASE_A}/model/offer", offer, True)

    # the fleet may not write what only the gateway writes
    forged = token("fleet-forged-alert")
    fleet.publish(f"{BASE_A}/alert", forged)
    sentinel = token("sentinel")
    fleet.publish(f"{BASE_A}/cmd/ack", sentinel)
    assert forged not in [p for _, p, _ in fleet.wait_for_payload(sentinel)]
    fleet.publish(f"{BASE_A}/model/offer", b"", retain=True)  # clear the retained offer


@pytest.mark.broker
def test_identities_are_certificates_from_the_right_ca(pki: Pki, broker: AclBroker) -> None:
    """A gateway's certificate from another CA, a gateway on the operators' listener and an
    operator on the gateways' listener are all refused in the TLS handshake."""
    def refused(port: int, files: tuple[Path, Path, Path]) -> bool:
        ca, cert, key = files
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
        client.tls_set(ca_certs=str(pki.dir / "edge-agent-ca.crt"), certfile=str(cert), keyfile=str(key))
        outcome: list[bool] = []
        done = threading.Event()
        client.on_connect = lambda c, u, f, rc, p: (outcome.append(not rc.is_failure), done.set())
        client.on_disconnect = lambda c, u, f, rc, p: (outcome.append(False), done.set())
        try:
            client.connect("127.0.0.1", port, keepalive=30)
        except OSError:  # ssl.SSLError: TLS 1.2 refuses in the handshake
            return True
        client.loop_start()
        try:
            done.wait(5)  # TLS 1.3: the broker closes the connection right after the handshake
            return outcome[:1] != [True]
        finally:
            client.disconnect()
            client.loop_stop()

    assert refused(broker.device_port, pki.device(*A, other=True))
    assert refused(broker.operator_port, pki.device(*A))
    assert refused(broker.device_port, pki.operator())
    assert not refused(broker.device_port, pki.device(*A))


@pytest.mark.broker
def test_a_gateway_cannot_take_over_another_gateways_session(pki: Pki, connect, broker: AclBroker) -> None:
    """use_username_as_clientid: the client id is the certificate's CN, whatever the client
    asks for, so A connecting with B's client id neither disconnects B nor gets B's session."""
    b = connect(pki.device(*B), f"{BASE_B}/cmd/+", client_id="edge-agent-farm-a-wtg-02")
    a = connect(pki.device(*A), f"{BASE_A}/cmd/+", client_id="farm-a/wtg-02")
    fleet = connect(pki.operator(), operator=True)
    for_b = token("for-b")
    fleet.publish(f"{BASE_B}/cmd/ack", for_b)
    b.wait_for_payload(for_b)
    assert b.disconnects == 0 and a.messages == []
    log = broker.log_text()
    assert " as farm-a/wtg-01 (" in log and " as farm-a/wtg-02 (" in log


@pytest.mark.broker
def test_the_agents_own_publisher_gets_through_the_acl(pki: Pki, connect, broker: AclBroker, tmp_path: Path) -> None:
    """The real Publisher (client id, persistent session, last will on its status topic,
    subscriptions to INBOUND_TOPICS) with the documented files: birth and an alert arrive."""
    fleet = connect(pki.operator(), f"{BASE_A}/#", operator=True)
    ca, cert, key = pki.device(*A)
    cfg = default_config()
    assert (cfg.device.site, cfg.device.id, cfg.broker.topic_prefix) == ("farm-a", "wtg-01", "pdm")
    agent = Agent(replace(cfg, sources=(),
                          broker=replace(cfg.broker, host="127.0.0.1", port=broker.device_port, tls=True,
                                         ca_file=str(ca), cert_file=str(cert), key_file=str(key),
                                         reconnect_min_s=0.1, reconnect_max_s=1.0),
                          storage=replace(cfg.storage, dir=str(tmp_path / "state"))))
    stop = threading.Event()
    thread = threading.Thread(target=agent.publisher.run, args=(stop,), name="publisher")
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not agent.publisher.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert agent.publisher.connected.is_set(), agent.publisher.counters()
        seq = agent.outbox.commit("alert", {"schema": 1, "type": "inner_race", "severity": "warning"})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(t == f"{BASE_A}/alert" for t, _, _ in fleet.messages):
            time.sleep(0.02)
        topics = [t for t, _, _ in fleet.messages]
        assert f"{BASE_A}/status" in topics and f"{BASE_A}/alert" in topics, (seq, topics, agent.publisher.counters())
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert " as farm-a/wtg-01 (" in broker.log_text()
