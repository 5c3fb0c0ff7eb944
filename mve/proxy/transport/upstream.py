"""Channels to model servers, and one ModelInfer call on a variant with its retry and error mapping.

`UpstreamPool` keeps one grpc.aio channel per instance address and reuses it across routing tables;
an address that leaves the table is closed with a grace period, so calls in flight finish first.
When the routing table says ``upstream_tls`` (the control plane launches model servers under mutual
TLS), channels are TLS ones, presenting the proxy's certificate; a change of mode replaces every
channel. A proxy without the certificate and CA to do so never falls back to plaintext: it logs an
ERROR per such table and answers ModelNotReadyException naming the missing flags. Given a
`NativeUpstream` (mve._h2client, docs/transport.md), plaintext ModelInfer calls go through it
instead, raising the same `grpc.aio.AioRpcError`s, so the retry and error mapping here are the same
(instances named by IP; one named by host name stays on grpc.aio, whose resolver does not block).

`infer_on_variant` is the seam a per-variant batcher slots into: it takes a ready
``ModelInferRequest`` for the variant's model and returns the model server's response. Given the
request as serialised bytes instead, it sends them as they are and returns the response's bytes
(the proxy's pass-through path: tensor bytes are never decoded or re-encoded).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import grpc

from mve._proto import grpc_predict_v2_pb2 as pb
from mve._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from mve.errors import ModelError, ModelNotReady, ValidationError, http_status_of_grpc_code
from mve.proxy.routing.router import Instance, TensorSpec, VariantState
from mve.tracing import outgoing_metadata

if TYPE_CHECKING:
    from mve.proxy.transport.native_upstream import NativeUpstream

log = logging.getLogger(__name__)

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

# A call cancelled this close to its deadline (or 10% of it) timed out: the caller's deadline and
# the call's own timer end together, and whichever fires first, the instance did not answer in time.
DEADLINE_SLACK_S = 0.05

# Large enough for a 6 MB body as a tensor plus outputs of similar size.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]

# Channels to model servers: no gRPC retries. `infer_on_variant` retries an UNAVAILABLE once itself,
# on another instance; gRPC's retry layer (on by default, transparent retries included) would keep
# a copy of every request sent for a retry that mostly goes to the same instance, and cost CPU on
# every call besides.
UPSTREAM_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.enable_retries", 0)]


NO_UPSTREAM_TLS = (
    "the routing table says model servers take mutual TLS (the control plane's --model-server-tls-cert), "
    "but this proxy has no certificate and CA to dial them with: start it with --tls-cert, --tls-key and --tls-ca"
)


class UpstreamPool:
    """One channel and ``GRPCInferenceService`` stub per model-server address.

    `tls_credentials` (the proxy's certificate and CA, `ProxySecurity.upstream_credentials`) dial
    model servers when the table says ``upstream_tls``; None when the proxy has none.

    `native` (a started `NativeUpstream`, mve._h2client): ModelInfer calls go through it instead of
    the grpc.aio channels while the table is plaintext; under ``upstream_tls`` they stay on grpc.aio.
    Its owner starts and closes it; the pool only retires its connections with the channels.
    """

    def __init__(
        self, close_grace_s: float = 60.0, *, max_in_flight: int = 0, max_in_flight_per_instance: int = 0,
        tls_credentials: grpc.ChannelCredentials | None = None, native: NativeUpstream | None = None,
    ):
        self.native = native
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tls_credentials = tls_credentials
        # The current table's mode, and why no channel can be opened under it (None: they can).
        self.upstream_tls = False
        self._refusal: str | None = None
        # Bounds on requests in flight (0: none): the whole proxy's and each instance's.
        self.max_in_flight = max_in_flight
        self.max_in_flight_per_instance = max_in_flight_per_instance
        self.in_flight = 0
        self._stubs: dict[str, pb_grpc.GRPCInferenceServiceStub] = {}
        self._raw: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self._close_grace_s = close_grace_s
        self._closing: set[asyncio.Task] = set()
        # True when the proxy traces: each call then carries the current span's W3C traceparent.
        self.tracing = False

    def sync(self, addresses: set[str], upstream_tls: bool = False) -> None:
        """Open channels for new addresses; close removed ones once their calls finish.

        `upstream_tls` is the table's: when it differs from the last table's, every channel is
        replaced by one of the new mode (those closed let their calls finish first).
        """
        if upstream_tls != self.upstream_tls:
            for address in list(self._channels):
                self._retire(address)
            self.upstream_tls = upstream_tls
            log.info("event=upstream_mode tls=%s", "on" if upstream_tls else "off")
        if upstream_tls and self._tls_credentials is None:
            self._refusal = NO_UPSTREAM_TLS
            log.error("event=upstream_tls_unavailable instances=%d reason=%r", len(addresses), NO_UPSTREAM_TLS)
            return
        self._refusal = None
        for address in addresses - self._channels.keys():
            self._open(address)
        for address in self._channels.keys() - addresses:
            self._retire(address)

    def _retire(self, address: str) -> None:
        """Close `address`'s channel once its calls finish (at most the grace period)."""
        channel = self._channels.pop(address)
        del self._stubs[address]
        del self._raw[address]
        if self.native is not None:
            self.native.close_address(address)
        task = asyncio.get_running_loop().create_task(channel.close(grace=self._close_grace_s))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        log.info("event=upstream_closing address=%s", address)

    def _open(self, address: str) -> None:
        if self._refusal is not None:
            raise ModelNotReady(f"The proxy cannot reach the model servers: {self._refusal}")
        if self.upstream_tls:
            channel = grpc.aio.secure_channel(address, self._tls_credentials, options=UPSTREAM_CHANNEL_OPTIONS)
        else:
            channel = grpc.aio.insecure_channel(address, options=UPSTREAM_CHANNEL_OPTIONS)
        self._channels[address] = channel
        self._stubs[address] = pb_grpc.GRPCInferenceServiceStub(channel)
        self._raw[address] = channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)

    def stub(self, address: str) -> pb_grpc.GRPCInferenceServiceStub:
        """The stub for `address`, opening a channel if the table has not synced it yet."""
        if address not in self._stubs:
            self._open(address)
        return self._stubs[address]

    def raw_model_infer(self, address: str) -> grpc.aio.UnaryUnaryMultiCallable:
        """ModelInfer on `address` taking and returning serialised bytes."""
        if address not in self._raw:
            self._open(address)
        return self._raw[address]

    @property
    def addresses(self) -> set[str]:
        """Addresses with an open channel."""
        return set(self._channels)

    async def close(self, grace: float | None = None) -> None:
        """Close every channel (waiting up to `grace` for calls in flight)."""
        channels = list(self._channels.values())
        self._channels.clear()
        self._stubs.clear()
        self._raw.clear()
        await asyncio.gather(*(c.close(grace=grace) for c in channels), *self._closing, return_exceptions=True)


