"""Coverage-guided fuzzing of the wire decoder with atheris (libFuzzer for Python).

Run by tests/test_protocol_fuzz.py (``-runs=N`` and a seed corpus of valid frames); by hand:

    .venv/bin/python tests/fuzz/fuzz_wire_decoder.py -runs=1000000 CORPUS_DIR

Every input is cut by atheris' FuzzedDataProvider into a chunk for ``decode_raw`` and
``decode_wire_chunk`` and a stream fed to ``StreamDecoder`` in pieces. Anything but a
FrameError from the former, any exception from ``feed``, or a decoder holding more than
``max_encoded`` bytes is a crash: atheris stops and exits non-zero.
"""
import sys

import atheris

with atheris.instrument_imports(include=["edge_agent.protocol"]):
    from edge_agent.protocol.frame import FrameError, decode_raw, decode_wire_chunk
    from edge_agent.protocol.stream import StreamDecoder


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, len(data)))
    for decode in (decode_raw, decode_wire_chunk):
        try:
            decode(chunk)
        except FrameError:
            pass
    decoder = StreamDecoder(max_encoded=fdp.ConsumeIntInRange(16, 70_000))
    stream = chunk + fdp.ConsumeBytes(fdp.remaining_bytes())
    pos = 0
    while pos < len(stream):
        step = fdp.ConsumeIntInRange(1, 4096) if fdp.remaining_bytes() else len(stream)
        decoder.feed(stream[pos : pos + step])
        pos += step
        if decoder.pending_bytes > decoder.max_encoded:
            raise AssertionError(f"decoder holds {decoder.pending_bytes} bytes > {decoder.max_encoded}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
