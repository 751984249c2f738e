# cython: language_level=3
"""Spectral and envelope features: the per-bin loops around numpy's FFTs (docs/FEATURES.md).

Why by hand: after the FFTs (numpy's pocketfft, batched over windows), what remains is
per-bin work for every window: band powers, the centroid, velocity integration, spectral
kurtosis, the analytic band mask, and the order-amplitude search with its local median.
In NumPy each is several temporaries per window; here each is one loop with the GIL
released, so windows of different channels run on different threads at once.

All functions take 2-D arrays with one row per window and write into ``out`` rows.
"""
from libc.math cimport sqrt, floor, ceil, fabs, rint, M_PI
from libc.stdlib cimport malloc, free

cimport cython

cdef double G0 = 9.80665


@cython.boundscheck(False)
@cython.wraparound(False)
def spectrum_features(const double complex[:, ::1] X, Py_ssize_t n, double fs,
                      const double[::1] edges, double[:, ::1] out, Py_ssize_t col0):
    """Band RMS per consecutive pair of ``edges`` (Hz), spectral centroid (Hz) and velocity
    RMS over 10-1000 Hz (mm/s) of each row's one-sided spectrum ``X`` (rfft of an
    ``n``-sample window at ``fs``), into ``out[row, col0:col0 + len(edges) + 1]``."""
    cdef Py_ssize_t rows = X.shape[0], nbins = X.shape[1], nb = edges.shape[0] - 1
    if nbins != n // 2 + 1:
        raise ValueError(f"spectrum has {nbins} bins, an {n}-sample window has {n // 2 + 1}")
    if out.shape[0] != rows or out.shape[1] < col0 + nb + 2 or col0 < 0 or nb < 1:
        raise ValueError("spectrum_features: out rows/columns do not match X, or fewer than 2 edges")
    cdef Py_ssize_t r, k, b
    cdef double df = fs / n, inv_n2 = 1.0 / (<double>n * <double>n)
    cdef double p, f, re, im, num, den, vel, w
    with nogil:
        for r in range(rows):
            for b in range(nb):
                out[r, col0 + b] = 0.0
            num = 0.0
            den = 0.0
            vel = 0.0
            b = 0
            for k in range(nbins):
                re = X[r, k].real
                im = X[r, k].imag
                w = 1.0 if (k == 0 or k == n // 2) else 2.0
                p = w * (re * re + im * im) * inv_n2
                f = k * df
                while b < nb and f >= edges[b + 1]:
                    b += 1
                if b < nb and f >= edges[b]:
                    out[r, col0 + b] += p
                if k >= 1:
                    num += f * p
                    den += p
                    if f >= 10.0 and f <= 1000.0:
                        vel += p / ((2.0 * M_PI * f) * (2.0 * M_PI * f))
            for b in range(nb):
                out[r, col0 + b] = sqrt(out[r, col0 + b])
            out[r, col0 + nb] = num / den if den > 0.0 else 0.0
            out[r, col0 + nb + 1] = 1000.0 * G0 * sqrt(vel)


@cython.boundscheck(False)
@cython.wraparound(False)
def spectral_kurtosis(const double complex[:, :, ::1] S, double[:, ::1] sk):
    """SK_j = mean_m |S|^4 / (mean_m |S|^2)^2 - 2 over the segments m of each row
    (S: windows x segments x bins), 0 where the denominator is 0."""
    cdef Py_ssize_t rows = S.shape[0], segs = S.shape[1], bins = S.shape[2]
    cdef Py_ssize_t r, m, j
    cdef double a2, s2, s4
    if sk.shape[0] != rows or sk.shape[1] != bins or segs < 1:
        raise ValueError("spectral_kurtosis: sk must be windows x bins, with at least one segment")
    with nogil:
        for r in range(rows):
            for j in range(bins):
                s2 = 0.0
                s4 = 0.0
                for m in range(segs):
                    a2 = S[r, m, j].real * S[r, m, j].real + S[r, m, j].imag * S[r, m, j].imag
                    s2 += a2
                    s4 += a2 * a2
                s2 /= segs
                s4 /= segs
                sk[r, j] = s4 / (s2 * s2) - 2.0 if s2 > 0.0 else 0.0


@cython.boundscheck(False)
@cython.wraparound(False)
def choose_bands(const double[:, ::1] sk, double fs, Py_ssize_t seg_len, const double[::1] bandwidth,
                 double[:, ::1] band):
    """Per row, the envelope band [lo, hi) centred on the largest SK among bins whose band
    (width ``bandwidth[row]``) fits in [fs/64, 0.95 fs/2]; centre fs/4 when none fits."""
    cdef Py_ssize_t rows = sk.shape[0], bins = sk.shape[1], r, j, best
    cdef double fj, half, best_sk
    if bandwidth.shape[0] != rows or band.shape[0] != rows or band.shape[1] != 2 or seg_len < 1:
        raise ValueError("choose_bands: bandwidth/band rows do not match sk")
    with nogil:
        for r in range(rows):
            half = bandwidth[r] / 2.0
            best = -1
            best_sk = 0.0
            for j in range(bins):
                fj = j * fs / seg_len
                if fj - half >= fs / 64.0 and fj + half <= 0.95 * fs / 2.0:
                    if best < 0 or sk[r, j] > best_sk:
                        best = j
                        best_sk = sk[r, j]
            fj = best * fs / seg_len if best >= 0 else fs / 4.0
            band[r, 0] = fj - half
            band[r, 1] = fj + half


@cython.boundscheck(False)
@cython.wraparound(False)
def band_bins(Py_ssize_t n, double fs, const double[:, ::1] band, Py_ssize_t[::1] k0, Py_ssize_t[::1] nb):
    """Per row, the first bin ``k0`` and the count ``nb`` of the bins 1 <= k < n/2 with
    band[row, 0] <= k fs/n < band[row, 1] (nb = 0 when none)."""
    cdef Py_ssize_t rows = band.shape[0], r, k
    cdef double df = fs / n, f
    if band.shape[1] != 2 or k0.shape[0] != rows or nb.shape[0] != rows:
        raise ValueError("band_bins: band must be rows x 2, k0 and nb one per row")
    with nogil:
        for r in range(rows):
            k0[r] = 0
            nb[r] = 0
            for k in range(1, n // 2):
                f = k * df
                if f >= band[r, 0] and f < band[r, 1]:
                    if nb[r] == 0:
                        k0[r] = k
                    nb[r] += 1


@cython.boundscheck(False)
@cython.wraparound(False)
def baseband(const double complex[:, ::1] X, const Py_ssize_t[::1] rows, const Py_ssize_t[::1] k0,
             const Py_ssize_t[::1] nb, double complex[:, ::1] Z):
    """Z[i] = 2 X[rows[i], k0 + j] for j < nb, then zeros: the band's analytic spectrum shifted
    to baseband (k0, nb indexed by the row of X)."""
    cdef Py_ssize_t g = rows.shape[0], m = Z.shape[1], i, j, r
    if Z.shape[0] != g:
        raise ValueError("baseband: Z needs one row per selected row")
    for i in range(g):
        r = rows[i]
        if r < 0 or r >= X.shape[0] or k0[r] < 0 or nb[r] > m or k0[r] + nb[r] > X.shape[1]:
            raise ValueError("baseband: band outside the spectrum or longer than Z")
    with nogil:
        for i in range(g):
            r = rows[i]
            for j in range(nb[r]):
                Z[i, j] = 2.0 * X[r, k0[r] + j]
            for j in range(nb[r], m):
                Z[i, j] = 0.0


cdef void _insertion_sort(double* a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef double v
    for i in range(1, n):
        v = a[i]
        j = i - 1
        while j >= 0 and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


@cython.boundscheck(False)
@cython.wraparound(False)
def order_snr(const double[:, ::1] E, double df, const double[:, ::1] targets, double tol,
              Py_ssize_t noise_bins, double[:, ::1] out, Py_ssize_t col0):
    """For each row's envelope spectrum E (bins 0..n/2) and target frequencies: the largest
    E in the tolerance window over the median of the ``noise_bins`` bins either side of it
    (docs/FEATURES.md, Order amplitudes), into out[row, col0 + t]."""
    cdef Py_ssize_t rows = E.shape[0], last = E.shape[1] - 1, nt = targets.shape[1]
    cdef Py_ssize_t r, t, k, k_lo, k_hi, k_c, m, lo, hi
    cdef double f, a, emax, floor_, eps
    if targets.shape[0] != rows or out.shape[0] != rows or out.shape[1] < col0 + nt or col0 < 0:
        raise ValueError("order_snr: targets/out rows or columns do not match E")
    if noise_bins < 0 or last < 1:
        raise ValueError("order_snr: noise_bins must be >= 0 and E must have at least 2 bins")
    cdef double* buf = <double*> malloc((2 * noise_bins + 2) * sizeof(double))
    if buf == NULL:
        raise MemoryError()
    try:
        with nogil:
            for r in range(rows):
                emax = 0.0
                for k in range(last + 1):
                    if E[r, k] > emax:
                        emax = E[r, k]
                eps = 1e-12 * emax + 1e-30
                for t in range(nt):
                    f = targets[r, t]
                    k_lo = <Py_ssize_t> floor(f * (1.0 - tol) / df)
                    k_hi = <Py_ssize_t> ceil(f * (1.0 + tol) / df)
                    k_c = <Py_ssize_t> rint(f / df)  # half to even, like Python's round
                    if k_c - 1 < k_lo:
                        k_lo = k_c - 1
                    if k_c + 1 > k_hi:
                        k_hi = k_c + 1
                    if k_lo < 1:
                        k_lo = 1
                    if k_hi > last:
                        k_hi = last
                    if k_lo > last:
                        out[r, col0 + t] = 0.0
                        continue
                    a = 0.0
                    for k in range(k_lo, k_hi + 1):
                        if E[r, k] > a:
                            a = E[r, k]
                    m = 0
                    lo = k_lo - noise_bins
                    if lo < 1:
                        lo = 1
                    for k in range(lo, k_lo):
                        buf[m] = E[r, k]
                        m += 1
                    hi = k_hi + noise_bins
                    if hi > last:
                        hi = last
                    for k in range(k_hi + 1, hi + 1):
                        buf[m] = E[r, k]
                        m += 1
                    if m == 0:
                        floor_ = 0.0
                    else:
                        _insertion_sort(buf, m)
                        floor_ = buf[m // 2] if m % 2 == 1 else 0.5 * (buf[m // 2 - 1] + buf[m // 2])
                    out[r, col0 + t] = a / (floor_ if floor_ > eps else eps)
    finally:
        free(buf)
