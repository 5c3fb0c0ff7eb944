"""``mve.client("iam")``: boto3's IAM access key methods over an in-process mve.v1.AccessKeys."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from keys_server import KeysServer

import mve
from mve.sdk.exceptions import ClientError, ParamValidationError


@pytest.fixture
def iam(tmp_path):
    with KeysServer(tmp_path) as server:
        with mve.client("iam", address=server.address) as client:
            yield client, server


def test_create_list_delete(iam):
    client, server = iam
    created = client.create_access_key(Description="laptop")
    key = created["AccessKey"]
    assert set(key) == {"AccessKeyId", "SecretAccessKey", "Description", "CreateDate", "Status"}
    assert key["Status"] == "Active" and key["Description"] == "laptop"
    assert key["AccessKeyId"].startswith("MVEK") and len(key["SecretAccessKey"]) == 40
    assert isinstance(key["CreateDate"], datetime) and key["CreateDate"].tzinfo == timezone.utc
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 200

    listed = client.list_access_keys()
    assert listed["IsTruncated"] is False
    [metadata] = listed["AccessKeyMetadata"]
    assert metadata == {k: v for k, v in key.items() if k != "SecretAccessKey"}

    assert client.delete_access_key(AccessKeyId=key["AccessKeyId"])["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert client.list_access_keys()["AccessKeyMetadata"] == []
    assert server.changes == 2  # the routing table is re-published on create and delete


def test_unknown_key_is_no_such_entity(iam):
    client, _ = iam
    with pytest.raises(client.exceptions.NoSuchEntityException) as info:
        client.delete_access_key(AccessKeyId="MVEKNOSUCHKEYNOSUCH1")
    error = info.value
    assert isinstance(error, ClientError)
    assert error.response["Error"]["Code"] == "NoSuchEntity"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert "MVEKNOSUCHKEYNOSUCH1" in error.response["Error"]["Message"]


def test_long_description_is_invalid_input(iam):
    client, _ = iam
    with pytest.raises(client.exceptions.InvalidInputException) as info:
        client.create_access_key(Description="d" * 257)
    assert info.value.response["Error"]["Code"] == "InvalidInput"


def test_parameters_are_checked_before_any_call(iam):
    client, server = iam
    with pytest.raises(ParamValidationError) as info:
        client.create_access_key(UserName="bob")
    assert "mve has no IAM users" in str(info.value)
    with pytest.raises(ParamValidationError):
        client.delete_access_key()
    with pytest.raises(ParamValidationError):
        client.create_access_key(Description=5)
    assert server.changes == 0


def test_the_client_is_registered():
    client = mve.client("iam", address="127.0.0.1:1")
    assert client.service_name == "iam"
    assert {"create_access_key", "list_access_keys", "delete_access_key"} <= set(dir(client))
    client.close()
