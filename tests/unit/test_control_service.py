"""The control service and reconciler together, on a real store, with a fake instance provider.

The fake provider starts no processes: instances become ready at once (or fail, for variants
told to), and a test can crash one. So the lifecycle logic (Creating -> InService | Failed,
scaling, replacement, restart recovery) runs in milliseconds and exactly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from mve.control.artifacts import ArtifactStore
from mve.control.instances import InstanceStartError, ModelServerProcess
from mve.control.reconciler import Reconciler
from mve.control.records import Batching, VariantSpec
from mve.control.routes import RoutePublisher
from mve.control.service import ControlService, WeightAndCapacity
from mve.control.store import SqliteStore
from mve.control.validation import Limits
from mve.errors import NotFound, ResourceAlreadyExists, ResourceInUse, ValidationError, error_name


def write_model(path: Path, batch_dim: bool = True) -> Path:
    """A tiny Identity model: X [batch|2, 3] float -> Y."""
    first = "batch" if batch_dim else 2
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [first, 3])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [first, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


class FakeProvider:
    """Stands in for LocalInstanceProvider: no processes, instant readiness."""

    def __init__(self):
        self.on_exit = None
        self.failing_variants: set[str] = set()
        self.hanging_variants: set[str] = set()
        self.alive_pids: set[int] = set()
        self.stopped: list[str] = []
        self._processes: dict[str, ModelServerProcess] = {}
        self._next_pid = 1000

    def processes(self, endpoint_name=None):
        return [p for p in self._processes.values() if endpoint_name in (None, p.spec.endpoint_name)]

    def get(self, instance_id):
        return self._processes.get(instance_id)

    async def spawn(self, spec):
        self._next_pid += 1
        handle = ModelServerProcess(spec=spec, pid=self._next_pid, log_path=Path("/dev/null"))
        self._processes[spec.instance_id] = handle
        self.alive_pids.add(handle.pid)
        return handle

    async def wait_ready(self, handle, timeout_s):
        await asyncio.sleep(0)
        if handle.spec.variant_name in self.hanging_variants:
            await asyncio.Event().wait()
        if handle.spec.variant_name in self.failing_variants:
            raise InstanceStartError(f"{handle.label} exited with code 1 before it was ready: CUDA is not available")
        handle.address = f"127.0.0.1:{handle.pid}"
        handle.ready = True
        return handle.address

    async def adopt(self, spec, pid, address, log_path):
        if pid not in self.alive_pids:
            return None
        handle = ModelServerProcess(spec=spec, pid=pid, log_path=Path(log_path), adopted=True, address=address, ready=True)
        self._processes[spec.instance_id] = handle
        return handle

    async def stop(self, handle, grace_s=None):
        handle.stopping = True
        self._processes.pop(handle.spec.instance_id, None)
        self.alive_pids.discard(handle.pid)
        self.stopped.append(handle.spec.instance_id)

    async def stop_all(self, endpoint_name=None, grace_s=None):
        for handle in self.processes(endpoint_name):
            await self.stop(handle)

    def crash(self, instance_id):
        handle = self._processes.pop(instance_id)
        self.alive_pids.discard(handle.pid)
        handle.returncode = -9
        self.on_exit(handle)


class Plane:
    """A control service on `data_dir` with a fake provider."""

    def __init__(self, data_dir: Path, provider: FakeProvider, cores: int | None = None):
        self.store = SqliteStore(data_dir / "mve.db")
        self.routes = RoutePublisher(self.store)
        self.provider = provider
        self.reconciler = Reconciler(self.store, provider, self.routes, drain_s=0, cores=cores)
        self.service = ControlService(
            self.store, ArtifactStore(data_dir / "artifacts"), self.routes, self.reconciler, Limits()
        )

    def status(self, name="e"):
        return self.service.describe_endpoint(name)[0].status

    def counts(self, name="e"):
        return self.service.describe_endpoint(name)[1]

    def addresses(self, variant):
        table = self.routes.current
        return [i.address for e in table.endpoints for v in e.variants if v.variant_name == variant for i in v.instances]


def variant(name, model="m", count=1, weight=1.0, batching=Batching()):
    return VariantSpec(name, model, count, "ml.cpu.small", weight, "RANDOM", 600, batching)


@pytest.fixture
def model_path(tmp_path):
    return write_model(tmp_path / "identity.onnx")


def run(scenario):
    asyncio.run(scenario())


def create(plane: Plane, *args):
    """CreateModel from synchronous test code."""
    return asyncio.run(plane.service.create_model(*args))


async def _setup(plane: Plane, model_path: Path, variants=None):
    await plane.service.create_model("m", "", str(model_path), {}, {})
    plane.service.create_endpoint_config("c", variants or [variant("A"), variant("B", weight=3.0)], {}, {})


def test_an_endpoint_goes_creating_then_in_service_with_routes(tmp_path, model_path):
    async def scenario():
        plane = Plane(tmp_path, FakeProvider())
        await _setup(plane, model_path)
        plane.service.create_endpoint("e", "c", {})
        assert plane.status() == "Creating"
        assert plane.routes.current.endpoints == []
        await plane.reconciler.idle()
        assert plane.status() == "InService"
        assert plane.counts() == {"A": 1, "B": 1}
        assert len(plane.addresses("A")) == 1 and len(plane.addresses("B")) == 1

    run(scenario)


def test_model_servers_share_the_machine_cores(tmp_path, model_path):
    async def scenario():
        plane = Plane(tmp_path, FakeProvider(), cores=8)
        big = [VariantSpec("A", "m", 3, "ml.cpu.4xlarge", 1.0, "RANDOM", 600), variant("B")]
        await _setup(plane, model_path, big)
        plane.service.create_endpoint("e", "c", {})
        await plane.reconciler.idle()
        threads = sorted((p.spec.variant_name, p.spec.threads) for p in plane.provider.processes())
        # 4 model servers on 8 cores: 16 threads for a 4xlarge capped at 8 // 4 = 2; small keeps its 1.
        assert threads == [("A", 2), ("A", 2), ("A", 2), ("B", 1)]

    run(scenario)


def test_a_failing_instance_fails_the_endpoint_and_stops_every_process(tmp_path, model_path):
    async def scenario():
        provider = FakeProvider()
        provider.failing_variants = {"B"}
        plane = Plane(tmp_path, provider)
        await _setup(plane, model_path)
        plane.service.create_endpoint("e", "c", {})
        await plane.reconciler.idle()
        endpoint, counts = plane.service.describe_endpoint("e")
        assert endpoint.status == "Failed"
        assert "variant B" in endpoint.failure_reason and "CUDA is not available" in endpoint.failure_reason
        assert provider.processes() == [] and plane.store.list_instances("e") == []
        assert counts == {}

    run(scenario)


def test_weight_changes_are_routed_at_once_without_restarting_instances(tmp_path, model_path):
    async def scenario():
        plane = Plane(tmp_path, FakeProvider())
        await _setup(plane, model_path)
        plane.service.create_endpoint("e", "c", {})
        await plane.reconciler.idle()
        before = plane.routes.current
        plane.service.update_weights_and_capacities("e", [WeightAndCapacity("A", desired_weight=0.0)])
        after = plane.routes.current
        assert after.version > before.version
        assert [(v.variant_name, v.weight) for v in after.endpoints[0].variants] == [("A", 0.0), ("B", 3.0)]
        assert plane.addresses("A") == [i.address for i in before.endpoints[0].variants[0].instances]
        await plane.reconciler.idle()
        assert plane.status() == "InService"
        assert plane.provider.stopped == []

    run(scenario)


def test_instance_counts_go_up_and_down_newest_stopped_first(tmp_path, model_path):
    async def scenario():
        plane = Plane(tmp_path, FakeProvider())
        await _setup(plane, model_path)
        plane.service.create_endpoint("e", "c", {})
        await plane.reconciler.idle()
        first = plane.addresses("A")
        plane.service.update_weights_and_capacities("e", [WeightAndCapacity("A", desired_instance_count=3)])
        assert plane.status() == "Updating"
        await plane.reconciler.idle()
        assert plane.status() == "InService" and plane.counts()["A"] == 3
        assert set(first) < set(plane.addresses("A"))
        plane.service.update_weights_and_capacities("e", [WeightAndCapacity("A", desired_instance_count=1)])
        await plane.reconciler.idle()
        assert plane.counts()["A"] == 1 and plane.addresses("A") == first
        assert len(plane.provider.stopped) == 2

    run(scenario)


def test_a_failed_scale_out_restores_the_count_and_stays_in_service(tmp_path, model_path):
    async def scenario():
        plane = Plane(tmp_path, FakeProvider())
        await _setup(plane, model_path)
        plane.service.create_endpoint("e", "c", {})
        await plane.reconciler.idle()
        plane.provider.failing_variants = {"B"}
        plane.service.update_weights_and_capacities("e", [WeightAndCapacity("B", desired_instance_count=2)])
        await plane.reconciler.idle()
        endpoint, counts = plane.service.describe_endpoint("e")
        assert endpoint.status == "InService"
        assert endpoint.variant("B").desired_instance_count == 1 and counts["B"] == 1
        assert "Update failed" in endpoint.failure_reason

    run(scenario)


def test_a_crashed_instance_leaves_the_routes_at_once_and_is_replaced(tmp_path, model_path):
    async def scenario():
        plane = Plane(tmp_path, FakeProvider())
        await _setup(plane, model_path)
        plane.service.create_endpoint("e", "c", {})
        await plane.reconciler.idle()
        [crashed] = [p.spec.instance_id for p in plane.provider.processes() if p.spec.variant_name == "A"]
        old_address = plane.addresses("A")
        version = plane.routes.current.version
        plane.provider.crash(crashed)
        assert plane.addresses("A") == [] and plane.routes.current.version > version  # synchronously
        await plane.reconciler.idle()
        assert plane.counts() == {"A": 1, "B": 1}
        assert plane.addresses("A") != old_address and len(plane.addresses("A")) == 1
        assert plane.status() == "InService"

    run(scenario)


def test_delete_endpoint_stops_processes_and_forgets_it(tmp_path, model_path):
    async def scenario():
        plane = Plane(tmp_path, FakeProvider())
        await _setup(plane, model_path)
        plane.service.create_endpoint("e", "c", {})
        await plane.reconciler.idle()
        plane.service.delete_endpoint("e")
        assert plane.status() == "Deleting" and plane.routes.current.endpoints == []
        await plane.reconciler.idle()
        with pytest.raises(NotFound, match='Could not find endpoint "arn:mve:sagemaker:local:000000000000:endpoint/e"') as gone:
            plane.service.describe_endpoint("e")
        assert error_name(gone.value) == "ValidationException"  # as SageMaker answers DescribeEndpoint
        assert plane.provider.processes() == []

    run(scenario)


def test_deleting_a_creating_endpoint_stops_the_instances_still_starting(tmp_path, model_path):
    async def scenario():
        provider = FakeProvider()
        provider.hanging_variants = {"B"}
        plane = Plane(tmp_path, provider)
        await _setup(plane, model_path)
        plane.service.create_endpoint("e", "c", {})
        while len(plane.store.list_instances("e")) < 2:
            await asyncio.sleep(0)
        plane.service.delete_endpoint("e")
        await plane.reconciler.idle()
        with pytest.raises(NotFound):
            plane.service.describe_endpoint("e")
        assert provider.processes() == [] and plane.store.list_instances() == []
        assert len(provider.stopped) == 2

    run(scenario)


def test_a_restarted_control_plane_adopts_live_instances_and_replaces_dead_ones(tmp_path, model_path):
    provider = FakeProvider()

    async def before_crash():
        plane = Plane(tmp_path, provider)
        await _setup(plane, model_path)
        plane.service.create_endpoint("e", "c", {})
        await plane.reconciler.idle()
        plane.store.close()

    run(before_crash)
    pids = {i.variant_name: i.pid for i in SqliteStore(tmp_path / "mve.db").list_instances("e")}
    provider.alive_pids.discard(pids["B"])  # B died with the control plane; A survived

    async def after_restart():
        restarted = FakeProvider()
        restarted.alive_pids = set(provider.alive_pids)
        restarted._next_pid = 5000
        plane = Plane(tmp_path, restarted)
        await plane.reconciler.recover()
        await plane.reconciler.idle()
        assert plane.status() == "InService" and plane.counts() == {"A": 1, "B": 1}
        now = {i.variant_name: i.pid for i in plane.store.list_instances("e")}
        assert now["A"] == pids["A"] and now["B"] != pids["B"]
        assert plane.service.describe_model("m").name == "m"

    run(after_restart)


def test_an_endpoint_creating_at_a_crash_is_resumed_at_restart(tmp_path, model_path):
    provider = FakeProvider()
    provider.hanging_variants = {"B"}

    async def crash_while_creating():
        plane = Plane(tmp_path, provider)
        await _setup(plane, model_path)
        plane.service.create_endpoint("e", "c", {})
        while len(plane.store.list_instances("e")) < 2:
            await asyncio.sleep(0)
        plane.store.close()  # the loop ends here: as far as the store knows, the process died

    run(crash_while_creating)

    async def after_restart():
        restarted = FakeProvider()
        restarted.alive_pids = set(provider.alive_pids)
        restarted._next_pid = 5000
        plane = Plane(tmp_path, restarted)
        assert plane.status() == "Creating"
        await plane.reconciler.recover()
        await plane.reconciler.idle()
        assert plane.status() == "InService" and plane.counts() == {"A": 1, "B": 1}

    run(after_restart)


# ---------------------------------------------------------------- validation through the service


def test_create_model_copies_and_inspects_the_artifact(tmp_path, model_path):
    plane = Plane(tmp_path, FakeProvider())
    model = create(plane, "m", "onnxruntime", f"file://{model_path}", {"K": "V"}, {})
    stored = Path(model.artifact_path)
    assert stored.parent == tmp_path / "artifacts" / "sha256" and stored.name == f"{model.artifact_sha256}.onnx"
    write_model(model_path, batch_dim=False)  # changing the source changes nothing deployed
    assert plane.service.describe_model("m").inputs[0].shape == (-1, 3)
    assert stored.read_bytes() != model_path.read_bytes()
    assert model.arn == "arn:mve:sagemaker:local:000000000000:model/m"


def test_create_model_rejections(tmp_path, model_path):
    plane = Plane(tmp_path, FakeProvider())
    with pytest.raises(ValidationError, match="does not exist"):
        create(plane, "m", "", str(tmp_path / "missing.onnx"), {}, {})
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValidationError, match="Could not load the model"):
        create(plane, "m", "", str(tmp_path / "junk.onnx"), {}, {})
    with pytest.raises(ValidationError, match="Environment variable '1BAD'"):
        create(plane, "m", "", str(model_path), {"1BAD": "x"}, {})
    with pytest.raises(ValidationError, match="Image 'pytorch' is not supported"):
        create(plane, "m", "pytorch", str(model_path), {}, {})
    create(plane, "m", "", str(model_path), {}, {})
    with pytest.raises(ResourceAlreadyExists, match="Cannot create already existing model"):
        create(plane, "m", "", str(model_path), {}, {})


def test_in_use_resources_cannot_be_deleted(tmp_path, model_path):
    async def scenario():
        plane = Plane(tmp_path, FakeProvider())
        await _setup(plane, model_path)
        with pytest.raises(ResourceInUse, match="used by endpoint config"):
            plane.service.delete_model("m")
        plane.service.create_endpoint("e", "c", {})
        with pytest.raises(ResourceInUse, match="used by endpoint"):
            plane.service.delete_endpoint_config("c")
        with pytest.raises(ValidationError, match="Cannot update in-progress endpoint") as in_progress:
            plane.service.update_weights_and_capacities("e", [WeightAndCapacity("A", desired_weight=2.0)])
        assert type(in_progress.value) is ValidationError  # SageMaker's ValidationException, not ResourceInUse
        await plane.reconciler.idle()

    run(scenario)


def test_update_rejections(tmp_path, model_path):
    async def scenario():
        plane = Plane(tmp_path, FakeProvider())
        await _setup(plane, model_path)
        plane.service.create_endpoint("e", "c", {})
        await plane.reconciler.idle()
        update = plane.service.update_weights_and_capacities
        with pytest.raises(ValidationError, match="not present"):
            update("e", [WeightAndCapacity("Z", desired_weight=1.0)])
        with pytest.raises(ValidationError, match="greater than 0"):
            update("e", [WeightAndCapacity("A", desired_weight=0.0), WeightAndCapacity("B", desired_weight=0.0)])
        with pytest.raises(ValidationError, match="DesiredWeight, DesiredInstanceCount or both"):
            update("e", [WeightAndCapacity("A")])
        with pytest.raises(ValidationError, match="more than once"):
            update("e", [WeightAndCapacity("A", 1.0), WeightAndCapacity("A", 2.0)])
        with pytest.raises(NotFound):
            update("nope", [WeightAndCapacity("A", 1.0)])
        assert plane.status() == "InService"

    run(scenario)


def test_batching_needs_a_dynamic_first_dimension(tmp_path):
    plane = Plane(tmp_path, FakeProvider())
    create(plane, "fixed", "", str(write_model(tmp_path / "fixed.onnx", batch_dim=False)), {}, {})
    with pytest.raises(ValidationError, match="first dimension that is not dynamic"):
        plane.service.create_endpoint_config("c", [variant("A", model="fixed", batching=Batching(8, 100, 1))], {}, {})
    plane.service.create_endpoint_config("c", [variant("A", model="fixed", batching=Batching(1, 0, 1))], {}, {})


def test_configs_need_existing_models(tmp_path):
    plane = Plane(tmp_path, FakeProvider())
    with pytest.raises(NotFound, match='Could not find model "arn:mve:sagemaker:local:000000000000:model/m"'):
        plane.service.create_endpoint_config("c", [variant("A")], {}, {})
