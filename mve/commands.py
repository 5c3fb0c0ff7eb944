"""The SDK-backed CLI verbs: ``mve models|endpoint-configs|endpoints|endpoint ...`` and ``mve invoke``.

Each verb is one SDK call (plus a wait where asked). Output is a table by default and the
boto3-shaped response with ``--json``. Errors print ``Code: message`` on stderr with exit code 1
(2 for bad usage), never a traceback. Rendering lives in `mve.commands_output`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mve import commands_update

VARIANT_KEYS = {
    "name": "VariantName", "model": "ModelName", "instances": "InitialInstanceCount",
    "weight": "InitialVariantWeight", "instance-type": "InstanceType", "routing": "RoutingStrategy",
    "startup-timeout": "ContainerStartupHealthCheckTimeoutInSeconds", "max-batch-size": "MaxBatchSize",
    "max-delay-us": "MaxDelayMicroseconds", "max-batches-in-flight": "MaxBatchesInFlightPerInstance",
    "max-queue-rows": "MaxQueueRows",
}
BATCHING_KEYS = ("max-batch-size", "max-delay-us", "max-batches-in-flight", "max-queue-rows")
CONTENT_TYPES = {".csv": "text/csv", ".json": "application/json", ".npy": "application/x-npy"}


class UsageError(ValueError):
    """A flag value the CLI cannot turn into a request (exit code 2)."""


def _client(args, service: str):
    from mve.sdk import client

    address = args.control_plane if service == "sagemaker" else args.endpoint_address
    return client(service, address=address, **({"timeout": args.timeout} if args.timeout else {}))


def parse_variant(text: str, flag: str = "--variant") -> dict:
    """``name=V1,model=M,instances=1,weight=1,instance-type=ml.cpu.small`` -> a ProductionVariant dict.

    `flag` names the flag in errors (``--shadow-variant`` takes the same syntax).
    """
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in VARIANT_KEYS:
            raise UsageError(f"{flag} part {part!r} must be KEY=VALUE with KEY one of: {', '.join(VARIANT_KEYS)}")
        fields[key] = value
    missing = [k for k in ("name", "model") if k not in fields]
    if missing:
        raise UsageError(f"{flag} {text!r} needs {' and '.join(missing)}=...")
    variant: dict = {"VariantName": fields["name"], "ModelName": fields["model"],
                     "InitialInstanceCount": _number(fields.get("instances", "1"), int, "instances"),
                     "InstanceType": fields.get("instance-type", "ml.cpu.small"),
                     "InitialVariantWeight": _number(fields.get("weight", "1"), float, "weight")}
    if "routing" in fields:
        variant["RoutingConfig"] = {"RoutingStrategy": fields["routing"]}
    if "startup-timeout" in fields:
        variant["ContainerStartupHealthCheckTimeoutInSeconds"] = _number(fields["startup-timeout"], int, "startup-timeout")
    if any(key in fields for key in BATCHING_KEYS):
        variant["Batching"] = {"MaxBatchSize": _number(fields.get("max-batch-size", "1"), int, "max-batch-size"),
                               "MaxDelayMicroseconds": _number(fields.get("max-delay-us", "0"), int, "max-delay-us")}
        for key in BATCHING_KEYS[2:]:
            if key in fields:
                variant["Batching"][VARIANT_KEYS[key]] = _number(fields[key], int, key)
    return variant


def parse_assignments(pairs: list[str], kind, what: str) -> dict:
    """``["Variant1=25", "Variant2=75"]`` -> ``{"Variant1": 25.0, ...}`` with values of type `kind`."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"{pair!r} must be VARIANT={what.upper()}")
        out[name] = _number(value, kind, f"{what} of {name}")
    return out


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be in (0, 3600] seconds, got {value:g}")
    return value


