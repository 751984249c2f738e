"""Recordings on disk -> named float32 channels with their rate and shaft speed.

Used by the replay source (``[[source]] type = "replay"``) and the ``edge-agent replay``
command. The formats are the contract's (/work/shared/CONTRACT.md, "Replay"):

* ``.npz`` — the signal under ``DE`` (or ``data``), 1-D, or 2-D with one column per
  channel; optional scalars ``fs`` (Hz) and ``rpm``, as in the shared CWRU files;
* ``.csv`` — one column per channel, comma-separated, an optional header row naming
  them; a CSV carries no rate, so ``fs`` must be given;
* ``.wav`` — PCM, 16- or 32-bit integer samples (stdlib :mod:`wave`), any number of
  channels; the rate is the file's. Samples are scaled to [-1, 1) of the file's full
  scale, which is reported as ``full_scale = 1.0`` for clipping checks.

``fs`` and ``rpm`` given by the caller win over what the file says. Every problem is a
:class:`RecordingError` with one line saying what is wrong with which file and what to do.
Parsing is numpy (``np.load``, ``np.loadtxt``, ``np.frombuffer``): no per-sample Python.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
import warnings
import wave
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.errors import StartupError

SIGNAL_KEYS = ("DE", "data")  # .npz keys holding the signal, first found wins
MAX_CHANNELS = 64  # a 2-D array with more columns than this is taken to be transposed
EXTENSIONS = (".npz", ".csv", ".wav")
CHECK_STEP = 1 << 20  # samples per step of the non-finite check


class RecordingError(StartupError):
    """A recording that cannot be replayed; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class Recording:
    channels: dict[str, np.ndarray]  # name -> 1-D float32, C-contiguous, all the same length
    fs: float  # samples per second
    rpm: float | None  # shaft speed, when the file or the caller knows it
    source_desc: str  # one line: file, channels, samples, where fs and rpm came from
    full_scale: float | None = None  # largest magnitude the format can hold (wav: 1.0)

    @property
    def n_samples(self) -> int:
        return len(next(iter(self.channels.values())))

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs


def load_recording(path: str | Path, fs: float | None = None, rpm: float | None = None,
                   mapped: bool = False, deferred: list[Callable[[], None]] | None = None) -> Recording:
    """Load ``path`` (.npz, .csv or .wav); ``fs`` / ``rpm`` override the file's values.
    ``mapped``: an .npz signal stored uncompressed is memory-mapped read-only instead of read
    (:func:`_map_member`; for a one-shot command: the file must stay whole while in use).
    ``deferred``: the checks that read the whole signal (a mapped member's CRC-32, the
    non-finite values) are appended to it as calls, each raising RecordingError, instead of
    run: the caller runs them before it reports anything from the data (replay starts its
    feature worker first).

    Raises RecordingError for a missing or unreadable file, an unknown extension, an .npz
    without a signal key, no sample rate, an empty signal or non-finite values.
    """
    p = Path(path)
    name = str(path)
    if fs is not None and not (math.isfinite(fs) and fs > 0):
        raise RecordingError(f"recording {name}: sample rate {fs!r} must be a positive number of Hz")
    if rpm is not None and not (math.isfinite(rpm) and rpm > 0):
        raise RecordingError(f"recording {name}: shaft speed {rpm!r} must be a positive number of rev/min")
    suffix = p.suffix.lower()
    if suffix not in EXTENSIONS:
        raise RecordingError(
            f"recording {name}: unknown file type {p.suffix or '(no extension)'!r}; replay reads "
            f"{', '.join(EXTENSIONS)}"
        )
    if not p.exists():
        raise RecordingError(f"recording {name}: file not found")
    if not p.is_file():
        raise RecordingError(f"recording {name}: not a file")
    try:
        if suffix == ".npz":
            channels, file_fs, file_rpm, full_scale = _load_npz(p, name, mapped, deferred)
        elif suffix == ".csv":
            channels, file_fs, file_rpm, full_scale = _load_csv(p, name)
        else:
            channels, file_fs, file_rpm, full_scale = _load_wav(p, name)
    except PermissionError:
        raise RecordingError(f"recording {name}: permission denied") from None
    except OSError as exc:
        raise RecordingError(f"recording {name}: cannot read: {exc.strerror or exc}") from None

    rate = fs if fs is not None else file_fs
    if rate is None:
        raise RecordingError(
            f"recording {name}: no sample rate: a {suffix} file does not say it; give it with "
            f"--fs HZ (replay command) or fs = HZ (replay [[source]] in the config)"
        )
    if not (math.isfinite(rate) and rate > 0):
        raise RecordingError(f"recording {name}: the file's sample rate {rate!r} is not a positive number; override it with --fs HZ")
    speed = rpm if rpm is not None else file_rpm
    if speed is not None and not (math.isfinite(speed) and speed > 0):
        raise RecordingError(f"recording {name}: the file's shaft speed {speed!r} is not a positive number; override it with --rpm RPM")

    n = len(next(iter(channels.values())))
    if n == 0:
        raise RecordingError(f"recording {name}: the signal is empty (0 samples)")
    if deferred is None:
        _check_finite(channels, name)
    else:
        deferred.append(lambda: _check_finite(channels, name))
    fs_from = "given" if fs is not None else "file"
    desc = f"{p.name}: {', '.join(channels)} ({len(channels)} channel(s)), {n} samples, {rate:g} Hz ({fs_from})"
    if speed is not None:
        desc += f", {speed:g} rpm ({'given' if rpm is not None else 'file'})"
    return Recording(channels, float(rate), None if speed is None else float(speed), desc, full_scale)


