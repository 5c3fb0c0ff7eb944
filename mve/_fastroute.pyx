"""The proxy's per-request work that is not I/O, in C: variant choice (weighted and sticky),
instance choice, batch assembly and latency histograms.

The C kernels and the state each type keeps live in ``_fastroute.pxd``; this module is the
Python-facing API over them. None of these types is meant to be shared between threads: the
proxy uses each from its event loop. The GIL is released only in bulk loops, and a table
swapped by ``set_weights`` during such a loop stays alive until the loop ends.

The per-request types are compiled with ``binding=False``: their methods are then plain method
descriptors, which CPython calls with less overhead than Cython's function objects (for
``WeightedChooser.pick`` that overhead is most of the cost of a call).
"""

import operator
import os

import numpy as np

cimport cython
cimport numpy as cnp
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.math cimport INFINITY, NAN, floor, isfinite
from libc.stdint cimport UINT32_MAX
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset

cnp.import_array()

# Bulk loops shorter than this keep the GIL: releasing it costs more than the loop.
cdef enum:
    NOGIL_MIN_ITEMS = 4096

MAX_INSTANCES = 1_000_000
# Alias picks draw 32-bit columns; 2**16 keeps their bias (m / 2**32) below 2e-5.
MAX_VARIANTS = 65_536


# ---------------------------------------------------------------------------- validation

cdef object _validated_weights(object weights):
    """Weights as a read-only float64 copy, or ValueError saying which weight is wrong."""
    try:
        w = np.array(weights, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"weights must be a 1-D sequence of numbers ({exc})") from None
    if w.ndim != 1:
        raise ValueError(f"weights must be a 1-D sequence of numbers, got shape {w.shape}")
    if w.shape[0] == 0:
        raise ValueError("weights must not be empty: give one weight per variant")
    if w.shape[0] > MAX_VARIANTS:
        raise ValueError(f"{w.shape[0]} weights is too many: at most {MAX_VARIANTS} variants")
    bad = np.flatnonzero(~np.isfinite(w))
    if bad.size:
        raise ValueError(f"weights[{bad[0]}] is {w[bad[0]]}: every weight must be finite")
    bad = np.flatnonzero(w < 0)
    if bad.size:
        raise ValueError(f"weights[{bad[0]}] is {w[bad[0]]}: every weight must be >= 0")
    if not (w > 0).any():
        raise ValueError("weights are all zero: at least one weight must be > 0")
    w.flags.writeable = False
    return w


cdef uint64_t _validated_seed(object seed) except? 0:
    """A 64-bit seed from an int in [0, 2**64), or from os.urandom when ``seed`` is None."""
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    try:
        value = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}") from None
    if not 0 <= value < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {value}")
    return value


cdef int64_t _validated_index(object index, int64_t size) except -1:
    try:
        value = operator.index(index)
    except TypeError:
        raise TypeError(f"instance index must be an int, got {type(index).__name__}") from None
    if not 0 <= value < size:
        raise ValueError(f"instance index {value} is out of range [0, {size})")
    return value


# ---------------------------------------------------------------------------- weighted choice

cdef inline uint32_t _threshold(double p) noexcept nogil:
    # p < 1 makes p * 2**32 < 2**32 exactly (a power-of-two product is exact).
    if p >= 1.0:
        return UINT32_MAX
    return <uint32_t>(p * 4294967296.0)


cdef object _alias_table(const double[::1] w, uint32_t *columns):
    """Build a Vose alias table over the positive weights; returns the buffer owning it."""
    cdef Py_ssize_t n = w.shape[0], m = 0, i, j, s, l, n_small = 0, n_large = 0
    cdef double w_max = 0.0, total = 0.0
    for i in range(n):
        if w[i] > 0.0:
            m += 1
            if w[i] > w_max:
                w_max = w[i]
    # Scaling by the largest weight first keeps the sum finite for weights near DBL_MAX.
    for i in range(n):
        total += w[i] / w_max
    table = np.zeros(m * sizeof(mve_alias_entry), dtype=np.uint8)
    cdef mve_alias_entry *e = <mve_alias_entry *> cnp.PyArray_DATA(table)
    cdef int64_t *index = <int64_t *> malloc(3 * m * sizeof(int64_t))
    cdef double *p = <double *> malloc(m * sizeof(double))
    if index == NULL or p == NULL:
        free(index)
        free(p)
        raise MemoryError()
    cdef int64_t *small = index + m
    cdef int64_t *large = index + 2 * m
    j = 0
    for i in range(n):
        if w[i] > 0.0:
            index[j] = i
            p[j] = (w[i] / w_max) * (m / total)
            j += 1
    for j in range(m):
        if p[j] < 1.0:
            small[n_small] = j
            n_small += 1
        else:
            large[n_large] = j
            n_large += 1
    while n_small and n_large:
        n_small -= 1
        s = small[n_small]
        n_large -= 1
        l = large[n_large]
        e[s].threshold = _threshold(p[s])
        e[s].other = index[l]
        e[s].flip = index[s] ^ index[l]
        p[l] = (p[l] + p[s]) - 1.0
        if p[l] < 1.0:
            small[n_small] = l
            n_small += 1
        else:
            large[n_large] = l
            n_large += 1
    # What is left is 1 up to rounding; every column here has a positive weight.
    while n_large:
        n_large -= 1
        l = large[n_large]
        e[l].threshold = UINT32_MAX
        e[l].other = index[l]
        e[l].flip = 0
    while n_small:
        n_small -= 1
        s = small[n_small]
        e[s].threshold = UINT32_MAX
        e[s].other = index[s]
        e[s].flip = 0
    free(index)
    free(p)
    columns[0] = m
    return table


