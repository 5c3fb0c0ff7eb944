"""The gRPC face of the control plane: ``mve.v1.EndpointControl``.

Each method converts the request to domain values, makes one `ControlService` call and converts
the result back. Errors are raised as `mve.errors` exceptions; `mve.errors.ErrorInterceptor`
turns them into gRPC status.
"""

from __future__ import annotations

import time

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from mve._proto import control_pb2 as pb
from mve._proto import control_pb2_grpc as pb_grpc
from mve.control.records import (
    DeploymentPhase,
    DeploymentRecord,
    Batching,
    EndpointConfigRecord,
    EndpointRecord,
    ModelRecord,
    TensorSpec,
    VariantSpec,
    VariantState,
    WeightChange,
)
from mve.control.service import ControlService, WeightAndCapacity
from mve.control.validation import validate_list_query, validate_variant
from mve.errors import ValidationError


def _ts(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _tags(tags) -> dict[str, str]:
    return {t.key: t.value for t in tags}


def _tensor_specs(specs: list[TensorSpec]) -> list[pb.TensorSpec]:
    return [pb.TensorSpec(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in specs]


def variant_from_proto(message: pb.ProductionVariant, service: ControlService) -> VariantSpec:
    """A validated VariantSpec (defaults filled in) from a ProductionVariant message."""
    raw = VariantSpec(
        variant_name=message.variant_name,
        model_name=message.model_name,
        initial_instance_count=message.initial_instance_count,
        instance_type=message.instance_type,
        initial_variant_weight=message.initial_variant_weight,
        routing_strategy=message.routing_config.routing_strategy,
        startup_health_check_timeout_s=message.container_startup_health_check_timeout_in_seconds,
        batching=Batching(
            message.batching.max_batch_size,
            message.batching.max_delay_us,
            message.batching.max_batches_in_flight_per_instance,
            message.batching.max_queue_rows,
        ),
    )
    return validate_variant(
        raw,
        service.limits,
        weight_given=message.HasField("initial_variant_weight"),
        instance_type_given=bool(message.instance_type),
        timeout_given=message.container_startup_health_check_timeout_in_seconds != 0,
        strategy_given=bool(message.routing_config.routing_strategy),
    )


def variant_to_proto(variant: VariantSpec) -> pb.ProductionVariant:
    """The ProductionVariant message of a stored variant."""
    return pb.ProductionVariant(
        variant_name=variant.variant_name,
        model_name=variant.model_name,
        initial_instance_count=variant.initial_instance_count,
        instance_type=variant.instance_type,
        initial_variant_weight=variant.initial_variant_weight,
        routing_config=pb.RoutingConfig(routing_strategy=variant.routing_strategy),
        container_startup_health_check_timeout_in_seconds=variant.startup_health_check_timeout_s,
        batching=pb.BatchingConfig(
            max_batch_size=variant.batching.max_batch_size,
            max_delay_us=variant.batching.max_delay_us,
            max_batches_in_flight_per_instance=variant.batching.max_batches_in_flight_per_instance,
            max_queue_rows=variant.batching.max_queue_rows,
        ),
    )


def describe_model_response(model: ModelRecord) -> pb.DescribeModelResponse:
    """DescribeModel's answer for a model."""
    return pb.DescribeModelResponse(
        model_name=model.name,
        model_arn=model.arn,
        primary_container=pb.ContainerDefinition(
            image=model.image, model_data_url=model.model_data_url, environment=model.environment
        ),
        creation_time=_ts(model.creation_time),
        artifact_sha256=model.artifact_sha256,
        artifact_size_bytes=model.artifact_size_bytes,
        inputs=_tensor_specs(model.inputs),
        outputs=_tensor_specs(model.outputs),
    )


def data_capture_from_proto(message: pb.CreateEndpointConfigRequest) -> dict | None:
    """The request's DataCaptureConfig as a dict with proto field names, or None when it has none."""
    if not message.HasField("data_capture_config"):
        return None
    return json_format.MessageToDict(message.data_capture_config, preserving_proto_field_name=True)


def describe_config_response(config: EndpointConfigRecord) -> pb.DescribeEndpointConfigResponse:
    """DescribeEndpointConfig's answer for a config."""
    response = pb.DescribeEndpointConfigResponse(
        endpoint_config_name=config.name,
        endpoint_config_arn=config.arn,
        production_variants=[variant_to_proto(v) for v in config.production_variants],
        shadow_production_variants=[variant_to_proto(v) for v in config.shadow_variants],
        creation_time=_ts(config.creation_time),
    )
    if config.data_capture:
        json_format.ParseDict(config.data_capture, response.data_capture_config)
    return response


def data_capture_summary(capture: dict) -> pb.DataCaptureConfigSummary:
    """DescribeEndpoint's DataCaptureConfigSummary of the capture an endpoint applies."""
    enabled = bool(capture.get("enable_capture", False))
    return pb.DataCaptureConfigSummary(
        enable_capture=enabled,
        capture_status="Started" if enabled else "Stopped",
        current_sampling_percentage=int(capture.get("initial_sampling_percentage", 0)),
        destination_s3_uri=capture.get("destination_s3_uri", ""),
    )


def weight_change_to_proto(change: WeightChange) -> pb.WeightChange:
    """One recorded weight change as DescribeEndpoint's WeightChange."""
    return pb.WeightChange(
        time=_ts(change.time),
        source=change.source,
        weights=[pb.VariantWeight(variant_name=name, weight=weight) for name, weight in change.weights.items()],
        reason=change.reason,
    )


def _variant_summary(
    endpoint: EndpointRecord, state: VariantState, counts: dict[str, int], images: dict[str, str]
) -> pb.ProductionVariantSummary:
    summary = pb.ProductionVariantSummary(
        variant_name=state.variant_name,
        current_weight=state.current_weight,
        desired_weight=state.desired_weight,
        current_instance_count=counts.get(state.variant_name, 0),
        desired_instance_count=state.desired_instance_count,
    )
    if state.status:
        summary.variant_status.append(
            pb.ProductionVariantStatus(
                status=state.status, status_message=state.status_message, start_time=_ts(state.status_since)
            )
        )
    image = images.get(state.variant_name, "")
    if image:
        summary.deployed_images.append(
            pb.DeployedImage(specified_image=image, resolved_image=image, resolution_time=_ts(endpoint.creation_time))
        )
    return summary


def describe_endpoint_response(
    endpoint: EndpointRecord,
    counts: dict[str, int],
    images: dict[str, str],
    data_capture: dict | None = None,
    automatic_changes: list[WeightChange] = (),
) -> pb.DescribeEndpointResponse:
    """DescribeEndpoint's answer: status, FailureReason, per-variant weights, counts and status
    (production and shadow variants apart), the data capture summary and the automatic weight changes."""
    response = pb.DescribeEndpointResponse(
        endpoint_name=endpoint.name,
        endpoint_arn=endpoint.arn,
        endpoint_config_name=endpoint.config_name,
        production_variants=[_variant_summary(endpoint, s, counts, images) for s in endpoint.production_variants],
        shadow_production_variants=[_variant_summary(endpoint, s, counts, images) for s in endpoint.shadow_variants],
        endpoint_status=endpoint.status,
        failure_reason=endpoint.failure_reason,
        creation_time=_ts(endpoint.creation_time),
        last_modified_time=_ts(endpoint.last_modified_time),
        automatic_weight_changes=[weight_change_to_proto(c) for c in automatic_changes],
    )
    if data_capture:
        response.data_capture_config.CopyFrom(data_capture_summary(data_capture))
    return response


def _size_dict(size) -> dict | None:
    return {"Type": size.type, "Value": size.value} if size.type or size.value else None


def deployment_config_dict(config: pb.DeploymentConfig) -> dict:
    """A DeploymentConfig message as SageMaker's dict (keys only for the fields that are set)."""
    out: dict = {}
    if config.HasField("blue_green_update_policy"):
        policy = config.blue_green_update_policy
        routing = policy.traffic_routing_configuration
        traffic: dict = {"Type": routing.type, "WaitIntervalInSeconds": routing.wait_interval_in_seconds}
        for key, size in (("CanarySize", routing.canary_size), ("LinearStepSize", routing.linear_step_size)):
            if _size_dict(size):
                traffic[key] = _size_dict(size)
        out["BlueGreenUpdatePolicy"] = {
            "TrafficRoutingConfiguration": traffic,
            "TerminationWaitInSeconds": policy.termination_wait_in_seconds,
        }
        if policy.HasField("maximum_execution_timeout_in_seconds"):
            out["BlueGreenUpdatePolicy"]["MaximumExecutionTimeoutInSeconds"] = policy.maximum_execution_timeout_in_seconds
    if config.HasField("rolling_update_policy"):
        policy = config.rolling_update_policy
        rolling: dict = {"WaitIntervalInSeconds": policy.wait_interval_in_seconds}
        for key, size in (("MaximumBatchSize", policy.maximum_batch_size), ("RollbackMaximumBatchSize", policy.rollback_maximum_batch_size)):
            if _size_dict(size):
                rolling[key] = _size_dict(size)
        if policy.HasField("maximum_execution_timeout_in_seconds"):
            rolling["MaximumExecutionTimeoutInSeconds"] = policy.maximum_execution_timeout_in_seconds
        out["RollingUpdatePolicy"] = rolling
    if config.HasField("auto_rollback_configuration"):
        out["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a.alarm_name} for a in config.auto_rollback_configuration.alarms]}
    return out


def deployment_config_message(config: dict) -> pb.DeploymentConfig:
    """SageMaker's DeploymentConfig dict back as the message."""
    message = pb.DeploymentConfig()
    blue_green = config.get("BlueGreenUpdatePolicy")
    if blue_green:
        policy = message.blue_green_update_policy
        routing = blue_green.get("TrafficRoutingConfiguration", {})
        policy.traffic_routing_configuration.type = routing.get("Type", "")
        policy.traffic_routing_configuration.wait_interval_in_seconds = routing.get("WaitIntervalInSeconds", 0)
        for key, field_name in (("CanarySize", "canary_size"), ("LinearStepSize", "linear_step_size")):
            if routing.get(key):
                getattr(policy.traffic_routing_configuration, field_name).CopyFrom(
                    pb.CapacitySize(type=routing[key]["Type"], value=routing[key]["Value"])
                )
        policy.termination_wait_in_seconds = blue_green.get("TerminationWaitInSeconds", 0)
        if "MaximumExecutionTimeoutInSeconds" in blue_green:
            policy.maximum_execution_timeout_in_seconds = blue_green["MaximumExecutionTimeoutInSeconds"]
    rolling = config.get("RollingUpdatePolicy")
    if rolling:
        policy = message.rolling_update_policy
        policy.wait_interval_in_seconds = rolling.get("WaitIntervalInSeconds", 0)
        for key, field_name in (("MaximumBatchSize", "maximum_batch_size"), ("RollbackMaximumBatchSize", "rollback_maximum_batch_size")):
            if rolling.get(key):
                getattr(policy, field_name).CopyFrom(pb.CapacitySize(type=rolling[key]["Type"], value=rolling[key]["Value"]))
        if "MaximumExecutionTimeoutInSeconds" in rolling:
            policy.maximum_execution_timeout_in_seconds = rolling["MaximumExecutionTimeoutInSeconds"]
    alarms = (config.get("AutoRollbackConfiguration") or {}).get("Alarms")
    if alarms:
        message.auto_rollback_configuration.alarms.extend(pb.AlarmName(alarm_name=a["AlarmName"]) for a in alarms)
    return message


def pending_summary(deployment: DeploymentRecord, counts: dict[str, int]) -> pb.PendingDeploymentSummary:
    """PendingDeploymentSummary: the new config and each green variant's progress."""
    # SageMaker's variant statuses: the old fleet's removal shows as Updating, green's as Deleting.
    shown = {DeploymentPhase.TERMINATING: "Updating", DeploymentPhase.ROLLING_BACK: "Deleting"}
    status = pb.ProductionVariantStatus(
        status=shown.get(deployment.phase, deployment.phase),
        status_message=deployment.message,
        start_time=_ts(deployment.phase_since),
    )
    return pb.PendingDeploymentSummary(
        endpoint_config_name=deployment.new_config,
        start_time=_ts(deployment.started_at),
        production_variants=[
            pb.ProductionVariantSummary(
                variant_name=g.variant_name,
                current_weight=g.weight * deployment.green_share,
                desired_weight=g.weight,
                current_instance_count=counts.get(g.variant_name, 0),
                desired_instance_count=g.instance_count,
                variant_status=[status],
            )
            for g in deployment.green
            if not g.shadow
        ],
    )


class EndpointControlServicer(pb_grpc.EndpointControlServicer):
    """``mve.v1.EndpointControl`` over a `ControlService`."""

    def __init__(self, service: ControlService):
        self._service = service

    # ------------------------------------------------------------ models

    async def CreateModel(self, request, context):
        container = request.primary_container
        model = await self._service.create_model(
            request.model_name,
            container.image,
            container.model_data_url,
            dict(container.environment),
            _tags(request.tags),
        )
        return pb.CreateModelResponse(model_arn=model.arn)

    async def DescribeModel(self, request, context):
        return describe_model_response(self._service.describe_model(request.model_name))

    async def ListModels(self, request, context):
        query = validate_list_query(
            request.name_contains, request.max_results, request.next_token, request.sort_by, request.sort_order
        )
        models, token = self._service.list_models(query)
        return pb.ListModelsResponse(
            models=[pb.ModelSummary(model_name=m.name, model_arn=m.arn, creation_time=_ts(m.creation_time)) for m in models],
            next_token=token,
        )

    async def DeleteModel(self, request, context):
        self._service.delete_model(request.model_name)
        return pb.DeleteModelResponse()

    # ------------------------------------------------------------ endpoint configs

    async def CreateEndpointConfig(self, request, context):
        variants = [variant_from_proto(v, self._service) for v in request.production_variants]
        shadows = [variant_from_proto(v, self._service) for v in request.shadow_production_variants]
        config = self._service.create_endpoint_config(
            request.endpoint_config_name, variants, data_capture_from_proto(request), _tags(request.tags), shadows
        )
        return pb.CreateEndpointConfigResponse(endpoint_config_arn=config.arn)

    async def DescribeEndpointConfig(self, request, context):
        return describe_config_response(self._service.describe_endpoint_config(request.endpoint_config_name))

    async def ListEndpointConfigs(self, request, context):
        query = validate_list_query(
            request.name_contains, request.max_results, request.next_token, request.sort_by, request.sort_order
        )
        configs, token = self._service.list_endpoint_configs(query)
        return pb.ListEndpointConfigsResponse(
            endpoint_configs=[
                pb.EndpointConfigSummary(
                    endpoint_config_name=c.name, endpoint_config_arn=c.arn, creation_time=_ts(c.creation_time)
                )
                for c in configs
            ],
            next_token=token,
        )

    async def DeleteEndpointConfig(self, request, context):
        self._service.delete_endpoint_config(request.endpoint_config_name)
        return pb.DeleteEndpointConfigResponse()

    # ------------------------------------------------------------ endpoints

    async def CreateEndpoint(self, request, context):
        endpoint = self._service.create_endpoint(request.endpoint_name, request.endpoint_config_name, _tags(request.tags))
        return pb.CreateEndpointResponse(endpoint_arn=endpoint.arn)

    async def DescribeEndpoint(self, request, context):
        endpoint, counts = self._service.describe_endpoint(request.endpoint_name)
        response = describe_endpoint_response(
            endpoint,
            counts,
            self._service.endpoint_images(endpoint),
            self._service.data_capture_of(endpoint),
            self._service.automatic_weight_changes(endpoint.name),
        )
        deployment = self._service.deployment_of(endpoint.name)
        if deployment is not None:
            green_counts = self._service.reconciler.current_instance_counts(endpoint.name, deployment.new_config)
            response.pending_deployment_summary.CopyFrom(pending_summary(deployment, green_counts))
            given = deployment.policy.get("given")
        else:
            given = self._service.last_deployment_config(endpoint.name)
        if given:
            response.last_deployment_config.CopyFrom(deployment_config_message(given))
        return response

    async def ListEndpoints(self, request, context):
        query = validate_list_query(
            request.name_contains,
            request.max_results,
            request.next_token,
            request.sort_by,
            request.sort_order,
            request.status_equals,
        )
        endpoints, token = self._service.list_endpoints(query)
        return pb.ListEndpointsResponse(
            endpoints=[
                pb.EndpointSummary(
                    endpoint_name=e.name,
                    endpoint_arn=e.arn,
                    creation_time=_ts(e.creation_time),
                    last_modified_time=_ts(e.last_modified_time),
                    endpoint_status=e.status,
                )
                for e in endpoints
            ],
            next_token=token,
        )

    async def UpdateEndpoint(self, request, context):
        endpoint = self._service.update_endpoint(
            request.endpoint_name,
            request.endpoint_config_name,
            deployment_config=deployment_config_dict(request.deployment_config)
            if request.HasField("deployment_config")
            else None,
            retain_all_variant_properties=request.retain_all_variant_properties,
            exclude_retained=[p.variant_property_type for p in request.exclude_retained_variant_properties],
            retain_deployment_config=request.retain_deployment_config,
        )
        return pb.UpdateEndpointResponse(endpoint_arn=endpoint.arn)

    async def UpdateEndpointWeightsAndCapacities(self, request, context):
        changes = [
            WeightAndCapacity(
                variant_name=c.variant_name,
                desired_weight=c.desired_weight if c.HasField("desired_weight") else None,
                desired_instance_count=c.desired_instance_count if c.HasField("desired_instance_count") else None,
            )
            for c in request.desired_weights_and_capacities
        ]
        endpoint = self._service.update_weights_and_capacities(request.endpoint_name, changes)
        return pb.UpdateEndpointWeightsAndCapacitiesResponse(endpoint_arn=endpoint.arn)

    async def DeleteEndpoint(self, request, context):
        self._service.delete_endpoint(request.endpoint_name)
        return pb.DeleteEndpointResponse()

    # ------------------------------------------------------------ proxies

    async def WatchRoutes(self, request, context):
        async for table in self._service.routes.subscribe():
            yield table

    async def ReportStats(self, request, context):
        interval_end = _interval_end(request)
        self._service.report_stats(
            request.proxy_id, request.incarnation, request.sequence, interval_end, request.variants
        )
        return pb.ReportStatsResponse()


# A proxy's report is about the last second: an interval end further from now is a broken clock or a
# broken message, and would write points where no query looks.
REPORT_CLOCK_SKEW_S = 86_400


def _interval_end(request) -> float:
    """ReportStats' interval_end in seconds (now when absent); ValidationError when not within a day of now."""
    now = time.time()
    if not request.HasField("interval_end"):
        return now
    stamp = request.interval_end
    seconds = stamp.seconds + stamp.nanos / 1e9
    if not 0 <= stamp.nanos < 1_000_000_000 or abs(seconds - now) > REPORT_CLOCK_SKEW_S:
        raise ValidationError(
            f"ReportStats interval_end ({stamp.seconds}s {stamp.nanos}ns) must be a valid time within a day of now"
        )
    return seconds
