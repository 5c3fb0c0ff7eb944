"""Waiters (``endpoint_in_service``, ``endpoint_deleted``) and paginators, as boto3 offers them.

The default delay is 0.5 s rather than boto3's 30 s: a local endpoint is InService in seconds.
Pass ``WaiterConfig={"Delay": s, "MaxAttempts": n}`` to change it.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

from mve.sdk.exceptions import ClientError, WaiterError

DEFAULT_DELAY_S = 0.5
DEFAULT_MAX_ATTEMPTS = 240  # two minutes at the default delay

# botocore's waiters-2.json for sagemaker: DescribeEndpoint answering ValidationException (SageMaker's
# 'Could not find endpoint ...') fails EndpointInService and completes EndpointDeleted. EndpointDeleted
# here also wants the message to say so: a ValidationException about the request itself (a name too
# long) is not a deleted endpoint.
GONE_CODE = "ValidationException"


def _gone(error: ClientError) -> bool:
    return _code(error) == GONE_CODE and "could not find endpoint" in _message(error).lower()


class Waiter:
    """Polls ``describe(**kwargs)`` until `accept` says success or failure.

    `accept(response, error)` returns "success", "failure: <reason>" or None (keep polling).
    `delay` and `max_attempts` are the defaults WaiterConfig overrides. `sleep` is injectable so
    that tests do not wait.
    """

    def __init__(self, name: str, describe: Callable[..., dict], accept, sleep: Callable[[float], None] = time.sleep,
                 delay: float = DEFAULT_DELAY_S, max_attempts: int = DEFAULT_MAX_ATTEMPTS):
        self.name = name
        self._describe = describe
        self._accept = accept
        self._sleep = sleep
        self._delay = delay
        self._max_attempts = max_attempts

    def wait(self, WaiterConfig: dict | None = None, **kwargs) -> None:  # noqa: N803 - boto3's name
        """Poll until done; raise `WaiterError` on a failure state or when attempts run out."""
        config = dict(WaiterConfig or {})
        unknown = set(config) - {"Delay", "MaxAttempts"}
        if unknown:
            raise ValueError(f"WaiterConfig takes Delay and MaxAttempts, not {', '.join(sorted(unknown))}")
        delay = float(config.get("Delay", self._delay))
        attempts = int(config.get("MaxAttempts", self._max_attempts))
        if delay < 0 or attempts < 1:
            raise ValueError(f"WaiterConfig needs Delay >= 0 and MaxAttempts >= 1, got {config}")
        last: dict | None = None
        for attempt in range(1, attempts + 1):
            error: ClientError | None = None
            try:
                last = self._describe(**kwargs)
            except ClientError as caught:
                error, last = caught, caught.response
            verdict = self._accept(last if error is None else None, error)
            if verdict == "success":
                return
            if verdict is not None:
                raise WaiterError(self.name, f"Waiter encountered a terminal failure state: {verdict}", last)
            if error is not None and verdict is None and not _retryable(error):
                raise WaiterError(self.name, f"An error occurred ({_code(error)}): {_message(error)}", last)
            if attempt < attempts:
                self._sleep(delay)
        raise WaiterError(self.name, "Max attempts exceeded", last)


def _code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def _message(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Message", "")


def _retryable(error: ClientError) -> bool:
    return _code(error) in ("ServiceUnavailable", "ThrottlingException")


def _in_service(response: dict | None, error: ClientError | None) -> str | None:
    if error is not None:
        if _code(error) == GONE_CODE:
            return f"{_code(error)}: {_message(error)}"
        return None
    status = response.get("EndpointStatus")
    if status == "InService":
        return "success"
    if status in ("Failed", "UpdateRollbackFailed", "OutOfService"):
        reason = response.get("FailureReason", "no FailureReason given")
        return f'EndpointStatus is "{status}": {reason}'
    return None


def _deleted(response: dict | None, error: ClientError | None) -> str | None:
    if error is not None:
        return "success" if _gone(error) else None
    if response.get("EndpointStatus") == "Failed":
        return f'EndpointStatus is "Failed": {response.get("FailureReason", "no FailureReason given")}'
    return None


WAITERS = {"endpoint_in_service": ("EndpointInService", _in_service), "endpoint_deleted": ("EndpointDeleted", _deleted)}


def waiter_for(name: str, describe: Callable[..., dict], exceptions=None, sleep=time.sleep) -> Waiter:
    """The waiter called `name` over `describe` (a describe_endpoint method or a fake)."""
    if name not in WAITERS:
        raise ValueError(f"Waiter does not exist: {name}; one of: {', '.join(WAITERS)}")
    title, accept = WAITERS[name]
    return Waiter(title, describe, accept, sleep=sleep)


class Paginator:
    """Follows NextToken across a list_* call: ``paginate(**kwargs)`` yields each page.

    `limit_key` is the parameter PageSize sets (MaxResults for SageMaker, MaxRecords or
    MaxDatapoints for CloudWatch); None where the operation has none, and then PageSize is refused.
    """

    def __init__(self, list_method: Callable[..., dict], limit_key: str | None = "MaxResults"):
        self._list = list_method
        self._limit_key = limit_key

    def paginate(self, PaginationConfig: dict | None = None, **kwargs) -> Iterator[dict]:  # noqa: N803
        """Yield pages until the service returns no NextToken (PageSize and StartingToken honoured)."""
        config = dict(PaginationConfig or {})
        if "PageSize" in config:
            if self._limit_key is None:
                raise ValueError("PageSize parameter is not supported for the pagination interface for this operation.")
            kwargs[self._limit_key] = config["PageSize"]
        token = config.get("StartingToken")
        while True:
            page = self._list(**kwargs, **({"NextToken": token} if token else {}))
            yield page
            token = page.get("NextToken")
            if not token:
                return