@cython.binding(False)  # per-request methods: see the module docstring
cdef class WeightedChooser:
    """O(1) weighted choice of a variant index: a Walker/Vose alias table and xoshiro256**.

    ``weights`` are relative: finite, >= 0, with at least one > 0. A zero weight is never
    picked (zero-weight variants are left out of the table). ``seed`` (an int in [0, 2**64))
    makes the sequence of picks reproducible; None seeds from os.urandom. ``pick``,
    ``pick_many`` and ``fill`` draw from one stream: n picks are the same whichever of them
    made them. Each variant's probability is exact to about (number of variants) / 2**32.
    """

    def __init__(self, weights, seed=None):
        cdef uint64_t s = _validated_seed(seed)
        self.set_weights(weights)
        mve_alias_rng_seed(&self._rng, s)

    @property
    def size(self):
        """The number of variants (zero-weight ones included)."""
        return self._weights.shape[0]

    @property
    def weights(self):
        """The weights as given (not normalised), a read-only float64 array."""
        return self._weights

    def set_weights(self, weights):
        """Replace the weights (any number of variants); the random stream goes on.

        The new table is built aside and swapped in whole; invalid weights raise ValueError
        and leave the chooser as it was.
        """
        w = _validated_weights(weights)
        cdef uint32_t m = 0
        table = _alias_table(w, &m)
        self._table = table
        self._entries = <const mve_alias_entry *> cnp.PyArray_DATA(table)
        self._m = m
        self._weights = w

    def pick(self):
        """Pick one variant index with probability weight / sum(weights)."""
        if self._entries == NULL:
            raise ValueError("WeightedChooser was not initialised")
        return mve_alias_pick(self._entries, self._m, &self._rng)

    def pick_many(self, n):
        """Pick ``n`` variant indices at once; returns a new int64 array of length ``n``."""
        cdef Py_ssize_t count = operator.index(n)
        if count < 0:
            raise ValueError(f"n must be >= 0, got {count}")
        cdef cnp.npy_intp shape = count
        cdef cnp.ndarray out = cnp.PyArray_EMPTY(1, &shape, cnp.NPY_INT64, 0)
        self._fill(<int64_t *> cnp.PyArray_DATA(out), 1, count)
        return out

    def fill(self, out):
        """Fill a writable 1-D int64 array with picks, in place (a C loop without the GIL)."""
        if not (
            cnp.PyArray_Check(out)
            and cnp.PyArray_NDIM(out) == 1
            and cnp.PyArray_TYPE(out) == cnp.NPY_INT64
            and cnp.PyArray_ISNOTSWAPPED(out)
        ):
            raise ValueError("out must be a 1-D numpy array of dtype int64")
        if not cnp.PyArray_ISWRITEABLE(out):
            raise ValueError("out must be writable")
        cdef Py_ssize_t stride = cnp.PyArray_STRIDE(out, 0)
        if not cnp.PyArray_ISALIGNED(out) or stride % 8:
            out[...] = self.pick_many(out.shape[0])  # a view into packed bytes: rare, and slower
        else:
            self._fill(<int64_t *> cnp.PyArray_DATA(out), stride // 8, cnp.PyArray_DIM(out, 0))

    cdef int _fill(self, int64_t *out, Py_ssize_t stride, Py_ssize_t n) except -1:
        # The table's owner is held in a local: it stays alive even if set_weights swaps the
        # table while the GIL is released.
        cdef object owner = self._table
        cdef const mve_alias_entry *entries = self._entries
        if entries == NULL:
            raise ValueError("WeightedChooser was not initialised")
        if n >= NOGIL_MIN_ITEMS:
            with nogil:
                mve_alias_fill(entries, self._m, &self._rng, out, stride, n)
        else:
            mve_alias_fill(entries, self._m, &self._rng, out, stride, n)
        return 0


# ---------------------------------------------------------------------------- sticky choice

def hash_key(key, seed=0):
    """XXH64 of a key's bytes (str is hashed as UTF-8): the hash that StickyChooser uses.

    The same key gives the same hash in every process, run and platform.
    """
    if seed is None:
        raise TypeError("seed must be an int in [0, 2**64)")
    cdef uint64_t s = _validated_seed(seed)
    return _key_hash(key, s)


cdef uint64_t _key_hash(object key, uint64_t seed) except? 0:
    cdef Py_buffer view
    cdef uint64_t h
    if type(key) is bytes:
        return mve_xxh64(<const unsigned char *> PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), seed)
    if isinstance(key, str):
        data = (<str> key).encode("utf-8")
        return mve_xxh64(<const unsigned char *> PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), seed)
    if isinstance(key, (bytes, bytearray, memoryview)):
        PyObject_GetBuffer(key, &view, PyBUF_SIMPLE)
        try:
            h = mve_xxh64(<const unsigned char *> view.buf, view.len, seed)
        finally:
            PyBuffer_Release(&view)
        return h
    raise TypeError(f"key must be bytes, bytearray, memoryview or str, got {type(key).__name__}")


cdef tuple _validated_seeds(object seeds, Py_ssize_t k):
    try:
        values = tuple(operator.index(s) for s in seeds)
    except TypeError:
        raise TypeError("seeds must be a sequence of ints") from None
    if len(values) != k:
        raise ValueError(f"seeds has {len(values)} entries but there are {k} weights: give one seed per variant")
    for i, value in enumerate(values):
        if not 0 <= value < 2**64:
            raise ValueError(f"seeds[{i}] is {value}: every seed must be in [0, 2**64)")
    if len(set(values)) != k:
        raise ValueError("seeds must be distinct: two variants with one seed would move together")
    return values


