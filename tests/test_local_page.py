"""The technicians' local page ([page], edge_agent/local_page.py), with real parts: an Agent
running the emulator (inner-race fault, the default model pack) serves the page on a free
loopback port; the tests make real HTTP requests to it, acknowledge an alert with the local
token, and render the page in headless Chromium.

The Chromium test saves its screenshot to tests/artifacts/local-page.png (gitignored) and
skips when Chromium is not installed (`scripts/ensure-system.sh chromium`, which `make test`
runs); under CI (CI=true) a missing Chromium is a failure.
"""
from __future__ import annotations

import html
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.alert_log import AlertLog
from edge_agent.bearing import SKF_6205
from edge_agent.config import ConfigError, default_config, parse_config
from edge_agent.features import FeatureExtractor, FeatureSpec
from edge_agent.local_page import MAX_BODY, MAX_CONNECTIONS, envelope_spectrum
from tests.conftest import running_under_ci

REPO = Path(__file__).resolve().parent.parent
PACK = str(REPO / "models" / "default.pack")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TOKEN = "s3cret-local-token"
TREND_WINDOWS = 40


class Page:
    """A running agent with its page, and a small HTTP client for it."""

    def __init__(self, agent: Agent, stop: threading.Event, thread: threading.Thread) -> None:
        self.agent, self.stop, self.thread = agent, stop, thread
        self.host, self.port = agent.page.address

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, dict]:
        status, _, body = self.request("GET", path)
        return status, json.loads(body)

    def ack(self, payload: dict | bytes, content_type: str = "application/json") -> tuple[int, dict]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        status, _, raw = self.request("POST", "/api/ack", body, {"Content-Type": content_type})
        return status, json.loads(raw) if raw else {}


def _wait(what, timeout: float = 20.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := what():
            return value
        time.sleep(every)
    return None


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Page:
    tmp = tmp_path_factory.mktemp("page")
    token = tmp / "page.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    cfg = default_config(page={"enabled": True, "listen": "127.0.0.1:0", "token_file": str(token),
                               "trend_windows": TREND_WINDOWS}, model={"pack": PACK})
    src = replace(cfg.sources[0], scenario="inner_race", channels=2, speedup=8.0)
    cfg = replace(cfg, sources=(src,), broker=replace(cfg.broker, enabled=False),
                  storage=replace(cfg.storage, dir=str(tmp / "state")),
                  publish=replace(cfg.publish, summary_interval_s=2.0, status_interval_s=0.5))
    agent = Agent(cfg)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), name="test-agent")
    thread.start()
    try:
        assert _wait(lambda: agent.page is not None, 5), "the page did not start"
        p = Page(agent, stop, thread)

        def fault_alert_with_spectrum():
            status, alerts = p.get("/api/alerts")
            return status == 200 and any(a["type"] == "inner_race" and a["spectrum"] for a in alerts["open"])

        assert _wait(fault_alert_with_spectrum, 30), "no open inner_race alert with a spectrum within 30 s"

        def published_and_full():  # a status snapshot taken since, and full trend rings
            health = p.get("/api/status")[1]["health"]
            trends = p.get("/api/trends")[1]["channels"].values()
            return health and health["open_alerts"] and all(len(c["t"]) == TREND_WINDOWS for c in trends)

        assert _wait(published_and_full, 10), "no status with the open alert, or trends not full, within 10 s"
        yield p
    finally:
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive()


# ---------------------------------------------------------------------------------- endpoints
def test_status_says_health_model_and_data_quality(page):
    status, headers, body = page.request("GET", "/api/status")
    assert status == 200 and headers["content-type"] == "application/json"
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"
    s = json.loads(body)
    h, m = s["health"], s["model"]
    assert h["state"] == "running" and not h["stale"] and h["uptime_s"] > 0
    assert h["uplink"]["enabled"] is False and h["uplink"]["connected"] is False
    assert h["queues"]["samples"]["max"] == 256 and h["queues"]["outbox"]["depth"] >= 0
    assert h["errors"] == {"processing": 0, "bad_blocks": 0, "sources": 0, "samples_dropped": 0}
    assert h["windows"] > 0 and h["open_alerts"] >= 1
    assert m["version"].startswith("default ") and m["backend"] and m["update"] == "disabled"
    dq = s["data_quality"]
    assert set(dq["windows_checked"]) == {"emulator0.accel0", "emulator0.accel1"} and dq["action"] == "flag"
    assert s["page"]["address"] == f"127.0.0.1:{page.port}"


