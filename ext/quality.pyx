# cython: language_level=3
"""Data-quality measurements of windows: the hot loop behind edge_agent.quality.check_windows.

Why by hand: every window of every channel is checked before it is scored, all day, on a Pi.
NumPy needs about eight passes over the batch for it (isfinite, the NaN/Inf substitution, max,
min, x[1:] == x[:-1], |x|, the comparison with the clip level, the counts), each with a
temporary the size of the batch, plus a copy to stack the windows; this is a hot loop we own:
one pass per window while it sits in L1 cache (a second one only when the clip reference is
the window's own peak and a repeated sample comes near it), the GIL released, the windows read
where they are (a 2-D array, or a list of 1-D arrays: no stacking copy).

Exact by construction. Every comparison and count is made on the samples' IEEE-754 binary32
bit patterns read as int32, never in floating point, so the compile flags of setup.py
(-fassociative-math, -fno-signed-zeros, ...) cannot change a result, and NaN needs no float
semantics. For a sample's bits u:

* NaN or Inf  <=>  the exponent bits are all ones; such a sample is measured as 0 (bits 0),
  as the NumPy reference does (edge_agent/reference_quality.py);
* for non-NaN a, b: a == b  <=>  equal bits, or both are zeros (+0 == -0);
* |x| is u with the sign bit cleared, and non-negative non-NaN floats order as their bits do;
* max and min compare u ^ ((u >> 31) & 0x7FFFFFFF), an order-preserving map to int32 (as in
  time_domain.pyx; -0 orders below +0, which changes no figure: peak and ptp come out the same).

Counts are int (windows are shorter than 2**31 samples; checked) and vectorise as such.
"""
from libc.stdint cimport int32_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_C_CONTIGUOUS, PyBUF_FORMAT

cimport cython

import numpy as np

cdef enum:
    EXP_BITS = 0x7F800000  # exponent all ones: Inf or NaN
    ABS_BITS = 0x7FFFFFFF  # all but the sign
    MAX_LENGTH = 0x7FFFFFFF


cdef inline int32_t _ordered(int32_t u) noexcept nogil:
    """binary32 bits -> an int32 that orders like the float; its own inverse."""
    return u ^ ((u >> 31) & ABS_BITS)


cdef inline int32_t _read(int32_t u, bint clean) noexcept nogil:
    """The bits a sample is measured as: itself, or 0 (+0.0) for NaN/Inf. ``clean`` (a
    constant at each call site) says the window has none, so the test can be skipped."""
    if clean:
        return u
    return u & -<int32_t> ((u & EXP_BITS) != EXP_BITS)  # branch-free, so that it vectorises


cdef inline int32_t _level_bits(float level) noexcept nogil:
    """The int32 ``t`` with (|x| bits >= t) <=> (|x| >= level) for every non-NaN x, for a
    non-NaN ``level``: its bits when positive, 0 when it is zero or negative."""
    cdef int32_t t
    memcpy(&t, &level, 4)
    return t if t > 0 else 0


cdef inline bint _is_nan(float v) noexcept nogil:
    cdef int32_t t
    memcpy(&t, &v, 4)
    return (t & ABS_BITS) > EXP_BITS


ctypedef struct Pass1:
    int nonfinite  # NaN/Inf samples
    int32_t omax, omin  # ordered bits of the largest and smallest sample
    int repeats  # samples (after the first) equal to their predecessor
    int near  # samples with |x| >= the level
    int32_t top  # largest |x| bits among the repeated samples; -1 when none


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline Pass1 _pass1(const int32_t* x, Py_ssize_t n, int32_t level, bint clean) noexcept nogil:
    cdef Pass1 r
    cdef Py_ssize_t i
    cdef int32_t u, p, o, m, t, omax, omin, top = -1
    cdef int nonfinite, repeats = 0, near, s
    u = _read(x[0], clean)
    nonfinite = (x[0] & EXP_BITS) == EXP_BITS
    omax = omin = _ordered(u)
    near = (u & ABS_BITS) >= level
    for i in range(1, n):
        u = _read(x[i], clean)
        p = _read(x[i - 1], clean)
        nonfinite += (x[i] & EXP_BITS) == EXP_BITS
        o = _ordered(u)
        omax = o if o > omax else omax
        omin = o if o < omin else omin
        m = u & ABS_BITS
        s = (u == p) | (((u | p) & ABS_BITS) == 0)
        repeats += s
        near += m >= level
        t = m if s else -1
        top = t if t > top else top
    r.nonfinite = nonfinite
    r.omax = omax
    r.omin = omin
    r.repeats = repeats
    r.near = near
    r.top = top
    return r


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline int _flat_tops(const int32_t* x, Py_ssize_t n, int32_t level, bint clean) noexcept nogil:
    """Samples (after the first) equal to their predecessor with |x| >= level."""
    cdef Py_ssize_t i
    cdef int32_t u, p
    cdef int c = 0
    for i in range(1, n):
        u = _read(x[i], clean)
        p = _read(x[i - 1], clean)
        c += ((u == p) | (((u | p) & ABS_BITS) == 0)) & ((u & ABS_BITS) >= level)
    return c


