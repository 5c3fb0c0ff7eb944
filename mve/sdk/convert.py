"""Conversion between boto3-shaped dicts and the mve.v1 protobuf messages.

Requests: validated parameter dicts (``ModelName=...``) become protobuf requests. Responses:
protobuf messages become plain dicts with boto3's keys, ``datetime`` objects for times, and
unset optional fields left out, as boto3 leaves them out.
"""

from __future__ import annotations

from datetime import datetime, timezone

from mve._proto import control_pb2 as pb
from mve.sdk.deployment_convert import deployment_config_from_dict, deployment_config_to_dict, is_set

# ---------------------------------------------------------------- requests


def _tags(params: dict) -> list:
    return [pb.Tag(key=tag["Key"], value=tag["Value"]) for tag in params.get("Tags", ())]


def _variant(spec: dict) -> pb.ProductionVariant:
    variant = pb.ProductionVariant(
        variant_name=spec["VariantName"],
        model_name=spec["ModelName"],
        initial_instance_count=spec.get("InitialInstanceCount", 0),
        instance_type=spec.get("InstanceType", ""),
        container_startup_health_check_timeout_in_seconds=spec.get(
            "ContainerStartupHealthCheckTimeoutInSeconds", 0
        ),
    )
    if "InitialVariantWeight" in spec:
        variant.initial_variant_weight = float(spec["InitialVariantWeight"])
    if "RoutingConfig" in spec:
        variant.routing_config.routing_strategy = spec["RoutingConfig"].get("RoutingStrategy", "")
    if "Batching" in spec:
        batching = spec["Batching"]
        variant.batching.max_batch_size = batching.get("MaxBatchSize", 0)
        variant.batching.max_delay_us = batching.get("MaxDelayMicroseconds", 0)
        variant.batching.max_batches_in_flight_per_instance = batching.get("MaxBatchesInFlightPerInstance", 0)
        variant.batching.max_queue_rows = batching.get("MaxQueueRows", 0)
    return variant


def _data_capture(spec: dict) -> pb.DataCaptureConfig:
    """boto3's DataCaptureConfig as the proto; EnableCapture defaults to true, as SageMaker's does."""
    modes: list[str] = []
    for option in spec.get("CaptureOptions", ()):
        mode = option["CaptureMode"]
        modes.extend(["Input", "Output"] if mode == "InputAndOutput" else [mode])
    header = spec.get("CaptureContentTypeHeader", {})
    return pb.DataCaptureConfig(
        enable_capture=spec.get("EnableCapture", True),
        initial_sampling_percentage=spec.get("InitialSamplingPercentage", 0),
        destination_s3_uri=spec.get("DestinationS3Uri", ""),
        capture_modes=modes,
        csv_content_types=header.get("CsvContentTypes", ()),
        json_content_types=header.get("JsonContentTypes", ()),
    )


def _list_request(cls, params: dict, **extra):
    return cls(
        name_contains=params.get("NameContains", ""),
        max_results=params.get("MaxResults", 0),
        next_token=params.get("NextToken", ""),
        sort_by=params.get("SortBy", ""),
        sort_order=params.get("SortOrder", ""),
        **extra,
    )


def _create_model(params: dict) -> pb.CreateModelRequest:
    container = params["PrimaryContainer"]
    return pb.CreateModelRequest(
        model_name=params["ModelName"],
        primary_container=pb.ContainerDefinition(
            image=container.get("Image", ""),
            model_data_url=container.get("ModelDataUrl", ""),
            environment=container.get("Environment", {}),
        ),
        tags=_tags(params),
    )


def _create_endpoint_config(params: dict) -> pb.CreateEndpointConfigRequest:
    request = pb.CreateEndpointConfigRequest(
        endpoint_config_name=params["EndpointConfigName"],
        production_variants=[_variant(v) for v in params["ProductionVariants"]],
        shadow_production_variants=[_variant(v) for v in params.get("ShadowProductionVariants", ())],
        tags=_tags(params),
    )
    if "DataCaptureConfig" in params:
        request.data_capture_config.CopyFrom(_data_capture(params["DataCaptureConfig"]))
    return request


