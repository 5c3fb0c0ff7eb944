"""``mve endpoint update``: UpdateEndpoint with deployment guardrails, and waiting for its outcome.

The flags map onto boto3's parameters one to one (`update_params`): ``--canary``, ``--linear`` and
``--rolling`` pick the policy, ``--bake`` is its WaitIntervalInSeconds, ``--rollback-alarm`` its
AutoRollbackConfiguration. ``--wait`` follows the update until the endpoint settles and exits 1
when it rolled back or failed.
"""

from __future__ import annotations

import argparse
import time

VARIANT_PROPERTIES = ("DesiredInstanceCount", "DesiredWeight", "DataCaptureConfig")
SETTLED = ("InService", "Failed", "UpdateRollbackFailed", "OutOfService")
POLL_INTERVAL_S = 0.25


def capacity_size(text: str) -> dict:
    """``10%`` -> CAPACITY_PERCENT 10, ``2`` -> INSTANCE_COUNT 2 (an argparse type)."""
    percent = text.strip().endswith("%")
    digits = text.strip().rstrip("%").strip()
    try:
        value = int(digits)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an instance count (2) or a percentage of the new fleet (10%), got {text!r}") from None
    if value < 1 or (percent and value > 100):
        raise argparse.ArgumentTypeError(f"must be at least 1{' and at most 100%' if percent else ''}, got {text!r}")
    return {"Type": "CAPACITY_PERCENT" if percent else "INSTANCE_COUNT", "Value": value}


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {value}")
    return value


