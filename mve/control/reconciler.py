"""The reconciler: drives every endpoint from its stored desired state to running instances.

One asyncio task per endpoint serialises everything that happens to it (create, scale, replace a
crashed instance, delete), so no two steps of one endpoint race. Each pass reads the endpoint from
the store, stops surplus instances (out of the routing table first, then SIGTERM), starts missing
ones (all at once, each within its variant's startup timeout) and settles the status:

- Creating -> InService, or Failed with the first instance's reason and every process stopped;
- Updating -> InService; a failed scale-out stops the new instances, restores the previous
  instance count and leaves the endpoint InService with the reason in FailureReason;
- InService: a crashed instance leaves the routing table at once and is replaced (retrying with
  back-off if the replacement fails); an instance the proxies keep reporting as an ejected outlier
  for ``replace_ejected_after_s`` (`note_ejected`, `mve.control.ejections`) is replaced make
  before break: its replacement starts, and once it is ready the outlier leaves the routing table,
  drains and is stopped;
- Deleting: stop every process, delete the record.

With a `tracer` (tracing on) each pass is a ``mve.reconcile`` span, a child of the span of the API
call that asked for it (`kick` notes the caller's span; passes asked for by several calls link to
the others), and each instance start and stop is a ``mve.launch_instance`` / ``mve.stop_instance``
span inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from typing import Callable

from mve.control.ejections import EjectionWatch
from mve.control.instance_types import available_cores, instance_threads, resolve_instance_type
from mve.control.instances import (
    InstanceStartError,
    LaunchSpec,
    LocalInstanceProvider,
    ModelServerProcess,
    pid_is_model_server,
)
from mve.control.records import (
    EndpointRecord,
    EndpointStatus,
    InstanceRecord,
    InstanceStatus,
    VariantSpec,
)
from mve.control.routes import RoutePublisher
from mve.control.store import Store

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
LEFTOVER_WAIT_S = 30.0
_SETTLING = (EndpointStatus.CREATING, EndpointStatus.UPDATING, EndpointStatus.SYSTEM_UPDATING)


class Reconciler:
    """Owns the model-server processes of every endpoint and keeps them as the store says."""

    def __init__(
        self,
        store: Store,
        provider: LocalInstanceProvider,
        routes: RoutePublisher,
        *,
        drain_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        cores: int | None = None,
        tracer=None,
        replace_ejected_after_s: float = 0.0,
    ):
        self._store = store
        # An endpoint with an update in progress belongs to its deployment runner: passes keep
        # the serving (blue) fleet whole but never settle the endpoint's status.
        self.is_deploying: Callable[[str], bool] = lambda name: store.get_deployment(name) is not None
        self._provider = provider
        self._routes = routes
        self._drain_s = drain_s
        self._clock = clock
        self._cores = cores or available_cores()
        self._workers: dict[str, asyncio.Task] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._retries: dict[str, int] = {}
        self._busy: set[str] = set()
        self._closing = False
        self._tracer = tracer
        self._kicked_by: dict[str, list] = {}  # endpoint -> span contexts of the calls that asked for a pass
        # Outliers: instances the proxies report ejected, and those being replaced (endpoint -> ids).
        self.ejections = EjectionWatch(replace_ejected_after_s, clock=clock)
        self._condemned: dict[str, set[str]] = {}
        provider.on_exit = self._instance_exited

    # ------------------------------------------------------------ entry points

    @property
    def provider(self):
        """The instance provider that runs this control plane's model servers."""
        return self._provider

    async def recover(self) -> None:
        """After a (re)start: adopt live model servers of the stored endpoints, drop the rest, resume.

        The instances of an update's other fleet (its config is not the endpoint's) leave the
        routing table and are stopped after the drain, so that requests already sent finish.
        """
        leftovers: list[InstanceRecord] = []
        for endpoint in self._store.list_endpoints():
            config = self._store.get_config(endpoint.config_name)
            for record in self._store.list_instances(endpoint.name):
                spec = config.variant(record.variant_name) if config else None
                handle = None
                if (
                    spec is not None
                    and record.serves(endpoint.config_name)
                    and record.status == InstanceStatus.IN_SERVICE
                    and endpoint.status not in (EndpointStatus.FAILED, EndpointStatus.DELETING)
                    and endpoint.variant(record.variant_name) is not None
                ):
                    handle = await self._provider.adopt(
                        self._launch_spec(endpoint.name, spec, record.instance_id), record.pid, record.address, record.log_path
                    )
                if handle is None and _left_by_an_update(record, endpoint.config_name):
                    # Proxies may still route to it: out of the table first, stopped after the drain.
                    record.status = InstanceStatus.STOPPING
                    self._store.put_instance(record)
                    leftovers.append(record)
                elif handle is None:
                    _kill_stray(record)
                    self._store.delete_instance(endpoint.name, record.instance_id)
                    log.info(
                        "event=instance_dropped endpoint=%s variant=%s instance=%s pid=%d",
                        endpoint.name, record.variant_name, record.instance_id, record.pid,
                    )
            if endpoint.status != EndpointStatus.FAILED:
                self.kick(endpoint.name)
        self._routes.publish()
        if leftovers:
            asyncio.get_running_loop().create_task(self._retire_leftovers(leftovers))

    async def _retire_leftovers(self, records: list[InstanceRecord]) -> None:
        """Stop the other fleet's instances of an update cut short by a restart, after the drain.

        Proxies come back to a restarted control plane after their own back-off, so the drain
        starts once they have the table without these instances (or after LEFTOVER_WAIT_S).
        """
        table = self._routes.publish()
        await self._routes.wait_delivered(table.version, LEFTOVER_WAIT_S)
        await asyncio.sleep(self._drain_s)
        for record in records:
            _terminate_stray(record)
            self._store.delete_instance(record.endpoint_name, record.instance_id)
            log.info(
                "event=instance_retired endpoint=%s variant=%s instance=%s config=%s reason=update_rolled_back",
                record.endpoint_name, record.variant_name, record.instance_id, record.config_name,
            )
        self._routes.publish()

    def kick(self, endpoint_name: str, *, preempt: bool = False) -> None:
        """Ask the endpoint's worker for a pass; `preempt` cancels the pass in progress first."""
        if self._closing:
            return
        wake = self._wake.setdefault(endpoint_name, asyncio.Event())
        wake.set()
        if self._tracer is not None:
            from opentelemetry import trace

            self._kicked_by.setdefault(endpoint_name, []).append(trace.get_current_span().get_span_context())
        worker = self._workers.get(endpoint_name)
        if worker is not None and not worker.done() and not preempt:
            return
        if worker is not None and not worker.done():
            worker.cancel()
        task = asyncio.get_running_loop().create_task(self._run(endpoint_name, previous=worker))
        self._workers[endpoint_name] = task

    def note_ejected(self, endpoint_name: str, variant_name: str, instance_ids) -> None:
        """One proxy report's ejected instances of a variant; replace those ejected long enough."""
        for instance_id, ejected_for in self.ejections.observe(endpoint_name, variant_name, instance_ids):
            reason = f"the proxies have reported it ejected as an outlier for {ejected_for:.1f} s"
            self.replace_instance(endpoint_name, instance_id, reason)

    def replace_instance(self, endpoint_name: str, instance_id: str, reason: str) -> bool:
        """Start a replacement for an InService instance, then stop it (make before break).

        Only for an InService endpoint with no update in progress (False otherwise, or when the
        instance is not serving; a later report asks again). Idempotent while the replacement runs.
        """
        if instance_id in self._condemned.get(endpoint_name, ()):
            return True
        endpoint = self._store.get_endpoint(endpoint_name)
        if endpoint is None or endpoint.status != EndpointStatus.IN_SERVICE or self.is_deploying(endpoint_name):
            log.debug("event=instance_replacement_deferred endpoint=%s instance=%s", endpoint_name, instance_id)
            return False
        record = next(
            (
                r for r in self._store.list_instances(endpoint_name)
                if r.instance_id == instance_id and r.status == InstanceStatus.IN_SERVICE
                and r.serves(endpoint.config_name)
            ),
            None,
        )
        if record is None:
            return False
        self._condemned.setdefault(endpoint_name, set()).add(instance_id)
        log.warning(
            "event=instance_replacing endpoint=%s variant=%s instance=%s pid=%d reason=%r",
            endpoint_name, record.variant_name, instance_id, record.pid, reason,
        )
        self.kick(endpoint_name)
        return True

    async def shutdown(self, grace_s: float) -> None:
        """Stop every worker and every model server (graceful), forgetting the stopped instances."""
        self._closing = True
        workers = list(self._workers.values())
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        processes = self._provider.processes()
        await self._provider.stop_all(grace_s=grace_s)
        for handle in processes:
            self._store.delete_instance(handle.spec.endpoint_name, handle.spec.instance_id)

    async def idle(self) -> None:
        """Wait until no endpoint has a pass in progress (for tests)."""
        while self._busy or any(
            not w.done() and self._wake.get(n, asyncio.Event()).is_set() for n, w in self._workers.items()
        ):
            await asyncio.sleep(0.005)

    # ------------------------------------------------------------ worker

    async def _run(self, name: str, previous: asyncio.Task | None) -> None:
        if previous is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await previous
        wake = self._wake.setdefault(name, asyncio.Event())
        try:
            while True:
                await wake.wait()
                wake.clear()
                self._busy.add(name)
                endpoint = self._store.get_endpoint(name)
                if endpoint is None:
                    return
                if endpoint.status == EndpointStatus.DELETING:
                    await self._traced_pass(endpoint, self._delete)
                    return
                try:
                    if endpoint.status != EndpointStatus.FAILED:
                        await self._traced_pass(endpoint, self._converge)
                except Exception:  # noqa: BLE001 - a bug must not kill the worker
                    log.exception("event=reconcile_error endpoint=%s", name)
                finally:
                    self._busy.discard(name)
        finally:
            self._busy.discard(name)
            if self._workers.get(name) is asyncio.current_task():
                del self._workers[name]

    async def _traced_pass(self, endpoint: EndpointRecord, step) -> None:
        """`step(endpoint)`, inside a ``mve.reconcile`` span when tracing (see the module docstring)."""
        if self._tracer is None:
            await step(endpoint)
            return
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        kicks = [k for k in self._kicked_by.pop(endpoint.name, ()) if k.is_valid]
        parent = trace.set_span_in_context(trace.NonRecordingSpan(kicks[0])) if kicks else otel_context.Context()
        with self._tracer.start_as_current_span(
            "mve.reconcile",
            context=parent,
            links=[trace.Link(k) for k in kicks[1:]],
            attributes={"mve.endpoint": endpoint.name, "mve.endpoint_status": endpoint.status},
        ):
            await step(endpoint)

    async def _converge(self, endpoint: EndpointRecord) -> None:
        config = self._store.get_config(endpoint.config_name)
        if config is None:
            self._fail(endpoint.name, f"Endpoint config {endpoint.config_name!r} of this endpoint no longer exists.")
            return
        instances = self._store.list_instances(endpoint.name)
        condemned = self._condemned_of(endpoint.name, instances)
        launches: list[VariantSpec] = []
        surplus: list[InstanceRecord] = []
        outliers: list[InstanceRecord] = []
        for state in endpoint.variants:
            spec = config.variant(state.variant_name)
            live = [
                i for i in instances
                if i.variant_name == state.variant_name and i.serves(endpoint.config_name)
                and i.status != InstanceStatus.STOPPING
            ]
            # An outlier being replaced counts as missing; it keeps serving until its replacement is ready.
            outliers += [i for i in live if i.instance_id in condemned]
            live = [i for i in live if i.instance_id not in condemned]
            missing = state.desired_instance_count - len(live)
            if missing > 0 and spec is not None:
                launches += [spec] * missing
            elif missing < 0:
                surplus += live[missing:]
        if surplus:
            await self._scale_in(endpoint.name, surplus)
        errors = await self._launch_all(endpoint.name, launches, endpoint.config_name) if launches else []
        if errors:
            await self._launch_failed(endpoint.name, errors)
        else:
            if outliers:
                await self._retire_outliers(endpoint.name, outliers)
            self._retries.pop(endpoint.name, None)
            self._settle(endpoint.name)

    def _condemned_of(self, name: str, instances: list[InstanceRecord]) -> set[str]:
        """The endpoint's instances being replaced as outliers, forgetting those already gone."""
        condemned = self._condemned.get(name)
        if not condemned:
            return set()
        condemned &= {i.instance_id for i in instances}
        if not condemned:
            del self._condemned[name]
        return set(condemned)

    async def _retire_outliers(self, name: str, outliers: list[InstanceRecord]) -> None:
        """Their replacements are ready: out of the routing table, drain, stop."""
        await self._scale_in(name, outliers)
        for record in outliers:
            self._condemned.get(name, set()).discard(record.instance_id)
            log.warning(
                "event=instance_replaced endpoint=%s variant=%s instance=%s pid=%d reason=outlier",
                name, record.variant_name, record.instance_id, record.pid,
            )
        if not self._condemned.get(name, True):
            del self._condemned[name]

    async def launch_instances(self, name: str, launches: list[VariantSpec], config_name: str) -> list[BaseException]:
        """Start instances of `config_name`'s variants concurrently (each within its startup timeout).

        The first failure cancels and stops the others; returns the failures (empty: all ready).
        """
        return await self._launch_all(name, launches, config_name)

    async def stop_instances(self, name: str, victims: list[InstanceRecord]) -> None:
        """Take instances out of the routing table, let their requests finish (drain), stop them."""
        await self._scale_in(name, victims)

    async def _launch_all(self, name: str, launches: list[VariantSpec], config_name: str) -> list[BaseException]:
        """Start instances concurrently; the first failure cancels (and stops) the others."""
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._launch(name, spec, config_name)) for spec in launches]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        errors = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
        cancelled = len(pending)
        if errors and cancelled:
            log.info("event=launches_cancelled endpoint=%s count=%d reason=first_failure", name, cancelled)
        return errors

    def _settle(self, name: str) -> None:
        endpoint = self._store.get_endpoint(name)
        if endpoint is None or endpoint.status not in _SETTLING or self.is_deploying(name):
            return
        if self._wake[name].is_set():
            return  # something changed meanwhile; the next pass settles
        counts = self._live_counts(name)
        if any(counts.get(v.variant_name, 0) != v.desired_instance_count for v in endpoint.variants):
            return
        endpoint.status = EndpointStatus.IN_SERVICE
        endpoint.last_modified_time = self._clock()
        for variant in endpoint.variants:
            variant.current_weight = variant.desired_weight
            variant.status = ""
            variant.status_message = ""
        self._store.save_endpoint(endpoint)
        self._routes.publish()
        log.info("event=endpoint_in_service endpoint=%s", name)

    async def _launch_failed(self, name: str, errors: list[BaseException]) -> None:
        reason = str(errors[0])
        if len(errors) > 1:
            reason += f" (and {len(errors) - 1} more instance(s) failed)"
        endpoint = self._store.get_endpoint(name)
        if endpoint is None:
            return
        if endpoint.status == EndpointStatus.CREATING:
            await self._stop_endpoint_processes(name)
            self._fail(name, reason)
        elif endpoint.status in (EndpointStatus.UPDATING, EndpointStatus.SYSTEM_UPDATING) and not self.is_deploying(name):
            counts = self._live_counts(name)
            for variant in endpoint.variants:
                variant.desired_instance_count = counts.get(variant.variant_name, 0) or variant.desired_instance_count
                variant.current_weight = variant.desired_weight
                variant.status = ""
                variant.status_message = ""
            endpoint.status = EndpointStatus.IN_SERVICE
            endpoint.failure_reason = f"Update failed, instance counts restored: {reason}"
            endpoint.last_modified_time = self._clock()
            self._store.save_endpoint(endpoint)
            self._routes.publish()
            log.warning("event=update_failed endpoint=%s reason=%r", name, reason)
        else:
            attempt = self._retries.get(name, 0)
            self._retries[name] = attempt + 1
            delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
            log.warning("event=replacement_failed endpoint=%s retry_in_s=%g reason=%r", name, delay, reason)
            asyncio.get_running_loop().call_later(delay, self.kick, name)

    def _fail(self, name: str, reason: str) -> None:
        endpoint = self._store.get_endpoint(name)
        if endpoint is None:
            return
        endpoint.status = EndpointStatus.FAILED
        endpoint.failure_reason = reason
        endpoint.last_modified_time = self._clock()
        for variant in endpoint.variants:
            variant.status = ""
            variant.status_message = ""
        self._store.save_endpoint(endpoint)
        self._routes.publish()
        log.warning("event=endpoint_failed endpoint=%s reason=%r", name, reason)

    # ------------------------------------------------------------ instances

    def _launch_spec(self, endpoint_name: str, spec: VariantSpec, instance_id: str) -> LaunchSpec:
        model = self._store.get_model(spec.model_name)
        if model is None:
            raise InstanceStartError(f"variant {spec.variant_name}: model {spec.model_name!r} no longer exists")
        resources = resolve_instance_type(spec.instance_type)
        threads = instance_threads(resources.threads, self._cores, self._instances_on_machine())
        return LaunchSpec(
            endpoint_name=endpoint_name,
            variant_name=spec.variant_name,
            instance_id=instance_id,
            artifact_path=model.artifact_path,
            model_name=spec.model_name,
            device=resources.device,
            threads=threads,
            environment=dict(model.environment),
        )

    def _instances_on_machine(self) -> int:
        """Model servers this control plane runs or is about to: the larger of desired and recorded."""
        desired = sum(
            variant.desired_instance_count
            for endpoint in self._store.list_endpoints()
            if endpoint.status not in (EndpointStatus.FAILED, EndpointStatus.DELETING)
            for variant in endpoint.variants
        )
        return max(desired, len(self._store.list_instances()) + 1)

    async def _launch(self, endpoint_name: str, spec: VariantSpec, config_name: str) -> str:
        instance_id = f"{spec.variant_name}-{secrets.token_hex(3)}"
        if self._tracer is None:
            return await self._start_instance(endpoint_name, spec, instance_id, config_name)
        with self._tracer.start_as_current_span(
            "mve.launch_instance",
            attributes={
                "mve.endpoint": endpoint_name,
                "mve.variant": spec.variant_name,
                "mve.instance": instance_id,
                "mve.model": spec.model_name,
                "mve.instance_type": spec.instance_type,
            },
        ):
            return await self._start_instance(endpoint_name, spec, instance_id, config_name)

    async def _start_instance(self, endpoint_name: str, spec: VariantSpec, instance_id: str, config_name: str) -> str:
        launch = self._launch_spec(endpoint_name, spec, instance_id)
        handle = await self._provider.spawn(launch)
        record = InstanceRecord(
            endpoint_name=endpoint_name,
            variant_name=spec.variant_name,
            instance_id=instance_id,
            pid=handle.pid,
            address="",
            status=InstanceStatus.STARTING,
            started_at=self._clock(),
            log_path=str(handle.log_path),
            config_name=config_name,
        )
        self._store.put_instance(record)
        try:
            record.address = await self._provider.wait_ready(handle, spec.startup_health_check_timeout_s)
        except BaseException:
            await asyncio.shield(self._provider.stop(handle, grace_s=2.0))
            self._store.delete_instance(endpoint_name, instance_id)
            raise
        record.status = InstanceStatus.IN_SERVICE
        if self._tracer is not None:
            from opentelemetry import trace

            trace.get_current_span().set_attributes({"mve.instance_address": record.address, "mve.pid": handle.pid})
        self._store.put_instance(record)
        self._routes.publish()
        log.info(
            "event=instance_ready endpoint=%s variant=%s instance=%s pid=%d address=%s",
            endpoint_name, spec.variant_name, instance_id, handle.pid, record.address,
        )
        return instance_id

    async def _scale_in(self, name: str, victims: list[InstanceRecord]) -> None:
        for record in victims:
            record.status = InstanceStatus.STOPPING
            self._store.put_instance(record)
        self._routes.publish()
        if self._drain_s > 0:
            await asyncio.sleep(self._drain_s)
        await asyncio.gather(*(self._stop_instance(record) for record in victims))
        self._routes.publish()

    async def _stop_instance(self, record: InstanceRecord) -> None:
        if self._tracer is None:
            await self._stop_instance_now(record)
            return
        with self._tracer.start_as_current_span(
            "mve.stop_instance",
            attributes={
                "mve.endpoint": record.endpoint_name,
                "mve.variant": record.variant_name,
                "mve.instance": record.instance_id,
            },
        ):
            await self._stop_instance_now(record)

    async def _stop_instance_now(self, record: InstanceRecord) -> None:
        handle = self._provider.get(record.instance_id)
        if handle is not None:
            await self._provider.stop(handle)
        else:
            _kill_stray(record)
        self._store.delete_instance(record.endpoint_name, record.instance_id)

    async def _stop_endpoint_processes(self, name: str) -> None:
        await self._provider.stop_all(name)
        for record in self._store.list_instances(name):
            _kill_stray(record)
            self._store.delete_instance(name, record.instance_id)

    async def _delete(self, endpoint: EndpointRecord) -> None:
        # The endpoint left the routing table when it became Deleting: requests already sent finish.
        if self._drain_s > 0:
            await asyncio.sleep(self._drain_s)
        await self._stop_endpoint_processes(endpoint.name)
        self._store.delete_endpoint(endpoint.name)
        self._retries.pop(endpoint.name, None)
        self._condemned.pop(endpoint.name, None)
        self._routes.publish()
        log.info("event=endpoint_deleted endpoint=%s", endpoint.name)

    def _instance_exited(self, handle: ModelServerProcess) -> None:
        if not handle.ready or self._closing:
            return  # a starting instance's failure is reported by its launch
        name = handle.spec.endpoint_name
        self._store.delete_instance(name, handle.spec.instance_id)
        self._routes.publish()
        log.warning(
            "event=instance_lost endpoint=%s variant=%s instance=%s code=%s action=replace",
            name, handle.spec.variant_name, handle.spec.instance_id, handle.returncode,
        )
        self.kick(name)

    def _live_counts(self, name: str, config_name: str | None = None) -> dict[str, int]:
        if config_name is None:
            endpoint = self._store.get_endpoint(name)
            config_name = endpoint.config_name if endpoint is not None else ""
        counts: dict[str, int] = {}
        for record in self._store.list_instances(name):
            if record.status == InstanceStatus.IN_SERVICE and record.serves(config_name):
                counts[record.variant_name] = counts.get(record.variant_name, 0) + 1
        return counts

    def current_instance_counts(self, name: str, config_name: str | None = None) -> dict[str, int]:
        """InService instances per variant of an endpoint's config (default: the one it serves)."""
        return self._live_counts(name, config_name)


def _left_by_an_update(record: InstanceRecord, serving_config: str) -> bool:
    """A live model server of a config the endpoint does not serve (an update's other fleet)."""
    return (
        record.config_name != ""
        and not record.serves(serving_config)
        and record.status == InstanceStatus.IN_SERVICE
        and pid_is_model_server(record.pid)
    )


def _terminate_stray(record: InstanceRecord) -> None:
    """SIGTERM a recorded model server no provider handle owns: it finishes its requests and exits."""
    if pid_is_model_server(record.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(record.pid, signal.SIGTERM)


def _kill_stray(record: InstanceRecord) -> None:
    """SIGKILL a recorded model server no provider handle owns (left over from a crash)."""
    if pid_is_model_server(record.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(record.pid, signal.SIGKILL)