@cython.binding(False)  # per-request methods: see the module docstring
cdef class StickyChooser:
    """Weighted rendezvous hashing of a byte key to a variant index.

    Each variant i scores a key by ``w_i / -ln(u_i)``, where ``u_i`` in (0, 1) comes from a
    64-bit mix of XXH64(key) and the variant's seed; the highest score wins. So a key picks
    variant i with probability w_i / sum(w), the same key picks the same variant in every
    process and run, and changing one weight moves only keys to (raise) or from (lower) that
    variant. Zero-weight variants are never picked.

    ``seeds`` (distinct ints in [0, 2**64), one per variant) give each variant a stable
    identity; the default is the variant's index, so appending a variant moves only keys to it.
    """

    def __init__(self, weights, seeds=None):
        self._default_seeds = True
        self.set_weights(weights, seeds)

    @property
    def size(self):
        """The number of variants (zero-weight ones included)."""
        return self._k

    @property
    def weights(self):
        """The weights as given (not normalised), a read-only float64 array."""
        return self._weights

    @property
    def seeds(self):
        """Each variant's seed, as a tuple of ints."""
        return self._seeds

    def set_weights(self, weights, seeds=None):
        """Replace the weights, and the seeds if given.

        Without ``seeds``: default (index) seeds follow the number of weights; seeds given
        earlier are kept, so the number of weights must stay the same. Invalid input raises
        ValueError and leaves the chooser as it was.
        """
        w = _validated_weights(weights)
        cdef Py_ssize_t k = w.shape[0]
        if seeds is not None:
            new_seeds = _validated_seeds(seeds, k)
            default = False
        elif self._default_seeds:
            new_seeds = tuple(range(k))
            default = True
        elif k == len(self._seeds):
            new_seeds = self._seeds
            default = False
        else:
            raise ValueError(
                f"this chooser has explicit seeds for {len(self._seeds)} variants; "
                f"pass seeds= with {k} entries to change the number of variants"
            )
        salts = np.empty(k, dtype=np.uint64)
        cdef uint64_t[::1] salt_view = salts
        cdef uint64_t x
        cdef Py_ssize_t i
        for i in range(k):
            x = new_seeds[i]
            salt_view[i] = mve_splitmix64_next(&x)
        salts.flags.writeable = False
        self._weights = w
        self._salts = salts
        self._w = <const double *> cnp.PyArray_DATA(w)
        self._s = <const uint64_t *> cnp.PyArray_DATA(salts)
        self._k = k
        self._seeds = new_seeds
        self._default_seeds = default

    def pick(self, key):
        """The variant index for ``key`` (bytes, bytearray, memoryview, or str as UTF-8)."""
        cdef uint64_t h = _key_hash(key, 0)
        if self._k == 0:
            raise ValueError("StickyChooser was not initialised")
        return mve_rendezvous_pick(h, self._w, self._s, self._k)


# ---------------------------------------------------------------------------- instance choice