@dataclass
class InferResult:
    """A model server's answer and where and how fast it came."""

    response: object  # inference.ModelInferResponse
    instance: Instance
    model_latency_us: float


async def infer_on_variant(pool: UpstreamPool, variant: VariantState, request, timeout: float) -> InferResult:
    """Send `request` to one instance of `variant`; on UNAVAILABLE retry once on another instance.

    An instance that answered UNAVAILABLE is passed over for a moment (`VariantState.eject`), so
    the requests after it do not each pay for a failed first try.

    Each call's outcome goes to the variant's outlier detector (`mve.proxy.routing.outliers`): an answer
    with its latency; a timeout, UNAVAILABLE or 5xx-class status as a failure; the caller's bad
    input, a 4xx-class status or a cancelled call as no verdict.

    The retry gets only what is left of `timeout` (the caller's deadline), never a fresh one.

    Errors come back as domain errors: INVALID_ARGUMENT from the model -> ValidationError with the
    model's message; an unreachable instance with no other to try -> ModelNotReady; any other
    failure -> ModelError carrying OriginalStatusCode (the HTTP status google.rpc.Code maps the model
    server's gRPC status to: INTERNAL 500, ...) and OriginalMessage.
    """
    if pool.max_in_flight and pool.in_flight >= pool.max_in_flight:
        raise ModelNotReady(
            f"The proxy has {pool.in_flight} requests in flight, its limit (--max-in-flight); retry later"
        )
    index, instance = variant.acquire(pool.max_in_flight_per_instance)
    pool.in_flight += 1
    first_started = time.perf_counter()
    try:
        return await _observed_call(pool, variant, index, instance, request, timeout)
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.UNAVAILABLE:
            raise _model_failure(variant, instance, error) from None
        first_error = error
    finally:
        variant.release(index)
        pool.in_flight -= 1
    if variant.eject(index):
        log.warning(
            "event=instance_skipped endpoint=%s variant=%s instance=%s address=%s reason=unavailable message=%r",
            variant.endpoint_name, variant.name, instance.instance_id, instance.address, first_error.details(),
        )
    other = variant.acquire_other(index)
    if other is None:
        raise ModelNotReady(
            f"Variant {variant.name} of endpoint {variant.endpoint_name} has no reachable instance: "
            f"{first_error.details()}"
        )
    index, instance = other
    left = timeout - (time.perf_counter() - first_started)
    if left <= 0:
        variant.outliers.settled(index)
        variant.release(index)
        raise ModelNotReady(
            f"Variant {variant.name} of endpoint {variant.endpoint_name}: instance {instance.instance_id} was "
            f"unreachable and no time was left of the deadline to try another"
        )
    try:
        return await _observed_call(pool, variant, index, instance, request, left)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            variant.eject(index)
            raise ModelNotReady(
                f"Variant {variant.name} of endpoint {variant.endpoint_name} has no reachable instance: "
                f"{error.details()}"
            ) from None
        raise _model_failure(variant, instance, error) from None
    finally:
        variant.release(index)


