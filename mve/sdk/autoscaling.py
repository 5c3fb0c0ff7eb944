"""``mve.client("application-autoscaling")``: scalable targets, scaling policies and scaling
activities of SageMaker variants, with boto3's Application Auto Scaling methods.

    aas = mve.client("application-autoscaling")
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId="endpoint/ab/variant/Variant2",
                                 ScalableDimension="sagemaker:variant:DesiredInstanceCount",
                                 MinCapacity=1, MaxCapacity=3)

The service is ``mve.v1.ApplicationAutoScaling`` on the control plane's address. Errors carry
Application Auto Scaling's codes (ValidationException, ObjectNotFoundException, ...) and are
``client.exceptions.<boto3 class>`` of the same names.
"""

from __future__ import annotations

from mve._proto import autoscaling_pb2_grpc
from mve.sdk import autoscaling_convert as convert
from mve.sdk.base import BaseClient, operation_method
from mve.sdk.exceptions import ClientError, ClientExceptions, service_error_class
from mve.sdk.waiters import Paginator

# snake_case method -> API operation name; each method takes the operation's keyword arguments.
OPERATIONS = {
    "register_scalable_target": "RegisterScalableTarget",
    "describe_scalable_targets": "DescribeScalableTargets",
    "deregister_scalable_target": "DeregisterScalableTarget",
    "put_scaling_policy": "PutScalingPolicy",
    "describe_scaling_policies": "DescribeScalingPolicies",
    "delete_scaling_policy": "DeleteScalingPolicy",
    "describe_scaling_activities": "DescribeScalingActivities",
}

# botocore's paginators-1.json for application-autoscaling: NextToken, limit_key MaxResults.
PAGINATORS = ("describe_scalable_targets", "describe_scaling_policies", "describe_scaling_activities")

# boto3's exception classes (botocore's service model names them after their codes).
ERROR_CODES = (
    "ValidationException",
    "ObjectNotFoundException",
    "LimitExceededException",
    "ConcurrentUpdateException",
    "InternalServiceException",
    "InvalidNextTokenException",
    "FailedResourceAccessException",
    "ResourceNotFoundException",
    "TooManyTagsException",
)

_CLASSES: dict[str, type[ClientError]] = {code: service_error_class(code, code, __name__) for code in ERROR_CODES}


class ApplicationAutoScalingExceptions(ClientExceptions):
    """``client.exceptions`` of the Application Auto Scaling client: boto3's classes plus mve's common ones."""

    def __init__(self) -> None:
        super().__init__()
        for code, cls in _CLASSES.items():
            setattr(self, code, cls)
            self._by_code[code] = cls


def _operation_method(method_name: str, operation: str):
    return operation_method("ApplicationAutoScalingClient", "application-autoscaling", method_name, operation, convert)


class ApplicationAutoScalingClient(BaseClient):
    """The control plane's ``mve.v1.ApplicationAutoScaling`` with boto3's method names and shapes.

    Methods take keyword arguments only and return plain dicts; times are UTC datetimes. Service
    errors are ``client.exceptions.<Class>`` (ClientError subclasses, boto3's names).
    """

    service_name = "application-autoscaling"
    _paginated = PAGINATORS
    _shapes = convert.OPERATIONS

    def __init__(self, address: str, timeout: float = 30.0, security=None):
        super().__init__(address, timeout, security)
        self.exceptions = ApplicationAutoScalingExceptions()
        self._stub = autoscaling_pb2_grpc.ApplicationAutoScalingStub(self._channel)

    def get_paginator(self, operation_name: str) -> Paginator:
        """A paginator (NextToken; PageSize sets MaxResults) for the three describe_* calls."""
        if operation_name not in PAGINATORS:
            raise ValueError(f"no paginator for {operation_name!r}; one of: {', '.join(PAGINATORS)}")
        return Paginator(getattr(self, operation_name), limit_key="MaxResults")

    def get_waiter(self, waiter_name: str):
        """Application Auto Scaling has no waiters in boto3; always a ValueError."""
        raise ValueError(f"Waiter does not exist: {waiter_name}")


for _name, _operation in OPERATIONS.items():
    setattr(ApplicationAutoScalingClient, _name, _operation_method(_name, _operation))

__all__ = ["ApplicationAutoScalingClient", "ApplicationAutoScalingExceptions", "ERROR_CODES"]
