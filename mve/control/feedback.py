"""SendFeedback: ground-truth labels and rewards for inference ids, kept in ``experiments.db``.

One row per (endpoint, inference id); a later entry for the same id replaces the earlier one (in
one call, the last entry wins). A call is all or nothing: the first invalid entry refuses the
whole call, and the error names its index. Feedback is joined to the captured record of the
invocation through its inference id when a report or a bandit reads it; feedback older than the
retention (``--metrics-retention-days``, counted from when it was received) is deleted by the
capture index's upkeep.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from mve.control.experiments_db import ExperimentsDb
from mve.errors import ValidationError

MAX_ENTRIES = 1000
MAX_INFERENCE_ID = 64
MAX_LABELS = 10_000
MAX_LABEL_CHARS = 256
# An observation time this far ahead of the control plane's clock is refused (clocks drift; dates
# in the future do not happen).
MAX_FUTURE_S = 300.0
EARLIEST_TIME = 946_684_800.0  # 2000-01-01T00:00:00Z: anything earlier is a unit mistake


@dataclass(frozen=True)
class FeedbackEntry:
    """One entry of SendFeedback: labels (one per row of the invocation) and/or a reward.

    `observation_time` None: when the control plane received it.
    """

    inference_id: str
    labels: tuple[str, ...] = ()
    reward: float | None = None
    observation_time: float | None = None


def validate_entries(entries: Sequence[FeedbackEntry], now: float) -> None:
    """Every rule of SendFeedbackRequest, or ValidationError naming the first bad entry's index."""
    if not 1 <= len(entries) <= MAX_ENTRIES:
        raise ValidationError(f"Feedback must hold 1-{MAX_ENTRIES} entries, got {len(entries)}.")
    for i, entry in enumerate(entries):
        where = f"Feedback[{i}]"
        if not 1 <= len(entry.inference_id) <= MAX_INFERENCE_ID:
            raise ValidationError(
                f"{where}.InferenceId must be 1-{MAX_INFERENCE_ID} characters, got {len(entry.inference_id)}."
            )
        if not entry.labels and entry.reward is None:
            raise ValidationError(f"{where} (inference id {entry.inference_id!r}) has neither GroundTruthLabels nor a Reward.")
        if len(entry.labels) > MAX_LABELS:
            raise ValidationError(f"{where}.GroundTruthLabels may hold at most {MAX_LABELS} labels, got {len(entry.labels)}.")
        for j, label in enumerate(entry.labels):
            if not 1 <= len(label) <= MAX_LABEL_CHARS:
                raise ValidationError(
                    f"{where}.GroundTruthLabels[{j}] must be 1-{MAX_LABEL_CHARS} characters, got {len(label)}."
                )
        if entry.reward is not None and not math.isfinite(entry.reward):
            raise ValidationError(f"{where}.Reward must be a finite number, got {entry.reward}.")
        when = entry.observation_time
        if when is not None and not (EARLIEST_TIME <= when <= now + MAX_FUTURE_S):
            raise ValidationError(
                f"{where}.ObservationTime must be after 2000-01-01 and at most {MAX_FUTURE_S:g} s ahead of the "
                "control plane's clock."
            )


class FeedbackStore:
    """Feedback rows of `ExperimentsDb`; `put` validates and writes one call (use it off the event loop)."""

    def __init__(self, db: ExperimentsDb, clock: Callable[[], float] = time.time):
        self.db = db
        self._clock = clock

    def put(self, endpoint_name: str, entries: Sequence[FeedbackEntry]) -> int:
        """Validate and store every entry in one transaction; returns how many were accepted."""
        now = self._clock()
        validate_entries(entries, now)
        rows = [
            (
                endpoint_name,
                e.inference_id,
                json.dumps(list(e.labels)) if e.labels else None,
                e.reward,
                e.observation_time if e.observation_time is not None else now,
                now,
            )
            for e in entries
        ]
        with self.db.transaction() as db:
            db.executemany(
                "INSERT INTO feedback (endpoint, inference_id, labels, reward, observation_time, received) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (endpoint, inference_id) DO UPDATE SET "
                "labels=excluded.labels, reward=excluded.reward, observation_time=excluded.observation_time, "
                "received=excluded.received",
                rows,
            )
        return len(rows)

    def get(self, endpoint_name: str, inference_id: str) -> FeedbackEntry | None:
        """The feedback stored for one inference id, or None."""
        row = self.db.connection().execute(
            "SELECT labels, reward, observation_time FROM feedback WHERE endpoint=? AND inference_id=?",
            (endpoint_name, inference_id),
        ).fetchone()
        if row is None:
            return None
        labels, reward, when = row
        return FeedbackEntry(inference_id, tuple(json.loads(labels)) if labels else (), reward, when)

    def delete_endpoint(self, endpoint_name: str) -> int:
        """Forget every feedback row of an endpoint; returns how many."""
        with self.db.transaction() as db:
            return db.execute("DELETE FROM feedback WHERE endpoint=?", (endpoint_name,)).rowcount