@cython.binding(False)  # per-request methods: see the module docstring
cdef class InstanceBalancer:
    """Instance choice among a variant's instances, with their outstanding requests counted in C.

    ``acquire`` picks an instance with the fewest requests in flight (least outstanding requests,
    uniformly among ties), ``acquire_random`` one uniformly at random; both count one more on it,
    and ``release`` counts one less.

    An instance marked with ``set_skipped`` (ejected as an outlier, or refusing connections) is
    passed over by both while another instance can be chosen; when every candidate is skipped
    the choice falls back to all of them, so the variant still serves.
    """

    def __init__(self, n_instances, seed=None):
        n = operator.index(n_instances)
        if not 1 <= n <= MAX_INSTANCES:
            raise ValueError(f"n_instances must be in [1, {MAX_INSTANCES}], got {n}")
        cdef uint64_t s = _validated_seed(seed)
        self._counts_owner = np.zeros(n, dtype=np.int64)
        self._counts = <int64_t *> cnp.PyArray_DATA(self._counts_owner)
        self._skipped_owner = np.zeros(n, dtype=np.uint8)
        self._skipped = <uint8_t *> cnp.PyArray_DATA(self._skipped_owner)
        self._n_skipped = 0
        self._n = n
        mve_rng_seed(&self._rng, s)

    @property
    def size(self):
        """The number of instances."""
        return self._n

    @property
    def skipped_count(self):
        """How many instances are marked skipped."""
        return self._n_skipped

    cdef bint _candidate(self, int64_t i, int64_t exclude, bint honour_skips) noexcept:
        return i != exclude and not (honour_skips and self._skipped[i])

    cdef int64_t _least(self, int64_t exclude, bint honour_skips) noexcept:
        """The least-outstanding candidate (uniform among ties), or -1 when there is none."""
        cdef int64_t *c = self._counts
        cdef int64_t i, least = 0, ties = 0, chosen = -1
        for i in range(self._n):
            if not self._candidate(i, exclude, honour_skips):
                continue
            if ties == 0 or c[i] < least:
                least = c[i]
                ties = 1
                chosen = i
            elif c[i] == least:
                ties += 1
        # One draw, then the chosen-th minimum: uniform among ties like a reservoir, but a
        # single random number however many instances tie.
        if ties > 1:
            chosen = <int64_t> mve_rng_bounded(&self._rng, <uint64_t> ties)
            for i in range(self._n):
                if self._candidate(i, exclude, honour_skips) and c[i] == least:
                    if chosen == 0:
                        chosen = i
                        break
                    chosen -= 1
        return chosen

    cdef int64_t _uniform(self, int64_t exclude, bint honour_skips) noexcept:
        """A candidate uniformly at random, or -1 when there is none."""
        cdef int64_t i, candidates = 0, chosen
        for i in range(self._n):
            candidates += self._candidate(i, exclude, honour_skips)
        if candidates == 0:
            return -1
        chosen = <int64_t> mve_rng_bounded(&self._rng, <uint64_t> candidates)
        for i in range(self._n):
            if self._candidate(i, exclude, honour_skips):
                if chosen == 0:
                    return i
                chosen -= 1
        return -1

    cdef int64_t _exclusion(self, object exclude) except -2:
        cdef int64_t skip = operator.index(exclude)
        return skip if 0 <= skip < self._n and self._n > 1 else -1

    def acquire(self, exclude=-1):
        """Pick an instance with the fewest outstanding requests and count one more on it.

        Skipped instances are passed over while another can be chosen. With ``exclude`` an
        instance index and another instance to choose, never ``exclude`` (a retry after that
        instance failed).
        """
        cdef int64_t *c = self._counts
        if c == NULL:
            raise ValueError("InstanceBalancer was not initialised")
        cdef int64_t skip = self._exclusion(exclude)
        cdef int64_t chosen = self._least(skip, self._n_skipped > 0)
        if chosen < 0:
            chosen = self._least(skip, False)
        c[chosen] += 1
        return chosen

    def acquire_random(self, exclude=-1):
        """Pick an instance uniformly at random and count one more on it (routing strategy RANDOM).

        Skipped instances are passed over while another can be chosen. With ``exclude`` an
        instance index and another instance to choose, never ``exclude``: uniform among the
        others (a retry after that instance failed).
        """
        cdef int64_t *c = self._counts
        if c == NULL:
            raise ValueError("InstanceBalancer was not initialised")
        cdef int64_t skip = self._exclusion(exclude)
        cdef int64_t chosen = -1
        if self._n_skipped > 0:
            chosen = self._uniform(skip, True)
        if chosen < 0:
            if skip >= 0:
                chosen = <int64_t> mve_rng_bounded(&self._rng, <uint64_t> (self._n - 1))
                if chosen >= skip:
                    chosen += 1
            else:
                chosen = <int64_t> mve_rng_bounded(&self._rng, <uint64_t> self._n)
        c[chosen] += 1
        return chosen

    def set_skipped(self, index, skipped):
        """Mark instance ``index`` skipped (True) or choosable again (False)."""
        cdef int64_t i = _validated_index(index, self._n)
        cdef uint8_t flag = 1 if skipped else 0
        if self._skipped[i] != flag:
            self._n_skipped += 1 if flag else -1
            self._skipped[i] = flag

    def skipped(self, index):
        """Whether instance ``index`` is marked skipped."""
        return bool(self._skipped[_validated_index(index, self._n)])

    def release(self, index):
        """Count one request less on instance ``index``; ValueError if it has none."""
        cdef int64_t i = _validated_index(index, self._n)
        if self._counts[i] == 0:
            raise ValueError(f"instance {i} has no outstanding request to release")
        self._counts[i] -= 1

    def outstanding(self, index):
        """The number of outstanding requests on instance ``index``."""
        return self._counts[_validated_index(index, self._n)]

    def outstanding_all(self):
        """The outstanding requests of every instance, as a new int64 array."""
        return self._counts_owner.copy()


# ---------------------------------------------------------------------------- batching

cdef void _copy_rows(char *dst, const char **src, const int64_t[::1] offsets,
                     size_t row_nbytes) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(offsets.shape[0] - 1):
        if src[i] != NULL and offsets[i + 1] > offsets[i]:
            memcpy(dst + offsets[i] * row_nbytes, src[i], (offsets[i + 1] - offsets[i]) * row_nbytes)


def assemble_batch(arrays):
    """Copy N arrays (same dtype and trailing shape) into one contiguous array along axis 0.

    Returns ``(batch, offsets)``: ``batch[offsets[i]:offsets[i + 1]]`` holds ``arrays[i]``;
    ``offsets`` is int64 of length N + 1. Any dtype without Python objects works (bool and
    float16 included): rows are copied as bytes. Raises ValueError, naming the array, for an
    empty list, a non-array, a 0-d array, an object dtype, or a dtype or trailing shape that
    differs from ``arrays[0]``.
    """
    if isinstance(arrays, np.ndarray):
        raise ValueError("arrays must be a sequence of numpy arrays, not one array")
    arrays = list(arrays)
    cdef Py_ssize_t n = len(arrays), i
    if n == 0:
        raise ValueError("assemble_batch needs at least one array")
    for i in range(n):
        a = arrays[i]
        if not isinstance(a, np.ndarray):
            raise ValueError(f"arrays[{i}] is a {type(a).__name__}, not a numpy array")
        if a.ndim == 0:
            raise ValueError(f"arrays[{i}] is 0-d: every array needs a batch axis (axis 0)")
        if a.dtype.hasobject:
            raise ValueError(f"arrays[{i}] has dtype {a.dtype}, which holds Python objects")
    first = arrays[0]
    dtype, trailing = first.dtype, first.shape[1:]
    offsets = np.empty(n + 1, dtype=np.int64)
    cdef int64_t[::1] off = offsets
    off[0] = 0
    for i in range(n):
        a = arrays[i]
        if a.dtype != dtype:
            raise ValueError(f"arrays[{i}] has dtype {a.dtype}, but arrays[0] has {dtype}")
        if a.shape[1:] != trailing:
            raise ValueError(
                f"arrays[{i}] has shape {a.shape}, but arrays[0] has trailing shape {trailing}"
            )
        off[i + 1] = off[i] + a.shape[0]
    batch = np.empty((off[n],) + trailing, dtype=dtype)
    cdef size_t row_nbytes = dtype.itemsize
    for d in trailing:
        row_nbytes *= d
    cdef char *dst = <char *> cnp.PyArray_DATA(batch)
    cdef const char **src = <const char **> malloc(n * sizeof(char *))
    if src == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            a = arrays[i]
            if cnp.PyArray_IS_C_CONTIGUOUS(a):
                src[i] = <const char *> cnp.PyArray_DATA(a)
            else:
                src[i] = NULL
                np.copyto(batch[off[i]:off[i + 1]], a)
        if off[n] * row_nbytes >= NOGIL_MIN_ITEMS * 64:
            with nogil:
                _copy_rows(dst, src, off, row_nbytes)
        else:
            _copy_rows(dst, src, off, row_nbytes)
    finally:
        free(src)
    return batch, offsets


