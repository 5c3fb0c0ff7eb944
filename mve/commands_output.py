"""How the CLI verbs print: rich tables for people, boto3-shaped JSON (``--json``) for machines."""

from __future__ import annotations

import io
import json
import sys
from datetime import datetime

from rich.console import Console
from rich.table import Table

def plain(response: dict) -> dict:
    """A boto3-shaped response without its ResponseMetadata (what `--json` prints)."""
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


def fresh_console() -> Console:
    """A console made now, so that the terminal width (and $COLUMNS) is read when printing."""
    return Console()


def _default(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def print_json(data) -> None:
    """`data` as indented JSON on stdout (datetimes as ISO 8601)."""
    sys.stdout.write(json.dumps(data, indent=2, default=_default) + "\n")


def _cell(value) -> str:
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=_default)
    return str(value)


def _table(rows: list[dict], title: str | None = None) -> Table:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(row.get(column, "")) for column in columns))
    return table


def show(args, response: dict) -> int:
    """One resource: its scalar fields as a two-column table, each list of dicts as a table of its own.

    An endpoint's LastDeploymentConfig is one line of text, and its PendingDeploymentSummary a
    table of the new (green) variants with their statuses.
    """
    data = plain(response)
    if args.json:
        print_json(data)
        return 0
    fields = Table(show_header=False)
    fields.add_column("field", style="bold")
    fields.add_column("value")
    nested = []
    for key, value in data.items():
        if key == "LastDeploymentConfig":
            fields.add_row(key, deployment_text(value))
        elif key == "PendingDeploymentSummary":
            since = f" (since {_cell(value['StartTime'])})" if "StartTime" in value else ""
            fields.add_row(key, f"updating to {value.get('EndpointConfigName', '')}{since}")
            nested.append((f"PendingDeploymentSummary: {value.get('EndpointConfigName', '')}",
                           value.get("ProductionVariants", [])))
        elif key == "DataCaptureConfig":
            fields.add_row(key, capture_text(value))
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            nested.append((key, value))
        else:
            fields.add_row(key, _cell(value))
    fresh_console().print(fields)
    for key, rows in nested:
        # DeployedImages says little on a terminal (always onnxruntime); --json keeps it.
        flat = [{k: _nested_cell(k, v) for k, v in row.items() if k != "DeployedImages"} for row in rows]
        fresh_console().print(_table(flat, title=key))
    return 0


def _nested_cell(key: str, value):
    if key == "VariantStatus":
        return _status(value)
    if key == "Weights" and isinstance(value, list):  # AutomaticWeightChanges
        return ", ".join(f"{w.get('VariantName', '')} {w.get('Weight', 0):.3g}" for w in value)
    if key == "CaptureOptions" and isinstance(value, list):
        return "+".join(o.get("CaptureMode", "") for o in value)
    return value


def capture_text(config: dict) -> str:
    """A DataCaptureConfig (or DescribeEndpoint's summary) in one line, e.g.
    ``Started: 20% of invocations, Input+Output, to /var/capture``."""
    if "CaptureStatus" in config:
        state, sampling = config["CaptureStatus"], config.get("CurrentSamplingPercentage", 0)
    else:
        state, sampling = ("enabled" if config.get("EnableCapture") else "disabled"), config.get(
            "InitialSamplingPercentage", 0)
    modes = "+".join(o.get("CaptureMode", "") for o in config.get("CaptureOptions", []))
    return f"{state}: {sampling}% of invocations{', ' + modes if modes else ''}, to {config.get('DestinationS3Uri', '')}"


def _status(statuses) -> str:
    return ", ".join(s.get("Status", "") for s in statuses) if isinstance(statuses, list) else str(statuses)


def _size(size: dict) -> str:
    value = size.get("Value")
    return f"{value}%" if size.get("Type") == "CAPACITY_PERCENT" else f"{value} instance{'s' if value != 1 else ''}"


