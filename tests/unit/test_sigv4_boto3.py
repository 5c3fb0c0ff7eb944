"""SigV4 verification of requests made by real boto3 clients: captured before sending, and
received by an aiohttp server through `aiohttp_verify`."""

from __future__ import annotations

import asyncio
import threading
import time

import boto3
import pytest
from aiohttp import web
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from mve.sigv4 import AuthError, SigningKeys, aiohttp_verify, date_key, verify

KEY_ID = "MVEKBOTO3BOTO3BOTO31"
SECRET = "Boto3SecretWith/Slash+Plus" + "z" * 14


def signing_keys(*pairs: tuple[str, str]) -> SigningKeys:
    today = time.gmtime()
    days = {time.strftime("%Y%m%d", time.gmtime(time.time() + d * 86400)) for d in (-1, 0, 1)}
    assert time.strftime("%Y%m%d", today) in days
    return SigningKeys(True, {(key_id, day): date_key(secret, day) for key_id, secret in pairs for day in days})


KEYS = signing_keys((KEY_ID, SECRET))


def client(service: str, endpoint_url: str, secret: str = SECRET, key_id: str = KEY_ID):
    return boto3.client(
        service, endpoint_url=endpoint_url, region_name="eu-central-1",
        aws_access_key_id=key_id, aws_secret_access_key=secret,
        config=boto3.session.Config(retries={"max_attempts": 1}),
    )


CALLS = {
    "sagemaker": lambda c: c.describe_endpoint(EndpointName="my-endpoint"),
    "sagemaker-runtime": lambda c: c.invoke_endpoint(
        EndpointName="my-endpoint", Body=b'{"instances": [[1.0, 2.0]]}', ContentType="application/json",
        Accept="application/json", TargetVariant="variant-1", CustomAttributes="trace=1; a b",
        InferenceId="id 42/x",
    ),
    "application-autoscaling": lambda c: c.describe_scalable_targets(ServiceNamespace="sagemaker"),
    "cloudwatch": lambda c: c.get_metric_statistics(
        Namespace="AWS/SageMaker", MetricName="Invocations", StartTime=0, EndTime=60, Period=60,
        Statistics=["Sum"], Dimensions=[{"Name": "EndpointName", "Value": "my-endpoint"}],
    ),
}


@pytest.mark.parametrize("service", sorted(CALLS))
def test_requests_boto3_signs_verify(service):
    captured = []

    def capture(request, **_):
        captured.append(request)
        return AWSResponse(request.url, 500, {}, None)  # never sent

    sm = client(service, "http://127.0.0.1:18080")
    sm.meta.events.register("before-send", capture)
    with pytest.raises(Exception):
        CALLS[service](sm)
    request = captured[0]
    headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
    body = request.body or b""
    assert verify(request.method, request.url, headers, body, KEYS) == KEY_ID
    with pytest.raises(AuthError) as info:
        verify(request.method, request.url, headers, body + b" ", KEYS)
    assert info.value.code == "InvalidSignatureException"


class Server:
    """An aiohttp server on a free loopback port that answers 200 to signed calls, the AuthError otherwise."""

    def __init__(self, keys: SigningKeys):
        self.keys = keys
        self.seen: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            key_id = aiohttp_verify(request, body, self.keys)
        except AuthError as error:
            return web.json_response(
                {"__type": error.code, "message": error.message}, status=error.http_status,
                headers={"x-amzn-ErrorType": error.code},
            )
        self.seen.append(key_id)
        if request.path.endswith("/invocations"):
            return web.Response(body=b"[0.5]", content_type="application/json",
                                headers={"x-Amzn-Invoked-Production-Variant": "variant-1"})
        return web.json_response({}, content_type="application/x-amz-json-1.1")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> "Server":
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def server():
    with Server(KEYS) as running:
        yield running


def test_boto3_runtime_call_passes_aiohttp_verify(server):
    answer = CALLS["sagemaker-runtime"](client("sagemaker-runtime", server.url))
    assert answer["Body"].read() == b"[0.5]"
    assert answer["InvokedProductionVariant"] == "variant-1"
    assert server.seen[-1] == KEY_ID


def test_boto3_control_call_passes_aiohttp_verify(server):
    client("application-autoscaling", server.url).describe_scalable_targets(ServiceNamespace="sagemaker")
    assert server.seen[-1] == KEY_ID


def test_boto3_with_a_wrong_secret_gets_invalid_signature(server):
    with pytest.raises(ClientError) as info:
        CALLS["sagemaker-runtime"](client("sagemaker-runtime", server.url, secret="w" * 40))
    assert info.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_boto3_with_an_unknown_key_gets_unrecognized_client(server):
    with pytest.raises(ClientError) as info:
        client("application-autoscaling", server.url, key_id="MVEKNOSUCHKEYNOSUCH1").describe_scalable_targets(
            ServiceNamespace="sagemaker"
        )
    assert info.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_unsigned_boto3_gets_missing_authentication_token(server):
    from botocore import UNSIGNED
    from botocore.config import Config

    unsigned = boto3.client("sagemaker", endpoint_url=server.url, region_name="eu-central-1",
                            config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as info:
        unsigned.list_endpoints()
    assert info.value.response["Error"]["Code"] == "MissingAuthenticationTokenException"


def test_a_path_with_escaped_characters_passes_aiohttp_verify(server):
    smr = client("sagemaker-runtime", server.url)
    answer = smr.invoke_endpoint(EndpointName="a b/é~%", Body=b"1,2", ContentType="text/csv")
    assert answer["Body"].read() == b"[0.5]"
    assert server.seen[-1] == KEY_ID


def test_query_strings_pass_aiohttp_verify(server):
    cw = client("cloudwatch", server.url)
    signed = []
    cw.meta.events.register("before-send", lambda request, **_: signed.append(request.url))
    # botocore sends JSON here; a query string is added to the signed URL to exercise it end to end.
    cw.meta.events.register("before-sign", lambda request, **_: setattr(request, "url", request.url + "?b=2&a=x%20y"))
    cw.list_metrics()
    assert signed[-1].endswith("?b=2&a=x%20y")
    assert server.seen[-1] == KEY_ID
