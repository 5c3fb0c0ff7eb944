"""The proxy's HTTP door for boto3's sagemaker-runtime, over a fake data plane, called by the real boto3.

The door runs on its own event loop in a thread (`Door`); the tests call it with a real
``boto3.client("sagemaker-runtime")``, so every answer is read by botocore's own rest-json parser.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from types import SimpleNamespace

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from mve.codecs import MAX_BODY_BYTES
from mve.errors import (
    InternalFailure, ModelError, ModelNotReady, MveError, NotFound, ResourceNotFound, ServiceUnavailable,
    ValidationError,
)
from mve.proxy.dataplane import InvokeResult
from mve.proxy.transport import http_runtime
from mve.proxy.transport.http_auth import AuthRefused, RequestAuth
from mve.proxy.transport.http_errors import original_status_code
from mve.proxy.transport.http_runtime import REFUSED_HEADERS, SERVED_HEADERS, HttpRuntime, RuntimeHttpServer


class FakeDataPlane:
    """Records each InvokeRequest; answers a fixed result, or raises `outcome`; waits on `gate` if set."""

    tracer = None

    def __init__(self, outcome: BaseException | None = None):
        self.outcome = outcome
        self.requests = []
        self.gate: asyncio.Event | None = None

    async def invoke_endpoint(self, request, time_remaining=None):
        self.requests.append((request, time_remaining))
        if self.gate is not None:
            await self.gate.wait()
        if self.outcome is not None:
            raise self.outcome
        return InvokeResult(
            body=b'{"y": [[2.0, 4.0]]}', content_type="application/json", invoked_production_variant="VariantA",
            custom_attributes="echo:" + request.custom_attributes if request.custom_attributes else "",
            inference_id=request.inference_id or "made-by-the-proxy",
        )


def table(auth_required: bool = False, has_table: bool = True):
    """A stand-in for the Router's view of its last routing table."""
    return SimpleNamespace(has_table=has_table, signing_keys=SimpleNamespace(auth_required=auth_required))