def deployment_text(config: dict) -> str:
    """A DeploymentConfig in one line, e.g. ``blue/green CANARY 10%, bake 60s; rollback alarms: ab-5xx``."""
    parts = []
    blue_green = config.get("BlueGreenUpdatePolicy")
    if blue_green:
        routing = blue_green.get("TrafficRoutingConfiguration", {})
        step = routing.get("CanarySize") or routing.get("LinearStepSize")
        text = f"blue/green {routing.get('Type', '')}{' ' + _size(step) if step else ''}"
        text += f", bake {routing.get('WaitIntervalInSeconds', 0)}s"
        text += f", termination wait {blue_green.get('TerminationWaitInSeconds', 0)}s"
        if "MaximumExecutionTimeoutInSeconds" in blue_green:
            text += f", at most {blue_green['MaximumExecutionTimeoutInSeconds']}s"
        parts.append(text)
    rolling = config.get("RollingUpdatePolicy")
    if rolling:
        text = f"rolling, batches of {_size(rolling.get('MaximumBatchSize', {}))}"
        text += f", bake {rolling.get('WaitIntervalInSeconds', 0)}s"
        if "RollbackMaximumBatchSize" in rolling:
            text += f", rollback batches of {_size(rolling['RollbackMaximumBatchSize'])}"
        if "MaximumExecutionTimeoutInSeconds" in rolling:
            text += f", at most {rolling['MaximumExecutionTimeoutInSeconds']}s"
        parts.append(text)
    alarms = config.get("AutoRollbackConfiguration", {}).get("Alarms", [])
    if alarms:
        parts.append("rollback alarms: " + ", ".join(a.get("AlarmName", "") for a in alarms))
    return "; ".join(parts) or "-"


def progress_line(description: dict) -> str:
    """An endpoint's status and, during an update, each new variant's status and instances."""
    line = description.get("EndpointStatus", "")
    pending = description.get("PendingDeploymentSummary")
    if pending:
        variants = [f"{v['VariantName']} {_status(v.get('VariantStatus', [])) or '-'} "
                    f"{v.get('CurrentInstanceCount', 0)}/{v.get('DesiredInstanceCount', 0)}"
                    for v in pending.get("ProductionVariants", [])]
        line += f"; new {pending.get('EndpointConfigName', '')}: " + ", ".join(variants)
    return line


def show_list(args, response: dict, key: str) -> int:
    """A list_* response: one table row per item."""
    data = plain(response)
    if args.json:
        print_json(data)
        return 0
    # ARNs are long and derived from the names; --json keeps them.
    rows = [{k: v for k, v in row.items() if not k.endswith("Arn")} for row in data.get(key, [])]
    if rows:
        fresh_console().print(_table(rows))
    else:
        fresh_console().print(f"no {key[0].lower() + key[1:]}")
    return 0


def done(args, message: str) -> int:
    """A call with an empty response: a short confirmation (``{}`` with --json)."""
    if args.json:
        print_json({})
    else:
        fresh_console().print(message)
    return 0


def _decoded_body(body: bytes, content_type: str):
    kind = content_type.split(";")[0].strip()
    if kind == "application/x-npy":
        import numpy as np

        return np.load(io.BytesIO(body), allow_pickle=False).tolist()
    if kind == "application/json":
        return json.loads(body)
    return body.decode("utf-8", errors="replace")


def show_invocation(args, response: dict) -> int:
    """An InvokeEndpoint response: the body on stdout, the invoked variant and inference id on stderr
    (all JSON with --json)."""
    body = response["Body"].read()
    content_type = response.get("ContentType", "")
    if args.json:
        print_json({"InvokedProductionVariant": response.get("InvokedProductionVariant"),
                    "ContentType": content_type, "CustomAttributes": response.get("CustomAttributes"),
                    "InferenceId": response.get("InferenceId"), "Body": _decoded_body(body, content_type)})
        return 0
    decoded = _decoded_body(body, content_type)
    text = decoded if isinstance(decoded, str) else json.dumps(decoded)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    inference_id = f"  InferenceId: {response['InferenceId']}" if response.get("InferenceId") else ""
    print(f"InvokedProductionVariant: {response.get('InvokedProductionVariant')}  ContentType: {content_type}"
          f"{inference_id}", file=sys.stderr)
    return 0
