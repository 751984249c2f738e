"""``edge-agent run``: load and validate the config once, then run the agent until a signal.

Signals (installed before the agent is built, so a signal during start-up is not lost):

* SIGTERM / SIGINT: the stop event is set; the agent finishes the batch in hand, drains
  (Agent.run: sources, then the publisher's in-flight messages, the retained ``offline``
  goodbye and a clean DISCONNECT, bounded to ~5 s), the outbox is closed (held messages
  committed, WAL checkpointed) and we exit 0. A second signal while draining is noted and
  changes nothing (the drain is bounded already).
* SIGHUP: a flag; the processing thread reloads the safe parts of the config between two
  batches (reload.py), with RELOADING=1 / READY=1 to systemd around it.

The handlers only set flags: they run on the main thread, which is the processing thread,
between two bytecodes of whatever it is doing, so they must not log (a write to stdout
re-entered from a handler raises), take locks the interrupted code may hold, or reconfigure
anything. The processing loop acts on the flags (:class:`Supervisor`, Agent.supervisor).

systemd (``Type=notify``): READY=1 after the first processing round, WATCHDOG=1 from the
processing loop every half of $WATCHDOG_USEC, STOPPING=1 when the stop begins (sd_notify.py).

Start-up problems (bad config, missing build, unwritable storage) are one line and exit 2.

Test hook: with ``EDGE_AGENT_TEST_STALL_AFTER_S=A`` (and ``EDGE_AGENT_TEST_STALL_S=S``,
default 5) the processing loop sleeps S seconds once, A seconds after its first round: a
stuck pipeline, whose watchdog pings must stop (tests/test_sd_notify.py). Unset, nothing.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger("edge_agent.daemon")
STALL_AFTER_ENV = "EDGE_AGENT_TEST_STALL_AFTER_S"
STALL_ENV = "EDGE_AGENT_TEST_STALL_S"


class Signals:
    """What the handlers saw; only flags and counters, read by the processing thread."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.stop_signals: list[str] = []  # names, in order (the second and later: while stopping)
        self.reload_requested = False
        self.hups = 0

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum, frame) -> None:
        self.stop_signals.append(signal.Signals(signum).name)
        if not self.stop.is_set():  # Event.set takes a lock: once is enough
            self.stop.set()

    def _on_hup(self, signum, frame) -> None:
        self.hups += 1
        self.reload_requested = True


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (kept for callers that run an Agent themselves)."""
    def _handler(signum, frame):
        if not stop.is_set():
            stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


class Supervisor:
    """The daemon's hooks in the processing loop (Agent.supervisor): reload on SIGHUP and
    notify systemd, both on the processing thread."""

    def __init__(self, agent, config_path: str, signals: Signals, notifier) -> None:
        self.agent = agent
        self.config_path = config_path
        self.signals = signals
        self.notifier = notifier
        self.rounds = 0
        self._started = time.monotonic()
        self._stall_at, self._stall_s = _stall_from_env()

    def _status(self) -> str:
        a = self.agent
        return (f"running: {a.topics.base}, model {a.model.version}, {len(a.sources)} source(s), "
                f"{a.windows_total} windows, {a.reloads.ok} reload(s)")

    def tick(self) -> bool:
        """Once per processing round. True when the config was reloaded."""
        self.rounds += 1
        if self.rounds == 1:
            self._started = time.monotonic()
            self.notifier.ready(self._status())
            log.info("running%s", " (systemd notified: READY=1)" if self.notifier.enabled else "")
        if self._stall_at is not None and time.monotonic() - self._started >= self._stall_at:
            self._stall_at = None
            log.warning("test hook %s: the processing loop sleeps %g s", STALL_AFTER_ENV, self._stall_s)
            time.sleep(self._stall_s)
        reloaded = False
        if self.signals.reload_requested:
            self.signals.reload_requested = False
            reloaded = self.reload()
        self.notifier.watchdog()
        return reloaded

    def reload(self) -> bool:
        from edge_agent.reload import reload_config

        log.info("SIGHUP received: reloading %s", self.config_path)
        self.notifier.reloading(f"reloading {self.config_path}")
        result = reload_config(self.agent, self.config_path)
        status = self._status()
        if result.get("result") != "ok":
            status += "; last reload refused (see the log)"
        elif result.get("needs_restart"):
            status += "; needs a restart: " + ", ".join(result["needs_restart"])
        self.notifier.ready(status)
        return True

    def stopping(self) -> None:
        names = self.signals.stop_signals
        why = f"{names[0]} received" if names else "stop requested"
        log.info("%s: finishing the current work and stopping", why)
        self.notifier.stopping(f"stopping ({why})")


def _stall_from_env() -> tuple[float | None, float]:
    try:
        after = float(os.environ[STALL_AFTER_ENV]) if os.environ.get(STALL_AFTER_ENV) else None
        return after, float(os.environ.get(STALL_ENV) or 5.0)
    except ValueError:
        return None, 0.0


def run_daemon(config_path: str) -> int:
    from edge_agent.config import ConfigError, load_config

    signals = Signals()
    signals.install()  # before the (slow) start-up: a SIGTERM then still ends in exit 0
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    from edge_agent.logs import setup_logging
    from edge_agent.sd_notify import Notifier

    setup_logging(cfg.logging.level, cfg.logging.format)
    agent = build_agent_or_report(cfg)
    if agent is None:
        return 2
    notifier = Notifier()
    agent.supervisor = Supervisor(agent, config_path, signals, notifier)
    agent.run(signals.stop)
    _close_stores(agent)
    extra = signals.stop_signals[1:]
    if extra:
        log.info("%s received again while stopping: ignored (the stop is bounded)", ", ".join(extra))
    notifier.close()
    return 0


def _close_stores(agent) -> None:
    """Commit what the outbox holds in memory and checkpoint it; close the alert log. Only
    when the threads that use them have ended (a publisher past its budget keeps them: the
    outbox is durable at every commit anyway)."""
    if any(t.is_alive() for t in agent._threads):
        log.warning("a thread did not stop in time (%s); the outbox is left open, its commits are durable",
                    ", ".join(t.name for t in agent._threads if t.is_alive()))
        return
    try:
        agent.outbox.close()
        if agent.alert_log is not None:
            agent.alert_log.close()
    except Exception:  # noqa: BLE001 - exiting: say it, exit 0 (every commit was durable already)
        log.exception("closing the outbox / alert log failed")


def build_agent_or_report(cfg):
    """The Agent for ``cfg``, or None after one clear line on stderr about why not."""
    from edge_agent.native import NativeExtensionMissing

    try:
        from edge_agent.agent import Agent
        from edge_agent.errors import StartupError

        try:
            return Agent(cfg)
        except StartupError as exc:
            print(f"edge-agent: cannot start: {exc}", file=sys.stderr)
    except NativeExtensionMissing as exc:
        print(f"edge-agent: cannot start: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"edge-agent: cannot start: {exc}", file=sys.stderr)
    return None
