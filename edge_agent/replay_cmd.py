"""``edge-agent replay FILE [--fs HZ] [--rpm RPM] [--model PACK] [--jsonl]``: the daemon's own
pipeline on a recording (contract: /work/shared/CONTRACT.md, "Replay").

The pipeline is truly the daemon's: an :class:`edge_agent.agent.Agent` built from the
default config with the broker disabled, no sources, storage in a temporary directory and
``[model] pack`` set to the pack, fed the recording's SampleBlocks (as the replay source cuts
them) through :meth:`Agent.process_blocks`: the windower with the pack's window length and
hop, the data-quality checks, the feature extractor, the pack and the alert rules.

Output, per analysed (scored) window, in time order:

* ``--jsonl``: one JSON object per line on stdout, exactly
  ``{"t_start", "label", "scores", "anomaly_score", "alert"}``; ``t_start`` is seconds from
  the start of the recording, ``label`` the pack's top class, ``alert`` whether the window is
  a hit of the daemon's alert rules (:meth:`PackScorer.hit`: a confident fault label or an
  anomaly score above the pack's threshold) and is not flagged by the data-quality checks
  (a flagged window never raises). The daemon raises an alert message once k of the last
  n windows are hits; the summary reports those too.
* otherwise a human table on stdout.

Speed (issue #5: 10x a textbook NumPy/SciPy pipeline; benches/bench_replay.py): an .npz
signal stored uncompressed is memory-mapped instead of read (recordings.py); the throwaway
storage is in memory when the machine has /dev/shm (no fsync per alert); and on two or more
cores a recording of four batches or more gets a feature worker (feature_worker.py), a
forked process computing the feature vectors ahead while this one scores, matched to the
agent's windows, the output unchanged. It forks as soon as the recording is mapped: the
file's CRC-32 and non-finite checks run in this process meanwhile (a file that fails them
ends the worker and the replay, with nothing written to stdout). ``--serial`` keeps
everything in this process.

Progress (about once a second) and the closing summary (windows per label, alert windows,
alerts raised, data-quality flags, time, windows/s) go to stderr. Every problem with the
file, the pack or the arguments is one line on stderr and exit 2.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import TextIO

EXIT_OK = 0
EXIT_USAGE = 2
# Samples per channel per block, and blocks per process_blocks call: 256 k samples of each
# channel per call, as the daemon's processing loop takes 64 of the replay source's 4096-sample
# blocks. Fewer, larger blocks than the source's: the windows are the same, the per-block cost less.
BLOCK = 16384
BATCH_BLOCKS = 16
WORKER_MIN_BATCHES = 4  # a shorter recording is done before a feature worker would pay off
PROGRESS_EVERY_S = 1.0
SCRATCH_DIR = Path("/dev/shm")
DEFAULT_PACK = Path(__file__).resolve().parent.parent / "models" / "default.pack"


def _fail(msg: str) -> int:
    print(f"edge-agent replay: {msg}", file=sys.stderr)
    return EXIT_USAGE


def run_replay(file: str, fs: float | None = None, rpm: float | None = None, model: str | None = None,
               jsonl: bool = False, out: TextIO | None = None, err: TextIO | None = None,
               serial: bool = False) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    from edge_agent.errors import StartupError
    from edge_agent.recordings import load_recording

    if model is None:
        if not DEFAULT_PACK.is_file():
            return _fail(f"no model pack: the default {DEFAULT_PACK} does not exist; give one with --model PACK")
        model = str(DEFAULT_PACK)
    checks: list = []  # the CRC and the non-finite check: run once the worker has started
    ahead = None
    try:
        rec = load_recording(file, fs=fs, rpm=rpm, mapped=True, deferred=checks)
        # the worker starts as soon as the recording is mapped: it computes while this process
        # checks the file, imports the rest and loads the model (and forks with no threads yet)
        ahead = None if serial else _start_worker(rec, str(model), out, err)
        for check in checks:
            check()
    except StartupError as exc:  # RecordingError
        if ahead is not None:
            ahead.close()
        return _fail(str(exc))
    except MemoryError:
        if ahead is not None:
            ahead.close()
        return _fail(f"recording {file}: too large to load into memory")

    from edge_agent.config import default_config

    edge_log = logging.getLogger("edge_agent")
    old_level = edge_log.level
    edge_log.setLevel(logging.ERROR)  # alert and quality lines would drown the progress; the summary has them
    try:
        from edge_agent.alert_log import EVIDENCE_MAX_MB

        # room for a full outbox and the alert log's evidence, twice over
        scratch = _scratch_dir(need_mb=2 * (default_config().storage.outbox_max_mb + EVIDENCE_MAX_MB))
        with tempfile.TemporaryDirectory(prefix="edge-agent-replay-", dir=scratch) as tmp:
            cfg = default_config(storage={"dir": tmp}, broker={"enabled": False})
            cfg = replace(cfg, sources=(), model=replace(cfg.model, pack=str(model)))
            from edge_agent.agent import Agent

            try:
                agent = Agent(cfg)
            except StartupError as exc:
                return _fail(str(exc))
            if ahead is not None and not ahead.serves(agent.windower, agent.extractor):
                ahead.close()  # cannot happen with the same pack and config; computed here then
                ahead = None
            agent.features_ahead = ahead
            scorer = agent.model
            length, hop = agent.windower.length_at(rec.fs)
            print(f"replay: {rec.source_desc}; model {scorer.version} ({scorer.backend}), window "
                  f"{length} hop {hop} at {rec.fs:g} Hz", file=err)
            if rec.rpm is None:
                print(f"replay: the file gives no shaft speed: assuming {cfg.shaft.rpm:g} rpm (give --rpm RPM)", file=err)
            if scorer.fs_range and not scorer.fs_range[0] <= rec.fs <= scorer.fs_range[1]:
                print(f"replay: warning: {rec.fs:g} Hz is outside the pack's sample-rate range "
                      f"{scorer.fs_range[0]:g}-{scorer.fs_range[1]:g} Hz", file=err)
            if rec.n_samples < length:
                print(f"replay: warning: {rec.n_samples} samples, shorter than one window ({length}): "
                      "nothing to analyse", file=err)
            return _replay(agent, rec, jsonl, out, err, ahead)
    finally:
        if ahead is not None:
            ahead.close()
        edge_log.setLevel(old_level)


def _scratch_dir(need_mb: float) -> str | None:
    """Where the replay's throwaway storage goes (the outbox and the alert log its alert rules
    write, deleted at exit): memory (/dev/shm) when the machine has it with room for
    ``need_mb``, else the temporary directory. Nothing there needs to survive a power cut, and
    on a disk every alert paid an fsync: 0.12 s of a 1000 s replay's ~0.7 s against 0.05 s in
    memory (benches/RESULTS.md). A container's /dev/shm is often 64 MB: too small, then."""
    try:
        st = os.statvfs(SCRATCH_DIR)
    except OSError:
        return None
    room_mb = st.f_bavail * st.f_frsize / 2**20
    return str(SCRATCH_DIR) if room_mb >= need_mb and os.access(SCRATCH_DIR, os.W_OK | os.X_OK) else None