def split_batch(batch, offsets):
    """Split a batched array back into per-request views (no copies) by row offsets.

    ``offsets`` (integers) must start at 0, never decrease, and end at ``batch.shape[0]``;
    otherwise ValueError.
    """
    if not isinstance(batch, np.ndarray) or batch.ndim == 0:
        raise ValueError("batch must be a numpy array with a batch axis (axis 0)")
    o = np.asarray(offsets)
    if o.ndim != 1 or o.shape[0] == 0 or o.dtype.kind not in "iu":
        raise ValueError("offsets must be a non-empty 1-D array of integers")
    o = o.astype(np.int64, copy=False)
    cdef const int64_t[:] off = o
    cdef Py_ssize_t i, n = off.shape[0] - 1
    if off[0] != 0:
        raise ValueError(f"offsets[0] is {off[0]}, must be 0")
    for i in range(n):
        if off[i + 1] < off[i]:
            raise ValueError(f"offsets[{i + 1}] = {off[i + 1]} < offsets[{i}] = {off[i]}: offsets must not decrease")
    if off[n] != batch.shape[0]:
        raise ValueError(f"offsets[-1] is {off[n]}, but batch has {batch.shape[0]} rows")
    return [batch[off[i]:off[i + 1]] for i in range(n)]


# ---------------------------------------------------------------------------- latency

cdef inline double _check_latency(double v) except? -1.0:
    if not (v >= 0.0 and isfinite(v)):
        raise ValueError(f"latency must be a finite number >= 0 microseconds, got {v}")
    return v


cdef inline double _check_q(double q) except? -1.0:
    if not (0.0 <= q <= 100.0):
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    return q


cdef Py_ssize_t _record_all(mve_hist *h, const double[::1] v) noexcept nogil:
    # Check every value first so that a bad one records nothing; returns its index or -1.
    cdef Py_ssize_t i, n = v.shape[0]
    for i in range(n):
        if not (v[i] >= 0.0 and isfinite(v[i])):
            return i
    for i in range(n):
        mve_hist_add(h, v[i])
    return -1


