"""CPUUtilization and MemoryUtilization of each model server, sampled by the control plane with psutil.

SageMaker's meanings: CPUUtilization is the sum over the cores of each core's use, so one busy
core is 100 and the range is 0 to 100 x cores; MemoryUtilization is the share of the machine's
memory the instance holds resident, in percent. Each instance sends one sample per interval under
namespace /aws/sagemaker/Endpoints with dimensions EndpointName and VariantName, so Average is
the per-instance mean and Maximum the busiest instance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Iterable

import psutil

from mve.control.metric_catalog import BY_KEY, ENDPOINTS, Samples, variant_dimensions
from mve.control.metric_store import MetricStore

log = logging.getLogger(__name__)

CPU = BY_KEY[ENDPOINTS, "CPUUtilization"]
MEMORY = BY_KEY[ENDPOINTS, "MemoryUtilization"]


def _sample(value: float) -> Samples:
    from mve._fastroute import LatencyHistogram

    histogram = LatencyHistogram()
    histogram.record(value)
    index, counts = histogram.sparse()
    return Samples(1, value, value, value, index, counts)


class UtilizationSampler:
    """Samples every running model server's CPU and memory into the metric store.

    `processes` returns (endpoint, variant, pid) of the instances that run now. A process is
    sampled from its second sighting on, since psutil measures CPU between two calls.
    """

    def __init__(self, metrics: MetricStore, processes: Callable[[], Iterable[tuple[str, str, int]]], *, clock=time.time):
        self.metrics = metrics
        self.processes = processes
        self._clock = clock
        self._known: dict[int, psutil.Process] = {}

    def sample(self) -> int:
        """Take one sample of each instance; the number of instances sampled."""
        items = []
        alive = set()
        for endpoint, variant, pid in self.processes():
            alive.add(pid)
            process = self._known.get(pid)
            try:
                if process is None:
                    process = self._known[pid] = psutil.Process(pid)
                    process.cpu_percent(None)  # starts the measuring interval
                    continue
                cpu = process.cpu_percent(None)
                memory = process.memory_percent()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._known.pop(pid, None)
                continue
            dimensions = variant_dimensions(endpoint, variant)
            items.append((CPU, dimensions, _sample(cpu)))
            items.append((MEMORY, dimensions, _sample(memory)))
        for pid in set(self._known) - alive:
            del self._known[pid]
        self.metrics.record(items, self._clock())
        return len(items) // 2

    async def run_forever(self, interval_s: float) -> None:
        """Sample every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - sampling goes on; the error is logged
                log.exception("event=utilization_sample_failed")
