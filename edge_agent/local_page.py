"""The technicians' local page (``[page]``, off by default): a small read-only web page the
agent serves on a configured local address, with no internet needed at the turbine.

What it shows: health (state, uptime, uplink, queues, errors), the model (version, backend,
update state), the data-quality counters, the open alerts with their explanations and an
acknowledge button, per-channel trends of RMS, kurtosis and anomaly score over the last
``trend_windows`` scored windows, and the envelope spectrum of the last alert window with the
bearing's defect orders (BPFO, BPFI, BSF, FTF at that window's shaft speed) marked.

Threads. The processing thread publishes into a :class:`PageData` and never waits for a
browser: the status snapshot is swapped whole (the agent's ``snapshot()``, taken when the
status file is written), trend rows are appended to bounded rings and spectra are computed
when an alert is raised, each under a short lock; the server's threads copy under the same
lock. The server is the stdlib ``ThreadingHTTPServer`` on its own daemon thread
(``local-page``), at most ``MAX_CONNECTIONS`` requests at once (more are closed, counted),
each with a socket timeout, so a slow or hostile client holds one thread for a while, never
the agent.

Security: it binds only to ``[page] listen``; every GET is read-only; the one write is
``POST /api/ack`` (JSON, at most ``MAX_BODY`` bytes), which needs the local token (the first
line of ``[page] token_file``, mode 0600, compared with ``hmac.compare_digest``) and then
does exactly what ``edge-agent alerts ack ID --by NAME --verdict V`` does: an acknowledgement
in the local alert log (origin ``local``), which the processing thread hands to the outbox
(``ack`` topic) so the fleet learns it when the link is up. Refusals (403 token, 413 size,
...) are counted by reason. Static files come from an in-module dict (local_page_assets.py);
no path from a request opens a file. Responses carry ``Content-Security-Policy: default-src
'self'``, ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, ``Referrer-Policy:
no-referrer`` and ``Cache-Control: no-store``.

Endpoints: ``/`` (the page, /app.js, /app.css), ``/api/status``, ``/api/alerts``,
``/api/trends``, ``/api/spectrum`` (``?alert=ID`` for one alert's, else the latest) and
``POST /api/ack`` (``{"alert_id", "by", "verdict", "token"}``).
"""
from __future__ import annotations

import hmac
import json
import logging
import math
import re
import socket
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from edge_agent.alert_log import VERDICTS, AlertLog, AlertLogError
from edge_agent.config import parse_listen
from edge_agent.features import ENVELOPE_FAMILIES, FeatureExtractor, FeatureSpec
from edge_agent.local_page_assets import ASSETS

log = logging.getLogger(__name__)

