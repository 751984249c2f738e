"""The C codec (firmware_bridge/c/edge_frame.h): built with the compiler on this machine,
checked against the shared vectors and, differentially, against the Python codec.

The test program is compiled with -std=c99 -Wall -Wextra -Werror -pedantic and
AddressSanitizer/UndefinedBehaviorSanitizer, so an out-of-bounds access or undefined
behaviour on any input fails the run. Without a C compiler the tests are skipped with that
reason on a developer machine and fail under CI (CI=true), as for mosquitto in conftest.py.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from cobs import cobs

from edge_agent.protocol.frame import REASONS, FrameError, decode_wire_chunk

BRIDGE = Path(__file__).resolve().parents[1] / "firmware_bridge"
C_DIR = BRIDGE / "c"
VECTORS = BRIDGE / "vectors" / "vectors.txt"
CC = next((c for c in (shutil.which("cc"), shutil.which("gcc"), shutil.which("clang")) if c), None)
NM = shutil.which("nm")
TEST_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsanitize=address,undefined",
              "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"]
# What an MCU build with every warning on would add: the header must stay clean under it.
STRICT_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wconversion", "-Wsign-conversion",
                "-Wshadow", "-Wcast-align", "-Wcast-qual", "-Wstrict-prototypes", "-Wmissing-prototypes",
                "-Wundef", "-Wvla", "-Wdouble-promotion", "-Wfloat-equal"]
API = ["ef_crc32", "ef_crc32_update", "ef_cobs_encode", "ef_cobs_decode", "ef_check_header", "ef_encode_raw",
       "ef_encode_frame", "ef_decode_raw", "ef_decoder_init", "ef_decoder_feed", "ef_decoder_reset", "ef_reason_name"]



@pytest.fixture(scope="module", autouse=True)
def _c_compiler() -> None:
    if CC is None:
        ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
        (pytest.fail if ci else pytest.skip)("no C compiler (cc, gcc or clang) on PATH")


def _load_make_vectors():
    spec = importlib.util.spec_from_file_location("make_vectors", BRIDGE / "vectors" / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_vectors"] = module
    spec.loader.exec_module(module)
    return module


make_vectors = _load_make_vectors()
VALID, INVALID = make_vectors.parse(VECTORS.read_text())


def _compile(src: Path, out: Path, flags: list[str], *, link: bool = True) -> None:
    cmd = [CC, *flags, "-I", str(C_DIR), str(src), "-o", str(out)] + ([] if link else ["-c"])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"


@pytest.fixture(scope="module")
def test_binary(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("c_codec") / "test_edge_frame"
    _compile(C_DIR / "test_edge_frame.c", exe, TEST_FLAGS)
    return exe


def test_c_codec_passes_every_vector(test_binary):
    proc = subprocess.run([str(test_binary), str(VECTORS)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = re.search(r"checked (\d+) vectors \((\d+) valid, (\d+) invalid\), (\d+) failures", proc.stdout)
    assert m is not None, proc.stdout
    assert (int(m[1]), int(m[2]), int(m[3]), int(m[4])) == (len(VALID) + len(INVALID), len(VALID), len(INVALID), 0)
    assert proc.stderr == ""  # no sanitizer report


def test_c_codec_reports_a_wrong_vector(test_binary, tmp_path):
    """The C test program is not vacuous: a vector with one changed field fails it."""
    lines = VECTORS.read_text().splitlines(keepends=True)
    i = next(k for k, line in enumerate(lines) if line.startswith("valid ping "))
    f = lines[i].split(" ")
    f[10] = str(int(f[10]) + 1)  # seq
    lines[i] = " ".join(f)
    j = next(k for k, line in enumerate(lines) if line.startswith("invalid rate_zero "))
    lines[j] = lines[j].replace(" rate ", " crc ")
    bad = tmp_path / "bad.txt"
    bad.write_text("".join(lines))
    proc = subprocess.run([str(test_binary), str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "FAIL ping: ef_encode_frame differs" in proc.stderr and "FAIL rate_zero" in proc.stderr


def _strict_tu(tmp_path: Path, external: bool) -> Path:
    src = tmp_path / ("extern.c" if external else "inline.c")
    src.write_text(("#define EF_API\n" if external else "") + '#include "edge_frame.h"\n')
    return src


@pytest.mark.parametrize("external", [True, False], ids=["EF_API-empty", "static-inline"])
def test_header_alone_builds_clean_under_strict_warnings(tmp_path, external):
    _compile(_strict_tu(tmp_path, external), tmp_path / "tu.o", [*STRICT_FLAGS, "-O2"], link=False)


def test_header_includes_only_the_allowed_headers():
    includes = re.findall(r"^\s*#\s*include\s*<([^>]+)>", (C_DIR / "edge_frame.h").read_text(), re.M)
    assert sorted(includes) == ["stddef.h", "stdint.h", "string.h"]


@pytest.mark.skipif(NM is None, reason="no nm (binutils) on PATH")
@pytest.mark.parametrize("opt", ["-O0", "-O2", "-Os"])
def test_header_needs_no_stdio_or_malloc(tmp_path, opt):
    """Compiled once with external linkage (EF_API empty) in a TU that defines nothing
    else: it defines the API and needs nothing from libc but memcpy/memset."""
    obj = tmp_path / "tu.o"
    _compile(_strict_tu(tmp_path, True), obj, ["-std=c99", "-Wall", "-Wextra", "-Werror", opt], link=False)
    undefined = set(subprocess.run([NM, "-u", str(obj)], capture_output=True, text=True, check=True).stdout.split()) - {"U"}
    defined = subprocess.run([NM, "--defined-only", str(obj)], capture_output=True, text=True, check=True).stdout
    assert undefined <= {"memcpy", "memset"}, undefined
    assert all(re.search(rf"\bT {name}$", defined, re.M) for name in API), defined


# ---- differential: C and Python give the same verdict on arbitrary chunks ------------------

def _mutate(rng: np.random.Generator, chunk: bytes) -> bytes:
    b = bytearray(chunk)
    op = rng.integers(6)
    if op == 0 and b:  # flip 1-3 bits
        for _ in range(rng.integers(1, 4)):
            i = rng.integers(len(b))
            b[i] ^= 1 << int(rng.integers(8))
    elif op == 1 and b:  # drop a byte
        del b[rng.integers(len(b))]
    elif op == 2:  # insert a byte
        b.insert(int(rng.integers(len(b) + 1)), int(rng.integers(256)))
    elif op == 3:  # truncate
        del b[rng.integers(len(b) + 1):]
    elif op == 4 and b:  # replace a byte
        b[rng.integers(len(b))] = int(rng.integers(256))
    else:  # random bytes
        b = bytearray(rng.integers(0, 256, rng.integers(0, 80), dtype=np.uint8).tobytes())
    return bytes(b)


def _header_fuzz(rng: np.random.Generator, raw: bytes) -> bytes:
    """``raw`` with 1-3 header bytes replaced (edge values half the time), maybe a payload a
    few bytes off, and a correct CRC: reaches the version/type/format/length/rate checks."""
    b = bytearray(raw[:-4])
    for _ in range(int(rng.integers(1, 4))):
        edge = (0, 1, 2, 3, 4, 0x10, 0x11, 0x7F, 0x80, 0x81, 0x85, 0x86, 0xFF)[int(rng.integers(13))]
        b[int(rng.integers(28))] = edge if rng.random() < 0.5 else int(rng.integers(256))
    if rng.random() < 0.3:
        d = int(rng.integers(-4, 5))
        b = b[:len(b) + d] if d < 0 else b + bytes(d)
    return cobs.encode(bytes(b) + struct.pack("<I", zlib.crc32(b)))


def _float_token(bits: int) -> str:
    """A float field for comparison: its bit pattern, or "nan" for any NaN (Python keeps a
    NaN as a Python float, which may set the quiet bit of a signalling NaN)."""
    return "nan" if (bits & 0x7F800000) == 0x7F800000 and bits & 0x007FFFFF else f"{bits:08x}"


def _normalise_c(line: str) -> str:
    f = line.split(" ")
    if f[0] == "ok":
        f[7], f[8] = _float_token(int(f[7], 16)), _float_token(int(f[8], 16))
    return " ".join(f)


def _python_verdict(chunk: bytes) -> str:
    try:
        f = decode_wire_chunk(chunk)
    except FrameError as exc:
        return f"err {exc.reason}"
    scale, rate = (_float_token(struct.unpack("<I", struct.pack("<f", x))[0]) for x in (f.scale, f.sample_rate))
    return (f"ok {f.version} {f.type} {f.sensor_id} {f.n_channels} {f.sample_format} {f.n_samples} "
            f"{scale} {rate} {f.seq} {f.timestamp_us} {f.payload.hex() or '-'}")


def test_c_and_python_agree_on_mutated_and_random_chunks(test_binary):
    """Every chunk gets the same verdict from both codecs: the same reason, or the same fields
    and payload. The chunks: the valid vectors, random edits of the vectors (mostly cobs,
    short and crc), random bytes, and header edits behind a correct CRC (the later checks)."""
    rng = np.random.default_rng(20261122)
    small = [v for v in VALID if len(v.wire) < 5000]
    sources = [v.wire[:-1] for v in small] + [v.wire[:-1] for v in INVALID]
    raws = [cobs.decode(v.wire[:-1]) for v in small]
    chunks = [v.wire[:-1] for v in VALID]
    chunks += [_mutate(rng, sources[rng.integers(len(sources))]) for _ in range(5000)]
    chunks += [_header_fuzz(rng, raws[rng.integers(len(raws))]) for _ in range(5000)]
    text = "".join((c.hex() or "-") + "\n" for c in chunks)
    proc = subprocess.run([str(test_binary), "--decode"], input=text, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    got = [_normalise_c(line) for line in proc.stdout.splitlines()]
    assert len(got) == len(chunks)
    want = [_python_verdict(c) for c in chunks]
    differ = [(c.hex(), g, w) for c, g, w in zip(chunks, got, want) if g != w]
    assert not differ, differ[:5]
    reasons = {w.split()[1] for w in want if w.startswith("err")}
    assert sum(w.startswith("ok") for w in want) > len(VALID)  # header edits that stay valid, too
    assert set(REASONS) - {"oversize"} <= reasons  # every reason but oversize (65 kB) is reached
