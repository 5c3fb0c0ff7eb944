"""``mve demo``: two variants of a model behind one endpoint, traffic split 50/50, then 25/75.

It starts a mesh (free ports, a temporary data dir) unless ``--control-plane`` and
``--endpoint-address`` point at a running one, builds the example breast-cancer models, deploys
cancer-weak as Variant1 and cancer-strong as Variant2, sends ``--requests`` invocations from a
small thread pool, and prints per variant the share of traffic, latency (p50/p99) and accuracy
against the labels. Then it shifts the weights to 25/75, shows the new split, calls Variant1 by
TargetVariant, shows what the control plane's metrics recorded per variant, sends the true labels
as feedback (every answer is captured, so feedback joins it by InferenceId) and prints the
experiment report (accuracy per variant with confidence intervals, the difference against Variant1
with its always-valid p-value, the sample-ratio check), moves the endpoint to the report's winner
alone with a canary UpdateEndpoint (rollback alarm on its 5xx errors) while requests keep coming,
and deletes everything it created.

``--client mve`` (the default) talks gRPC through ``mve.client(...)``. ``--client boto3`` runs the
same demo through the real boto3 (``pip install boto3``): ``sagemaker``, ``sagemaker-runtime`` and
``cloudwatch`` clients pointed by ``endpoint_url`` at the demo mesh's HTTP faces and signing with
the access key in its data dir's credentials file (the experiments API, mve's own, stays on
``mve.client``). With boto3 the demo runs its own mesh.
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

VARIANTS = (("Variant1", "cancer-weak"), ("Variant2", "cancer-strong"))


class DemoError(RuntimeError):
    """A demo step failed; the message says which."""


def _npy(array) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def send_traffic(smr, endpoint: str, X, y, count: int, rows: int, workers: int, progress, title: str) -> list[tuple]:
    """Send `count` npy requests of `rows` rows each.

    Returns (variant, latency_s, correct, total, inference_id, true labels) per request.
    """
    import numpy as np

    bodies = [(_npy(X[i:i + rows]), y[i:i + rows]) for i in range(0, len(X) - rows + 1, rows)]
    task = progress.add_task(title, total=count)

    def one(index: int) -> tuple:
        body, labels = bodies[index % len(bodies)]
        # The caller's own InferenceId, as a SageMaker user sends it: boto3's answer has no InferenceId member.
        inference_id = uuid.uuid4().hex
        start = time.perf_counter()
        response = smr.invoke_endpoint(EndpointName=endpoint, Body=body, ContentType="application/x-npy",
                                       Accept="application/x-npy", InferenceId=inference_id)
        latency = time.perf_counter() - start
        predicted = np.load(io.BytesIO(response["Body"].read()), allow_pickle=False).reshape(-1)
        progress.advance(task)
        return (response["InvokedProductionVariant"], latency, int(np.sum(predicted == labels)), len(labels),
                response.get("InferenceId", inference_id), labels.tolist())

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(count)))


def split_table(results: list[tuple], title: str):
    """A rich table: requests, share, p50/p99 latency (ms) and accuracy per variant."""
    import numpy as np
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("variant", "requests", "share", "p50 ms", "p99 ms", "accuracy"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for variant, model in VARIANTS:
        mine = [r for r in results if r[0] == variant]
        if not mine:
            table.add_row(f"{variant} ({model})", "0", "0.0%", "-", "-", "-")
            continue
        latencies = np.array([r[1] for r in mine]) * 1000
        correct = sum(r[2] for r in mine)
        total = sum(r[3] for r in mine)
        table.add_row(f"{variant} ({model})", str(len(mine)), f"{100 * len(mine) / len(results):.1f}%",
                      f"{np.percentile(latencies, 50):.2f}", f"{np.percentile(latencies, 99):.2f}",
                      f"{100 * correct / total:.1f}%")
    return table


def run_demo(args) -> int:
    """The ``mve demo`` command."""
    from rich.console import Console

    console = Console()
    started = time.perf_counter()
    try:
        with ExitStack() as stack:
            _demo(args, console, stack)
    except DemoError as error:
        console.print(f"[red]demo failed:[/red] {error}")
        return 1
    except Exception as error:  # noqa: BLE001 - a demo reports any failure in one line, no traceback
        console.print(f"[red]demo failed:[/red] {type(error).__name__}: {error}")
        return 1
    console.print(f"demo finished in {time.perf_counter() - started:.1f} s")
    return 0


def _demo(args, console, stack: ExitStack) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import mve
    from mve.examples import build_example_models, load_eval_data
    from mve.mesh import Mesh

    try:
        import skl2onnx  # noqa: F401 - the example models are trained and converted at run time
        import sklearn  # noqa: F401
    except ModuleNotFoundError as error:
        raise DemoError(f"the demo builds its models with scikit-learn and skl2onnx ({error.name} is missing): "
                        "pip install 'mve[examples]'") from None

    on_boto3 = getattr(args, "client", "mve") == "boto3"
    if on_boto3:
        _require_boto3()
    mesh = None
    if on_boto3 and (args.control_plane or args.endpoint_address):
        raise DemoError("--client boto3 runs on the demo's own mesh (its HTTP faces and access key); "
                        "leave out --control-plane and --endpoint-address")
    if args.control_plane and args.endpoint_address:
        control_plane, proxy = args.control_plane, args.endpoint_address
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mve-demo-")))
    elif args.control_plane or args.endpoint_address:
        raise DemoError("give both --control-plane and --endpoint-address to use a running mesh, or neither")
    else:
        data_dir = Path(args.data_dir) if args.data_dir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="mve-demo-")))
        with console.status("starting control plane and proxy"):
            mesh = stack.enter_context(Mesh(data_dir, log_path=data_dir / "mesh.log"))
        control_plane, proxy = mesh.control_plane_address, mesh.proxy_address
        console.print(f"mesh up: control plane {control_plane}, proxy {proxy} (logs in {data_dir / 'mesh.log'})")

    if on_boto3:
        sm, smr, cw = boto3_clients(mesh, args.concurrency)
        console.print(f"client boto3 {_boto3_version()}: sagemaker and cloudwatch at "
                      f"http://{mesh.control_plane_http_address}, sagemaker-runtime at http://{mesh.proxy_http_address}, "
                      f"signed with the access key in {data_dir / 'credentials'}")
    else:
        sm = mve.client("sagemaker", address=control_plane)
        smr = mve.client("sagemaker-runtime", address=proxy)
        cw = mve.client("cloudwatch", address=control_plane)
    stack.callback(cw.close)
    stack.callback(smr.close)
    stack.callback(sm.close)
    with console.status("building the example models"):
        paths = build_example_models(data_dir / "models")
    X, y = load_eval_data()

    suffix = uuid.uuid4().hex[:6]
    endpoint = f"demo-cancer-{suffix}"
    models = {variant: f"demo-{model}-{suffix}" for variant, model in VARIANTS}
    for variant, model in VARIANTS:
        sm.create_model(ModelName=models[variant], PrimaryContainer={"Image": "onnxruntime", "ModelDataUrl": str(paths[model])})
        stack.callback(_quietly, sm.delete_model, ModelName=models[variant])
    # Every invocation is captured (output only), so that feedback joins each answer to its variant.
    sm.create_endpoint_config(EndpointConfigName=endpoint, ProductionVariants=[
        {"VariantName": variant, "ModelName": models[variant], "InitialInstanceCount": 1,
         "InstanceType": "ml.cpu.small", "InitialVariantWeight": 1.0} for variant, _ in VARIANTS],
        DataCaptureConfig={"EnableCapture": True, "InitialSamplingPercentage": 100,
                           "DestinationS3Uri": str(data_dir / "capture"), "CaptureOptions": [{"CaptureMode": "Output"}]})
    stack.callback(_quietly, sm.delete_endpoint_config, EndpointConfigName=endpoint)
    with console.status(f"creating endpoint {endpoint} (Variant1=cancer-weak, Variant2=cancer-strong, 50/50)"):
        sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=endpoint)
        stack.callback(_delete_endpoint, sm, endpoint)
        sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig={"Delay": 0.25, "MaxAttempts": 480})
    console.print(f"endpoint {endpoint} InService")

    from datetime import datetime, timedelta, timezone

    experiment_start = datetime.now(timezone.utc) - timedelta(seconds=5)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    traffic = dict(X=X, y=y, count=args.requests, rows=args.rows, workers=args.concurrency)
    with Progress(*columns, console=console, transient=False) as progress:
        first = send_traffic(smr, endpoint, progress=progress, title="weights 50/50", **traffic)
    console.print(split_table(first, f"{args.requests} requests at weights 50/50"))

    with console.status("shifting weights to 25/75 (UpdateEndpointWeightsAndCapacities)"):
        sm.update_endpoint_weights_and_capacities(EndpointName=endpoint, DesiredWeightsAndCapacities=[
            {"VariantName": "Variant1", "DesiredWeight": 25.0}, {"VariantName": "Variant2", "DesiredWeight": 75.0}])
        sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig={"Delay": 0.25, "MaxAttempts": 480})
        _wait_for_weights(sm, endpoint, {"Variant1": 25.0, "Variant2": 75.0})
    with Progress(*columns, console=console, transient=False) as progress:
        second = send_traffic(smr, endpoint, progress=progress, title="weights 25/75", **traffic)
    console.print(split_table(second, f"{args.requests} requests at weights 25/75"))

    targeted = [smr.invoke_endpoint(EndpointName=endpoint, Body=_npy(X[i:i + 1]), ContentType="application/x-npy",
                                    TargetVariant="Variant1")["InvokedProductionVariant"] for i in range(10)]
    if set(targeted) != {"Variant1"}:
        raise DemoError(f"TargetVariant=Variant1 reached {sorted(set(targeted))}")
    console.print("TargetVariant=Variant1: 10 of 10 requests answered by Variant1")

    sent = {v: sum(1 for r in first + second if r[0] == v) for v, _ in VARIANTS}
    sent["Variant1"] += len(targeted)
    console.print(metrics_table(cw, endpoint, sent))
    exp = mve.client("experiments", address=control_plane)
    stack.callback(exp.close)
    with console.status("sending the true labels as feedback and reading the experiment report"):
        sent_feedback = send_feedback(exp, endpoint, first + second)
        labeled = {v: sum(r[3] for r in first + second if r[0] == v) for v, _ in VARIANTS}
        report = experiment_report(exp, endpoint, experiment_start, labeled)
    console.print(f"feedback: the true labels of {sent_feedback} requests (SendFeedback, by InferenceId)")
    from mve.commands_experiments_output import print_report

    print_report(report)
    winner, evidence = report_winner(report)
    console.print(f"winner by the experiment report: {winner} ({evidence})")
    _move_to_winner(sm, smr, cw, endpoint, winner, models[winner], console, stack, X)
    console.print("cleaning up: endpoint, endpoint configs, alarm, models" + ("" if args.control_plane else ", mesh"))


def _require_boto3() -> None:
    try:
        import boto3  # noqa: F401
    except ModuleNotFoundError:
        raise DemoError("--client boto3 needs boto3, which is not installed: pip install boto3") from None


def _boto3_version() -> str:
    import boto3

    return boto3.__version__


def boto3_clients(mesh, concurrency: int):
    """boto3's sagemaker, sagemaker-runtime and cloudwatch clients at `mesh`'s HTTP faces, signing
    with its data dir's first access key (made now if the data dir has none)."""
    import boto3
    from botocore.config import Config

    from mve.first_key import ensure_first_key

    if not mesh.control_plane_http_address or not mesh.proxy_http_address:
        raise DemoError("the mesh's HTTP faces are off; --client boto3 needs them")
    key = ensure_first_key(mesh.data_dir, mesh.control_plane_address)
    session = boto3.Session(aws_access_key_id=key.access_key_id, aws_secret_access_key=key.secret_access_key,
                            region_name="us-east-1")
    control = f"http://{mesh.control_plane_http_address}"
    runtime = f"http://{mesh.proxy_http_address}"
    return (session.client("sagemaker", endpoint_url=control),
            session.client("sagemaker-runtime", endpoint_url=runtime,
                           config=Config(max_pool_connections=max(10, concurrency))),
            session.client("cloudwatch", endpoint_url=control))


