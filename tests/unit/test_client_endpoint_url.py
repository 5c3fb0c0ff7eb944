"""``mve.client(..., endpoint_url=...)`` and the SDK's exceptions with and without botocore."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import botocore.exceptions
import pytest

import mve
from mve.sdk import ClientError, EndpointConnectionError, ParamValidationError, WaiterError
from mve.sdk.factory import address_of_endpoint_url


@pytest.mark.parametrize(
    ("url", "address"),
    [("grpc://127.0.0.1:7070", "127.0.0.1:7070"), ("grpc://cp.internal:7070/", "cp.internal:7070"),
     ("GRPC://[::1]:8080", "[::1]:8080"), ("10.0.0.5:8080", "10.0.0.5:8080")],
)
def test_endpoint_url_is_the_grpc_address(url, address):
    assert address_of_endpoint_url(url) == address
    with mve.client("sagemaker", endpoint_url=url) as sm:
        assert sm.address == address


@pytest.mark.parametrize("url", ["http://127.0.0.1:7071", "https://mve.example.com"])
def test_an_http_endpoint_url_is_refused_pointing_at_boto3(url):
    with pytest.raises(ValueError) as caught:
        mve.client("sagemaker-runtime", endpoint_url=url)
    message = str(caught.value)
    assert "mve.client speaks gRPC" in message
    assert f"boto3.client('sagemaker-runtime', endpoint_url='{url}'" in message
    assert "grpc://HOST:PORT" in message


@pytest.mark.parametrize("url", ["grpcs://h:1", "unix:///tmp/s", "grpc://h:1/path"])
def test_other_schemes_and_paths_are_refused(url):
    with pytest.raises(ValueError, match="grpc://HOST:PORT"):
        mve.client("sagemaker", endpoint_url=url)


def test_address_and_endpoint_url_together_are_refused():
    with pytest.raises(TypeError, match="address or endpoint_url, not both"):
        mve.client("sagemaker", address="127.0.0.1:7070", endpoint_url="grpc://127.0.0.1:7070")


def test_boto3_keywords_are_still_accepted_with_an_endpoint_url():
    sm = mve.client("sagemaker", endpoint_url="grpc://127.0.0.1:7070", region_name="us-east-1",
                    aws_access_key_id="AKID", aws_secret_access_key="secret")
    assert sm.address == "127.0.0.1:7070"
    sm.close()


def test_with_botocore_the_sdks_exceptions_are_botocores():
    sm = mve.client("sagemaker", address="127.0.0.1:7070")
    assert issubclass(sm.exceptions.ValidationException, botocore.exceptions.ClientError)
    assert issubclass(ClientError, botocore.exceptions.ClientError)
    assert issubclass(ParamValidationError, botocore.exceptions.ParamValidationError)
    assert issubclass(EndpointConnectionError, botocore.exceptions.EndpointConnectionError)
    assert issubclass(WaiterError, botocore.exceptions.WaiterError)
    error = WaiterError("EndpointInService", "Max attempts exceeded", {"EndpointStatus": "Creating"})
    assert str(error) == "Waiter EndpointInService failed: Max attempts exceeded"
    assert error.last_response == {"EndpointStatus": "Creating"}
    sm.close()


def test_without_botocore_the_sdk_raises_its_own_exceptions_of_the_same_shape():
    script = textwrap.dedent("""
        import sys
        sys.modules["botocore"] = None  # as if it were not installed
        import mve
        from mve.sdk import ClientError, ParamValidationError
        sm = mve.client("sagemaker", address="127.0.0.1:1", timeout=0.5)
        assert ClientError.__mro__[1] is Exception, ClientError.__mro__
        try:
            sm.describe_endpoint(EndpointName=5)
            raise AssertionError("a number for EndpointName was sent")
        except ParamValidationError as error:
            assert str(error).startswith("Parameter validation failed:"), error
        error = sm.exceptions.ValidationException(
            {"Error": {"Code": "ValidationException", "Message": "m"}}, "DescribeEndpoint")
        assert isinstance(error, ClientError) and error.response["Error"]["Code"] == "ValidationException"
        assert str(error) == "An error occurred (ValidationException) when calling the DescribeEndpoint operation: m"
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