def _num(v: float, digits: int = 4) -> str:
    """A float rounded to ``digits`` decimals as JSON writes it (NaN/Inf, which JSON has
    not, as null)."""
    v = round(v, digits)
    return repr(v) if v == v and v not in (float("inf"), float("-inf")) else "null"


def _batches(rec) -> Iterator[list]:
    """The recording's blocks, BLOCK samples a channel each, BATCH_BLOCKS at a time: what the
    agent is fed, and what the feature worker walks."""
    from edge_agent.window import SampleBlock

    names = {ch: f"replay.{ch}" for ch in rec.channels}
    n = rec.n_samples
    batch: list = []
    for start in range(0, n, BLOCK):
        end = min(n, start + BLOCK)
        t0_us = round(start * 1e6 / rec.fs)
        for ch, x in rec.channels.items():
            batch.append(SampleBlock(names[ch], x[start:end], rec.fs, t0_us, start, rec.rpm, rec.full_scale))
        if len(batch) >= BATCH_BLOCKS or end == n:
            yield batch
            batch = []


def _start_worker(rec, model: str, out: TextIO, err: TextIO):
    """The feature worker (feature_worker.py) for a recording of at least WORKER_MIN_BATCHES
    batches, set up from the pack's manifest and the configuration's defaults (the replay's
    configuration is the default one: read from the schema, so the configuration classes
    need not be made first); None when it does not run (a short recording, one core, a pack
    the agent will refuse anyway). The agent checks it computes what it would compute
    (FeaturesAhead.serves)."""
    if rec.n_samples * len(rec.channels) < WORKER_MIN_BATCHES * BATCH_BLOCKS * BLOCK:
        return None
    from edge_agent.feature_worker import FeaturesAhead, why_not

    if why_not() is not None:
        return None
    from edge_agent.config import schema_defaults
    from edge_agent.features import FeatureExtractor
    from edge_agent.pack import PackError, read_pack
    from edge_agent.pack_scorer import pack_windowing
    from edge_agent.windower import Windower

    cfg = SimpleNamespace(**{section: schema_defaults(section) for section in ("window", "shaft", "bearing", "features")})
    try:
        w = pack_windowing(read_pack(model), cfg, model)
    except (PackError, OSError, KeyError, TypeError, ValueError):
        return None  # the agent says what is wrong with it
    for stream in {out, err, sys.stdout, sys.stderr}:  # the child inherits unwritten buffers: leave none
        stream.flush()
    windower = Windower(w.window_length, w.hop, cfg.shaft.rpm, w.window_reference_fs)
    return FeaturesAhead.start(lambda: _batches(rec), windower, FeatureExtractor(w.spec))


