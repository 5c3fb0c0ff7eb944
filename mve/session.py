"""A small SageMaker-Python-SDK-shaped layer over the SDK clients.

    from mve.session import Session, Predictor, production_variant

    session = Session(address="127.0.0.1:7070", runtime_address="127.0.0.1:8080")
    session.create_model("weak", container_defs={"Image": "onnxruntime", "ModelDataUrl": "/m/weak.onnx"})
    session.create_model("strong", container_defs={"Image": "onnxruntime", "ModelDataUrl": "/m/strong.onnx"})
    session.endpoint_from_production_variants(
        "cancer", [production_variant("weak", variant_name="Variant1"),
                   production_variant("strong", variant_name="Variant2")])
    Predictor("cancer", sagemaker_session=session).predict(rows, target_variant="Variant2")
"""

from __future__ import annotations

import io
import json

import numpy as np

from mve.sdk import client as make_client

NPY = "application/x-npy"
JSON = "application/json"
CSV = "text/csv"


def production_variant(
    model_name: str,
    instance_type: str = "ml.cpu.small",
    initial_instance_count: int = 1,
    variant_name: str | None = None,
    initial_weight: float = 1,
    routing_config: dict | None = None,
    container_startup_health_check_timeout: int | None = None,
    batching: dict | None = None,
) -> dict:
    """The ProductionVariant dict a CreateEndpointConfig takes, as ``sagemaker.session.production_variant``.

    `variant_name` defaults to "AllTraffic" (the SageMaker SDK's default). `batching` is the mve
    extension ``{"MaxBatchSize": n, "MaxDelayMicroseconds": us}``.
    """
    variant = {
        "ModelName": model_name,
        "InstanceType": instance_type,
        "InitialInstanceCount": initial_instance_count,
        "VariantName": variant_name or "AllTraffic",
        "InitialVariantWeight": initial_weight,
    }
    if routing_config is not None:
        variant["RoutingConfig"] = dict(routing_config)
    if container_startup_health_check_timeout is not None:
        variant["ContainerStartupHealthCheckTimeoutInSeconds"] = container_startup_health_check_timeout
    if batching is not None:
        variant["Batching"] = dict(batching)
    return variant


class Session:
    """The control plane and a proxy, with the SageMaker Python SDK's Session methods used for endpoints.

    `address` is the control plane, `runtime_address` a proxy (defaults as `mve.client`). Clients
    can be passed in instead (``sagemaker_client=``, ``sagemaker_runtime_client=``).
    """

    def __init__(
        self,
        address: str | None = None,
        runtime_address: str | None = None,
        *,
        sagemaker_client=None,
        sagemaker_runtime_client=None,
        poll_s: float = 0.5,
    ):
        self.sagemaker_client = sagemaker_client or make_client("sagemaker", address=address)
        self.sagemaker_runtime_client = sagemaker_runtime_client or make_client(
            "sagemaker-runtime", address=runtime_address
        )
        self.poll_s = poll_s

    def create_model(
        self, name: str, role: str | None = None, container_defs=None, primary_container: dict | None = None, tags=None
    ) -> str:
        """Create model `name` from `container_defs` (a dict, or a one-item list) and return its name.

        `role` is accepted for the SageMaker SDK's signature and ignored (mve has no IAM).
        """
        container = primary_container if primary_container is not None else container_defs
        if isinstance(container, (list, tuple)):
            if len(container) != 1:
                raise ValueError("mve models have exactly one container; pass one container definition")
            container = container[0]
        if not isinstance(container, dict):
            raise ValueError("container_defs must be a dict such as {'Image': 'onnxruntime', 'ModelDataUrl': PATH}")
        params = {"ModelName": name, "PrimaryContainer": dict(container)}
        if tags:
            params["Tags"] = list(tags)
        self.sagemaker_client.create_model(**params)
        return name

    def endpoint_from_production_variants(
        self,
        name: str,
        production_variants: list[dict],
        tags=None,
        wait: bool = True,
        data_capture_config_dict: dict | None = None,
        shadow_production_variants: list[dict] | None = None,
    ) -> str:
        """Create endpoint config `name` with `production_variants`, then endpoint `name`; wait if asked.

        `data_capture_config_dict` is boto3's DataCaptureConfig (what the SageMaker SDK's
        ``DataCaptureConfig._to_request_dict()`` gives; its DestinationS3Uri a local directory or
        file:// URI here). `shadow_production_variants` (mve's keyword; the SageMaker SDK has none)
        are ProductionVariant dicts, as `production_variant` makes them.
        """
        config = {"EndpointConfigName": name, "ProductionVariants": list(production_variants)}
        if tags:
            config["Tags"] = list(tags)
        if data_capture_config_dict is not None:
            config["DataCaptureConfig"] = dict(data_capture_config_dict)
        if shadow_production_variants:
            config["ShadowProductionVariants"] = list(shadow_production_variants)
        self.sagemaker_client.create_endpoint_config(**config)
        self.sagemaker_client.create_endpoint(EndpointName=name, EndpointConfigName=name)
        if wait:
            self.wait_for_endpoint(name)
        return name

    # The seed article's (singular) name for the same call.
    endpoint_from_production_variant = endpoint_from_production_variants

    def wait_for_endpoint(self, endpoint: str, poll: float | None = None, max_attempts: int = 240) -> dict:
        """Wait until `endpoint` is InService and return its description (WaiterError if it fails)."""
        self.sagemaker_client.get_waiter("endpoint_in_service").wait(
            EndpointName=endpoint, WaiterConfig={"Delay": poll if poll is not None else self.poll_s, "MaxAttempts": max_attempts}
        )
        return self.sagemaker_client.describe_endpoint(EndpointName=endpoint)

    def update_endpoint_weights(self, endpoint: str, weights: dict[str, float], wait: bool = True) -> None:
        """Set each variant's weight (``{"Variant1": 25, "Variant2": 75}``); wait for InService if asked."""
        self.sagemaker_client.update_endpoint_weights_and_capacities(
            EndpointName=endpoint,
            DesiredWeightsAndCapacities=[{"VariantName": v, "DesiredWeight": float(w)} for v, w in weights.items()],
        )
        if wait:
            self.wait_for_endpoint(endpoint)

    def delete_endpoint(self, endpoint_name: str) -> None:
        """Delete the endpoint (its config and models stay)."""
        self.sagemaker_client.delete_endpoint(EndpointName=endpoint_name)

    def delete_endpoint_config(self, endpoint_config_name: str) -> None:
        """Delete the endpoint config."""
        self.sagemaker_client.delete_endpoint_config(EndpointConfigName=endpoint_config_name)

    def delete_model(self, model_name: str) -> None:
        """Delete the model."""
        self.sagemaker_client.delete_model(ModelName=model_name)

    def close(self) -> None:
        """Close both clients' channels."""
        self.sagemaker_client.close()
        self.sagemaker_runtime_client.close()


