"""Bandit policies: the control plane sets an endpoint's weights by Thompson sampling on rewards.

A policy (one per endpoint, kept in ``experiments.db``) is evaluated every `interval_s`:

1. the rewards of each production variant in the last `window_s`: captured records joined to
   feedback that carries a reward (this is why a policy needs data capture on);
2. until every variant has `min_rewards_per_variant`, nothing changes;
3. each variant's posterior: Beta(1 + successes, 1 + failures) when every reward is 0 or 1, else a
   normal posterior of the mean, N(mean, s²/n);
4. P(best) of each variant from `DRAWS` joint posterior draws;
5. the new weights: P(best), each raised to `exploration_floor` (the rest scaled to keep the sum
   1), then each moved at most `max_weight_change` from the current shares (keeping the floor);
6. applied through `ControlService.apply_automatic_weights` (recorded with source "bandit" and the
   evidence as the reason) only when some share moves by `MIN_CHANGE` or more.

The bandit decides shares (summing to 1) and writes them as weights scaled to the production
weights' current sum: SageMaker's weights are relative, so the split is the shares, and a shadow's
sampling fraction (its weight over that sum) stays what it was.
A policy is deleted with its endpoint; a restarted control plane resumes every policy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np

from mve.control.experiment_sources import EndpointView, ExperimentSources
from mve.control.experiments_db import ExperimentsDb
from mve.control.records import EndpointStatus
from mve.errors import MveError, ResourceNotFound, ValidationError

log = logging.getLogger(__name__)

SOURCE = "bandit"
DRAWS = 10_000
MIN_CHANGE = 0.01
TICK_S = 0.5
DEFAULTS = {
    "interval_s": 30,
    "exploration_floor": 0.05,
    "max_weight_change": 0.2,
    "min_rewards_per_variant": 20,
    "window_s": 3600,
}


@dataclass(frozen=True)
class BanditPolicy:
    """One endpoint's bandit policy and what its last evaluation did."""

    endpoint_name: str
    interval_s: int = 30
    exploration_floor: float | None = 0.05  # None: not given (the default applies)
    max_weight_change: float = 0.2
    min_rewards_per_variant: int = 20
    window_s: int = 3600
    creation_time: float = 0.0
    last_update_time: float = 0.0  # 0: the policy has not changed the weights yet
    last_evaluation: str = ""
    last_evaluated: float = 0.0


def validate_policy(policy: BanditPolicy, endpoint: EndpointView) -> BanditPolicy:
    """The policy with 0 fields set to their defaults, or ValidationError naming the field out of range."""
    # Fields without presence on the wire: 0 means "not given". ExplorationFloor has presence, so
    # an explicit 0 is kept and only None (not given) takes the default.
    values = {
        name: default if getattr(policy, name) is None or (name != "exploration_floor" and not getattr(policy, name))
        else getattr(policy, name)
        for name, default in DEFAULTS.items()
    }
    p = replace(policy, **values)
    if not 1 <= p.interval_s <= 3600:
        raise ValidationError(f"IntervalInSeconds must be 1-3600, got {p.interval_s}.")
    if not 0 <= p.exploration_floor <= 0.5:
        raise ValidationError(f"ExplorationFloor must be 0-0.5, got {p.exploration_floor}.")
    if not 0.01 <= p.max_weight_change <= 1:
        raise ValidationError(f"MaxWeightChange must be 0.01-1, got {p.max_weight_change}.")
    if not 1 <= p.min_rewards_per_variant <= 1_000_000:
        raise ValidationError(f"MinRewardsPerVariant must be 1-1000000, got {p.min_rewards_per_variant}.")
    if not 60 <= p.window_s <= 1_296_000:
        raise ValidationError(f"WindowInSeconds must be 60-1296000, got {p.window_s}.")
    variants = len(endpoint.production_variants)
    if variants < 2:
        raise ValidationError(f"Endpoint {endpoint.name} has {variants} production variant; a bandit needs at least 2 to choose from.")
    if p.exploration_floor * variants > 1 + 1e-9:
        raise ValidationError(
            f"ExplorationFloor {p.exploration_floor} x {variants} production variants is above 1; "
            f"the floor may be at most {1 / variants:.4g} here."
        )
    if not endpoint.capture_enabled:
        raise ValidationError(
            f"Endpoint {endpoint.name} does not capture data: a bandit joins rewards to variants through the "
            "captured record of each invocation (its inference id), so its endpoint config needs "
            "DataCaptureConfig with EnableCapture (output captured)."
        )
    return p