MAX_BODY = 4096  # bytes of a POST body
MAX_CONNECTIONS = 16  # requests served at once; more are closed and counted
REQUEST_TIMEOUT_S = 10.0  # socket timeout of one connection
SPECTRA_KEPT = 16  # spectra of the last alerts kept (one per alert)
SPECTRUM_POINTS = 1200  # at most this many points per spectrum (max over groups of bins)
MAX_TREND_CHANNELS = 64
HARMONICS = (1, 2, 3)
STALE_AFTER_S = 30.0  # a status older than this (plus the status interval) is shown as stale
_ALERT_ID = re.compile(r"[0-9a-f]{6,32}")
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _num(v: Any, digits: int = 6) -> float | None:
    """A float for JSON (NaN/Inf are not JSON: None), rounded to ``digits`` significant digits."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


# ---------------------------------------------------------------------------------- spectrum
def envelope_spectrum(extractor: FeatureExtractor, samples: np.ndarray, fs: float, rpm: float) -> dict | None:
    """The envelope spectrum of one window exactly as ``extractor`` computes it for its
    features (``FeatureExtractor.envelope_spectrum``: the band, fixed or chosen by spectral
    kurtosis, shifted to baseband, its magnitude, FFT; amplitude in g), with the defect
    orders' markers, thinned to at most SPECTRUM_POINTS points keeping peaks, for the page.
    Bins of fs / n Hz, up to a bit beyond the third harmonic of the highest defect order
    when the band allows. None when the band is empty. Call it from the thread that owns
    ``extractor``."""
    spec = extractor.spec
    x = np.asarray(samples, dtype=np.float64)
    n = len(x)
    if n < 64 or not fs > 0 or not rpm > 0:
        return None
    shaft_hz = rpm / 60.0
    got = extractor.envelope_spectrum(x, fs, shaft_hz)
    if got is None:
        return None
    amp, df, band = got
    o = spec.orders
    top = max(o.bpfo, o.bpfi, 2 * o.bsf, o.ftf) * max(HARMONICS) * shaft_hz * 1.1
    hz_max = min(top, (len(amp) - 1) * df)
    last = int(hz_max / df) + 1
    amp = amp[:last]
    markers = []
    for fam in ENVELOPE_FAMILIES:
        order = getattr(o, fam)
        for k in HARMONICS:
            hz = k * order * shaft_hz
            if hz > hz_max:
                continue
            lo = max(0, int(math.floor(hz * (1 - spec.order_tolerance) / df)))
            hi = min(len(amp) - 1, int(math.ceil(hz * (1 + spec.order_tolerance) / df)))
            markers.append({"family": fam, "name": (f"{k}×" if k > 1 else "") + fam.upper(), "harmonic": k,
                            "order": _num(k * order), "hz": _num(hz), "amplitude": _num(amp[lo:hi + 1].max())})
    step = max(1, math.ceil(len(amp) / SPECTRUM_POINTS))
    if step > 1:  # keep peaks: the largest bin of each group, at its own frequency
        groups = len(amp) // step
        blocks = amp[: groups * step].reshape(groups, step)
        idx = blocks.argmax(axis=1) + np.arange(groups) * step
    else:
        idx = np.arange(len(amp))
    return {
        "fs": _num(fs), "rpm": _num(rpm), "shaft_hz": _num(shaft_hz), "n": n, "df_hz": _num(df),
        "band_hz": [_num(band[0]), _num(band[1])], "hz_max": _num(hz_max),
        "hz": [round(float(i * df), 3) for i in idx], "amplitude": [_num(a, 5) for a in amp[idx]],
        "markers": markers,
    }


# ---------------------------------------------------------------------------------- shared data
class PageData:
    """What the processing thread publishes for the page (see the module docstring). The
    processing thread calls ``publish_status``, ``observe`` and ``capture_spectrum``; the
    server's threads read copies with ``status``, ``trends``, ``spectrum``."""

    def __init__(self, trend_windows: int) -> None:
        self.trend_windows = trend_windows
        self._lock = threading.Lock()
        self._status: dict | None = None
        self._trends: dict[str, deque] = {}
        self._spectra: OrderedDict[str, dict] = OrderedDict()
        self._extractor: FeatureExtractor | None = None  # processing thread only
        self.errors = 0  # failures of observe / capture (counted, never raised)

    # -- processing thread --------------------------------------------------------------------
    def publish_status(self, snapshot: dict) -> None:
        """The agent's status snapshot (a fresh dict; not changed after this)."""
        with self._lock:
            self._status = snapshot

    def observe(self, windows: Sequence[Any], feats: np.ndarray, preds: Sequence[Any], names: Sequence[str]) -> None:
        """One trend row per scored window: RMS, kurtosis (from its feature vector), the
        model's anomaly score and label."""
        try:
            i_rms, i_kurt = list(names).index("rms"), list(names).index("kurtosis")
            now = round(time.time(), 3)
            rows = [(w.channel, (now, _num(f[i_rms]), _num(f[i_kurt]), _num(p.anomaly_score), str(p.label)))
                    for w, f, p in zip(windows, feats, preds)]
            with self._lock:
                for channel, row in rows:
                    ring = self._trends.get(channel)
                    if ring is None:
                        if len(self._trends) >= MAX_TREND_CHANNELS:
                            continue
                        ring = self._trends[channel] = deque(maxlen=self.trend_windows)
                    ring.append(row)
        except Exception:  # noqa: BLE001 - the page must never stop scoring
            self.errors += 1
            log.exception("local page: trend update failed (counted)")

    def capture_spectrum(self, msg: dict, window: Any, spec: FeatureSpec) -> None:
        """The envelope spectrum of the window that raised alert ``msg`` (kept: the last
        SPECTRA_KEPT alerts')."""
        try:
            if self._extractor is None or self._extractor.spec != spec:
                self._extractor = FeatureExtractor(spec)  # own buffers, the agent's spec
            result = envelope_spectrum(self._extractor, window.samples, float(window.fs), float(window.rpm))
            if result is None:
                return
            result.update({"alert_id": msg.get("id"), "type": msg.get("type"), "channel": msg.get("channel"),
                           "severity": msg.get("severity"), "time": msg.get("time", time.time()),
                           "window_t_start_us": window.t_start_us})
            with self._lock:
                self._spectra[str(msg.get("id"))] = result
                self._spectra.move_to_end(str(msg.get("id")))
                while len(self._spectra) > SPECTRA_KEPT:
                    self._spectra.popitem(last=False)
        except Exception:  # noqa: BLE001 - the page must never stop the alert
            self.errors += 1
            log.exception("local page: envelope spectrum of alert %s failed (counted)", msg.get("id"))

    # -- server threads -------------------------------------------------------------------------
    def status(self) -> dict | None:
        with self._lock:
            return self._status

    def trends(self) -> dict:
        with self._lock:
            rows = {ch: list(ring) for ch, ring in self._trends.items()}
        out = {}
        for ch, items in rows.items():
            cols = list(zip(*items)) if items else [(), (), (), (), ()]
            out[ch] = {"t": list(cols[0]), "rms": list(cols[1]), "kurtosis": list(cols[2]),
                       "anomaly_score": list(cols[3]), "label": list(cols[4])}
        return {"max_windows": self.trend_windows, "channels": out}

    def spectrum(self, alert_id: str | None = None) -> dict | None:
        """The spectrum of alert ``alert_id`` (or the one it starts with), else the latest."""
        with self._lock:
            if alert_id is None:
                return next(reversed(self._spectra.values()), None)
            for key, value in self._spectra.items():
                if key.startswith(alert_id):
                    return value
        return None

    def spectrum_ids(self) -> set[str]:
        with self._lock:
            return set(self._spectra)


