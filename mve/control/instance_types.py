"""Instance types: SageMaker-style names mapped to local resources.

``ml.cpu.<size>`` runs the model on ONNX Runtime's CPUExecutionProvider with a thread count by
size; ``ml.gpu.<size>`` runs it on CUDAExecutionProvider (``--device cuda``), with the same thread
count for the CPU side of the session. The thread count a model server actually gets is capped so
that the model servers of one machine share its cores (`instance_threads`, docs/batching.md). A GPU
type where no GPU works fails the endpoint with the model server's message: mve never silently runs
a GPU variant on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mve.errors import ValidationError

#: Intra-op threads per size.
THREADS_BY_SIZE = {
    "small": 1,
    "medium": 1,
    "large": 2,
    "xlarge": 4,
    "2xlarge": 8,
    "4xlarge": 16,
}

DEFAULT_INSTANCE_TYPE = "ml.cpu.small"

VALID_INSTANCE_TYPES = tuple(f"ml.{kind}.{size}" for kind in ("cpu", "gpu") for size in THREADS_BY_SIZE)


@dataclass(frozen=True)
class InstanceResources:
    """What one instance of a type gets: the model server's --device and --threads."""

    device: str
    threads: int


def resolve_instance_type(instance_type: str) -> InstanceResources:
    """The local resources for `instance_type`; ValidationError listing the valid ones otherwise."""
    parts = instance_type.split(".")
    if len(parts) == 3 and parts[0] == "ml" and parts[1] in ("cpu", "gpu") and parts[2] in THREADS_BY_SIZE:
        device = "cpu" if parts[1] == "cpu" else "cuda"
        return InstanceResources(device=device, threads=THREADS_BY_SIZE[parts[2]])
    raise ValidationError(
        f"Invalid instance type {instance_type!r}: expected ml.cpu.<size> or ml.gpu.<size> with size in "
        f"{', '.join(THREADS_BY_SIZE)} (e.g. {DEFAULT_INSTANCE_TYPE})."
    )


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def instance_threads(type_threads: int, cores: int, instances_on_machine: int) -> int:
    """ONNX Runtime intra-op threads for one model server so that one machine is not oversubscribed.

    ``min(type_threads, max(1, cores // instances_on_machine))``: the instance type's threads, but
    no more than an equal share of the machine's cores among the model servers it runs (each runs
    one inference at a time, so threads are its whole CPU use); never fewer than 1.
    """
    if type_threads < 1 or cores < 1:
        raise ValueError(f"type_threads and cores must be >= 1, got {type_threads} and {cores}")
    share = max(1, cores // max(1, instances_on_machine))
    return min(type_threads, share)
