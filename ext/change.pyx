# cython: language_level=3
"""Change detectors for score streams: Page-Hinkley and ADWIN (docs in edge_agent/change_detect.py).

Why here and not River: River has both, but importing it pulls in SciPy and the rest of
River (about 110 MB of RSS and 1-2 s of start-up), too much for a daemon on a Pi. Why compiled: the
agent feeds a batch of scores per processing round, and a Python loop would cost more than
the detectors' arithmetic; ``update_many`` runs the whole batch in one loop without the GIL
and without a Python object per value.

Why a line-by-line copy of River's arithmetic: the tests hold these detectors to River's on
the same streams (tests/test_change_detect.py), and a detection is a threshold crossing, so
a different rounding can move it. Every floating-point expression below is evaluated in the
same order as River's (page_hinkley.py and stats.Mean in Python, ADWIN in rust_src/adwin.rs,
itself a port of the former adwin_c.pyx), and setup.py compiles this file without
-fassociative-math and with -ffp-contract=off (no fused multiply-add on ARM), so the results
are the same doubles and the detections the same indices.

Semantics shared with River:
* after a detection, the detector is reset when the *next* value arrives (River resets at the
  start of ``update`` when ``drift_detected`` is set), so the state read right after a
  detection is the state that detected it;
* the default parameters are River's.

Ours only:
* NaN and +-Inf are skipped: they change no state, are counted in ``n_nonfinite``, and
  ``update`` returns False for them (River would poison its sums with a NaN and never detect
  again);
* ``update_many`` (one call per batch) returns the indices of the batch at which a drift was
  detected, and with ``details=True`` what each detection says about the change (estimate of
  the level before and after it, how many values are attributed to the new level, direction;
  for Page-Hinkley from a ring of the last 1024 values, see the class);
* ``n_detections`` counts detections since construction or ``reset()`` (River's ADWIN counter
  restarts at every automatic reset, so it is never more than 1 there);
* ``state()`` / ``from_state()`` and pickling, for persistence across restarts.

A detector has one owner: ``update_many`` releases the GIL while it changes the detector, so
two threads must not feed the same one (different detectors run in parallel).
"""
from libc.math cimport sqrt, log, fabs, isfinite, NAN, INFINITY
from libc.stdlib cimport realloc, free
from libc.string cimport memmove

import numpy as np

cimport cython

cdef enum:
    MODE_UP = 1
    MODE_DOWN = 2
    MODE_BOTH = 3

_MODES = {"up": MODE_UP, "down": MODE_DOWN, "both": MODE_BOTH}
_MODE_NAMES = {MODE_UP: "up", MODE_DOWN: "down", MODE_BOTH: "both"}


# ---------------------------------------------------------------------------------- alarms
cdef struct Alarm:
    Py_ssize_t index
    double before
    double after
    long long run
    int direction


cdef struct AlarmBuf:
    Alarm* data
    Py_ssize_t n
    Py_ssize_t cap


cdef inline int _alarm_push(AlarmBuf* buf, Py_ssize_t index, double before, double after,
                            long long run, int direction) noexcept nogil:
    """Append one detection; -1 when out of memory. Detections are rare, so a growable buffer
    beats allocating an index array as long as the batch."""
    cdef Alarm* grown
    cdef Py_ssize_t cap
    if buf.n == buf.cap:
        cap = 16 if buf.cap == 0 else 2 * buf.cap
        grown = <Alarm*> realloc(buf.data, cap * sizeof(Alarm))
        if grown == NULL:
            return -1
        buf.data = grown
        buf.cap = cap
    buf.data[buf.n].index = index
    buf.data[buf.n].before = before
    buf.data[buf.n].after = after
    buf.data[buf.n].run = run
    buf.data[buf.n].direction = direction
    buf.n += 1
    return 0


