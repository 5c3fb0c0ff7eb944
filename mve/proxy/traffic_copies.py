"""Copies of answered invocations: to the data capture writer and to shadow variants.

Once the caller's answer is ready, the data plane hands the invocation to `TrafficCopies`. It
samples it once for capture (InitialSamplingPercentage) and once per shadow (its fraction). A
captured invocation becomes a `CaptureRecord` of references for the writer thread; a sampled
shadow gets a task (`ShadowSender`) that sends it the same input, counts its result under the
shadow's name and, when the invocation was captured, captures the shadow's answer with the same
inference id under the shadow's variant. Nothing here awaits: the caller's coroutine goes on.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable

from mve import codecs
from mve._proto import grpc_predict_v2_pb2 as pb
from mve.errors import MveError
from mve.proxy.capture import MODEL_INFER_REQUEST_TYPE, MODEL_INFER_RESPONSE_TYPE, CapturePolicy, CaptureRecord
from mve.proxy.payloads import body_request, cast_body, response_outputs
from mve.proxy.routing.router import EndpointState, TensorSpec, VariantState
from mve.proxy.shadow import ShadowSender
from mve.proxy.stats import StatsBook
from mve.proxy.transport import wire


class TrafficCopies:
    """Samples answered invocations for data capture and for each shadow variant, and hands them on.

    `capture` takes `CaptureRecord`s (`CaptureWriter.submit`); `single_input(variant, timeout)`
    is the data plane's lookup of a variant's one input (asking an instance when the table has
    no specs).
    """

    def __init__(
        self, capture, shadows: ShadowSender, stats: StatsBook,
        single_input: Callable[[VariantState, float], Awaitable[TensorSpec]], *, timeout_s: float,
        seed: int | None = None, wall_clock: Callable[[], float] = time.time,
    ):
        self.capture = capture
        self.shadows = shadows
        self._stats = stats
        self._single_input = single_input
        self._timeout_s = timeout_s
        self._random = random.Random(seed).random
        self._wall_clock = wall_clock

    def sample_capture(self, endpoint: EndpointState) -> CapturePolicy | None:
        """The endpoint's capture policy when this invocation is sampled for capture, else None."""
        capture = endpoint.capture
        if capture is not None and self._random() < capture.fraction:
            return capture
        return None

    def after_invoke(
        self, endpoint: EndpointState, variant: VariantState, request, inference_id: str, infer, array,
        body: bytes, accept: str,
    ) -> None:
        """Capture an answered InvokeEndpoint (`request`) and copy it to the shadows, each as sampled.

        `infer` is the ``ModelInferRequest`` the variant ran, `array` the decoded body, `body` and
        `accept` the caller's answer and its content type.
        """
        capture = self.sample_capture(endpoint)
        if capture is not None:
            self.capture.submit(CaptureRecord(
                capture, endpoint.name, variant.name, inference_id, self._wall_clock(),
                request.body, request.content_type, body, accept,
            ))
        for shadow in endpoint.shadows:
            if self._random() < shadow.weight:
                self.shadows.submit(
                    shadow, self._shadow_invoke, shadow, request, inference_id, infer, array, accept, capture
                )

    def after_model_infer(
        self, endpoint: EndpointState, variant: VariantState, inference_id: str, capture: CapturePolicy | None,
        received: bytes, shadow_request, answer,
    ) -> None:
        """Capture an answered ModelInfer (`capture`: sampled already) and copy it to the shadows, each as sampled.

        `received` is the request as it came, `shadow_request` what shadows are sent (re-targeted
        to their model), `answer` the response's bytes, or a function that makes them.
        """
        if capture is not None:
            size = len(answer) if isinstance(answer, bytes) else len(received)
            self.capture.submit(CaptureRecord(
                capture, endpoint.name, variant.name, inference_id, self._wall_clock(),
                received, MODEL_INFER_REQUEST_TYPE, answer, MODEL_INFER_RESPONSE_TYPE, size,
            ))
        for shadow in endpoint.shadows:
            if self._random() < shadow.weight:
                self.shadows.submit(
                    shadow, self._shadow_model_infer, shadow, shadow_request, inference_id, received, capture
                )

    async def _shadow_invoke(
        self, shadow: VariantState, request, inference_id: str, infer, array, accept: str,
        capture: CapturePolicy | None,
    ) -> None:
        """An InvokeEndpoint's copy on a shadow: the same input (cast for the shadow's model if it differs)."""
        sent = infer.inputs[0]
        try:
            spec = await self._single_input(shadow, self._timeout_s)
            if (spec.name, spec.datatype) != (sent.name, sent.datatype):
                infer = body_request(
                    shadow.model_name, spec, cast_body(array, spec), inference_id, request.custom_attributes
                )
        except MveError as error:  # the shadow's model cannot take this body
            self._stats.record_error(shadow.endpoint_name, shadow.name, error, len(shadow.instances))
            return
        result = await self.shadows.call(shadow, infer, inference_id)
        if result is None or capture is None:
            return
        response = result.response

        def encoded_output() -> bytes:  # run by the capture writer's thread
            message = pb.ModelInferResponse.FromString(response) if isinstance(response, bytes) else response
            return codecs.encode(response_outputs(message, shadow), accept)

        size = len(response) if isinstance(response, bytes) else response.ByteSize()
        self.capture.submit(CaptureRecord(
            capture, shadow.endpoint_name, shadow.name, inference_id, self._wall_clock(),
            request.body, request.content_type, encoded_output, accept, size,
        ))

    async def _shadow_model_infer(
        self, shadow: VariantState, request, inference_id: str, received: bytes, capture: CapturePolicy | None
    ) -> None:
        """A ModelInfer's copy on a shadow; captured as the endpoint would have answered it."""
        result = await self.shadows.call(shadow, request, inference_id)
        if result is None or capture is None:
            return
        response = result.response
        tail = wire.response_tail(shadow.endpoint_name, shadow.name) + wire.id_field(inference_id)

        def answer() -> bytes:  # run by the capture writer's thread
            return (response if isinstance(response, bytes) else response.SerializeToString()) + tail

        size = len(response) if isinstance(response, bytes) else response.ByteSize()
        self.capture.submit(CaptureRecord(
            capture, shadow.endpoint_name, shadow.name, inference_id, self._wall_clock(),
            received, MODEL_INFER_REQUEST_TYPE, answer, MODEL_INFER_RESPONSE_TYPE, size,
        ))


__all__ = ["TrafficCopies"]
