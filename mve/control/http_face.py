"""The control plane's HTTP face: SageMaker, Application Auto Scaling and CloudWatch as boto3 calls them.

    sm = boto3.client("sagemaker", endpoint_url="http://127.0.0.1:7071", region_name="us-east-1", ...)

One aiohttp server in the control plane's event loop, on ``--http-port`` (default 7071):

- ``POST /`` with ``X-Amz-Target: <targetPrefix>.<Op>``: AWS JSON (SageMaker's ``SageMaker``,
  Application Auto Scaling's ``AnyScaleFrontendService``, CloudWatch's ``GraniteServiceVersion20100801``);
- ``POST /service/GraniteServiceVersion20100801/operation/<Op>``: CloudWatch's smithy-rpc-v2-cbor.

Every request: body read up to `MAX_BODY_BYTES` (413 past it), then the caller checked by the
authenticator (SigV4), then the operation looked up in botocore's model and mve's SDK
(`mve.control.http_operations`), the body decoded (`mve.control.http_protocols`), and the SDK
method called on one of `workers` threads with a client of the control plane's own gRPC address.
With `ssl_context` the face serves HTTPS; its clients dial the gRPC door with `security`
(`mve.sdk.security.ClientSecurity`: TLS when the door is TLS, and the control plane's internal token
when the door requires a credential); plaintext and no token when none is given, never whatever the
environment or a data dir would give an SDK client.
At most `max_in_flight` calls are admitted at once (the rest of them wait for a thread); past that
a request is answered ``ThrottlingException``, which botocore retries with back-off.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable

from aiohttp import web

from mve.control.http_operations import OperationFailure, ServiceFace, call_operation, load_faces
from mve.control.http_protocols import (
    CBOR_PROTOCOL,
    JSON_PROTOCOL,
    CborProtocol,
    ErrorReply,
    JsonProtocol,
    Protocol,
    WireError,
    WireReply,
)

log = logging.getLogger(__name__)

# SageMaker's request payload limit (InvokeEndpoint's 6 MB); no control-plane call comes near it.
MAX_BODY_BYTES = 6 * 1024 * 1024
# botocore waits 60 s for an answer by default; answer (even an error) before it gives up.
CALL_TIMEOUT_S = 55.0
DEFAULT_WORKERS = 16
DEFAULT_MAX_IN_FLIGHT = 128
CBOR_PATH = "/service/{service}/operation/{operation}"

# (request, raw body) -> the caller's access key id; raises OperationFailure to refuse the request.
Authenticator = Callable[[web.Request, bytes], Awaitable[str]]

_JSON_ERRORS = JsonProtocol("1.1")  # errors before any service is known ("/" with no usable target)
_CBOR_ERRORS = CborProtocol()


class HttpFace:
    """The aiohttp application and server; `start` binds, `stop` closes, `address` is HOST:PORT."""

    def __init__(
        self,
        grpc_address: str,
        *,
        authenticate: Authenticator | None = None,
        faces: dict[str, ServiceFace] | None = None,
        clients: dict | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        workers: int = DEFAULT_WORKERS,
        call_timeout_s: float = CALL_TIMEOUT_S,
        ssl_context: ssl.SSLContext | None = None,
        security=None,
    ):
        if not 1 <= workers <= max_in_flight:
            raise ValueError(f"workers must be 1-{max_in_flight} (max_in_flight), got {workers}")
        self.grpc_address = grpc_address
        self.address = ""
        self._authenticate = authenticate
        self._faces = faces
        self._clients = clients
        self._max_body_bytes = max_body_bytes
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._workers = workers
        self._call_timeout_s = call_timeout_s
        self._ssl_context = ssl_context
        self._security = security
        self._executor: ThreadPoolExecutor | None = None
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> str:
        """Load botocore's models, make the SDK clients, bind `host`:`port` (0: a free one); OSError if busy."""
        if self._faces is None:
            self._faces = await asyncio.to_thread(load_faces)
        if self._clients is None:
            self._clients = self._make_clients()
        self._executor = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="mve-http")
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self._ssl_context)
        try:
            await site.start()
        except OSError:
            await self.stop()
            raise
        bound_port = self._runner.addresses[0][1]
        bracketed = ":" in host and not host.startswith("[")
        self.address = f"[{host}]:{bound_port}" if bracketed else f"{host}:{bound_port}"
        log.info(
            "event=http_face_ready address=%s https=%s services=%s",
            self.address, self._ssl_context is not None, ",".join(self._faces),
        )
        return self.address

    async def stop(self) -> None:
        """Stop taking requests, give those in flight 1 s, then close the clients (cancelling what is left)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for client in (self._clients or {}).values():
            client.close()
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
            self._executor = None

    async def check_door(self, timeout_s: float) -> str | None:
        """None when the face's clients reach the gRPC door (TLS handshake and health check), else why not."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        security = self._security
        if security is None or not security.secure:
            channel = grpc.aio.insecure_channel(self.grpc_address)
        else:
            channel = grpc.aio.secure_channel(self.grpc_address, security.channel_credentials())
        async with channel:
            try:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=timeout_s, metadata=security.metadata if security else ()
                )
            except grpc.aio.AioRpcError as error:
                return f"{error.code().name}: {error.details()}"
        return None

    def _make_clients(self) -> dict:
        from mve.sdk.factory import SERVICES
        from mve.sdk.security import PLAINTEXT

        security = self._security if self._security is not None else PLAINTEXT
        return {
            name: SERVICES[name][0](self.grpc_address, timeout=self._call_timeout_s, security=security)
            for name in self._faces
        }

    def app(self) -> web.Application:
        """The aiohttp application (its routes need `start` to have loaded the faces, or `faces=`)."""
        app = web.Application(client_max_size=self._max_body_bytes)
        app.router.add_post("/", self._json_call)
        app.router.add_post(CBOR_PATH, self._cbor_call)
        app.router.add_route("*", "/{tail:.*}", self._no_route)
        return app

    # Routing by protocol: the JSON services share "/" and differ by X-Amz-Target's prefix.
    async def _json_call(self, request: web.Request) -> web.StreamResponse:
        target = request.headers.get("X-Amz-Target", "")
        prefix, _, operation = target.partition(".")
        face = self._face_by_prefix(prefix, JSON_PROTOCOL)
        if face is None:
            if request.content_type == "application/x-www-form-urlencoded":
                return await self._refuse_query(request)
            reason = f"unknown X-Amz-Target {target!r}" if target else "the X-Amz-Target header is missing"
            return await self._refuse(request, _JSON_ERRORS, None, ErrorReply("UnknownOperationException", reason, 400))
        return await self._call(request, face, face.protocols[JSON_PROTOCOL], operation)

    async def _cbor_call(self, request: web.Request) -> web.StreamResponse:
        prefix = request.match_info["service"]
        face = self._face_by_prefix(prefix, CBOR_PROTOCOL)
        if face is None:
            error = ErrorReply("UnknownOperationException", f"no service {prefix!r} at this address", 404)
            return await self._refuse(request, _CBOR_ERRORS, None, error)
        return await self._call(request, face, face.protocols[CBOR_PROTOCOL], request.match_info["operation"])

    async def _no_route(self, request: web.Request) -> web.StreamResponse:
        error = ErrorReply(
            "UnknownOperationException",
            f"{request.method} {request.path} is not an API of mve's control plane "
            "(AWS JSON: POST / with X-Amz-Target; smithy-rpc-v2-cbor: POST /service/<service>/operation/<operation>)",
            404,
        )
        return await self._refuse(request, _JSON_ERRORS, None, error)

    def _face_by_prefix(self, prefix: str, protocol: str) -> ServiceFace | None:
        for face in self._faces.values():
            if protocol in face.protocols and face.target_prefix == prefix:
                return face
        return None

    async def _refuse(self, request, protocol: Protocol, face, error: ErrorReply) -> web.StreamResponse:
        """Answer `error` once the body is read and the caller authenticated (AWS checks who asks first)."""
        try:
            body = await self._read_body(request)
            await self._check_caller(request, body)
        except OperationFailure as failure:
            error = failure.reply
        return self._error(protocol, face, error, str(uuid.uuid4()), "-")

    async def _call(
        self, request: web.Request, face: ServiceFace, protocol: Protocol, operation: str
    ) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        try:
            body = await self._read_body(request)
            await self._check_caller(request, body)
            model = face.operation(operation, protocol)
        except OperationFailure as failure:
            return self._error(protocol, face, failure.reply, request_id, operation)
        if self._in_flight >= self._max_in_flight:
            error = ErrorReply("ThrottlingException", f"more than {self._max_in_flight} calls in flight; retry", 400)
            return self._error(protocol, face, error, request_id, operation)
        self._in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            reply = await loop.run_in_executor(self._executor, self._serve, face, protocol, model, body, request_id)
        except OperationFailure as failure:
            return self._error(protocol, face, failure.reply, request_id, operation)
        except Exception:  # noqa: BLE001 - one bad call answers 500 and is logged; the server goes on
            log.exception("event=http_call_failed service=%s operation=%s request_id=%s", face.name, operation, request_id)
            error = ErrorReply("InternalFailure", "internal failure", 500)
            return self._error(protocol, face, error, request_id, operation)
        finally:
            self._in_flight -= 1
        log.debug("event=http_call service=%s operation=%s status=200 request_id=%s", face.name, operation, request_id)
        return _response(reply)

    def _serve(self, face: ServiceFace, protocol: Protocol, model, body: bytes, request_id: str) -> WireReply:
        """On a worker thread: decode, call mve's SDK, encode (a 6 MB body never parses on the event loop)."""
        try:
            params = protocol.decode_params(body, model)
        except WireError as error:
            raise OperationFailure(ErrorReply(error.code, error.message, 400)) from None
        result = call_operation(self._clients[face.name], face, model.name, params)
        request_id = result.get("ResponseMetadata", {}).get("RequestId") or request_id
        return protocol.encode_output(result, model, request_id)

    async def _refuse_query(self, request: web.Request) -> web.StreamResponse:
        """An AWS query-protocol call (an older botocore's CloudWatch): an XML error it can read."""
        error = ErrorReply(
            "UnsupportedProtocol",
            "mve serves CloudWatch over AWS JSON 1.0 and smithy-rpc-v2-cbor, not the query protocol that older "
            "botocore releases send; upgrade boto3",
            400,
        )
        try:
            body = await self._read_body(request)
            await self._check_caller(request, body)
        except OperationFailure as failure:
            error = failure.reply
        request_id = str(uuid.uuid4())
        log.info("event=http_error protocol=query status=%d code=%s request_id=%s", error.status, error.code, request_id)
        xml = _query_error_xml(error.query_code or error.code, error.message, request_id)
        return web.Response(status=error.status, content_type="text/xml", body=xml)

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self._max_body_bytes:
            raise OperationFailure(_too_large(self._max_body_bytes))
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise OperationFailure(_too_large(self._max_body_bytes)) from None

    async def _check_caller(self, request: web.Request, body: bytes) -> None:
        if self._authenticate is not None:
            await self._authenticate(request, body)

    def _error(self, protocol: Protocol, face, error: ErrorReply, request_id: str, operation: str) -> web.Response:
        level = logging.WARNING if error.status >= 500 else logging.INFO
        log.log(
            level, "event=http_error service=%s operation=%s status=%d code=%s request_id=%s message=%r",
            face.name if face is not None else "-", operation, error.status, error.code, request_id, error.message,
        )
        return _response(protocol.encode_error(error, face.model if face is not None else None, request_id))


