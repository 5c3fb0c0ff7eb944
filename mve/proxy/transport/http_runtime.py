"""SageMaker Runtime's HTTP face, served by the proxy itself: unmodified boto3 against mve.

``boto3.client("sagemaker-runtime", endpoint_url="http://127.0.0.1:8081").invoke_endpoint(...)``
lands here. The protocol is botocore's service model for ``sagemaker-runtime`` (rest-json, API
version 2017-05-13, signing name ``sagemaker``): InvokeEndpoint is
``POST /endpoints/{EndpointName}/invocations`` with the body as the payload and its fields in
headers. The handler reads the body once, hands one `InvokeRequest` to `DataPlane.invoke_endpoint`
(the gRPC door's own call: the same routing, batching, capture, shadows, counters and spans) and
writes the answer's body and headers. Errors are rest-json errors as botocore parses them
(`mve.proxy.transport.http_errors`).

Request headers: Content-Type, Accept, X-Amzn-SageMaker-Custom-Attributes, -Target-Variant and
-Inference-Id are served. The headers of features mve does not have (TargetModel,
TargetContainerHostname, EnableExplanations, InferenceComponentName, SessionId, PrefixAwareId)
are refused with a ValidationError naming the header, never ignored. InvokeEndpointAsync and
InvokeEndpointWithResponseStream answer a ValidationError saying mve does not implement them
(ValidationError is the one client error both operations model). Any other path is an
UnknownOperationException (404).

Answer headers: Content-Type, x-Amzn-Invoked-Production-Variant, X-Amzn-SageMaker-Custom-Attributes
(when the model set any), and two that boto3 leaves in ``ResponseMetadata.HTTPHeaders``:
X-Amzn-SageMaker-Inference-Id (the invocation's id, the caller's or one the proxy made, as in
captured records) and x-amzn-RequestId (this HTTP request's id, also on errors).

Who may call: `RequestAuth` (`mve.proxy.transport.http_auth`) admits each request before it reaches the data
plane: refused with ServiceUnavailable until a routing table has arrived, checked for a SigV4
signature when the table says ``auth_required``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from aiohttp import web

from mve.codecs import MAX_BODY_BYTES
from mve.errors import MveError, ValidationError
from mve.prometheus import dialable_host
from mve.proxy.dataplane import DataPlane, InvokeRequest
from mve.proxy.transport.http_auth import AuthRefused, RequestAuth
from mve.proxy.transport.http_errors import (
    REQUEST_ID_HEADER, error_response, mve_error_response, too_large_response,
)
from mve.proxy.inference_ids import InferenceIds

log = logging.getLogger(__name__)

INVOKE_ROUTE = "/endpoints/{EndpointName}/invocations"
ASYNC_ROUTE = "/endpoints/{EndpointName}/async-invocations"
STREAM_ROUTE = "/endpoints/{EndpointName}/invocations-response-stream"

# InvokeEndpoint's request headers mve serves (botocore's input shape: member -> header).
ACCEPT = "Accept"
CONTENT_TYPE = "Content-Type"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
TARGET_VARIANT = "X-Amzn-SageMaker-Target-Variant"
INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"
SERVED_HEADERS = {
    "ContentType": CONTENT_TYPE, "Accept": ACCEPT, "CustomAttributes": CUSTOM_ATTRIBUTES,
    "TargetVariant": TARGET_VARIANT, "InferenceId": INFERENCE_ID,
}
# ... and those of features mve does not have: header -> (member, why it is refused).
REFUSED_HEADERS = {
    "X-Amzn-SageMaker-Target-Model": ("TargetModel", "mve has no multi-model endpoints"),
    "X-Amzn-SageMaker-Target-Container-Hostname": (
        "TargetContainerHostname", "mve has no multi-container endpoints"),
    "X-Amzn-SageMaker-Enable-Explanations": ("EnableExplanations", "mve computes no explanations"),
    "X-Amzn-SageMaker-Inference-Component": ("InferenceComponentName", "mve has no inference components"),
    "X-Amzn-SageMaker-Session-Id": ("SessionId", "mve has no stateful sessions"),
    "X-Amzn-SageMaker-Prefix-Aware-Id": ("PrefixAwareId", "mve has no prefix-aware routing"),
}
# InvokeEndpoint's answer headers.
INVOKED_VARIANT = "x-Amzn-Invoked-Production-Variant"

UNIMPLEMENTED = {
    "InvokeEndpointAsync": "mve endpoints are real-time; there is no asynchronous inference queue",
    "InvokeEndpointWithResponseStream": "mve answers each invocation whole; there is no response streaming",
}

# The SERVER span of a traced call, named and attributed as OpenTelemetry's HTTP server spans are.
SPAN_NAME = f"POST {INVOKE_ROUTE}"


class HttpRuntime:
    """The aiohttp application of the runtime's HTTP face, over one `DataPlane`."""

    def __init__(self, dataplane: DataPlane, auth: RequestAuth, *, request_ids: InferenceIds | None = None):
        self._dataplane = dataplane
        self._invoke = dataplane.invoke_endpoint
        self._auth = auth
        self._request_id = (request_ids or InferenceIds()).new
        self.draining = False  # set on SIGTERM: answers close their connection (clients go elsewhere)
        self.address: tuple[str, int] | None = None  # (host, port) served on, for the spans
        self._span_attributes: dict | None = None

    def application(self) -> web.Application:
        """The routes: InvokeEndpoint, the two operations mve refuses, and everything else."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(INVOKE_ROUTE, self.invoke_endpoint)
        app.router.add_post(ASYNC_ROUTE, self._unimplemented("InvokeEndpointAsync"))
        app.router.add_post(STREAM_ROUTE, self._unimplemented("InvokeEndpointWithResponseStream"))
        app.router.add_route("*", "/{path:.*}", self._unknown_operation)
        return app

    async def invoke_endpoint(self, request: web.Request) -> web.Response:
        """InvokeEndpoint: admit the request, run it on the data plane, answer its body and headers."""
        request_id = self._request_id()
        headers = request.headers
        try:
            body = await _read_body(request)
            self._auth.admit(request, body)
            for name in REFUSED_HEADERS:
                if name in headers:
                    raise _refused(name)
            invoke = self._invoke(
                InvokeRequest(
                    endpoint_name=request.match_info["EndpointName"],
                    body=body,
                    content_type=headers.get(CONTENT_TYPE, ""),
                    accept=headers.get(ACCEPT, ""),
                    target_variant=headers.get(TARGET_VARIANT, ""),
                    inference_id=headers.get(INFERENCE_ID, ""),
                    custom_attributes=headers.get(CUSTOM_ATTRIBUTES, ""),
                )
            )
            if self._dataplane.tracer is None:
                result = await invoke
            else:
                with self._server_span(request):
                    result = await invoke
        except _TooLarge:
            return too_large_response(request_id)
        except AuthRefused as refused:
            return self._answer(error_response(refused.code, refused.http_status, refused.message, request_id))
        except MveError as error:
            return self._answer(mve_error_response(error, request_id))
        except Exception as error:  # noqa: BLE001 - the last line of defence: report, don't crash
            log.error("unhandled error in the HTTP InvokeEndpoint", exc_info=error)
            return self._answer(
                error_response("InternalFailure", 500, f"internal failure: {type(error).__name__}", request_id)
            )
        answer = {
            CONTENT_TYPE: result.content_type,
            INVOKED_VARIANT: result.invoked_production_variant,
            INFERENCE_ID: result.inference_id,
            REQUEST_ID_HEADER: request_id,
        }
        if result.custom_attributes:
            answer[CUSTOM_ATTRIBUTES] = result.custom_attributes
        return self._answer(web.Response(body=result.body, headers=answer))

    def _answer(self, response: web.Response) -> web.Response:
        if self.draining:
            response.force_close()
        return response

    def _unimplemented(self, operation: str):
        async def handler(request: web.Request) -> web.Response:
            request_id = self._request_id()
            try:
                self._auth.admit(request, await _read_body(request))
            except _TooLarge:
                return too_large_response(request_id)
            except AuthRefused as refused:
                return self._answer(error_response(refused.code, refused.http_status, refused.message, request_id))
            except MveError as error:
                return self._answer(mve_error_response(error, request_id))
            message = f"mve does not implement {operation}: {UNIMPLEMENTED[operation]}; call InvokeEndpoint instead"
            return self._answer(error_response("ValidationError", 400, message, request_id))

        return handler

    async def _unknown_operation(self, request: web.Request) -> web.Response:
        message = (
            f"no operation at {request.method} {request.path}: this is SageMaker Runtime's InvokeEndpoint, "
            f"POST {INVOKE_ROUTE}"
        )
        return self._answer(error_response("UnknownOperationException", 404, message, self._request_id()))

    def _server_span(self, request: web.Request):
        from mve.tracing import ServerSpan

        if self._span_attributes is None:
            attributes = {
                "http.request.method": "POST", "http.route": INVOKE_ROUTE, "url.scheme": "http",
                "rpc.system": "aws-api", "rpc.service": "SageMaker Runtime", "rpc.method": "InvokeEndpoint",
            }
            if self.address is not None:
                attributes["server.address"], attributes["server.port"] = self.address
            self._span_attributes = attributes
        headers = request.headers
        carried = tuple((name, headers[name]) for name in ("traceparent", "tracestate") if name in headers)
        return ServerSpan(self._dataplane.tracer, SPAN_NAME, carried, self._span_attributes)


class RuntimeHttpServer:
    """Runs an `HttpRuntime` on the proxy's event loop; `stop` stops accepting and drains."""

    def __init__(self, runtime: HttpRuntime, *, grace_s: float):
        self.runtime = runtime
        self.address = ""
        # access_log=None: no per-request log line (the data plane logs requests at DEBUG).
        self._runner = web.AppRunner(runtime.application(), access_log=None, shutdown_timeout=grace_s)

    async def start(
        self, host: str, port: int, ssl_context: ssl.SSLContext | None = None, *, reuse_port: bool = False
    ) -> str:
        """Bind ``host:port`` (0: a free port) and serve, over HTTPS with `ssl_context` (the gRPC
        door's certificate) when given, sharing the port with SO_REUSEPORT when `reuse_port` (the
        workers of ``--workers``); returns the dialable ``host:port``."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as error:
            await self._runner.cleanup()
            raise OSError(f"cannot bind the HTTP port {host}:{port}: {error.strerror or error}") from None
        bound = self._runner.addresses[0][1]
        self.runtime.address = (dialable_host(host), bound)
        self.address = f"{dialable_host(host)}:{bound}"
        log.info("event=http_runtime_serving address=%s scheme=%s", self.address, "https" if ssl_context else "http")
        return self.address

    def drain(self) -> None:
        """From now on every answer closes its connection, so clients reconnect elsewhere."""
        self.runtime.draining = True

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to the grace), close the connections."""
        await self._runner.cleanup()
        log.info("event=http_runtime_stopped address=%s", self.address)


class _TooLarge(Exception):
    """The body is over SageMaker's 6 MB."""


async def _read_body(request: web.Request) -> bytes:
    """The whole body, once; `_TooLarge` past 6 MB (from Content-Length, before reading, when it is given)."""
    length = request.content_length
    if length is None:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _TooLarge from None
    if length > MAX_BODY_BYTES:
        raise _TooLarge
    if length == 0:
        return b""  # aiohttp's empty payload refuses even readexactly(0)
    try:
        return await request.content.readexactly(length)
    except asyncio.IncompleteReadError:
        raise ValidationError("the request body ended before its Content-Length") from None


def _refused(header: str) -> ValidationError:
    member, why = REFUSED_HEADERS[header]
    return ValidationError(f"{member} ({header}) is not supported: {why}; send the request without it")


__all__ = [
    "HttpRuntime", "INVOKED_VARIANT", "REFUSED_HEADERS", "RuntimeHttpServer", "SERVED_HEADERS", "UNIMPLEMENTED",
]
