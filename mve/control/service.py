"""The control plane's API as domain calls: models, endpoint configs, endpoints, stats.

`ControlService` validates (SageMaker's rules), writes the store, publishes routing tables and
asks the reconciler to act. It knows nothing about protobuf; `servicer` does the converting.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from mve.control.alarms import AlarmBook
from mve.control.artifacts import ArtifactStore
from mve.control.deployments import (
    RETAINABLE,
    DeploymentRunner,
    green_variants,
    parse_deployment_config,
    traffic_steps,
)
from mve.control.metric_catalog import check_report_counts, report_samples, variant_dimensions
from mve.control.metric_store import MetricStore
from mve.control.reconciler import Reconciler
from mve.control.records import (
    DeploymentPhase,
    DeploymentRecord,
    EndpointConfigRecord,
    EndpointRecord,
    EndpointStatus,
    ModelRecord,
    VariantSpec,
    VariantState,
    WeightChange,
    WeightChangeSource,
)
from mve.control.routes import RoutePublisher
from mve.control.store import Store
from mve.control.validation import (
    Limits,
    ListQuery,
    check_batchable,
    validate_data_capture,
    validate_instance_count,
    validate_model_data_url,
    validate_name,
    validate_variant_set,
    validate_weight,
    validate_weight_sum,
)
from mve.errors import NotFound, ResourceAlreadyExists, ResourceInUse, ValidationError

log = logging.getLogger(__name__)

ARN_PREFIX = "arn:mve:sagemaker:local:000000000000"
SUPPORTED_IMAGES = ("onnxruntime",)
DEFAULT_IMAGE = "onnxruntime"
MAX_TAGS = 50
AUTOMATIC_CHANGES_SHOWN = 20  # DescribeEndpoint's AutomaticWeightChanges
MAX_REASON_LENGTH = 4096
MAX_EJECTED_PER_VARIANT = 1000  # ReportStats: instance ids one variant's stats may name as ejected

T = TypeVar("T")


def arn(kind: str, name: str) -> str:
    """A SageMaker-style ARN; like SageMaker, the name part is lower-cased."""
    return f"{ARN_PREFIX}:{kind}/{name.lower()}"


@dataclass(frozen=True)
class WeightAndCapacity:
    """One entry of UpdateEndpointWeightsAndCapacities (None: leave unchanged)."""

    variant_name: str
    desired_weight: float | None = None
    desired_instance_count: int | None = None


def _validate_tags(tags: dict[str, str]) -> dict[str, str]:
    if len(tags) > MAX_TAGS:
        raise ValidationError(f"At most {MAX_TAGS} tags are allowed, got {len(tags)}.")
    for key, value in tags.items():
        if not 1 <= len(key) <= 128 or len(value) > 256:
            raise ValidationError(f"Tag {key!r}: keys must be 1-128 characters and values at most 256.")
    return tags


_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,1023}$")
MAX_ENVIRONMENT = 100


def _validate_environment(environment: dict[str, str]) -> dict[str, str]:
    if len(environment) > MAX_ENVIRONMENT:
        raise ValidationError(f"PrimaryContainer.Environment may hold at most {MAX_ENVIRONMENT} variables.")
    for key, value in environment.items():
        if not _ENV_KEY.match(key) or len(value) > 1024:
            raise ValidationError(
                f"Environment variable {key!r} is invalid: names are letters, digits and _ (not starting with a "
                "digit), values at most 1024 characters."
            )
    return environment


def _page(items: list[T], query: ListQuery, name: Callable[[T], str], created: Callable[[T], float]) -> tuple[list[T], str]:
    chosen = [i for i in items if query.name_contains.lower() in name(i).lower()]
    key = (lambda i: name(i)) if query.sort_by == "Name" else (lambda i: (created(i), name(i)))
    chosen.sort(key=key, reverse=query.sort_order == "Descending")
    page = chosen[query.offset : query.offset + query.max_results]
    end = query.offset + len(page)
    return page, (str(end) if end < len(chosen) else "")


class ControlService:
    """SageMaker's control API over one store, one artifact store, one reconciler."""

    def __init__(
        self,
        store: Store,
        artifacts: ArtifactStore,
        routes: RoutePublisher,
        reconciler: Reconciler,
        limits: Limits = Limits(),
        clock: Callable[[], float] = time.time,
        metrics: MetricStore | None = None,
        alarms: AlarmBook | None = None,
        deployments: DeploymentRunner | None = None,
    ):
        self.store = store
        self.artifacts = artifacts
        self.routes = routes
        self.reconciler = reconciler
        self.limits = limits
        self._clock = clock
        self.metrics = metrics
        self.alarms = alarms
        self.deployments = deployments
        self.autoscaler = None  # set by the server: scalable targets bound manual instance counts

    # ------------------------------------------------------------ models

    async def create_model(
        self, name: str, image: str, model_data_url: str, environment: dict[str, str], tags: dict[str, str]
    ) -> ModelRecord:
        """Copy the artifact into the store, inspect it, and register the model.

        Copying and loading a model can take seconds, so it runs in a worker thread; the event loop
        keeps serving routes and watching instances meanwhile.
        """
        validate_name(name, "ModelName")
        image = image or DEFAULT_IMAGE
        if image not in SUPPORTED_IMAGES:
            raise ValidationError(f"Image {image!r} is not supported: mve runs {', '.join(SUPPORTED_IMAGES)}.")
        _validate_tags(tags)
        _validate_environment(environment)
        if self.store.get_model(name) is not None:
            raise ResourceAlreadyExists(f'Cannot create already existing model "{arn("model", name)}".')
        path = validate_model_data_url(model_data_url)
        artifact = await asyncio.to_thread(self.artifacts.put, path)
        model = ModelRecord(
            name=name,
            arn=arn("model", name),
            image=image,
            model_data_url=model_data_url,
            environment=dict(environment),
            artifact_path=str(artifact.path),
            artifact_sha256=artifact.sha256,
            artifact_size_bytes=artifact.size_bytes,
            inputs=artifact.inputs,
            outputs=artifact.outputs,
            creation_time=self._clock(),
            tags=dict(tags),
        )
        self.store.insert_model(model)
        log.info("event=model_created model=%s sha256=%s bytes=%d", name, artifact.sha256, artifact.size_bytes)
        return model

    def describe_model(self, name: str) -> ModelRecord:
        """The model called `name`, or NotFound (SageMaker's ValidationException 'Could not find model')."""
        model = self.store.get_model(name)
        if model is None:
            raise NotFound(f'Could not find model "{arn("model", name)}".')
        return model

    def list_models(self, query: ListQuery) -> tuple[list[ModelRecord], str]:
        """A page of models and the next token ("" at the end)."""
        return _page(self.store.list_models(), query, lambda m: m.name, lambda m: m.creation_time)

    def delete_model(self, name: str) -> None:
        """Delete a model no endpoint config uses."""
        model = self.describe_model(name)
        users = self.store.configs_using_model(name)
        if users:
            raise ResourceInUse(f"Cannot delete model {name!r}: it is used by endpoint config(s) {', '.join(users)}.")
        self.store.delete_model(name)
        self.artifacts.remove_unused(model.artifact_sha256, self.store.artifact_in_use(model.artifact_sha256))
        log.info("event=model_deleted model=%s", name)

    # ------------------------------------------------------------ endpoint configs

    def create_endpoint_config(
        self,
        name: str,
        variants: Sequence[VariantSpec],
        data_capture: dict | None,
        tags: dict[str, str],
        shadow_variants: Sequence[VariantSpec] = (),
    ) -> EndpointConfigRecord:
        """Register an immutable endpoint config whose variants are valid and whose models exist.

        `data_capture` is a DataCaptureConfig with proto field names as keys (None or {}: none);
        `shadow_variants` are validated like production variants (mve allows several of each, 10 in all).
        """
        validate_name(name, "EndpointConfigName")
        _validate_tags(tags)
        validate_variant_set(list(variants), list(shadow_variants))
        for variant in [*variants, *shadow_variants]:
            self._check_variant_model(variant)
        capture = validate_data_capture(data_capture or None)
        config = EndpointConfigRecord(
            name=name,
            arn=arn("endpoint-config", name),
            production_variants=list(variants),
            data_capture=capture,
            creation_time=self._clock(),
            tags=dict(tags),
            shadow_variants=list(shadow_variants),
        )
        self.store.insert_config(config)
        log.info(
            "event=endpoint_config_created endpoint_config=%s variants=%d shadow_variants=%d capture=%s",
            name, len(variants), len(shadow_variants), capture.get("enable_capture", False),
        )
        return config

    def _check_variant_model(self, variant: VariantSpec) -> None:
        """The variant's model exists and, with batching on, has a batch dimension everywhere."""
        model = self.store.get_model(variant.model_name)
        if model is None:
            raise NotFound(
                f'Could not find model "{arn("model", variant.model_name)}" (variant {variant.variant_name!r}).'
            )
        check_batchable(
            variant.batching,
            variant.variant_name,
            model.name,
            [("input", spec) for spec in model.inputs] + [("output", spec) for spec in model.outputs],
        )

    def describe_endpoint_config(self, name: str) -> EndpointConfigRecord:
        """The endpoint config called `name`, or NotFound ('Could not find endpoint configuration')."""
        config = self.store.get_config(name)
        if config is None:
            raise NotFound(f'Could not find endpoint configuration "{arn("endpoint-config", name)}".')
        return config

    def list_endpoint_configs(self, query: ListQuery) -> tuple[list[EndpointConfigRecord], str]:
        """A page of endpoint configs and the next token."""
        return _page(self.store.list_configs(), query, lambda c: c.name, lambda c: c.creation_time)

    def delete_endpoint_config(self, name: str) -> None:
        """Delete an endpoint config no endpoint runs."""
        self.describe_endpoint_config(name)
        users = self.store.endpoints_using_config(name)
        if users:
            raise ResourceInUse(
                f"Cannot delete endpoint configuration {name!r}: it is used by endpoint(s) {', '.join(users)}."
            )
        self.store.delete_config(name)
        log.info("event=endpoint_config_deleted endpoint_config=%s", name)

    # ------------------------------------------------------------ endpoints

    def create_endpoint(self, name: str, config_name: str, tags: dict[str, str]) -> EndpointRecord:
        """Register the endpoint as Creating and hand it to the reconciler; returns at once."""
        validate_name(name, "EndpointName")
        validate_name(config_name, "EndpointConfigName")
        _validate_tags(tags)
        config = self.describe_endpoint_config(config_name)
        now = self._clock()
        endpoint = EndpointRecord(
            name=name,
            arn=arn("endpoint", name),
            config_name=config_name,
            status=EndpointStatus.CREATING,
            failure_reason="",
            creation_time=now,
            last_modified_time=now,
            variants=[
                VariantState(
                    variant_name=v.variant_name,
                    desired_weight=v.initial_variant_weight,
                    current_weight=v.initial_variant_weight,
                    desired_instance_count=v.initial_instance_count,
                    status="Creating",
                    status_since=now,
                    shadow=config.is_shadow(v.variant_name),
                )
                for v in config.all_variants
            ],
            tags=dict(tags),
        )
        self.store.insert_endpoint(endpoint)
        self.store.record_weight_change(
            name, now, WeightChangeSource.CREATE, endpoint.production_weights(),
            f"CreateEndpoint with endpoint config {config_name}",
        )
        log.info("event=endpoint_creating endpoint=%s endpoint_config=%s", name, config_name)
        self.reconciler.kick(name)
        return endpoint

    def describe_endpoint(self, name: str) -> tuple[EndpointRecord, dict[str, int]]:
        """The endpoint and its InService instances per variant, or NotFound ('Could not find endpoint')."""
        endpoint = self.store.get_endpoint(name)
        if endpoint is None:
            raise NotFound(f'Could not find endpoint "{arn("endpoint", name)}".')
        return endpoint, self.reconciler.current_instance_counts(name)

    def endpoint_images(self, endpoint: EndpointRecord) -> dict[str, str]:
        """The image each (production or shadow) variant runs (for DeployedImages)."""
        config = self.store.get_config(endpoint.config_name)
        images: dict[str, str] = {}
        for variant in config.all_variants if config else []:
            model = self.store.get_model(variant.model_name)
            images[variant.variant_name] = model.image if model else DEFAULT_IMAGE
        return images

    def data_capture_of(self, endpoint: EndpointRecord) -> dict:
        """The DataCaptureConfig the endpoint applies ({} when it has none)."""
        return endpoint.data_capture_in_effect(self.store.get_config(endpoint.config_name))

    def automatic_weight_changes(self, name: str, limit: int = AUTOMATIC_CHANGES_SHOWN) -> list[WeightChange]:
        """The endpoint's newest weight changes made by the control plane itself (a bandit), newest first."""
        return self.store.weight_changes(name, limit=limit, automatic_only=True, newest_first=True)

    def list_endpoints(self, query: ListQuery) -> tuple[list[EndpointRecord], str]:
        """A page of endpoints and the next token."""
        endpoints = self.store.list_endpoints()
        if query.status_equals:
            endpoints = [e for e in endpoints if e.status == query.status_equals]
        return _page(endpoints, query, lambda e: e.name, lambda e: e.creation_time)

    def update_endpoint(
        self,
        name: str,
        config_name: str,
        *,
        deployment_config: dict | None = None,
        retain_all_variant_properties: bool = False,
        exclude_retained: Sequence[str] = (),
        retain_deployment_config: bool = False,
    ) -> EndpointRecord:
        """Start moving an InService endpoint to another endpoint config (`mve.control.deployments`).

        Returns at once with the endpoint Updating; DescribeEndpoint shows the progress. The new
        config's shadow variants start with its production variants; until the update finishes the
        endpoint keeps its old shadows and data capture. With RetainAllVariantProperties the endpoint
        keeps its DataCaptureConfig too, unless ExcludeRetainedVariantProperties names it.
        """
        validate_name(name, "EndpointName")
        validate_name(config_name, "EndpointConfigName")
        endpoint, _ = self.describe_endpoint(name)
        self._refuse_during_update(endpoint)
        if endpoint.status != EndpointStatus.IN_SERVICE:
            raise ValidationError(f'Cannot update in-progress endpoint "{endpoint.arn}" (status {endpoint.status}).')
        config = self.describe_endpoint_config(config_name)
        if config_name == endpoint.config_name:
            raise ValidationError(
                f"Endpoint {name} already runs endpoint config {config_name}; create a new endpoint config to deploy."
            )
        if self.deployments is None:
            raise ValidationError("UpdateEndpoint is not available on this control plane.")
        for item in exclude_retained:
            if item not in RETAINABLE:
                raise ValidationError(
                    f"ExcludeRetainedVariantProperties takes {', '.join(RETAINABLE)}; got {item!r}."
                )
        if exclude_retained and not retain_all_variant_properties:
            raise ValidationError("ExcludeRetainedVariantProperties needs RetainAllVariantProperties=True.")
        given = deployment_config or None
        if given is None and retain_deployment_config:
            given = self.store.get_last_deployment_config(name)
        policy = parse_deployment_config(given, lambda alarm: self.alarms is not None and self.alarms.get(alarm) is not None)
        green = green_variants(endpoint, config, retain_all_variant_properties, tuple(exclude_retained))
        for variant in green:
            validate_instance_count(variant.instance_count, f"InstanceCount of variant {variant.variant_name}", self.limits)
        if policy.mode in ("CANARY", "LINEAR"):
            # refuses a canary above half the fleet (the production fleet: shadows take no traffic)
            traffic_steps(policy, sum(g.instance_count for g in green if not g.shadow))
        retain_capture = retain_all_variant_properties and "DataCaptureConfig" not in exclude_retained
        now = self._clock()
        endpoint.status = EndpointStatus.UPDATING
        endpoint.failure_reason = ""
        endpoint.last_modified_time = now
        self.store.save_endpoint(endpoint)
        self.deployments.start(
            DeploymentRecord(
                endpoint_name=name,
                old_config=endpoint.config_name,
                new_config=config_name,
                policy={**policy.as_record(), "given": given},
                green=green,
                phase=DeploymentPhase.CREATING,
                green_share=0.0,
                started_at=now,
                phase_since=now,
                data_capture=self.data_capture_of(endpoint) if retain_capture else None,
            )
        )
        log.info("event=endpoint_updating endpoint=%s from=%s to=%s", name, endpoint.config_name, config_name)
        return endpoint

    def _within_scaling_range(self, name: str, change: WeightAndCapacity) -> WeightAndCapacity:
        """A count clamped to the variant's registered autoscaling range (Application Auto Scaling's rule)."""
        bounds = self.autoscaler.capacity_range(name, change.variant_name) if self.autoscaler is not None else None
        if bounds is None or change.desired_instance_count is None:
            return change
        clamped = min(max(change.desired_instance_count, bounds[0]), bounds[1])
        if clamped != change.desired_instance_count:
            log.info(
                "event=instance_count_clamped endpoint=%s variant=%s asked=%d min=%d max=%d",
                name, change.variant_name, change.desired_instance_count, bounds[0], bounds[1],
            )
        return WeightAndCapacity(change.variant_name, change.desired_weight, clamped)

    def _refuse_during_update(self, endpoint: EndpointRecord) -> None:
        deployment = self.store.get_deployment(endpoint.name)
        if deployment is not None:
            raise ValidationError(
                f'Cannot update endpoint "{endpoint.arn}": the update to endpoint config {deployment.new_config} '
                f"is in progress ({deployment.phase})."
            )

    def deployment_of(self, name: str) -> DeploymentRecord | None:
        """The endpoint's update in progress, or None."""
        return self.store.get_deployment(name)

    def last_deployment_config(self, name: str) -> dict | None:
        """The DeploymentConfig of the endpoint's last finished update, as given."""
        return self.store.get_last_deployment_config(name)

    def update_weights_and_capacities(self, name: str, changes: Sequence[WeightAndCapacity]) -> EndpointRecord:
        """Change weights (routed at once) and/or instance counts of an InService endpoint."""
        validate_name(name, "EndpointName")
        endpoint, _ = self.describe_endpoint(name)
        self._refuse_during_update(endpoint)
        if endpoint.status != EndpointStatus.IN_SERVICE:
            raise ValidationError(f'Cannot update in-progress endpoint "{endpoint.arn}" (status {endpoint.status}).')
        if not changes:
            raise ValidationError("DesiredWeightsAndCapacities must name at least 1 variant.")
        if len(changes) > 10:
            raise ValidationError("DesiredWeightsAndCapacities may name at most 10 variants.")
        seen: set[str] = set()
        missing = [c.variant_name for c in changes if endpoint.variant(c.variant_name) is None]
        if missing:
            raise ValidationError(f"The variant(s) {missing} are not present in endpoint {name!r}.")
        for change in changes:
            if change.variant_name in seen:
                raise ValidationError(f"Variant {change.variant_name!r} appears more than once.")
            seen.add(change.variant_name)
            if change.desired_weight is None and change.desired_instance_count is None:
                raise ValidationError(
                    f"Variant {change.variant_name!r}: give DesiredWeight, DesiredInstanceCount or both."
                )
            if change.desired_weight is not None:
                validate_weight(change.desired_weight, f"DesiredWeight of variant {change.variant_name!r}")
            if change.desired_instance_count is not None:
                validate_instance_count(
                    change.desired_instance_count, f"DesiredInstanceCount of variant {change.variant_name!r}", self.limits
                )
        changes = [self._within_scaling_range(name, change) for change in changes]
        by_name = {c.variant_name: c for c in changes}
        before = endpoint.production_weights()
        validate_weight_sum(_weights_after(endpoint, {c.variant_name: c.desired_weight for c in changes}))
        now = self._clock()
        for variant in endpoint.variants:
            change = by_name.get(variant.variant_name)
            if change is None:
                continue
            if change.desired_weight is not None:
                variant.desired_weight = variant.current_weight = float(change.desired_weight)
            if change.desired_instance_count is not None:
                variant.desired_instance_count = change.desired_instance_count
            variant.status = "Updating"
            variant.status_since = now
        endpoint.status = EndpointStatus.UPDATING
        endpoint.failure_reason = ""
        endpoint.last_modified_time = now
        self.store.save_endpoint(endpoint)
        if endpoint.production_weights() != before:
            self.store.record_weight_change(
                name, now, WeightChangeSource.OPERATOR, endpoint.production_weights(), "UpdateEndpointWeightsAndCapacities"
            )
        self.routes.publish()
        log.info("event=endpoint_updating endpoint=%s changes=%s", name, [(c.variant_name, c.desired_weight, c.desired_instance_count) for c in changes])
        self.reconciler.kick(name)
        return endpoint

    def apply_automatic_weights(
        self, endpoint_name: str, weights: dict[str, float], source: str, reason: str
    ) -> EndpointRecord:
        """Set production weights chosen by the control plane itself (a bandit), routed at once.

        Only on an InService endpoint with no update in progress; `weights` names production
        variants only (the others keep their weight) and is checked like
        UpdateEndpointWeightsAndCapacities. Each weight becomes the variant's desired and current
        weight; the endpoint stays InService (no Updating step, as no instance changes), the change
        is recorded with `source` and `reason`, and the new routing table is published.
        """
        endpoint, _ = self.describe_endpoint(endpoint_name)
        self._refuse_during_update(endpoint)
        if endpoint.status != EndpointStatus.IN_SERVICE:
            raise ValidationError(
                f'Cannot change the weights of endpoint "{endpoint.arn}": it is {endpoint.status}, not InService.'
            )
        _check_automatic_source(source, reason)
        if not weights:
            raise ValidationError("Automatic weights must name at least 1 variant.")
        production = {v.variant_name for v in endpoint.production_variants}
        unknown = sorted(set(weights) - production)
        if unknown:
            raise ValidationError(
                f"Automatic weights may only name production variants of endpoint {endpoint_name!r}; "
                f"{unknown} are not among {sorted(production)}."
            )
        for variant_name, weight in weights.items():
            validate_weight(weight, f"DesiredWeight of variant {variant_name!r}")
        validate_weight_sum(_weights_after(endpoint, weights))
        now = self._clock()
        for variant in endpoint.production_variants:
            if variant.variant_name in weights:
                variant.desired_weight = variant.current_weight = float(weights[variant.variant_name])
        endpoint.last_modified_time = now
        self.store.save_endpoint(endpoint)
        self.store.record_weight_change(endpoint_name, now, source, endpoint.production_weights(), reason)
        self.routes.publish()
        log.info("event=automatic_weights endpoint=%s source=%s weights=%s", endpoint_name, source, endpoint.production_weights())
        return endpoint

    def delete_endpoint(self, name: str) -> None:
        """Mark the endpoint Deleting, take it out of routing, and let the reconciler stop it."""
        validate_name(name, "EndpointName")
        endpoint, _ = self.describe_endpoint(name)
        if self.deployments is not None and self.deployments.active(name):
            self.deployments.stop_running(name)
        if endpoint.status != EndpointStatus.DELETING:
            endpoint.status = EndpointStatus.DELETING
            endpoint.last_modified_time = self._clock()
            self.store.save_endpoint(endpoint)
            self.routes.publish()
            log.info("event=endpoint_deleting endpoint=%s", name)
        self.reconciler.kick(name, preempt=True)

    # ------------------------------------------------------------ proxies

    def report_stats(self, proxy_id: str, incarnation: str, sequence: int, interval_end: float, variants) -> bool:
        """Add a proxy's report (``VariantStats`` messages) to the metric store, exactly once, and
        tell the reconciler which instances the proxy holds ejected as outliers (it replaces one
        that stays ejected; see `Reconciler.note_ejected`).

        Returns False when this (incarnation, sequence) was applied before and so changed nothing.
        """
        if not 1 <= len(proxy_id) <= 256:
            raise ValidationError("ReportStats needs a proxy_id of 1-256 characters.")
        if not 1 <= len(incarnation) <= 64:
            raise ValidationError("ReportStats needs an incarnation of 1-64 characters.")
        if sequence < 1:
            raise ValidationError("ReportStats needs a sequence number of 1 or more.")
        if len(variants) > 10_000:
            raise ValidationError("A stats report may carry at most 10000 variants.")
        items = []
        for v in variants:
            validate_name(v.endpoint_name, "VariantStats.EndpointName")
            validate_name(v.variant_name, "VariantStats.VariantName")
            problem = check_report_counts(v)
            if problem:
                raise ValidationError(f"VariantStats of {v.endpoint_name}/{v.variant_name}: {problem}")
            if len(v.ejected_instance_ids) > MAX_EJECTED_PER_VARIANT or any(
                not 1 <= len(i) <= 256 for i in v.ejected_instance_ids
            ):
                raise ValidationError(
                    f"VariantStats of {v.endpoint_name}/{v.variant_name}: ejected_instance_ids holds at most "
                    f"{MAX_EJECTED_PER_VARIANT} ids of 1-256 characters"
                )
            dimensions = variant_dimensions(v.endpoint_name, v.variant_name)
            items.extend((spec, dimensions, samples) for spec, samples in report_samples(v))
        applied = True
        if self.metrics is not None:
            applied = self.metrics.apply_report(proxy_id, incarnation, sequence, interval_end, items)
        if applied:  # a report sent again says nothing new about ejections
            for v in variants:
                self.reconciler.note_ejected(v.endpoint_name, v.variant_name, v.ejected_instance_ids)
        return applied


def _weights_after(endpoint: EndpointRecord, changes: dict[str, float | None]) -> dict[str, float]:
    """The production weights once `changes` (None: unchanged) apply; shadows are not production."""
    return {
        v.variant_name: changes[v.variant_name] if changes.get(v.variant_name) is not None else v.desired_weight
        for v in endpoint.production_variants
    }


def _check_automatic_source(source: str, reason: str) -> None:
    """An automatic change names its source (not one of the manual ones) and a reason of sane length."""
    if not source or len(source) > 64:
        raise ValidationError("The source of an automatic weight change must be 1-64 characters (e.g. 'bandit').")
    if source in WeightChangeSource.MANUAL:
        raise ValidationError(
            f"Source {source!r} is reserved for CreateEndpoint, UpdateEndpointWeightsAndCapacities and UpdateEndpoint; "
            "an automatic weight change names its own source (e.g. 'bandit')."
        )
    if len(reason) > MAX_REASON_LENGTH:
        raise ValidationError(f"The reason of an automatic weight change must be at most {MAX_REASON_LENGTH} characters.")


__all__ = ["ControlService", "WeightAndCapacity", "arn"]
