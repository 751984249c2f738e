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
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent import __version__
from edge_agent.alerts import AlertRules, type_rules
from edge_agent.baseline import BaselineModel, Prediction
from edge_agent.bounded_queue import BoundedQueue
from edge_agent.commands import KINDS as COMMAND_KINDS
from edge_agent.commands import CommandError, parse_ack
from edge_agent.alert_log import EVIDENCE_WINDOWS, AlertLog, AlertLogError, Evidence
from edge_agent.drift_monitor import DriftMonitor
from edge_agent.errors import StartupError
from edge_agent.features import FeatureExtractor, FeatureSpec
from edge_agent.interpreter import NoInterpreterBackend, load_backend
from edge_agent.iso_zones import ZoneRules, parse_components
from edge_agent.model_store import ModelStore
from edge_agent.update_transfer import TransferError
from edge_agent.updater import Updater
from edge_agent.outbox import Outbox
from edge_agent.pack import PackError
from edge_agent.pack_scorer import PackAlertRules, PackScorer
from edge_agent.quality import PersistentProblems, QualityCounts, QualityLimits, check_windows
from edge_agent.reload import ReloadCounts, retune_hysteresis, retune_typed
from edge_agent.sources import make_source
from edge_agent.status_file import write_status
from edge_agent.pacing import Pace
from edge_agent.topics import Topics
from edge_agent.window import SampleBlock, Window
from edge_agent.windower import Windower

if TYPE_CHECKING:  # the daemon never runs a feature worker: multiprocessing stays unimported
    from edge_agent.feature_worker import FeaturesAhead