def _desired(spec: dict) -> pb.DesiredWeightAndCapacity:
    desired = pb.DesiredWeightAndCapacity(variant_name=spec["VariantName"])
    if "DesiredWeight" in spec:
        desired.desired_weight = float(spec["DesiredWeight"])
    if "DesiredInstanceCount" in spec:
        desired.desired_instance_count = spec["DesiredInstanceCount"]
    return desired


def _update_endpoint(params: dict) -> pb.UpdateEndpointRequest:
    request = pb.UpdateEndpointRequest(
        endpoint_name=params["EndpointName"],
        endpoint_config_name=params["EndpointConfigName"],
        retain_all_variant_properties=params.get("RetainAllVariantProperties", False),
        exclude_retained_variant_properties=[
            pb.VariantPropertyType(variant_property_type=p["VariantPropertyType"])
            for p in params.get("ExcludeRetainedVariantProperties", ())
        ],
        retain_deployment_config=params.get("RetainDeploymentConfig", False),
    )
    if "DeploymentConfig" in params:
        request.deployment_config.SetInParent()  # sent even when empty: the caller passed one
        request.deployment_config.MergeFrom(deployment_config_from_dict(params["DeploymentConfig"]))
    return request


REQUEST_BUILDERS = {
    "CreateModel": _create_model,
    "DescribeModel": lambda p: pb.DescribeModelRequest(model_name=p["ModelName"]),
    "ListModels": lambda p: _list_request(pb.ListModelsRequest, p),
    "DeleteModel": lambda p: pb.DeleteModelRequest(model_name=p["ModelName"]),
    "CreateEndpointConfig": _create_endpoint_config,
    "DescribeEndpointConfig": lambda p: pb.DescribeEndpointConfigRequest(endpoint_config_name=p["EndpointConfigName"]),
    "ListEndpointConfigs": lambda p: _list_request(pb.ListEndpointConfigsRequest, p),
    "DeleteEndpointConfig": lambda p: pb.DeleteEndpointConfigRequest(endpoint_config_name=p["EndpointConfigName"]),
    "CreateEndpoint": lambda p: pb.CreateEndpointRequest(
        endpoint_name=p["EndpointName"], endpoint_config_name=p["EndpointConfigName"], tags=_tags(p)
    ),
    "DescribeEndpoint": lambda p: pb.DescribeEndpointRequest(endpoint_name=p["EndpointName"]),
    "ListEndpoints": lambda p: _list_request(pb.ListEndpointsRequest, p, status_equals=p.get("StatusEquals", "")),
    "UpdateEndpoint": _update_endpoint,
    "UpdateEndpointWeightsAndCapacities": lambda p: pb.UpdateEndpointWeightsAndCapacitiesRequest(
        endpoint_name=p["EndpointName"],
        desired_weights_and_capacities=[_desired(d) for d in p["DesiredWeightsAndCapacities"]],
    ),
    "DeleteEndpoint": lambda p: pb.DeleteEndpointRequest(endpoint_name=p["EndpointName"]),
}


def build_request(operation: str, params: dict):
    """The protobuf request of `operation` for already validated `params`."""
    return REQUEST_BUILDERS[operation](params)


# ---------------------------------------------------------------- responses


def _time(message, field: str) -> dict:
    if not message.HasField(field):
        return {}
    return {_pascal(field): getattr(message, field).ToDatetime(tzinfo=timezone.utc)}


def _pascal(field: str) -> str:
    return "".join(part.capitalize() for part in field.split("_"))


def _put(out: dict, key: str, value) -> None:
    if value not in ("", None) and value != [] and value != {}:
        out[key] = value


def _container(container: pb.ContainerDefinition) -> dict:
    out: dict = {}
    _put(out, "Image", container.image)
    _put(out, "ModelDataUrl", container.model_data_url)
    _put(out, "Environment", dict(container.environment))
    return out


def _tensor_specs(specs) -> list[dict]:
    return [{"Name": s.name, "DataType": s.datatype, "Shape": list(s.shape)} for s in specs]