cdef object _alarms_out(AlarmBuf* buf, bint details):
    """The detections of one ``update_many`` call as numpy arrays (and free the buffer)."""
    cdef Py_ssize_t i, n = buf.n
    idx = np.empty(n, dtype=np.intp)
    cdef Py_ssize_t[::1] iv = idx
    for i in range(n):
        iv[i] = buf.data[i].index
    if not details:
        free(buf.data)
        buf.data = NULL
        return idx
    before = np.empty(n, dtype=np.float64)
    after = np.empty(n, dtype=np.float64)
    run = np.empty(n, dtype=np.int64)
    direction = np.empty(n, dtype=np.int8)
    cdef double[::1] bv = before, av = after
    cdef long long[::1] rv = run
    cdef signed char[::1] dv = direction
    for i in range(n):
        bv[i] = buf.data[i].before
        av[i] = buf.data[i].after
        rv[i] = buf.data[i].run
        dv[i] = <signed char> buf.data[i].direction
    free(buf.data)
    buf.data = NULL
    return {"index": idx, "estimation_before": before, "estimation_after": after,
            "run_length": run, "direction": direction}


cdef object _as_values(values):
    """``values`` as a C-contiguous float64 1-D array (a copy only when it is not one)."""
    arr = np.ascontiguousarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"update_many: values must be 1-D, got shape {arr.shape}")
    return arr


# ---------------------------------------------------------------------------- Page-Hinkley
cdef enum:
    LOOKBACK = 1024
    LOOKBACK_MASK = LOOKBACK - 1


