"""``edge-agent run``: load and validate the config once, then run the agent until a signal.

SIGTERM and SIGINT set the stop event; the agent drains (see Agent.run) and we exit 0.
Start-up problems (bad config, missing build, unwritable storage) are one line and exit 2.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading

log = logging.getLogger("edge_agent.daemon")


def install_stop_signals(stop: threading.Event) -> None:
    def _handler(signum, frame):
        log.info("%s received: finishing the current work and stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


def run_daemon(config_path: str) -> int:
    from edge_agent.config import ConfigError, load_config

    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    from edge_agent.logs import setup_logging

    setup_logging(cfg.logging.level, cfg.logging.format)
    agent = build_agent_or_report(cfg)
    if agent is None:
        return 2
    stop = threading.Event()
    install_stop_signals(stop)
    agent.run(stop)
    return 0


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
