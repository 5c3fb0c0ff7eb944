"""Access keys on a real control plane process: the SDK's iam client, the routing table's date keys
(WatchRoutes) that verify botocore-signed requests, the HTTP face's checks, a restart, and --auth none."""

from __future__ import annotations

import time

import boto3
import pytest
from botocore import UNSIGNED as UNSIGNED_SIGNATURE
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from control_plane_helpers import RouteWatch, control_stub
from procs import run_mve, wait_until

import mve
from mve.sigv4 import AuthError, SigningKeys, verify

pytestmark = pytest.mark.integration

ONE_ATTEMPT = Config(retries={"mode": "standard", "total_max_attempts": 1})


def start(services, data_dir, *flags):
    return services(["control-plane", "--data-dir", str(data_dir), "--port", "0", "--http-port", "0", *flags])


def signed(key_id: str, secret: str, service: str = "sagemaker"):
    """(method, url, headers, body) of a request botocore signed, as a server receives it."""
    body = b'{"EndpointName": "ep"}'
    request = AWSRequest(method="POST", url="http://127.0.0.1:7071/", data=body,
                         headers={"X-Amz-Target": "SageMaker.DescribeEndpoint",
                                  "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials(key_id, secret), service, "eu-west-1").add_auth(request)
    return "POST", request.url, {**dict(request.headers.items()), "Host": "127.0.0.1:7071"}, body


def table_where(watch: RouteWatch, predicate, what: str):
    """The first table from the stream (the latest one first) that satisfies `predicate`."""
    table = watch.latest or watch.next()
    deadline = time.monotonic() + 15
    while not predicate(table):
        assert time.monotonic() < deadline, f"no routing table {what}; last: {table}"
        table = watch.next()
    return table


@pytest.fixture(scope="module")
def sigv4_control(module_services, tmp_path_factory):
    """A control plane with the default --auth sigv4 and no access key yet, for the tests that only
    need that (one creates keys, the other sends unsigned calls, which no key changes)."""
    return start(module_services, tmp_path_factory.mktemp("sigv4"))


def boto3_sagemaker(control, key_id: str, secret: str):
    return boto3.client("sagemaker", endpoint_url=f"http://{control.ready['http_address']}", region_name="eu-west-1",
                        aws_access_key_id=key_id, aws_secret_access_key=secret, config=ONE_ATTEMPT)


def test_keys_through_the_sdk_and_the_routing_table(sigv4_control):
    control = sigv4_control
    watch = RouteWatch(control_stub(control.address))
    empty = watch.next()
    assert empty.auth_required and not empty.signing_keys

    with mve.client("iam", address=control.address) as iam:
        first = iam.create_access_key(Description="first")["AccessKey"]
        second = iam.create_access_key(Description="second")["AccessKey"]
        listed = iam.list_access_keys()["AccessKeyMetadata"]
        assert [(k["AccessKeyId"], k["Description"]) for k in listed] == [
            (first["AccessKeyId"], "first"), (second["AccessKeyId"], "second"),
        ]

        table = table_where(watch, lambda t: len({k.access_key_id for k in t.signing_keys}) == 2, "with both keys")
        assert table.auth_required and table.version > empty.version
        per_key: dict[str, set[str]] = {}
        for key in table.signing_keys:
            per_key.setdefault(key.access_key_id, set()).add(key.date)
        assert {k: len(days) for k, days in per_key.items()} == {first["AccessKeyId"]: 3, second["AccessKeyId"]: 3}
        today = time.strftime("%Y%m%d", time.gmtime())
        assert today in per_key[first["AccessKeyId"]]

        keys = SigningKeys.from_table(table)
        for key in (first, second):
            assert verify(*signed(key["AccessKeyId"], key["SecretAccessKey"]), keys) == key["AccessKeyId"]
        with pytest.raises(AuthError) as info:
            verify(*signed(first["AccessKeyId"], second["SecretAccessKey"]), keys)
        assert info.value.code == "InvalidSignatureException"

        # The control plane's own HTTP face checks the same keys.
        sagemaker = boto3_sagemaker(control, first["AccessKeyId"], first["SecretAccessKey"])
        assert sagemaker.list_endpoints()["Endpoints"] == []

        iam.delete_access_key(AccessKeyId=first["AccessKeyId"])
        with pytest.raises(iam.exceptions.NoSuchEntityException):
            iam.delete_access_key(AccessKeyId=first["AccessKeyId"])

    after = table_where(watch, lambda t: {k.access_key_id for k in t.signing_keys} == {second["AccessKeyId"]},
                        "without the deleted key")
    assert after.version > table.version
    with pytest.raises(AuthError) as info:
        verify(*signed(first["AccessKeyId"], first["SecretAccessKey"]), SigningKeys.from_table(after))
    assert info.value.code == "UnrecognizedClientException"
    with pytest.raises(ClientError) as refused:
        boto3_sagemaker(control, first["AccessKeyId"], first["SecretAccessKey"]).list_endpoints()
    assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"
    watch.close()


def test_keys_survive_a_restart_encrypted_at_rest(services, tmp_path):
    control = start(services, tmp_path)
    with mve.client("iam", address=control.address) as iam:
        key = iam.create_access_key()["AccessKey"]
    assert control.stop() == 0

    assert (tmp_path / "master.key").stat().st_mode & 0o777 == 0o600
    for path in tmp_path.glob("mve.db*"):
        assert key["SecretAccessKey"].encode() not in path.read_bytes(), path.name

    again = start(services, tmp_path)
    with mve.client("iam", address=again.address) as iam:
        assert [k["AccessKeyId"] for k in iam.list_access_keys()["AccessKeyMetadata"]] == [key["AccessKeyId"]]
    table = RouteWatch(control_stub(again.address)).next()
    keys = SigningKeys.from_table(table)
    assert verify(*signed(key["AccessKeyId"], key["SecretAccessKey"]), keys) == key["AccessKeyId"]
    assert boto3_sagemaker(again, key["AccessKeyId"], key["SecretAccessKey"]).list_endpoints()["Endpoints"] == []


def test_auth_none_tables_carry_no_keys_and_the_log_says_so(services, tmp_path):
    control = start(services, tmp_path, "--auth", "none")
    with mve.client("iam", address=control.address) as iam:
        iam.create_access_key(Description="managed, not required")
    watch = RouteWatch(control_stub(control.address))
    table = watch.next()
    assert not table.auth_required and not table.signing_keys
    wait_until(lambda: any("AUTH IS OFF" in line for line in control.output), 5, what="the auth-off warning")
    warning = next(line for line in control.output if "AUTH IS OFF" in line)
    assert "level=WARNING" in warning and "UNSIGNED CALLS FROM ANYONE" in warning

    unsigned = boto3.client("sagemaker", endpoint_url=f"http://{control.ready['http_address']}",
                            region_name="eu-west-1", config=Config(signature_version=UNSIGNED_SIGNATURE))
    assert unsigned.list_endpoints()["Endpoints"] == []


def test_auth_sigv4_refuses_unsigned_calls(sigv4_control):
    control = sigv4_control
    unsigned = boto3.client("sagemaker", endpoint_url=f"http://{control.ready['http_address']}",
                            region_name="eu-west-1", config=Config(signature_version=UNSIGNED_SIGNATURE,
                                                                   retries={"total_max_attempts": 1}))
    with pytest.raises(ClientError) as info:
        unsigned.list_endpoints()
    assert info.value.response["Error"]["Code"] == "MissingAuthenticationTokenException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_an_invalid_auth_setting_stops_the_start(tmp_path):
    result = run_mve(["control-plane", "--data-dir", str(tmp_path), "--port", "0", "--auth", "maybe"])
    assert result.returncode == 2
    assert "--auth must be one of sigv4, none" in result.stderr
