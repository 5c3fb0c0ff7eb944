"""Instance types: SageMaker's names, and mve's own, mapped to local resources from one table.

An instance is one model-server process. Its type decides two things: the ONNX Runtime execution
provider (``--device cpu``: CPUExecutionProvider; ``--device cuda``: CUDAExecutionProvider) and the
intra-op thread count (``--threads``), which is the type's vCPU count. The threads a model server
actually gets are capped so that the model servers of one machine share its cores
(`instance_threads`, docs/batching.md).

- SageMaker's real-time instance types (`FAMILIES`: the families and sizes of botocore's
  ``ProductionVariantInstanceType``): general purpose ``ml.m*``, compute optimized ``ml.c*``,
  memory optimized ``ml.r*`` and burstable ``ml.t2`` run on the CPU; the NVIDIA GPU families
  ``ml.g*`` and ``ml.p*`` on CUDA. vCPUs follow EC2's sizes (`vcpus`).
- AWS's own accelerators (Inferentia ``ml.inf*``, Trainium ``ml.trn*``, Gaudi ``ml.dl1``) are
  refused: mve runs ONNX Runtime on CPUs and NVIDIA GPUs only (`UNSUPPORTED_FAMILIES`).
- mve's own ``ml.cpu.<size>`` and ``ml.gpu.<size>`` (`THREADS_BY_SIZE`) keep working.

A GPU type where no GPU works fails the endpoint with the model server's message: mve never
silently runs a GPU variant on the CPU. An unknown type is refused naming the known families.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mve.errors import ValidationError

#: mve's own types: intra-op threads per size of ``ml.cpu.<size>`` / ``ml.gpu.<size>``.
THREADS_BY_SIZE = {
    "small": 1,
    "medium": 1,
    "large": 2,
    "xlarge": 4,
    "2xlarge": 8,
    "4xlarge": 16,
}

DEFAULT_INSTANCE_TYPE = "ml.cpu.small"

GENERAL_PURPOSE = "general purpose"
COMPUTE_OPTIMIZED = "compute optimized"
MEMORY_OPTIMIZED = "memory optimized"
BURSTABLE = "burstable"
GPU = "GPU (NVIDIA, CUDA)"
CATEGORIES = (GENERAL_PURPOSE, COMPUTE_OPTIMIZED, MEMORY_OPTIMIZED, BURSTABLE, GPU)


@dataclass(frozen=True)
class Family:
    """One SageMaker instance family (``ml.<name>.<size>``): its category, device and sizes."""

    name: str
    category: str
    sizes: tuple[str, ...]

    @property
    def device(self) -> str:
        return "cuda" if self.category == GPU else "cpu"


def _sizes(spec: str) -> tuple[str, ...]:
    return tuple(spec.split())


_X8 = _sizes("large xlarge 2xlarge 4xlarge 12xlarge 24xlarge")
_X9 = _sizes("large xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge 24xlarge 32xlarge")
_X7I = _sizes("large xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge 24xlarge 48xlarge")
_GRAVITON = _sizes("large xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge")
_GRAVITON4 = _sizes("medium large xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge 24xlarge 48xlarge")
_G = _sizes("xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge 24xlarge 48xlarge")
_G7 = _sizes("2xlarge 4xlarge 8xlarge 12xlarge 24xlarge 48xlarge")

# THE table of SageMaker's types mve runs: botocore 1.44.8's ProductionVariantInstanceType, less
# the accelerators below (tests/unit/test_instance_types.py checks it against botocore's enum).
FAMILIES: tuple[Family, ...] = (
    Family("m4", GENERAL_PURPOSE, _sizes("xlarge 2xlarge 4xlarge 10xlarge 16xlarge")),
    Family("m5", GENERAL_PURPOSE, _X8),
    Family("m5d", GENERAL_PURPOSE, _X8),
    Family("m6i", GENERAL_PURPOSE, _X9),
    Family("m7i", GENERAL_PURPOSE, _X7I),
    Family("m6g", GENERAL_PURPOSE, _GRAVITON),
    Family("m6gd", GENERAL_PURPOSE, _GRAVITON),
    Family("m8g", GENERAL_PURPOSE, _GRAVITON4),
    Family("c4", COMPUTE_OPTIMIZED, _sizes("large xlarge 2xlarge 4xlarge 8xlarge")),
    Family("c5", COMPUTE_OPTIMIZED, _sizes("large xlarge 2xlarge 4xlarge 9xlarge 18xlarge")),
    Family("c5d", COMPUTE_OPTIMIZED, _sizes("large xlarge 2xlarge 4xlarge 9xlarge 18xlarge")),
    Family("c6i", COMPUTE_OPTIMIZED, _X9),
    Family("c6in", COMPUTE_OPTIMIZED, _X9),
    Family("c7i", COMPUTE_OPTIMIZED, _X7I),
    Family("c6g", COMPUTE_OPTIMIZED, _GRAVITON),
    Family("c6gd", COMPUTE_OPTIMIZED, _GRAVITON),
    Family("c6gn", COMPUTE_OPTIMIZED, _GRAVITON),
    Family("c7g", COMPUTE_OPTIMIZED, _GRAVITON),
    Family("c8g", COMPUTE_OPTIMIZED, _GRAVITON4),
    Family("r5", MEMORY_OPTIMIZED, _X8),
    Family("r5d", MEMORY_OPTIMIZED, _X8),
    Family("r6i", MEMORY_OPTIMIZED, _X9),
    Family("r7i", MEMORY_OPTIMIZED, _X7I),
    Family("r6g", MEMORY_OPTIMIZED, _GRAVITON),
    Family("r6gd", MEMORY_OPTIMIZED, _GRAVITON),
    Family("r7gd", MEMORY_OPTIMIZED, _sizes("medium large xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge")),
    Family("r8g", MEMORY_OPTIMIZED, _GRAVITON4),
    Family("t2", BURSTABLE, _sizes("medium large xlarge 2xlarge")),
    Family("g4dn", GPU, _sizes("xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge")),
    Family("g5", GPU, _G),
    Family("g6", GPU, _G),
    Family("g6e", GPU, _G),
    Family("g7", GPU, _G7),
    Family("g7e", GPU, _G7),
    Family("p2", GPU, _sizes("xlarge 8xlarge 16xlarge")),
    Family("p3", GPU, _sizes("2xlarge 8xlarge 16xlarge")),
    Family("p4d", GPU, _sizes("24xlarge")),
    Family("p4de", GPU, _sizes("24xlarge")),
    Family("p5", GPU, _sizes("4xlarge 48xlarge")),
    Family("p5e", GPU, _sizes("48xlarge")),
    Family("p5en", GPU, _sizes("48xlarge")),
    Family("p6-b200", GPU, _sizes("48xlarge")),
    Family("p6-b300", GPU, _sizes("48xlarge")),
    Family("p6e-gb200", GPU, _sizes("36xlarge")),
)

# SageMaker families whose accelerators ONNX Runtime here cannot use: refused, saying why.
UNSUPPORTED_FAMILIES = {
    "inf1": "AWS Inferentia", "inf2": "AWS Inferentia2",
    "trn1": "AWS Trainium", "trn1n": "AWS Trainium", "trn2": "AWS Trainium2",
    "dl1": "Habana Gaudi",
}

# Where a type's vCPUs are not its size's usual count (EC2's instance type pages).
_VCPU_EXCEPTIONS = {"ml.t2.medium": 2, "ml.c4.8xlarge": 36}


def vcpus(instance_type: str) -> int:
    """The vCPUs of a SageMaker type by EC2's sizes: medium 1, large 2, xlarge 4, Nxlarge 4N."""
    if instance_type in _VCPU_EXCEPTIONS:
        return _VCPU_EXCEPTIONS[instance_type]
    size = instance_type.rsplit(".", 1)[-1]
    if size == "medium":
        return 1
    if size == "large":
        return 2
    multiple = size.removesuffix("xlarge")
    return 4 * (int(multiple) if multiple else 1)


