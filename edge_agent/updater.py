"""The device's side of a model update (docs/UPDATES.md): offer -> chunks -> verification ->
shadow or activation -> health check -> healthy or rollback, reported on the retained
``model/progress`` topic.

Runs on the processing thread, which owns the model: the publisher only queues what
arrives on ``model/offer`` and ``model/chunk/...`` (Agent.pump_commands hands it here), and
the agent calls :meth:`observe` with every scored batch and :meth:`tick` every loop. So a
model swap always falls between two batches, and nothing here races the pipeline.

The parts: update_transfer.py (offer checks, chunks kept on disk, resume), pack_verify.py
(the checks before staging, each failure with its reason), model_store.py (atomic
activation and rollback with pointers), model_watch.py (the shadow gate and the health
check). Every failure is reported with one reason; the running model is never touched by
an update that fails before activation.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.model_store import ModelStore
from edge_agent.model_store import _crash_point as crash_point
from edge_agent.model_watch import HealthCheck, RecentHits, ShadowGate, compute_clock, hit_of
from edge_agent.pack_verify import UpdateRejected, verify_candidate
from edge_agent.signing import load_trusted_keys
from edge_agent.update_transfer import Offer, TransferError, TransferStore, parse_index, parse_offer
from edge_agent.durable import write_atomic
from edge_agent.windower import Windower

log = logging.getLogger(__name__)
SCHEMA = 1
_CHUNK_TOPIC = re.compile(r"model/chunk/([0-9a-f]{16})/(\d{1,7})")
FINISHED_KEEP = 64  # update ids remembered as finished (a retained offer seen again is ignored)
END_STATES = ("healthy", "rejected", "rolled_back")
# Test hooks (model_store._crash_point: SIGKILL when EDGE_AGENT_TEST_KILL_AT names one) in the
# staging steps; model_store.CRASH_POINTS are those of activation. tests/test_update_crash.py.
CRASH_POINTS = ("update:first_chunk", "update:assembled", "update:verified", "update:health_running")


class Updater:
    """``send(kind, payload, retain)`` publishes on ``{base}/{kind}`` (best effort, QoS 1).
    ``agent`` gives ``model``, ``use_scorer(scorer)``, ``load_pack(path)``."""

    def __init__(self, agent: Any, cfg: Any, storage_dir: Path, send: Callable[[str, dict, bool], None]) -> None:
        self.agent = agent
        self.ucfg = cfg.updates
        self.cfg = cfg
        self.send = send
        # the transfer's files (TransferStore owns that directory and removes strays in it);
        # the updater's own records sit beside it, so they outlive every transfer
        self.store = TransferStore(storage_dir / "updates" / "transfer")
        self.models: ModelStore = agent.model_store
        self.trusted: dict = {}
        if self.ucfg.trusted_keys_dir:
            keys = load_trusted_keys(self.ucfg.trusted_keys_dir)
            self.trusted = keys.keys
        self._finished_path = storage_dir / "updates" / "finished.json"
        self.finished: list[str] = self._load_finished()
        self.progress: dict = {}
        self.offer: Offer | None = None
        self.shadow: ShadowGate | None = None
        self.candidate: Any = None  # the candidate's PackScorer in shadow
        self.candidate_path: Path | None = None
        self.health: HealthCheck | None = None
        self.recent = RecentHits(max(self.ucfg.health_windows, 50))
        # the clock every model comparison times a batch with (the agent times its batches on it too)
        self.clock = compute_clock(cfg.model.num_threads)
        self._last_request = 0.0
        self._last_progress_at = time.monotonic()
        self.counts = {"offers": 0, "rejected": 0, "healthy": 0, "rolled_back": 0, "chunks": 0,
                       "chunks_refused": 0, "chunks_duplicate": 0}
        self.offer = self.store.current()
        if self.offer is not None:
            log.info("model update %s (%s %s) resumes: %d of %d chunks held", self.offer.update_id,
                     self.offer.pack_name, self.offer.pack_version, self.store.received(), self.offer.chunks)
            self._report("downloading")
        # every chunk was already held (a restart during verification, shadow or activation):
        # verified again at the first tick, once the agent is running
        self._resume_complete = self.offer is not None and self.store.complete()
        self._health_path = storage_dir / "updates" / "health.json"
        if self.offer is None:
            self._resume_health()
        else:
            self._drop_health_record()  # a newer transfer superseded that health check

    # -- persistence of finished ids ---------------------------------------------------------
    def _load_finished(self) -> list[str]:
        try:
            ids = json.loads(self._finished_path.read_text())
            return [i for i in ids if isinstance(i, str)][-FINISHED_KEEP:]
        except (OSError, ValueError, TypeError):
            return []

    def _finish(self, update_id: str) -> None:
        self.finished = [*self.finished, update_id][-FINISHED_KEEP:]
        try:
            self._finished_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self._finished_path, json.dumps(self.finished).encode())
        except OSError as exc:
            log.error("cannot record finished update %s: %s", update_id, exc)

    # -- the health check survives a restart ------------------------------------------------------
    def _save_health(self, installed: Path, prev_rate: float | None, prev_spw: float | None) -> None:
        """What a restart needs to go on with the health check of the pack just activated
        (written, fsynced, before the transfer's files are removed)."""
        record = {"schema": SCHEMA, "progress": self.progress, "installed": str(installed),
                  "previous_alert_rate": prev_rate, "previous_seconds_per_window": prev_spw}
        try:
            write_atomic(self._health_path, json.dumps(record).encode())
        except OSError as exc:
            log.error("cannot record the health check of update %s (a restart would skip it): %s",
                      self.progress.get("update_id"), exc)

    def _drop_health_record(self) -> None:
        try:
            self._health_path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s: %s", self._health_path, exc)

    def _resume_health(self) -> None:
        """A restart after an activation and before its health check ended: the check starts
        again over ``health_windows`` windows (a restart never makes a pack healthy sooner);
        if the agent did not start with that pack (it failed to load), it is rolled back."""
        try:
            record = json.loads(self._health_path.read_text())
            progress, installed = record["progress"], Path(record["installed"])
            prev_rate, prev_spw = record["previous_alert_rate"], record["previous_seconds_per_window"]
            if not isinstance(progress, dict) or not isinstance(progress.get("update_id"), str):
                raise ValueError("no update id")
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("health check record %s unreadable (%s); no health check resumed", self._health_path, exc)
            self._drop_health_record()
            return
        self.progress = progress
        running = self.agent.active_pack_path
        if running and Path(running).resolve() == installed.resolve():
            self.health = HealthCheck(self.ucfg.health_windows, self.ucfg.health_max_alert_rate,
                                      self.ucfg.health_max_latency_ratio, prev_rate, prev_spw)
            log.info("model update %s: health check of %s starts again after a restart (%d windows)",
                     progress["update_id"], self.agent.model.version, self.ucfg.health_windows)
            self._report("active", detail="health check restarted after an agent restart")
        else:
            self._rollback(f"the activated pack {installed.parent.name} did not load at restart", {})

    # -- reporting -----------------------------------------------------------------------------
    def _report(self, state: str, reason: str = "", detail: str = "", figures: dict | None = None) -> None:
        o = self.offer
        self.progress = {
            "schema": SCHEMA, "update_id": o.update_id if o else self.progress.get("update_id", ""),
            "state": state, "time": time.time(), "mode": o.mode if o else self.progress.get("mode", ""),
            "pack_version": f"{o.pack_name} {o.pack_version}" if o else self.progress.get("pack_version", ""),
            "active_version": self.agent.model.version,
            # after activation the transfer's files are gone: the count it ended with stays
            "received": self.store.received() if o and self.store.current() is not None
            else self.progress.get("received", 0),
            "chunks": o.chunks if o else self.progress.get("chunks", 0),
            "reason": reason, "detail": detail, "figures": figures or {},
        }
        self.send("model/progress", self.progress, True)

    def on_connect(self) -> None:
        """After a (re)connect: the latest progress again (retained), and the chunks still missing."""
        if self.progress:
            self.send("model/progress", dict(self.progress, time=time.time()), True)
        if self.offer is not None:
            self._request_missing(force=True)

    def status(self) -> dict:
        return {"state": self.progress.get("state", "idle"), "update_id": self.progress.get("update_id"),
                "pack_version": self.progress.get("pack_version"), "reason": self.progress.get("reason"),
                "trusted_keys": len(self.trusted), **self.counts}

    # -- messages from the fleet ---------------------------------------------------------------
    def handle(self, kind: str, payload: bytes) -> None:
        if kind == "model/offer":
            self._on_offer(payload)
            return
        m = _CHUNK_TOPIC.fullmatch(kind)
        if m is None:
            raise TransferError("field", f"unknown model topic {kind[:80]!r}")
        self._on_chunk(m[1], parse_index(m[2]), payload)

    def _on_offer(self, payload: bytes) -> None:
        if not payload:  # the fleet cleared its retained offer
            return
        if not self.ucfg.enabled:
            raise TransferError("disabled", "model updates are switched off ([updates] enabled = false)")
        try:
            offer = parse_offer(payload, int(self.ucfg.max_pack_mb * 1024 * 1024), self.ucfg.max_chunk_kb * 1024)
        except TransferError as exc:
            update_id = _peek_update_id(payload)
            if update_id and update_id not in self.finished:
                self.offer = None
                self.progress = {"update_id": update_id}
                self._reject(exc.reason, exc.message, update_id)
            raise
        if offer.update_id in self.finished:
            return  # a retained offer seen again after it ended
        if self.health is not None and offer.update_id == self.progress.get("update_id"):
            return  # the retained offer again (a reconnect) while its health check runs
        current = self.models.current()
        if current is not None and offer.sha256[:16] == current.parent.name:
            self.offer = offer
            self._report("healthy", detail="this pack is already the active one")
            self._end(offer.update_id)
            return
        if self.offer is not None and self.offer.update_id == offer.update_id:
            self._request_missing(force=True)  # the same offer again (reconnect): resume
            return
        if self.shadow is not None or self.health is not None:
            self._abandon_running(f"superseded by update {offer.update_id}")
        self.counts["offers"] += 1
        self.offer = offer
        self.store.begin(offer)
        self._last_progress_at = time.monotonic()
        log.info("model update %s offered: %s %s, %d bytes in %d chunks, mode %s", offer.update_id,
                 offer.pack_name, offer.pack_version, offer.size, offer.chunks, offer.mode)
        self._report("downloading")
        if self.store.received() == offer.chunks:
            self._complete()
        else:
            self._request_missing(force=True)

    def _on_chunk(self, update_id: str, index: int, data: bytes) -> None:
        if self.offer is None or update_id != self.offer.update_id:
            self.counts["chunks_refused"] += 1
            return  # a late chunk of an update that ended or was replaced: nothing to do
        try:
            new = self.store.add_chunk(update_id, index, data)
        except TransferError as exc:
            self.counts["chunks_refused"] += 1
            if exc.reason in ("chunk_hash", "oversize", "truncated"):
                self._reject(exc.reason, exc.message)
            raise
        if not new:
            self.counts["chunks_duplicate"] += 1
            return
        self.counts["chunks"] += 1
        self._last_progress_at = time.monotonic()
        received = self.store.received()
        if received == 1:
            crash_point("update:first_chunk")
        if received == self.offer.chunks:
            self._complete()
        elif received % max(1, self.offer.chunks // 10) == 0:
            self._report("downloading")

    def tick(self) -> None:
        """Ask again for missing chunks; give up a transfer that stopped."""
        if self._resume_complete:
            self._resume_complete = False
            if self.offer is not None and self.shadow is None and self.health is None:
                self._complete()
                return
        if self.offer is None or self.shadow is not None or self.health is not None:
            return
        if time.monotonic() - self._last_progress_at > self.ucfg.transfer_timeout_s:
            self._reject("transfer_timeout", f"no chunk for {self.ucfg.transfer_timeout_s:g} s "
                         f"({self.store.received()} of {self.offer.chunks} held)")
            return
        self._request_missing()

    def _request_missing(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.offer is None or (not force and now - self._last_request < self.ucfg.request_every_s):
            return
        missing = self.store.missing(64)
        if missing:
            self._last_request = now
            self.send("model/request", {"schema": SCHEMA, "update_id": self.offer.update_id, "missing": missing}, False)

    # -- verification, shadow, activation --------------------------------------------------------
    def _complete(self) -> None:
        offer = self.offer
        self._report("verifying")
        try:
            staging = self.store.assemble_file()
            crash_point("update:assembled")
            scorer = verify_candidate(staging, self.trusted, self.cfg)
            crash_point("update:verified")
        except (TransferError, UpdateRejected) as exc:
            self._reject(exc.reason, exc.message)
            return
        log.info("model update %s verified: %s (signed, hashes, tensors, self-test)", offer.update_id, scorer.version)
        if offer.mode == "shadow":
            self.candidate, self.candidate_path = scorer, staging
            self._cand_windows = Windower(scorer.window_length, scorer.hop, self.cfg.shaft.rpm, scorer.window_reference_fs)
            self.shadow = ShadowGate(self.ucfg.shadow_windows, self.ucfg.shadow_min_agreement,
                                     self.ucfg.shadow_max_extra_alert_rate, self.ucfg.shadow_max_latency_ratio,
                                     compare_labels=tuple(getattr(self.agent.model, "labels", ())) == tuple(scorer.labels))
            self._report("shadow", figures={"windows": 0})
        else:
            self._activate(staging, scorer)

    def _activate(self, staging: Path, scorer: Any) -> None:
        offer = self.offer
        self._report("activating")
        try:
            installed = self.models.install(staging)
            if self.models.current() is None and self.agent.active_pack_path:
                # the first update over a pack from the config: keep that one as "previous"
                self.models.activate(self.models.install(Path(self.agent.active_pack_path)))
            self.models.activate(installed)
        except OSError as exc:
            self._reject("activation", f"cannot write the pack: {exc}")
            return
        prev_rate, prev_spw = self.recent.rate, self.recent.seconds_per_window
        self.agent.use_scorer(scorer, str(installed))
        self.recent = RecentHits(self.recent._hits.maxlen)
        self.health = HealthCheck(self.ucfg.health_windows, self.ucfg.health_max_alert_rate,
                                  self.ucfg.health_max_latency_ratio, prev_rate, prev_spw)
        log.info("model update %s active: %s; health check over %d windows", offer.update_id, scorer.version,
                 self.ucfg.health_windows)
        self._report("active")
        # until the check ends, a restart resumes it (a crash before this line: the transfer's
        # files are still whole, so the update is verified and activated again at start)
        self._save_health(installed, prev_rate, prev_spw)
        self.store.finish()
        crash_point("update:health_running")

    def _reject(self, reason: str, detail: str, update_id: str | None = None) -> None:
        uid = update_id or (self.offer.update_id if self.offer else "")
        log.error("model update %s rejected (%s): %s; the running model %s stays", uid, reason, detail,
                  self.agent.model.version)
        self.counts["rejected"] += 1
        figures = self.shadow.figures() if self.shadow is not None else {}
        self._report("rejected", reason, detail, figures)
        self._end(uid)

    def _end(self, update_id: str) -> None:
        if update_id:
            self._finish(update_id)
        self._drop_health_record()
        try:
            self.store.abandon()
        except OSError as exc:
            log.warning("cannot remove the update's files: %s", exc)
        self.offer = None
        self.shadow = self.candidate = self.candidate_path = None
        self.health = None

    def _abandon_running(self, why: str) -> None:
        if self.shadow is not None:
            self._reject("superseded", why)
        elif self.health is not None:
            self._end(self.progress.get("update_id", ""))

    # -- live windows ----------------------------------------------------------------------------
    def observe(self, windows: list, preds: list, seconds: float, extractor_feats: Any = None) -> None:
        """A scored batch of the active model: ``windows`` and their predictions, ``seconds``
        of features + model on ``self.clock``. Feeds the health yardstick, the shadow gate (scoring the
        candidate on the same windows) and the health check."""
        if not preds:
            return
        model = self.agent.model
        hits = [hit_of(model, p) for p in preds if p.label != "learning"]
        self.recent.add(hits, seconds)
        if self.shadow is not None:
            self._shadow_batch(windows, preds, seconds)
        elif self.health is not None:
            self.health.add(model, preds, seconds)
            self._judge_health()

    def error(self) -> None:
        """A processing error while a health check runs counts against the new model."""
        if self.health is not None:
            self.health.add_error()
            self._judge_health()

    def _shadow_batch(self, windows: list, preds: list, seconds: float) -> None:
        gate, cand = self.shadow, self.candidate
        gate.add_active(self.agent.model, preds, seconds)
        # windows the candidate would have cut the same way (else it is not scored on them)
        same = [w for w in windows if len(w.samples) == self._cand_windows.length_at(w.fs)[0]]
        if same:
            t = self.clock()
            try:
                feats = cand.extractor.extract(same)
                cpreds = cand.predict(feats, [w.channel for w in same])
            except Exception as exc:  # noqa: BLE001 - a candidate that fails is rejected, not the agent
                log.exception("shadow candidate failed on a batch")
                self._reject("shadow_error", f"{type(exc).__name__}: {exc}")
                return
            by_window = {id(w): p for w, p in zip(windows, preds)}
            gate.add_candidate(cand, cpreds, self.clock() - t, [by_window.get(id(w)) for w in same])
        if gate.done:
            passed, why = gate.verdict()
            figures = gate.figures()
            if not passed:
                self._reject("shadow_gate", why)
                return
            log.info("shadow gate passed for %s: %s", cand.version, figures)
            self.shadow = None
            self._report("promoted", figures=figures)
            self._activate(self.candidate_path, cand)
        elif gate.cand_n and gate.cand_n % max(1, gate.windows // 5) < len(same):
            self._report("shadow", figures=gate.figures())

    def _judge_health(self) -> None:
        hc = self.health
        problem = hc.problem()
        if problem is not None:
            self._rollback(problem, hc.figures())
        elif hc.passed:
            figures = hc.figures()
            self.health = None
            self.counts["healthy"] += 1
            log.info("model %s healthy after %d windows: %s", self.agent.model.version, hc.n, figures)
            self._report("healthy", figures=figures)
            self._end(self.progress.get("update_id", ""))
            self.models.gc()

    def _rollback(self, why: str, figures: dict) -> None:
        bad = self.agent.model.version
        log.error("model %s rolled back: %s", bad, why)
        self.health = None
        back = self.models.rollback()
        reason = self.agent.load_pack(str(back)) if back is not None else "no previous pack"
        if back is None or reason is not None:
            # the pack before: gone or refused. Keep scoring with what runs, say so loudly.
            log.critical("rollback from %s failed (%s); it keeps running", bad, reason)
        self.counts["rolled_back"] += 1
        self._report("rolled_back", "health_check", why, figures)
        self._end(self.progress.get("update_id", ""))


def _peek_update_id(payload: bytes) -> str | None:
    """The update id of an offer that failed its checks, when it has a well-formed one (so the
    rejection can name it)."""
    try:
        uid = json.loads(payload.decode("utf-8")).get("update_id")
    except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
        return None
    return uid if isinstance(uid, str) and re.fullmatch(r"[0-9a-f]{16}", uid) else None