def serialize(data, content_type: str | None = None) -> tuple[bytes, str]:
    """Body bytes and content type for `data`: numpy -> npy, dict/list -> JSON, str/bytes as given (CSV)."""
    if isinstance(data, np.ndarray):
        if content_type in (None, NPY):
            buffer = io.BytesIO()
            np.save(buffer, data, allow_pickle=False)
            return buffer.getvalue(), NPY
        if content_type == CSV:
            return _csv(data), CSV
        if content_type == JSON:
            return json.dumps(data.tolist()).encode(), JSON
        raise ValueError(f"cannot serialize a numpy array as {content_type!r}; use {NPY}, {JSON} or {CSV}")
    if isinstance(data, (dict, list)):
        return json.dumps(data).encode(), content_type or JSON
    if isinstance(data, str):
        return data.encode(), content_type or CSV
    if isinstance(data, (bytes, bytearray)):
        return bytes(data), content_type or NPY
    raise ValueError(f"cannot serialize {type(data).__name__}; pass a numpy array, dict, list, str or bytes")


def _csv(array: np.ndarray) -> bytes:
    rows = np.atleast_2d(array)
    return "\n".join(",".join(repr(x) for x in row.tolist()) for row in rows).encode()


def deserialize(body: bytes, content_type: str):
    """numpy for npy (a dict of arrays for npz) and CSV, parsed JSON for JSON, raw bytes otherwise."""
    kind = (content_type or "").split(";")[0].strip()
    if kind == NPY:
        loaded = np.load(io.BytesIO(body), allow_pickle=False)
        return dict(loaded) if isinstance(loaded, np.lib.npyio.NpzFile) else loaded
    if kind == JSON:
        return json.loads(body)
    if kind == CSV:
        text = body.decode()
        rows = [[_number(cell) for cell in line.split(",")] for line in text.splitlines() if line.strip()]
        return np.array(rows)
    return body


def _number(cell: str):
    try:
        return float(cell) if any(c in cell for c in ".eEn") else int(cell)
    except ValueError:
        return cell.strip()


class Predictor:
    """An endpoint, called with numpy in and numpy/JSON out (the SageMaker SDK's Predictor).

    ``Predictor(name, sagemaker_session=session)``; ``session=`` works as well. `content_type`
    and `accept` default to npy; the last response's variant is kept in ``last_invoked_variant``
    and its inference id (what feedback names) in ``last_inference_id``.
    """

    def __init__(self, endpoint_name: str, sagemaker_session: Session | None = None, *, session: Session | None = None,
                 content_type: str | None = None, accept: str | None = None):
        self.endpoint_name = endpoint_name
        self.session = sagemaker_session or session or Session()
        self.content_type = content_type
        self.accept = accept
        self.last_invoked_variant: str | None = None
        self.last_inference_id: str | None = None

    def predict(self, data, initial_args: dict | None = None, target_variant: str | None = None,
                inference_id: str | None = None, custom_attributes: str | None = None):
        """Invoke the endpoint with `data` and return the deserialized response body."""
        body, content_type = serialize(data, self.content_type)
        params = {"EndpointName": self.endpoint_name, "Body": body, "ContentType": content_type}
        params["Accept"] = self.accept or content_type
        for key, value in (("TargetVariant", target_variant), ("InferenceId", inference_id),
                           ("CustomAttributes", custom_attributes)):
            if value is not None:
                params[key] = value
        params.update(initial_args or {})
        response = self.session.sagemaker_runtime_client.invoke_endpoint(**params)
        self.last_invoked_variant = response.get("InvokedProductionVariant")
        self.last_inference_id = response.get("InferenceId")
        return deserialize(response["Body"].read(), response.get("ContentType", ""))

    def delete_endpoint(self, delete_endpoint_config: bool = True) -> None:
        """Delete the endpoint and (by default) the config of the same name."""
        self.session.delete_endpoint(self.endpoint_name)
        if delete_endpoint_config:
            self.session.delete_endpoint_config(self.endpoint_name)
