"""``mve.client("iam")``: the access keys that sign boto3's calls to mve's HTTP faces, with boto3's
IAM method names.

    iam = mve.client("iam")                                   # the control plane's address
    key = iam.create_access_key(Description="laptop")["AccessKey"]
    key["AccessKeyId"], key["SecretAccessKey"]                # the secret is in this answer only
    iam.list_access_keys()["AccessKeyMetadata"]
    iam.delete_access_key(AccessKeyId=key["AccessKeyId"])

The service is ``mve.v1.AccessKeys`` on the control plane's address. Errors carry IAM's codes
(NoSuchEntity for an unknown key id, LimitExceeded past 100 keys, InvalidInput for a bad
description) and are ``client.exceptions.<boto3 class>`` (NoSuchEntityException, ...).
"""

from __future__ import annotations

from mve._proto import keys_pb2_grpc
from mve.sdk import iam_convert as convert
from mve.sdk.base import BaseClient, operation_method
from mve.sdk.exceptions import ClientError, ClientExceptions

# snake_case method -> API operation name; each method takes the operation's keyword arguments.
OPERATIONS = {
    "create_access_key": "CreateAccessKey",
    "list_access_keys": "ListAccessKeys",
    "delete_access_key": "DeleteAccessKey",
}

# boto3's class name -> the error code (botocore's iam model: the code is the shape's "error" code).
ERROR_CLASSES = {
    "NoSuchEntityException": "NoSuchEntity",
    "LimitExceededException": "LimitExceeded",
    "InvalidInputException": "InvalidInput",
    "ServiceFailureException": "ServiceFailure",
}

# IAM's codes are IAM's own (no SageMaker class shares one): plain ClientError subclasses.
_CLASSES: dict[str, type[ClientError]] = {
    code: type(name, (ClientError,), {"__doc__": f"The service answered {code}.", "__module__": __name__})
    for name, code in ERROR_CLASSES.items()
}


class IAMExceptions(ClientExceptions):
    """``client.exceptions`` of the IAM client: boto3's classes for the access keys, and mve's common ones."""

    def __init__(self) -> None:
        super().__init__()
        for code, cls in _CLASSES.items():
            setattr(self, cls.__name__, cls)
            self._by_code[code] = cls


def _operation_method(method_name: str, operation: str):
    return operation_method("IAMClient", "iam", method_name, operation, convert)


class IAMClient(BaseClient):
    """The control plane's ``mve.v1.AccessKeys`` with boto3's IAM method names and shapes.

    Methods take keyword arguments only and return plain dicts; CreateDate is a UTC datetime.
    """

    service_name = "iam"
    _shapes = convert.OPERATIONS

    def __init__(self, address: str, timeout: float = 30.0, security=None):
        super().__init__(address, timeout, security)
        self.exceptions = IAMExceptions()
        self._stub = keys_pb2_grpc.AccessKeysStub(self._channel)

    def get_waiter(self, waiter_name: str):
        """mve's IAM client has no waiters; always a ValueError."""
        raise ValueError(f"Waiter does not exist: {waiter_name}")


for _name, _operation in OPERATIONS.items():
    setattr(IAMClient, _name, _operation_method(_name, _operation))

__all__ = ["ERROR_CLASSES", "IAMClient", "IAMExceptions"]
