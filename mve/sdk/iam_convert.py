"""IAM's access key operations: parameter shapes, and conversion between boto3-shaped dicts and
``mve.v1.AccessKeys`` messages.

boto3's ``iam`` names (CreateAccessKey, ListAccessKeys, DeleteAccessKey; AccessKeyId,
SecretAccessKey, Status, CreateDate) with mve's one addition, a ``Description``. mve has no IAM
users, so ``UserName`` is refused before any call; every key is Active (mve has no inactive keys).
"""

from __future__ import annotations

from mve._proto import keys_pb2 as pb
from mve.sdk.convert import put_time
from mve.sdk.params import STRING, Scalar, Structure, Unsupported, struct

NO_USERS = Unsupported("mve has no IAM users: an access key belongs to the whole installation")
ACTIVE = "Active"

OPERATIONS: dict[str, Structure] = {
    "CreateAccessKey": struct(Description=STRING, UserName=NO_USERS),
    "ListAccessKeys": struct(UserName=NO_USERS),
    "DeleteAccessKey": struct(("AccessKeyId",), AccessKeyId=Scalar((str,), 1), UserName=NO_USERS),
}

REQUEST_BUILDERS = {
    "CreateAccessKey": lambda p: pb.CreateAccessKeyRequest(description=p.get("Description", "")),
    "ListAccessKeys": lambda p: pb.ListAccessKeysRequest(),
    "DeleteAccessKey": lambda p: pb.DeleteAccessKeyRequest(access_key_id=p["AccessKeyId"]),
}


def build_request(operation: str, params: dict):
    """The protobuf request of `operation` for already validated `params`."""
    return REQUEST_BUILDERS[operation](params)


def access_key_metadata(key: pb.AccessKeyMetadata) -> dict:
    """IAM's AccessKeyMetadata of one key, with its Description."""
    out = {"AccessKeyId": key.access_key_id, "Status": ACTIVE}
    put_time(out, "CreateDate", key, "create_date")
    out["Description"] = key.description
    return out


def _created(response: pb.CreateAccessKeyResponse) -> dict:
    key = access_key_metadata(response.access_key)
    key["SecretAccessKey"] = response.secret_access_key
    return {"AccessKey": key}


RESPONSE_CONVERTERS = {
    "CreateAccessKey": _created,
    "ListAccessKeys": lambda r: {
        "AccessKeyMetadata": [access_key_metadata(k) for k in r.access_keys], "IsTruncated": False,
    },
    "DeleteAccessKey": lambda r: {},
}


def convert_response(operation: str, response) -> dict:
    """The boto3-shaped dict of `operation`'s protobuf `response`."""
    return RESPONSE_CONVERTERS[operation](response)


__all__ = ["OPERATIONS", "access_key_metadata", "build_request", "convert_response"]