@dataclass(frozen=True)
class InstanceResources:
    """What one instance of a type gets: the model server's --device and --threads."""

    device: str
    threads: int


def _table() -> dict[str, InstanceResources]:
    types = {
        f"ml.{kind}.{size}": InstanceResources("cpu" if kind == "cpu" else "cuda", threads)
        for kind in ("cpu", "gpu")
        for size, threads in THREADS_BY_SIZE.items()
    }
    for family in FAMILIES:
        for size in family.sizes:
            name = f"ml.{family.name}.{size}"
            types[name] = InstanceResources(family.device, vcpus(name))
    return types


#: Every instance type mve runs -> its resources.
INSTANCE_TYPES: dict[str, InstanceResources] = _table()
VALID_INSTANCE_TYPES = tuple(INSTANCE_TYPES)
_FAMILIES_BY_NAME = {family.name: family for family in FAMILIES}


def _known_families() -> str:
    return "; ".join(
        f"{category} " + ", ".join(f"ml.{f.name}" for f in FAMILIES if f.category == category) for category in CATEGORIES
    )


def resolve_instance_type(instance_type: str) -> InstanceResources:
    """The local resources for `instance_type`; a ValidationError saying why not otherwise."""
    found = INSTANCE_TYPES.get(instance_type)
    if found is not None:
        return found
    parts = instance_type.split(".")
    family_name = parts[1] if len(parts) == 3 and parts[0] == "ml" else ""
    if family_name in UNSUPPORTED_FAMILIES:
        raise ValidationError(
            f"Instance type {instance_type!r} runs on {UNSUPPORTED_FAMILIES[family_name]}, which mve does not "
            f"support: mve runs ONNX Runtime on CPUs and NVIDIA GPUs (CUDA). Choose a CPU or GPU type "
            f"(e.g. ml.c5.xlarge, ml.g5.xlarge)."
        )
    family = _FAMILIES_BY_NAME.get(family_name)
    if family is not None:
        raise ValidationError(
            f"Invalid instance type {instance_type!r}: ml.{family.name} comes in sizes {', '.join(family.sizes)}."
        )
    raise ValidationError(
        f"Invalid instance type {instance_type!r}: expected ml.cpu.<size> or ml.gpu.<size> with size in "
        f"{', '.join(THREADS_BY_SIZE)} (e.g. {DEFAULT_INSTANCE_TYPE}), or a SageMaker type (e.g. ml.m5.large) "
        f"of the families: {_known_families()}."
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
