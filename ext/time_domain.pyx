# cython: language_level=3
"""Time-domain vibration features of a window: the hot loop.

Why by hand: this runs on every window of every channel, all day, on a Pi. NumPy would
make one pass (and one temporary array) per statistic; this makes two passes with the GIL
released and no Python object per sample.

float32 windows (the agent's) take two vectorisable passes: (1) sum x, sum |x|,
sum sqrt|x|, max and min; (2) power sums about K = the mean rounded to float32. Sums run in
float32 lanes within blocks of 256 samples (so GCC vectorises them; -fassociative-math in
setup.py lets it reorder the adds) and in float64 across blocks, which keeps the relative
error near 1e-7. Max and min compare the floats' bit patterns as integers (an order-
preserving map of IEEE-754 binary32 to int32), which vectorises without assuming the
absence of NaN. float64 windows (tests, reference) take one plain pass about K = the
first sample.

Central moments from power sums about a shift K (shifted-data algorithm, Chan, Golub &
LeVeque, "Algorithms for computing the sample variance", Am. Stat. 37(3), 1983):

    S_p = sum (x_i - K)^p,  d = S_1/n,
    m2 = S_2/n - d^2
    m3 = S_3/n - 3 d S_2/n + 2 d^3
    m4 = S_4/n - 4 d S_3/n + 6 d^2 S_2/n - 3 d^4

Definitions (population moments, as scipy.stats with bias=True):
    mean, rms = sqrt(mean(x^2)), peak = max|x|, peak_to_peak = max - min,
    crest = peak / rms, kurtosis = m4 / m2^2 (Pearson, 3 for a Gaussian),
    skewness = m3 / m2^1.5, shape = rms / mean|x|, impulse = peak / mean|x|,
    clearance = peak / (mean sqrt|x|)^2.
"""
from libc.math cimport sqrt, fabs, sqrtf, fabsf
from libc.stdint cimport int32_t, INT32_MIN, INT32_MAX
from libc.string cimport memcpy

cimport cython

ctypedef fused real_t:
    float
    double

FEATURE_NAMES = (
    "mean", "rms", "peak", "peak_to_peak", "crest", "kurtosis",
    "skewness", "shape", "impulse", "clearance",
)
N_FEATURES = len(FEATURE_NAMES)

DEF BLOCK = 256


cdef inline double _safe_div(double a, double b) noexcept nogil:
    return a / b if b != 0.0 else 0.0


cdef inline void _finish(double n, double k, double s1, double s2, double s3, double s4, double sq,
                         double sabs, double ssqrt, double vmax, double vmin, double* out) noexcept nogil:
    """The ten features from the power sums S_p about ``k`` and the other sums."""
    cdef double inv_n = 1.0 / n
    cdef double dm = s1 * inv_n
    cdef double e2 = s2 * inv_n, e3 = s3 * inv_n, e4 = s4 * inv_n
    cdef double m2 = e2 - dm * dm
    cdef double m3 = e3 - 3.0 * dm * e2 + 2.0 * dm * dm * dm
    cdef double m4 = e4 - 4.0 * dm * e3 + 6.0 * dm * dm * e2 - 3.0 * dm * dm * dm * dm
    if m2 < 0.0:
        m2 = 0.0
    cdef double rms = sqrt(sq * inv_n)
    cdef double peak = fabs(vmax) if fabs(vmax) > fabs(vmin) else fabs(vmin)
    cdef double mean_abs = sabs * inv_n
    cdef double mean_sqrt = ssqrt * inv_n
    out[0] = k + dm
    out[1] = rms
    out[2] = peak
    out[3] = vmax - vmin
    out[4] = _safe_div(peak, rms)
    out[5] = _safe_div(m4, m2 * m2)
    out[6] = _safe_div(m3, m2 * sqrt(m2))
    out[7] = _safe_div(rms, mean_abs)
    out[8] = _safe_div(peak, mean_abs)
    out[9] = _safe_div(peak, mean_sqrt * mean_sqrt)


