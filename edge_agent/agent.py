"""The agent: builds the stages from one validated Config and runs them on their threads.

Threads and what they own (docs/ARCHITECTURE.md has the picture):

* ``source:NAME`` (one per source) — reads its device, decodes, offers SampleBlocks to
  the ``samples`` queue (never blocks: a full queue is counted as a drop), except a
  source that can wait (replay: ``wants_waiting_emit``), which waits for room instead;
* ``processing`` — owns the windower, the data-quality checks (quality.py), feature
  extractor, model and alert rules; commits alerts and summaries to the outbox and
  rewrites the status file;
* ``publisher`` — owns the MQTT client; drains the outbox (see publisher.py).

Any exception while processing a batch is counted and logged, and the loop goes on: bad
input never stops the agent.

Data quality (``[quality]``): every window is checked before scoring and carries its
flags. ``action = "flag"``: a flagged window is scored and its flags travel with its
prediction (:class:`WindowResult`), but it raises no anomaly alert and does not count in
the alert rules' history; ``action = "drop"``: it is not scored. In both modes a window
with NaN/Inf, and a flagged window of a channel whose baseline is still being learnt, are
never given to the model (the first cannot be scored, the second would be learnt as
normal). ``alert_after`` flagged windows in a row raise one ``data_quality`` alert.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent import __version__
from edge_agent.alerts import AlertRules
from edge_agent.baseline import BaselineModel, Prediction
from edge_agent.bounded_queue import BoundedQueue
from edge_agent.alert_log import EVIDENCE_WINDOWS, AlertLog, AlertLogError, Evidence
from edge_agent.drift_monitor import DriftMonitor
from edge_agent.errors import StartupError
from edge_agent.features import FeatureExtractor, FeatureSpec
from edge_agent.interpreter import NoInterpreterBackend, load_backend
from edge_agent.outbox import Outbox
from edge_agent.pack import PackError
from edge_agent.pack_scorer import PackAlertRules, PackScorer
from edge_agent.quality import PersistentProblems, QualityCounts, QualityLimits, check_windows
from edge_agent.sources import make_source
from edge_agent.status_file import write_status
from edge_agent.topics import Topics
from edge_agent.window import SampleBlock, Window
from edge_agent.windower import Windower

log = logging.getLogger(__name__)
SUMMARY_SCHEMA = 1
BATCH_BLOCKS = 64  # blocks taken per processing round, so windows are batched per invoke
QUALITY_LOG_EVERY_S = 10.0
# Source counters that describe the stream's quality (FrameAssembler's), for data_quality.
STREAM_COUNTERS = ("seq_gaps", "frames_missing", "duplicates", "timestamp_jumps", "rate_mismatches")


@dataclass(frozen=True, slots=True)
class WindowResult:
    """What became of one window: its prediction (None when not scored: see the module
    docstring) and the alert messages it caused. ``window.flags`` are its quality flags."""

    window: Window
    prediction: Prediction | None
    alerts: tuple[dict, ...] = ()



def _publisher():
    """The Publisher class, imported when a broker is configured: paho-mqtt costs ~30 ms
    of start-up that ``edge-agent replay`` (no broker) need not pay."""
    from edge_agent.publisher import Publisher

    return Publisher

class Agent:
    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.storage_dir = _prepare_storage(Path(cfg.storage.dir))
        self.topics = Topics(cfg.broker.topic_prefix, cfg.device.site, cfg.device.id)
        try:
            self.backend = load_backend(cfg.model.backend).describe()
        except (NoInterpreterBackend, ValueError) as exc:
            log.warning("%s", exc)
            self.backend = "none"
        self.samples: BoundedQueue[SampleBlock] = BoundedQueue("samples", cfg.queues.samples)
        self.outbox = Outbox(self.storage_dir, int(cfg.storage.outbox_max_mb * 1024 * 1024))
        self.sources = [make_source(s) for s in cfg.sources]
        scorer = None
        if cfg.model.pack:
            try:
                scorer = PackScorer(cfg.model.pack, cfg)
            except PackError as exc:
                raise StartupError(f"model.pack: {exc}") from None
        if scorer is not None:
            self.windower = Windower(scorer.window_length, scorer.hop, cfg.shaft.rpm, scorer.window_reference_fs)
        else:
            self.windower = Windower(cfg.window.length, cfg.window.hop, cfg.shaft.rpm)
        self.quality_action = cfg.quality.action
        self.quality_limits = QualityLimits.from_config(cfg.quality)
        self.quality = QualityCounts()
        self._full_scale: dict[str, float] = {}  # channel -> the last full scale its blocks gave
        self._quality_logged: dict[str, float] = {}
        self.model: BaselineModel | PackScorer
        self.rules: AlertRules | PackAlertRules
        if scorer is not None:
            self._use_pack(scorer)
        else:
            self.extractor = FeatureExtractor(FeatureSpec.from_config(cfg))
            self.model = BaselineModel(cfg.model.baseline_windows, cfg.alerts.anomaly_threshold)
            self.rules = AlertRules(
                raise_after=cfg.alerts.raise_after,
                raise_window=cfg.alerts.raise_window,
                clear_after=cfg.alerts.clear_after,
                threshold=cfg.alerts.anomaly_threshold,
                model_version=self.model.version,
            )
        self.drift = DriftMonitor.for_model(cfg, self.model, self.extractor)
        self._last_windows: dict[str, deque] = {}  # channel -> its last windows (alert evidence)
        self.alert_log_errors = 0
        try:
            self.alert_log: AlertLog | None = AlertLog(self.storage_dir)
        except AlertLogError as exc:
            log.error("local alert log unavailable, alerts are still published: %s", exc)
            self.alert_log = None
        self.quality_problems = PersistentProblems(
            cfg.quality.alert_after, cfg.quality.clear_after, self.model.version, cfg.quality.action
        )
        self.publisher = (
            _publisher()(cfg.broker, self.topics, self.outbox, self._birth, qos=cfg.publish.qos) if cfg.broker.enabled else None
        )
        self.started = time.time()
        self.labels: Counter[str] = Counter()
        self.alerts_raised = 0
        self.alerts_by_type: Counter[str] = Counter()
        self.alerts_cleared = 0
        self.processing_errors = 0
        self.drift_errors = 0
        self.bad_blocks: Counter[str] = Counter()
        self.source_errors: Counter[str] = Counter()
        self.windows_total = 0
        self.windows_scored = 0
        self.feature_seconds = 0.0
        self._summary_labels: Counter[str] = Counter()
        self._threads: list[threading.Thread] = []
        self._sources_running = len(self.sources)
        self._sources_lock = threading.Lock()
        self.sources_done = threading.Event()  # every source's run() has returned (replay ends)
        if not self.sources:
            self.sources_done.set()

    # -- the model ------------------------------------------------------------------------------
    def _use_pack(self, scorer: PackScorer) -> None:
        self.extractor = scorer.extractor
        self.model = scorer
        self.rules = scorer.rules(self.cfg)

    def load_pack(self, path: str) -> str | None:
        """Switch to the model pack at ``path``; return None when done, else the reason it
        was refused (logged), in which case the current model keeps running. Call it from
        the processing thread (or while the agent is not running): the stage is swapped
        between batches. Open alerts of the old model are dropped with its rules; a pack with
        another window length or hop gets a fresh windower (the partial windows are lost)."""
        try:
            scorer = PackScorer(path, self.cfg)
        except PackError as exc:
            log.error("model pack refused, keeping %s: %s", self.model.version, exc)
            return str(exc)
        if ((scorer.window_length, scorer.hop, scorer.window_reference_fs)
                != (self.windower.length, self.windower.hop, self.windower.reference_fs)):
            self.windower = Windower(scorer.window_length, scorer.hop, self.cfg.shaft.rpm, scorer.window_reference_fs)
        self._use_pack(scorer)
        self.drift = DriftMonitor.for_model(self.cfg, scorer, self.extractor)  # a new interval, new reference
        self.quality_problems.model_version = scorer.version
        log.info("model pack %s loaded: %s on %s", path, scorer.version, scorer.backend)
        return None

    # -- life cycle -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Run every stage until ``stop`` is set; then drain and return."""
        log.info(
            "edge-agent %s starting: device %s, %d source(s), model %s, interpreter backend %s",
            __version__, self.topics.base, len(self.sources), self.model.version, self.backend,
        )
        pub_stop = threading.Event()
        for src in self.sources:
            self._start(f"source:{src.name}", self._run_source, src, stop)
        if self.publisher is not None:
            self._start("publisher", self.publisher.run, pub_stop)
        try:
            self._process(stop)
        finally:
            for t in self._threads:
                if t.name.startswith("source:"):
                    t.join(timeout=2.0)
            pub_stop.set()
            for t in self._threads:
                t.join(timeout=3.0)
            self._write_status(state="stopped")
            log.info("edge-agent stopped: %d windows, %d alerts raised", self.windows_total, self.alerts_raised)

    def _start(self, name: str, target, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _run_source(self, src, stop: threading.Event) -> None:
        if getattr(src, "wants_waiting_emit", False):
            def emit(block: SampleBlock) -> bool:
                return self.samples.put_until(block, stop)
        else:
            emit = self.samples.offer
        try:
            src.run(emit, stop)
        except Exception:
            self.source_errors[src.name] += 1
            log.exception("source %s failed; it is stopped, the agent goes on", src.name)
        finally:
            with self._sources_lock:
                self._sources_running -= 1
                if self._sources_running <= 0:
                    self.sources_done.set()

    # -- the processing thread --------------------------------------------------------------
    def _process(self, stop: threading.Event) -> None:
        next_summary = time.monotonic() + self.cfg.publish.summary_interval_s
        next_status = time.monotonic()
        while not stop.is_set():
            first = self.samples.get(timeout=0.1)
            if first is not None:
                blocks = [first, *self.samples.drain(BATCH_BLOCKS - 1)]
                try:
                    self.process_blocks(blocks)
                except Exception:
                    self.processing_errors += 1
                    log.exception("processing a batch of %d blocks failed; skipped", len(blocks))
            now = time.monotonic()
            if now >= next_summary:
                next_summary = now + self.cfg.publish.summary_interval_s
                self.outbox.commit("summary", self.summary())
            if now >= next_status:
                next_status = now + self.cfg.publish.status_interval_s
                self._write_status(state="running")
                self.pump_acks()

    def process_blocks(self, blocks: list[SampleBlock]) -> list[WindowResult]:
        """Window, check, featurise, score and apply alert rules to a batch of blocks."""
        windows: list[Window] = []
        for b in blocks:
            try:
                windows.extend(self.windower.push(b))
            except ValueError as exc:
                self.bad_blocks[b.channel] += 1
                log.warning("bad sample block dropped: %s", exc)
                continue
            if b.full_scale is not None:
                self._full_scale[b.channel] = b.full_scale
        if not windows:
            return []
        windows, details = self._check_quality(windows)
        scored = [i for i, w in enumerate(windows) if self._scorable(w)]
        preds: list[Prediction | None] = [None] * len(windows)
        drift_msgs: list[dict] = []
        if scored:
            t = time.perf_counter()
            feats = self.extractor.extract([windows[i] for i in scored])
            self.feature_seconds += time.perf_counter() - t
            batch_preds = self.model.predict(feats, [windows[i].channel for i in scored])
            latency = time.perf_counter() - t
            for i, p in zip(scored, batch_preds):
                preds[i] = p
            drift_msgs = self._observe_drift(windows, scored, feats, batch_preds, latency)
        results: list[WindowResult] = []
        for w, p, detail in zip(windows, preds, details):
            self._last_windows.setdefault(w.channel, deque(maxlen=EVIDENCE_WINDOWS)).append(w)
            if w.flags:
                self._log_quality(w, detail, scored=p is not None)
            self.quality.record(w.channel, w.flags, scored=p is not None)
            messages = self.quality_problems.update(w.channel, w.flags, w.t_start_us, w.rpm, detail)
            if p is not None:
                self.labels[p.label] += 1
                self._summary_labels[p.label] += 1
                if not w.flags:  # a flagged window never raises (nor clears) an anomaly alert
                    messages += self.rules.update(w, p)
            for msg in messages:
                self._commit_alert(msg)
            results.append(WindowResult(w, p, tuple(messages)))
        for msg in drift_msgs:
            self._commit_alert(msg)
        if drift_msgs:  # the score detectors' alarms: with the batch's last window
            last = results[-1]
            results[-1] = WindowResult(last.window, last.prediction, last.alerts + tuple(drift_msgs))
        self.windows_total += len(windows)
        self.windows_scored += len(scored)
        return results

    def _observe_drift(self, windows, scored, feats, preds, latency: float) -> list[dict]:
        """Feed the drift monitor the scored windows without quality flags (and that are not
        the baseline scorer's learning windows); return the score detectors' alarms."""
        rows = [j for j, i in enumerate(scored) if not windows[i].flags and preds[j].label != "learning"]
        if not rows:
            return []
        sel = self.model.select(feats[rows]) if isinstance(self.model, PackScorer) else feats[rows]
        chans = [windows[scored[j]].channel for j in rows]
        rpm = np.array([windows[scored[j]].rpm for j in rows], dtype=np.float64)
        anomaly = np.array([preds[j].anomaly_score for j in rows], dtype=np.float64)
        confidence = np.array([max(preds[j].scores.values()) if preds[j].scores else np.nan for j in rows])
        try:
            return self.drift.observe(chans, rpm, sel, anomaly, confidence, latency)
        except Exception:  # noqa: BLE001 - monitoring must never stop scoring
            self.drift_errors += 1
            log.exception("drift monitor failed on a batch (counted; scoring goes on)")
            return []

    def pump_acks(self) -> int:
        """Hand the technicians' acknowledgements (``edge-agent alerts ack``, another process)
        to the outbox, which publishes them on the ``ack`` topic when the link is up."""
        if self.alert_log is None:
            return 0
        try:
            acks = self.alert_log.unpublished_acks()
            # marked only once on disk in the outbox (commit returns None while a write
            # error holds it in memory: the next pump tries again)
            done = [a["alert_id"] for a in acks if self.outbox.commit("ack", a) is not None]
            self.alert_log.mark_published(done)
            return len(done)
        except Exception:  # noqa: BLE001 - the log is for technicians; scoring goes on
            self.alert_log_errors += 1
            log.exception("reading acknowledgements from the local alert log failed (counted)")
            return 0

    def _log_alert(self, msg: dict) -> None:
        """Keep the alert, and for a raised one the evidence (its channel's last windows), in
        the local alert log."""
        if self.alert_log is None:
            return
        ev = [Evidence(w.samples, w.fs, w.rpm, w.t_start_us) for w in self._last_windows.get(msg.get("channel"), ())] \
            if msg.get("state") == "open" else []
        try:
            self.alert_log.record(msg, ev)
        except Exception:  # noqa: BLE001 - the outbox has it; the local copy failing is counted
            self.alert_log_errors += 1
            log.exception("writing alert %s to the local alert log failed (counted; it is still published)", msg.get("id"))

    def _commit_alert(self, msg: dict) -> None:
        self._log_alert(msg)
        if msg["state"] == "open":
            self.alerts_raised += 1
            self.alerts_by_type[msg["type"]] += 1
            log.warning("ALERT %s %s on %s: %s", msg["severity"], msg["type"], msg["channel"], msg["explanation"])
        else:
            self.alerts_cleared += 1
            log.info("alert %s (%s) on %s cleared", msg["id"], msg["type"], msg["channel"])
        self.outbox.commit("alert", msg)

    def _check_quality(self, windows: list[Window]) -> tuple[list[Window], list[str]]:
        """The windows with their quality flags set, and what is wrong with each ('' if
        nothing). One compiled check per length (the windower's is fixed), reading each
        window's samples in place (no stacking copy)."""
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            by_length.setdefault(len(w.samples), []).append(i)
        out, details = list(windows), [""] * len(windows)
        for idx in by_length.values():
            group = [windows[i] for i in idx]
            report = check_windows(
                [w.samples for w in group],
                np.array([w.fs for w in group]),
                np.array([self._full_scale.get(w.channel, np.nan) for w in group]),
                self.quality_limits,
            )
            for j, i in enumerate(idx):
                flags = report.flags[j] | windows[i].flags
                if flags:
                    out[i] = replace(windows[i], flags=flags)
                    details[i] = report.describe(j)
        return out, details

    def _scorable(self, w: Window) -> bool:
        if not w.flags:
            return True
        if self.quality_action == "drop" or "nonfinite" in w.flags:
            return False
        is_learning = getattr(self.model, "is_learning", None)
        return not (is_learning is not None and is_learning(w.channel))

    def _log_quality(self, w: Window, detail: str, scored: bool) -> None:
        key = f"{w.channel}:{','.join(sorted(w.flags))}"
        now = time.monotonic()
        if now - self._quality_logged.get(key, -QUALITY_LOG_EVERY_S) >= QUALITY_LOG_EVERY_S:
            self._quality_logged[key] = now
            what = "scored, no anomaly alert from it" if scored else "not scored"
            log.warning("data quality: window on %s flagged %s (%s); %s. %d flagged windows on %s so far "
                        "(logged at most every %g s)", w.channel, ", ".join(sorted(w.flags)), detail, what,
                        self.quality.flagged[w.channel] + 1, w.channel, QUALITY_LOG_EVERY_S)

    # -- reporting --------------------------------------------------------------------------
    def _birth(self) -> dict:
        return {
            "schema": 1,
            "state": "online",
            "time": time.time(),
            "agent_version": __version__,
            "model": self.model.version,
            "backend": self.backend,
            "host": socket.gethostname(),
        }

    def summary(self) -> dict:
        labels = dict(self._summary_labels)
        self._summary_labels.clear()
        drift_part, drift_msgs = self.drift.summarize()
        for msg in drift_msgs:
            self._commit_alert(msg)
        return {
            "schema": SUMMARY_SCHEMA,
            "time": time.time(),
            "interval_s": self.cfg.publish.summary_interval_s,
            "site": self.cfg.device.site,
            "device": self.cfg.device.id,
            "agent_version": __version__,
            "model_version": self.model.version,
            "windows_per_label": labels,
            **drift_part,
            "data_quality": self.data_quality(),
            "dropped": {"samples_queue": self.samples.dropped},
            "evicted": dict(self.outbox.evicted),
            "errors": {
                "processing": self.processing_errors,
                "drift_monitor": self.drift_errors,
                "alert_log": self.alert_log_errors,
                "bad_blocks": dict(self.bad_blocks),
                "sources": dict(self.source_errors),
            },
        }

    def data_quality(self) -> dict:
        """Data-quality counters, cumulative since start (per channel unless said)."""
        return {
            "action": self.quality_action,
            **self.quality.as_dict(),
            "gaps": dict(self.windower.gaps),
            "discarded_samples": dict(self.windower.discarded_samples),
            "open_alerts": len(self.quality_problems.open_alerts()),
            "sources": {  # per source: its stream checks (FrameAssembler)
                src.name: {k: v for k, v in counters.items() if k in STREAM_COUNTERS}
                for src, counters in ((s, self._source_counters(s)) for s in self.sources)
                if any(k in STREAM_COUNTERS for k in counters)
            },
        }

    @staticmethod
    def _source_counters(src) -> dict[str, int]:
        try:
            return dict(src.counters())
        except Exception:  # noqa: BLE001 - reporting must not fail because of one source
            log.exception("counters of source %s failed", src.name)
            return {}

    def snapshot(self, state: str = "running") -> dict:
        pub = self.publisher
        return {
            "schema": 1,
            "state": state,
            "time": time.time(),
            "uptime_s": round(time.time() - self.started, 1),
            "agent_version": __version__,
            "device": self.topics.base,
            "model": self.model.version,
            "backend": self.backend,
            "broker": {
                "enabled": pub is not None,
                "address": f"{self.cfg.broker.host}:{self.cfg.broker.port}",
                "connected": bool(pub and pub.connected.is_set()),
                "connects": pub.connects if pub else 0,
                "published": pub.published if pub else 0,
            },
            "queues": {
                "samples": {"depth": self.samples.qsize(), "max": self.samples.maxsize, "dropped": self.samples.dropped},
                "outbox": {"depth": self.outbox.depth(), "bytes": self.outbox.size_bytes, "evicted": dict(self.outbox.evicted)},
            },
            "counters": {
                "windows": self.windows_total,
                "windows_scored": self.windows_scored,
                "windows_per_label": dict(self.labels),
                "alerts_raised": self.alerts_raised,
                "alerts_raised_by_type": dict(self.alerts_by_type),
                "alerts_cleared": self.alerts_cleared,
                "open_alerts": len(self.rules.open_alerts()) + len(self.quality_problems.open_alerts())
                + len(self.drift.open_alerts()),
                "processing_errors": self.processing_errors,
                "bad_blocks": dict(self.bad_blocks),
                "source_errors": dict(self.source_errors),
                "gaps": dict(self.windower.gaps),
            },
            "sources": {s.name: self._source_counters(s) for s in self.sources},
            "data_quality": self.data_quality(),
        }

    def _write_status(self, state: str) -> None:
        try:
            write_status(self.storage_dir, self.snapshot(state))
        except OSError as exc:
            log.error("cannot write the status file in %s: %s", self.storage_dir, exc)


def _prepare_storage(path: Path) -> Path:
    """Create the storage dir (owner and group only) and check it is writable."""
    try:
        path.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"storage.dir {path}: cannot create it: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"storage.dir {path}: not writable by this user")
    return path
