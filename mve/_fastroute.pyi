"""Type stub for mve._fastroute, the proxy's C hot path (see mve/_fastroute.pyx)."""

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

MAX_INSTANCES: int
MAX_VARIANTS: int

class WeightedChooser:
    """O(1) weighted choice of a variant index (Walker/Vose alias table + xoshiro256**).

    Weights are relative, finite and >= 0 with a positive sum; a zero weight is never picked.
    Invalid weights raise ValueError. ``seed`` is an int in [0, 2**64) or None (os.urandom).
    """

    def __init__(self, weights: Sequence[float] | npt.ArrayLike, seed: int | None = None) -> None: ...
    @property
    def size(self) -> int:
        """The number of variants (zero-weight ones included)."""
    @property
    def weights(self) -> np.ndarray:
        """The weights as given (not normalised), a read-only float64 array."""
    def set_weights(self, weights: Sequence[float] | npt.ArrayLike) -> None:
        """Replace the weights (any number of variants); on ValueError nothing changes."""
    def pick(self) -> int: ...
    def pick_many(self, n: int) -> np.ndarray:
        """``n`` picks as a new int64 array."""
    def fill(self, out: np.ndarray) -> None:
        """Fill a writable 1-D int64 array with picks, in place."""

def hash_key(key: bytes | bytearray | memoryview | str, seed: int = 0) -> int:
    """XXH64 of the key's bytes (str as UTF-8): the hash StickyChooser uses."""

class StickyChooser:
    """Weighted rendezvous hashing of a byte key: the same key picks the same index in every
    process and run; changing one weight moves only the keys that must move.

    ``seeds`` (distinct ints in [0, 2**64), one per variant; default: the index) give each
    variant a stable identity, so adding a variant moves keys only to it.
    """

    def __init__(
        self, weights: Sequence[float] | npt.ArrayLike, seeds: Sequence[int] | None = None
    ) -> None: ...
    @property
    def size(self) -> int: ...
    @property
    def weights(self) -> np.ndarray:
        """The weights as given (not normalised), a read-only float64 array."""
    @property
    def seeds(self) -> tuple[int, ...]: ...
    def set_weights(
        self, weights: Sequence[float] | npt.ArrayLike, seeds: Sequence[int] | None = None
    ) -> None:
        """Replace the weights (and seeds if given). Without seeds, default seeds follow the
        number of weights and explicit seeds are kept (so the count must not change)."""
    def pick(self, key: bytes | bytearray | memoryview | str) -> int: ...

class InstanceBalancer:
    """Instance choice among a variant's instances: least outstanding requests or uniform at random.

    Counters live in C; ``acquire`` (fewest in flight, random tie-break) and ``acquire_random``
    (uniform) pick and increment, ``release`` decrements. Both pass over instances marked with
    ``set_skipped`` while another can be chosen (all skipped: all are candidates), and never
    ``exclude`` when there is another instance. ``n_instances`` is in [1, MAX_INSTANCES]; an index
    out of range, or a release below zero, raises ValueError.
    """

    def __init__(self, n_instances: int, seed: int | None = None) -> None: ...
    @property
    def size(self) -> int: ...
    @property
    def skipped_count(self) -> int: ...
    def acquire(self, exclude: int = -1) -> int: ...
    def acquire_random(self, exclude: int = -1) -> int: ...
    def set_skipped(self, index: int, skipped: bool) -> None: ...
    def skipped(self, index: int) -> bool: ...
    def release(self, index: int) -> None: ...
    def outstanding(self, index: int) -> int: ...
    def outstanding_all(self) -> np.ndarray: ...

def assemble_batch(arrays: Sequence[np.ndarray] | Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Copy N arrays (same dtype and trailing shape) into one contiguous array along axis 0.

    Returns (batch, offsets) with ``offsets`` of length N + 1 (int64 row offsets).
    Raises ValueError, naming the array, when dtypes or trailing shapes differ, for 0-d or
    object arrays, and for an empty list.
    """

def split_batch(batch: np.ndarray, offsets: np.ndarray | Sequence[int]) -> list[np.ndarray]:
    """Split a batched output back into per-request views by row offsets (no copies).

    ``offsets`` must start at 0, never decrease and end at ``batch.shape[0]`` (ValueError).
    """

class LatencyHistogram:
    """Log-linear latency histogram in microseconds: bucket 0 is [0, 1) us, then 64 buckets
    per power of two up to 2**30 us (about 17.9 minutes); larger values count in the top bucket.
    Latencies must be finite and >= 0 (ValueError)."""

    def __init__(self) -> None: ...
    def record(self, latency_us: float) -> None: ...
    def record_many(self, latencies_us: npt.ArrayLike) -> None: ...
    def merge(self, other: LatencyHistogram) -> None: ...
    def add_sparse(
        self, index: npt.ArrayLike, counts: npt.ArrayLike, total: float, smallest: float, largest: float
    ) -> None:
        """Add recordings given as bucket counts, with their exact sum, min and max."""
    def sparse(self) -> tuple[np.ndarray, np.ndarray]:
        """(index, counts) of the non-empty buckets, int64."""
    @property
    def min(self) -> float: ...
    @property
    def max(self) -> float: ...
    def reset(self) -> None: ...
    @property
    def count(self) -> int: ...
    @property
    def sum(self) -> float: ...
    def mean(self) -> float:
        """NaN when nothing was recorded."""
    def percentile(self, q: float) -> float:
        """q in [0, 100] (ValueError otherwise); NaN when nothing was recorded."""
    def percentiles(self, qs: Sequence[float] | npt.ArrayLike) -> np.ndarray: ...
    def bucket_bounds(self) -> np.ndarray:
        """Each bucket's exclusive upper edge (float64, microseconds); the last is +inf."""
    def bucket_counts(self) -> np.ndarray:
        """int64 counts aligned with ``bucket_bounds()``."""

def _alias_simd() -> bool:
    """Whether WeightedChooser's bulk picks use the AVX2 loop here (tables of <= 16 columns)."""

def scan_infer_request(data: bytes | bytearray | memoryview) -> tuple[str, str, str | None, str | None, bool]:
    """(model_name, id, target_variant, routing_key, forwardable) of a serialised ModelInferRequest, in one pass."""
def scan_batch_parts(
    data: bytes | bytearray | memoryview, itemsizes: dict[str, int], drop_parameters: tuple[str, ...] = ()
) -> tuple[tuple, list[memoryview], int] | None:
    """(compatibility key, raw input bytes, rows) of a serialised ModelInferRequest, as batch_parts reads the
    decoded message; None when it cannot be batched as it is."""