cdef inline int32_t _ordered(int32_t u) noexcept nogil:
    """binary32 bits -> an int32 that orders like the float; its own inverse."""
    return u ^ ((u >> 31) & 0x7FFFFFFF)


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef void _time_features_f32(const float* x, const int32_t* bits, Py_ssize_t n, double* out) noexcept nogil:
    cdef Py_ssize_t b, i, e
    cdef float v, a, d, d2, bs, ba, bq, b2, b3, b4, kf
    cdef int32_t o, omax = INT32_MIN, omin = INT32_MAX
    cdef double s1 = 0.0, sabs = 0.0, ssqrt = 0.0, s2 = 0.0, s3 = 0.0, s4 = 0.0
    for b in range(0, n, BLOCK):
        e = b + BLOCK if b + BLOCK < n else n
        bs = 0
        ba = 0
        bq = 0
        for i in range(b, e):
            v = x[i]
            a = fabsf(v)
            bs = bs + v
            ba = ba + a
            bq = bq + sqrtf(a)
            o = _ordered(bits[i])
            omax = o if o > omax else omax
            omin = o if o < omin else omin
        s1 += bs
        sabs += ba
        ssqrt += bq
    kf = <float> (s1 / n)
    for b in range(0, n, BLOCK):
        e = b + BLOCK if b + BLOCK < n else n
        b2 = 0
        b3 = 0
        b4 = 0
        for i in range(b, e):
            d = x[i] - kf
            d2 = d * d
            b2 = b2 + d2
            b3 = b3 + d2 * d
            b4 = b4 + d2 * d2
        s2 += b2
        s3 += b3
        s4 += b4
    cdef int32_t hi = _ordered(omax), lo = _ordered(omin)
    cdef float vmax, vmin
    memcpy(&vmax, &hi, 4)
    memcpy(&vmin, &lo, 4)
    cdef double k = kf
    # sum (x - k) = s1 - n k; sum x^2 = sum (x - k)^2 + 2 k sum x - n k^2 (exact for any k)
    _finish(<double> n, k, s1 - n * k, s2, s3, s4, s2 + 2.0 * k * s1 - n * k * k, sabs, ssqrt, vmax, vmin, out)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _time_features_f64(const double* x, Py_ssize_t n, double* out) noexcept nogil:
    cdef Py_ssize_t i
    cdef double k = x[0]
    cdef double v, d, d2, a, s1 = 0.0, s2 = 0.0, s3 = 0.0, s4 = 0.0
    cdef double sq = 0.0, sabs = 0.0, ssqrt = 0.0
    cdef double vmax = x[0], vmin = x[0]
    for i in range(n):
        v = x[i]
        d = v - k
        d2 = d * d
        s1 += d
        s2 += d2
        s3 += d2 * d
        s4 += d2 * d2
        sq += v * v
        a = fabs(v)
        sabs += a
        ssqrt += sqrt(a)
        if v > vmax:
            vmax = v
        if v < vmin:
            vmin = v
    _finish(<double> n, k, s1, s2, s3, s4, sq, sabs, ssqrt, vmax, vmin, out)


def time_features(const real_t[::1] x, double[::1] out):
    """Fill ``out`` (float64, length N_FEATURES) with the features of window ``x``.

    ``x`` is a C-contiguous float32 or float64 array of at least one sample. The GIL is
    released for the loops, so windows of different channels can run on different
    threads at once. A constant window gives kurtosis, skewness and the ratios as 0.
    """
    if x.shape[0] == 0:
        raise ValueError("time_features: empty window")
    if out.shape[0] < N_FEATURES:
        raise ValueError(f"time_features: out needs {N_FEATURES} slots, got {out.shape[0]}")
    if real_t is float:
        with nogil:  # the floats' bits read as int32: setup.py builds with -fno-strict-aliasing
            _time_features_f32(&x[0], <const int32_t*> &x[0], x.shape[0], &out[0])
    else:
        with nogil:
            _time_features_f64(&x[0], x.shape[0], &out[0])
