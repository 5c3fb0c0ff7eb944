"""SageMaker's instance type names map to a device and a thread count from one table."""

from __future__ import annotations

import botocore.session
import pytest

from mve.control import instance_types as it
from mve.control.instance_types import InstanceResources, resolve_instance_type
from mve.errors import ValidationError, error_name


def _botocore_types() -> set[str]:
    model = botocore.session.get_session().get_service_model("sagemaker")
    return set(model.shape_for("ProductionVariantInstanceType").enum)


@pytest.mark.parametrize(
    ("instance_type", "device", "threads"),
    [
        ("ml.m5.large", "cpu", 2),
        ("ml.m5.xlarge", "cpu", 4),
        ("ml.c5.xlarge", "cpu", 4),
        ("ml.c5.2xlarge", "cpu", 8),
        ("ml.c5.9xlarge", "cpu", 36),
        ("ml.c4.8xlarge", "cpu", 36),  # EC2's exception: 36 vCPUs, not 32
        ("ml.m4.10xlarge", "cpu", 40),
        ("ml.m6i.large", "cpu", 2),
        ("ml.m6i.32xlarge", "cpu", 128),
        ("ml.r5.large", "cpu", 2),
        ("ml.t2.medium", "cpu", 2),  # t2.medium has 2 vCPUs
        ("ml.m8g.medium", "cpu", 1),  # a Graviton medium has 1
        ("ml.g4dn.xlarge", "cuda", 4),
        ("ml.g5.xlarge", "cuda", 4),
        ("ml.g5.48xlarge", "cuda", 192),
        ("ml.p3.2xlarge", "cuda", 8),
        ("ml.p4d.24xlarge", "cuda", 96),
    ],
)
def test_sagemaker_types_map_to_a_device_and_their_vcpus_as_threads(instance_type, device, threads):
    assert resolve_instance_type(instance_type) == InstanceResources(device, threads)


@pytest.mark.parametrize(("instance_type", "threads"), [("ml.cpu.small", 1), ("ml.cpu.4xlarge", 16), ("ml.gpu.large", 2)])
def test_mves_own_types_keep_working(instance_type, threads):
    assert resolve_instance_type(instance_type).threads == threads


def test_every_sagemaker_type_in_the_table_is_one_botocore_knows():
    known = _botocore_types()
    ours = {name for name in it.INSTANCE_TYPES if not name.startswith(("ml.cpu.", "ml.gpu."))}
    assert ours <= known, sorted(ours - known)


def test_every_botocore_type_is_either_run_or_refused_as_an_unsupported_accelerator():
    for name in _botocore_types():
        family = name.split(".")[1]
        if family in it.UNSUPPORTED_FAMILIES:
            with pytest.raises(ValidationError, match="mve runs ONNX Runtime on CPUs and NVIDIA GPUs"):
                resolve_instance_type(name)
        else:
            assert name in it.INSTANCE_TYPES, name


def test_gpu_families_run_on_cuda_and_the_others_on_the_cpu():
    for family in it.FAMILIES:
        on_gpu = family.name[0] in "gp"
        assert family.device == ("cuda" if on_gpu else "cpu"), family
        assert (family.category == it.GPU) == on_gpu


@pytest.mark.parametrize(("instance_type", "why"), [
    ("ml.inf1.xlarge", "AWS Inferentia"), ("ml.inf2.xlarge", "AWS Inferentia2"),
    ("ml.trn1.2xlarge", "AWS Trainium"), ("ml.dl1.24xlarge", "Habana Gaudi"),
])
def test_aws_accelerators_are_refused_saying_why(instance_type, why):
    with pytest.raises(ValidationError, match=f"runs on {why}, which mve does not support") as caught:
        resolve_instance_type(instance_type)
    assert error_name(caught.value) == "ValidationException"


def test_a_size_a_family_does_not_have_is_refused_listing_its_sizes():
    with pytest.raises(ValidationError, match=r"ml\.m5 comes in sizes large, xlarge, 2xlarge, 4xlarge, 12xlarge, 24xlarge\."):
        resolve_instance_type("ml.m5.medium")


def test_an_unknown_type_is_refused_naming_the_known_families():
    with pytest.raises(ValidationError) as caught:
        resolve_instance_type("ml.x9.large")
    message = caught.value.message
    for part in ("ml.cpu.<size> or ml.gpu.<size>", "general purpose ml.m4, ml.m5", "compute optimized ml.c4",
                 "memory optimized ml.r5", "burstable ml.t2", "GPU (NVIDIA, CUDA) ml.g4dn, ml.g5"):
        assert part in message, part
