"""The boto3-shaped Python SDK: clients for the control plane and the proxy.

``mve.client("sagemaker")`` talks to the control plane (``mve.v1.EndpointControl``),
``mve.client("cloudwatch")`` to the control plane's metrics and alarms (``mve.v1.CloudWatch``),
``mve.client("application-autoscaling")`` to its autoscaling (``mve.v1.ApplicationAutoScaling``),
``mve.client("experiments")`` to its feedback, experiment reports and bandits (``mve.v1.Experiments``,
mve's own API in SageMaker's style) and
``mve.client("sagemaker-runtime")`` to a proxy (``mve.v1.EndpointRuntime``), with boto3's method
names, parameter names, response shapes and exceptions.
"""

from mve.sdk.exceptions import (
    ClientError,
    EndpointConnectionError,
    ParamValidationError,
    ReadTimeoutError,
    SDKError,
    WaiterError,
)
from mve.sdk.factory import client, default_address
from mve.sdk.runtime import StreamingBody

__all__ = [
    "ClientError",
    "EndpointConnectionError",
    "ParamValidationError",
    "ReadTimeoutError",
    "SDKError",
    "StreamingBody",
    "WaiterError",
    "client",
    "default_address",
]