# ---------------------------------------------------------------- the decision


@dataclass(frozen=True)
class Decision:
    """What one evaluation concluded: new shares (None: no change) and why, in words."""

    weights: dict[str, float] | None
    summary: str
    p_best: dict[str, float] | None = None


def probability_best(rewards: list[np.ndarray], rng: np.random.Generator, draws: int = DRAWS) -> tuple[np.ndarray, str]:
    """P(best) of each arm from `draws` joint posterior draws, and the posterior's name."""
    everything = np.concatenate(rewards)
    if np.isin(everything, (0.0, 1.0)).all():
        samples = np.column_stack([rng.beta(1 + r.sum(), 1 + r.size - r.sum(), size=draws) for r in rewards])
        model = "Beta-Bernoulli"
    else:
        pooled = float(everything.std(ddof=1)) if everything.size > 1 else 1.0
        columns = []
        for r in rewards:
            sd = float(r.std(ddof=1)) if r.size > 1 else pooled
            columns.append(rng.normal(r.mean(), sd / np.sqrt(r.size), size=draws))
        samples = np.column_stack(columns)
        model = "normal"
    best = np.argmax(samples, axis=1)
    return np.bincount(best, minlength=len(rewards)) / draws, model


def floor_weights(p: np.ndarray, floor: float) -> np.ndarray:
    """`p` (summing to 1) with every entry at least `floor`, the others scaled down to keep the sum 1."""
    w = np.asarray(p, dtype=np.float64).copy()
    floored = np.zeros(w.size, dtype=bool)
    for _ in range(w.size):
        floored |= w < floor
        w[floored] = floor
        rest = ~floored
        budget = 1.0 - floor * floored.sum()
        total = w[rest].sum()
        w[rest] = w[rest] / total * budget if total > 0 else budget / max(rest.sum(), 1)
        if not (w[rest] < floor - 1e-12).any():
            break
    return w


def limit_step(target: np.ndarray, current: np.ndarray, max_change: float, floor: float) -> np.ndarray:
    """The weights nearest `target` (a common shift) that move each at most `max_change` from
    `current`, keep each at least `floor` where that is in reach, and sum to 1."""
    target, current = np.asarray(target, np.float64), np.asarray(current, np.float64)
    high = np.minimum(current + max_change, 1.0)
    low = np.minimum(np.maximum(current - max_change, floor), high)
    lo_shift, hi_shift = -1.0, 1.0
    for _ in range(100):
        shift = (lo_shift + hi_shift) / 2
        if np.clip(target + shift, low, high).sum() > 1.0:
            hi_shift = shift
        else:
            lo_shift = shift
    w = np.clip(target + (lo_shift + hi_shift) / 2, low, high)
    return w / w.sum()