def _replay(agent, rec, jsonl: bool, out: TextIO, err: TextIO, ahead) -> int:
    scorer = agent.model
    multi = len(rec.channels) > 1
    labels: Counter[str] = Counter()
    alert_windows: Counter[str] = Counter()
    flagged = unscored = 0
    windows = 0
    t0 = time.perf_counter()
    next_progress = t0 + PROGRESS_EVERY_S
    if not jsonl:
        ch_col = f"{'channel':<12} " if multi else ""
        print(f"{'t_start_s':>10} {ch_col}{'label':<12} {'p':>5} {'anomaly':>8}  alert", file=out)

    quoted = {label: json.dumps(label) for label in scorer.labels}
    # an int8 model's probabilities take at most 256 values per label: each formatted once
    score_text = functools.lru_cache(maxsize=4096)(_num)

    def emit(results) -> None:
        nonlocal flagged, unscored, windows
        results = sorted(results, key=lambda r: (r.window.t_start_us, r.window.channel))
        lines = []
        for r in results:
            if r.prediction is None:
                unscored += 1
                continue
            p, w = r.prediction, r.window
            if w.flags:
                flagged += 1
            kind = None if w.flags else scorer.hit(p)
            windows += 1
            labels[p.label] += 1
            if kind:
                alert_windows[kind] += 1
            t_start = round(w.t_start_us / 1e6, 6)
            if jsonl:  # json.dumps of the contract's object, written out: 3x faster per window
                scores = ", ".join([f"{quoted[k]}: {score_text(v)}" for k, v in p.scores.items()])
                lines.append(f'{{"t_start": {t_start!r}, "label": {quoted[p.label]}, "scores": {{{scores}}}, '
                             f'"anomaly_score": {_num(p.anomaly_score)}, "alert": {"true" if kind else "false"}}}')
            else:
                ch = f"{w.channel.removeprefix('replay.'):<12} " if multi else ""
                flag = f" (flagged: {','.join(sorted(w.flags))})" if w.flags else ""
                lines.append(f"{t_start:>10.3f} {ch}{p.label:<12} {p.scores.get(p.label, 0.0):>5.2f} "
                             f"{p.anomaly_score:>8.2f}  {kind.upper() if kind else '-'}{flag}")
        if lines:
            out.write("\n".join(lines) + "\n")

    n = rec.n_samples
    for batch in _batches(rec):
        emit(agent.process_blocks(batch))
        now = time.perf_counter()
        if now >= next_progress:
            next_progress = now + PROGRESS_EVERY_S
            out.flush()
            end = batch[-1].seq + len(batch[-1].samples)
            print(f"replay: {end / rec.fs:.1f} of {rec.duration_s:.1f} s ({100 * end / n:.0f}%), {windows} windows, "
                  f"{windows / (now - t0):.0f} windows/s", file=err, flush=True)
    out.flush()
    elapsed = time.perf_counter() - t0
    _summary(agent, rec, labels, alert_windows, flagged, unscored, windows, elapsed, err, ahead)
    return EXIT_OK


def _summary(agent, rec, labels, alert_windows, flagged, unscored, windows, elapsed, err, ahead=None) -> None:
    scorer = agent.model
    p = lambda s="": print(s, file=err)  # noqa: E731
    p(f"replay summary: {Path(rec.source_desc.split(':')[0]).name}, {rec.duration_s:.1f} s, model {scorer.version}")
    p(f"  {'label':<14} {'windows':>8} {'share':>7}")
    for label in list(scorer.labels) + sorted(set(labels) - set(scorer.labels)):
        k = labels.get(label, 0)
        p(f"  {label:<14} {k:>8} {100 * k / windows if windows else 0:>6.1f}%")
    p(f"  {'total':<14} {windows:>8}")
    kinds = ", ".join(f"{k} {v}" for k, v in alert_windows.most_common()) or "none"
    p(f"  alert windows: {sum(alert_windows.values())} ({kinds}); alerts the daemon raised: {agent.alerts_raised} "
      f"({', '.join(f'{k} {v}' for k, v in agent.alerts_by_type.items()) or 'none'})")
    if flagged or unscored:
        p(f"  data quality: {flagged} window(s) flagged (scored, never alerting), {unscored} not scored")
    if ahead is not None and ahead.stopped is not None:
        p(f"  feature worker: stopped ({ahead.stopped}); {ahead.rows_taken} windows' features came from it, "
          "the rest were computed here")
    elif ahead is not None:
        p(f"  feature worker: {ahead.rows_taken} windows' features computed ahead in a second process (--serial: none)")
    rate = windows / elapsed if elapsed > 0 else 0.0
    p(f"  time: {elapsed:.2f} s, {rate:.0f} windows/s, {rec.duration_s / elapsed if elapsed > 0 else 0:.0f}x real time")
