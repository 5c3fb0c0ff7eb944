"""``mve.client("cloudwatch")``: the control plane's metrics and alarms with boto3's CloudWatch methods.

    cw = mve.client("cloudwatch")
    cw.get_metric_statistics(Namespace="AWS/SageMaker", MetricName="Invocations",
                             Dimensions=[{"Name": "EndpointName", "Value": "ab"},
                                         {"Name": "VariantName", "Value": "Variant1"}],
                             StartTime=datetime.now(timezone.utc) - timedelta(minutes=5),
                             EndTime=datetime.now(timezone.utc), Period=60, Statistics=["Sum"])

The service is ``mve.v1.CloudWatch`` on the control plane's address. Errors carry CloudWatch's
codes (InvalidParameterValue, MissingParameter, ...) and are ``client.exceptions.<boto3 class>``:
``InvalidParameterValueException``, ``MissingRequiredParameterException``, ``LimitExceededFault``, ...
"""

from __future__ import annotations

from mve._proto import metrics_pb2_grpc
from mve.sdk import cloudwatch_convert as convert
from mve.sdk.base import BaseClient, operation_method
from mve.sdk.exceptions import ClientError, ClientExceptions, service_error_class
from mve.sdk.waiters import Paginator, Waiter

# snake_case method -> API operation name; each method takes the operation's keyword arguments.
OPERATIONS = {
    "get_metric_statistics": "GetMetricStatistics",
    "get_metric_data": "GetMetricData",
    "list_metrics": "ListMetrics",
    "put_metric_alarm": "PutMetricAlarm",
    "describe_alarms": "DescribeAlarms",
    "delete_alarms": "DeleteAlarms",
    "describe_alarm_history": "DescribeAlarmHistory",
}

# method -> the parameter PaginationConfig's PageSize sets (botocore's limit_key), None if none.
PAGINATORS = {
    "list_metrics": None,
    "describe_alarms": "MaxRecords",
    "get_metric_data": "MaxDatapoints",
    "describe_alarm_history": "MaxRecords",
}

# boto3's exception class name -> the error code it catches (botocore's cloudwatch service model).
ERROR_CLASSES = {
    "InvalidParameterValueException": "InvalidParameterValue",
    "MissingRequiredParameterException": "MissingParameter",
    "InvalidParameterCombinationException": "InvalidParameterCombination",
    "ResourceNotFound": "ResourceNotFound",
    "LimitExceededFault": "LimitExceeded",
    "InvalidNextToken": "InvalidNextToken",
    "InternalServiceFault": "InternalServiceError",
    "ValidationException": "ValidationError",
}

# botocore's waiters-2.json for CloudWatch: AlarmExists polls DescribeAlarms every 5 s, 40 times.
ALARM_EXISTS_DELAY_S = 5.0
ALARM_EXISTS_MAX_ATTEMPTS = 40

_CLASSES: dict[str, type[ClientError]] = {
    code: service_error_class(name, code, __name__) for name, code in ERROR_CLASSES.items()
}


class CloudWatchExceptions(ClientExceptions):
    """``client.exceptions`` of the CloudWatch client: boto3's CloudWatch classes plus mve's common ones."""

    def __init__(self) -> None:
        super().__init__()
        for name, code in ERROR_CLASSES.items():
            setattr(self, name, _CLASSES[code])
            self._by_code[code] = _CLASSES[code]


def _alarm_exists(response: dict | None, error: ClientError | None) -> str | None:
    # botocore's only acceptor: path length(MetricAlarms[]) > 0 -> success; any error ends the wait.
    if error is None and response.get("MetricAlarms"):
        return "success"
    return None


def _operation_method(method_name: str, operation: str):
    return operation_method("CloudWatchClient", "cloudwatch", method_name, operation, convert)


class CloudWatchClient(BaseClient):
    """The control plane's ``mve.v1.CloudWatch`` with boto3's CloudWatch method names and shapes.

    Methods take keyword arguments only and return plain dicts; timestamps are UTC datetimes.
    Service errors are ``client.exceptions.<Class>`` (ClientError subclasses, boto3's names).
    """

    service_name = "cloudwatch"
    _paginated = tuple(PAGINATORS)
    _shapes = convert.OPERATIONS

    def __init__(self, address: str, timeout: float = 30.0, security=None):
        super().__init__(address, timeout, security)
        self.exceptions = CloudWatchExceptions()
        self._stub = metrics_pb2_grpc.CloudWatchStub(self._channel)

    def get_waiter(self, waiter_name: str) -> Waiter:
        """``alarm_exists``: poll describe_alarms until MetricAlarms is non-empty (5 s, 40 attempts)."""
        if waiter_name != "alarm_exists":
            raise ValueError(f"Waiter does not exist: {waiter_name}; one of: alarm_exists")
        return Waiter("AlarmExists", self.describe_alarms, _alarm_exists,
                      delay=ALARM_EXISTS_DELAY_S, max_attempts=ALARM_EXISTS_MAX_ATTEMPTS)

    def get_paginator(self, operation_name: str) -> Paginator:
        """A paginator (NextToken) for list_metrics, describe_alarms, get_metric_data or describe_alarm_history."""
        if operation_name not in PAGINATORS:
            raise ValueError(f"no paginator for {operation_name!r}; one of: {', '.join(PAGINATORS)}")
        return Paginator(getattr(self, operation_name), limit_key=PAGINATORS[operation_name])


for _name, _operation in OPERATIONS.items():
    setattr(CloudWatchClient, _name, _operation_method(_name, _operation))

__all__ = ["CloudWatchClient", "CloudWatchExceptions", "ERROR_CLASSES"]
