"""What a batch may be: a variant's batching knobs (`BatchingPolicy`), validated, and their bounds."""

from __future__ import annotations

from dataclasses import dataclass

from mve.errors import ValidationError

MAX_BATCH_SIZE = 1024
MAX_BATCH_DELAY_US = 1_000_000
MAX_BATCHES_IN_FLIGHT = 64
# Two: one batch runs while the next, full, waits at the model server (no idle gap between them).
DEFAULT_BATCHES_IN_FLIGHT = 2
MAX_QUEUE_ROWS = 1_048_576
# With max_queue_rows 0, a variant queues this many full batches before refusing requests.
DEFAULT_QUEUE_BATCHES = 64


@dataclass(frozen=True)
class BatchingPolicy:
    """A variant's batching knobs (``mve.v1.BatchingConfig``), validated; off when max_batch_size <= 1."""

    max_batch_size: int = 0
    max_delay_us: int = 0
    max_batches_in_flight_per_instance: int = DEFAULT_BATCHES_IN_FLIGHT
    max_queue_rows: int = 0  # 0: DEFAULT_QUEUE_BATCHES * max_batch_size

    def __post_init__(self):
        checks = (
            ("max_batch_size", self.max_batch_size, 0, MAX_BATCH_SIZE),
            ("max_delay_us", self.max_delay_us, 0, MAX_BATCH_DELAY_US),
            ("max_batches_in_flight_per_instance", self.max_batches_in_flight_per_instance, 1, MAX_BATCHES_IN_FLIGHT),
            ("max_queue_rows", self.max_queue_rows, 0, MAX_QUEUE_ROWS),
        )
        for name, value, low, high in checks:
            if not low <= value <= high:
                raise ValidationError(f"batching {name} must be {low}-{high}, got {value}")

    @classmethod
    def from_config(cls, config) -> "BatchingPolicy":
        """From a ``BatchingConfig`` message (0 in-flight means DEFAULT_BATCHES_IN_FLIGHT)."""
        return cls(
            max_batch_size=config.max_batch_size,
            max_delay_us=config.max_delay_us,
            max_batches_in_flight_per_instance=config.max_batches_in_flight_per_instance or DEFAULT_BATCHES_IN_FLIGHT,
            max_queue_rows=config.max_queue_rows,
        )

    @property
    def enabled(self) -> bool:
        """Whether requests are batched at all."""
        return self.max_batch_size > 1

    @property
    def queue_limit(self) -> int:
        """Queued rows above which new requests are refused."""
        return self.max_queue_rows or DEFAULT_QUEUE_BATCHES * self.max_batch_size


BATCHING_OFF = BatchingPolicy()
