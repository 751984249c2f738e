"""Fuzzing the wire codec and the stream decoder (issue #3 acceptance).

Properties, on every input:
- ``decode_raw`` and ``decode_wire_chunk`` raise nothing but ``FrameError``;
- a mutated frame that decodes is byte-identical to a valid frame (the one it came from, or
  another one when the edits truncated it and spliced a whole frame on): the CRC and the
  length checks caught every corruption. The bulk test counts both kinds of acceptance;
- ``StreamDecoder.feed`` never raises, holds at most ``max_encoded`` bytes between calls
  (stronger than "MAX_ENCODED + one feed"), returns exactly the intact frames of the stream,
  and gives the same frames and counters however the stream is cut into pieces.

A coverage-guided atheris (libFuzzer) run of 100,000 inputs seeded with the shared vectors
is the last test (tests/fuzz/fuzz_wire_decoder.py, ~10 s).

Hypothesis alone would be too slow for 100k inputs in CI's ~60 s on this 2-core machine: its
6,000 examples below take ~5 s (~0.9 ms each, so 100k would take ~90 s). The bulk is
therefore a seeded NumPy mutation loop: 120,000 chunks (~2.5 s), 30,000 header edits behind a
valid CRC (~0.7 s) and 4,000 streams of up to 24 parts, 130 MB in all, each fed whole and cut
into random pieces (~3.5 s). Hypothesis adds 6,000 shrinkable examples. Measured on the
2-core EPYC VM: ~160,000 inputs in ~12 s for the whole file. Run with ``-s`` to see the
counts (accepted mutants by kind, rejections by reason) and the time of the bulk loops.
"""
from __future__ import annotations

import platform
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from cobs import cobs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.protocol.frame import (
    HEADER_SIZE, MAX_ENCODED, Frame, FrameError, MsgType, SampleFormat, decode_raw, decode_wire_chunk, encode_raw,
    encode_wire, samples_frame,
)
from edge_agent.protocol.stream import StreamDecoder
from test_protocol import VECTORS, make_vectors  # the shared vectors and their parser

pytestmark = pytest.mark.timeout(180)  # "never hangs": a loop that stalls fails here, not at the global 300 s

SEED = 20261122
N_CHUNKS = 120_000
N_HEADERS = 30_000
N_STREAMS = 4_000