def _check_finite(channels: dict[str, np.ndarray], name: str) -> None:
    """RecordingError naming the first channel with a NaN or Inf, how many and where."""
    for ch, x in channels.items():
        n = len(x)
        # in steps of 1 M samples: one whole-signal mask would be a fresh 12 MB for 1000 s at 12 kHz
        if all(np.isfinite(x[i : i + CHECK_STEP]).all() for i in range(0, n, CHECK_STEP)):
            continue
        finite = np.isfinite(x)
        if not finite.all():
            bad = int(np.count_nonzero(~finite))
            first = int(np.argmin(finite))
            raise RecordingError(
                f"recording {name}: channel {ch!r} has {bad} non-finite value(s) (NaN or Inf), "
                f"the first at sample {first}; clean the file before replaying it"
            )


# -- formats --------------------------------------------------------------------------------
_Loaded = tuple[dict[str, np.ndarray], float | None, float | None, float | None]


def _load_npz(p: Path, name: str, mapped: bool, deferred: list[Callable[[], None]] | None = None) -> _Loaded:
    try:
        npz = np.load(p, allow_pickle=False)
    except (ValueError, zipfile.BadZipFile, EOFError):
        raise RecordingError(f"recording {name}: not a readable .npz file (save it with numpy.savez)") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise RecordingError(f"recording {name}: a .npy array, not an .npz archive; save it with numpy.savez")
    with npz:
        key = next((k for k in SIGNAL_KEYS if k in npz.files), None)
        if key is None:
            raise RecordingError(
                f"recording {name}: no signal: expected an array named {' or '.join(map(repr, SIGNAL_KEYS))}, "
                f"found {', '.join(map(repr, npz.files)) or 'nothing'}"
            )
        try:
            crc_check: list[Callable[[], None]] = []
            signal = _map_member(p, npz.zip, f"{key}.npy", crc_check) if mapped else None
            for check in crc_check:
                if deferred is None:
                    check()
                else:
                    deferred.append(_as_recording_error(check, f"recording {name}: cannot read {key!r}"))
            if signal is None:
                signal = npz[key]
            fs = _scalar(npz, "fs", name)
            rpm = _scalar(npz, "rpm", name)
        except (ValueError, zipfile.BadZipFile, EOFError) as exc:  # pickled objects, corrupt or cut members
            raise RecordingError(f"recording {name}: cannot read {key!r}: {exc}") from None
    if signal.dtype.kind not in "iuf":
        raise RecordingError(f"recording {name}: {key!r} holds {signal.dtype} values, not numbers")
    if signal.ndim == 1:
        return {key: _f32(signal)}, fs, rpm, None
    if signal.ndim == 2:
        return _columns(signal, [f"{key}{i}" for i in range(signal.shape[1])], name), fs, rpm, None
    raise RecordingError(f"recording {name}: {key!r} has shape {signal.shape}; expected 1-D or (samples, channels)")