def _query_error_xml(code: str, message: str, request_id: str) -> bytes:
    from xml.sax.saxutils import escape

    return (
        f"<ErrorResponse><Error><Type>Sender</Type><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"</Error><RequestId>{escape(request_id)}</RequestId></ErrorResponse>"
    ).encode()


def _too_large(limit: int) -> ErrorReply:
    return ErrorReply("RequestEntityTooLarge", f"the request body is larger than {limit} bytes", 413)


def _response(reply: WireReply) -> web.Response:
    return web.Response(status=reply.status, headers=reply.headers, body=reply.body)


def sigv4_authenticator(signing_keys: Callable[[], object]) -> Authenticator:
    """An `Authenticator` checking AWS Signature Version 4 with `mve.sigv4`.

    ``signing_keys()`` gives the key source in force now (`mve.sigv4.SigningKeys`: the date keys
    and ``auth_required``); when it does not require signatures, every request passes. A refusal
    is answered in the service's protocol with `mve.sigv4`'s code and status (and, for a
    query-compatible service such as CloudWatch, the query-protocol spelling in
    ``x-amzn-query-error``). Verifying is a few HMACs over an in-memory key table: it runs on the loop.
    """
    from mve import sigv4

    async def authenticate(request: web.Request, body: bytes) -> str:
        keys = signing_keys()
        if not keys.auth_required:
            return ""
        try:
            return sigv4.aiohttp_verify(request, body, keys)
        except sigv4.AuthError as error:
            reply = ErrorReply(error.code, error.message, error.http_status, query_code=error.query_code)
            raise OperationFailure(reply) from None

    return authenticate


__all__ = ["Authenticator", "HttpFace", "MAX_BODY_BYTES", "sigv4_authenticator"]