# ---------------------------------------------------------------------------------- server
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    page: LocalPage

    def server_bind(self) -> None:  # TCPServer's, without HTTPServer's getfqdn() (a DNS lookup)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        host, port = self.socket.getsockname()[:2]
        self.server_name, self.server_port = str(host), port

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        if not self.page.slots.acquire(blocking=False):
            self.page.count("busy")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.page.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.page.slots.release()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Refused(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "edge-agent"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S
    protocol_version = "HTTP/1.0"  # one request per connection

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("local page %s: " + format, self.client_address[0], *args)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, allow_nan=False, default=str).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def do_GET(self) -> None:
        page = self.server.page
        page.count("requests")
        try:
            url = urlsplit(self.path)
            if url.path in ASSETS:
                ctype, body = ASSETS[url.path]
                self._send(200, body, ctype)
            elif url.path == "/api/status":
                self._json(200, page.status())
            elif url.path == "/api/alerts":
                self._json(*page.alerts())
            elif url.path == "/api/trends":
                self._json(200, page.data.trends())
            elif url.path == "/api/spectrum":
                alert = parse_qs(url.query).get("alert", [None])[0]
                if alert is not None and not _ALERT_ID.fullmatch(alert):
                    self._error(400, "alert must be 6 to 32 lower-case hex digits")
                    return
                spectrum = page.data.spectrum(alert)
                if spectrum is None:
                    self._error(404, "no envelope spectrum: no alert raised since the agent started"
                                if alert is None else f"no envelope spectrum kept for alert {alert}")
                else:
                    self._json(200, spectrum)
            else:
                page.count("not_found")
                self._error(404, "not found")
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            page.count("client_gone")
        except Exception:  # noqa: BLE001 - a bug answers 500, never a traceback to the client
            page.count("errors")
            log.exception("local page: GET %s failed (counted)", self.path[:200])
            self._try_error(500, "internal error (logged)")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        page = self.server.page
        page.count("requests")
        try:
            if urlsplit(self.path).path != "/api/ack":
                page.count("not_found")
                self._error(404, "not found (the only POST is /api/ack)")
                return
            try:
                done = page.ack(self._body())
            except _Refused as exc:
                page.refused(exc.reason)
                log.warning("local page: acknowledgement from %s refused (%s): %s",
                            self.client_address[0], exc.reason, exc)
                self._error(exc.status, str(exc))
                return
            self._json(200, {"ok": True, "ack": done,
                             "note": "recorded in the local alert log; the fleet gets it when the link is up"})
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            page.count("client_gone")
        except Exception:  # noqa: BLE001
            page.count("errors")
            log.exception("local page: POST %s failed (counted)", self.path[:200])
            self._try_error(500, "internal error (logged)")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise _Refused(411, "length", "send the body with a Content-Length, not chunked")
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            raise _Refused(411, "length", "Content-Length required")
        if int(length) > MAX_BODY:
            self.close_connection = True  # the body is not read
            raise _Refused(413, "oversize", f"body of {int(length)} bytes; at most {MAX_BODY}")
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        body = self.rfile.read(int(length))
        if ctype != "application/json":
            raise _Refused(415, "content_type", "Content-Type must be application/json")
        return body

    def _method_not_allowed(self) -> None:
        self.server.page.count("requests")
        self.server.page.count("method_not_allowed")
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD, POST")
        self.send_header("Content-Length", "0")
        for k, v in HEADERS.items():
            self.send_header(k, v)
        self.end_headers()

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed

    def _try_error(self, status: int, message: str) -> None:
        try:
            self._error(status, message)
        except OSError:
            pass


