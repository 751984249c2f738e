"""A recording's feature vectors computed ahead in a second process, while this one scores.

Why: ``edge-agent replay`` is a batch job, and about half of it is the feature vector (the
FFTs and the compiled per-bin loops); the other half (the model, the alert rules, the drift
monitor, the output) is Python that holds the GIL. Threads did not overlap the two: a
second thread extracting the next batch made a 1000 s replay no faster, or slower, because
every numpy call between the GIL-free parts waits for the GIL (benches/RESULTS.md, 2026-12-03).
A forked process has its own interpreter: measured, the processing of a 1000 s file went from
0.83-0.91 s to 0.47-0.53 s on the 2-core VM.

How: forked as soon as the recording is mapped, from the pack's manifest and the
configuration's schema defaults (pack_scorer.pack_windowing, config.schema_defaults), so it
computes while the replay checks the file, imports the rest and loads the model. The worker
walks the same batches of blocks as the replay, cuts them into windows with its own
:class:`~edge_agent.windower.Windower` (the pack's length, hop and reference rate, the
config's default speed), computes each batch's spectral features with its own
:class:`~edge_agent.features.FeatureExtractor` (the pack's spec) and sends
``(keys, features)`` down a pipe; the pipe's buffer bounds how far ahead it runs. The
time-domain block (~4 us a window) is left to this process, which fills it in
:meth:`FeaturesAhead.take`: the worker was the slower of the two (this process waited
25-50 ms for it in a 1000 s replay), so the split evens them out. Once the agent is built,
:meth:`FeaturesAhead.serves` checks that its windower and extractor are those. The agent
asks for the rows of the windows it scores (:meth:`FeaturesAhead.take`); a row is matched
to its window by (channel, first sequence number, length), so a window never gets another
window's vector, and windows the agent does not score (a flagged window with quality action
``drop``) are skipped. The worker's code and inputs are the agent's own, so the rows are
the ones the agent would compute (tests/test_feature_worker.py compares whole replays).

Anything unexpected (the worker gone or silent, a window it did not send, another feature
spec) and :meth:`take` answers None: the agent computes that batch itself and every later
one (:attr:`FeaturesAhead.stopped` says why; the replay summary reports it). Nothing is lost.

Only where it can help and is safe: a ``fork`` start method (Linux), at least two usable
cores, and no other Python thread running (a fork copies only the calling thread, so a lock
another thread held would stay held in the child). The fork comes before the interpreter
backend and SQLite are loaded, so the child holds neither.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from edge_agent.features import FeatureExtractor, FeatureSpec, time_features_into
from edge_agent.window import SampleBlock, Window
from edge_agent.windower import Windower

log = logging.getLogger(__name__)

WAIT_S = 10.0  # longest wait for the worker's next batch (one batch takes ~10 ms) before computing it here
PENDING_MAX = 16384  # rows held for windows not asked for yet, before the old ones are dropped

Key = tuple[str, int, int]  # (channel, seq_first, length): one window


def _key(w: Window) -> Key:
    return (w.channel, w.seq_first, len(w.samples))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def why_not() -> str | None:
    """Why no worker can be started here, or None when one can."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return "no fork on this platform"
    if usable_cores() < 2:
        return "one usable core"
    if threading.active_count() > 1:
        return "other threads are running"
    return None


