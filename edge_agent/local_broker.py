"""A private, throwaway mosquitto broker on a free loopback port.

Why: `edge-agent demo` and the test suite both need a real MQTT broker that nobody else
uses, on a port that is free right now, with its config, persistence database and log in a
directory we own, and which is gone when we are done. The system broker (Debian starts one
on 1883) is neither private nor ours to restart, so this module starts its own.

Typical use::

    with LocalBroker(Path("/tmp/demo-broker")) as broker:
        client.connect(broker.host, broker.port)
        ...
        broker.restart()   # outage: same port, retained messages survive
        broker.kill()      # crash: SIGKILL, nothing saved since the last autosave

Why ``user root`` when we are root: mosquitto started as root drops privileges to the
``mosquitto`` user (or ``nobody``). That user cannot write a directory we own (pytest's
tmp_path sits under a mode 0700 root directory): with ``log_dest file`` there mosquitto
2.0 refuses to start, and without it the broker runs fine and only fails when it saves its
database at shutdown ("Error saving in-memory database ... Permission denied", exit code
0), so retained messages silently vanish on restart. A private broker has nothing to
protect by dropping privileges, so as root we tell it to stay root (it then logs "Warning:
Mosquitto should not be run as root/administrator", which is expected); as any other user
the ``user`` option has no effect and the broker runs as us.

TLS and login: ``tls=TlsListener(cafile, certfile, keyfile)`` makes the one listener a TLS
listener (by default requiring a client certificate signed by ``cafile``: mutual TLS), and
``password_file`` (made with ``mosquitto_passwd``) turns anonymous access off, so clients
must log in. Both only add lines to the generated config; without them the broker is the
plain, anonymous one it always was::

    tls = TlsListener(ca, server_crt, server_key, require_certificate=True)
    with LocalBroker(tmp / "b", tls=tls, password_file=tmp / "passwd") as broker: ...

Persistence is written by mosquitto on a clean shutdown (SIGTERM, i.e. :meth:`stop` and
:meth:`restart`) and every ``autosave_interval`` seconds (1800 by default); :meth:`kill`
is a crash and loses what was not yet saved. Pass ``extra_conf="autosave_interval 1"`` to
change that.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"
_FALLBACK_PATHS = ("/usr/sbin/mosquitto",)
_LOG_TAIL_LINES = 30
_PORT_RETRIES = 3


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary: first on PATH, then /usr/sbin (not on a user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _FALLBACK_PATHS:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free at the moment of the call.

    Another process may take it before the broker binds it; :meth:`LocalBroker.start`
    retries with a new port in that case when the port was not chosen by the caller.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True, slots=True)
class TlsListener:
    """TLS options of the broker's listener (mosquitto.conf: cafile, certfile, keyfile,
    require_certificate, use_identity_as_username, tls_version).

    ``cafile`` holds the CA certificates the broker trusts for client certificates;
    ``certfile``/``keyfile`` are the broker's own certificate and key (PEM). With
    ``require_certificate`` (the default) a client without a certificate signed by
    ``cafile`` is refused by the TLS layer, before any MQTT packet (in the handshake with
    TLS 1.2, right after it with TLS 1.3). ``tls_version`` is the lowest version accepted
    ("tlsv1.2" or "tlsv1.3").
    """

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = True
    use_identity_as_username: bool = False
    tls_version: str = "tlsv1.2"

    def conf_lines(self) -> list[str]:
        for path in (self.cafile, self.certfile, self.keyfile):
            if "\n" in str(path):
                raise ValueError(f"TLS file path must not contain a newline: {str(path)!r}")
        return [
            f"cafile {self.cafile}",
            f"certfile {self.certfile}",
            f"keyfile {self.keyfile}",
            f"require_certificate {str(self.require_certificate).lower()}",
            f"use_identity_as_username {str(self.use_identity_as_username).lower()}",
            f"tls_version {self.tls_version}",
        ]


class LocalBroker:
    """A mosquitto process of our own, listening on ``host:port`` (127.0.0.1 only).

    Args:
        workdir: directory for ``mosquitto.conf``, ``mosquitto.log``, the broker's
            stdout/stderr (``mosquitto.out``) and the persistence database
            (``mosquitto.db``). Created if missing.
        port: TCP port; ``None`` picks a free one now (see :attr:`port`).
        persistence: keep retained messages, subscriptions and queued QoS>0 messages
            across :meth:`restart`.
        extra_conf: appended verbatim to the generated config (e.g. TLS listeners,
            ``autosave_interval 1``).
        tls: make the listener a TLS listener with these options (:class:`TlsListener`).
        password_file: a mosquitto password file (``mosquitto_passwd``): clients log in.
        allow_anonymous: whether clients without a user name are let in; default: yes,
            unless ``password_file`` is given.

    The process is stopped by :meth:`stop`, by leaving the ``with`` block, and, as a last
    resort, at interpreter exit.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        persistence: bool = True,
        extra_conf: str = "",
        tls: TlsListener | None = None,
        password_file: Path | None = None,
        allow_anonymous: bool | None = None,
    ) -> None:
        self._workdir = Path(workdir)
        self._port_chosen_by_caller = port is not None
        self._port = port if port is not None else free_port()
        self._persistence = persistence
        self._extra_conf = extra_conf
        self._tls = tls
        self._password_file = Path(password_file) if password_file is not None else None
        self._allow_anonymous = password_file is None if allow_anonymous is None else allow_anonymous
        self._proc: subprocess.Popen[bytes] | None = None
        self._has_started = False

    # ---------------------------------------------------------------- properties
    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        """The listening port; fixed once the broker has started (restart keeps it)."""
        return self._port

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def tls(self) -> TlsListener | None:
        """The listener's TLS options, or None for plain MQTT."""
        return self._tls

    @property
    def workdir(self) -> Path:
        return self._workdir

    @property
    def conf_path(self) -> Path:
        return self._workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        """mosquitto's own log (``log_dest file``); appended to across restarts."""
        return self._workdir / "mosquitto.log"

    @property
    def output_path(self) -> Path:
        """The process's stdout/stderr: config errors appear here, before the log opens."""
        return self._workdir / "mosquitto.out"

    # ---------------------------------------------------------------- life cycle
    def start(self, timeout: float = 5.0) -> None:
        """Write the config, start mosquitto and wait until it is serving: its log says
        "running" (listeners bound) and the port accepts a TCP connection. A no-op when
        already running. A port picked by us that was taken meanwhile is replaced by a
        new free one (first start only; a restart keeps its port or fails).

        Raises:
            FileNotFoundError: no mosquitto binary (install it: scripts/ensure-system.sh
                mosquitto).
            RuntimeError: the broker exited or did not listen within ``timeout``; the
                message carries the tail of its log.
        """
        if self.running:
            return
        binary = find_mosquitto()
        if binary is None:
            raise FileNotFoundError(
                "mosquitto is not installed (not on PATH, not /usr/sbin/mosquitto); "
                "install it with `scripts/ensure-system.sh mosquitto` or `apt-get install mosquitto`"
            )
        self._workdir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if (self._port_chosen_by_caller or self._has_started) else _PORT_RETRIES
        for attempt in range(attempts):
            try:
                self._start_once(binary, timeout)
            except _PortTaken:
                if attempt + 1 >= attempts:
                    raise RuntimeError(self._failure_message("port already in use")) from None
                self._port = free_port()
                continue
            self._has_started = True
            atexit.register(self._stop_at_exit)
            return

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (mosquitto saves its persistence database), then SIGKILL after
        ``timeout``. Waits for the process to be gone. Safe to call any number of times."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._forget_process()

    def kill(self) -> None:
        """SIGKILL: a broker crash. Nothing is saved beyond the last autosave."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._forget_process()

    def restart(self, timeout: float = 5.0) -> None:
        """Clean stop, then start again on the same port (an outage of the broker)."""
        self.stop(timeout=timeout)
        self.start(timeout=timeout)

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"LocalBroker({self.host}:{self.port}, {state}, workdir={str(self._workdir)!r})"

    # ---------------------------------------------------------------- internals
    def _config_text(self) -> str:
        lines = [
            "# generated by edge_agent.local_broker: a private broker, overwritten on start",
            f"listener {self._port} {HOST}",
            *(self._tls.conf_lines() if self._tls is not None else ()),
            f"allow_anonymous {str(self._allow_anonymous).lower()}",
            *((f"password_file {self._password_file}",) if self._password_file is not None else ()),
            f"log_dest file {self.log_path}",
            # explicit, so that extra_conf log_type lines add to these instead of replacing
            # the defaults: start() waits for the "running" notice in this log
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
        ]
        if self._persistence:
            lines += [
                "persistence true",
                # trailing slash: older mosquitto concatenates location and file name as is
                f"persistence_location {self._workdir}/",
                "persistence_file mosquitto.db",
            ]
        else:
            lines.append("persistence false")
        if os.geteuid() == 0:
            # see the module docstring: dropping to `mosquitto` breaks persistence and logging
            lines.append("user root")
        text = "\n".join(lines) + "\n"
        if self._extra_conf:
            text += "\n# extra_conf\n" + self._extra_conf.rstrip("\n") + "\n"
        return text

    def _start_once(self, binary: str, timeout: float) -> None:
        if "\n" in str(self._workdir):
            raise ValueError(f"workdir must not contain a newline: {str(self._workdir)!r}")
        self.conf_path.write_text(self._config_text())
        log_size_before = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.output_path, "ab") as out:
            self._proc = subprocess.Popen(
                [binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self._workdir,
                # own session: a Ctrl-C meant for the demo must not kill the broker before
                # the agent has drained; we stop it ourselves.
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._forget_process()
                if self._port_taken_since(log_size_before):
                    raise _PortTaken()
                raise RuntimeError(self._failure_message(f"mosquitto exited with code {code}"))
            # Ready means: mosquitto itself says it is running (its listeners are bound by
            # then) and the port answers. The port alone is not proof: another process
            # may hold it, and mosquitto is about to exit with "Address already in use".
            if self._log_since(log_size_before, " running\n") and _port_accepts(HOST, self._port):
                if self._proc.poll() is None:
                    return
                continue
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    self._failure_message(f"mosquitto did not listen on {HOST}:{self._port} within {timeout} s")
                )
            time.sleep(0.02)

    def _log_since(self, log_offset: int, marker: str) -> bool:
        """Whether ``marker`` appears in the broker log after ``log_offset`` bytes."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(log_offset)
                return marker in log.read().decode(errors="replace")
        except OSError:
            return False

    def _port_taken_since(self, log_offset: int) -> bool:
        marker = "Address already in use"
        return self._log_since(log_offset, marker) or marker in _tail(self.output_path, 10)

    def _failure_message(self, what: str) -> str:
        parts = [f"local mosquitto broker failed to start on {HOST}:{self._port}: {what}",
                 f"config: {self.conf_path}"]
        for label, path in (("log", self.log_path), ("output", self.output_path)):
            tail = _tail(path)
            if tail:
                parts.append(f"--- {label} ({path}), last lines ---\n{tail}")
        return "\n".join(parts)

    def _forget_process(self) -> None:
        self._proc = None
        atexit.unregister(self._stop_at_exit)

    def _stop_at_exit(self) -> None:
        try:
            self.stop(timeout=2.0)
        except Exception:  # noqa: BLE001 - interpreter is exiting; never raise from atexit
            pass


class _PortTaken(Exception):
    """Internal: the chosen port was taken between free_port() and the broker's bind."""
