"""A tiny systemd notification client (sd_notify(3)), with no dependency beyond the stdlib.

systemd runs the daemon as ``Type=notify`` (or ``notify-reload``) and hands it
``$NOTIFY_SOCKET``: an AF_UNIX datagram socket, a path, or a name in the abstract namespace
when it starts with ``@``. The agent sends newline-separated ``KEY=VALUE`` assignments:

* ``READY=1`` (with ``STATUS=...``) once the processing thread has run its first round;
* ``WATCHDOG=1`` from the processing loop every half of ``$WATCHDOG_USEC`` (only when
  ``$WATCHDOG_PID`` is unset or is this process): a stuck pipeline stops pinging and systemd
  restarts the service (``WatchdogSec=``). Never from a timer thread of its own: that would
  keep pinging for a dead pipeline;
* ``RELOADING=1`` (with ``MONOTONIC_USEC=``, as ``Type=notify-reload`` requires) before a
  SIGHUP reload and ``READY=1`` after it;
* ``STOPPING=1`` when the stop begins.

Without ``$NOTIFY_SOCKET`` (not under systemd) every call is a no-op. A send that fails is
logged once and otherwise ignored: notification must never stop the agent.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _address(value: str) -> str | bytes:
    """The socket address of ``$NOTIFY_SOCKET``: '@name' is the abstract name '\\0name'."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between two WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when the
    watchdog is off or meant for another process ($WATCHDOG_PID)."""
    usec = environ.get("WATCHDOG_USEC", "").strip()
    if not usec:
        return None
    want_pid = environ.get("WATCHDOG_PID", "").strip()
    if want_pid:
        try:
            if int(want_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class Notifier:
    """sd_notify for one process. ``Notifier()`` reads the environment."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = _address(raw) if raw and raw not in ("@",) else None
        self.interval = watchdog_interval(env) if self.address is not None else None
        self._sock: socket.socket | None = None
        self._failed = False
        self._last_ping = 0.0
        self.sent = 0  # datagrams sent
        self.pings = 0  # WATCHDOG=1 among them

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; False when not under systemd or
        the send failed (logged once)."""
        if self.address is None or not assignments:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("systemd notification to %r failed: %s (further failures are not logged)",
                            self.address, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def reloading(self, status: str = "reloading the configuration") -> bool:
        mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={mono}", f"STATUS={_one_line(status)}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={_one_line(status)}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={_one_line(status)}")

    def watchdog(self, now: float | None = None) -> bool:
        """WATCHDOG=1 when half the watchdog period has passed since the last ping; call it
        from the loop whose liveness it vouches for."""
        if self.interval is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_ping < self.interval:
            return False
        self._last_ping = now
        if self.notify("WATCHDOG=1"):
            self.pings += 1
            return True
        return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:200]