def fuzz(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _corpus() -> list[bytes]:
    """Raw frames of every type and format, small to medium (the mutation sources)."""
    rng = np.random.default_rng(SEED)
    frames = []
    for i, (nch, ns, fmt) in enumerate([
        (1, 16, SampleFormat.INT16), (4, 64, SampleFormat.INT16), (8, 32, SampleFormat.INT16),
        (2, 40, SampleFormat.INT32), (1, 8, SampleFormat.FLOAT32), (3, 100, SampleFormat.INT16),
        (1, 127, SampleFormat.INT16), (1, 600, SampleFormat.INT16),
    ]):
        if fmt == SampleFormat.FLOAT32:
            x = rng.normal(size=(ns, nch)).astype(np.float32)
        else:
            x = rng.integers(-(2**15), 2**15, (ns, nch))
        frames.append(samples_frame(x, sensor_id=i, seq=int(rng.integers(2**32)), timestamp_us=int(rng.integers(2**63)),
                                    sample_rate=25600.0, sample_format=fmt, scale=_f32(0.001)))
    frames.append(samples_frame(np.zeros((64, 2)), sensor_id=0, seq=0, timestamp_us=0, sample_rate=1.0))  # zeros
    frames.append(samples_frame(np.array([1500.0, 1502.0], np.float32), sensor_id=9, seq=1, timestamp_us=5,
                                sample_rate=10.0, sample_format=SampleFormat.FLOAT32, msg_type=MsgType.SPEED))
    frames.append(samples_frame(np.array([41.5], np.float32), sensor_id=9, seq=2, timestamp_us=6, sample_rate=1.0,
                                sample_format=SampleFormat.FLOAT32, msg_type=MsgType.TEMPERATURE))
    frames += [
        Frame(type=MsgType.PING, sensor_id=1, seq=3, payload=b"\xef\xbe\xad\xde"),
        Frame(type=MsgType.PONG, sensor_id=1, seq=3, payload=b"\xef\xbe\xad\xde"),
        Frame(type=MsgType.ACK, sensor_id=1, seq=4, payload=b"\x84\x00"),
        Frame(type=MsgType.START, sensor_id=1, seq=5),
        Frame(type=MsgType.SET_RATE, sensor_id=1, seq=6, sample_rate=12800.0),
        Frame(type=MsgType.TIME_SYNC, sensor_id=1, seq=7, timestamp_us=1_731_000_000_000_000),
    ]
    return [encode_raw(f) for f in frames]


CORPUS = _corpus()
CORPUS_SET = frozenset(CORPUS)


def _mutate(rng: np.random.Generator, data: bytes) -> bytes:
    """One to three random edits of ``data``; never returns ``data`` unchanged."""
    while True:
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            op = int(rng.integers(8))
            n = len(b)
            if op == 0 and n:  # flip 1-8 bits
                for _ in range(int(rng.integers(1, 9))):
                    b[int(rng.integers(n))] ^= 1 << int(rng.integers(8))
            elif op == 1 and n:  # drop 1-4 bytes
                i = int(rng.integers(n))
                del b[i:i + int(rng.integers(1, 5))]
            elif op == 2:  # insert 1-4 random bytes
                i = int(rng.integers(n + 1))
                b[i:i] = rng.integers(0, 256, int(rng.integers(1, 5)), dtype=np.uint8).tobytes()
            elif op == 3 and n:  # truncate
                del b[int(rng.integers(n)):]
            elif op == 4 and n:  # overwrite a byte
                b[int(rng.integers(n))] = int(rng.integers(256))
            elif op == 5 and n > 1:  # swap two bytes
                i, j = (int(k) for k in rng.integers(n, size=2))
                b[i], b[j] = b[j], b[i]
            elif op == 6 and n:  # duplicate a slice
                i = int(rng.integers(n))
                b[i:i] = b[i:i + int(rng.integers(1, 16))]
            else:  # append bytes of another frame (splice)
                other = CORPUS[int(rng.integers(len(CORPUS)))]
                b += other[int(rng.integers(len(other))):]
        if bytes(b) != data:
            return bytes(b)


def _decode(fn, data: bytes, reasons: Counter | None = None) -> bytes | None:
    """The re-encoded raw frame if ``fn`` accepts ``data``; None if it raises FrameError
    (its reason counted in ``reasons``). Any other exception propagates and fails the test."""
    try:
        return encode_raw(fn(data))
    except FrameError as exc:
        if reasons is not None:
            reasons[exc.reason] += 1
        return None


# ---- bulk: seeded NumPy loops ---------------------------------------------------------------

def test_bulk_chunks_raise_only_frame_error_and_no_corruption_gets_through():
    rng = np.random.default_rng(SEED)
    wires = [cobs.encode(r) for r in CORPUS]
    counts = {"random": 0, "wire_mutants": 0, "raw_mutants": 0,
              "accepted_as_source": 0, "accepted_as_other_valid": 0, "accepted_as_new_data": 0}
    reasons: Counter[str] = Counter()
    t0 = time.perf_counter()
    for i in range(N_CHUNKS):
        kind = i % 10
        if kind < 2:  # random bytes, lengths 0..~600
            data = rng.integers(0, 256, int(rng.geometric(1 / 80)), dtype=np.uint8).tobytes()
            _decode(decode_wire_chunk, data, reasons)
            _decode(decode_raw, data, reasons)
            counts["random"] += 1
            continue
        k = int(rng.integers(len(CORPUS)))
        if kind < 8:  # a mutated wire chunk (COBS level: moves zeros, breaks blocks)
            got = _decode(decode_wire_chunk, _mutate(rng, wires[k]), reasons)
            counts["wire_mutants"] += 1
        else:  # a mutated raw frame (as an MQTT message)
            got = _decode(decode_raw, _mutate(rng, CORPUS[k]), reasons)
            counts["raw_mutants"] += 1
        if got is None:
            continue
        if got == CORPUS[k]:  # the edits left the decoded bytes as they were
            counts["accepted_as_source"] += 1
        elif got in CORPUS_SET:  # e.g. truncated to nothing, then another whole frame spliced on
            counts["accepted_as_other_valid"] += 1
        else:  # a corruption the checks let through
            counts["accepted_as_new_data"] += 1
    elapsed = time.perf_counter() - t0
    print(f"\nbulk chunks: {N_CHUNKS} inputs in {elapsed:.1f} s ({N_CHUNKS / elapsed:,.0f}/s): {counts}; "
          f"rejected by reason: {dict(reasons)}")
    assert counts["random"] + counts["wire_mutants"] + counts["raw_mutants"] == N_CHUNKS >= 100_000
    assert counts["accepted_as_new_data"] == 0, counts
    assert {"cobs", "short", "crc"} <= set(reasons)


EDGE_BYTES = np.array([0, 1, 2, 3, 4, 0x10, 0x11, 0x7F, 0x80, 0x81, 0x85, 0x86, 0xFF], np.uint8)


def test_bulk_header_fields_with_a_valid_crc():
    """Arbitrary header bytes and payload lengths behind a correct CRC: this reaches the checks
    after the CRC (version, type, format, length, rate), which corruption alone almost never
    does. An accepted frame re-encodes to the same bytes (the decoder is canonical), except
    for a NaN in a float field that frame does not check (the scale; the rate of a frame
    without samples): the float32 -> float -> float32 trip sets the quiet bit of a signalling
    NaN."""
    rng = np.random.default_rng(SEED + 2)
    reasons: Counter[str] = Counter()
    accepted = nan_floats = 0
    t0 = time.perf_counter()
    for _ in range(N_HEADERS):
        raw = bytearray(CORPUS[int(rng.integers(len(CORPUS)))][:-4])
        for _ in range(int(rng.integers(1, 4))):  # 1-3 header bytes, edge values half the time
            pos = int(rng.integers(HEADER_SIZE))
            raw[pos] = int(EDGE_BYTES[rng.integers(len(EDGE_BYTES))]) if rng.random() < 0.5 else int(rng.integers(256))
        if rng.random() < 0.3:  # and/or a payload a few bytes longer or shorter
            d = int(rng.integers(-4, 5))
            raw = raw[:len(raw) + d] if d < 0 else raw + bytes(d)
        data = bytes(raw) + struct.pack("<I", zlib.crc32(raw))
        got = _decode(decode_raw, data, reasons)
        if got is None:
            continue
        accepted += 1
        if got != data:  # only a NaN scale or rate (not checked in that frame) may come back changed
            nan_floats += 1
            scale, rate = struct.unpack_from("<ff", data, 8)
            assert got[:8] == data[:8] and got[16:-4] == data[16:-4]
            assert (np.isnan(scale) or got[8:12] == data[8:12]) and (np.isnan(rate) or got[12:16] == data[12:16])
    elapsed = time.perf_counter() - t0
    print(f"\nbulk headers: {N_HEADERS} inputs in {elapsed:.1f} s: {accepted} accepted ({nan_floats} with a "
          f"NaN scale or rate re-encoded with other NaN bits), rejected by reason: {dict(reasons)}")
    assert {"short", "version", "type", "format", "length", "rate"} <= set(reasons)
    assert "crc" not in reasons and "cobs" not in reasons
    assert accepted + sum(reasons.values()) == N_HEADERS


def _stream(rng: np.random.Generator, max_encoded: int) -> tuple[bytes, list[bytes]]:
    """A stream of intact frames, mutated frames, garbage, 0x00 runs and long runs without a
    delimiter, and the raw frames the decoder must return, in order. Every part ends with
    0x00, so parts are independent: an intact frame must come back; any other part must give
    nothing, except a mutant whose edits made it a valid frame again (it must come back
    identical to a valid frame: checked here, chunk by chunk)."""
    parts: list[bytes] = []
    expected: list[bytes] = []
    for _ in range(int(rng.integers(1, 25))):
        kind = int(rng.integers(10))
        raw = CORPUS[int(rng.integers(len(CORPUS)))]
        if kind < 4:  # an intact frame (oversize for a decoder with a small limit)
            parts.append(cobs.encode(raw) + b"\x00")
            if len(parts[-1]) - 1 <= max_encoded:
                expected.append(raw)
            continue
        if kind < 6:  # a mutated frame (a 0x00 it contains splits it)
            part = _mutate(rng, cobs.encode(raw)) + b"\x00"
        elif kind == 6:  # random garbage
            part = rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes() + b"\x00"
        elif kind == 7:  # idle line
            part = b"\x00" * int(rng.integers(1, 20))
        elif kind == 8:  # a run longer than the limit without a delimiter (babbling)
            part = rng.integers(1, 256, max_encoded + int(rng.integers(1, 3000)), dtype=np.uint8).tobytes() + b"\x00"
        else:  # garbage glued to the front of a frame: both lost together
            glue = rng.integers(1, 256, int(rng.integers(1, 50)), dtype=np.uint8).tobytes()
            part = glue + cobs.encode(raw) + b"\x00"
        parts.append(part)
        for chunk in part.split(b"\x00"):
            if chunk and len(chunk) <= max_encoded and (got := _decode(decode_wire_chunk, chunk)) is not None:
                assert kind < 6 and got in CORPUS_SET  # only a mutant that is again a valid frame
                expected.append(got)
    return b"".join(parts), expected


def _feed_in_pieces(dec: StreamDecoder, stream: bytes, cuts: list[int]) -> list[Frame]:
    frames: list[Frame] = []
    start = 0
    for end in [*cuts, len(stream)]:
        frames += dec.feed(stream[start:end])
        assert dec.pending_bytes <= dec.max_encoded
        start = end
    return frames


def test_bulk_streams_decode_the_intact_frames_however_they_are_cut():
    rng = np.random.default_rng(SEED + 1)
    n_parts = n_bytes = n_frames = n_oversize = 0
    t0 = time.perf_counter()
    for i in range(N_STREAMS):
        max_encoded = (MAX_ENCODED, 2000, 700)[i % 3]
        stream, expected = _stream(rng, max_encoded)
        whole = StreamDecoder(max_encoded)
        got_whole = whole.feed(stream)
        assert [encode_raw(f) for f in got_whole] == expected
        n_cuts = int(rng.integers(0, 40))
        cuts = sorted(int(c) for c in rng.integers(0, len(stream) + 1, n_cuts))
        if i % 50 == 0:  # now and then byte by byte
            cuts = list(range(1, len(stream)))
        pieces = StreamDecoder(max_encoded)
        got_pieces = _feed_in_pieces(pieces, stream, cuts)
        assert got_pieces == got_whole
        assert pieces.rejected == whole.rejected and pieces.frames_ok == whole.frames_ok == len(expected)
        n_oversize += whole.rejected["oversize"]
        assert pieces.bytes_in == whole.bytes_in == len(stream)
        n_parts += 1
        n_bytes += len(stream)
        n_frames += len(expected)
    elapsed = time.perf_counter() - t0
    print(f"\nbulk streams: {N_STREAMS} streams, {n_bytes / 1e6:.1f} MB, {n_frames} frames decoded, "
          f"{n_oversize} oversize runs, in {elapsed:.1f} s")
    assert n_parts == N_STREAMS


# ---- Hypothesis: shrinkable cases -------------------------------------------------------------

@fuzz(2500)
@given(st.binary(max_size=600))
def test_any_bytes_raise_only_frame_error(data):
    for fn in (decode_wire_chunk, decode_raw):
        try:
            fn(data)
        except FrameError as exc:
            assert exc.reason in {"cobs", "short", "crc", "version", "type", "format", "length", "rate", "oversize"}
    dec = StreamDecoder(max_encoded=256)
    dec.feed(data)
    assert dec.pending_bytes <= 256


sample_frames = st.builds(
    lambda fmt, nch, ns, sensor, seq, ts, scale, rate, mtype, seed: samples_frame(
        _values(fmt, ns, nch, seed), sensor_id=sensor, seq=seq, timestamp_us=ts, sample_rate=rate,
        sample_format=fmt, scale=scale, msg_type=mtype),
    st.sampled_from([SampleFormat.INT16, SampleFormat.INT32, SampleFormat.FLOAT32]),
    st.integers(1, 8), st.integers(1, 300), st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1), st.floats(_f32(1e-9), 1e3, width=32), st.floats(_f32(0.001), 9e6, width=32),
    st.sampled_from([MsgType.SAMPLES, MsgType.SPEED, MsgType.TEMPERATURE]), st.integers(0, 2**32 - 1),
)