def decide(
    policy: BanditPolicy, variants: tuple[str, ...], current: dict[str, float], rewards: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> Decision:
    """One evaluation of `policy` on the rewards of each production variant in its window."""
    counts = {v: rewards.get(v, np.zeros(0)).size for v in variants}
    short = [v for v in variants if counts[v] < policy.min_rewards_per_variant]
    if short:
        have = ", ".join(f"{v} {counts[v]}/{policy.min_rewards_per_variant}" for v in variants)
        return Decision(None, f"waiting for rewards in the last {policy.window_s} s: {have}; the weights stay as they are")
    arms = [np.asarray(rewards[v], dtype=np.float64) for v in variants]
    p_best, model = probability_best(arms, rng)
    floor = min(policy.exploration_floor, 1.0 / len(variants))
    now = np.array([current.get(v, 0.0) for v in variants])
    now = now / now.sum() if now.sum() > 0 else np.full(len(variants), 1.0 / len(variants))
    new = limit_step(floor_weights(p_best, floor), now, policy.max_weight_change, floor)
    evidence = ", ".join(
        f"{v} {p:.3f} (n={a.size}, mean {a.mean():.4g})" for v, p, a in zip(variants, p_best, arms)
    )
    moves = ", ".join(f"{v} {a:.3f}->{b:.3f}" for v, a, b in zip(variants, now, new))
    summary = (
        f"Thompson sampling ({model}) on {sum(a.size for a in arms)} rewards of the last {policy.window_s} s: "
        f"P(best) {evidence}; shares {moves} (floor {floor:g}, max change {policy.max_weight_change:g})"
    )
    if np.abs(new - now).max() < MIN_CHANGE:
        return Decision(None, summary + f"; no weight moves by {MIN_CHANGE} or more, nothing changed", dict(zip(variants, p_best)))
    return Decision({v: float(w) for v, w in zip(variants, new)}, summary, dict(zip(variants, p_best)))


# ---------------------------------------------------------------- storage


class BanditStore:
    """Policies in `ExperimentsDb` (call from worker threads)."""

    def __init__(self, db: ExperimentsDb):
        self.db = db

    def put(self, policy: BanditPolicy) -> None:
        """Insert or replace the endpoint's policy."""
        self.db.connection().execute(
            "INSERT OR REPLACE INTO bandit_policies (endpoint, body) VALUES (?, ?)",
            (policy.endpoint_name, json.dumps(asdict(policy))),
        )

    def get(self, endpoint_name: str) -> BanditPolicy | None:
        """The endpoint's policy, or None."""
        row = self.db.connection().execute("SELECT body FROM bandit_policies WHERE endpoint=?", (endpoint_name,)).fetchone()
        return BanditPolicy(**json.loads(row[0])) if row else None

    def list(self) -> list[BanditPolicy]:
        """Every policy."""
        return [BanditPolicy(**json.loads(r[0])) for r in self.db.connection().execute("SELECT body FROM bandit_policies ORDER BY endpoint")]

    def delete(self, endpoint_name: str) -> bool:
        """Delete the endpoint's policy; False when there was none."""
        return self.db.connection().execute("DELETE FROM bandit_policies WHERE endpoint=?", (endpoint_name,)).rowcount > 0

    def rewards(self, endpoint_name: str, since: float) -> dict[str, np.ndarray]:
        """variant -> the rewards of its captured invocations since `since`, in time order."""
        rows = self.db.connection().execute(
            "SELECT c.variant, f.reward FROM captured c JOIN feedback f "
            "ON f.endpoint = c.endpoint AND f.inference_id = c.inference_id "
            "WHERE c.endpoint = ? AND c.time >= ? AND f.reward IS NOT NULL ORDER BY c.time, c.id",
            (endpoint_name, since),
        ).fetchall()
        out: dict[str, list[float]] = {}
        for variant, reward in rows:
            out.setdefault(variant, []).append(reward)
        return {v: np.asarray(r, dtype=np.float64) for v, r in out.items()}


def _not_found(endpoint_name: str) -> ResourceNotFound:
    return ResourceNotFound(f"Endpoint {endpoint_name} has no bandit policy.")


class Bandit:
    """The bandit API (Put/Describe/Delete) and the loop that evaluates every policy."""

    def __init__(
        self, db: ExperimentsDb, sources: ExperimentSources, *, clock: Callable[[], float] = time.time,
        rng: np.random.Generator | None = None,
    ):
        self.store = BanditStore(db)
        self.sources = sources
        self._clock = clock
        self._rng = rng if rng is not None else np.random.default_rng()

    # ------------------------------------------------------------ API (on the event loop)

    async def put(self, policy: BanditPolicy) -> BanditPolicy:
        """Validate and store the endpoint's policy (replacing one it had)."""
        endpoint = self.sources.require_endpoint(policy.endpoint_name)
        policy = validate_policy(policy, endpoint)
        existing = await asyncio.to_thread(self.store.get, policy.endpoint_name)
        now = self._clock()
        policy = replace(
            policy,
            creation_time=existing.creation_time if existing else now,
            last_update_time=existing.last_update_time if existing else 0.0,
            last_evaluation=existing.last_evaluation if existing else "not evaluated yet",
            last_evaluated=existing.last_evaluated if existing else 0.0,
        )
        await asyncio.to_thread(self.store.put, policy)
        log.info("event=bandit_policy_put endpoint=%s policy=%s", policy.endpoint_name, asdict(policy))
        return policy

    async def describe(self, endpoint_name: str) -> BanditPolicy:
        """The endpoint's policy; ValidationError without the endpoint, ResourceNotFound without a policy."""
        self.sources.require_endpoint(endpoint_name)
        policy = await asyncio.to_thread(self.store.get, endpoint_name)
        if policy is None:
            raise _not_found(endpoint_name)
        return policy

    async def delete(self, endpoint_name: str) -> None:
        """Delete the endpoint's policy (the weights stay where the bandit left them)."""
        self.sources.require_endpoint(endpoint_name)
        if not await asyncio.to_thread(self.store.delete, endpoint_name):
            raise _not_found(endpoint_name)
        log.info("event=bandit_policy_deleted endpoint=%s", endpoint_name)

    # ------------------------------------------------------------ evaluation

    async def evaluate_due(self) -> int:
        """Evaluate every policy whose interval has passed; returns how many changed the weights."""
        changed = 0
        names = self.sources.endpoint_names()
        for policy in await asyncio.to_thread(self.store.list):
            if policy.endpoint_name not in names:
                await asyncio.to_thread(self.store.delete, policy.endpoint_name)
                log.info("event=bandit_policy_deleted endpoint=%s reason=endpoint_deleted", policy.endpoint_name)
                continue
            if self._clock() - policy.last_evaluated < policy.interval_s:
                continue
            changed += await self.evaluate(policy)
        return changed

    async def evaluate(self, policy: BanditPolicy) -> int:
        """One evaluation of `policy`; 1 when it changed the weights."""
        now = self._clock()
        try:
            endpoint = self.sources.require_endpoint(policy.endpoint_name)
        except ValidationError:
            return 0
        summary, shares = await self._decide(policy, endpoint, now)
        if shares is not None:
            try:
                latest = self.sources.require_endpoint(policy.endpoint_name)
            except ValidationError:
                return 0
            if latest.current_weights != endpoint.current_weights:
                summary, shares = "the weights changed while the policy was evaluated; the next evaluation starts from them", None
        updated = replace(policy, last_evaluated=now, last_evaluation=summary)
        weights = None
        if shares is not None:
            total = sum(endpoint.current_weights[v] for v in endpoint.production_variants)
            weights = {v: share * (total if total > 0 else 1.0) for v, share in shares.items()}
            try:
                self.sources.apply_automatic_weights(policy.endpoint_name, weights, SOURCE, summary)
            except MveError as error:
                updated = replace(updated, last_evaluation=f"{summary}; not applied: {error.message}")
                weights = None
            else:
                updated = replace(updated, last_update_time=now)
                log.info("event=bandit_weights endpoint=%s weights=%s", policy.endpoint_name, weights)
        # Put or Delete may have raced this evaluation: write only if the policy is still this one.
        current = await asyncio.to_thread(self.store.get, policy.endpoint_name)
        if current is not None and current.creation_time == policy.creation_time:
            updated = replace(
                current, last_evaluated=updated.last_evaluated, last_evaluation=updated.last_evaluation,
                last_update_time=updated.last_update_time,
            )
            await asyncio.to_thread(self.store.put, updated)
        return int(weights is not None)

    async def _decide(self, policy: BanditPolicy, endpoint: EndpointView, now: float) -> tuple[str, dict[str, float] | None]:
        if endpoint.status != EndpointStatus.IN_SERVICE or endpoint.updating:
            return f"the endpoint is {endpoint.status}{' (an update is in progress)' if endpoint.updating else ''}; the weights stay as they are", None
        if not endpoint.capture_enabled:
            return "data capture is off on the endpoint's config: no reward can be joined to a variant", None
        if len(endpoint.production_variants) < 2:
            return "the endpoint has fewer than 2 production variants", None
        rewards = await asyncio.to_thread(self.store.rewards, policy.endpoint_name, now - policy.window_s)
        decision = await asyncio.to_thread(
            decide, policy, endpoint.production_variants, endpoint.production_shares, rewards, self._rng
        )
        return decision.summary, decision.weights

    async def run_forever(self, tick_s: float = TICK_S) -> None:
        """Evaluate the due policies every `tick_s` until cancelled."""
        while True:
            await asyncio.sleep(tick_s)
            try:
                await self.evaluate_due()
            except Exception:  # noqa: BLE001 - the bandit goes on next time; the error is logged
                log.exception("event=bandit_failed")