log = logging.getLogger(__name__)
SUMMARY_SCHEMA = 1
BATCH_BLOCKS = 64  # blocks taken per processing round, so windows are batched per invoke
# The processing thread sleeps while the next window's blocks gather (Agent._gather), at most
# this long (summaries, status, commands and the watchdog are served between rounds), and
# wakes at the latest this long after the window should have completed (a late link).
GATHER_MAX_S = 0.2
GATHER_SLACK_S = 0.02
LIVE_CHANNEL_S = 1.0  # a channel with no block for this long is not waited for (it stopped sending)
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
        self.samples: BoundedQueue[tuple[float, SampleBlock]] = BoundedQueue("samples", cfg.queues.samples)
        self.outbox = Outbox(self.storage_dir, int(cfg.storage.outbox_max_mb * 1024 * 1024))
        self.sources = [make_source(s) for s in cfg.sources]
        self.pace = Pace()  # when the next window is due, for sources that batch (pacing.py)
        for src in self.sources:
            if hasattr(src, "pace"):
                src.pace = self.pace
        self.model_store = ModelStore(self.storage_dir / "models")
        scorer, self.active_pack_path = self._startup_pack(cfg)
        if scorer is not None:
            self.windower = Windower(scorer.window_length, scorer.hop, cfg.shaft.rpm, scorer.window_reference_fs)
        else:
            self.windower = Windower(cfg.window.length, cfg.window.hop, cfg.shaft.rpm)
        self.features_ahead: FeaturesAhead | None = None  # a replay's feature worker, when it runs one
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
            default, by_type = type_rules(cfg)
            self.rules = AlertRules(
                raise_after=default.raise_after,
                raise_window=default.raise_window,
                clear_after=default.clear_after,
                threshold=cfg.alerts.anomaly_threshold,
                model_version=self.model.version,
                rules=by_type,
            )
            self._check_rule_types(["anomaly"])
        self.drift = DriftMonitor.for_model(cfg, self.model, self.extractor)
        self.zones = self._zone_rules(cfg)
        self.zone_errors = 0
        self._last_windows: dict[str, deque] = {}  # channel -> its last windows (alert evidence)
        self.page_data = _page_data(cfg)  # what the local page shows ([page]; local_page.py), or None
        self.page = None  # its server, started by run()
        self.alert_log_errors = 0
        self.commands_accepted: Counter[str] = Counter()
        self.commands_refused: Counter[str] = Counter()
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
        self._connects_seen = 0
        self._status_said: dict | None = None  # the retained status last sent by _refresh_status
        self.updater = Updater(self, cfg, self.storage_dir, self._send_now) if self.publisher is not None else None
        self.started = time.time()
        self.labels: Counter[str] = Counter()
        self.alerts_raised = 0
        self.alerts_by_type: Counter[str] = Counter()
        self.alerts_cleared = 0
        self.processing_errors = 0
        self.reloads = ReloadCounts()  # SIGHUP reloads (reload.py)
        # daemon.py's hooks: tick() once per processing round (reload, sd_notify), stopping() at stop
        self.supervisor: Any = None
        self.drift_errors = 0
        self.bad_blocks: Counter[str] = Counter()
        self.source_errors: Counter[str] = Counter()
        self.windows_total = 0
        self.windows_scored = 0
        self.feature_seconds = 0.0
        self.alert_latency: deque[float] = deque(maxlen=1000)  # s, window complete -> alert committed
        self.window_latency: deque[float] = deque(maxlen=1000)  # s, window complete -> processed
        self._summary_labels: Counter[str] = Counter()
        self._summary_since = time.time()  # start of the interval the next summary covers
        self._arrivals: dict[str, float] = {}  # channel -> its last block's arrival (Agent._gather)
        self._threads: list[threading.Thread] = []
        self._sources_running = len(self.sources)
        self._sources_lock = threading.Lock()
        self.sources_done = threading.Event()  # every source's run() has returned (replay ends)
        if not self.sources:
            self.sources_done.set()
        if self.alert_log is not None:
            try:
                self._carry_open_alerts(self.alert_log.open_messages(), "restart")
            except Exception:  # noqa: BLE001 - a damaged log must not stop the agent
                self.alert_log_errors += 1
                log.exception("alerts left open by the previous run: cannot take them over")

    def _carry_open_alerts(self, alerts: list[dict], why: str) -> None:
        """Alerts left open by a previous run (``why`` "restart", from the local log) or by the
        model before a switch ("model_change"): one of the model's rule types is taken over by
        the rules now running (it stays open under its id, clears after the usual quiet
        windows, and is not raised a second time); any other (data quality, drift, ISO zones:
        judged afresh by their monitors, or a type the new model does not raise) is cleared
        with ``"cleared_by": why``, published like any clear. So an alert is never left open
        for good, and one fault is one open alert across restarts."""
        adopted = cleared = 0
        for msg in alerts:
            if msg.get("state") != "open" or not isinstance(msg.get("id"), str):
                continue
            if self.rules.adopt(msg):
                adopted += 1
                continue
            self._commit_alert(dict(msg, state="cleared", cleared_at=time.time(), cleared_by=why))
            cleared += 1
        if adopted or cleared:
            log.info("alerts open before the %s: %d taken over by model %s, %d cleared", why.replace("_", " "),
                     adopted, self.model.version, cleared)

    def _zone_rules(self, cfg: Any) -> ZoneRules | None:
        """ISO 10816-21 zone rules when ``[[iso_zone]]`` names components (docs/ISO10816.md);
        an ``[[alert_rule]] type = "iso_zone"`` sets their k of n, severity or switches them off."""
        self._zone_severity = "auto"
        if not cfg.iso_zones:
            return None
        default, by_type = type_rules(cfg)
        rule = by_type.get("iso_zone", default)
        if not rule.enabled:
            log.info("ISO 10816-21 zone rules configured but switched off ([[alert_rule]] iso_zone)")
            return None
        self._zone_severity = rule.severity
        return ZoneRules(parse_components(cfg.iso_zones), rule.raise_after, rule.raise_window,
                         rule.clear_after, self.model.version)

    def _judge_zones(self, windows: list[Window], completed: list[float]) -> list[dict]:
        """The zone rules' alerts for a batch (after the quality checks set the flags)."""
        if self.zones is None:
            return []
        try:
            msgs = self.zones.update_batch(windows)
        except Exception:  # noqa: BLE001 - an optional rule set must never stop scoring
            self.zone_errors += 1
            log.exception("ISO 10816-21 zone rules failed on a batch (counted; scoring goes on)")
            return []
        done = {(w.channel, w.t_start_us): t for w, t in zip(windows, completed)}
        for m in msgs:
            if m["state"] == "open" and self._zone_severity != "auto":
                m["severity"] = self._zone_severity
            if (t := done.get((m.get("channel"), m.get("window_t_start_us")))) is not None:
                m["window_completed_at"] = round(t, 6)
        return msgs

    # -- the model ------------------------------------------------------------------------------
    def _use_pack(self, scorer: PackScorer) -> None:
        self.extractor = scorer.extractor
        self.model = scorer
        self.rules = scorer.rules(self.cfg)
        self._check_rule_types([*scorer.labels, "anomaly"])

    def _check_rule_types(self, types: list[str]) -> None:
        """A [[alert_rule]] for a type this model never raises is kept (another pack may),
        but said once at load."""
        unused = [r.type for r in self.cfg.alert_rules if r.type not in types]
        if unused:
            log.warning("alert_rule for %s: model %s raises no such alert type (it raises %s); "
                        "the rule waits for a model that does", ", ".join(unused), self.model.version,
                        ", ".join(t for t in types if t != "normal"))

    def load_pack(self, path: str) -> str | None:
        """Switch to the model pack at ``path``; return None when done, else the reason it
        was refused (logged), in which case the current model keeps running. Call it from
        the processing thread (or while the agent is not running): the stage is swapped
        between batches. Open alerts of the old model are taken over by the new one's rules
        or cleared (``_carry_open_alerts``); a pack with another window length or hop gets a
        fresh windower (the partial windows are lost)."""
        try:
            scorer = PackScorer(path, self.cfg)
        except PackError as exc:
            log.error("model pack refused, keeping %s: %s", self.model.version, exc)
            return str(exc)
        self.use_scorer(scorer, path)
        return None

    def use_scorer(self, scorer: PackScorer, path: str) -> None:
        """Switch to an already loaded and checked pack (``load_pack``, or a verified update)."""
        if ((scorer.window_length, scorer.hop, scorer.window_reference_fs)
                != (self.windower.length, self.windower.hop, self.windower.reference_fs)):
            self.windower = Windower(scorer.window_length, scorer.hop, self.cfg.shaft.rpm, scorer.window_reference_fs)
        still_open = self.rules.open_alerts() + self.drift.open_alerts()
        self._use_pack(scorer)
        self.drift = DriftMonitor.for_model(self.cfg, scorer, self.extractor)  # a new interval, new reference
        self._carry_open_alerts(still_open, "model_change")
        self.quality_problems.model_version = scorer.version
        if self.zones is not None:
            self.zones.model_version = scorer.version
        self.active_pack_path = path
        log.info("model pack %s loaded: %s on %s", path, scorer.version, scorer.backend)

    def _startup_pack(self, cfg: Any) -> tuple[PackScorer | None, str]:
        """The pack to start with: the one a model update activated (``models/current``),
        else the one before it when that fails to load, else ``[model] pack`` (a pack there
        that does not load stops start-up), else none (the built-in baseline)."""
        try:
            self.model_store.recover()
        except OSError as exc:
            log.error("model store %s: %s", self.model_store.dir, exc)
        for what, path in (("activated by an update", self.model_store.current()),
                           ("kept from before the last update", self.model_store.previous())):
            if path is None:
                continue
            try:
                return PackScorer(str(path), cfg), str(path)
            except PackError as exc:
                log.error("model pack %s (%s) does not load: %s", path, what, exc)
        if cfg.model.pack:
            try:
                return PackScorer(cfg.model.pack, cfg), cfg.model.pack
            except PackError as exc:
                raise StartupError(f"model.pack: {exc}") from None
        return None, ""

    # -- live reconfiguration (SIGHUP: reload.py decides what is live; processing thread) ---------
    def set_alert_rules(self, cfg: Any) -> None:
        """[alerts] and [[alert_rule]] retuned in place: open alerts and recent windows kept."""
        default, by_type = type_rules(cfg)
        r = self.rules
        r.raise_after, r.raise_window, r.clear_after, r.rules = (default.raise_after, default.raise_window,
                                                                 default.clear_after, by_type)
        retune_typed(r._hysteresis, default, by_type)
        if isinstance(self.model, PackScorer):  # the pack's own threshold wins, as at load
            if "anomaly" not in (self.model.pack.manifest.get("thresholds") or {}):
                self.model.anomaly_threshold = cfg.alerts.anomaly_threshold
        else:
            r.threshold = self.model.threshold = cfg.alerts.anomaly_threshold
        self._check_rule_types([*getattr(self.model, "labels", ()), "anomaly"])
        rule = by_type.get("iso_zone", default)
        if cfg.iso_zones and (self.zones is not None) != rule.enabled:
            self.zones = self._zone_rules(cfg)  # switched on or off: new zone rules
        elif self.zones is not None:
            retune_hysteresis(self.zones._hysteresis, rule.raise_after, rule.raise_window, rule.clear_after)
            self._zone_severity = rule.severity

    def set_quality(self, cfg: Any) -> None:
        q = cfg.quality
        self.quality_action = q.action
        self.quality_limits = QualityLimits.from_config(q)
        p = self.quality_problems
        p.alert_after, p.clear_after, p.action = q.alert_after, q.clear_after, q.action

    def set_drift(self, cfg: Any) -> None:
        """A new drift interval with the new knobs; open drift alerts and alarm counts kept."""
        old, new = self.drift, DriftMonitor.for_model(cfg, self.model, self.extractor)
        d = cfg.drift
        retune_hysteresis(old.alerts._h, d.raise_after, d.raise_window, d.clear_after)
        new.alerts, new.score_alarms, new.alarm_counts, new.last = old.alerts, old.score_alarms, old.alarm_counts, old.last
        self.drift = new

    def set_publish(self, cfg: Any) -> None:
        """Intervals are read from cfg by the loop; the QoS applies to the next publishes."""
        if self.publisher is not None:
            self.publisher.qos = cfg.publish.qos

    def set_updates(self, cfg: Any) -> None:
        if self.updater is not None:
            self.updater.cfg, self.updater.ucfg = cfg, cfg.updates

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
        self._start_page()
        try:
            self._process(stop)
        finally:
            self._final_summary()
            # The drain, bounded as a whole (SIGTERM must end within 5 s): sources 1 s, then
            # the publisher (in-flight PUBACKs, the goodbye, DISCONNECT: publisher._shutdown, 3.5 s).
            if self.supervisor is not None:
                self.supervisor.stopping()
            deadline = time.monotonic() + 1.0
            for t in self._threads:
                if t.name.startswith("source:"):
                    t.join(timeout=max(0.0, deadline - time.monotonic()))
            pub_stop.set()
            if self.page is not None:
                self.page.stop()  # at most its 0.1 s poll; the publisher drains meanwhile
                self.page = None
            deadline = time.monotonic() + 3.5
            for t in self._threads:
                t.join(timeout=max(0.0, deadline - time.monotonic()))
            self._write_status(state="stopped")
            log.info("edge-agent stopped: %d windows, %d alerts raised", self.windows_total, self.alerts_raised)

    def _final_summary(self) -> None:
        """At a stop, the interval so far as a last summary (``"final": true``): its windows,
        sketches and counters would otherwise be lost to the fleet at every restart. Committed
        before the publisher drains, so it goes out ahead of the goodbye; with no link it waits
        in the outbox like any other."""
        try:
            self.outbox.commit("summary", self.summary(final=True))
        except Exception:
            log.exception("the final summary could not be committed")

    def _start_page(self) -> None:
        """The technicians' local page, when [page] enabled: an address it cannot bind is
        logged and the agent goes on without it (monitoring matters more than the page)."""
        if self.page_data is None:
            return
        from edge_agent.local_page import LocalPage

        try:
            page = LocalPage(self.cfg.page, self.page_data, self.storage_dir, self.cfg.publish.status_interval_s)
            page.start()
        except (OSError, ValueError) as exc:
            log.error("local page: cannot serve on %s: %s; the agent goes on without it", self.cfg.page.listen, exc)
            return
        self.page = page

    def _start(self, name: str, target, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _run_source(self, src, stop: threading.Event) -> None:
        # Each block travels with the time it reached the agent: a window is complete when
        # its last block has arrived, and alert latency is measured from there.
        if getattr(src, "wants_waiting_emit", False):
            def emit(block: SampleBlock, arrived: float | None = None) -> bool:
                return self.samples.put_until((arrived or time.time(), block), stop)
        else:
            def emit(block: SampleBlock, arrived: float | None = None) -> bool:
                return self.samples.offer((arrived or time.time(), block))
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
            items = []
            if first is not None:
                items = [first, *self.samples.drain(BATCH_BLOCKS - 1)]
                blocks = [b for _, b in items]
                try:
                    self.process_blocks(blocks, [t for t, _ in items])
                except Exception:
                    self.processing_errors += 1
                    log.exception("processing a batch of %d blocks failed; skipped", len(blocks))
                    if self.updater is not None:
                        self.updater.error()
            now = time.monotonic()
            if now >= next_summary:
                next_summary = now + self.cfg.publish.summary_interval_s
                self.outbox.commit("summary", self.summary())
            if self.publisher is not None and self.publisher.commands:
                self.pump_commands()
            if self.updater is not None:
                self._tick_updater()
            if now >= next_status:
                next_status = now + self.cfg.publish.status_interval_s
                self._write_status(state="running")
                self._refresh_status()
                self.pump_acks()
            if self.supervisor is not None and self.supervisor.tick():  # True after a config reload
                next_summary = min(next_summary, now + self.cfg.publish.summary_interval_s)
                next_status = min(next_status, now + self.cfg.publish.status_interval_s)
            if items:
                self._gather(items)

    def _gather(self, items: list[tuple[float, SampleBlock]]) -> None:
        """Sleep until the next window's blocks have gathered, instead of waking for every
        block (a serial link brings one per channel every ~10 ms; a window completes every
        ~160 ms). The windower says how much signal is missing and how many blocks bring
        it (Windower.next_due, which errs low); the queue wakes this thread when that many
        are queued, or GATHER_SLACK_S after they should have arrived (a late or stalled
        link), at most GATHER_MAX_S. A backlog (replay, a burst after an outage) is taken at
        once. Alert latency is unchanged: the wait ends when the completing block is queued.
        Only channels that sent a block in the last LIVE_CHANNEL_S count: one that stopped
        (a sensor lost) must not keep the estimate short and the thread waking per block.
        """
        now = time.time()
        for arrived, b in items:
            self._arrivals[b.channel] = arrived
        live = [ch for ch, t in self._arrivals.items() if now - t < LIVE_CHANNEL_S]
        due = self.windower.next_due(live)
        if due is None or self.samples.qsize() >= due[1]:
            self.pace.due_at = 0.0  # a backlog: sources must not hold anything back either
            return
        seconds, blocks = due
        self.pace.due_at = items[-1][0] + seconds
        timeout = min(self.pace.due_at + GATHER_SLACK_S - now, GATHER_MAX_S)
        if timeout > 0:
            self.samples.wait_for(blocks, timeout)

    def process_blocks(self, blocks: list[SampleBlock], arrived: list[float] | None = None) -> list[WindowResult]:
        """Window, check, featurise, score and apply alert rules to a batch of blocks.
        ``arrived``: each block's arrival time (time.time()); a window is complete when the
        block that completed it arrived (default: now). Alerts carry it as
        ``window_completed_at``, and the agent keeps the latency to their commit."""
        windows: list[Window] = []
        completed: list[float] = []
        now = time.time()
        for j, b in enumerate(blocks):
            try:
                made = self.windower.push(b)
                windows.extend(made)
                completed.extend([arrived[j] if arrived is not None else now] * len(made))
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
            c = self.updater.clock() if self.updater is not None else 0.0
            feats = self._features([windows[i] for i in scored])
            self.feature_seconds += time.perf_counter() - t
            batch_preds = self.model.predict(feats, [windows[i].channel for i in scored])
            latency = time.perf_counter() - t
            compute = self.updater.clock() - c if self.updater is not None else latency
            for i, p in zip(scored, batch_preds):
                preds[i] = p
            drift_msgs = self._observe_drift(windows, scored, feats, batch_preds, latency)
            if self.page_data is not None:  # the local page's trends (never raises)
                self.page_data.observe([windows[i] for i in scored], feats, batch_preds, self.extractor.names)
            if self.updater is not None:
                self._observe_update([windows[i] for i in scored], batch_preds, compute)
        results: list[WindowResult] = []
        for w, p, detail, done in zip(windows, preds, details, completed):
            ring = self._last_windows.get(w.channel)
            if ring is None:
                ring = self._last_windows[w.channel] = deque(maxlen=EVIDENCE_WINDOWS)
            ring.append(w)
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
                msg["window_completed_at"] = round(done, 6)
                self._commit_alert(msg)
            results.append(WindowResult(w, p, tuple(messages)))
        # the zone rules' and score detectors' alerts: judged over the batch, reported with its
        # last window; a drift alert is judged over many windows, so it completes with the batch
        for msg in drift_msgs:
            msg.setdefault("window_completed_at", round(max(completed), 6))
        batch_msgs = self._judge_zones(windows, completed) + drift_msgs
        for msg in batch_msgs:
            self._commit_alert(msg)
        if batch_msgs:
            last = results[-1]
            results[-1] = WindowResult(last.window, last.prediction, last.alerts + tuple(batch_msgs))
        self.windows_total += len(windows)
        self.windows_scored += len(scored)
        done = time.time()
        self.window_latency.extend([done - c for c in completed])
        return results

    def _features(self, windows: list[Window]) -> np.ndarray:
        """The windows' feature vectors: computed ahead by a replay's feature worker when it
        has them (feature_worker.py), else by this thread's extractor."""
        ahead = self.features_ahead
        if ahead is not None:
            feats = ahead.take(windows, self.extractor.spec)
            if feats is not None:
                return feats
        return self.extractor.extract(windows)

    def _observe_update(self, windows: list[Window], preds: list[Prediction], compute: float) -> None:
        """Shadow gate and health check of a model update see every scored batch (``compute``:
        its features + model on the updater's clock, model_watch.compute_clock)."""
        try:
            self.updater.observe(windows, preds, compute)
        except Exception:  # noqa: BLE001 - an update's judging must never stop scoring
            self.commands_refused["model_internal"] += 1
            log.exception("model update judging failed on a batch (counted)")

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

    def pump_commands(self) -> int:
        """Act on the fleet's commands (publisher.commands, cmd/... topics): each is checked
        (commands.py); a refused one is counted by reason and logged, and changes nothing.
        An accepted ack is recorded in the local alert log and confirmed on the ack topic."""
        done = 0
        while self.publisher is not None and self.publisher.commands:
            topic, payload = self.publisher.commands.popleft()
            if topic.startswith("model/"):
                self._model_message(topic, payload)
                continue
            kind = topic.removeprefix("cmd/")
            try:
                if kind != "ack":
                    raise CommandError("unknown", f"unknown command cmd/{kind[:64]!r}; known: "
                                       + ", ".join(f"cmd/{k}" for k in COMMAND_KINDS))
                cmd = parse_ack(payload)
                if self.alert_log is None:
                    raise CommandError("unavailable", "the local alert log is unavailable")
                try:
                    self.alert_log.ack(cmd.alert_id, cmd.by, cmd.verdict, origin="fleet")
                except AlertLogError as exc:
                    raise CommandError("unknown_alert", str(exc)) from None
            except CommandError as exc:
                self.commands_refused[exc.reason] += 1
                log.warning("command cmd/%s from the fleet refused (%s): %s", kind[:64], exc.reason, exc)
                continue
            except Exception:  # noqa: BLE001 - a bad command must never stop processing
                self.commands_refused["internal"] += 1
                log.exception("command cmd/%s failed (counted)", kind[:64])
                continue
            self.commands_accepted[kind] += 1
            done += 1
            log.info("alert %s acknowledged from the fleet by %s (%s)", cmd.alert_id, cmd.by, cmd.verdict or "no verdict")
        if done:
            self.pump_acks()  # the confirmation goes out now, not at the next status interval
        return done

    def _tick_updater(self) -> None:
        try:
            if self.publisher.connects != self._connects_seen and self.publisher.connected.is_set():
                self._connects_seen = self.publisher.connects
                self.updater.on_connect()
            self.updater.tick()
        except Exception:  # noqa: BLE001 - counted; processing goes on
            self.commands_refused["model_internal"] += 1
            log.exception("model updater failed (counted)")

    def _model_message(self, topic: str, payload: bytes) -> None:
        """A model-update message (model/offer, model/chunk/...) for the updater."""
        if self.updater is None:
            return
        try:
            self.updater.handle(topic, payload)
        except TransferError as exc:
            self.commands_refused[f"model_{exc.reason}"] += 1
            log.warning("model update message on %s refused (%s): %s", topic[:80], exc.reason, exc)
        except Exception:  # noqa: BLE001 - a bad update must never stop processing
            self.commands_refused["model_internal"] += 1
            log.exception("model update message on %s failed (counted)", topic[:80])

    def _send_now(self, kind: str, payload: dict, retain: bool) -> None:
        if self.publisher is not None:
            self.publisher.send_now(kind, payload, retain)

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

    def _page_spectrum(self, msg: dict) -> None:
        """For the local page: the envelope spectrum of the window that raised ``msg`` (the
        channel's window with its start time, else its last one)."""
        ring = self._last_windows.get(msg.get("channel")) or ()
        window = next((w for w in reversed(ring) if w.t_start_us == msg.get("window_t_start_us")),
                      ring[-1] if ring else None)
        if window is not None:
            self.page_data.capture_spectrum(msg, window, self.extractor.spec)

    def _commit_alert(self, msg: dict) -> None:
        # The outbox first: the publisher sends it while the local log and the page, which
        # nobody waits for, are written (the alert log's evidence write was the largest share
        # of alert latency: benches/RESULTS.md, "Alert latency").
        self.outbox.commit("alert", msg)
        if msg["state"] == "open" and "window_completed_at" in msg:
            self.alert_latency.append(time.time() - msg["window_completed_at"])
        self._log_alert(msg)
        if msg["state"] == "open" and self.page_data is not None:
            self._page_spectrum(msg)
        if msg["state"] == "open":
            self.alerts_raised += 1
            self.alerts_by_type[msg["type"]] += 1
            log.warning("ALERT %s %s on %s: %s", msg["severity"], msg["type"], msg["channel"], msg["explanation"])
        else:
            self.alerts_cleared += 1
            log.info("alert %s (%s) on %s cleared", msg["id"], msg["type"], msg["channel"])

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
            "site": self.cfg.device.site,
            "device": self.cfg.device.id,
            "group": self.cfg.device.group,
            "update": updater.status()["state"] if (updater := getattr(self, "updater", None)) is not None else "disabled",
            "open_alerts": self._open_alerts(),
        }

    def _open_alerts(self) -> int:
        """Alerts open now, of every kind (model rules, data quality, drift, ISO zones)."""
        if not hasattr(self, "rules"):
            return 0
        return (len(self.rules.open_alerts()) + len(self.quality_problems.open_alerts())
                + len(self.drift.open_alerts()) + (len(self.zones.open_alerts()) if self.zones else 0))

    def _refresh_status(self) -> None:
        """Re-send the retained ``status`` when what it says changed since it was last sent
        (the model after an update, the open-alert count, the update state), so
        ``fleet status`` shows the device as it is now, not as it was at connect."""
        if self.publisher is None or not self.publisher.connected.is_set():
            return
        birth = self._birth()
        said = {k: v for k, v in birth.items() if k != "time"}
        if said != self._status_said and self.publisher.send_now("status", birth, retain=True):
            self._status_said = said

    def summary(self, final: bool = False) -> dict:
        """The interval's summary (docs/MQTT.md); it starts the next interval. ``final``: the
        last one, at a clean stop, covering the interval so far."""
        labels = dict(self._summary_labels)
        self._summary_labels.clear()
        drift_part, drift_msgs = self.drift.summarize()
        for msg in drift_msgs:
            self._commit_alert(msg)
        now = time.time()
        since, self._summary_since = self._summary_since, now
        return {
            "schema": SUMMARY_SCHEMA,
            "time": now,
            "interval_s": round(now - since, 1),
            **({"final": True} if final else {}),
            "site": self.cfg.device.site,
            "device": self.cfg.device.id,
            "agent_version": __version__,
            "model_version": self.model.version,
            "windows_per_label": labels,
            **drift_part,
            "data_quality": self.data_quality(),
            "dropped": {"samples_queue": self.samples.dropped},
            "evicted": dict(self.outbox.evicted),
            "alerts": {"raised": self.alerts_raised, "cleared": self.alerts_cleared,
                       "latency_ms": self._alert_latency_ms()},
            "uplink": self._uplink_summary(),
            "commands": self._command_counters(),
            "errors": {
                "processing": self.processing_errors,
                "drift_monitor": self.drift_errors,
                "iso_zones": self.zone_errors,
                "alert_log": self.alert_log_errors,
                "bad_blocks": dict(self.bad_blocks),
                "sources": dict(self.source_errors),
            },
        }

    def _command_counters(self) -> dict:
        return {"accepted": dict(self.commands_accepted), "refused": dict(self.commands_refused),
                "dropped": self.publisher.commands_dropped if self.publisher is not None else 0}

    def _uplink_summary(self) -> dict:
        """The link's story since start, for the fleet: reconnects and why it failed."""
        b = self._broker_counters()
        return {k: b[k] for k in ("connects", "disconnects", "failures_by_reason", "last_disconnect",
                                  "last_error") if k in b}

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

    def _broker_counters(self) -> dict:
        """The uplink's health (publisher.counters()): connected, reconnects, failures by
        reason, the last error and when the next attempt is."""
        if self.publisher is None:
            return {"enabled": False, "address": f"{self.cfg.broker.host}:{self.cfg.broker.port}",
                    "connected": False, "connects": 0, "published": 0}
        try:
            return {"enabled": True, **self.publisher.counters()}
        except Exception:  # noqa: BLE001 - reporting must not fail because of the uplink
            log.exception("publisher counters failed")
            return {"enabled": True}

    def _alert_latency_ms(self) -> dict:
        """From a window's completion (its last block reached the agent) to its alert being
        committed to the outbox, over the last 1000 raised alerts."""
        return _percentiles_ms(self.alert_latency, "alerts")

    def _window_latency_ms(self) -> dict:
        """From a window's completion to the end of its processing round (scored, alert rules
        applied, alerts committed), over the last 1000 windows: the processing lag every
        alert would have, with far more samples than the alerts give."""
        return _percentiles_ms(self.window_latency, "windows")

    def snapshot(self, state: str = "running") -> dict:
        return {
            "schema": 1,
            "state": state,
            "time": time.time(),
            "uptime_s": round(time.time() - self.started, 1),
            "agent_version": __version__,
            "device": self.topics.base,
            "model": self.model.version,
            "backend": self.backend,
            "broker": self._broker_counters(),
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
                "alert_latency_ms": self._alert_latency_ms(),
                "window_latency_ms": self._window_latency_ms(),
                "open_alerts": self._open_alerts(),
                "processing_errors": self.processing_errors,
                "bad_blocks": dict(self.bad_blocks),
                "source_errors": dict(self.source_errors),
                "gaps": dict(self.windower.gaps),
                "commands": self._command_counters(),
            },
            "sources": {s.name: self._source_counters(s) for s in self.sources},
            "data_quality": self.data_quality(),
            "updates": self.updater.status() if self.updater is not None else None,
            "iso_zones": {"components": dict(self.zones.components), "skipped": self.zones.skipped()}
            if self.zones is not None else None,
            "reloads": self.reloads.as_dict(),
            "page": self.page.counters() if getattr(self, "page", None) is not None else None,
        }

    def _write_status(self, state: str) -> None:
        try:
            snap = self.snapshot(state)
            if self.page_data is not None:
                self.page_data.publish_status(snap)
            write_status(self.storage_dir, snap)
        except OSError as exc:
            log.error("cannot write the status file in %s: %s", self.storage_dir, exc)


def _percentiles_ms(seconds, what: str) -> dict:
    lat = np.asarray(seconds, dtype=np.float64) * 1e3
    if not len(lat):
        return {what: 0}
    p50, p99 = np.percentile(lat, [50, 99])
    return {what: int(len(lat)), "p50": round(float(p50), 2), "p99": round(float(p99), 2),
            "max": round(float(lat.max()), 2)}


def _page_data(cfg: Any):
    """The local page's shared data when ``[page] enabled`` (local_page.py), else None."""
    if not cfg.page.enabled:
        return None
    from edge_agent.local_page import PageData

    return PageData(cfg.page.trend_windows)


def _prepare_storage(path: Path) -> Path:
    """Create the storage dir (owner and group only) and check it is writable."""
    try:
        path.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"storage.dir {path}: cannot create it: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"storage.dir {path}: not writable by this user")
    return path
