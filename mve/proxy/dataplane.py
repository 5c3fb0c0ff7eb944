"""The proxy's one domain core: an invocation in, a variant's answer out.

`DataPlane.invoke_endpoint` (SageMaker's InvokeEndpoint) and `DataPlane.model_infer` (the Open
Inference Protocol, model name = endpoint name) both pick a variant with the `Router`, send one
``ModelInferRequest`` with raw tensor bytes to an instance through `send`, count the result in the
`StatsBook`, and name the variant that answered. A variant with batching on hands the request to
its `VariantBatcher` instead, which sends it through the same `send` in a batch and gives back
only its rows; a variant without batching goes straight to `send`. The gRPC servicers only
convert protobuf to these calls. `DataPlane.model_infer_bytes` serves ModelInfer on serialised
bytes and forwards them untouched where it can (`mve.proxy.transport.wire`).

Every invocation has an inference id: the caller's (InferenceId, or the request's ``id``), else one
the proxy makes (`mve.proxy.inference_ids`); it goes upstream, comes back in the answer, and is
the id of the captured records. Once the caller's answer is ready, an endpoint with data capture
or shadow variants hands the invocation to `TrafficCopies` (`mve.proxy.traffic_copies`), which
samples it for capture and for each shadow; neither ever delays or fails the caller, and with
both off the cost is one check.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from functools import partial

from google.protobuf.message import DecodeError

from mve import codecs, tensors
from mve._fastroute import scan_batch_parts, scan_infer_request
from mve._proto import grpc_predict_v2_pb2 as pb
from mve.errors import MveError, ValidationError
from mve.proxy.batching.assembly import ITEMSIZES, ROUTING_PARAMETERS, ScannedRequest
from mve.proxy.batching.batcher import VariantBatcher
from mve.proxy.batching.policy import BatchingPolicy
from mve.proxy.capture_writer import CaptureWriter
from mve.proxy.inference_ids import InferenceIds
from mve.proxy.payloads import CUSTOM_ATTRIBUTES_PARAM, body_request, cast_body, response_outputs
from mve.proxy.routing.router import EndpointState, Router, TensorSpec, VariantState
from mve.proxy.shadow import ShadowSender
from mve.proxy.stats import StatsBook
from mve.proxy.traffic_copies import TrafficCopies
from mve.proxy.transport import wire
from mve.proxy.transport.upstream import UpstreamPool, fetch_model_metadata, infer_on_variant

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
MAX_INFERENCE_ID = 64
MAX_CUSTOM_ATTRIBUTES = 1024
MAX_ROUTING_KEY = 1024
INVOKED_VARIANT_PARAM = wire.INVOKED_VARIANT_PARAM
TARGET_VARIANT_PARAM, ROUTING_KEY_PARAM = ROUTING_PARAMETERS  # "target_variant", "routing_key"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InvokeRequest:
    """InvokeEndpoint's fields (see ``mve.v1.InvokeEndpointRequest``)."""

    endpoint_name: str
    body: bytes
    content_type: str
    accept: str = ""
    target_variant: str = ""
    inference_id: str = ""
    custom_attributes: str = ""
    routing_key: str = ""


@dataclass(frozen=True)
class InvokeResult:
    """InvokeEndpoint's answer: the encoded body, the variant that served it and the inference id."""

    body: bytes
    content_type: str
    invoked_production_variant: str
    custom_attributes: str = ""
    inference_id: str = ""


def check_name(value: str, field: str) -> None:
    """ValidationError unless `value` is a SageMaker resource name (1-63 letters, digits, hyphens)."""
    if not NAME_PATTERN.match(value):
        raise ValidationError(
            f"{field} '{value[:80]}' must be 1-63 letters, digits or hyphens, starting and ending with a letter or digit"
        )


def _check_length(value: str, limit: int, field: str) -> None:
    if len(value) > limit:
        raise ValidationError(f"{field} is {len(value)} characters; at most {limit} are allowed")


