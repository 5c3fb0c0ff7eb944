"""``mve autoscaling <verb>``: the AWS CLI's ``application-autoscaling`` verbs and flags.

Each verb is one SDK call on ``mve.client("application-autoscaling")``, following NextToken to the
end for the describe verbs (as the AWS CLI does) and printing the merged result: a table by
default, the boto3-shaped response with ``--json``. ``--service-namespace`` defaults to sagemaker
and ``--scalable-dimension`` to sagemaker:variant:DesiredInstanceCount; ``--endpoint EP --variant V``
stands for ``--resource-id endpoint/EP/variant/V``. Tables live in `mve.commands_autoscaling_output`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mve.commands import UsageError, _guarded, _positive
from mve.commands_metrics import int_at_least
from mve.scaling_view import DIMENSION, NAMESPACE, endpoint_prefix, resource_id

POLICY_TYPES = ("TargetTrackingScaling", "StepScaling")
PREDEFINED_METRICS = ("SageMakerVariantInvocationsPerInstance",)
SUSPENDED_KEYS = ("DynamicScalingInSuspended", "DynamicScalingOutSuspended", "ScheduledScalingSuspended")


def load_json(text: str, flag: str) -> dict:
    """A JSON object given inline or as ``file://PATH`` (the AWS CLI's way) -> dict."""
    if text.startswith("file://"):
        text = Path(text[len("file://"):]).expanduser().read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{flag} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object")
    return value


def parse_suspended_state(text: str) -> dict:
    """``--suspended-state``: JSON, or the AWS CLI shorthand ``DynamicScalingInSuspended=true,...``."""
    if text.lstrip().startswith("{") or text.startswith("file://"):
        return load_json(text, "--suspended-state")
    state: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in SUSPENDED_KEYS or value.lower() not in ("true", "false"):
            raise UsageError(f"--suspended-state part {part!r} must be KEY=true|false with KEY one of: "
                             f"{', '.join(SUSPENDED_KEYS)}")
        state[key] = value.lower() == "true"
    return state


def _given(**params) -> dict:
    return {key: value for key, value in params.items() if value is not None and value != []}


def target_of(args) -> str:
    """The one ResourceId a verb acts on: --resource-id, or --endpoint EP --variant V."""
    if args.resource_id and (args.endpoint or args.variant):
        raise UsageError("give --resource-id or --endpoint/--variant, not both")
    if args.resource_id:
        return args.resource_id
    if args.endpoint and args.variant:
        if len(args.variant) != 1:
            raise UsageError("give one --variant")
        return resource_id(args.endpoint, args.variant[0])
    raise UsageError("give --resource-id endpoint/EP/variant/V, or --endpoint EP --variant V")


def filters_of(args) -> tuple[list[str], str | None]:
    """(ResourceIds to ask for, a ResourceId prefix to keep) of a describe verb.

    ``--endpoint EP`` alone keeps every variant of EP: the service is asked for the whole namespace
    and the answer filtered here, since its ResourceId filters are exact.
    """
    ids = list(getattr(args, "resource_ids", None) or ([args.resource_id] if getattr(args, "resource_id", None) else []))
    if ids and (args.endpoint or args.variant):
        raise UsageError("give --resource-id(s) or --endpoint/--variant, not both")
    if args.variant and not args.endpoint:
        raise UsageError("--variant needs --endpoint")
    if args.endpoint and args.variant:
        return [resource_id(args.endpoint, v) for v in args.variant], None
    if args.endpoint:
        return [], endpoint_prefix(args.endpoint)
    return ids, None


def scaling_policy_params(args) -> dict:
    """put-scaling-policy's PolicyType and configuration from the JSON flags or the shortcut flags."""
    tracking_json, step_json = args.target_tracking_scaling_policy_configuration, args.step_scaling_policy_configuration
    shortcut = {"--target-value": args.target_value, "--predefined-metric": args.predefined_metric,
                "--scale-in-cooldown": args.scale_in_cooldown, "--scale-out-cooldown": args.scale_out_cooldown,
                "--disable-scale-in": args.disable_scale_in or None}
    used = [flag for flag, value in shortcut.items() if value is not None]
    if used and (tracking_json or step_json):
        raise UsageError(f"{', '.join(used)} cannot be combined with a --*-scaling-policy-configuration")
    params: dict = {}
    if used:
        if args.target_value is None:
            raise UsageError(f"{', '.join(used)} need --target-value")
        config: dict = {"TargetValue": args.target_value, "PredefinedMetricSpecification": {
            "PredefinedMetricType": args.predefined_metric or PREDEFINED_METRICS[0]}}
        config.update(_given(ScaleOutCooldown=args.scale_out_cooldown, ScaleInCooldown=args.scale_in_cooldown))
        if args.disable_scale_in:
            config["DisableScaleIn"] = True
        params["TargetTrackingScalingPolicyConfiguration"] = config
    if tracking_json:
        params["TargetTrackingScalingPolicyConfiguration"] = load_json(
            tracking_json, "--target-tracking-scaling-policy-configuration")
    if step_json:
        params["StepScalingPolicyConfiguration"] = load_json(step_json, "--step-scaling-policy-configuration")
    if not params:
        raise UsageError("give --target-value N (target tracking), --target-tracking-scaling-policy-configuration "
                         "or --step-scaling-policy-configuration")
    policy_type = args.policy_type
    if policy_type is None:
        if len(params) > 1:
            raise UsageError("both configurations given: say which with --policy-type")
        policy_type = "StepScaling" if "StepScalingPolicyConfiguration" in params else "TargetTrackingScaling"
    return {"PolicyType": policy_type, **params}