def _values(fmt: SampleFormat, ns: int, nch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if fmt == SampleFormat.FLOAT32:
        return rng.normal(0, 100, (ns, nch)).astype(np.float32)
    bits = 16 if fmt == SampleFormat.INT16 else 32
    return rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (ns, nch))


@fuzz(1200)
@given(sample_frames)
def test_any_sample_frame_round_trips(frame):
    wire = encode_wire(frame)
    assert wire.count(0) == 1 and wire[-1] == 0
    got = decode_wire_chunk(wire[:-1])
    assert got == frame  # the strategy draws float32-exact scale and rate
    assert got.samples().shape == (frame.n_samples, frame.n_channels)


@fuzz(1500)
@given(st.sampled_from(range(len(CORPUS))), st.integers(0, 2**32 - 1), st.sampled_from(["wire", "raw"]))
def test_a_mutated_frame_is_never_accepted_as_other_data(k, seed, level):
    rng = np.random.default_rng(seed)
    raw = CORPUS[k]
    if level == "wire":
        got = _decode(decode_wire_chunk, _mutate(rng, cobs.encode(raw)))
    else:
        got = _decode(decode_raw, _mutate(rng, raw))
    assert got is None or got in CORPUS_SET  # byte-identical to a valid frame, or refused


@fuzz(800)
@given(
    st.lists(st.tuples(st.sampled_from(range(len(CORPUS))), st.binary(max_size=40), st.booleans()), max_size=8),
    st.lists(st.integers(0, 10_000), max_size=12),
)
def test_any_cut_of_a_stream_gives_the_same_result(parts, cuts):
    stream = b"".join((g + b"\x00" if sep else g) + cobs.encode(CORPUS[k]) + b"\x00" for k, g, sep in parts)
    whole = StreamDecoder(max_encoded=1500)
    got = whole.feed(stream)
    assert all(encode_raw(f) in CORPUS_SET for f in got)
    pieces = StreamDecoder(max_encoded=1500)
    assert _feed_in_pieces(pieces, stream, sorted(c for c in cuts if c <= len(stream))) == got
    assert pieces.rejected == whole.rejected