def _variant_spec(variant: pb.ProductionVariant) -> dict:
    out = {"VariantName": variant.variant_name, "ModelName": variant.model_name}
    if variant.initial_instance_count:
        out["InitialInstanceCount"] = variant.initial_instance_count
    _put(out, "InstanceType", variant.instance_type)
    if variant.HasField("initial_variant_weight"):
        out["InitialVariantWeight"] = variant.initial_variant_weight
    if variant.routing_config.routing_strategy:
        out["RoutingConfig"] = {"RoutingStrategy": variant.routing_config.routing_strategy}
    if variant.container_startup_health_check_timeout_in_seconds:
        out["ContainerStartupHealthCheckTimeoutInSeconds"] = variant.container_startup_health_check_timeout_in_seconds
    if variant.batching.max_batch_size:
        batching = {"MaxBatchSize": variant.batching.max_batch_size, "MaxDelayMicroseconds": variant.batching.max_delay_us}
        if variant.batching.max_batches_in_flight_per_instance:
            batching["MaxBatchesInFlightPerInstance"] = variant.batching.max_batches_in_flight_per_instance
        if variant.batching.max_queue_rows:
            batching["MaxQueueRows"] = variant.batching.max_queue_rows
        out["Batching"] = batching
    return out


def _variant_summary(summary: pb.ProductionVariantSummary) -> dict:
    out = {
        "VariantName": summary.variant_name,
        "CurrentWeight": summary.current_weight,
        "DesiredWeight": summary.desired_weight,
        "CurrentInstanceCount": summary.current_instance_count,
        "DesiredInstanceCount": summary.desired_instance_count,
    }
    if summary.deployed_images:
        out["DeployedImages"] = [
            {"SpecifiedImage": d.specified_image, "ResolvedImage": d.resolved_image, **_time(d, "resolution_time")}
            for d in summary.deployed_images
        ]
    if summary.variant_status:
        out["VariantStatus"] = [
            {"Status": s.status, **({"StatusMessage": s.status_message} if s.status_message else {}), **_time(s, "start_time")}
            for s in summary.variant_status
        ]
    return out


def _describe_model(r: pb.DescribeModelResponse) -> dict:
    out = {"ModelName": r.model_name, "ModelArn": r.model_arn, "PrimaryContainer": _container(r.primary_container)}
    out.update(_time(r, "creation_time"))
    # mve extensions: what the control plane stored and what the model declares.
    _put(out, "ArtifactSha256", r.artifact_sha256)
    if r.artifact_size_bytes:
        out["ArtifactSizeBytes"] = r.artifact_size_bytes
    _put(out, "Inputs", _tensor_specs(r.inputs))
    _put(out, "Outputs", _tensor_specs(r.outputs))
    return out


def _data_capture_dict(config: pb.DataCaptureConfig) -> dict:
    """The proto as boto3's DataCaptureConfig; no capture modes means both directions."""
    capture = {
        "EnableCapture": config.enable_capture,
        "InitialSamplingPercentage": config.initial_sampling_percentage,
        "DestinationS3Uri": config.destination_s3_uri,
        "CaptureOptions": [{"CaptureMode": m} for m in config.capture_modes or ("Input", "Output")],
    }
    if config.csv_content_types or config.json_content_types:
        capture["CaptureContentTypeHeader"] = {
            "CsvContentTypes": list(config.csv_content_types),
            "JsonContentTypes": list(config.json_content_types),
        }
    return capture


def _describe_endpoint_config(r: pb.DescribeEndpointConfigResponse) -> dict:
    out = {
        "EndpointConfigName": r.endpoint_config_name,
        "EndpointConfigArn": r.endpoint_config_arn,
        "ProductionVariants": [_variant_spec(v) for v in r.production_variants],
    }
    _put(out, "ShadowProductionVariants", [_variant_spec(v) for v in r.shadow_production_variants])
    if is_set(r, "data_capture_config"):
        out["DataCaptureConfig"] = _data_capture_dict(r.data_capture_config)
    out.update(_time(r, "creation_time"))
    return out


def _data_capture_summary(summary: pb.DataCaptureConfigSummary) -> dict:
    return {
        "EnableCapture": summary.enable_capture,
        "CaptureStatus": summary.capture_status,
        "CurrentSamplingPercentage": summary.current_sampling_percentage,
        "DestinationS3Uri": summary.destination_s3_uri,
    }


def _weight_change(change: pb.WeightChange) -> dict:
    out: dict = {}
    put_time(out, "Time", change, "time")
    out["Source"] = change.source
    out["Weights"] = [{"VariantName": w.variant_name, "Weight": w.weight} for w in change.weights]
    _put(out, "Reason", change.reason)
    return out


