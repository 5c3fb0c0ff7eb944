"""The experiments service's core: feedback, reports and bandits over one ``experiments.db``.

`Experiments` is what `ExperimentsServicer` calls, free of protobuf. It runs two loops beside the
control plane's others: the capture index (on its own thread) and the bandit. Everything that
reads files or runs statistics happens off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mve.control.bandit import Bandit
from mve.control.capture_index import CaptureIndex, malformed_counts
from mve.control.experiment_report import ExperimentReport, build_report, validate_request
from mve.control.experiment_sources import ExperimentSources
from mve.control.experiments_db import ExperimentsDb
from mve.control.feedback import FeedbackEntry, FeedbackStore

log = logging.getLogger(__name__)

DEFAULT_INDEX_INTERVAL_S = 1.0
UPKEEP_INTERVAL_S = 60.0


class Experiments:
    """SendFeedback, GetExperimentReport and the bandit, over the control plane's `ControlService`."""

    def __init__(
        self, service, db_path: Path | str, metrics_path: Path | str, *, retention_s: float | None = None,
        clock: Callable[[], float] = time.time, rng: np.random.Generator | None = None,
    ):
        self.db = ExperimentsDb(db_path)
        self.metrics_path = Path(metrics_path)
        self.sources = ExperimentSources(service)
        self.feedback = FeedbackStore(self.db, clock)
        self.index = CaptureIndex(self.db, retention_s=retention_s, clock=clock)
        self.bandit = Bandit(self.db, self.sources, clock=clock, rng=rng)
        self._clock = clock

    async def send_feedback(self, endpoint_name: str, entries: Sequence[FeedbackEntry]) -> int:
        """Store feedback for an existing endpoint, all entries or none; returns how many."""
        self.sources.require_endpoint(endpoint_name)
        return await asyncio.to_thread(self.feedback.put, endpoint_name, list(entries))

    async def report(
        self, endpoint_name: str, *, start: float | None = None, end: float | None = None, baseline: str = "",
        confidence_level: float = 0.0, label_output: str = "", score_output: str = "", positive_label: str = "",
        series_points: int = 0,
    ) -> ExperimentReport:
        """The experiment report of one endpoint over a window (see `experiment_report`)."""
        endpoint = self.sources.require_endpoint(endpoint_name)
        request = validate_request(
            endpoint, start=start, end=end, baseline=baseline, confidence_level=confidence_level,
            label_output=label_output, score_output=score_output, positive_label=positive_label,
            series_points=series_points, now=self._clock(),
        )
        # Read what the proxies appended since the index's last pass, so the report is current.
        await self.index.catch_up([t for t in self.sources.capture_targets() if t.endpoint == endpoint_name])
        before, changes = self.sources.weight_history(endpoint_name, request.start, request.end)
        automatic = self.sources.automatic_changes(endpoint_name, request.start, request.end)
        report = await asyncio.to_thread(
            build_report, request, endpoint, before, changes, automatic, self.db, self.metrics_path
        )
        skipped = await asyncio.to_thread(malformed_counts, self.db, endpoint_name)
        for variant, (count, error) in sorted(skipped.items()):
            report.notes.append(f"{variant}: {count} capture lines were not capture records and were skipped (last: {error}).")
        return report

    # ------------------------------------------------------------ loops

    def background_tasks(self, index_interval_s: float = DEFAULT_INDEX_INTERVAL_S) -> list[asyncio.Task]:
        """The capture index, the bandit and the upkeep, running until cancelled."""
        return [
            asyncio.create_task(self.index.run_forever(index_interval_s, self.sources.capture_targets), name="capture-index"),
            asyncio.create_task(self.bandit.run_forever(), name="bandit"),
            asyncio.create_task(self._upkeep_forever(), name="experiments-upkeep"),
        ]

    async def _upkeep_forever(self) -> None:
        while True:
            await asyncio.sleep(UPKEEP_INTERVAL_S)
            try:
                await self.forget_deleted_endpoints()
            except Exception:  # noqa: BLE001 - retried next time; the error is logged
                log.exception("event=experiments_upkeep_failed")

    async def forget_deleted_endpoints(self) -> int:
        """Delete captured rows, feedback and bandit policies of endpoints that no longer exist."""
        names = sorted(self.sources.endpoint_names())
        checked_at = self._clock()
        return await asyncio.to_thread(self._forget_others, names, checked_at)

    def _forget_others(self, names: list[str], checked_at: float) -> int:
        marks = ",".join("?" for _ in names) or "''"
        with self.db.transaction() as db:
            deleted = db.execute(f"DELETE FROM captured WHERE endpoint NOT IN ({marks})", names).rowcount
            # Feedback for an endpoint created after the names were read is kept.
            deleted += db.execute(
                f"DELETE FROM feedback WHERE endpoint NOT IN ({marks}) AND received < ?", [*names, checked_at]
            ).rowcount
            db.execute(f"DELETE FROM capture_errors WHERE endpoint NOT IN ({marks})", names)
            db.execute(f"DELETE FROM bandit_policies WHERE endpoint NOT IN ({marks})", names)
        if deleted:
            log.info("event=experiments_forgotten rows=%d", deleted)
        return deleted

    def close(self) -> None:
        """Stop the index thread and close the database."""
        self.index.close()
        self.db.close()
