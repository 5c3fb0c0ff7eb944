"""Waiter logic against a fake describe function: no sleeping, no server."""

from __future__ import annotations

import pytest

from mve.sdk import ClientError, WaiterError
from mve.sdk.waiters import DEFAULT_DELAY_S, waiter_for


def _error(code: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "DescribeEndpoint")


class FakeDescribe:
    """Returns (or raises) the scripted answers in order, repeating the last one."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def _status(status: str, **extra) -> dict:
    return {"EndpointName": "ab", "EndpointStatus": status, **extra}


def test_in_service_polls_until_in_service_with_the_default_delay():
    sleeps: list[float] = []
    describe = FakeDescribe(_status("Creating"), _status("Creating"), _status("InService"))
    waiter_for("endpoint_in_service", describe, sleep=sleeps.append).wait(EndpointName="ab")
    assert len(describe.calls) == 3 and describe.calls[0] == {"EndpointName": "ab"}
    assert sleeps == [DEFAULT_DELAY_S, DEFAULT_DELAY_S]


def test_in_service_fails_on_failed_with_the_failure_reason():
    describe = FakeDescribe(_status("Creating"), _status("Failed", FailureReason="no GPU on this host"))
    with pytest.raises(WaiterError, match="no GPU on this host") as caught:
        waiter_for("endpoint_in_service", describe, sleep=lambda s: None).wait(EndpointName="ab")
    assert caught.value.last_response["EndpointStatus"] == "Failed"


def test_in_service_fails_when_the_endpoint_does_not_exist():
    describe = FakeDescribe(_error("ValidationException", 'Could not find endpoint "arn:mve:sagemaker:local:000000000000:endpoint/ab".'))
    with pytest.raises(WaiterError, match="terminal failure state: ValidationException: Could not find endpoint"):
        waiter_for("endpoint_in_service", describe, sleep=lambda s: None).wait(EndpointName="ab")


def test_in_service_gives_up_after_max_attempts():
    sleeps: list[float] = []
    describe = FakeDescribe(_status("Creating"))
    with pytest.raises(WaiterError, match="Max attempts exceeded"):
        waiter_for("endpoint_in_service", describe, sleep=sleeps.append).wait(
            EndpointName="ab", WaiterConfig={"Delay": 2, "MaxAttempts": 4})
    assert len(describe.calls) == 4 and sleeps == [2.0, 2.0, 2.0]


def test_in_service_retries_service_unavailable_but_not_other_errors():
    describe = FakeDescribe(_error("ServiceUnavailable", "busy"), _status("InService"))
    waiter_for("endpoint_in_service", describe, sleep=lambda s: None).wait(EndpointName="ab")
    describe = FakeDescribe(_error("InternalFailure", "bug"))
    with pytest.raises(WaiterError, match="InternalFailure"):
        waiter_for("endpoint_in_service", describe, sleep=lambda s: None).wait(EndpointName="ab")


def test_endpoint_deleted_succeeds_when_the_endpoint_is_gone():
    # SageMaker's own answer, and mve's: ValidationException 'Could not find endpoint "arn:..."'.
    error = _error("ValidationException", 'Could not find endpoint "arn:mve:sagemaker:local:000000000000:endpoint/ab".')
    describe = FakeDescribe(_status("Deleting"), error)
    waiter_for("endpoint_deleted", describe, sleep=lambda s: None).wait(EndpointName="ab")
    assert len(describe.calls) == 2


def test_endpoint_deleted_fails_on_failed_and_on_other_validation_errors():
    with pytest.raises(WaiterError, match="Failed"):
        waiter_for("endpoint_deleted", FakeDescribe(_status("Failed", FailureReason="x")),
                   sleep=lambda s: None).wait(EndpointName="ab")
    with pytest.raises(WaiterError, match="too long"):
        waiter_for("endpoint_deleted", FakeDescribe(_error("ValidationException", "EndpointName too long")),
                   sleep=lambda s: None).wait(EndpointName="ab")
    with pytest.raises(WaiterError, match="ResourceNotFound"):  # not SageMaker's answer for a deleted endpoint
        waiter_for("endpoint_deleted", FakeDescribe(_error("ResourceNotFound", "Could not find endpoint ab")),
                   sleep=lambda s: None).wait(EndpointName="ab")


def test_unknown_waiter_and_bad_config_are_refused():
    with pytest.raises(ValueError, match="Waiter does not exist"):
        waiter_for("endpoint_exploded", FakeDescribe(_status("InService")))
    waiter = waiter_for("endpoint_in_service", FakeDescribe(_status("InService")))
    with pytest.raises(ValueError, match="MaxAttempts"):
        waiter.wait(EndpointName="ab", WaiterConfig={"MaxAttempts": 0})
    with pytest.raises(ValueError, match="Delay and MaxAttempts"):
        waiter.wait(EndpointName="ab", WaiterConfig={"Dealy": 1})