def test_open_alerts_carry_their_explanations(page):
    status, a = page.get("/api/alerts")
    assert status == 200 and a["ack_enabled"] is True
    fault = [r for r in a["open"] if r["type"] == "inner_race"]
    assert fault and all(r["state"] == "open" and r["explanation"] for r in a["open"])
    assert "BPFI" in fault[0]["explanation"] and fault[0]["evidence_windows"] >= 1


def test_trends_are_a_bounded_ring_per_channel(page):
    # at 8x real time a channel makes ~100 windows a second: the ring is full long since
    status, t = page.get("/api/trends")
    assert status == 200 and t["max_windows"] == TREND_WINDOWS
    assert set(t["channels"]) == {"emulator0.accel0", "emulator0.accel1"}
    for c in t["channels"].values():
        assert len(c["t"]) == len(c["rms"]) == len(c["kurtosis"]) == len(c["anomaly_score"]) == TREND_WINDOWS
        assert all(r > 0 for r in c["rms"]) and all(k > 1 for k in c["kurtosis"])
        assert c["t"] == sorted(c["t"]) and set(c["label"]) <= {"normal", "inner_race", "outer_race", "ball"}


def test_spectrum_of_the_alert_window_marks_the_defect_orders(page):
    status, s = page.get("/api/spectrum")
    assert status == 200
    assert len(s["hz"]) == len(s["amplitude"]) and 10 < len(s["hz"]) <= 1200
    assert s["hz"] == sorted(s["hz"]) and s["hz"][-1] <= s["hz_max"] + s["df_hz"]
    shaft_hz = s["rpm"] / 60.0
    assert abs(s["shaft_hz"] - shaft_hz) < 1e-3
    orders = SKF_6205.orders()
    fundamentals = {m["name"]: m for m in s["markers"] if m["harmonic"] == 1}
    assert set(fundamentals) == {"BPFO", "BPFI", "BSF", "FTF"}
    for name, m in fundamentals.items():
        assert m["hz"] == pytest.approx(getattr(orders, name.lower()) * shaft_hz, rel=1e-4)
    # an inner-race fault: the envelope line at BPFI stands out among the defect orders
    assert fundamentals["BPFI"]["amplitude"] == max(m["amplitude"] for m in fundamentals.values())

    # one alert's own spectrum, by id; unknown or malformed ids are refused
    _, alerts = page.get("/api/alerts")
    fault = next(r for r in alerts["open"] if r["type"] == "inner_race" and r["spectrum"])
    status, one = page.get(f"/api/spectrum?alert={fault['id']}")
    assert status == 200 and one["alert_id"] == fault["id"] and one["channel"] == fault["channel"]
    assert page.get("/api/spectrum?alert=0000000000")[0] == 404
    assert page.get("/api/spectrum?alert=../../etc")[0] == 400


def test_envelope_spectrum_is_the_feature_extractors():
    """The plotted line at BPFI is the amplitude the feature extractor measures there: an
    impulse train at BPFI on a carrier, through the same band and envelope."""
    fs, n, rpm = 25600.0, 8192, 1500.0
    spec = replace(FeatureSpec.default(), envelope_band_hz=(2000.0, 4000.0))
    bpfi = spec.orders.bpfi * rpm / 60.0
    t = np.arange(n) / fs
    x = (1 + np.cos(2 * np.pi * bpfi * t)) * np.sin(2 * np.pi * 3000.0 * t) \
        + 0.05 * np.random.default_rng(1).standard_normal(n)
    s = envelope_spectrum(FeatureExtractor(spec), x.astype(np.float32), fs, rpm)
    assert s["band_hz"] == [2000.0, 4000.0]
    amp, hz = np.array(s["amplitude"]), np.array(s["hz"])
    assert abs(hz[amp.argmax()] - bpfi) <= s["df_hz"]  # the strongest line is at BPFI
    bpfi_marker = next(m for m in s["markers"] if m["name"] == "BPFI")
    assert bpfi_marker["amplitude"] == pytest.approx(amp.max(), rel=1e-4)
    assert 0.7 < bpfi_marker["amplitude"] < 1.3  # envelope of (1 + cos) sin: a line of 1 at BPFI