@cython.binding(False)  # per-request methods: see the module docstring
cdef class LatencyHistogram:
    """Log-linear latency histogram in microseconds (HdrHistogram-style).

    Bucket 0 holds [0, 1) us; above, each power of two up to 2**30 us (about 17.9 minutes) is
    split into 64 buckets, so a bucket's width is at most 1/64 (1.6%) of its lower edge.
    Larger values are counted in the top bucket. ``count``, ``sum``, the smallest and the
    largest value are exact; percentiles are estimated from the buckets.
    """

    def __cinit__(self):
        self.reset()

    def record(self, double latency_us):
        """Record one latency (microseconds, finite, >= 0; ValueError otherwise)."""
        mve_hist_add(&self._h, _check_latency(latency_us))

    def record_many(self, latencies_us):
        """Record an array of latencies (microseconds); all are checked before any is recorded."""
        values = np.ascontiguousarray(latencies_us, dtype=np.float64).reshape(-1)
        cdef const double[::1] v = values
        cdef Py_ssize_t bad
        if v.shape[0] >= NOGIL_MIN_ITEMS:
            with nogil:
                bad = _record_all(&self._h, v)
        else:
            bad = _record_all(&self._h, v)
        if bad >= 0:
            raise ValueError(f"latencies_us[{bad}] is {v[bad]}: latencies must be finite and >= 0")

    def merge(self, LatencyHistogram other not None):
        """Add another histogram's recordings to this one."""
        cdef int b
        cdef mve_hist *o = &other._h
        for b in range(MVE_HIST_BUCKETS):
            self._h.counts[b] += o.counts[b]
        self._h.count += o.count
        self._h.sum += o.sum
        if o.min < self._h.min:
            self._h.min = o.min
        if o.max > self._h.max:
            self._h.max = o.max

    def add_sparse(self, index, counts, double total, double smallest, double largest):
        """Add recordings given as buckets: ``counts[i]`` values in bucket ``index[i]``.

        `total`, `smallest` and `largest` are the exact sum, min and max of those values (as a
        report from another histogram carries them). Used to rebuild a histogram from
        ``sparse()`` output; ValueError for a bucket out of range, a negative count or
        arrays of different lengths, and nothing is added then.
        """
        idx = np.ascontiguousarray(index, dtype=np.int64).reshape(-1)
        cnt = np.ascontiguousarray(counts, dtype=np.int64).reshape(-1)
        if idx.shape[0] != cnt.shape[0]:
            raise ValueError(f"index has {idx.shape[0]} buckets but counts has {cnt.shape[0]}")
        if idx.shape[0] and (idx.min() < 0 or idx.max() >= MVE_HIST_BUCKETS):
            raise ValueError(f"bucket index out of range [0, {MVE_HIST_BUCKETS})")
        if cnt.shape[0] and cnt.min() < 0:
            raise ValueError("bucket counts must be >= 0")
        cdef const int64_t[::1] i = idx
        cdef const int64_t[::1] c = cnt
        cdef Py_ssize_t k
        cdef int64_t added = 0
        for k in range(i.shape[0]):
            self._h.counts[i[k]] += c[k]
            added += c[k]
        if added == 0:
            return
        self._h.count += added
        self._h.sum += total
        if smallest < self._h.min:
            self._h.min = smallest
        if largest > self._h.max:
            self._h.max = largest

    def sparse(self):
        """(index, counts) of the buckets that counted something: int64 arrays, ascending index."""
        counts = self.bucket_counts()
        index = np.flatnonzero(counts)
        return index.astype(np.int64), counts[index]

    @property
    def min(self):
        """The smallest recorded latency (exact); NaN when nothing was recorded."""
        return self._h.min if self._h.count else NAN

    @property
    def max(self):
        """The largest recorded latency (exact); NaN when nothing was recorded."""
        return self._h.max if self._h.count else NAN

    def reset(self):
        """Forget every recording."""
        memset(&self._h, 0, sizeof(mve_hist))
        self._h.min = INFINITY
        self._h.max = -INFINITY

    @property
    def count(self):
        """The number of recorded latencies."""
        return self._h.count

    @property
    def sum(self):
        """The sum of the recorded latencies, microseconds (exact values, not bucket edges)."""
        return self._h.sum

    def mean(self):
        """The mean latency in microseconds; NaN when nothing was recorded."""
        return self._h.sum / self._h.count if self._h.count else NAN

    cdef double _order_statistic(self, int64_t k) noexcept nogil:
        # The k-th smallest value (0-based): exact for the first and the last, else the middle
        # of its bucket kept within the exact smallest and largest values.
        cdef int64_t seen = 0
        cdef int b
        cdef double v
        if k <= 0:
            return self._h.min
        if k >= self._h.count - 1:
            return self._h.max
        for b in range(MVE_HIST_BUCKETS):
            seen += self._h.counts[b]
            if seen > k:
                v = 0.5 * (mve_hist_lower(b) + mve_hist_upper(b))
                return min(max(v, self._h.min), self._h.max)
        return self._h.max

    cdef double _percentile(self, double q) noexcept nogil:
        # numpy.percentile's default (linear) interpolation between order statistics.
        if self._h.count == 0:
            return NAN
        cdef double rank = q / 100.0 * (self._h.count - 1)
        cdef int64_t lo = <int64_t> floor(rank)
        cdef double low = self._order_statistic(lo)
        if lo + 1 >= self._h.count or rank == lo:
            return low
        return low + (rank - lo) * (self._order_statistic(lo + 1) - low)

    def percentile(self, double q):
        """The q-th percentile (q in [0, 100]) in microseconds; NaN when nothing was recorded.

        Interpolates like ``numpy.percentile``; each order statistic is within its bucket's
        relative width (<= 1/64) of the true value, and q = 0 and 100 are the exact min and max.
        """
        return self._percentile(_check_q(q))

    def percentiles(self, qs):
        """``percentile(q)`` for each q in ``qs``, as a float64 array."""
        q = np.asarray(qs, dtype=np.float64).reshape(-1)
        for value in q:
            _check_q(value)
        out = np.empty(q.shape[0], dtype=np.float64)
        cdef double[::1] o = out
        cdef Py_ssize_t i
        for i in range(q.shape[0]):
            o[i] = self._percentile(q[i])
        return out

    def bucket_bounds(self):
        """Each bucket's exclusive upper edge in microseconds (the last one is +inf)."""
        out = np.empty(MVE_HIST_BUCKETS, dtype=np.float64)
        cdef double[::1] o = out
        cdef int b
        for b in range(MVE_HIST_BUCKETS):
            o[b] = mve_hist_upper(b)
        o[MVE_HIST_BUCKETS - 1] = INFINITY
        return out

    def bucket_counts(self):
        """The count in each bucket, int64, aligned with ``bucket_bounds()``."""
        out = np.empty(MVE_HIST_BUCKETS, dtype=np.int64)
        cdef int64_t[::1] o = out
        cdef int b
        for b in range(MVE_HIST_BUCKETS):
            o[b] = self._h.counts[b]
        return out


def _alias_simd():
    """Whether WeightedChooser's bulk picks use the AVX2 loop here (tables of <= 16 columns)."""
    return bool(mve_alias_simd())


# ---------------------------------------------------------------------------- request scan

cdef inline bint _varint(const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos, unsigned long long* out) noexcept:
    """Read a protobuf varint at pos[0]; False when truncated or longer than 10 bytes."""
    cdef unsigned long long value = 0
    cdef int shift = 0
    cdef unsigned char b
    while pos[0] < n and shift < 70:
        b = p[pos[0]]
        pos[0] += 1
        value |= <unsigned long long>(b & 0x7F) << shift
        if b < 0x80:
            out[0] = value
            return True
        shift += 7
    return False


cdef inline bint _skip(const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos, int wire_type) noexcept:
    """Skip a field's value of `wire_type`; False when the bytes end first or the type is not one proto3 writes."""
    cdef unsigned long long length
    if wire_type == 0:
        return _varint(p, n, pos, &length)
    if wire_type == 1:
        pos[0] += 8
    elif wire_type == 5:
        pos[0] += 4
    elif wire_type == 2:
        if not _varint(p, n, pos, &length) or length > <unsigned long long>(n - pos[0]):
            return False
        pos[0] += <Py_ssize_t>length
    else:
        return False
    return pos[0] <= n


