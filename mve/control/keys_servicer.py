"""The gRPC face of the access keys: ``mve.v1.AccessKeys`` (create, list, delete).

Each method makes one `AccessKeyStore` call in a worker thread (SQLite and the cipher stay off the
event loop), then re-publishes the routing table so that proxies learn of the new or deleted key
at once. Errors are `mve.errors` exceptions that the server's `ErrorInterceptor` names as IAM
does on this door (`mve.errors.ERRORS`, service "iam"): a delete of an unknown key is `NotFound`,
named NoSuchEntity ("The Access Key with id ... cannot be found."); a bad description
`ValidationError`, named InvalidInput; the 101st key `ResourceLimitExceeded`, named LimitExceeded.
The SDK's ``mve.client("iam")`` mirrors IAM's operations, so IAM's names are the ones its users
expect (SageMaker's "Could not find ..." ValidationException is for SageMaker's own resources).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from google.protobuf import timestamp_pb2

from mve._proto import keys_pb2 as pb
from mve._proto import keys_pb2_grpc as pb_grpc
from mve.control.access_keys import AccessKey, AccessKeyStore


def _stamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(round(seconds * 1e9)))
    return stamp


def metadata(key: AccessKey) -> pb.AccessKeyMetadata:
    """A key's metadata message (never its secret)."""
    return pb.AccessKeyMetadata(
        access_key_id=key.access_key_id, description=key.description, create_date=_stamp(key.created)
    )


class AccessKeysServicer(pb_grpc.AccessKeysServicer):
    """``mve.v1.AccessKeys`` over an `AccessKeyStore`; `on_change` re-publishes the routing table."""

    def __init__(self, store: AccessKeyStore, on_change: Callable[[], object]):
        self._store = store
        self._on_change = on_change

    async def CreateAccessKey(self, request: pb.CreateAccessKeyRequest, context) -> pb.CreateAccessKeyResponse:
        key, secret = await asyncio.to_thread(self._store.create, request.description)
        self._on_change()
        return pb.CreateAccessKeyResponse(access_key=metadata(key), secret_access_key=secret)

    async def ListAccessKeys(self, request: pb.ListAccessKeysRequest, context) -> pb.ListAccessKeysResponse:
        keys = await asyncio.to_thread(self._store.list)
        return pb.ListAccessKeysResponse(access_keys=[metadata(key) for key in keys])

    async def DeleteAccessKey(self, request: pb.DeleteAccessKeyRequest, context) -> pb.DeleteAccessKeyResponse:
        await asyncio.to_thread(self._store.delete, request.access_key_id)
        self._on_change()
        return pb.DeleteAccessKeyResponse()
