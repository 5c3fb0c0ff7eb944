"""UpdateEndpoint's DeploymentConfig both ways: boto3's dict to the proto, and the proto to the dict.

The request side keeps optional members unset where the caller left them out (the server applies
SageMaker's defaults); the response side leaves out what is unset, as boto3 does.
"""

from __future__ import annotations

from mve._proto import control_pb2 as pb


def is_set(message, field: str) -> bool:
    """A sub-message that is present and not empty (an empty one reads as absent, as boto3 omits it)."""
    return message.HasField(field) and getattr(message, field).ByteSize() > 0


def _capacity(spec: dict) -> pb.CapacitySize:
    return pb.CapacitySize(type=spec["Type"], value=spec["Value"])


def deployment_config_from_dict(spec: dict) -> pb.DeploymentConfig:
    """A boto3 DeploymentConfig dict as the proto; optional members the caller left out stay unset."""
    config = pb.DeploymentConfig()
    if "BlueGreenUpdatePolicy" in spec:
        policy, out = spec["BlueGreenUpdatePolicy"], config.blue_green_update_policy
        routing = policy["TrafficRoutingConfiguration"]
        out.traffic_routing_configuration.type = routing["Type"]
        out.traffic_routing_configuration.wait_interval_in_seconds = routing["WaitIntervalInSeconds"]
        for key, field in (("CanarySize", "canary_size"), ("LinearStepSize", "linear_step_size")):
            if key in routing:
                getattr(out.traffic_routing_configuration, field).CopyFrom(_capacity(routing[key]))
        out.termination_wait_in_seconds = policy.get("TerminationWaitInSeconds", 0)
        if "MaximumExecutionTimeoutInSeconds" in policy:
            out.maximum_execution_timeout_in_seconds = policy["MaximumExecutionTimeoutInSeconds"]
    if "RollingUpdatePolicy" in spec:
        policy, out = spec["RollingUpdatePolicy"], config.rolling_update_policy
        out.maximum_batch_size.CopyFrom(_capacity(policy["MaximumBatchSize"]))
        out.wait_interval_in_seconds = policy["WaitIntervalInSeconds"]
        if "MaximumExecutionTimeoutInSeconds" in policy:
            out.maximum_execution_timeout_in_seconds = policy["MaximumExecutionTimeoutInSeconds"]
        if "RollbackMaximumBatchSize" in policy:
            out.rollback_maximum_batch_size.CopyFrom(_capacity(policy["RollbackMaximumBatchSize"]))
    if "AutoRollbackConfiguration" in spec:
        rollback = config.auto_rollback_configuration
        rollback.SetInParent()
        alarms = spec["AutoRollbackConfiguration"].get("Alarms", ())
        rollback.alarms.extend(pb.AlarmName(alarm_name=alarm.get("AlarmName", "")) for alarm in alarms)
    return config


def _capacity_out(size: pb.CapacitySize) -> dict:
    return {"Type": size.type, "Value": size.value}


def deployment_config_to_dict(config: pb.DeploymentConfig) -> dict:
    """A DeploymentConfig proto as boto3's dict (LastDeploymentConfig)."""
    out: dict = {}
    if is_set(config, "blue_green_update_policy"):
        policy = config.blue_green_update_policy
        routing = policy.traffic_routing_configuration
        traffic = {"Type": routing.type, "WaitIntervalInSeconds": routing.wait_interval_in_seconds}
        for key, field in (("CanarySize", "canary_size"), ("LinearStepSize", "linear_step_size")):
            if is_set(routing, field):
                traffic[key] = _capacity_out(getattr(routing, field))
        blue_green = {"TrafficRoutingConfiguration": traffic, "TerminationWaitInSeconds": policy.termination_wait_in_seconds}
        if policy.HasField("maximum_execution_timeout_in_seconds"):
            blue_green["MaximumExecutionTimeoutInSeconds"] = policy.maximum_execution_timeout_in_seconds
        out["BlueGreenUpdatePolicy"] = blue_green
    if is_set(config, "rolling_update_policy"):
        policy = config.rolling_update_policy
        rolling = {"MaximumBatchSize": _capacity_out(policy.maximum_batch_size),
                   "WaitIntervalInSeconds": policy.wait_interval_in_seconds}
        if policy.HasField("maximum_execution_timeout_in_seconds"):
            rolling["MaximumExecutionTimeoutInSeconds"] = policy.maximum_execution_timeout_in_seconds
        if is_set(policy, "rollback_maximum_batch_size"):
            rolling["RollbackMaximumBatchSize"] = _capacity_out(policy.rollback_maximum_batch_size)
        out["RollingUpdatePolicy"] = rolling
    if config.auto_rollback_configuration.alarms:
        out["AutoRollbackConfiguration"] = {
            "Alarms": [{"AlarmName": a.alarm_name} for a in config.auto_rollback_configuration.alarms]
        }
    return out


__all__ = ["deployment_config_from_dict", "deployment_config_to_dict", "is_set"]