class DataPlane:
    """Routes invocations to variants and their instances, and counts them."""

    def __init__(
        self, router: Router, pool: UpstreamPool, stats: StatsBook, *, model_timeout_s: float = 60.0, send=None,
        tracer=None, capture: CaptureWriter | None = None, shadow_max_in_flight: int = 256, seed: int | None = None,
        inference_ids: InferenceIds | None = None, wall_clock=time.time,
    ):
        self.router = router
        self.pool = pool
        self.stats = stats
        self.model_timeout_s = model_timeout_s
        self._send = send or partial(infer_on_variant, pool)
        # The writer's thread starts with its first record: an endpoint without capture costs nothing.
        self.capture = capture if capture is not None else CaptureWriter()
        self.shadows = ShadowSender(
            self._send, stats, max_in_flight=shadow_max_in_flight, timeout_s=model_timeout_s, tracer=tracer
        )
        self._copies = TrafficCopies(
            self.capture, self.shadows, stats, self._single_input, timeout_s=model_timeout_s, seed=seed,
            wall_clock=wall_clock,
        )
        self._new_id = (inference_ids or InferenceIds()).new
        # With tracing off (None) no span, context or trace metadata is ever made (`mve.proxy.spans`).
        self.tracer = tracer
        self.address: tuple[str, int] | None = None  # (host, port) the proxy serves on, for its spans
        self._spans = None
        if tracer is not None:
            from mve.proxy import spans

            self._spans = spans
        router.set_batcher_factory(self._new_batcher)

    def _new_batcher(self, policy: BatchingPolicy) -> VariantBatcher:
        return VariantBatcher(policy, self._send, stats=self.stats, tracer=self.tracer)

    def _infer(self, variant: VariantState, request, timeout: float):
        """The awaitable that runs `request`: straight to `send`, or through the variant's batcher."""
        batcher = variant.batcher
        if batcher is None:
            return self._send(variant, request, timeout)
        return batcher.submit(request, timeout)

    def _timeout(self, time_remaining: float | None) -> float:
        if time_remaining is None:
            return self.model_timeout_s
        return max(min(time_remaining, self.model_timeout_s), 0.001)

    async def invoke_endpoint(self, request: InvokeRequest, time_remaining: float | None = None) -> InvokeResult:
        """Decode the body, run it on the picked variant's model, encode the outputs."""
        started = time.perf_counter()
        check_name(request.endpoint_name, "EndpointName")
        if request.target_variant:
            check_name(request.target_variant, "TargetVariant")
        _check_length(request.inference_id, MAX_INFERENCE_ID, "InferenceId")
        _check_length(request.custom_attributes, MAX_CUSTOM_ATTRIBUTES, "CustomAttributes")
        if not request.custom_attributes.isascii():
            raise ValidationError("CustomAttributes must be ASCII")
        _check_length(request.routing_key, MAX_ROUTING_KEY, "RoutingKey")
        content_type = codecs.normalize_content_type(request.content_type)
        accept = codecs.response_content_type(content_type, request.accept)
        codecs.check_body_size(request.body)
        endpoint = self.router.endpoint(request.endpoint_name)
        variant = endpoint.pick(request.target_variant, request.routing_key)
        inference_id = request.inference_id or self._new_id()
        if self._spans is not None:
            self._spans.picked(variant, request.target_variant, request.routing_key, inference_id)
        timeout = self._timeout(time_remaining)
        try:
            spec = await self._single_input(variant, timeout)
            array = cast_body(codecs.decode(request.body, content_type), spec)
            infer = body_request(variant.model_name, spec, array, inference_id, request.custom_attributes)
            result = await self._infer(variant, infer, timeout)
            outputs = response_outputs(result.response, variant)
            body = codecs.encode(outputs, accept)
        except MveError as error:
            self.stats.record_error(variant.endpoint_name, variant.name, error, len(variant.instances))
            raise
        attributes = result.response.parameters.get(CUSTOM_ATTRIBUTES_PARAM)
        self._record(variant, started, result.model_latency_us)
        if self._spans is not None or log.isEnabledFor(logging.DEBUG):
            self._observed("InvokeEndpoint", variant, result, inference_id, started)
        if endpoint.capture is not None or endpoint.shadows:
            self._copies.after_invoke(endpoint, variant, request, inference_id, infer, array, body, accept)
        return InvokeResult(
            body=body,
            content_type=accept,
            invoked_production_variant=variant.name,
            custom_attributes=attributes.string_param if attributes is not None else "",
            inference_id=inference_id,
        )

    async def model_infer(self, request, time_remaining: float | None = None):
        """Forward an Open Inference Protocol request (model_name = endpoint) to a variant, tensors raw.

        The ``target_variant`` request parameter picks a variant and ``routing_key`` makes the pick
        sticky; the response's ``invoked_production_variant`` parameter names the variant.
        """
        started = time.perf_counter()
        endpoint, variant, inference_id = self._pick_for_infer(request, request.ByteSize())
        capture = self._copies.sample_capture(endpoint)
        received = request.SerializeToString() if capture is not None else b""  # before it is re-targeted
        response = await self._forward_message(request, variant, started, time_remaining, inference_id)
        if capture is not None or endpoint.shadows:
            self._copies.after_model_infer(
                endpoint, variant, inference_id, capture, received, request, response.SerializeToString
            )
        return response

    async def model_infer_bytes(self, data: bytes, time_remaining: float | None = None) -> bytes:
        """`model_infer` on a serialised request, answering serialised bytes.

        When the request can go as it is (raw tensor contents, the variant not batched), its bytes
        are forwarded with the variant's model name appended and the answer's bytes come back with
        the endpoint and the variant appended (`mve.proxy.transport.wire`): no tensor byte is decoded or
        re-encoded on the way.
        """
        started = time.perf_counter()
        # What routing needs, in one pass over the bytes (`_fastroute.scan_infer_request`); the
        # message itself is decoded only when the request cannot go upstream as it is.
        try:
            model_name, request_id, target, routing_key, forwardable = scan_infer_request(data)
        except ValueError:
            raise ValidationError("the request is not a valid inference.ModelInferRequest") from None
        check_name(model_name, "model_name (endpoint name)")
        for name, value in ((TARGET_VARIANT_PARAM, target), (ROUTING_KEY_PARAM, routing_key)):
            if value is None:
                raise ValidationError(f"request parameter {name} must be a string_param")
        endpoint, variant, inference_id = self._pick(model_name, target, routing_key, request_id, len(data))
        # A made id is appended to what goes upstream and to the answer (`wire.id_field`).
        id_tail = b"" if request_id else wire.id_field(inference_id)
        batcher = variant.batcher
        # A batched variant's request in raw contents waits for its batch as bytes: what batching
        # needs comes from a second pass over them (`_fastroute.scan_batch_parts`), not a decode.
        parts = scan_batch_parts(data, ITEMSIZES, ROUTING_PARAMETERS) if batcher is not None and forwardable else None
        if parts is None and (batcher is not None or not forwardable):
            try:
                request = pb.ModelInferRequest.FromString(data)
            except DecodeError:
                raise ValidationError("the request is not a valid inference.ModelInferRequest") from None
        if parts is not None:
            scanned = ScannedRequest(data, request_id, variant.model_name)
            forward = (data, wire.request_tail(variant.model_name), id_tail)
            answer = await self._batch(scanned, parts, forward, batcher, variant, started, time_remaining, id_tail,
                                       inference_id)
            shadow_request = data
        elif batcher is not None:
            answer = await self._batch_bytes(data, request, batcher, variant, started, time_remaining, inference_id)
            shadow_request = request  # now in raw contents
        elif not forwardable:
            response = await self._forward_message(request, variant, started, time_remaining, inference_id)
            answer = response.SerializeToString()
            shadow_request = request
        else:
            try:
                result = await self._send(
                    variant, b"".join((data, wire.request_tail(variant.model_name), id_tail)),
                    self._timeout(time_remaining),
                )
            except MveError as error:
                self.stats.record_error(variant.endpoint_name, variant.name, error, len(variant.instances))
                raise
            self._record(variant, started, result.model_latency_us)
            if self._spans is not None or log.isEnabledFor(logging.DEBUG):
                self._observed("ModelInfer", variant, result, inference_id, started)
            answer = b"".join((result.response, wire.response_tail(variant.endpoint_name, variant.name), id_tail))
            shadow_request = data
        if endpoint.capture is not None or endpoint.shadows:
            capture = self._copies.sample_capture(endpoint)
            self._copies.after_model_infer(endpoint, variant, inference_id, capture, data, shadow_request, answer)
        return answer

    async def _batch_bytes(
        self, data: bytes, request, batcher, variant: VariantState, started: float, time_remaining, inference_id: str
    ) -> bytes:
        """A batched variant's ModelInfer on bytes: the caller's rows come back already serialised."""
        id_tail = b"" if request.id else wire.id_field(inference_id)
        # Alone in its batch, a request already in raw contents goes upstream as its own bytes: the
        # pieces, joined only if it does go alone (one batched with others is never copied whole).
        if wire.forwardable(request):
            forward = (data, wire.request_tail(variant.model_name), id_tail)
        else:
            forward = None
        try:
            _to_raw_contents(request)
        except MveError as error:
            self.stats.record_error(variant.endpoint_name, variant.name, error, len(variant.instances))
            raise
        request.model_name = variant.model_name
        request.model_version = ""
        parameters = request.parameters
        if parameters:
            for name in ROUTING_PARAMETERS:
                if name in parameters:
                    del parameters[name]
        return await self._batch(request, None, forward, batcher, variant, started, time_remaining, id_tail,
                                 inference_id)

    async def _batch(self, request, parts, forward, batcher, variant: VariantState, started: float, time_remaining,
                     id_tail: bytes, inference_id: str) -> bytes:
        """`request` (a message for the variant's model, or a `ScannedRequest` with its `parts`) through
        the batcher; the caller's answer as bytes, its tail (endpoint, variant, a made id) appended."""
        try:
            tail = wire.response_tail(variant.endpoint_name, variant.name) + id_tail
            result = await batcher.submit(request, self._timeout(time_remaining), tail, forward, parts)
        except MveError as error:
            self.stats.record_error(variant.endpoint_name, variant.name, error, len(variant.instances))
            raise
        self._record(variant, started, result.model_latency_us)
        if self._spans is not None or log.isEnabledFor(logging.DEBUG):
            self._observed("ModelInfer", variant, result, inference_id, started)
        return result.response

    def _pick_for_infer(self, request, size: int) -> tuple[EndpointState, VariantState, str]:
        """`_pick` for a decoded ``ModelInferRequest``."""
        target = _string_param(request.parameters, TARGET_VARIANT_PARAM)
        routing_key = _string_param(request.parameters, ROUTING_KEY_PARAM)
        return self._pick(request.model_name, target, routing_key, request.id, size)

    def _pick(
        self, model_name: str, target: str, routing_key: str, request_id: str, size: int
    ) -> tuple[EndpointState, VariantState, str]:
        """Validate an OIP request's endpoint, routing parameters and size; pick its variant.

        Returns the endpoint, the variant and the invocation's id (the request's, or a new one).
        """
        check_name(model_name, "model_name (endpoint name)")
        if target:
            check_name(target, "target_variant")
        _check_length(routing_key, MAX_ROUTING_KEY, "routing_key")
        if size > codecs.MAX_BODY_BYTES:
            raise ValidationError(f"Request of {size} bytes is over the 6 MB limit ({codecs.MAX_BODY_BYTES} bytes)")
        endpoint = self.router.endpoint(model_name)
        variant = endpoint.pick(target, routing_key)
        inference_id = request_id or self._new_id()
        if self._spans is not None:
            self._spans.picked(variant, target, routing_key, inference_id)
        return endpoint, variant, inference_id

    async def _forward_message(
        self, request, variant: VariantState, started: float, time_remaining: float | None, inference_id: str
    ):
        endpoint_name = request.model_name
        try:
            _to_raw_contents(request)
            request.model_name = variant.model_name
            request.model_version = ""
            request.id = inference_id
            for name in ROUTING_PARAMETERS:
                if name in request.parameters:
                    del request.parameters[name]
            result = await self._infer(variant, request, self._timeout(time_remaining))
        except MveError as error:
            self.stats.record_error(variant.endpoint_name, variant.name, error, len(variant.instances))
            raise
        response = result.response
        response.model_name = endpoint_name
        response.model_version = ""
        response.id = inference_id
        response.parameters[INVOKED_VARIANT_PARAM].string_param = variant.name
        self._record(variant, started, result.model_latency_us)
        if self._spans is not None or log.isEnabledFor(logging.DEBUG):
            self._observed("ModelInfer", variant, result, inference_id, started)
        return response

    def _observed(self, method: str, variant: VariantState, result, inference_id: str, started: float) -> None:
        """The answering instance on the current span, and the request's DEBUG log line with its trace id."""
        if self._spans is not None:
            self._spans.answered(result)
        if log.isEnabledFor(logging.DEBUG):
            trace_id = self._spans.current_trace_id() if self._spans is not None else ""
            log.debug(
                "event=request method=%s endpoint=%s variant=%s instance=%s inference_id=%s trace_id=%s "
                "latency_us=%d model_latency_us=%d",
                method, variant.endpoint_name, variant.name, result.instance.instance_id, inference_id or "-",
                trace_id or "-", (time.perf_counter() - started) * 1e6, result.model_latency_us,
            )

    def _record(self, variant: VariantState, started: float, model_latency_us: float) -> None:
        total_us = (time.perf_counter() - started) * 1e6
        self.stats.record_success(
            variant.endpoint_name,
            variant.name,
            model_latency_us,
            max(total_us - model_latency_us, 0.0),
            len(variant.instances),
        )

    @property
    def server_ready(self) -> bool:
        """True once a routing table has been applied."""
        return self.router.has_table

    def model_ready(self, endpoint_name: str) -> bool:
        """True when the endpoint is in the table with at least one instance."""
        endpoint = self.router.state.endpoints.get(endpoint_name)
        return endpoint is not None and endpoint.routable

    async def model_metadata(self, endpoint_name: str, time_remaining: float | None = None):
        """The endpoint's first variant's model inputs and outputs, as ``ModelMetadataResponse``."""
        endpoint = self.router.endpoint(endpoint_name)
        response = pb.ModelMetadataResponse(name=endpoint_name, platform="mve-endpoint")
        if not endpoint.variants:
            return response
        variant = endpoint.variants[0]
        await self._specs(variant, self._timeout(time_remaining))
        for spec in variant.inputs:
            response.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        for spec in variant.outputs:
            response.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return response

    async def _specs(self, variant: VariantState, timeout: float) -> None:
        if not variant.inputs:
            variant.inputs, variant.outputs = await fetch_model_metadata(self.pool, variant, timeout)

    async def _single_input(self, variant: VariantState, timeout: float) -> TensorSpec:
        await self._specs(variant, timeout)
        if len(variant.inputs) != 1:
            names = ", ".join(s.name for s in variant.inputs)
            raise ValidationError(
                f"InvokeEndpoint feeds one input, but model {variant.model_name} of variant {variant.name} "
                f"has {len(variant.inputs)} ({names}); send it with ModelInfer instead"
            )
        return variant.inputs[0]


def _string_param(parameters, name: str) -> str:
    value = parameters.get(name)
    if value is None:
        return ""
    if value.WhichOneof("parameter_choice") != "string_param":
        raise ValidationError(f"request parameter {name} must be a string_param")
    return value.string_param


def _to_raw_contents(request) -> None:
    """Move typed input contents to raw_input_contents in place (raw bytes are forwarded as they are)."""
    raw_count = len(request.raw_input_contents)
    if raw_count:
        if raw_count != len(request.inputs):
            raise ValidationError(
                f"{raw_count} raw_input_contents for {len(request.inputs)} inputs; send one per input"
            )
        if any(tensor.HasField("contents") for tensor in request.inputs):
            raise ValidationError("send every input either in raw_input_contents or as typed contents, not both")
        return
    raw = []
    for tensor in request.inputs:
        array = tensors.contents_to_numpy(tensor.contents, tensor.datatype, tensor.shape, tensor.name)
        raw.append(tensors.numpy_to_raw(array))
        tensor.ClearField("contents")
    request.raw_input_contents.extend(raw)


__all__ = ["DataPlane", "InvokeRequest", "InvokeResult", "check_name"]