# ---------------------------------------------------------------------------------- acknowledging
def _open_fault(page) -> dict:
    _, alerts = page.get("/api/alerts")
    return next(r for r in alerts["open"] if r["type"] == "inner_race")


def _refusals(page) -> dict:
    return page.get("/api/status")[1]["page"]["ack_refused"]


def test_wrong_or_missing_token_is_refused_with_403_and_counted(page):
    alert = _open_fault(page)
    before = _refusals(page).get("token", 0)
    for payload in ({"alert_id": alert["id"], "by": "Mallory", "verdict": "false_alarm", "token": "guess"},
                    {"alert_id": alert["id"], "by": "Mallory", "verdict": "false_alarm"},
                    {"alert_id": alert["id"], "by": "Mallory", "token": TOKEN + "x"},
                    {"alert_id": alert["id"], "by": "Mallory", "token": None}):
        status, body = page.ack(payload)
        assert status == 403 and body["error"] == "wrong or missing token"
    assert _refusals(page)["token"] == before + 4
    row = next(r for r in AlertLog(page.agent.storage_dir, create=False).list() if r["id"] == alert["id"])
    assert row["ack_by"] != "Mallory"  # nothing recorded


def test_body_limit_content_type_and_methods(page):
    before = _refusals(page)
    status, headers, body = page.request("POST", "/api/ack", b"{" + b" " * MAX_BODY + b"}",
                                         {"Content-Type": "application/json"})
    assert status == 413 and "at most 4096" in json.loads(body)["error"]
    assert page.ack({"token": TOKEN}, content_type="application/x-www-form-urlencoded")[0] == 415
    assert page.ack(b"[1, 2")[0] == 400
    after = _refusals(page)
    for reason in ("oversize", "content_type", "json"):
        assert after.get(reason, 0) == before.get(reason, 0) + 1, reason
    # read-only otherwise: no other method, no other POST, no file from a path
    for method in ("PUT", "DELETE", "PATCH"):
        assert page.request(method, "/api/ack", b"{}")[0] == 405
    assert page.request("POST", "/api/status", b"{}", {"Content-Type": "application/json"})[0] == 404
    for path in ("/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/edge_agent/config.py", "/app.js/.."):
        assert page.request("GET", path)[0] == 404, path
    status, headers, body = page.request("GET", "/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and b"fetch(" in body
    assert b"http://" not in body.replace(b"http://www.w3.org/2000/svg", b"") and b"https://" not in body


def test_ack_with_the_token_goes_to_the_alert_log_and_towards_the_fleet(page):
    alert = _open_fault(page)
    status, body = page.ack({"alert_id": alert["id"][:10], "by": "Ana Souza", "verdict": "confirmed", "token": TOKEN})
    assert status == 200 and body["ack"]["alert_id"] == alert["id"] and body["ack"]["origin"] == "local"
    # the same record `edge-agent alerts ack` makes, read the way the CLI reads it
    log_ = AlertLog(page.agent.storage_dir, create=False)
    row = next(r for r in log_.list() if r["id"] == alert["id"])
    assert (row["ack_by"], row["verdict"], row["ack_origin"]) == ("Ana Souza", "confirmed", "local")
    # the processing thread hands it to the outbox (the ack topic) at its next status interval
    assert _wait(lambda: next(r for r in log_.list() if r["id"] == alert["id"])["ack_published"] == 1, 5)
    assert page.get("/api/status")[1]["page"]["acks"] >= 1
    # bad fields are refused, and unknown alerts are 404
    assert page.ack({"alert_id": alert["id"], "by": "", "token": TOKEN})[0] == 400
    assert page.ack({"alert_id": alert["id"], "by": "Ana", "verdict": "maybe", "token": TOKEN})[0] == 400
    assert page.ack({"alert_id": "abcdef0123", "by": "Ana", "token": TOKEN})[0] == 404


def test_idle_clients_hold_neither_the_agent_nor_the_server_for_long(page):
    """Connections that send nothing take the request slots; one more is closed at once
    (counted), the agent keeps processing, and the page answers again once they go."""
    idle = [socket.create_connection((page.host, page.port), timeout=5) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)
        windows = page.agent.windows_total
        with pytest.raises((OSError, http.client.HTTPException)):
            page.request("GET", "/api/status")
        assert _wait(lambda: page.agent.windows_total > windows + 20, 5), "processing stalled"
    finally:
        for sock in idle:
            sock.close()
    assert _wait(lambda: _answers(page), 5), "the page did not answer again"
    assert page.get("/api/status")[1]["page"]["busy"] >= 1


def _answers(page) -> bool:
    try:
        page.request("GET", "/app.css")
        return True
    except (OSError, http.client.HTTPException):
        return False


def test_an_address_in_use_leaves_the_agent_running_without_its_page(tmp_path, caplog):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = default_config(page={"enabled": True, "listen": f"127.0.0.1:{port}"},
                             storage={"dir": str(tmp_path / "s")}, broker={"enabled": False})
        agent = Agent(cfg)
        agent._start_page()
    assert agent.page is None and agent.page_data is not None
    assert "local page: cannot serve on 127.0.0.1:" in caplog.text


# ---------------------------------------------------------------------------------- config
def test_page_is_off_by_default_and_its_token_file_must_be_private(tmp_path):
    cfg = default_config()
    assert cfg.page.enabled is False and cfg.page.listen == "127.0.0.1:8080"
    assert Agent(replace(cfg, storage=replace(cfg.storage, dir=str(tmp_path / "s")))).page_data is None
    token = tmp_path / "t"
    token.write_text("abc\n")
    token.chmod(0o644)
    with pytest.raises(ConfigError) as exc:
        parse_config(f'[page]\nenabled = true\ntoken_file = "{token}"\nlisten = "localhost"\n')
    problems = "\n".join(exc.value.problems)
    assert "page.token_file" in problems and "mode 0644" in problems and "chmod 600" in problems
    assert "page.listen" in problems and "HOST:PORT" in problems
    token.chmod(0o600)
    token.write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        parse_config(f'[page]\nenabled = true\ntoken_file = "{token}"\n')
    token.write_text("abc\n")
    ok = parse_config(f'[page]\nenabled = true\ntoken_file = "{token}"\nlisten = "[::1]:8081"\n')
    assert ok.page.enabled and ok.page.listen == "[::1]:8081"


# ---------------------------------------------------------------------------------- browser
@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    reason = ("chromium is not installed; install it with `scripts/ensure-system.sh chromium` "
              "(`make test` does)")
    if running_under_ci():
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
           "--window-size=1280,2000", "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "LANG": "C.UTF-8"})


def test_page_renders_in_headless_chromium(page, chromium, tmp_path):
    url = page.agent.page.url
    dom = _chromium(chromium, tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = html.unescape(dom.stdout)
    _, alerts = page.get("/api/alerts")
    fault = next(r for r in alerts["open"] if r["type"] == "inner_race")
    assert fault["explanation"] in text  # the open alert, with its explanation
    assert 'id="spectrum"' in text and 'class="spectrum-line"' in text  # the spectrum's SVG
    for fam in ("bpfo", "bpfi", "bsf", "ftf"):  # and its defect-order markers
        assert f'class="marker marker-{fam}"' in text, fam
    for name in ("BPFO", "BPFI", "BSF", "FTF"):
        assert f'data-name="{name}"' in text, name
    assert "ack-button" in text and 'data-channel="emulator0.accel0"' in text  # ack buttons, trends
    assert ">running<" in text and "Cannot reach the agent" not in text

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "local-page.png"
    shot.unlink(missing_ok=True)
    r = _chromium(chromium, tmp_path / "profile-shot", f"--screenshot={shot}", url)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