@cython.final
cdef class PageHinkley:
    """Page-Hinkley test for a change in the mean (River's ``drift.PageHinkley``, same defaults).

    Per value x_t (after the running mean m_t of the values since the last reset includes it):

        U_t = alpha U_{t-1} + (x_t - m_t) - delta      drift up when   U_t - min_{s<=t} U_s > threshold
        L_t = alpha L_{t-1} + (x_t - m_t) + delta      drift down when max_{s<=t} L_s - L_t > threshold

    tested once at least ``min_instances`` values have been seen; ``mode`` picks "up", "down"
    or "both". River starts the running maximum of L at -1 (not -inf); so do we.

    Not River's: at a detection, where did the change happen? The argmin of U (the textbook
    estimate) is poor here: U is built on the running mean, so before a change it wanders like a
    random walk and its minimum can lie anywhere. Instead the last LOOKBACK (1024) values are
    kept in a ring, and at a detection (rare) the split of them that maximises the two-sample
    statistic (mean_after - mean_before) sqrt(a b / (a + b)) in the direction that fired is
    taken: the maximum-likelihood change point of a single mean shift with equal variances
    (Hinkley 1970, "Inference about the change-point in a sequence of random variables",
    Biometrika 57). One store per value; the scan only at a detection.
    """
    cdef readonly Py_ssize_t min_instances
    cdef readonly double delta, threshold, alpha
    cdef int _mode
    # River's state
    cdef double _n, _mean, _sum_inc, _sum_dec, _min_inc, _max_dec
    cdef bint _drift, _pending
    # ours: sum since reset, the ring of the last values, the last detection, counters
    cdef double _total
    cdef double _ring[LOOKBACK]
    cdef long long _n_detections, _n_nonfinite
    cdef double _before, _after
    cdef long long _run
    cdef int _direction

    def __init__(self, Py_ssize_t min_instances=30, double delta=0.005, double threshold=50.0,
                 double alpha=1 - 0.0001, str mode="both"):
        if mode not in _MODES:
            raise ValueError(f"Invalid 'mode'. Valid values are: {list(_MODES)}")
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self._mode = _MODES[mode]
        self.reset()

    @property
    def mode(self):
        return _MODE_NAMES[self._mode]

    def reset(self):
        """Forget everything: a new detector with the same parameters (counters included)."""
        self._clear()
        self._n_detections = 0
        self._n_nonfinite = 0

    cdef void _clear(self) noexcept nogil:
        """River's ``_reset``: the automatic reset after a detection (counters kept)."""
        self._n = 0.0
        self._mean = 0.0
        self._sum_inc = 0.0
        self._sum_dec = 0.0
        self._min_inc = INFINITY
        self._max_dec = -1.0
        self._drift = False
        self._pending = False
        self._total = 0.0
        self._before = NAN
        self._after = NAN
        self._run = 0
        self._direction = 0

    @cython.cdivision(True)
    cdef void _locate(self, int direction) noexcept nogil:
        """The change point among the last min(n, LOOKBACK) values: the split maximising
        direction * (mean_after - mean_before) sqrt(a b / m); fills _run, _after, _before."""
        cdef long long n = <long long> self._n
        cdef Py_ssize_t m = LOOKBACK if n > LOOKBACK else <Py_ssize_t> n
        cdef Py_ssize_t start = <Py_ssize_t> ((n - m) & LOOKBACK_MASK), s, best_a = 1
        cdef double ring_sum = 0.0, tail = 0.0, a, b, stat, best = -INFINITY
        for s in range(m):
            ring_sum += self._ring[(start + s) & LOOKBACK_MASK]
        # after-segment = the last a values, a = 1 .. m - 1 (both segments non-empty)
        for s in range(m - 1, 0, -1):
            tail += self._ring[(start + s) & LOOKBACK_MASK]
            a = <double> (m - s)
            b = <double> s
            stat = direction * (tail / a - (ring_sum - tail) / b) * sqrt(a * b / m)
            if stat > best:
                best = stat
                best_a = m - s
                self._after = tail / a
        if m < 2:
            best_a = 1
            self._after = self._ring[(n - 1) & LOOKBACK_MASK]
        self._run = best_a
        self._direction = direction
        if self._n > best_a:
            self._before = (self._total - self._after * best_a) / (self._n - best_a)
        else:
            self._before = NAN

    @cython.cdivision(True)
    cdef inline bint _step(self, double x) noexcept nogil:
        cdef double dev, test_inc, test_dec
        cdef bint up, down
        if not isfinite(x):
            self._n_nonfinite += 1
            self._drift = False
            return False
        if self._pending:
            self._clear()
        self._ring[(<long long> self._n) & LOOKBACK_MASK] = x
        # stats.Mean.update with w = 1.0: n += w; mean += (w / n) * (x - mean)
        self._n += 1.0
        self._mean += (1.0 / self._n) * (x - self._mean)
        dev = x - self._mean
        self._sum_inc = self.alpha * self._sum_inc + dev - self.delta
        self._sum_dec = self.alpha * self._sum_dec + dev + self.delta
        self._total += x
        if self._sum_inc < self._min_inc:
            self._min_inc = self._sum_inc
        if self._sum_dec > self._max_dec:
            self._max_dec = self._sum_dec
        if self._n < self.min_instances:
            self._drift = False
            return False
        test_inc = self._sum_inc - self._min_inc
        test_dec = self._max_dec - self._sum_dec
        up = test_inc > self.threshold and self._mode != MODE_DOWN
        down = test_dec > self.threshold and self._mode != MODE_UP
        self._drift = up or down
        if self._drift:
            self._pending = True
            self._n_detections += 1
            self._locate(1 if up and (not down or test_inc >= test_dec) else -1)
        return self._drift

    def update(self, double x):
        """Feed one value; True when a drift is detected at it (False for NaN/Inf, skipped)."""
        return self._step(x)

    def update_many(self, values, bint details=False):
        """Feed a 1-D batch in order; the indices (intp) of the values at which a drift was
        detected. ``details=True``: a dict of arrays, one entry per detection: ``index``,
        ``estimation_before``, ``estimation_after``, ``run_length``, ``direction``
        (see ``last_alarm``). Same result as calling ``update`` on each value."""
        arr = _as_values(values)
        cdef const double[::1] x = arr
        cdef Py_ssize_t i, n = x.shape[0]
        cdef AlarmBuf buf
        cdef int failed = 0
        buf.data = NULL
        buf.n = 0
        buf.cap = 0
        with nogil:
            for i in range(n):
                if self._step(x[i]):
                    if _alarm_push(&buf, i, self._before, self._after, self._run, self._direction) != 0:
                        failed = 1
                        break
        if failed:
            free(buf.data)
            raise MemoryError()
        return _alarms_out(&buf, details)

    @property
    def n(self):
        """Values seen since the last reset (NaN/Inf not counted)."""
        return int(self._n)

    @property
    def drift_detected(self):
        """Whether the last update detected a drift."""
        return bool(self._drift)

    @property
    def estimation(self):
        """Mean of the values since the last reset (River's running mean)."""
        return self._mean

    @property
    def n_detections(self):
        return self._n_detections

    @property
    def n_nonfinite(self):
        """NaN/Inf values skipped since construction or ``reset()``."""
        return self._n_nonfinite

    @property
    def last_alarm(self):
        """What the last update's detection says, or None when it detected nothing.

        ``direction``: +1 the "up" test fired (the larger one when both did), -1 "down";
        ``run_length``: values after the estimated change point (the current one included; at
        most 1024); ``estimation_after``: their mean; ``estimation_before``: the mean of the
        values from the last reset up to the change point (NaN when there are none)."""
        if not self._drift:
            return None
        return {"estimation_before": self._before, "estimation_after": self._after,
                "run_length": self._run, "direction": self._direction}

    def state(self):
        """Parameters and state as a dict of plain numbers and lists (JSON-able with NaN/Inf)."""
        cdef long long n = <long long> self._n
        cdef Py_ssize_t m = LOOKBACK if n > LOOKBACK else <Py_ssize_t> n, s
        return {
            "kind": "page_hinkley", "version": 1,
            "params": {"min_instances": self.min_instances, "delta": self.delta,
                       "threshold": self.threshold, "alpha": self.alpha, "mode": self.mode},
            "n": self._n, "mean": self._mean, "sum_inc": self._sum_inc, "sum_dec": self._sum_dec,
            "min_inc": self._min_inc, "max_dec": self._max_dec, "drift": bool(self._drift),
            "pending": bool(self._pending), "total": self._total,
            "recent": [self._ring[(n - m + s) & LOOKBACK_MASK] for s in range(m)],
            "n_detections": self._n_detections, "n_nonfinite": self._n_nonfinite,
            "before": self._before, "after": self._after, "run": self._run,
            "direction": self._direction,
        }

    @classmethod
    def from_state(cls, dict state):
        """The detector ``state()`` described."""
        if state.get("kind") != "page_hinkley" or state.get("version") != 1:
            raise ValueError("not a version-1 PageHinkley state")
        cdef PageHinkley d = cls(**state["params"])
        cdef long long n = <long long> state["n"]
        cdef Py_ssize_t s
        recent = state["recent"]
        if len(recent) != min(n, LOOKBACK):
            raise ValueError("PageHinkley state: 'recent' does not match 'n'")
        d._n = state["n"]
        d._mean = state["mean"]
        d._sum_inc = state["sum_inc"]
        d._sum_dec = state["sum_dec"]
        d._min_inc = state["min_inc"]
        d._max_dec = state["max_dec"]
        d._drift = state["drift"]
        d._pending = state["pending"]
        d._total = state["total"]
        for s, v in enumerate(recent):
            d._ring[(n - len(recent) + s) & LOOKBACK_MASK] = v
        d._n_detections = state["n_detections"]
        d._n_nonfinite = state["n_nonfinite"]
        d._before = state["before"]
        d._after = state["after"]
        d._run = state["run"]
        d._direction = state["direction"]
        return d

    def __reduce__(self):
        return (_restore, (type(self), self.state()))

    def __repr__(self):
        return (f"PageHinkley(min_instances={self.min_instances}, delta={self.delta}, "
                f"threshold={self.threshold}, alpha={self.alpha}, mode={self.mode!r})")