async def _observed_call(
    pool: UpstreamPool, variant: VariantState, index: int, instance: Instance, request, timeout: float
) -> InferResult:
    """`_call`, with its outcome and latency told to the variant's outlier detector."""
    outliers = variant.outliers
    started = time.perf_counter()
    try:
        response = await _call(pool, instance, request, timeout)
    except grpc.aio.AioRpcError as error:
        # 5xx-class (INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, ...): the instance failed. 4xx-class
        # (the caller's INVALID_ARGUMENT, CANCELLED, ...): no verdict on it.
        if http_status_of_grpc_code(error.code()) >= 500:
            outliers.failed(index)
        else:
            outliers.settled(index)
        raise
    except asyncio.CancelledError:
        # Cancelled at the caller's deadline (the server noticed it before the call's own timer):
        # the instance timed out all the same. Cancelled earlier: the caller left, no verdict.
        waited = time.perf_counter() - started
        if waited >= timeout - min(DEADLINE_SLACK_S, 0.1 * timeout):
            outliers.failed(index)
        else:
            outliers.settled(index)
        raise
    except BaseException:  # the channel closed under the call (a table removed the instance)
        outliers.settled(index)
        raise
    latency_us = (time.perf_counter() - started) * 1e6
    outliers.succeeded(index, latency_us)
    return InferResult(response, instance, latency_us)


async def _call(pool: UpstreamPool, instance: Instance, request, timeout: float):
    # Tracing on: the current call's W3C traceparent goes along (its span, or its unsampled context).
    metadata = outgoing_metadata() if pool.tracing else None
    native = getattr(pool, "native", None)  # a pool-like stand-in (tests' fakes) may have none
    if native is not None and not pool.upstream_tls and numeric_host(instance.address):
        if isinstance(request, bytes):
            return await native.unary(instance.address, request, timeout, metadata)
        reply = await native.unary(instance.address, request.SerializeToString(), timeout, metadata)
        return pb.ModelInferResponse.FromString(reply)
    try:
        if isinstance(request, bytes):
            return await pool.raw_model_infer(instance.address)(request, timeout=timeout, metadata=metadata)
        return await pool.stub(instance.address).ModelInfer(request, timeout=timeout, metadata=metadata)
    except grpc.aio.UsageError as error:  # the channel closed under us (a table just removed it)
        raise ModelNotReady(f"instance {instance.instance_id} was removed from the routing table") from error


@lru_cache(maxsize=4096)
def numeric_host(address: str) -> bool:
    """Whether `address` (``host:port``) names its host by IP: the native client resolves a name
    with a blocking getaddrinfo, so an instance named by host name stays on grpc.aio's resolver."""
    host = address.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _model_failure(variant: VariantState, instance: Instance, error: grpc.aio.AioRpcError) -> Exception:
    code = error.code()
    message = error.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ValidationError(message)
    log.warning(
        "event=model_error endpoint=%s variant=%s instance=%s code=%s message=%r",
        variant.endpoint_name, variant.name, instance.instance_id, code.name, message,
    )
    return ModelError.answered(http_status_of_grpc_code(code), message, model=variant.model_name, variant=variant.name)



async def fetch_model_metadata(pool: UpstreamPool, variant: VariantState, timeout: float):
    """(inputs, outputs) TensorSpecs of the variant's model, asked of one of its instances.

    Used only when the routing table did not carry them.
    """
    index, instance = variant.acquire()
    try:
        response = await pool.stub(instance.address).ModelMetadata(
            pb.ModelMetadataRequest(name=variant.model_name), timeout=timeout
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            raise ModelNotReady(f"Variant {variant.name} has no reachable instance: {error.details()}") from None
        raise _model_failure(variant, instance, error) from None
    finally:
        variant.outliers.settled(index)  # metadata says nothing of inference health; a probe slot reopens
        variant.release(index)

    def specs(items):
        return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in items)

    return specs(response.inputs), specs(response.outputs)
