"""A pseudo-terminal pair that stands in for a USB serial sensor.

Why: the daemon reads the sensor MCU with pyserial by device path (``/dev/ttyACM0``). The
emulator (``edge-agent emulate --link PATH``) and the serial tests need a real device node
pyserial can open the same way, with every byte passed through unchanged. A pty gives that:
whatever is written on the *master* side arrives at whoever opened the *slave* path, and
the reverse.

The slave is put in raw mode (the equivalent of cfmakeraw): no echo, no canonical line
editing, no signals on 0x03/0x1a, no XON/XOFF on 0x11/0x13, no CR/LF translation in either
direction, 8 data bits. pyserial sets much the same when it opens the port; doing it here
too makes the pair binary-safe for readers that are not pyserial.

Behaviour worth knowing:

* The pair keeps its own descriptor of the slave open for its whole life. So the master
  never reads EIO while no reader has the port open, and the raw settings stick. Bytes
  written while nobody has the port open wait in the pty's buffers (some KiB; about 15 KiB
  here, then :meth:`PtyPair.write` blocks or times out); pyserial discards them when it
  opens the port (it flushes the input buffer on open), as with a real device.
* :meth:`PtyPair.close` closes the master: the slave is hung up. A pyserial port still
  open on it then raises ``serial.SerialException`` on its next read (the slave reads as
  end-of-file; pyserial says "device reports readiness to read but returned no data") and
  on its next write ("write failed: [Errno 5] Input/output error"); a plain ``os.read`` of
  the slave returns ``b""`` or raises EIO. That is the shape of a USB sensor being
  unplugged, and what the emulator's ``disconnect`` scenario relies on: readers must treat
  both as "device gone" and reopen the path later.
* ``master_fd`` is non-blocking; use :meth:`read` / :meth:`write`, or select on it.

Example::

    with PtyPair() as pair, serial.Serial(pair.slave_path, 921600, timeout=0.5) as port:
        pair.write(b"\\x00\\x0a\\x0d")
        assert port.read(3) == b"\\x00\\x0a\\x0d"
"""
from __future__ import annotations

import errno
import os
import select
import termios
import time
from pathlib import Path
from types import TracebackType

# termios attribute list indices (see termios.tcgetattr)
_IFLAG, _OFLAG, _CFLAG, _LFLAG, _CC = 0, 1, 2, 3, 6


def make_raw(fd: int) -> None:
    """Put the terminal ``fd`` in raw mode, as cfmakeraw(3) does, plus VMIN=1/VTIME=0."""
    attrs = termios.tcgetattr(fd)
    attrs[_IFLAG] &= ~(
        termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR
        | termios.IGNCR | termios.ICRNL | termios.IXON | termios.IXOFF | termios.IXANY
    )
    attrs[_OFLAG] &= ~termios.OPOST
    attrs[_LFLAG] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    attrs[_CFLAG] &= ~(termios.CSIZE | termios.PARENB)
    attrs[_CFLAG] |= termios.CS8
    attrs[_CC][termios.VMIN] = 1
    attrs[_CC][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class PtyPair:
    """A raw pty: write/read the master here, open :attr:`slave_path` with pyserial."""

    def __init__(self) -> None:
        master_fd, slave_fd = os.openpty()
        try:
            make_raw(slave_fd)
            os.set_blocking(master_fd, False)
            self._slave_path = os.ttyname(slave_fd)
        except BaseException:
            os.close(master_fd)
            os.close(slave_fd)
            raise
        self._master_fd: int | None = master_fd
        self._slave_fd: int | None = slave_fd
        self._links: list[Path] = []

    @property
    def master_fd(self) -> int:
        """The master side (non-blocking). Raises ValueError once closed."""
        if self._master_fd is None:
            raise ValueError("PtyPair is closed")
        return self._master_fd

    @property
    def slave_path(self) -> str:
        """Device path of the slave, e.g. ``/dev/pts/3``: what pyserial opens."""
        return self._slave_path

    @property
    def closed(self) -> bool:
        return self._master_fd is None

    @property
    def links(self) -> tuple[Path, ...]:
        return tuple(self._links)

    def write(self, data: bytes, timeout: float | None = None) -> int:
        """Write all of ``data`` on the master (it arrives at the slave's reader).

        Blocks while the pty's input queue is full (nobody reading the slave); with a
        ``timeout`` raises TimeoutError once it has passed, the bytes written so far being
        gone to the slave. Returns ``len(data)``.
        """
        fd = self.master_fd
        view = memoryview(bytes(data))
        deadline = None if timeout is None else time.monotonic() + timeout
        written = 0
        while written < len(view):
            try:
                written += os.write(fd, view[written:])
                continue
            except BlockingIOError:
                pass
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(
                    f"pty {self._slave_path}: wrote {written} of {len(view)} bytes in {timeout} s; "
                    "is anything reading the serial port?"
                )
            select.select([], [fd], [], remaining)
        return written

    def read(self, n: int, timeout: float = 1.0) -> bytes:
        """Read up to ``n`` bytes from the master (what the slave's user wrote).

        Returns once ``n`` bytes have arrived or ``timeout`` seconds have passed, whichever
        is first, so a short result means a timeout (``timeout=0``: what is there now).
        Returns early with what it has if every slave descriptor is closed (EIO).
        """
        fd = self.master_fd
        chunks: list[bytes] = []
        got = 0
        deadline = time.monotonic() + timeout
        while got < n:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([fd], [], [], max(remaining, 0.0))
            if readable:
                try:
                    chunk = os.read(fd, n - got)
                except BlockingIOError:
                    chunk = None
                except OSError as exc:
                    if exc.errno == errno.EIO:  # slave hung up: no more data will come
                        break
                    raise
                if chunk == b"":
                    break
                if chunk:
                    chunks.append(chunk)
                    got += len(chunk)
                    continue
            if remaining <= 0:
                break
        return b"".join(chunks)

    def link(self, path: str | os.PathLike[str]) -> Path:
        """Make ``path`` a symlink to the slave (``--link /tmp/ttyEMU``); removed on close.

        An existing symlink at ``path`` (left by an emulator that was killed) is replaced
        atomically; any other existing file is an error (FileExistsError).
        """
        link_path = Path(path)
        if link_path.exists() and not link_path.is_symlink():
            raise FileExistsError(f"{link_path} exists and is not a symlink; not replacing it")
        temp = link_path.with_name(f".{link_path.name}.{os.getpid()}.tmp")
        if temp.is_symlink():
            temp.unlink()
        os.symlink(self._slave_path, temp)
        os.replace(temp, link_path)
        self._links.append(link_path)
        return link_path

    def close(self) -> None:
        """Remove our links, close the master (hanging up the slave), close our slave fd.

        Idempotent. See the module docstring for what an open pyserial port sees.
        """
        for link_path in self._links:
            try:
                # only remove a link that is still ours (another emulator may have replaced it)
                if link_path.is_symlink() and os.readlink(link_path) == self._slave_path:
                    link_path.unlink()
            except OSError:
                pass
        self._links.clear()
        for name in ("_master_fd", "_slave_fd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __enter__(self) -> PtyPair:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # descriptors only; links are removed by close() / the with block
        for fd in (getattr(self, "_master_fd", None), getattr(self, "_slave_fd", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __repr__(self) -> str:
        return f"PtyPair({self._slave_path!r}{', closed' if self.closed else ''})"