def _number(text: str, kind, what: str):
    try:
        return kind(text)
    except ValueError:
        raise UsageError(f"{what} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def _wait(args, name: str) -> dict:
    """Poll describe_endpoint with a spinner until InService (0) or a failure status (WaiterError)."""
    from rich.console import Console

    from mve.sdk.exceptions import WaiterError

    sm = _client(args, "sagemaker")
    deadline = time.monotonic() + args.wait_timeout
    with Console(stderr=True).status(f"waiting for endpoint {name}") as spinner:
        while True:
            description = sm.describe_endpoint(EndpointName=name)
            status = description["EndpointStatus"]
            if status == "InService":
                return description
            if status in ("Failed", "UpdateRollbackFailed", "OutOfService"):
                raise WaiterError("EndpointInService", f"endpoint {name} is {status}: "
                                  f"{description.get('FailureReason', 'no FailureReason given')}", description)
            if time.monotonic() > deadline:
                raise WaiterError("EndpointInService", f"endpoint {name} still {status} after {args.wait_timeout:g} s",
                                  description)
            spinner.update(f"waiting for endpoint {name}: {status}")
            time.sleep(0.25)


# ---------------------------------------------------------------- actions


def _models(args) -> int:
    from mve import commands_output as out

    sm = _client(args, "sagemaker")
    if args.action == "list":
        return out.show_list(args, sm.list_models(**_list_params(args)), "Models")
    if args.action == "describe":
        return out.show(args, sm.describe_model(ModelName=args.name))
    if args.action == "create":
        url = args.model_data if "://" in args.model_data else str(Path(args.model_data).expanduser().resolve())
        return out.show(args, sm.create_model(ModelName=args.name, PrimaryContainer={"Image": args.image, "ModelDataUrl": url}))
    sm.delete_model(ModelName=args.name)
    return out.done(args, f"deleted model {args.name}")


def _configs(args) -> int:
    from mve import commands_output as out

    sm = _client(args, "sagemaker")
    if args.action == "list":
        return out.show_list(args, sm.list_endpoint_configs(**_list_params(args)), "EndpointConfigs")
    if args.action == "describe":
        return out.show(args, sm.describe_endpoint_config(EndpointConfigName=args.name))
    if args.action == "create":
        params = {"EndpointConfigName": args.name, "ProductionVariants": [parse_variant(text) for text in args.variant]}
        if args.shadow_variant:
            params["ShadowProductionVariants"] = [parse_variant(text, "--shadow-variant") for text in args.shadow_variant]
        if args.data_capture:
            from mve.commands_experiments_input import parse_data_capture

            params["DataCaptureConfig"] = parse_data_capture(args.data_capture)
        return out.show(args, sm.create_endpoint_config(**params))
    sm.delete_endpoint_config(EndpointConfigName=args.name)
    return out.done(args, f"deleted endpoint config {args.name}")


def _endpoints(args) -> int:
    from mve import commands_output as out

    sm = _client(args, "sagemaker")
    action = args.action
    if action == "list":
        return out.show_list(args, sm.list_endpoints(**_list_params(args)), "Endpoints")
    if action == "describe":
        description = sm.describe_endpoint(EndpointName=args.name)
        out.show(args, description)
        if not args.json:
            _show_scaling(args, description)
        return 0
    if action == "delete":
        sm.delete_endpoint(EndpointName=args.name)
        return out.done(args, f"deleting endpoint {args.name}")
    if action == "update":
        return commands_update.run(args, sm)
    if action == "create":
        response = sm.create_endpoint(EndpointName=args.name, EndpointConfigName=args.config)
    else:
        if action == "update-weights":
            desired = [{"VariantName": v, "DesiredWeight": w}
                       for v, w in parse_assignments(args.assignments, float, "weight").items()]
        else:
            desired = [{"VariantName": v, "DesiredInstanceCount": n}
                       for v, n in parse_assignments(args.assignments, int, "count").items()]
        response = sm.update_endpoint_weights_and_capacities(EndpointName=args.name, DesiredWeightsAndCapacities=desired)
    if args.wait:
        return out.show(args, _wait(args, args.name))
    return out.show(args, response)


def _show_scaling(args, description: dict) -> None:
    """Under a described endpoint: its variants' scalable targets and newest scaling activities, if any.

    Nothing is shown when the control plane has no autoscaling or the call fails (describe still works).
    """
    from mve import commands_output as out
    from mve.scaling_view import endpoint_scaling, print_endpoint_scaling
    from mve.sdk import client

    names = [v["VariantName"] for v in description.get("ProductionVariants", [])]
    aas = client("application-autoscaling", address=args.control_plane,
                 **({"timeout": args.timeout} if args.timeout else {}))
    with aas:
        print_endpoint_scaling(out.fresh_console(), endpoint_scaling(aas, args.name, names, activities=5), limit=5)


def _invoke(args) -> int:
    from mve import commands_output as out

    if args.file is not None:
        body = Path(args.file).read_bytes()
        content_type = args.content_type or CONTENT_TYPES.get(Path(args.file).suffix.lower(), "text/csv")
    else:
        body = args.body.encode()
        content_type = args.content_type or ("application/json" if args.body.lstrip()[:1] in "[{" else "text/csv")
    params = {"EndpointName": args.name, "Body": body, "ContentType": content_type}
    for key, value in (("Accept", args.accept), ("TargetVariant", args.target_variant),
                       ("InferenceId", args.inference_id), ("CustomAttributes", args.custom_attributes)):
        if value:
            params[key] = value
    return out.show_invocation(args, _client(args, "sagemaker-runtime").invoke_endpoint(**params))


def _list_params(args) -> dict:
    return {"NameContains": args.name_contains} if args.name_contains else {}


def _guarded(action):
    def run(args) -> int:
        from mve.sdk.exceptions import ClientError, EndpointConnectionError, ParamValidationError, SDKError

        try:
            return int(action(args) or 0)
        except ClientError as error:
            print(f"{error.response['Error']['Code']}: {error.response['Error']['Message']}", file=sys.stderr)
        except EndpointConnectionError as error:
            print(f"EndpointConnectionError: {error} (is `mve up` running? see --control-plane/--endpoint-address)",
                  file=sys.stderr)
        except (UsageError, ParamValidationError) as error:
            print(f"{type(error).__name__}: {error}", file=sys.stderr)
            return 2
        except (SDKError, OSError, ValueError) as error:
            print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1

    return run


# ---------------------------------------------------------------- parsers


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--control-plane", metavar="HOST:PORT", default=None,
                        help="control plane address (default $MVE_CONTROL_PLANE or 127.0.0.1:7070)")
    common.add_argument("--endpoint-address", metavar="HOST:PORT", default=None,
                        help="proxy address for invoke (default $MVE_ENDPOINT or 127.0.0.1:8080)")
    common.add_argument("--json", action="store_true", help="print the boto3-shaped response as JSON")
    common.add_argument("--timeout", type=_positive, default=None, help="deadline of each call in seconds (> 0)")
    return common


