# cython: language_level=3
"""Time-domain vibration features in one pass over the window: the hot loop.

Why by hand: this runs on every window of every channel, all day, on a Pi. NumPy would
make one pass (and one temporary array) per statistic; this makes one pass, with the GIL
released, and no Python object per sample.

Moments use power sums about a shift K (the first sample), which keeps the sums
well-conditioned when the signal has an offset (shifted-data algorithm, Chan, Golub &
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
from libc.math cimport sqrt, fabs

cimport cython

ctypedef fused real_t:
    float
    double

FEATURE_NAMES = (
    "mean", "rms", "peak", "peak_to_peak", "crest", "kurtosis",
    "skewness", "shape", "impulse", "clearance",
)
N_FEATURES = len(FEATURE_NAMES)


cdef inline double _safe_div(double a, double b) noexcept nogil:
    return a / b if b != 0.0 else 0.0


@cython.boundscheck(False)
@cython.wraparound(False)
cdef void _time_features(const real_t[::1] x, double[::1] out) noexcept nogil:
    cdef Py_ssize_t i, n = x.shape[0]
    cdef double k = <double>x[0]
    cdef double v, d, d2, s1 = 0.0, s2 = 0.0, s3 = 0.0, s4 = 0.0
    cdef double sq = 0.0, sabs = 0.0, ssqrt = 0.0
    cdef double vmax = <double>x[0]
    cdef double vmin = <double>x[0]
    cdef double a
    for i in range(n):
        v = <double>x[i]
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


def time_features(const real_t[::1] x, double[::1] out):
    """Fill ``out`` (float64, length N_FEATURES) with the features of window ``x``.

    ``x`` is a C-contiguous float32 or float64 array of at least one sample. The GIL is
    released for the whole loop, so windows of different channels can run on different
    threads at once. A constant window gives kurtosis, skewness and the ratios as 0.
    """
    if x.shape[0] == 0:
        raise ValueError("time_features: empty window")
    if out.shape[0] < N_FEATURES:
        raise ValueError(f"time_features: out needs {N_FEATURES} slots, got {out.shape[0]}")
    with nogil:
        _time_features(x, out)