cdef void _measure(const int32_t* x, Py_ssize_t n, float level, double clip_level, Py_ssize_t* nonfinite,
                   float* hi, float* lo, Py_ssize_t* repeats, Py_ssize_t* at_clip) noexcept nogil:
    """One window: see :func:`measure`."""
    cdef bint own_peak = _is_nan(level)
    cdef int32_t lb = ABS_BITS if own_peak else _level_bits(level)  # ABS_BITS: above every finite |x|
    cdef Pass1 r = _pass1(x, n, lb, True)
    cdef bint clean = r.nonfinite == 0
    if not clean:  # measure again with NaN/Inf read as 0
        r = _pass1(x, n, lb, False)
    cdef int32_t bhi = _ordered(r.omax), blo = _ordered(r.omin)
    memcpy(hi, &bhi, 4)
    memcpy(lo, &blo, 4)
    nonfinite[0] = r.nonfinite
    repeats[0] = r.repeats
    if not own_peak:
        at_clip[0] = r.near
        return
    # Against the window's own peak only flat tops count: repeated samples at >= clip_level
    # of the peak, the level rounded to float32 as the reference does. None is possible when
    # no repeated sample comes that close (r.top, -1 without repeats): no second pass then.
    cdef int32_t bpeak = (bhi & ABS_BITS) if (bhi & ABS_BITS) > (blo & ABS_BITS) else (blo & ABS_BITS)
    cdef float peak
    memcpy(&peak, &bpeak, 4)
    cdef float own = <float> (clip_level * <double> peak)
    lb = ABS_BITS if _is_nan(own) else _level_bits(own)
    if r.top < lb:
        at_clip[0] = 0
    elif clean:
        at_clip[0] = _flat_tops(x, n, lb, True)
    else:
        at_clip[0] = _flat_tops(x, n, lb, False)


cdef bint _f32_buffer(object obj, Py_buffer* view) except -1:
    """Acquire ``obj``'s buffer if it is C-contiguous native float32; False (nothing held) if not."""
    try:
        PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    except (BufferError, TypeError, ValueError):
        return False
    cdef const char* f = view.format
    if view.itemsize == 4 and f != NULL and (
            (f[0] == b"f" and f[1] == 0) or ((f[0] == b"=" or f[0] == b"@") and f[1] == b"f" and f[2] == 0)):
        return True
    PyBuffer_Release(view)
    return False


@cython.boundscheck(False)
@cython.wraparound(False)
def measure(windows, const float[::1] level, double clip_level, Py_ssize_t[::1] nonfinite, float[::1] hi,
            float[::1] lo, Py_ssize_t[::1] repeats, Py_ssize_t[::1] at_clip):
    """Measure each window of ``windows`` for the data-quality checks; return the window length.

    ``windows``: a C-contiguous float32 (n, length) array, or a list or tuple of n 1-D windows
    of equal length (read in place when C-contiguous float32, else converted as
    ``np.ascontiguousarray(w, dtype=np.float32)`` would). NaN/Inf samples are measured as 0.
    Per window j, into the outputs (each of length n):

    * ``nonfinite[j]``: NaN/Inf samples;
    * ``hi[j]``, ``lo[j]``: the largest and smallest sample;
    * ``repeats[j]``: samples x[i] (i >= 1) equal to x[i-1];
    * ``at_clip[j]``: samples with |x| >= ``level[j]`` (float32 comparison); when ``level[j]``
      is NaN, the window's own peak is the reference: the repeated samples with
      |x| >= float32(clip_level * peak), peak = max(|hi|, |lo|).

    The GIL is released for the loops.
    """
    cdef Py_ssize_t n, length = 0, j, got = 0
    cdef const float[:, ::1] x2
    cdef Py_buffer* views = NULL
    cdef const int32_t** rows = NULL
    cdef bint seq = isinstance(windows, (list, tuple))
    if seq:
        n = len(windows)
        if n == 0:
            raise ValueError("measure: no windows")
    else:
        x2 = windows
        n = x2.shape[0]
        length = x2.shape[1]
    if (level.shape[0] != n or nonfinite.shape[0] != n or hi.shape[0] != n or lo.shape[0] != n
            or repeats.shape[0] != n or at_clip.shape[0] != n):
        raise ValueError(f"measure: level and the outputs need {n} elements, one per window")
    if not seq:
        if length < 2 or length > MAX_LENGTH:
            raise ValueError(f"measure: windows need 2 to {MAX_LENGTH} samples, got {length}")
        with nogil:  # the floats' bits read as int32: setup.py builds with -fno-strict-aliasing
            for j in range(n):
                _measure(<const int32_t*> &x2[j, 0], length, level[j], clip_level, &nonfinite[j], &hi[j],
                         &lo[j], &repeats[j], &at_clip[j])
        return length
    views = <Py_buffer*> calloc(n, sizeof(Py_buffer))
    rows = <const int32_t**> malloc(n * sizeof(int32_t*))
    if views == NULL or rows == NULL:
        free(views)
        free(rows)
        raise MemoryError()
    try:
        for j in range(n):
            w = windows[j]
            if not _f32_buffer(w, &views[j]):
                w = np.ascontiguousarray(w, dtype=np.float32)
                if not _f32_buffer(w, &views[j]):
                    raise TypeError(f"measure: window {j} is not readable as float32 samples")
            got = j + 1
            if views[j].ndim != 1:
                raise ValueError(f"measure: window {j} has {views[j].ndim} dimensions, not 1")
            if j == 0:
                length = views[j].shape[0]
                if length < 2 or length > MAX_LENGTH:
                    raise ValueError(f"measure: windows need 2 to {MAX_LENGTH} samples, got {length}")
            elif views[j].shape[0] != length:
                raise ValueError(f"measure: window {j} has {views[j].shape[0]} samples, window 0 has {length}")
            rows[j] = <const int32_t*> views[j].buf
        with nogil:
            for j in range(n):
                _measure(rows[j], length, level[j], clip_level, &nonfinite[j], &hi[j], &lo[j], &repeats[j],
                         &at_clip[j])
    finally:
        for j in range(got):
            PyBuffer_Release(&views[j])
        free(views)
        free(rows)
    return length
