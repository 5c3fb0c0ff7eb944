"""Instance types: SageMaker-style names mapped to local resources.

``ml.cpu.<size>`` runs the model on ONNX Runtime's CPUExecutionProvider with a thread count by
size; ``ml.gpu.<size>`` runs it on CUDAExecutionProvider (``--device cuda``), with the same thread
count for the CPU side of the session. A GPU type where no GPU works fails the endpoint with the
model server's message: mve never silently runs a GPU variant on the CPU.
"""

from __future__ import annotations

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
