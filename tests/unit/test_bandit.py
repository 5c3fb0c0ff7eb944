"""Bandit policies: validation, Thompson sampling with a seeded generator, floor and step limits,
storage, and the evaluation loop against a fake control plane."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from mve.control.bandit import (
    Bandit,
    BanditPolicy,
    BanditStore,
    decide,
    floor_weights,
    limit_step,
    probability_best,
    validate_policy,
)
from mve.control.experiment_sources import EndpointView
from mve.control.experiments_db import ExperimentsDb
from mve.errors import ResourceNotFound, ValidationError


def endpoint(capture: bool = True, variants=("A", "B"), weights=None, status="InService") -> EndpointView:
    weights = weights or {v: 1.0 for v in variants}  # production weights of sum 2 (not shares)
    return EndpointView("ep", status, tuple(variants), (), dict(weights), capture, "/tmp/capture" if capture else "", False)


def rewards(rate: float, n: int, rng) -> np.ndarray:
    return (rng.random(n) < rate).astype(float)


# ---------------------------------------------------------------- validation


def test_defaults_fill_unset_fields():
    policy = validate_policy(BanditPolicy("ep"), endpoint())
    assert (policy.interval_s, policy.exploration_floor, policy.max_weight_change) == (30, 0.05, 0.2)
    assert (policy.min_rewards_per_variant, policy.window_s) == (20, 3600)


def test_an_exploration_floor_of_zero_is_kept_and_only_a_missing_one_takes_the_default():
    assert validate_policy(BanditPolicy("ep", exploration_floor=0.0), endpoint()).exploration_floor == 0.0
    assert validate_policy(BanditPolicy("ep", exploration_floor=None), endpoint()).exploration_floor == 0.05


@pytest.mark.parametrize(
    "change, message",
    [
        ({"interval_s": 3601}, "IntervalInSeconds must be 1-3600"),
        ({"exploration_floor": 0.6}, "ExplorationFloor must be 0-0.5"),
        ({"max_weight_change": 0.001}, "MaxWeightChange must be 0.01-1"),
        ({"max_weight_change": 1.5}, "MaxWeightChange must be 0.01-1"),
        ({"min_rewards_per_variant": 1_000_001}, "MinRewardsPerVariant must be 1-1000000"),
        ({"window_s": 59}, "WindowInSeconds must be 60-1296000"),
        ({"window_s": 1_296_001}, "WindowInSeconds must be 60-1296000"),
    ],
)
def test_fields_out_of_range_are_refused(change, message):
    with pytest.raises(ValidationError, match=message):
        validate_policy(replace(BanditPolicy("ep"), **change), endpoint())


def test_a_policy_needs_capture_two_variants_and_a_floor_that_fits():
    with pytest.raises(ValidationError, match="captured record"):
        validate_policy(BanditPolicy("ep"), endpoint(capture=False))
    with pytest.raises(ValidationError, match="at least 2"):
        validate_policy(BanditPolicy("ep"), endpoint(variants=("A",)))
    with pytest.raises(ValidationError, match="at most 0.3333"):
        validate_policy(BanditPolicy("ep", exploration_floor=0.4), endpoint(variants=("A", "B", "C")))


# ---------------------------------------------------------------- the decision


def test_probability_best_beta_bernoulli_is_seeded_and_favours_the_better_arm():
    rng = np.random.default_rng(1)
    arms = [rewards(0.91, 200, rng), rewards(0.99, 200, rng)]
    p1, model = probability_best(arms, np.random.default_rng(42))
    p2, _ = probability_best(arms, np.random.default_rng(42))
    assert model == "Beta-Bernoulli" and p1.tolist() == p2.tolist()
    assert p1.sum() == pytest.approx(1.0) and p1[1] > 0.99


def test_probability_best_normal_posterior_for_other_rewards():
    rng = np.random.default_rng(2)
    p, model = probability_best([rng.normal(1.0, 0.5, 100), rng.normal(1.3, 0.5, 100)], np.random.default_rng(0))
    assert model == "normal" and p[1] > 0.99


def test_floor_keeps_every_weight_at_least_the_floor():
    w = floor_weights(np.array([0.0, 0.001, 0.999]), 0.05)
    assert w.sum() == pytest.approx(1.0)
    assert w.min() >= 0.05 - 1e-12
    assert w.tolist() == pytest.approx([0.05, 0.05, 0.9])


def test_step_limit_moves_no_weight_more_than_max_change():
    w = limit_step(np.array([0.05, 0.95]), np.array([0.5, 0.5]), 0.2, 0.05)
    assert w.tolist() == pytest.approx([0.3, 0.7])
    three = limit_step(np.array([0.9, 0.05, 0.05]), np.array([0.2, 0.3, 0.5]), 0.1, 0.05)
    assert three.sum() == pytest.approx(1.0)
    assert np.abs(three - [0.2, 0.3, 0.5]).max() <= 0.1 + 1e-9
    assert three.min() >= 0.05


@pytest.mark.parametrize("seed", range(5))
def test_thompson_weights_respect_floor_and_step_from_any_start(seed):
    rng = np.random.default_rng(seed)
    policy = BanditPolicy("ep", exploration_floor=0.1, max_weight_change=0.15, min_rewards_per_variant=5)
    variants = ("A", "B", "C")
    current = dict(zip(variants, rng.dirichlet([1, 1, 1]) * 0.7 + 0.1))
    arms = {v: rewards(rate, 60, rng) for v, rate in zip(variants, (0.5, 0.7, 0.9))}
    decision = decide(policy, variants, current, arms, np.random.default_rng(seed))
    assert decision.weights is not None
    new = np.array([decision.weights[v] for v in variants])
    old = np.array([current[v] for v in variants])
    old = old / old.sum()
    assert new.sum() == pytest.approx(1.0)
    assert np.abs(new - old).max() <= 0.15 + 1e-9
    assert new.min() >= 0.1 - 1e-9


def test_no_change_until_every_variant_has_its_rewards():
    rng = np.random.default_rng(3)
    policy = BanditPolicy("ep", min_rewards_per_variant=20)
    decision = decide(policy, ("A", "B"), {"A": 0.5, "B": 0.5}, {"A": rewards(0.9, 30, rng), "B": rewards(0.9, 12, rng)}, rng)
    assert decision.weights is None
    assert "waiting for rewards" in decision.summary and "B 12/20" in decision.summary


def test_a_clear_winner_gains_max_change_per_evaluation_down_to_the_floor():
    rng = np.random.default_rng(4)
    policy = BanditPolicy("ep", exploration_floor=0.05, max_weight_change=0.2, min_rewards_per_variant=20)
    arms = {"A": rewards(0.6, 300, rng), "B": rewards(0.95, 300, rng)}
    weights = {"A": 0.5, "B": 0.5}
    seen = []
    for _ in range(4):
        decision = decide(policy, ("A", "B"), weights, arms, rng)
        if decision.weights is None:
            break
        weights = decision.weights
        seen.append(round(weights["B"], 6))
    assert seen == [0.7, 0.9, 0.95]
    assert "P(best)" in decision.summary and "nothing changed" in decision.summary


# ---------------------------------------------------------------- storage and the loop


class FakeSources:
    """The control plane as the bandit sees it: one endpoint, weight changes recorded."""

    def __init__(self, view: EndpointView):
        self.view = view
        self.applied: list[tuple[dict, str, str]] = []

    def require_endpoint(self, name):
        if self.view is None or name != self.view.name:
            raise ValidationError(f"Could not find endpoint {name}")
        return self.view

    def endpoint_names(self):
        return {self.view.name} if self.view is not None else set()

    def apply_automatic_weights(self, name, weights, source, reason):
        self.applied.append((weights, source, reason))
        self.view = replace(self.view, current_weights=dict(weights))


def insert_rewards(db: ExperimentsDb, variant: str, values, when: float) -> None:
    with db.transaction() as c:
        for i, value in enumerate(values):
            iid = f"{variant}-{when}-{i}"
            c.execute("INSERT INTO captured (endpoint, variant, inference_id, time, rows) VALUES ('ep', ?, ?, ?, 1)", (variant, iid, when))
            c.execute("INSERT INTO feedback VALUES ('ep', ?, NULL, ?, ?, ?)", (iid, float(value), when, when))


def test_the_loop_applies_thompson_weights_and_records_its_evaluation(tmp_path):
    db = ExperimentsDb(tmp_path / "experiments.db")
    clock = [1_000_000.0]
    sources = FakeSources(endpoint())
    bandit = Bandit(db, sources, clock=lambda: clock[0], rng=np.random.default_rng(7))
    rng = np.random.default_rng(8)
    insert_rewards(db, "A", rewards(0.6, 100, rng), clock[0] - 10)
    insert_rewards(db, "B", rewards(0.95, 100, rng), clock[0] - 10)
    insert_rewards(db, "B", np.zeros(500), clock[0] - 7200)  # outside the window: ignored

    async def run():
        await bandit.put(BanditPolicy("ep", interval_s=5, min_rewards_per_variant=20))
        assert await bandit.evaluate_due() == 1
        assert await bandit.evaluate_due() == 0  # not due again before 5 s
        clock[0] += 5
        assert await bandit.evaluate_due() == 1
        return await bandit.describe("ep")

    try:
        policy = asyncio.run(run())
        # Shares 0.7 then 0.9, written as weights of the same sum as before (2): shadows keep their fraction.
        assert [round(w["B"], 6) for w, _, _ in sources.applied] == [1.4, 1.8]
        assert [round(sum(w.values()), 9) for w, _, _ in sources.applied] == [2.0, 2.0]
        assert {source for _, source, _ in sources.applied} == {"bandit"}
        assert "Beta-Bernoulli" in sources.applied[0][2]
        assert policy.last_update_time == clock[0]
        assert policy.last_evaluation.startswith("Thompson sampling")
        # A restarted control plane finds the policy as it was left.
        assert BanditStore(ExperimentsDb(tmp_path / "experiments.db")).get("ep") == policy
    finally:
        db.close()


def test_describe_and_delete_errors_and_deletion_with_the_endpoint(tmp_path):
    db = ExperimentsDb(tmp_path / "experiments.db")
    sources = FakeSources(endpoint())
    bandit = Bandit(db, sources, rng=np.random.default_rng(0))

    async def run():
        with pytest.raises(ResourceNotFound):
            await bandit.describe("ep")
        with pytest.raises(ValidationError, match="Could not find endpoint"):
            await bandit.describe("other")
        await bandit.put(BanditPolicy("ep"))
        sources.view = None  # the endpoint was deleted
        await bandit.evaluate_due()

    try:
        asyncio.run(run())
        assert BanditStore(db).list() == []
    finally:
        db.close()


def test_an_endpoint_that_is_updating_keeps_its_weights(tmp_path):
    db = ExperimentsDb(tmp_path / "experiments.db")
    sources = FakeSources(endpoint())
    bandit = Bandit(db, sources, rng=np.random.default_rng(0))

    async def run():
        await bandit.put(BanditPolicy("ep", min_rewards_per_variant=1))
        sources.view = replace(sources.view, status="Updating")
        await bandit.evaluate_due()
        return await bandit.describe("ep")

    try:
        policy = asyncio.run(run())
        assert sources.applied == [] and "Updating" in policy.last_evaluation
    finally:
        db.close()
