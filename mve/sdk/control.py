"""``mve.client("sagemaker")``: the control plane with boto3's SageMaker client methods."""

from __future__ import annotations

from mve._proto import control_pb2_grpc
from mve.sdk import convert
from mve.sdk.base import BaseClient, operation_method
from mve.sdk.waiters import Paginator, waiter_for

# snake_case method -> API operation name; each method takes the operation's keyword arguments.
OPERATIONS = {
    "create_model": "CreateModel",
    "describe_model": "DescribeModel",
    "list_models": "ListModels",
    "delete_model": "DeleteModel",
    "create_endpoint_config": "CreateEndpointConfig",
    "describe_endpoint_config": "DescribeEndpointConfig",
    "list_endpoint_configs": "ListEndpointConfigs",
    "delete_endpoint_config": "DeleteEndpointConfig",
    "create_endpoint": "CreateEndpoint",
    "describe_endpoint": "DescribeEndpoint",
    "list_endpoints": "ListEndpoints",
    "update_endpoint": "UpdateEndpoint",
    "update_endpoint_weights_and_capacities": "UpdateEndpointWeightsAndCapacities",
    "delete_endpoint": "DeleteEndpoint",
}

_LIST_KEYS = {"list_models": "Models", "list_endpoint_configs": "EndpointConfigs", "list_endpoints": "Endpoints"}


def _operation_method(method_name: str, operation: str):
    return operation_method("SageMakerClient", "sagemaker", method_name, operation, convert)


class SageMakerClient(BaseClient):
    """The control plane (``mve.v1.EndpointControl``) with boto3's SageMaker method names and shapes.

    Methods take keyword arguments only (``create_model(ModelName=..., PrimaryContainer={...})``)
    and return plain dicts. Service errors are ``client.exceptions.<Code>`` (ClientError subclasses).
    """

    service_name = "sagemaker"
    _paginated = tuple(_LIST_KEYS)

    def __init__(self, address: str, timeout: float = 30.0, security=None):
        super().__init__(address, timeout, security)
        self._stub = control_pb2_grpc.EndpointControlStub(self._channel)

    def get_waiter(self, waiter_name: str):
        """``endpoint_in_service`` or ``endpoint_deleted``, polling describe_endpoint."""
        return waiter_for(waiter_name, self.describe_endpoint, self.exceptions)

    def get_paginator(self, operation_name: str) -> Paginator:
        """A paginator for list_models, list_endpoint_configs or list_endpoints."""
        if operation_name not in _LIST_KEYS:
            raise ValueError(f"no paginator for {operation_name!r}; one of: {', '.join(_LIST_KEYS)}")
        return Paginator(getattr(self, operation_name))


for _name, _operation in OPERATIONS.items():
    setattr(SageMakerClient, _name, _operation_method(_name, _operation))
