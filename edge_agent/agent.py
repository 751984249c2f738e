"""The agent: builds the stages from one validated Config and runs them on their threads.

Threads and what they own (docs/ARCHITECTURE.md has the picture):

* ``source:NAME`` (one per source) — reads its device, decodes, offers SampleBlocks to
  the ``samples`` queue (never blocks: a full queue is counted as a drop);
* ``processing`` — owns the windower, feature extractor, model and alert rules; commits
  alerts and summaries to the outbox and rewrites the status file;
* ``publisher`` — owns the MQTT client; drains the outbox (see publisher.py).

Any exception while processing a batch is counted and logged, and the loop goes on: bad
input never stops the agent.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.alerts import AlertRules
from edge_agent.baseline import BaselineModel
from edge_agent.bounded_queue import BoundedQueue
from edge_agent.errors import StartupError
from edge_agent.features import FeatureExtractor
from edge_agent.interpreter import NoInterpreterBackend, load_backend
from edge_agent.outbox import MemoryOutbox
from edge_agent.publisher import Publisher
from edge_agent.sources import make_source
from edge_agent.status_file import write_status
from edge_agent.topics import Topics
from edge_agent.window import SampleBlock, Window
from edge_agent.windower import Windower

log = logging.getLogger(__name__)
SUMMARY_SCHEMA = 1
BATCH_BLOCKS = 64  # blocks taken per processing round, so windows are batched per invoke


class Agent:
    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        if cfg.model.pack:
            raise StartupError(f"model.pack = {cfg.model.pack}: model packs land with issue #5; leave it empty for the built-in baseline scorer")
        self.storage_dir = _prepare_storage(Path(cfg.storage.dir))
        self.topics = Topics(cfg.broker.topic_prefix, cfg.device.site, cfg.device.id)
        try:
            self.backend = load_backend(cfg.model.backend).describe()
        except (NoInterpreterBackend, ValueError) as exc:
            log.warning("%s", exc)
            self.backend = "none"
        self.samples: BoundedQueue[SampleBlock] = BoundedQueue("samples", cfg.queues.samples)
        self.outbox = MemoryOutbox(int(cfg.storage.outbox_max_mb * 1024 * 1024))
        self.sources = [make_source(s) for s in cfg.sources]
        self.windower = Windower(cfg.window.length, cfg.window.hop, cfg.shaft.rpm)
        self.extractor = FeatureExtractor()
        self.model = BaselineModel(cfg.model.baseline_windows, cfg.alerts.anomaly_threshold)
        self.rules = AlertRules(
            raise_after=cfg.alerts.raise_after,
            raise_window=cfg.alerts.raise_window,
            clear_after=cfg.alerts.clear_after,
            threshold=cfg.alerts.anomaly_threshold,
            model_version=self.model.version,
        )
        self.publisher = (
            Publisher(cfg.broker, self.topics, self.outbox, self._birth, qos=cfg.publish.qos) if cfg.broker.enabled else None
        )
        self.started = time.time()
        self.labels: Counter[str] = Counter()
        self.alerts_raised = 0
        self.alerts_cleared = 0
        self.processing_errors = 0
        self.bad_blocks: Counter[str] = Counter()
        self.source_errors: Counter[str] = Counter()
        self.windows_total = 0
        self.feature_seconds = 0.0
        self._summary_labels: Counter[str] = Counter()
        self._threads: list[threading.Thread] = []

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
        try:
            src.run(self.samples.offer, stop)
        except Exception:
            self.source_errors[src.name] += 1
            log.exception("source %s failed; it is stopped, the agent goes on", src.name)

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

    def process_blocks(self, blocks: list[SampleBlock]) -> list[Window]:
        """Window, featurise, score and apply alert rules to a batch of blocks."""
        windows: list[Window] = []
        for b in blocks:
            try:
                windows.extend(self.windower.push(b))
            except ValueError as exc:
                self.bad_blocks[b.channel] += 1
                log.warning("bad sample block dropped: %s", exc)
        if not windows:
            return windows
        t = time.perf_counter()
        feats = self.extractor.extract(windows)
        self.feature_seconds += time.perf_counter() - t
        preds = self.model.predict(feats, [w.channel for w in windows])
        for w, p in zip(windows, preds):
            self.labels[p.label] += 1
            self._summary_labels[p.label] += 1
            for msg in self.rules.update(w, p):
                if msg["state"] == "open":
                    self.alerts_raised += 1
                    log.warning("ALERT %s %s on %s: %s", msg["severity"], msg["type"], msg["channel"], msg["explanation"])
                else:
                    self.alerts_cleared += 1
                    log.info("alert %s on %s cleared", msg["id"], msg["channel"])
                self.outbox.commit("alert", msg)
        self.windows_total += len(windows)
        return windows

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
        return {
            "schema": SUMMARY_SCHEMA,
            "time": time.time(),
            "interval_s": self.cfg.publish.summary_interval_s,
            "agent_version": __version__,
            "model_version": self.model.version,
            "windows_per_label": labels,
            "data_quality": {"gaps": dict(self.windower.gaps), "discarded_samples": dict(self.windower.discarded_samples)},
            "dropped": {"samples_queue": self.samples.dropped},
            "evicted": dict(self.outbox.evicted),
            "errors": {
                "processing": self.processing_errors,
                "bad_blocks": dict(self.bad_blocks),
                "sources": dict(self.source_errors),
            },
        }

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
                "windows_per_label": dict(self.labels),
                "alerts_raised": self.alerts_raised,
                "alerts_cleared": self.alerts_cleared,
                "open_alerts": len(self.rules.open_alerts()),
                "processing_errors": self.processing_errors,
                "bad_blocks": dict(self.bad_blocks),
                "source_errors": dict(self.source_errors),
                "gaps": dict(self.windower.gaps),
            },
            "sources": {s.name: s.counters() for s in self.sources},
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
