"""Who may call the proxy's HTTP door: a control plane with ``--auth sigv4`` (the default), a key from
``mve.client("iam").create_access_key``, and the real boto3 signing (or not) every request."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from unittest import mock

import boto3
import numpy as np
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

import mve
from tiny_models import build_model, npy

pytestmark = pytest.mark.integration

BODY = npy(np.array([[1.0, 2.0]], dtype=np.float32))


@pytest.fixture(scope="module")
def door(module_services, tmp_path_factory):
    """Control plane (SigV4 required), proxy, endpoint "plus"; an access key the proxy already knows."""
    work = tmp_path_factory.mktemp("runtime-sigv4")
    control = module_services(["control-plane", "--data-dir", str(work / "data"), "--port", "0"])
    proxy = module_services(["proxy", "--control-plane", control.address, "--port", "0"])
    sm = mve.client("sagemaker", address=control.address)
    build_model(work / "plus.onnx", "plus")
    sm.create_model(ModelName="plus", PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(work / "plus.onnx")})
    sm.create_endpoint_config(EndpointConfigName="plus", ProductionVariants=[
        {"VariantName": "Plus", "ModelName": "plus", "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small"}])
    sm.create_endpoint(EndpointName="plus", EndpointConfigName="plus")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="plus", WaiterConfig={"Delay": 0.2, "MaxAttempts": 300})
    iam = mve.client("iam", address=control.address)
    key = iam.create_access_key(Description="proxy HTTP door test")["AccessKey"]
    url = f"http://{proxy.ready['http_address']}"

    def client(key_id=key["AccessKeyId"], secret=key["SecretAccessKey"], **config):
        return boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key_id,
                            aws_secret_access_key=secret, config=Config(retries={"total_max_attempts": 1}, **config))

    signed = client()
    deadline = time.monotonic() + 15
    while True:  # the proxy learns the endpoint and the key from the next routing table
        try:
            signed.invoke_endpoint(EndpointName="plus", Body=BODY, ContentType="application/x-npy")
            break
        except ClientError:
            assert time.monotonic() < deadline, "the proxy never admitted the new key"
            time.sleep(0.05)
    return {"client": client, "key": key, "iam": iam}


def refused(client, expected_code: str) -> dict:
    with pytest.raises(ClientError) as caught:
        client.invoke_endpoint(EndpointName="plus", Body=BODY, ContentType="application/x-npy")
    response = caught.value.response
    assert response["Error"]["Code"] == expected_code, response["Error"]
    return response


def test_a_correctly_signed_request_passes(door):
    response = door["client"]().invoke_endpoint(EndpointName="plus", Body=BODY, ContentType="application/x-npy",
                                                Accept="application/json")
    assert response["InvokedProductionVariant"] == "Plus"
    assert response["Body"].read() == b'{"predictions": {"y": [[2.0, 3.0]]}}'


def test_an_unsigned_request_is_refused(door):
    response = refused(door["client"](signature_version=UNSIGNED), "MissingAuthenticationTokenException")
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_a_wrong_secret_is_refused(door):
    response = refused(door["client"](secret="not-the-secret"), "InvalidSignatureException")
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_an_unknown_key_is_refused(door):
    response = refused(door["client"](key_id="MVEKNOSUCHKEY0000000"), "UnrecognizedClientException")
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_an_expired_signature_is_refused(door):
    def ten_minutes_ago(remove_tzinfo=True):
        moment = datetime.now(timezone.utc) - timedelta(minutes=10)
        return moment.replace(tzinfo=None) if remove_tzinfo else moment

    client = door["client"]()
    with mock.patch("botocore.auth.get_current_datetime", ten_minutes_ago):  # boto3 signs 10 minutes late
        response = refused(client, "InvalidSignatureException")
    assert "Signature expired" in response["Error"]["Message"]


def test_a_deleted_key_is_refused_once_the_proxy_has_the_new_table(door):
    # Last in the module: the other tests sign with this key.
    door["iam"].delete_access_key(AccessKeyId=door["key"]["AccessKeyId"])
    client = door["client"]()
    deadline = time.monotonic() + 15
    while True:
        try:
            client.invoke_endpoint(EndpointName="plus", Body=BODY, ContentType="application/x-npy")
        except ClientError as error:
            assert error.response["Error"]["Code"] == "UnrecognizedClientException"
            break
        assert time.monotonic() < deadline, "the proxy still admits a deleted key"
        time.sleep(0.05)