def _all_pages(aas, method: str, params: dict, prefix: str | None) -> dict:
    from mve.commands_metrics import all_pages

    merged = all_pages(aas, method, params)
    if prefix is not None:
        for key, value in merged.items():
            if isinstance(value, list):
                merged[key] = [item for item in value if item.get("ResourceId", "").startswith(prefix)]
    return merged


# ---------------------------------------------------------------- actions


def _autoscaling(args) -> int:
    from mve import commands_autoscaling_output as out
    from mve.sdk import client

    aas = client("application-autoscaling", address=args.control_plane,
                 **({"timeout": args.timeout} if args.timeout else {}))
    namespace, verb = args.service_namespace, args.verb
    if verb in ("describe-scalable-targets", "describe-scaling-policies", "describe-scaling-activities"):
        ids, prefix = filters_of(args)
        # Application Auto Scaling takes a ScalableDimension filter only with a ResourceId.
        dimension = args.scalable_dimension or (DIMENSION if ids else None)
        if verb == "describe-scalable-targets":
            response = _all_pages(aas, "describe_scalable_targets", _given(
                ServiceNamespace=namespace, ResourceIds=ids, ScalableDimension=dimension,
                MaxResults=args.max_results), prefix)
            return out.show_targets(args, response)
        if len(ids) > 1:
            raise UsageError(f"{verb} takes one resource: give one --variant")
        single = ids[0] if ids else None
        if verb == "describe-scaling-policies":
            response = _all_pages(aas, "describe_scaling_policies", _given(
                ServiceNamespace=namespace, ResourceId=single, ScalableDimension=dimension,
                PolicyNames=args.policy_names, MaxResults=args.max_results), prefix)
            return out.show_policies(args, response)
        response = _all_pages(aas, "describe_scaling_activities", _given(
            ServiceNamespace=namespace, ResourceId=single, ScalableDimension=dimension,
            MaxResults=args.max_results), prefix)
        return out.show_activities(args, response)

    target = {"ServiceNamespace": namespace, "ResourceId": target_of(args),
              "ScalableDimension": args.scalable_dimension or DIMENSION}
    if verb == "register-scalable-target":
        response = aas.register_scalable_target(**target, **_given(
            MinCapacity=args.min_capacity, MaxCapacity=args.max_capacity, RoleARN=args.role_arn,
            SuspendedState=parse_suspended_state(args.suspended_state) if args.suspended_state else None))
        return out.show_registered(args, target["ResourceId"], response)
    if verb == "deregister-scalable-target":
        aas.deregister_scalable_target(**target)
        return out.done(args, f"deregistered {target['ResourceId']} (its scaling policies are deleted with it)")
    if verb == "put-scaling-policy":
        response = aas.put_scaling_policy(PolicyName=args.policy_name, **target, **scaling_policy_params(args))
        return out.show_put_policy(args, args.policy_name, response)
    aas.delete_scaling_policy(PolicyName=args.policy_name, **target)
    return out.done(args, f"deleted scaling policy {args.policy_name} of {target['ResourceId']}")


# ---------------------------------------------------------------- parsers


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--control-plane", metavar="HOST:PORT", default=None,
                        help="control plane address (default $MVE_CONTROL_PLANE or 127.0.0.1:7070)")
    common.add_argument("--json", action="store_true", help="print the boto3-shaped response as JSON")
    common.add_argument("--timeout", type=_positive, default=None, help="deadline of each call in seconds (> 0)")
    common.add_argument("--service-namespace", default=NAMESPACE, help=f"default {NAMESPACE}")
    common.add_argument("--scalable-dimension", default=None, help=f"default {DIMENSION}")
    common.add_argument("--endpoint", metavar="EP", help="with --variant: --resource-id endpoint/EP/variant/V")
    return common