class Door:
    """An `HttpRuntime` served by `RuntimeHttpServer` on 127.0.0.1:0, on an event loop in a thread."""

    def __init__(self, dataplane, source=None, **auth):
        self.dataplane = dataplane
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runtime = HttpRuntime(dataplane, RequestAuth(source or table(), **auth))
        self.server = RuntimeHttpServer(self.runtime, grace_s=5.0)
        self.address = self.call(self.server.start("127.0.0.1", 0))
        self.url = f"http://{self.address}"

    def call(self, coro, timeout: float = 15.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def client(self):
        """The real boto3 runtime client, without retries (a 429 or 5xx is seen once)."""
        return boto3.client(
            "sagemaker-runtime", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="MVEKTEST",
            aws_secret_access_key="secret", config=Config(retries={"total_max_attempts": 1}),
        )

    def close(self):
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def door_for():
    doors = []

    def make(dataplane=None, source=None, **auth):
        door = Door(dataplane or FakeDataPlane(), source, **auth)
        doors.append(door)
        return door

    yield make
    for door in doors:
        door.close()


def raw(url: str, method: str = "POST", body: bytes = b"", headers: dict | None = None):
    """(status, headers, body) of one plain HTTP request, errors included."""
    request = urllib.request.Request(url, data=body if method != "GET" else None, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


# ------------------------------------------------------------ the protocol, from botocore's model


def test_every_invoke_endpoint_header_in_botocores_model_is_served_or_refused():
    model = botocore.session.get_session().get_service_model("sagemaker-runtime")
    operation = model.operation_model("InvokeEndpoint")
    assert operation.http == {"method": "POST", "requestUri": http_runtime.INVOKE_ROUTE}
    in_headers = {
        name: shape.serialization["name"]
        for name, shape in operation.input_shape.members.items()
        if shape.serialization.get("location") == "header"
    }
    refused = {member: header for header, (member, _) in REFUSED_HEADERS.items()}
    assert in_headers == {**SERVED_HEADERS, **refused}  # a header a new botocore adds fails here
    out = {name: shape.serialization.get("name") for name, shape in operation.output_shape.members.items()}
    assert out["InvokedProductionVariant"] == http_runtime.INVOKED_VARIANT
    assert out["CustomAttributes"] == http_runtime.CUSTOM_ATTRIBUTES
    assert out["ContentType"] == http_runtime.CONTENT_TYPE
    assert model.operation_model("InvokeEndpointAsync").http["requestUri"] == http_runtime.ASYNC_ROUTE
    assert model.operation_model("InvokeEndpointWithResponseStream").http["requestUri"] == http_runtime.STREAM_ROUTE
    # The runtime's error names and statuses in mve's error table are the model's.
    from mve.errors import RUNTIME, http_status

    for shape in operation.error_shapes:
        assert http_status(shape.name, RUNTIME) == shape.metadata["error"]["httpStatusCode"], shape.name


# ------------------------------------------------------------ InvokeEndpoint


def test_boto3_invoke_endpoint_reaches_the_data_plane_with_every_field(door_for):
    door = door_for()
    response = door.client().invoke_endpoint(
        EndpointName="my-endpoint", Body=b'{"x": [[1.0, 2.0]]}', ContentType="application/json",
        Accept="application/json", TargetVariant="VariantA", InferenceId="id-123", CustomAttributes="k=v",
    )
    (request, time_remaining), = door.dataplane.requests
    assert request.endpoint_name == "my-endpoint"
    assert request.body == b'{"x": [[1.0, 2.0]]}'
    assert (request.content_type, request.accept) == ("application/json", "application/json")
    assert (request.target_variant, request.inference_id, request.custom_attributes) == ("VariantA", "id-123", "k=v")
    assert request.routing_key == "" and time_remaining is None  # the proxy's model timeout applies
    assert response["Body"].read() == b'{"y": [[2.0, 4.0]]}'
    assert response["ContentType"] == "application/json"
    assert response["InvokedProductionVariant"] == "VariantA"
    assert response["CustomAttributes"] == "echo:k=v"
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-sagemaker-inference-id"] == "id-123"
    assert response["ResponseMetadata"]["RequestId"] == headers["x-amzn-requestid"] != ""


def test_optional_fields_left_out_are_empty_and_the_proxy_names_the_inference_id(door_for):
    door = door_for()
    client = door.client()
    response = client.invoke_endpoint(EndpointName="ep", Body=b"1,2", ContentType="text/csv")
    (request, _), = door.dataplane.requests
    assert (request.accept, request.target_variant, request.inference_id, request.custom_attributes) == ("", "", "", "")
    assert "CustomAttributes" not in response  # the model set none: no header
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-sagemaker-inference-id"] == "made-by-the-proxy"
    second = client.invoke_endpoint(EndpointName="ep", Body=b"1,2", ContentType="text/csv")
    assert second["ResponseMetadata"]["RequestId"] != response["ResponseMetadata"]["RequestId"]


@pytest.mark.parametrize(
    "field, value, header",
    [
        ("TargetModel", "model.tar.gz", "X-Amzn-SageMaker-Target-Model"),
        ("TargetContainerHostname", "container-1", "X-Amzn-SageMaker-Target-Container-Hostname"),
        ("EnableExplanations", "`true`", "X-Amzn-SageMaker-Enable-Explanations"),
        ("InferenceComponentName", "component", "X-Amzn-SageMaker-Inference-Component"),
        ("SessionId", "NEW_SESSION", "X-Amzn-SageMaker-Session-Id"),
        ("PrefixAwareId", "prefix-1", "X-Amzn-SageMaker-Prefix-Aware-Id"),
    ],
)
def test_headers_of_features_mve_lacks_are_refused_naming_the_header(door_for, field, value, header):
    door = door_for()
    client = door.client()
    with pytest.raises(client.exceptions.ValidationError) as caught:
        client.invoke_endpoint(EndpointName="ep", Body=b"1,2", ContentType="text/csv", **{field: value})
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert field in error["Error"]["Message"] and header in error["Error"]["Message"]
    assert "not supported" in error["Error"]["Message"]
    assert door.dataplane.requests == []


# ------------------------------------------------------------ errors, as botocore reads them


@pytest.mark.parametrize(
    "raised, code, status",
    [
        (ValidationError("bad body"), "ValidationError", 400),  # reason ValidationException on the gRPC door
        (MveError("bad", reason="ValidationError"), "ValidationError", 400),
        (ResourceNotFound("Endpoint nope not found."), "ValidationError", 400),
        (NotFound("Endpoint nope not found."), "ValidationError", 400),
        (ModelNotReady("no instance ready"), "ModelNotReadyException", 429),
        (ServiceUnavailable("later"), "ServiceUnavailable", 503),
        (InternalFailure("oops"), "InternalFailure", 500),
        (MveError("dependency down", reason="InternalDependencyException"), "InternalDependencyException", 530),
        (RuntimeError("a bug"), "InternalFailure", 500),
    ],
)
def test_domain_errors_become_the_runtimes_errors(door_for, raised, code, status):
    client = door_for(FakeDataPlane(raised)).client()
    with pytest.raises(ClientError) as caught:
        client.invoke_endpoint(EndpointName="ep", Body=b"1,2", ContentType="text/csv")
    error = caught.value
    assert error.response["Error"]["Code"] == code
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert isinstance(error, getattr(client.exceptions, code))  # boto3's modeled exception class
    expected = "internal failure: RuntimeError" if isinstance(raised, RuntimeError) else raised.message
    assert error.response["Error"]["Message"] == expected


@pytest.mark.parametrize("original, integer", [("INTERNAL", 500), ("DEADLINE_EXCEEDED", 504), ("OK", 200), ("503", 503)])
def test_a_model_error_carries_its_original_status_code_as_an_integer(door_for, original, integer):
    raised = ModelError("Received INTERNAL from model m", metadata={"OriginalStatusCode": original,
                                                                    "OriginalMessage": "reshape failed"})
    client = door_for(FakeDataPlane(raised)).client()
    with pytest.raises(client.exceptions.ModelError) as caught:
        client.invoke_endpoint(EndpointName="ep", Body=b"1,2", ContentType="text/csv")
    response = caught.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == integer and isinstance(response["OriginalStatusCode"], int)
    assert response["OriginalMessage"] == "reshape failed"
    assert response["Error"]["Message"] == "Received INTERNAL from model m"
    assert "LogStreamArn" not in response  # mve names none unless the error carries one


def test_original_status_code_reads_integers_and_grpc_names():
    assert original_status_code("404") == 404
    assert original_status_code("unavailable") == 503
    assert original_status_code("DEADLINE_EXCEEDED") == 504
    assert original_status_code("something else") == 500


def test_a_body_over_6_mb_is_refused_with_sagemakers_413_before_the_data_plane(door_for):
    door = door_for()
    client = door.client()
    with pytest.raises(ClientError) as caught:
        client.invoke_endpoint(EndpointName="ep", Body=b"1" * (MAX_BODY_BYTES + 1), ContentType="text/csv")
    response = caught.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert response["Error"]["Code"] == "413"  # SageMaker sends no error type with it
    assert response["Error"]["Message"] == f"HTTP content length exceeded {MAX_BODY_BYTES} bytes."
    assert door.dataplane.requests == []
    client.invoke_endpoint(EndpointName="ep", Body=b"1" * MAX_BODY_BYTES, ContentType="text/csv")
    assert len(door.dataplane.requests[0][0].body) == MAX_BODY_BYTES  # exactly 6 MB is allowed


def test_a_chunked_body_over_6_mb_is_refused_too(door_for):
    door = door_for()

    def chunks():
        for _ in range(7):
            yield b"1" * (1 << 20)

    request = urllib.request.Request(f"{door.url}/endpoints/ep/invocations", data=chunks(), method="POST",
                                     headers={"Content-Type": "text/csv", "Transfer-Encoding": "chunked"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (ConnectionError, urllib.error.URLError):
        status = 413  # the door may close the connection while the client still sends
    assert status == 413
    assert door.dataplane.requests == []


def test_async_and_streaming_invocations_are_refused_as_not_implemented(door_for):
    door = door_for()
    client = door.client()
    with pytest.raises(client.exceptions.ValidationError, match="mve does not implement InvokeEndpointAsync"):
        client.invoke_endpoint_async(EndpointName="ep", InputLocation="s3://bucket/input")
    with pytest.raises(client.exceptions.ValidationError,
                       match="mve does not implement InvokeEndpointWithResponseStream"):
        client.invoke_endpoint_with_response_stream(EndpointName="ep", Body=b"1,2", ContentType="text/csv")
    assert door.dataplane.requests == []


def test_any_other_path_is_an_unknown_operation(door_for):
    door = door_for()
    for method, path in (("GET", "/"), ("GET", "/endpoints/ep/invocations"), ("POST", "/ping")):
        status, headers, body = raw(door.url + path, method)
        assert status == 404 and headers["x-amzn-ErrorType"] == "UnknownOperationException"
        assert "POST /endpoints/{EndpointName}/invocations" in json.loads(body)["message"]


# ------------------------------------------------------------ who may call


def test_before_any_routing_table_every_request_is_refused_as_service_unavailable(door_for):
    door = door_for(source=table(has_table=False))
    client = door.client()
    with pytest.raises(client.exceptions.ServiceUnavailable, match="no routing table"):
        client.invoke_endpoint(EndpointName="ep", Body=b"1,2", ContentType="text/csv")
    assert door.dataplane.requests == []


class SeenVerify:
    """A stand-in for mve.sigv4.aiohttp_verify: records its arguments, refuses unless told to admit."""

    def __init__(self, admit: bool):
        self.admit = admit
        self.calls = []

    def __call__(self, request, body, keys):
        self.calls.append((request.method, request.path, body, keys))
        if not self.admit:
            raise AuthRefused("InvalidSignatureException", "The request signature we calculated does not match", 403)
        return "MVEKTEST"


def test_when_the_table_requires_signatures_each_request_is_verified_with_its_body_and_keys(door_for):
    source = table(auth_required=True)
    refuse = SeenVerify(admit=False)
    door = door_for(source=source, verify=refuse, auth_error=AuthRefused)
    client = door.client()
    with pytest.raises(ClientError) as caught:
        client.invoke_endpoint(EndpointName="ep", Body=b"1,2", ContentType="text/csv")
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert refuse.calls == [("POST", "/endpoints/ep/invocations", b"1,2", source.signing_keys)]
    with pytest.raises(ClientError, match="InvalidSignatureException"):  # the unimplemented ones too
        client.invoke_endpoint_async(EndpointName="ep", InputLocation="s3://bucket/input")
    assert door.dataplane.requests == []

    admit = SeenVerify(admit=True)
    door = door_for(source=source, verify=admit, auth_error=AuthRefused)
    assert door.client().invoke_endpoint(EndpointName="ep", Body=b"1,2", ContentType="text/csv")["Body"].read()
    assert len(admit.calls) == 1 and len(door.dataplane.requests) == 1


def test_a_table_without_auth_needs_no_verifier(door_for):
    def never(*_):
        raise AssertionError("verified although the table does not require it")

    door = door_for(source=table(auth_required=False), verify=never, auth_error=AuthRefused)
    door.client().invoke_endpoint(EndpointName="ep", Body=b"1,2", ContentType="text/csv")
    assert len(door.dataplane.requests) == 1


def test_a_proxy_that_requires_credentials_serves_no_unsigned_call_when_the_table_checks_none(door_for):
    # --invoke-token-file on the gRPC door, --auth none on the control plane: the HTTP door must not be the way round.
    door = door_for(source=table(auth_required=False), credentials_required=True)
    with pytest.raises(ClientError) as raised:
        door.client().invoke_endpoint(EndpointName="ep", Body=b"1,2", ContentType="text/csv")
    assert raised.value.response["Error"]["Code"] == "MissingAuthenticationTokenException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "--auth none" in raised.value.response["Error"]["Message"]
    assert door.dataplane.requests == []


# ------------------------------------------------------------ drain and stop


def test_while_draining_answers_close_their_connection(door_for):
    import http.client

    door = door_for()
    host, port = door.address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)  # HTTP/1.1 keep-alive
    try:
        answers = []
        for draining in (False, True):
            if draining:
                door.server.drain()
            connection.request("POST", "/endpoints/ep/invocations", body=b"1,2", headers={"Content-Type": "text/csv"})
            response = connection.getresponse()
            response.read()
            answers.append((response.status, response.getheader("Connection", "keep-alive").lower()))
    finally:
        connection.close()
    assert answers == [(200, "keep-alive"), (200, "close")]


def test_stop_lets_a_request_in_flight_finish_and_then_refuses_connections(door_for):
    dataplane = FakeDataPlane()
    door = door_for(dataplane)
    dataplane.gate = door.call(_event())
    answers = []
    caller = threading.Thread(target=lambda: answers.append(raw(
        f"{door.url}/endpoints/ep/invocations", body=b"1,2", headers={"Content-Type": "text/csv"})))
    caller.start()
    _wait(lambda: dataplane.requests)
    stopping = asyncio.run_coroutine_threadsafe(door.server.stop(), door.loop)
    _wait(lambda: not _accepts(door.address))  # the listening socket closes at once
    door.loop.call_soon_threadsafe(dataplane.gate.set)
    stopping.result(10)
    caller.join(10)
    assert answers and answers[0][0] == 200  # the call in flight got its answer
    door.server = SimpleNamespace(stop=_noop)  # stopped already


async def _event() -> asyncio.Event:
    return asyncio.Event()


async def _noop():
    return None


def _accepts(address: str) -> bool:
    import socket

    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def _wait(predicate, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ------------------------------------------------------------ traces


def test_a_traced_call_is_one_server_span_joined_to_the_callers_traceparent(door_for):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    dataplane = FakeDataPlane(ModelError("failed", metadata={"OriginalStatusCode": "INTERNAL"}))
    dataplane.tracer = provider.get_tracer("test")
    door = door_for(dataplane)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    status, _, _ = raw(f"{door.url}/endpoints/ep/invocations", body=b"1,2", headers={
        "Content-Type": "text/csv", "traceparent": f"00-{trace_id}-b7ad6b7169203331-01"})
    assert status == 424
    span, = exporter.get_finished_spans()
    assert span.name == "POST /endpoints/{EndpointName}/invocations" and span.kind == SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == trace_id
    assert format(span.parent.span_id, "016x") == "b7ad6b7169203331"
    assert span.attributes["rpc.method"] == "InvokeEndpoint" and span.attributes["http.request.method"] == "POST"
    assert span.attributes["server.port"] == int(door.address.rsplit(":", 1)[1])
    assert not span.status.is_ok  # the model's failure is recorded on the span


# ------------------------------------------------------------ --http-port


def test_the_http_port_defaults_to_8081_and_is_range_checked():
    from mve.proxy.settings import ProxySettings

    assert ProxySettings().validate().http_port == 8081 and ProxySettings().http_enabled
    assert not ProxySettings(http_port=-1).validate().http_enabled
    assert ProxySettings(http_port=0, port=0, metrics_port=0).validate().http_enabled
    for bad, named in ((-2, "--http-port must be 0-65535"), (65536, "--http-port must be 0-65535"),
                       (8080, "must differ from --port"), (9464, "must differ from --metrics-port")):
        with pytest.raises(ValidationError, match=named):
            ProxySettings(http_port=bad).validate()
    ProxySettings(http_port=9464, metrics_port=9464, metrics_host="127.0.0.2").validate()  # another address


def test_the_http_port_comes_from_the_flag_then_the_environment(monkeypatch):
    from mve.cli import build_parser
    from mve.proxy.cli import settings_from_args

    parser = build_parser()
    monkeypatch.delenv("MVE_PROXY_HTTP_PORT", raising=False)
    assert settings_from_args(parser.parse_args(["proxy"])).http_port == 8081
    monkeypatch.setenv("MVE_PROXY_HTTP_PORT", "-1")
    assert settings_from_args(parser.parse_args(["proxy"])).http_port == -1
    assert settings_from_args(parser.parse_args(["proxy", "--http-port", "0"])).http_port == 0
    monkeypatch.setenv("MVE_PROXY_HTTP_PORT", "eighty")
    with pytest.raises(ValidationError, match="MVE_PROXY_HTTP_PORT"):
        settings_from_args(parser.parse_args(["proxy"]))


def test_without_botocore_a_required_signature_is_refused_as_service_unavailable(door_for, monkeypatch):
    from mve import sigv4

    monkeypatch.setattr(sigv4, "verifier_missing", lambda: "checking SigV4 needs botocore, which cannot be imported")
    door = door_for(source=table(auth_required=True))  # the real verifier, loaded on first need
    client = door.client()
    with pytest.raises(client.exceptions.ServiceUnavailable, match="needs botocore"):
        client.invoke_endpoint(EndpointName="ep", Body=b"1,2", ContentType="text/csv")
    assert door.dataplane.requests == []