def _as_recording_error(check: Callable[[], None], what: str) -> Callable[[], None]:
    def run() -> None:
        try:
            check()
        except (ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise RecordingError(f"{what}: {exc}") from None
    return run


def _map_member(p: Path, zf: zipfile.ZipFile, member: str, crc_check: list[Callable[[], None]]) -> np.ndarray | None:
    """The archive member's array mapped read-only from the file instead of read into fresh
    memory, when it is stored uncompressed (``numpy.savez`` stores it so) with a version 1 or
    2 .npy header; None otherwise (the caller reads it). Its CRC-32 is checked as zipfile
    checks it on reading (zipfile.BadZipFile on a mismatch), in 1 MB steps over the mapping,
    by the call appended to ``crc_check``: the caller runs it (now, or deferred).

    Why: reading a 48 MB member costs a copy into anonymous memory, page-faulted in, plus the
    zip's CRC in Python-driven steps (~0.1 s of the ~0.3 s start-up of ``edge-agent replay``
    on a 1000 s file, benches/RESULTS.md); the mapping shares the page cache instead. The
    file must not be cut short while mapped (SIGBUS), so only the one-shot replay command
    maps; the daemon's replay source reads.
    """
    info = zf.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # compressed or encrypted
        return None
    with p.open("rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)  # the local file header: its name and extra field lengths vary
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"bad local header for {member!r}")
        n_name, n_extra = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + n_name + n_extra
        fh.seek(start)
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            return None
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        offset = fh.tell()
        if dtype.hasobject:
            return None
        count = math.prod(shape)
        if offset - start + count * dtype.itemsize > info.file_size or start + info.file_size > os.fstat(fh.fileno()).st_size:
            raise EOFError(f"{member!r} is cut short")
        # MAP_POPULATE (Linux): the page tables filled in this call, not by a fault every few
        # pages in the CRC's pass: 17 -> 12 ms for 48 MB here
        mm = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), prot=mmap.PROT_READ)

    def check() -> None:
        view = memoryview(mm)[start : start + info.file_size]
        crc = 0
        for i in range(0, len(view), 1 << 20):
            crc = zlib.crc32(view[i : i + (1 << 20)], crc)
        view.release()
        if crc != info.CRC:
            raise zipfile.BadZipFile(f"Bad CRC-32 for file {member!r}")

    crc_check.append(check)
    x = np.frombuffer(mm, dtype=dtype, count=count, offset=offset)
    return x.reshape(shape, order="F" if fortran else "C")


def _scalar(npz: np.lib.npyio.NpzFile, key: str, name: str) -> float | None:
    if key not in npz.files:
        return None
    v = npz[key]
    if v.size != 1 or v.dtype.kind not in "iuf":
        raise RecordingError(f"recording {name}: {key!r} must be one number, got {v.dtype} of shape {v.shape}")
    return float(v.reshape(()))


def _load_csv(p: Path, name: str) -> _Loaded:
    with p.open("r", encoding="utf-8-sig", errors="replace") as fh:
        first = fh.readline()
    if not first.strip():
        raise RecordingError(f"recording {name}: the signal is empty (no rows)")
    cells = [c.strip() for c in first.split(",")]
    header = not all(_is_number(c) for c in cells)
    try:
        with warnings.catch_warnings():  # "input contained no data": reported below instead
            warnings.simplefilter("ignore", UserWarning)
            table = np.loadtxt(p, delimiter=",", skiprows=1 if header else 0, ndmin=2, dtype=np.float64,
                               encoding="utf-8-sig")
    except ValueError as exc:
        why = str(exc).split("; use `usecols`")[0].rstrip(".")  # numpy's advice does not apply here
        raise RecordingError(f"recording {name}: not a table of numbers with one column per channel: {why}") from None
    if table.size == 0:
        raise RecordingError(f"recording {name}: the signal is empty (a header and no rows)")
    if header and len(cells) != table.shape[1]:
        raise RecordingError(f"recording {name}: the header names {len(cells)} column(s), the rows have {table.shape[1]}")
    names = [c or f"ch{i}" for i, c in enumerate(cells)] if header else [f"ch{i}" for i in range(table.shape[1])]
    if len(set(names)) != len(names):
        raise RecordingError(f"recording {name}: the header repeats a column name: {', '.join(names)}")
    return _columns(table, names, name), None, None, None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_wav(p: Path, name: str) -> _Loaded:
    try:
        with wave.open(str(p), "rb") as w:
            nch, width, rate, nframes = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(nframes)
    except (wave.Error, EOFError) as exc:
        raise RecordingError(f"recording {name}: not a PCM .wav file this reader understands ({exc}); "
                             "use 16- or 32-bit integer PCM") from None
    dtype = {2: np.dtype("<i2"), 4: np.dtype("<i4")}.get(width)
    if dtype is None:
        raise RecordingError(f"recording {name}: {8 * width}-bit samples; replay reads 16- or 32-bit integer PCM .wav")
    usable = len(raw) - len(raw) % (width * nch)
    x = np.frombuffer(raw[:usable], dtype=dtype).reshape(-1, nch)
    full = float(2 ** (8 * width - 1))
    table = x.astype(np.float32) / np.float32(full)
    return _columns(table, [f"ch{i}" for i in range(nch)], name), float(rate), None, 1.0


def _columns(table: np.ndarray, names: list[str], name: str) -> dict[str, np.ndarray]:
    if table.shape[1] > MAX_CHANNELS:
        raise RecordingError(
            f"recording {name}: {table.shape[1]} channels (shape {table.shape}); expected one column per "
            f"channel, at most {MAX_CHANNELS}: is the array transposed?"
        )
    return {n: _f32(table[:, i]) for i, n in enumerate(names)}


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)