cdef inline bint _field(const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos, int* number, int* wire_type,
                        Py_ssize_t* start, Py_ssize_t* end) noexcept:
    """Read one field's tag (and a length-delimited field's bounds); False when malformed."""
    cdef unsigned long long tag, length
    if not _varint(p, n, pos, &tag) or tag >> 3 == 0 or tag >> 3 > 536870911:
        return False
    number[0] = <int>(tag >> 3)
    wire_type[0] = <int>(tag & 7)
    if wire_type[0] == 2:
        if not _varint(p, n, pos, &length) or length > <unsigned long long>(n - pos[0]):
            return False
        start[0] = pos[0]
        end[0] = pos[0] + <Py_ssize_t>length
        pos[0] = end[0]
        return True
    start[0] = end[0] = pos[0]
    return _skip(p, n, pos, wire_type[0])


cdef int _routing_parameter(const unsigned char* p, Py_ssize_t start, Py_ssize_t end, Py_ssize_t* value_start,
                            Py_ssize_t* value_end, int* which) noexcept:
    """One ``parameters`` map entry: 1 = target_variant, 2 = routing_key, 0 = another key, -1 = malformed.

    `which` is the InferParameter's oneof field set last (3: string_param, its bytes in value_*; 0: none).
    """
    cdef Py_ssize_t pos = start, s, e, vpos
    cdef int number, wire_type, key = 0, vnumber, vwire
    cdef Py_ssize_t vs, ve
    which[0] = 0
    while pos < end:
        if not _field(p, end, &pos, &number, &wire_type, &s, &e):
            return -1
        if number == 1 and wire_type == 2:
            if e - s == 14 and memcmp(p + s, b"target_variant", 14) == 0:
                key = 1
            elif e - s == 11 and memcmp(p + s, b"routing_key", 11) == 0:
                key = 2
            else:
                key = 0
        elif number == 2 and wire_type == 2:
            vpos = s        # the value message; repeated values merge: the oneof set last wins
            while vpos < e:
                if not _field(p, e, &vpos, &vnumber, &vwire, &vs, &ve):
                    return -1
                # bool, int64, string, double, uint64: a field of another wire type is an unknown one
                if (vnumber == 3 and vwire == 2) or (vnumber == 4 and vwire == 1) or \
                        ((vnumber == 1 or vnumber == 2 or vnumber == 5) and vwire == 0):
                    which[0] = vnumber
                    if vnumber == 3:
                        value_start[0] = vs
                        value_end[0] = ve
    return key


def scan_infer_request(data):
    """What routing needs of a serialised ``inference.ModelInferRequest``, in one pass over its bytes.

    Returns ``(model_name, id, target_variant, routing_key, forwardable)``: the last value of each
    field as protobuf reads it (a map entry's last value per key); the two routing parameters are
    ``""`` when absent and None when present but not a ``string_param``; ``forwardable`` when there
    is one ``raw_input_contents`` entry per input and no input has typed ``contents``. Raises
    ValueError for bytes that are not such a message (bad wire format or a string that is not UTF-8).
    """
    cdef const unsigned char[::1] view = data
    cdef const unsigned char* p
    cdef Py_ssize_t n = view.shape[0], pos = 0, s = 0, e = 0, ts, te, tpos, vs = 0, ve = 0
    cdef Py_ssize_t name_s = 0, name_e = 0, id_s = 0, id_e = 0, target_s = 0, target_e = 0, key_s = 0, key_e = 0
    cdef int number, wire_type, tnumber, twire, entry, which
    cdef int target_kind = -1, key_kind = -1     # -1: absent; else the oneof field set last (3: string)
    cdef Py_ssize_t inputs = 0, raws = 0
    cdef bint typed = False
    if n == 0:
        return "", "", "", "", False
    p = &view[0]
    while pos < n:
        if not _field(p, n, &pos, &number, &wire_type, &s, &e):
            raise ValueError("not a valid inference.ModelInferRequest")
        if wire_type != 2:
            continue
        if number == 1:
            name_s, name_e = s, e
        elif number == 3:
            id_s, id_e = s, e
        elif number == 4:
            entry = _routing_parameter(p, s, e, &vs, &ve, &which)
            if entry < 0:
                raise ValueError("not a valid inference.ModelInferRequest")
            if entry == 1:
                target_kind, target_s, target_e = which, vs, ve
            elif entry == 2:
                key_kind, key_s, key_e = which, vs, ve
        elif number == 5:
            inputs += 1
            tpos = s
            while tpos < e:
                if not _field(p, e, &tpos, &tnumber, &twire, &ts, &te):
                    raise ValueError("not a valid inference.ModelInferRequest")
                if tnumber == 5 and twire == 2:
                    typed = True
        elif number == 7:
            raws += 1
    try:
        model_name = bytes(view[name_s:name_e]).decode("utf-8")
        request_id = bytes(view[id_s:id_e]).decode("utf-8")
        target = "" if target_kind < 0 else (bytes(view[target_s:target_e]).decode("utf-8") if target_kind == 3 else None)
        key = "" if key_kind < 0 else (bytes(view[key_s:key_e]).decode("utf-8") if key_kind == 3 else None)
    except UnicodeDecodeError:
        raise ValueError("not a valid inference.ModelInferRequest: a string is not UTF-8") from None
    return model_name, request_id, target, key, raws > 0 and raws == inputs and not typed