def _pending_deployment_summary(summary: pb.PendingDeploymentSummary) -> dict:
    out = {"EndpointConfigName": summary.endpoint_config_name}
    _put(out, "ProductionVariants", [_variant_summary(v) for v in summary.production_variants])
    out.update(_time(summary, "start_time"))
    return out


def _describe_endpoint(r: pb.DescribeEndpointResponse) -> dict:
    out = {
        "EndpointName": r.endpoint_name,
        "EndpointArn": r.endpoint_arn,
        "EndpointConfigName": r.endpoint_config_name,
        "ProductionVariants": [_variant_summary(v) for v in r.production_variants],
        "EndpointStatus": r.endpoint_status,
    }
    _put(out, "ShadowProductionVariants", [_variant_summary(v) for v in r.shadow_production_variants])
    _put(out, "FailureReason", r.failure_reason)
    out.update(_time(r, "creation_time"))
    out.update(_time(r, "last_modified_time"))
    if is_set(r, "last_deployment_config"):
        out["LastDeploymentConfig"] = deployment_config_to_dict(r.last_deployment_config)
    if is_set(r, "pending_deployment_summary"):
        out["PendingDeploymentSummary"] = _pending_deployment_summary(r.pending_deployment_summary)
    if is_set(r, "data_capture_config"):
        out["DataCaptureConfig"] = _data_capture_summary(r.data_capture_config)
    # mve's own: the weight changes a bandit policy made, newest first.
    _put(out, "AutomaticWeightChanges", [_weight_change(c) for c in r.automatic_weight_changes])
    return out


def _summaries(items, fields: dict[str, str], times: tuple[str, ...]) -> list[dict]:
    rows = []
    for item in items:
        row = {key: getattr(item, field) for key, field in fields.items()}
        for time_field in times:
            row.update(_time(item, time_field))
        rows.append(row)
    return rows


def with_token(out: dict, token: str) -> dict:
    """`out` with ``NextToken`` when there is a next page."""
    _put(out, "NextToken", token)
    return out


def put_time(out: dict, key: str, message, field: str) -> None:
    """``out[key]`` = the message's Timestamp `field` as an aware UTC datetime, when it is set."""
    if message.HasField(field):
        out[key] = getattr(message, field).ToDatetime(tzinfo=timezone.utc)


RESPONSE_CONVERTERS = {
    "CreateModel": lambda r: {"ModelArn": r.model_arn},
    "DescribeModel": _describe_model,
    "ListModels": lambda r: with_token(
        {"Models": _summaries(r.models, {"ModelName": "model_name", "ModelArn": "model_arn"}, ("creation_time",))},
        r.next_token,
    ),
    "DeleteModel": lambda r: {},
    "CreateEndpointConfig": lambda r: {"EndpointConfigArn": r.endpoint_config_arn},
    "DescribeEndpointConfig": _describe_endpoint_config,
    "ListEndpointConfigs": lambda r: with_token(
        {
            "EndpointConfigs": _summaries(
                r.endpoint_configs,
                {"EndpointConfigName": "endpoint_config_name", "EndpointConfigArn": "endpoint_config_arn"},
                ("creation_time",),
            )
        },
        r.next_token,
    ),
    "DeleteEndpointConfig": lambda r: {},
    "CreateEndpoint": lambda r: {"EndpointArn": r.endpoint_arn},
    "DescribeEndpoint": _describe_endpoint,
    "ListEndpoints": lambda r: with_token(
        {
            "Endpoints": _summaries(
                r.endpoints,
                {"EndpointName": "endpoint_name", "EndpointArn": "endpoint_arn", "EndpointStatus": "endpoint_status"},
                ("creation_time", "last_modified_time"),
            )
        },
        r.next_token,
    ),
    "UpdateEndpoint": lambda r: {"EndpointArn": r.endpoint_arn},
    "UpdateEndpointWeightsAndCapacities": lambda r: {"EndpointArn": r.endpoint_arn},
    "DeleteEndpoint": lambda r: {},
}


def convert_response(operation: str, response) -> dict:
    """The boto3-shaped dict of `operation`'s protobuf `response`."""
    return RESPONSE_CONVERTERS[operation](response)


def to_datetime(seconds: float) -> datetime:
    """A UTC datetime from epoch seconds (tests and fakes use it)."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


__all__ = ["build_request", "convert_response"]