def _wait_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {value:g}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``mve endpoint update NAME``."""
    parser.add_argument("--config", required=True, help="the endpoint config to deploy (EndpointConfigName)")
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument("--canary", type=capacity_size, metavar="SIZE",
                        help="blue/green CANARY: shift SIZE (10%% of the new fleet, or 2 instances) first, bake, "
                             "then the rest")
    policy.add_argument("--linear", type=capacity_size, metavar="STEP",
                        help="blue/green LINEAR: shift traffic in steps of STEP (25%% or 1 instance), baking after each")
    policy.add_argument("--rolling", type=capacity_size, metavar="BATCH",
                        help="rolling update: replace capacity in batches of BATCH (1 or 50%%)")
    parser.add_argument("--bake", type=_seconds, metavar="SECONDS",
                        help="WaitIntervalInSeconds: baking after each traffic shift or batch (default 0)")
    parser.add_argument("--termination-wait", type=_seconds, metavar="SECONDS",
                        help="blue/green: keep the old fleet this long after the last baking (default 0)")
    parser.add_argument("--max-time", type=_seconds, metavar="SECONDS",
                        help="MaximumExecutionTimeoutInSeconds (600-28800); past it the update rolls back")
    parser.add_argument("--rollback-batch", type=capacity_size, metavar="BATCH",
                        help="with --rolling: RollbackMaximumBatchSize (default: all at once)")
    parser.add_argument("--rollback-alarm", action="append", metavar="ALARM", default=[],
                        help="roll back when this alarm goes into ALARM during the update; repeat for up to 10")
    parser.add_argument("--retain-all-variant-properties", action="store_true",
                        help="keep the current variants' weights and instance counts (RetainAllVariantProperties)")
    parser.add_argument("--exclude-retained", action="append", metavar="PROPERTY", choices=VARIANT_PROPERTIES,
                        default=[], help=f"take this property from the new config after all; one of "
                                         f"{', '.join(VARIANT_PROPERTIES)}; repeatable")
    parser.add_argument("--retain-deployment-config", action="store_true",
                        help="reuse the endpoint's last DeploymentConfig (RetainDeploymentConfig)")
    parser.add_argument("--wait", action="store_true",
                        help="follow the update until the endpoint settles; exit 1 if it rolled back or failed")
    parser.add_argument("--wait-timeout", type=_wait_seconds, default=None, metavar="SECONDS",
                        help="seconds to wait (default: --max-time plus 300, else 3600)")


def deployment_config(args) -> dict | None:
    """The DeploymentConfig the flags ask for, or None where they ask for none."""
    from mve.commands import UsageError

    if args.rolling is not None:
        if args.termination_wait is not None:
            raise UsageError("--termination-wait is for blue/green updates; a rolling update has none")
        policy = {"MaximumBatchSize": args.rolling, "WaitIntervalInSeconds": args.bake or 0}
        if args.max_time is not None:
            policy["MaximumExecutionTimeoutInSeconds"] = args.max_time
        if args.rollback_batch is not None:
            policy["RollbackMaximumBatchSize"] = args.rollback_batch
        config: dict = {"RollingUpdatePolicy": policy}
    else:
        if args.rollback_batch is not None:
            raise UsageError("--rollback-batch needs --rolling")
        asked = (args.canary, args.linear, args.bake, args.termination_wait, args.max_time)
        if all(value is None for value in asked) and not args.rollback_alarm:
            return None
        kind = "CANARY" if args.canary else "LINEAR" if args.linear else "ALL_AT_ONCE"
        routing: dict = {"Type": kind, "WaitIntervalInSeconds": args.bake or 0}
        if args.canary:
            routing["CanarySize"] = args.canary
        if args.linear:
            routing["LinearStepSize"] = args.linear
        policy = {"TrafficRoutingConfiguration": routing}
        if args.termination_wait is not None:
            policy["TerminationWaitInSeconds"] = args.termination_wait
        if args.max_time is not None:
            policy["MaximumExecutionTimeoutInSeconds"] = args.max_time
        config = {"BlueGreenUpdatePolicy": policy}
    if args.rollback_alarm:
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": name} for name in args.rollback_alarm]}
    return config


def update_params(args) -> dict:
    """The keyword arguments of ``sm.update_endpoint`` for parsed ``mve endpoint update`` flags."""
    params: dict = {"EndpointName": args.name, "EndpointConfigName": args.config}
    if args.retain_all_variant_properties:
        params["RetainAllVariantProperties"] = True
    if args.exclude_retained:
        params["ExcludeRetainedVariantProperties"] = [{"VariantPropertyType": p} for p in args.exclude_retained]
    config = deployment_config(args)
    if config is not None:
        params["DeploymentConfig"] = config
    if args.retain_deployment_config:
        params["RetainDeploymentConfig"] = True
    return params


def run(args, sm) -> int:
    """UpdateEndpoint, then (with --wait) follow it to its end."""
    from mve import commands_output as out

    params = update_params(args)
    before = sm.describe_endpoint(EndpointName=args.name) if args.wait else None
    response = sm.update_endpoint(**params)
    if not args.wait:
        return out.show(args, response)
    return out.show(args, wait_for_update(sm, args.name, args.config, before, _timeout(args)))


def _timeout(args) -> float:
    if args.wait_timeout is not None:
        return args.wait_timeout
    return args.max_time + 300.0 if args.max_time else 3600.0


def _moved(before: dict, now: dict, config: str) -> bool:
    """Whether `now` shows this update at all (so that a settled status is its end, not the start)."""
    return (now["EndpointStatus"] != "InService" or now.get("EndpointConfigName") == config
            or any(now.get(key) != before.get(key) for key in ("LastModifiedTime", "FailureReason")))


def wait_for_update(sm, name: str, config: str, before: dict, timeout: float, sleep=time.sleep) -> dict:
    """Poll describe_endpoint, showing the pending deployment, until the update to `config` settles.

    Returns the description when the endpoint is InService on `config`; raises WaiterError when
    it rolled back (InService on another config, with its FailureReason), failed, or `timeout`
    seconds passed.
    """
    from rich.console import Console

    from mve.commands_output import progress_line
    from mve.sdk.exceptions import WaiterError

    deadline = time.monotonic() + timeout
    seen_update = False
    with Console(stderr=True).status(f"updating endpoint {name} to {config}") as spinner:
        while True:
            description = sm.describe_endpoint(EndpointName=name)
            status = description["EndpointStatus"]
            seen_update = seen_update or _moved(before, description, config)
            if seen_update and status in SETTLED:
                break
            if time.monotonic() > deadline:
                raise WaiterError("EndpointUpdated", f"endpoint {name} still {status} after {timeout:g} s "
                                  "(the update goes on; see mve endpoint describe)", description)
            spinner.update(f"updating endpoint {name} to {config}: {progress_line(description)}")
            sleep(POLL_INTERVAL_S)
    reason = description.get("FailureReason", "no FailureReason given")
    if status != "InService":
        raise WaiterError("EndpointUpdated", f"endpoint {name} is {status}: {reason}", description)
    if description.get("EndpointConfigName") != config:
        raise WaiterError("EndpointUpdated", f"endpoint {name} rolled back to {description.get('EndpointConfigName')}: "
                          f"{reason}", description)
    return description


__all__ = ["add_arguments", "capacity_size", "deployment_config", "run", "update_params", "wait_for_update"]
