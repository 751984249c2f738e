# cython: language_level=3
"""A sample frame's payload -> one float32 row per channel, in physical units: the hot loop
behind edge_agent.sources.assembler (every serial and MQTT sample frame, ~100 a second).

Why by hand: NumPy needs frombuffer, reshape, astype, a multiply and then one strided copy
per channel (``np.ascontiguousarray(x[:, c])``): about nine calls per frame. Each costs
little in a tight loop, but the gateway runs this once per frame, woken by the serial port,
with cold caches: measured on the 2-core VM, those calls took 166 us per frame when paced
like the serial link against 7.5 us back to back (benches/RESULTS.md, "CPU"). Here it is
one call and one pass over the payload.

Exact as NumPy is: each raw value is converted to float32 (exact for int16, round to nearest
for int32, the bits themselves for float32, NaN stays NaN) and multiplied by the float32
scale once, as ``raw.astype(np.float32) * np.float32(scale)`` does (a scale of 1.0 changes
nothing, as NumPy's skipped multiply does not). The wire is little-endian; the caller uses
this only on a little-endian host (Raspberry Pi, x86).
"""
from libc.stdint cimport int16_t, int32_t
from libc.string cimport memcpy

import numpy as np

cdef enum:
    INT16 = 1
    INT32 = 2
    FLOAT32 = 3


def channels(const unsigned char[::1] payload, int sample_format, Py_ssize_t n_channels,
             Py_ssize_t n_samples, float scale):
    """(n_channels, n_samples) float32, C-contiguous, of a sample-major interleaved payload
    (firmware_bridge/PROTOCOL.md); each row is one channel."""
    cdef Py_ssize_t size = 2 if sample_format == INT16 else 4
    if sample_format not in (INT16, INT32, FLOAT32):
        raise ValueError(f"unknown sample format {sample_format}")
    if n_channels < 1 or n_samples < 1 or payload.shape[0] != n_channels * n_samples * size:
        raise ValueError(f"payload of {payload.shape[0]} bytes does not hold {n_samples} x {n_channels} samples")
    out = np.empty((n_channels, n_samples), dtype=np.float32)
    cdef float[:, ::1] o = out
    cdef const unsigned char* p = &payload[0]
    cdef Py_ssize_t i, c
    cdef int16_t v16
    cdef int32_t v32
    cdef float vf
    with nogil:
        if sample_format == INT16:
            for i in range(n_samples):
                for c in range(n_channels):
                    memcpy(&v16, p, 2)
                    p += 2
                    o[c, i] = (<float>v16) * scale
        elif sample_format == INT32:
            for i in range(n_samples):
                for c in range(n_channels):
                    memcpy(&v32, p, 4)
                    p += 4
                    o[c, i] = (<float>v32) * scale
        else:
            for i in range(n_samples):
                for c in range(n_channels):
                    memcpy(&vf, p, 4)
                    p += 4
                    o[c, i] = vf * scale
    return out