# ----------------------------------------------------------------------------------- ADWIN
@cython.final
cdef class ADWIN:
    """ADaptive WINdowing (Bifet & Gavalda 2007) as River's ``drift.ADWIN`` (ADWIN2 buckets).

    The window W is kept as an exponential histogram: row i holds up to ``max_buckets`` buckets
    of 2^i values each (their sum and their sum of squared deviations); a row that reaches
    ``max_buckets + 1`` merges its two oldest buckets into one bucket of the next row. Every
    ``clock`` values (once the window is longer than ``grace_period``), every split of W at a
    bucket boundary into an older W0 (n0 values) and a newer W1 (n1 values), both at least
    ``min_window_length`` long, is tested:

        |mean(W0) - mean(W1)| > sqrt(2 m var(W) d') + (2/3) d' m,
        m = 1/(n0 - min_window_length + 1) + 1/(n1 - min_window_length + 1),  d' = ln(2 ln|W| / delta)

    and while a split passes, the oldest bucket is dropped and the splits tested again.
    """
    cdef readonly double delta
    cdef readonly int clock
    cdef readonly Py_ssize_t max_buckets
    cdef readonly int min_window_length, grace_period
    cdef double _mwl, _grace
    # River's state
    cdef double _total, _variance, _width
    cdef long long _tick
    cdef bint _drift, _pending
    # the buckets: row r, entry k at [r * _cols + k]; entry 0 is the oldest of its row
    cdef Py_ssize_t _cols, _rows, _rows_cap
    cdef double* _tot
    cdef double* _var
    cdef Py_ssize_t* _cnt
    # ours
    cdef long long _n_detections, _n_nonfinite
    cdef double _before, _after
    cdef long long _run
    cdef int _direction

    def __cinit__(self):
        self._tot = NULL
        self._var = NULL
        self._cnt = NULL
        self._rows_cap = 0

    def __init__(self, double delta=0.002, int clock=32, Py_ssize_t max_buckets=5,
                 int min_window_length=5, int grace_period=10):
        if not (delta > 0.0):
            raise ValueError(f"ADWIN: delta must be > 0, got {delta}")
        if clock < 1:
            raise ValueError(f"ADWIN: clock must be >= 1, got {clock}")
        if max_buckets < 1:
            raise ValueError(f"ADWIN: max_buckets must be >= 1, got {max_buckets}")
        self.delta = delta
        self.clock = clock
        self.max_buckets = max_buckets
        self.min_window_length = min_window_length
        self.grace_period = grace_period
        self._mwl = min_window_length
        self._grace = grace_period
        free(self._tot)  # __init__ may run again on a live object: start from no buffers
        free(self._var)
        free(self._cnt)
        self._tot = NULL
        self._var = NULL
        self._cnt = NULL
        self._rows_cap = 0
        self._cols = max_buckets + 1
        self._alloc(8)
        self.reset()

    def __dealloc__(self):
        free(self._tot)
        free(self._var)
        free(self._cnt)

    cdef int _alloc(self, Py_ssize_t rows) except -1:
        """Room for ``rows`` rows (a row per doubling of the window: 8 covers ~1000 values with
        the default 5 buckets; it grows by doubling, without the GIL, in ``_grow``)."""
        if rows <= self._rows_cap:
            return 0
        if self._grow(rows) != 0:
            raise MemoryError()
        return 0

    cdef int _grow(self, Py_ssize_t rows) noexcept nogil:
        cdef double* t = <double*> realloc(self._tot, rows * self._cols * sizeof(double))
        if t == NULL:
            return -1
        self._tot = t
        t = <double*> realloc(self._var, rows * self._cols * sizeof(double))
        if t == NULL:
            return -1
        self._var = t
        cdef Py_ssize_t* c = <Py_ssize_t*> realloc(self._cnt, rows * sizeof(Py_ssize_t))
        if c == NULL:
            return -1
        self._cnt = c
        self._rows_cap = rows
        return 0

    def reset(self):
        """Forget everything: a new detector with the same parameters (counters included)."""
        self._clear()
        self._n_detections = 0
        self._n_nonfinite = 0

    cdef void _clear(self) noexcept nogil:
        """A new AdaptiveWindowing, as River's ``_reset`` after a detection (counters kept)."""
        self._total = 0.0
        self._variance = 0.0
        self._width = 0.0
        self._tick = 0
        self._drift = False
        self._pending = False
        self._rows = 1
        self._cnt[0] = 0
        self._before = NAN
        self._after = NAN
        self._run = 0
        self._direction = 0

    @cython.cdivision(True)
    cdef inline int _insert(self, double value) noexcept nogil:
        """Add one value as a bucket of row 0, then merge full rows upwards; -1 out of memory."""
        cdef Py_ssize_t cols = self._cols, idx, j
        cdef double incremental_variance = 0.0, delta_v
        cdef double n1, t0, t1, v0, v1, mu1, mu2, total12, temp, v12
        j = self._cnt[0]
        self._tot[j] = value
        self._var[j] = 0.0
        self._cnt[0] = j + 1
        self._width += 1.0
        if self._width > 1.0:
            delta_v = value - self._total / (self._width - 1.0)
            incremental_variance = (self._width - 1.0) * delta_v * delta_v / self._width
        self._variance += incremental_variance
        self._total += value
        idx = 0
        n1 = 1.0  # 2^idx values per bucket of row idx
        while self._cnt[idx] == self.max_buckets + 1:
            j = idx * cols
            t0 = self._tot[j]
            t1 = self._tot[j + 1]
            v0 = self._var[j]
            v1 = self._var[j + 1]
            mu1 = t0 / n1
            mu2 = t1 / n1
            total12 = t0 + t1
            temp = n1 * 0.5 * (mu1 - mu2) * (mu1 - mu2)
            v12 = v0 + v1 + temp
            if idx + 1 >= self._rows:
                if self._rows == self._rows_cap and self._grow(2 * self._rows_cap) != 0:
                    return -1
                self._cnt[self._rows] = 0
                self._rows += 1
            j = (idx + 1) * cols + self._cnt[idx + 1]
            self._tot[j] = total12
            self._var[j] = v12
            self._cnt[idx + 1] += 1
            j = idx * cols
            memmove(&self._tot[j], &self._tot[j + 2], (self._cnt[idx] - 2) * sizeof(double))
            memmove(&self._var[j], &self._var[j + 2], (self._cnt[idx] - 2) * sizeof(double))
            self._cnt[idx] -= 2
            if self._cnt[idx + 1] <= self.max_buckets:
                break
            idx += 1
            n1 = 2.0 * n1
        return 0

    @cython.cdivision(True)
    cdef inline void _delete_oldest(self, double bucket_size) noexcept nogil:
        """Drop the oldest bucket (entry 0 of the last row, of ``bucket_size`` values)."""
        cdef Py_ssize_t last = self._rows - 1, j = last * self._cols
        cdef double n = bucket_size, u = self._tot[j], v = self._var[j]
        cdef double mu = u / n, mu_window, incremental_variance
        self._width -= n
        self._total -= u
        mu_window = self._total / self._width
        incremental_variance = v + n * self._width * (mu - mu_window) * (mu - mu_window) / (n + self._width)
        self._variance -= incremental_variance
        memmove(&self._tot[j], &self._tot[j + 1], (self._cnt[last] - 1) * sizeof(double))
        memmove(&self._var[j], &self._var[j + 1], (self._cnt[last] - 1) * sizeof(double))
        self._cnt[last] -= 1
        # River pops the emptied last row. With max_buckets = 1 the row below can be empty too
        # (River would then read a bucket that is not there); never with max_buckets >= 2.
        while self._rows > 1 and self._cnt[self._rows - 1] == 0:
            self._rows -= 1

    @cython.cdivision(True)
    cdef void _locate(self) noexcept nogil:
        """Where the change is, for the report (no effect on detection): the split of the whole
        window at a bucket boundary maximising |mean(W0) - mean(W1)| sqrt(n0 n1 / |W|), the
        maximum-likelihood split for one mean shift. Why not the W1 that ADWIN keeps: ADWIN
        stops dropping buckets as soon as no split passes, and as the old part shrinks the
        window's variance (which now includes the shift) grows, so right after a change the
        kept window is still mostly old values. Run once per detection, before any drop."""
        cdef Py_ssize_t idx, k, c, cols = self._cols
        cdef double n0 = 0.0, n1 = self._width, u0 = 0.0, u1 = self._total, t, stat, best = -1.0
        cdef double bucket_size = 1.0
        for idx in range(self._rows - 1):
            bucket_size = 2.0 * bucket_size
        self._before = NAN
        self._after = NAN
        self._run = 0
        idx = self._rows
        while idx > 0:
            idx -= 1
            c = self._cnt[idx]
            for k in range(c):
                if idx == 0 and k == c - 1:
                    break
                n0 += bucket_size
                n1 -= bucket_size
                t = self._tot[idx * cols + k]
                u0 += t
                u1 -= t
                stat = fabs(u0 / n0 - u1 / n1) * sqrt(n0 * n1 / self._width)
                if stat > best:
                    best = stat
                    self._before = u0 / n0
                    self._after = u1 / n1
                    self._run = <long long> n1
            bucket_size = 0.5 * bucket_size

    @cython.cdivision(True)
    cdef inline bint _detect(self) noexcept nogil:
        """River's ``detect_change``: test the splits; drop oldest buckets while one passes.

        ln(2 ln|W| / delta) and var(W) depend only on the window, so they are computed once per
        pass instead of once per split (the same doubles River computes per split)."""
        cdef bint change_detected = False, reduce_width = True, exit_flag, cut
        cdef Py_ssize_t idx, k, c, cols = self._cols
        cdef double n0, n1, u0, u1, t, bucket_size, top_size, delta_mean
        cdef double delta_prime, var_w, m_recip, epsilon
        self._tick += 1
        if not (self._tick % self.clock == 0 and self._width > self._grace):
            return False
        while reduce_width:
            reduce_width = False
            exit_flag = False
            n0 = 0.0
            n1 = self._width
            u0 = 0.0
            u1 = self._total
            delta_prime = log(2.0 * log(self._width) / self.delta)
            var_w = self._variance / self._width
            top_size = 1.0
            for idx in range(self._rows - 1):
                top_size = 2.0 * top_size
            bucket_size = 2.0 * top_size
            idx = self._rows
            while idx > 0 and not exit_flag:
                idx -= 1
                bucket_size = 0.5 * bucket_size
                c = self._cnt[idx]
                for k in range(c):
                    n0 += bucket_size
                    n1 -= bucket_size
                    t = self._tot[idx * cols + k]
                    u0 += t
                    u1 -= t
                    if idx == 0 and k == c - 1:
                        exit_flag = True
                        break
                    if n1 >= self._mwl and n0 >= self._mwl:
                        delta_mean = (u0 / n0) - (u1 / n1)
                        m_recip = 1.0 / (n0 - self._mwl + 1.0) + 1.0 / (n1 - self._mwl + 1.0)
                        epsilon = sqrt(2.0 * m_recip * var_w * delta_prime) + 2.0 / 3.0 * delta_prime * m_recip
                        if fabs(delta_mean) > epsilon:
                            reduce_width = True
                            if not change_detected:
                                self._locate()  # before any bucket is dropped
                            change_detected = True
                            if self._width > 0.0:
                                self._delete_oldest(top_size)
                                exit_flag = True  # leave both loops; the while tests again
                                break
        return change_detected

    @cython.cdivision(True)
    cdef inline int _step(self, double x) noexcept nogil:
        """One value: 1 drift detected, 0 none, -1 out of memory."""
        if not isfinite(x):
            self._n_nonfinite += 1
            self._drift = False
            return 0
        if self._pending:
            self._clear()
        if self._insert(x) != 0:
            return -1
        self._drift = self._detect()
        if self._drift:
            self._pending = True
            self._n_detections += 1
            self._direction = 1 if self._after > self._before else -1
        return self._drift

    def update(self, double x):
        """Feed one value; True when a drift is detected at it (False for NaN/Inf, skipped)."""
        cdef int r = self._step(x)
        if r < 0:
            raise MemoryError()
        return r == 1

    def update_many(self, values, bint details=False):
        """Feed a 1-D batch in order; the indices (intp) of the values at which a drift was
        detected. ``details=True``: a dict of arrays, one entry per detection: ``index``,
        ``estimation_before``, ``estimation_after``, ``run_length``, ``direction``
        (see ``last_alarm``). Same result as calling ``update`` on each value."""
        arr = _as_values(values)
        cdef const double[::1] x = arr
        cdef Py_ssize_t i, n = x.shape[0]
        cdef AlarmBuf buf
        cdef int r, failed = 0
        buf.data = NULL
        buf.n = 0
        buf.cap = 0
        with nogil:
            for i in range(n):
                r = self._step(x[i])
                if r == 1:
                    if _alarm_push(&buf, i, self._before, self._after, self._run, self._direction) != 0:
                        failed = 1
                        break
                elif r < 0:
                    failed = 1
                    break
        if failed:
            free(buf.data)
            raise MemoryError()
        return _alarms_out(&buf, details)

    @property
    def n(self):
        """Values seen since the last reset (NaN/Inf not counted)."""
        return self._tick

    @property
    def drift_detected(self):
        """Whether the last update detected a drift."""
        return bool(self._drift)

    @property
    def width(self):
        """Values in the window (River's ``width``)."""
        return int(self._width)

    @property
    def total(self):
        """Sum of the values in the window (River's ``total``)."""
        return self._total

    @property
    def estimation(self):
        """Mean of the window (River's ``estimation``; 0 when empty)."""
        return self._total / self._width if self._width > 0.0 else 0.0

    @property
    def variance(self):
        """Variance of the values in the window (population: sum of squared deviations / width;
        River's ``_helper.variance_in_window``). NB River's ``ADWIN.variance`` returns the sum of
        squared deviations itself, i.e. ``width`` times this."""
        return self._variance / self._width if self._width > 0.0 else 0.0

    @property
    def n_buckets(self):
        """Buckets in the histogram (memory is O(max_buckets log width))."""
        cdef Py_ssize_t r, s = 0
        for r in range(self._rows):
            s += self._cnt[r]
        return s

    @property
    def n_detections(self):
        return self._n_detections

    @property
    def n_nonfinite(self):
        """NaN/Inf values skipped since construction or ``reset()``."""
        return self._n_nonfinite

    @property
    def last_alarm(self):
        """What the last update's detection says, or None when it detected nothing.

        The change is placed at the bucket boundary of the window (as it was when the change
        was detected) that splits it best (see ``_locate``): ``run_length`` values after it (the
        current one included), ``estimation_after`` their mean, ``estimation_before`` the mean
        of the values before it; ``direction``: the sign of after - before. (``estimation``
        and ``width`` read right after a detection are those of the window ADWIN kept, which
        right after a change is still mostly old values.)"""
        if not self._drift:
            return None
        return {"estimation_before": self._before, "estimation_after": self._after,
                "run_length": self._run, "direction": self._direction}

    def state(self):
        """Parameters and state as a dict of plain numbers and lists (JSON-able)."""
        cdef Py_ssize_t r, k
        rows = []
        for r in range(self._rows):
            rows.append([[self._tot[r * self._cols + k], self._var[r * self._cols + k]]
                         for k in range(self._cnt[r])])
        return {
            "kind": "adwin", "version": 1,
            "params": {"delta": self.delta, "clock": self.clock, "max_buckets": self.max_buckets,
                       "min_window_length": self.min_window_length, "grace_period": self.grace_period},
            "total": self._total, "variance": self._variance, "width": self._width,
            "tick": self._tick, "drift": bool(self._drift), "pending": bool(self._pending),
            "buckets": rows, "n_detections": self._n_detections, "n_nonfinite": self._n_nonfinite,
            "before": self._before, "after": self._after, "run": self._run,
            "direction": self._direction,
        }

    @classmethod
    def from_state(cls, dict state):
        """The detector ``state()`` described."""
        if state.get("kind") != "adwin" or state.get("version") != 1:
            raise ValueError("not a version-1 ADWIN state")
        cdef ADWIN d = cls(**state["params"])
        cdef Py_ssize_t r, k
        rows = state["buckets"]
        if len(rows) < 1 or any(len(row) > d.max_buckets for row in rows):
            raise ValueError("ADWIN state: bad bucket rows")
        d._alloc(max(len(rows), 8))
        d._rows = len(rows)
        for r, row in enumerate(rows):
            d._cnt[r] = len(row)
            for k, (t, v) in enumerate(row):
                d._tot[r * d._cols + k] = t
                d._var[r * d._cols + k] = v
        d._total = state["total"]
        d._variance = state["variance"]
        d._width = state["width"]
        d._tick = state["tick"]
        d._drift = state["drift"]
        d._pending = state["pending"]
        d._n_detections = state["n_detections"]
        d._n_nonfinite = state["n_nonfinite"]
        d._before = state["before"]
        d._after = state["after"]
        d._run = state["run"]
        d._direction = state["direction"]
        return d

    def __reduce__(self):
        return (_restore, (type(self), self.state()))

    def __repr__(self):
        return (f"ADWIN(delta={self.delta}, clock={self.clock}, max_buckets={self.max_buckets}, "
                f"min_window_length={self.min_window_length}, grace_period={self.grace_period})")


def _restore(cls, state):
    """Unpickle: ``cls.from_state(state)``."""
    return cls.from_state(state)