cdef object _map_entry(const unsigned char* p, Py_ssize_t start, Py_ssize_t end, const unsigned char[::1] view):
    """One map<string, message> entry: (key, the value's bytes), or None when malformed. Repeated
    value fields merge as protobuf merges messages: their bytes concatenated."""
    cdef Py_ssize_t pos = start, s, e
    cdef int number, wire_type
    cdef Py_ssize_t key_s = 0, key_e = 0
    value = b""
    while pos < end:
        if not _field(p, end, &pos, &number, &wire_type, &s, &e):
            return None
        if wire_type != 2:
            continue
        if number == 1:
            key_s, key_e = s, e
        elif number == 2:
            value += bytes(view[s:e])
    return bytes(view[key_s:key_e]).decode("utf-8"), value


cdef object _input_layout(const unsigned char* p, Py_ssize_t start, Py_ssize_t end, const unsigned char[::1] view,
                          dict itemsizes):
    """An ``InferInputTensor``: (name, datatype, shape tuple, sorted parameters, item size), or None
    when the bytes are malformed or the datatype has no fixed item size (BYTES, unknown)."""
    cdef Py_ssize_t pos = start, s, e, spos
    cdef int number, wire_type
    cdef unsigned long long dim
    cdef Py_ssize_t name_s = 0, name_e = 0, type_s = 0, type_e = 0
    shape = []
    parameters = None
    while pos < end:
        if not _field(p, end, &pos, &number, &wire_type, &s, &e):
            return None
        if number == 1 and wire_type == 2:
            name_s, name_e = s, e
        elif number == 2 and wire_type == 2:
            type_s, type_e = s, e
        elif number == 3 and wire_type == 2:        # packed shape
            spos = s
            while spos < e:
                if not _varint(p, e, &spos, &dim):
                    return None
                shape.append(<long long>dim)
        elif number == 3 and wire_type == 0:        # one dimension, unpacked
            spos = s
            if not _varint(p, end, &spos, &dim):
                return None
            shape.append(<long long>dim)
        elif number == 4 and wire_type == 2:
            entry = _map_entry(p, s, e, view)
            if entry is None:
                return None
            if parameters is None:
                parameters = {}
            parameters[entry[0]] = entry[1]
    datatype = bytes(view[type_s:type_e]).decode("utf-8")
    itemsize = itemsizes.get(datatype)
    if itemsize is None:
        return None
    return (bytes(view[name_s:name_e]).decode("utf-8"), datatype, tuple(shape),
            tuple(sorted(parameters.items())) if parameters else (), itemsize)


def scan_batch_parts(data, dict itemsizes, tuple drop_parameters=()):
    """What batching needs of a serialised ``inference.ModelInferRequest``, from its bytes, with no
    message decoded: ``(key, raw input bytes, rows)`` as ``mve.proxy.batching.assembly.batch_parts``
    gives for the decoded request, or None when it cannot be batched as it is.

    `itemsizes` maps each batchable datatype to its item size. The key is ``(inputs, outputs,
    parameters)``: per input ``(name, datatype, trailing shape, sorted (key, value bytes) parameters)``,
    each requested output's bytes, and the request's sorted parameters without `drop_parameters`;
    value bytes are as sent, so a client that encodes a map or a message otherwise than protobuf
    does only batches apart from the others. The raw bytes are memoryviews of `data`. None also for
    typed contents, raw contents that do not match the inputs, BYTES or unknown datatypes, no or
    disagreeing rows, negative dimensions and malformed bytes (the slow path then says what is wrong).
    """
    cdef const unsigned char[::1] view = data
    cdef const unsigned char* p
    cdef Py_ssize_t n = view.shape[0], pos = 0, s, e, tpos, ts, te
    cdef int number, wire_type, tnumber, twire
    cdef long long rows = -1, dim, count
    cdef Py_ssize_t itemsize
    if n == 0:
        return None
    p = &view[0]
    whole = memoryview(data)
    inputs = []
    raws = []
    outputs = []
    parameters = None
    try:
        while pos < n:
            if not _field(p, n, &pos, &number, &wire_type, &s, &e):
                return None
            if wire_type != 2:
                continue
            if number == 5:
                tpos = s
                while tpos < e:             # typed contents: not batchable as they are
                    if not _field(p, e, &tpos, &tnumber, &twire, &ts, &te):
                        return None
                    if tnumber == 5 and twire == 2:
                        return None
                layout = _input_layout(p, s, e, view, itemsizes)
                if layout is None:
                    return None
                inputs.append(layout)
            elif number == 6:
                outputs.append(bytes(view[s:e]))
            elif number == 7:
                raws.append(whole[s:e])
            elif number == 4:
                entry = _map_entry(p, s, e, view)
                if entry is None:
                    return None
                if entry[0] not in drop_parameters:
                    if parameters is None:
                        parameters = {}
                    parameters[entry[0]] = entry[1]
    except UnicodeDecodeError:
        return None
    if not inputs or len(raws) != len(inputs):
        return None
    layout = []
    for (name, datatype, shape, tensor_parameters, itemsize), raw in zip(inputs, raws):
        if not shape:
            return None
        dim = shape[0]
        if dim <= 0 or (rows != -1 and dim != rows):
            return None
        rows = dim
        count = itemsize
        for dim in shape:
            if dim < 0:
                return None
            if dim and count > (n // dim):         # more bytes than the message has: cannot match
                return None
            count *= dim
        if count != len(raw):
            return None
        layout.append((name, datatype, shape[1:], tensor_parameters))
    key = (tuple(layout), tuple(outputs), tuple(sorted(parameters.items())) if parameters else ())
    return key, raws, rows