def _group(subparsers, name: str, aliases: list[str], help_text: str, func, common):
    parser = subparsers.add_parser(name, aliases=aliases, help=help_text, description=help_text)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def add(action: str, help_line: str, with_name: bool = True):
        sub = actions.add_parser(action, parents=[common], help=help_line, description=help_line)
        if with_name:
            sub.add_argument("name", metavar="NAME")
        sub.set_defaults(func=_guarded(func))
        return sub

    return add


def register(subparsers) -> None:
    """Add ``models``, ``endpoint-configs``, ``endpoint(s)`` and ``invoke``."""
    common = _common()

    add = _group(subparsers, "models", ["model"], "create, list, describe and delete models", _models, common)
    add("list", "list models", False).add_argument("--name-contains", default=None)
    add("describe", "describe a model")
    create = add("create", "create a model from an ONNX file")
    create.add_argument("--model-data", required=True, metavar="PATH", help="path or file:// URL of the .onnx artifact")
    create.add_argument("--image", default="onnxruntime", help="serving image (default onnxruntime)")
    add("delete", "delete a model")

    add = _group(subparsers, "endpoint-configs", ["endpoint-config"], "create, list, describe and delete endpoint configs",
                 _configs, common)
    add("list", "list endpoint configs", False).add_argument("--name-contains", default=None)
    add("describe", "describe an endpoint config")
    create = add("create", "create an endpoint config with one or more production variants")
    create.add_argument("--variant", action="append", required=True, metavar="SPEC",
                        help="name=V1,model=M[,instances=1,weight=1,instance-type=ml.cpu.small,routing=RANDOM,"
                             "startup-timeout=S,max-batch-size=N,max-delay-us=US,max-batches-in-flight=N,max-queue-rows=N]; "
                             "repeat per variant")
    create.add_argument("--shadow-variant", action="append", metavar="SPEC",
                        help="a shadow variant, same syntax as --variant: it gets a copy of a sampled part of the "
                             "traffic (its weight over the production weights) and its answers are never returned; "
                             "repeat per shadow")
    create.add_argument("--data-capture", metavar="SPEC",
                        help="dest=DIR[,sampling=100,modes=Input+Output,csv=text/csv,json=application/json,"
                             "enable=true]: capture sampled requests and responses as JSON Lines under DIR "
                             "(a local directory or file:// URI; csv= and json= may repeat)")
    add("delete", "delete an endpoint config")

    add = _group(subparsers, "endpoint", ["endpoints"], "create, list, describe, update and delete endpoints",
                 _endpoints, common)
    add("list", "list endpoints", False).add_argument("--name-contains", default=None)
    add("describe", "describe an endpoint and its variants")
    create = add("create", "create an endpoint from an endpoint config")
    create.add_argument("--config", required=True, help="endpoint config name")
    add("delete", "delete an endpoint")
    commands_update.add_arguments(add("update", "deploy another endpoint config (UpdateEndpoint), blue/green or rolling, "
                                                "with optional canary, baking and rollback alarms"))
    weights = add("update-weights", "set variant weights: VARIANT=WEIGHT ...")
    weights.add_argument("assignments", nargs="+", metavar="VARIANT=WEIGHT")
    capacity = add("update-capacity", "set variant instance counts: VARIANT=COUNT ...")
    capacity.add_argument("assignments", nargs="+", metavar="VARIANT=COUNT")
    for parser in (create, weights, capacity):
        parser.add_argument("--wait", action="store_true", help="wait until the endpoint is InService")
        parser.add_argument("--wait-timeout", type=_positive, default=300.0, help="seconds to wait (default 300)")

    invoke = subparsers.add_parser("invoke", parents=[common], help="invoke an endpoint (InvokeEndpoint)",
                                   description="Send one request to an endpoint through a proxy.")
    invoke.add_argument("name", metavar="ENDPOINT")
    body = invoke.add_mutually_exclusive_group(required=True)
    body.add_argument("--file", help="request body file (.csv, .json or .npy sets the content type)")
    body.add_argument("--body", help="request body text (JSON if it starts with [ or {, else CSV)")
    invoke.add_argument("--content-type", help="text/csv, application/json or application/x-npy")
    invoke.add_argument("--accept", help="response content type (default: the request's)")
    invoke.add_argument("--target-variant", help="send to this variant whatever its weight")
    invoke.add_argument("--inference-id", help="an id carried with the request (at most 64 characters)")
    invoke.add_argument("--custom-attributes", help="passed through to the response (at most 1024 characters)")
    invoke.set_defaults(func=_guarded(_invoke))