class LocalPage:
    """The page's HTTP server for one agent: ``start()`` binds ``[page] listen`` (raises
    OSError when it cannot) and serves on a daemon thread; ``stop()`` ends it."""

    def __init__(self, cfg: Any, data: PageData, storage_dir: str | Path, status_interval_s: float = 5.0) -> None:
        listen = parse_listen(cfg.listen)
        if listen is None:
            raise ValueError(f"page.listen: not HOST:PORT: {cfg.listen!r}")
        self.host, self.port = listen
        self.token_file = cfg.token_file
        self.data = data
        self.storage_dir = Path(storage_dir)
        self.stale_after_s = STALE_AFTER_S + status_interval_s
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._counts: Counter[str] = Counter()
        self._refusals: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        self._log: AlertLog | None = None
        self._log_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        cls = _Server6 if ":" in self.host else _Server
        server = cls((self.host, self.port), _Handler, bind_and_activate=False)
        server.page = self
        try:
            server.server_bind()
            server.server_activate()
        except OSError:
            server.server_close()
            raise
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="local-page", daemon=True)
        self._thread.start()
        log.info("local page on http://%s/ (acknowledgements %s)", self.address_text,
                 "with the token in " + self.token_file if self.token_file else "off: no [page] token_file")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        with self._log_lock:
            if self._log is not None:
                self._log.close()
                self._log = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) bound (the real port when ``listen`` asked for port 0)."""
        if self._server is None:
            return self.host, self.port
        return self._server.server_name, self._server.server_port

    @property
    def address_text(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.address_text}/"

    # -- counters -------------------------------------------------------------------------------
    def count(self, what: str) -> None:
        with self._count_lock:
            self._counts[what] += 1

    def refused(self, reason: str) -> None:
        with self._count_lock:
            self._refusals[reason] += 1

    def counters(self) -> dict:
        with self._count_lock:
            return {"address": self.address_text, **dict(self._counts), "ack_refused": dict(self._refusals),
                    "data_errors": self.data.errors}

    # -- what the endpoints say -----------------------------------------------------------------
    def status(self) -> dict:
        """Health, model and data quality from the last snapshot the processing thread
        published (with ``stale`` when it is older than it should be)."""
        snap = self.data.status()
        now = time.time()
        if snap is None:
            return {"schema": 1, "health": None, "model": None, "data_quality": None, "page": self.counters()}
        broker, queues, c = snap.get("broker") or {}, snap.get("queues") or {}, snap.get("counters") or {}
        age = max(0.0, now - snap.get("time", now))
        updates = snap.get("updates") or {}
        health = {
            "state": snap.get("state"), "stale": age > self.stale_after_s, "as_of": snap.get("time"),
            "uptime_s": round(snap.get("uptime_s", 0.0) + (age if snap.get("state") == "running" else 0.0), 1),
            "device": snap.get("device"), "agent_version": snap.get("agent_version"),
            "uplink": {k: broker.get(k) for k in ("enabled", "connected", "address", "connects", "disconnects",
                                                   "published", "last_error", "next_attempt_in_s")},
            "queues": {"samples": queues.get("samples", {}),
                       "outbox": {k: (queues.get("outbox") or {}).get(k) for k in ("depth", "bytes", "evicted")}},
            "windows": c.get("windows"), "windows_scored": c.get("windows_scored"),
            "open_alerts": c.get("open_alerts"), "alerts_raised": c.get("alerts_raised"),
            "errors": {"processing": c.get("processing_errors", 0), "bad_blocks": sum((c.get("bad_blocks") or {}).values()),
                       "sources": sum((c.get("source_errors") or {}).values()),
                       "samples_dropped": (queues.get("samples") or {}).get("dropped", 0)},
        }
        model = {"version": snap.get("model"), "backend": snap.get("backend"),
                 "update": updates.get("state", "disabled") if snap.get("updates") is not None else "disabled",
                 "update_reason": updates.get("reason"), "update_pack": updates.get("pack_version")}
        return {"schema": 1, "health": health, "model": model, "data_quality": snap.get("data_quality"),
                "page": self.counters()}

    def _alert_log(self) -> AlertLog:
        """The page's own connection to the alert log (like the CLI's); under _log_lock."""
        if self._log is None:
            self._log = AlertLog(self.storage_dir)
        return self._log

    def alerts(self) -> tuple[int, dict]:
        try:
            with self._log_lock:
                log_ = self._alert_log()
                open_ = log_.list(open_only=True, limit=100)
                recent = log_.list(limit=20)
        except AlertLogError as exc:
            return 503, {"error": f"local alert log unavailable: {exc}"}
        have = self.data.spectrum_ids()
        for row in open_ + recent:
            row["spectrum"] = row["id"] in have
        return 200, {"ack_enabled": bool(self.token_file), "open": open_, "recent": recent}

    def _token(self) -> bytes | None:
        """The local token (the file is read at each acknowledgement, so it can be changed
        without a restart); None when there is none."""
        if not self.token_file:
            return None
        try:
            token = Path(self.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            log.error("local page: cannot read the token file %s: %s", self.token_file, exc)
            return None
        return token.encode() if token else None

    def ack(self, body: bytes) -> dict:
        """Check and record an acknowledgement (see the module docstring); raise _Refused."""
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _Refused(400, "json", "body must be a JSON object") from None
        if not isinstance(req, dict):
            raise _Refused(400, "json", "body must be a JSON object")
        expected = self._token()
        if expected is None:
            raise _Refused(403, "disabled", "acknowledging on this page is off (no usable [page] token_file)")
        given = req.get("token")
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), expected):
            raise _Refused(403, "token", "wrong or missing token")
        alert_id, by, verdict = req.get("alert_id"), req.get("by"), req.get("verdict")
        if not isinstance(alert_id, str) or not _ALERT_ID.fullmatch(alert_id):
            raise _Refused(400, "field", "alert_id must be 6 to 32 lower-case hex digits")
        if not isinstance(by, str):
            raise _Refused(400, "field", "by must be a name of 1 to 100 printable characters")
        if verdict == "":
            verdict = None
        if verdict is not None and verdict not in VERDICTS:
            raise _Refused(400, "field", f"verdict must be one of {', '.join(VERDICTS)} or null")
        try:
            with self._log_lock:
                done = self._alert_log().ack(alert_id, by, verdict, origin="local")
        except AlertLogError as exc:
            reason = "unknown_alert" if "no alert" in str(exc) or "ambiguous" in str(exc) else "field"
            raise _Refused(404 if reason == "unknown_alert" else 400, reason, str(exc)) from None
        self.count("acks")
        log.info("alert %s acknowledged on the local page by %s (%s)", done["alert_id"], done["by"],
                 done["verdict"] or "no verdict")
        return done