def register(subparsers) -> None:
    """Add ``autoscaling`` (alias ``application-autoscaling``) and its seven verbs."""
    common = _common()
    group = subparsers.add_parser(
        "autoscaling", aliases=["application-autoscaling"],
        help="scalable targets, scaling policies and activities (Application Auto Scaling's API)",
        description="Application Auto Scaling's verbs against the control plane (mve.v1.ApplicationAutoScaling). "
                    f"A resource is --resource-id endpoint/EP/variant/V or --endpoint EP --variant V.")
    verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)

    def add(verb: str, help_line: str, *, single: bool):
        sub = verbs.add_parser(verb, parents=[common], help=help_line, description=help_line)
        sub.set_defaults(func=_guarded(_autoscaling))
        if single:
            sub.add_argument("--resource-id", metavar="ID", help="endpoint/EP/variant/V")
            sub.add_argument("--variant", nargs=1, metavar="V", help="with --endpoint")
        return sub

    def describe(verb: str, help_line: str, *, many_ids: bool = False):
        sub = verbs.add_parser(verb, parents=[common], help=help_line, description=help_line + ". --endpoint "
                               "alone: every variant of the endpoint.")
        sub.set_defaults(func=_guarded(_autoscaling))
        if many_ids:
            sub.add_argument("--resource-ids", nargs="+", metavar="ID", help="endpoint/EP/variant/V ...")
            sub.add_argument("--variant", nargs="+", metavar="V", help="with --endpoint; several allowed")
        else:
            sub.add_argument("--resource-id", metavar="ID", help="endpoint/EP/variant/V")
            sub.add_argument("--variant", nargs=1, metavar="V", help="with --endpoint")
        sub.add_argument("--max-results", type=int_at_least(1), help="items per page (all pages are read)")
        return sub

    register_target = add("register-scalable-target", "register or update a scalable target: a variant's "
                          "instance count range (RegisterScalableTarget)", single=True)
    register_target.add_argument("--min-capacity", type=int_at_least(0), help="required for a new target")
    register_target.add_argument("--max-capacity", type=int_at_least(0), help="required for a new target")
    register_target.add_argument("--suspended-state", metavar="JSON|SHORTHAND",
                                 help='{"DynamicScalingInSuspended": true, ...} or '
                                      "DynamicScalingInSuspended=true,DynamicScalingOutSuspended=false")
    register_target.add_argument("--role-arn", help="accepted by the flag for parity; the control plane refuses it")

    describe("describe-scalable-targets", "scalable targets (DescribeScalableTargets), all pages", many_ids=True)
    add("deregister-scalable-target", "deregister a scalable target and delete its policies "
        "(DeregisterScalableTarget)", single=True)

    put = add("put-scaling-policy", "create or replace a target tracking or step scaling policy (PutScalingPolicy)",
              single=True)
    put.add_argument("--policy-name", required=True)
    put.add_argument("--policy-type", choices=POLICY_TYPES, help="default: from the configuration given")
    put.add_argument("--target-tracking-scaling-policy-configuration", metavar="JSON",
                     help='JSON or file://PATH: {"TargetValue": 70, "PredefinedMetricSpecification": '
                          '{"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}, "ScaleInCooldown": 300, '
                          '"ScaleOutCooldown": 60}')
    put.add_argument("--step-scaling-policy-configuration", metavar="JSON",
                     help='JSON or file://PATH: {"AdjustmentType": "ChangeInCapacity", "StepAdjustments": '
                          '[{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}], "Cooldown": 60}')
    shortcut = put.add_argument_group("target tracking shortcut (instead of the JSON)")
    shortcut.add_argument("--target-value", type=float, help="e.g. 70 invocations per instance per minute")
    shortcut.add_argument("--predefined-metric", metavar="TYPE", help=f"default {PREDEFINED_METRICS[0]}")
    shortcut.add_argument("--scale-in-cooldown", type=int_at_least(0), metavar="S", help="seconds")
    shortcut.add_argument("--scale-out-cooldown", type=int_at_least(0), metavar="S", help="seconds")
    shortcut.add_argument("--disable-scale-in", action="store_true", help="only ever scale out")

    policies = describe("describe-scaling-policies", "scaling policies (DescribeScalingPolicies), all pages")
    policies.add_argument("--policy-names", nargs="+", metavar="NAME")

    delete = add("delete-scaling-policy", "delete a scaling policy (DeleteScalingPolicy)", single=True)
    delete.add_argument("--policy-name", required=True)

    describe("describe-scaling-activities", "scaling activities, newest first (DescribeScalingActivities), all pages")