class FeaturesAhead:
    """The parent's end: start with :meth:`start`, ask with :meth:`take`, end with :meth:`close`."""

    def __init__(self, process: Any, conn: Any, windowing: tuple, spec: FeatureSpec, n_features: int) -> None:
        self._process = process
        self._conn = conn
        self.windowing = windowing  # (length, hop, default rpm, reference rate) of its Windower
        self.spec = spec
        self._n = n_features
        self._pending: dict[Key, np.ndarray] = {}
        self._taken: dict[str, int] = {}  # channel -> last seq_first handed out
        self.rows_taken = 0
        self.stopped: str | None = None  # why the agent computes the features itself now

    @classmethod
    def start(cls, batches: Callable[[], Iterable[Sequence[SampleBlock]]], windower: Windower,
              extractor: FeatureExtractor) -> FeaturesAhead | None:
        """Fork the worker over ``batches()`` (a fresh iterator of the blocks the agent will
        be given, batch by batch); None when :func:`why_not` says no. Flush the standard
        streams first: the child inherits their buffers."""
        if why_not() is not None:
            return None
        ctx = multiprocessing.get_context("fork")
        receive, send = ctx.Pipe(duplex=False)
        windowing = _windowing(windower)
        process = ctx.Process(target=_work, args=(send, batches, windowing, extractor.spec),
                              name="edge-agent-features", daemon=True)
        process.start()
        send.close()  # the child's copy is the only writer: its exit is our EOF
        return cls(process, receive, windowing, extractor.spec, len(extractor.names))

    def serves(self, windower: Windower, extractor: FeatureExtractor) -> bool:
        """Whether its windows and features are those of this windower and extractor."""
        return _windowing(windower) == self.windowing and extractor.spec == self.spec

    def take(self, windows: Sequence[Window], spec: FeatureSpec) -> np.ndarray | None:
        """The feature rows of ``windows`` (in order), or None: compute them yourself."""
        if self.stopped is not None:
            return None
        if spec != self.spec:
            return self._stop("the feature spec changed (another model pack)")
        out = np.empty((len(windows), self._n), dtype=np.float64)
        for i, w in enumerate(windows):
            key = _key(w)
            while (row := self._pending.pop(key, None)) is None:
                if not self._receive(key):
                    return None
            out[i] = row
            self._taken[key[0]] = key[1]
        time_features_into(windows, out)  # the worker leaves them to this process (module docstring)
        self.rows_taken += len(windows)
        if len(self._pending) > PENDING_MAX:  # rows of windows that were not scored
            self._pending = {k: v for k, v in self._pending.items() if k[1] > self._taken.get(k[0], -1)}
        return out

    def _receive(self, wanted: Key) -> bool:
        try:
            if not self._conn.poll(WAIT_S):
                self._stop(f"no batch from the worker in {WAIT_S:g} s")
                return False
            keys, feats = self._conn.recv()
        except (EOFError, OSError):
            self._process.join(1.0)
            code = self._process.exitcode
            self._stop(f"the worker ended (exit code {code}) before sending window {wanted[1]} of {wanted[0]}")
            return False
        if feats.shape != (len(keys), self._n):
            self._stop(f"the worker sent features of shape {feats.shape} for {len(keys)} windows")
            return False
        self._pending.update(zip(keys, feats))
        # a channel's windows come in order: once the worker is past the wanted one, it never comes
        if wanted not in self._pending and any(k[0] == wanted[0] and k[1] > wanted[1] for k in keys):
            self._stop(f"the worker never sent window {wanted[1]} of {wanted[0]} (its windows differ)")
            return False
        return True

    def _stop(self, why: str) -> None:
        self.stopped = why
        log.warning("feature worker stopped: %s; the features are computed in this process from here", why)
        self.close()

    def close(self) -> None:
        """End the worker (it may still be running ahead) and wait for it."""
        self._pending.clear()
        try:
            self._conn.close()
        except OSError:
            pass
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(5.0)


def _windowing(w: Windower) -> tuple:
    return (w.length, w.hop, w.default_rpm, w.reference_fs)


def _work(conn: Any, batches: Callable[[], Iterable[Sequence[SampleBlock]]], windowing: tuple,
          spec: FeatureSpec) -> None:
    """The worker: every batch's windows and their features down ``conn`` until the end or
    until the parent stops listening."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; its exit ends us
    windower = Windower(*windowing)
    extractor = FeatureExtractor(spec)
    try:
        for blocks in batches():
            windows: list[Window] = []
            for b in blocks:
                try:
                    windows.extend(windower.push(b))
                except ValueError:  # the agent drops (and counts) the same block
                    continue
            if windows:
                conn.send(([_key(w) for w in windows], extractor.extract(windows, time_domain=False)))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent closed its end: it needs no more
    except Exception as exc:  # noqa: BLE001 - one line, not a child's traceback on the user's terminal
        print(f"edge-agent: feature worker failed ({exc!r}); the features are computed in the main process",
              file=sys.stderr, flush=True)
        os._exit(1)  # the parent sees the pipe close and the exit code, and carries on
    finally:
        conn.close()