def _client_errors() -> tuple[type[Exception], ...]:
    """The ClientError classes of either client: mve's (botocore's subclass when installed) and botocore's."""
    from mve.sdk import ClientError

    try:
        from botocore.exceptions import ClientError as BotocoreClientError
    except ModuleNotFoundError:
        return (ClientError,)
    return (ClientError, BotocoreClientError)


def send_feedback(exp, endpoint: str, results: list[tuple]) -> int:
    """The true labels of every request sent, as feedback by inference id (1,000 per call)."""
    feedback = [{"InferenceId": r[4], "GroundTruthLabels": r[5]} for r in results]
    for start in range(0, len(feedback), 1000):
        exp.send_feedback(EndpointName=endpoint, Feedback=feedback[start:start + 1000])
    return len(feedback)


def experiment_report(exp, endpoint: str, since, labeled: dict[str, int], timeout_s: float = 20.0) -> dict:
    """GetExperimentReport against Variant1, once every labeled request's captured record is joined.

    Proxies write captured records about once a second and the control plane reads them as they
    land: it asks again (up to `timeout_s`) until each variant's labeled count reaches `labeled`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        report = exp.get_experiment_report(EndpointName=endpoint, StartTime=since, BaselineVariant="Variant1")
        joined = {v["VariantName"]: v.get("WithFeedback", 0) for v in report["Variants"]}
        if all(joined.get(name, 0) >= count for name, count in labeled.items()) or time.monotonic() > deadline:
            return report
        time.sleep(0.5)


def report_winner(report: dict) -> tuple[str, str]:
    """The variant with the best accuracy in the report, and a sentence with the evidence."""
    variants = [v for v in report["Variants"] if not v.get("Shadow") and v.get("Accuracy")]
    if not variants:
        raise DemoError("the experiment report has no accuracy for any variant")
    best = max(variants, key=lambda v: v["Accuracy"]["Value"])
    comparison = next((c for v in variants for c in v.get("Comparisons", [])
                       if c["Metric"] == "accuracy" and v["VariantName"] != "Variant1"), None)
    evidence = ", ".join(f"{v['VariantName']} {100 * v['Accuracy']['Value']:.1f}%" for v in variants)
    if comparison is not None:
        verdict = "significant" if comparison["Significant"] else "not significant"
        evidence += f"; difference {verdict} (always-valid p = {comparison['AlwaysValidPValue']:.2g})"
    return best["VariantName"], evidence


def metrics_table(cw, endpoint: str, sent: dict[str, int]):
    """What the control plane recorded per variant (GetMetricStatistics): requests, errors, latency.

    Proxies report once a second: it waits (up to 10 s) until the counts reach what was `sent`.
    """
    from datetime import datetime, timedelta, timezone

    from rich.table import Table

    now = datetime.now(timezone.utc)
    table = Table(title="the control plane's metrics (GetMetricStatistics, last 10 minutes)")
    for column in ("variant", "Invocations", "5XX errors", "ModelLatency p50 ms", "p99 ms"):
        table.add_column(column, justify="right" if column != "variant" else "left")
    deadline = time.monotonic() + 10
    for variant, _ in VARIANTS:
        dims = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]

        def stat(metric, **kwargs):
            points = cw.get_metric_statistics(Namespace="AWS/SageMaker", MetricName=metric, Dimensions=dims,
                                              StartTime=now - timedelta(minutes=10), EndTime=now + timedelta(minutes=1),
                                              Period=660, **kwargs)["Datapoints"]
            return points[0] if points else {}

        calls = stat("Invocations", Statistics=["Sum"])
        while calls.get("Sum", 0) < sent[variant] and time.monotonic() < deadline:
            time.sleep(0.2)
            calls = stat("Invocations", Statistics=["Sum"])
        errors = stat("Invocation5XXErrors", Statistics=["Sum"])
        latency = stat("ModelLatency", ExtendedStatistics=["p50", "p99"]).get("ExtendedStatistics", {})
        table.add_row(variant, f"{calls.get('Sum', 0):.0f}", f"{errors.get('Sum', 0):.0f}",
                      f"{latency.get('p50', float('nan')) / 1000:.2f}", f"{latency.get('p99', float('nan')) / 1000:.2f}")
    return table


def _move_to_winner(sm, smr, cw, endpoint: str, winner: str, model: str, console, stack: ExitStack, X) -> None:
    """UpdateEndpoint to a config with the winner only: a 20% canary, 2 s of baking, rollback by alarm."""
    import threading

    config = f"{endpoint}-winner"
    sm.create_endpoint_config(EndpointConfigName=config, ProductionVariants=[
        {"VariantName": winner, "ModelName": model, "InitialInstanceCount": 1, "InstanceType": "ml.cpu.small",
         "InitialVariantWeight": 1.0}])
    stack.callback(_quietly, sm.delete_endpoint_config, EndpointConfigName=config)
    alarm = f"{endpoint}-{winner}-5xx"
    cw.put_metric_alarm(
        AlarmName=alarm, Namespace="AWS/SageMaker", MetricName="Invocation5XXErrors",
        Dimensions=[{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": winner}],
        Statistic="Sum", Period=1, EvaluationPeriods=2, Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="notBreaching")
    stack.callback(_quietly, cw.delete_alarms, AlarmNames=[alarm])
    stack.callback(_delete_endpoint, sm, endpoint)  # first at cleanup: the configs and models it uses go after
    sent, failed, stop = [0], [0], threading.Event()
    body = _npy(X[:1])

    def load() -> None:
        while not stop.is_set() and sent[0] < 100_000:
            try:
                smr.invoke_endpoint(EndpointName=endpoint, Body=body, ContentType="application/x-npy")
            except Exception:  # noqa: BLE001 - counted: the update must lose none
                failed[0] += 1
            sent[0] += 1

    threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    try:
        with console.status(f"UpdateEndpoint to {config} ({winner} only): canary 20%, 2 s baking, rollback alarm {alarm}"):
            sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=config, DeploymentConfig={
                "BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {
                    "Type": "CANARY", "WaitIntervalInSeconds": 2, "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 20}}},
                "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": alarm}]}})
            while True:
                described = sm.describe_endpoint(EndpointName=endpoint)
                if described["EndpointStatus"] == "InService" and "PendingDeploymentSummary" not in described:
                    break
                if time.monotonic() - started > 120:
                    raise DemoError(f"the update of {endpoint} did not finish in 120 s")
                time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    if described["EndpointConfigName"] != config:
        raise DemoError(f"the update rolled back: {described.get('FailureReason')}")
    console.print(f"moved to the winner {winner} in {time.monotonic() - started:.1f} s: "
                  f"{sent[0]} requests during the update, {failed[0]} failed")


def _wait_for_weights(sm, endpoint: str, weights: dict[str, float], timeout_s: float = 30.0) -> None:
    # The proxy gets the new table from WatchRoutes; wait until the control plane reports it current.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        variants = sm.describe_endpoint(EndpointName=endpoint)["ProductionVariants"]
        if all(abs(v["CurrentWeight"] - weights[v["VariantName"]]) < 1e-9 for v in variants):
            return
        time.sleep(0.1)
    raise DemoError(f"weights of {endpoint} did not reach {weights} within {timeout_s:g} s")


def _delete_endpoint(sm, endpoint: str) -> None:
    try:
        sm.describe_endpoint(EndpointName=endpoint)
    except _client_errors():
        return  # deleted already
    _quietly(sm.delete_endpoint, EndpointName=endpoint)
    _quietly(lambda **kw: sm.get_waiter("endpoint_deleted").wait(**kw), EndpointName=endpoint,
             WaiterConfig={"Delay": 0.2, "MaxAttempts": 150})


def _quietly(call, **kwargs) -> None:
    try:
        call(**kwargs)
    except Exception as error:  # noqa: BLE001 - cleanup goes on; say what was left behind
        print(f"cleanup: {type(error).__name__}: {error}", file=sys.stderr)


def register(subparsers) -> None:
    """Add ``mve demo``."""
    parser = subparsers.add_parser(
        "demo", help="deploy two variants, split traffic 50/50 then 25/75, print the split",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    parser.add_argument("--requests", type=_bounded(1, 100_000), default=2000, help="requests per phase (default 2000)")
    parser.add_argument("--concurrency", type=_bounded(1, 64), default=8, help="client threads (default 8)")
    parser.add_argument("--rows", type=_bounded(1, 64), default=1, help="rows per request (default 1)")
    parser.add_argument("--control-plane", metavar="HOST:PORT", default=None, help="use this running control plane")
    parser.add_argument("--endpoint-address", metavar="HOST:PORT", default=None, help="use this running proxy")
    parser.add_argument("--data-dir", default=None, help="data dir of the demo's own mesh (default: a temporary one)")
    parser.add_argument("--client", choices=("mve", "boto3"), default="mve",
                        help="mve: mve.client over gRPC (default); boto3: the real boto3 at the mesh's HTTP faces, "
                             "signed with the data dir's access key (pip install boto3)")
    parser.set_defaults(func=run_demo)


def _bounded(low: int, high: int):
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}-{high}, got {value}")
        return value

    return parse