# -- coverage-guided: atheris (libFuzzer) -------------------------------------------------------
ATHERIS_HARNESS = Path(__file__).parent / "fuzz" / "fuzz_wire_decoder.py"
ATHERIS_RUNS = 100_000


@pytest.mark.skipif(platform.machine() != "x86_64", reason="atheris (a dev extra) has wheels for x86-64 Linux only")
def test_atheris_coverage_guided_100k_inputs(tmp_path: Path) -> None:
    """100,000 coverage-guided inputs (~10 s here), seeded with the shared test vectors'
    valid frames up to 4 kB; libFuzzer mutates them towards new code paths. The harness
    raises on anything but FrameError, on any exception from the stream decoder, and when
    the decoder holds more than its bound, and atheris then exits non-zero."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    valid, _ = make_vectors.parse(VECTORS.read_text())
    seeds = [v for v in valid if len(v.wire) <= 4096]
    for v in seeds:
        (corpus / v.name).write_bytes(v.wire)
    assert len(seeds) >= 20
    r = subprocess.run(
        [sys.executable, str(ATHERIS_HARNESS), f"-runs={ATHERIS_RUNS}", "-seed=20261122", "-max_len=4096",
         "-print_final_stats=1", str(corpus)],
        capture_output=True, text=True, timeout=170, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Done {ATHERIS_RUNS} runs" in r.stderr
