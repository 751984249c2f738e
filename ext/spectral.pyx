# cython: language_level=3
"""Spectral and envelope features: the per-bin loops around numpy's FFTs (docs/FEATURES.md).

Why by hand: after the FFTs (numpy's pocketfft, batched over windows), what remains is
per-bin work for every window: band powers, the centroid, velocity integration, spectral
kurtosis, the analytic band mask, and the order-amplitude search with its local median.
In NumPy each is several temporaries per window; here each is one loop with the GIL
released, so windows of different channels run on different threads at once.

All functions take 2-D arrays with one row per window and write into ``out`` rows.
"""
from libc.math cimport sqrt, floor, ceil, fabs, fmax, fmin, rint, M_PI, INFINITY
from libc.stdlib cimport malloc, free

cimport cython

cdef double G0 = 9.80665


cdef Py_ssize_t _first_bin_at(double f, double df, Py_ssize_t stop) noexcept nogil:
    """The first bin k in [0, stop] with k df >= f (stop when none): the test a scan from bin
    0 makes, started one bin below f / df."""
    cdef Py_ssize_t k = <Py_ssize_t> fmax(0.0, fmin(<double> stop, floor(f / df) - 1.0))
    while k < stop and k * df < f:
        k += 1
    return k


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
def spectrum_features(const double complex[:, ::1] X, Py_ssize_t n, double fs,
                      const double[::1] edges, double[:, ::1] out, Py_ssize_t col0):
    """Band RMS per consecutive pair of ``edges`` (Hz), spectral centroid (Hz) and velocity
    RMS over 10-1000 Hz (mm/s) of each row's one-sided spectrum ``X`` (rfft of an
    ``n``-sample window at ``fs``), into ``out[row, col0:col0 + len(edges) + 1]``.

    Per row: the power of every bin into a scratch row, then each sum over its own bin range
    (the ranges found once per call): branch-free loops the compiler vectorises, where one
    loop testing every bin against every range cost twice as much."""
    cdef Py_ssize_t rows = X.shape[0], nbins = X.shape[1], nb = edges.shape[0] - 1
    if nbins != n // 2 + 1:
        raise ValueError(f"spectrum has {nbins} bins, an {n}-sample window has {n // 2 + 1}")
    if out.shape[0] != rows or out.shape[1] < col0 + nb + 2 or col0 < 0 or nb < 1:
        raise ValueError("spectrum_features: out rows/columns do not match X, or fewer than 2 edges")
    cdef Py_ssize_t r, k, b, v0, v1
    cdef double df = fs / n, inv_n2 = 1.0 / (<double>n * <double>n)
    cdef double re, im, acc, num, den, vel, w
    cdef double* p = <double*> malloc(nbins * sizeof(double))
    cdef Py_ssize_t* kb = <Py_ssize_t*> malloc((nb + 1) * sizeof(Py_ssize_t))
    if p == NULL or kb == NULL:
        free(p)
        free(kb)
        raise MemoryError()
    with nogil:
        # band b holds the bins with edges[b] <= k df < edges[b + 1]: [kb[b], kb[b + 1])
        for b in range(nb + 1):
            kb[b] = _first_bin_at(edges[b], df, nbins)
        for b in range(1, nb + 1):  # edges out of order: an empty band, as the scan made it
            if kb[b] < kb[b - 1]:
                kb[b] = kb[b - 1]
        v0 = _first_bin_at(10.0, df, nbins)  # the velocity band: 10 <= k df <= 1000
        v1 = v0
        while v1 < nbins and v1 * df <= 1000.0:
            v1 += 1
        if v0 < 1:
            v0 = 1
        for r in range(rows):
            for k in range(nbins):
                re = X[r, k].real
                im = X[r, k].imag
                p[k] = 2.0 * (re * re + im * im) * inv_n2
            p[0] *= 0.5  # the DC and Nyquist bins have no mirror image
            if n % 2 == 0:
                p[n // 2] *= 0.5
            for b in range(nb):
                acc = 0.0
                for k in range(kb[b], kb[b + 1]):
                    acc = acc + p[k]
                out[r, col0 + b] = sqrt(acc)
            num = 0.0
            den = 0.0
            for k in range(1, nbins):
                num = num + (k * df) * p[k]
                den = den + p[k]
            vel = 0.0
            for k in range(v0, v1):
                w = 2.0 * M_PI * (k * df)
                vel = vel + p[k] / (w * w)
            out[r, col0 + nb] = num / den if den > 0.0 else 0.0
            out[r, col0 + nb + 1] = 1000.0 * G0 * sqrt(vel)
    free(p)
    free(kb)


@cython.boundscheck(False)
@cython.wraparound(False)
def spectral_kurtosis(const double complex[:, :, ::1] S, const Py_ssize_t[::1] first, Py_ssize_t pieces,
                      double[:, ::1] sk):
    """SK_j = mean_m |S|^4 / (mean_m |S|^2)^2 - 2 over the segments m of each row's window,
    0 where the denominator is 0.

    ``S`` (pieces x segments x bins) holds the STFTs of consecutive pieces of windows: row
    r's window is the ``pieces`` pieces from ``first[r]`` on. Overlapping windows share
    pieces: windows a hop of half a window apart, cut in halves, share one, so each half's
    sums of |S|^2 and |S|^4 are computed once (and its STFT, by the caller). The sums run
    per piece, then over the row's pieces."""
    cdef Py_ssize_t n_pieces = S.shape[0], segs = S.shape[1], bins = S.shape[2], rows = first.shape[0]
    cdef Py_ssize_t r, m, j, q, h, total = segs * pieces
    cdef double a2, s2, s4, re, im
    if sk.shape[0] != rows or sk.shape[1] != bins or segs < 1 or pieces < 1:
        raise ValueError("spectral_kurtosis: sk must be rows x bins, with at least one segment and piece")
    for r in range(rows):
        if first[r] < 0 or first[r] + pieces > n_pieces:
            raise ValueError("spectral_kurtosis: a row's pieces lie outside S")
    cdef double* p2 = <double*> malloc(2 * n_pieces * bins * sizeof(double))
    if p2 == NULL:
        raise MemoryError()
    cdef double* p4 = p2 + n_pieces * bins
    with nogil:
        for h in range(n_pieces):
            for j in range(bins):
                s2 = 0.0
                s4 = 0.0
                for m in range(segs):
                    re = S[h, m, j].real
                    im = S[h, m, j].imag
                    a2 = re * re + im * im
                    s2 += a2
                    s4 += a2 * a2
                p2[h * bins + j] = s2
                p4[h * bins + j] = s4
        for r in range(rows):
            for j in range(bins):
                s2 = 0.0
                s4 = 0.0
                for q in range(pieces):
                    h = first[r] + q
                    s2 += p2[h * bins + j]
                    s4 += p4[h * bins + j]
                s2 /= total
                s4 /= total
                sk[r, j] = s4 / (s2 * s2) - 2.0 if s2 > 0.0 else 0.0
    free(p2)


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
    cdef Py_ssize_t first, stop, top = n // 2
    with nogil:
        for r in range(rows):
            k0[r] = 0
            nb[r] = 0
            if not (band[r, 0] < band[r, 1]):  # empty, or NaN
                continue
            # the bins in [lo, hi) are consecutive: the first with k df >= lo, then up to the
            # first with k df >= hi, found by the same test as a scan from bin 1 would use
            first = <Py_ssize_t> fmax(1.0, fmin(<double> top, floor(band[r, 0] / df) - 1.0))
            while first < top and first * df < band[r, 0]:
                first += 1
            stop = <Py_ssize_t> fmax(<double> first, fmin(<double> top, floor(band[r, 1] / df) - 1.0))
            while stop < top and stop * df < band[r, 1]:
                stop += 1
            if stop > first:
                k0[r] = first
                nb[r] = stop - first


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
def envelope_lengths(Py_ssize_t n, double fs, const double[::1] top_hz, double tol, Py_ssize_t noise_bins,
                     const Py_ssize_t[::1] nb, Py_ssize_t[::1] m_len):
    """Per row, the envelope spectrum's length M (docs/FEATURES.md section 3): the least
    power of two >= 2 max(nb, ceil(top (1 + tol) / df) + noise_bins + 1), with top the
    row's highest target (Hz) and nb its band's bins (band_bins); at least 2, at most n (n
    too when top is not finite). Returns M when every row has a band and the same M (one
    batched FFT for the chunk), else 0."""
    cdef Py_ssize_t rows = nb.shape[0], r, m, need, common = -1
    cdef double df = fs / n, k_top
    if top_hz.shape[0] != rows or m_len.shape[0] != rows:
        raise ValueError("envelope_lengths: top_hz, nb and m_len need one entry per row")
    with nogil:
        for r in range(rows):
            k_top = ceil(top_hz[r] * (1.0 + tol) / df) + noise_bins + 1
            if not (k_top < <double> n):  # M = n; NaN too
                m = n
            else:
                need = 2 * (nb[r] if <double> nb[r] > k_top else <Py_ssize_t> k_top)
                m = 2
                while m < need and m < n:
                    m *= 2
                if m > n:
                    m = n
            m_len[r] = m
            if nb[r] <= 0 or (common >= 0 and m != common):
                common = 0
            elif common < 0:
                common = m
    return common if common > 0 else 0


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
def magnitudes(const double complex[:, ::1] Z, double scale, bint remove_mean, double[:, ::1] out):
    """out = scale |Z|, each row's mean subtracted when ``remove_mean``: the envelope from
    its analytic signal, or an amplitude spectrum, in one pass instead of three temporaries."""
    cdef Py_ssize_t rows = Z.shape[0], cols = Z.shape[1], r, j
    cdef double acc, mean, re, im, a
    if out.shape[0] != rows or out.shape[1] != cols:
        raise ValueError("magnitudes: out must have Z's shape")
    with nogil:
        for r in range(rows):
            acc = 0.0
            for j in range(cols):  # sqrt(re^2 + im^2), not hypot: it vectorises (no |Z| near 1e154 here)
                re = Z[r, j].real
                im = Z[r, j].imag
                a = scale * sqrt(re * re + im * im)
                out[r, j] = a
                acc += a
            if remove_mean and cols > 0:
                mean = acc / cols
                for j in range(cols):
                    out[r, j] -= mean


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


cdef inline double _median3(double a, double b, double c) noexcept nogil:
    """The middle one of three (NaN-free): comparisons that compile to conditional moves."""
    cdef double lo = a if a < b else b, hi = b if a < b else a
    hi = hi if hi < c else c
    return hi if hi > lo else lo


@cython.cdivision(True)
cdef double _select_by_copying(const double* a, Py_ssize_t n, Py_ssize_t k, double* less,
                               double* more) noexcept nogil:
    """The k-th smallest (from 0) of a[0:n] (NaN-free; a is not changed), by quickselect
    (Hoare, "Algorithm 65: FIND", CACM 4(7), 1961) whose partition copies instead of
    swapping: each value is written to both ``less`` and ``more`` (n doubles each) and
    each cursor advances by its comparison's 0 or 1. The values equal to the pivot are
    neither, so every round shrinks the set. No data-dependent branch inside a round:
    on spectra the in-place scans' branches mispredict about every other comparison
    (measured: ~0.4 us a 40-value median in the replay, ~0.1 us when the predictor has
    learnt the data; this takes ~0.1-0.15 us either way)."""
    cdef const double* src = a
    cdef double* tmp
    cdef double x, p
    cdef Py_ssize_t i, nl, ng
    while True:
        p = _median3(src[0], src[n // 2], src[n - 1])
        nl = 0
        ng = 0
        for i in range(n):  # less[nl] = x overwrites only values already read when src is less
            x = src[i]
            less[nl] = x
            more[ng] = x
            nl += x < p
            ng += x > p
        if k < nl:
            src = less
            n = nl
        elif k >= n - ng:
            k -= n - ng
            n = ng
            src = more
            tmp = less  # the next round writes its smaller values over the ones it reads
            less = more
            more = tmp
        else:
            return p


cdef double _median(double* a, Py_ssize_t m, double* scratch) noexcept nogil:
    """The median of a[0:m] (m >= 1; the mean of the middle two when m is even).
    ``scratch`` holds 2 m doubles. A NaN among them: sorted instead (a comparison with NaN
    orders nothing), which reorders a."""
    cdef Py_ssize_t i, h = m // 2, below = 0
    cdef double upper, lower, v
    for i in range(m):
        if a[i] != a[i]:
            _insertion_sort(a, m)
            return a[h] if m % 2 == 1 else 0.5 * (a[h - 1] + a[h])
    upper = _select_by_copying(a, m, h, scratch, scratch + m)
    if m % 2 == 1:
        return upper
    # the (h - 1)-th smallest: the largest value under upper when h values are under it,
    # else upper itself (a tie)
    lower = upper
    for i in range(m):
        below += a[i] < upper
    if below == h:
        lower = -INFINITY
        for i in range(m):
            v = a[i] if a[i] < upper else -INFINITY  # conditional moves, no branch
            lower = v if v > lower else lower
    return 0.5 * (lower + upper)


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
    cdef double* buf = <double*> malloc(3 * (2 * noise_bins + 2) * sizeof(double))
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
                    floor_ = _median(buf, m, buf + 2 * noise_bins + 2) if m > 0 else 0.0
                    out[r, col0 + t] = a / (floor_ if floor_ > eps else eps)
    finally:
        free(buf)
