"""The outlier detector (mve.proxy.routing.outliers) on a real InstanceBalancer, with an injected clock."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from mve._fastroute import InstanceBalancer
from mve.proxy.routing.outliers import (
    CONSECUTIVE_FAILURES,
    LATENCY,
    LATENCY_CHECK_EVERY,
    MAX_BACKOFF_MULTIPLIER,
    MIN_LATENCY_SAMPLES,
    PROBE_FAILED,
    PROBE_SLOW,
    OutlierDetector,
    OutlierPolicy,
)


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def detector(n: int = 2, clock: Clock | None = None, **policy) -> OutlierDetector:
    ids = [f"i{k}" for k in range(n)]
    return OutlierDetector(
        "ep", "v", ids, InstanceBalancer(n, seed=1), OutlierPolicy(**policy), clock or Clock(), ejections=Counter()
    )


def balancer_of(d: OutlierDetector) -> InstanceBalancer:
    return d._balancer


def fail(d: OutlierDetector, index: int, times: int) -> None:
    for _ in range(times):
        d.failed(index)


def answer(d: OutlierDetector, index: int, latency_us: float, times: int) -> None:
    for _ in range(times):
        d.succeeded(index, latency_us)


def test_consecutive_failures_eject_at_the_threshold_and_an_answer_resets_the_count(caplog):
    d = detector(consecutive_failures=5)
    fail(d, 0, 4)
    d.succeeded(0, 1000.0)  # the row is broken
    fail(d, 0, 4)
    assert d.state_name(0) == "in_rotation" and d.ejected_ids() == []
    with caplog.at_level(logging.WARNING, logger="mve.proxy.routing.outliers"):
        d.failed(0)
    assert d.state_name(0) == "ejected" and d.ejected_ids() == ["i0"] and d.ejected_count == 1
    assert balancer_of(d).skipped(0) and not balancer_of(d).skipped(1)
    assert d._ejections == {("ep", "v", CONSECUTIVE_FAILURES): 1}
    (line,) = [r.getMessage() for r in caplog.records]
    assert "event=instance_ejected endpoint=ep variant=v instance=i0 reason=consecutive_failures back_off_s=10" in line


def test_a_zero_threshold_turns_the_failure_rule_off():
    d = detector(consecutive_failures=0)
    fail(d, 0, 1000)
    assert d.ejected_ids() == []


def test_a_latency_outlier_is_ejected_only_once_it_has_enough_answers():
    d = detector(n=3, latency_factor=5.0)
    answer(d, 1, 2_000.0, MIN_LATENCY_SAMPLES)
    answer(d, 2, 2_000.0, MIN_LATENCY_SAMPLES)
    answer(d, 0, 20_000.0, MIN_LATENCY_SAMPLES - 1)  # 10x its siblings, one answer short
    assert d.ejected_ids() == []
    d.succeeded(0, 20_000.0)
    assert d.ejected_ids() == ["i0"]
    assert d._ejections == {("ep", "v", LATENCY): 1}


def test_the_latency_rule_compares_with_the_median_of_the_siblings_in_rotation():
    d = detector(n=4, latency_factor=5.0, max_ejection_percent=100)
    for index, latency in ((1, 2_000.0), (2, 3_000.0), (3, 12_000.0)):
        answer(d, index, latency, MIN_LATENCY_SAMPLES)
    # Siblings' median is 3 ms (2, 3 and 12 ms): 14 ms is not 5x above it, 16 ms is.
    answer(d, 0, 14_000.0, MIN_LATENCY_SAMPLES)
    assert d.ejected_ids() == []
    d2 = detector(n=4, latency_factor=5.0, max_ejection_percent=100)
    for index, latency in ((1, 2_000.0), (2, 3_000.0), (3, 12_000.0)):
        answer(d2, index, latency, MIN_LATENCY_SAMPLES)
    answer(d2, 0, 16_000.0, MIN_LATENCY_SAMPLES)
    assert d2.ejected_ids() == ["i0"]


def test_the_latency_rule_needs_a_sibling_with_enough_answers():
    alone = detector(n=1, latency_factor=5.0)
    answer(alone, 0, 1e6, 100)
    assert alone.ejected_ids() == []
    d = detector(n=2, latency_factor=5.0)
    answer(d, 1, 1_000.0, MIN_LATENCY_SAMPLES - 1)  # the sibling has too few answers to compare with
    answer(d, 0, 1e6, MIN_LATENCY_SAMPLES + LATENCY_CHECK_EVERY - 1)
    assert d.ejected_ids() == []
    d.succeeded(1, 1_000.0)
    answer(d, 0, 1e6, LATENCY_CHECK_EVERY)  # compared again at the next check
    assert d.ejected_ids() == ["i0"]


def test_sub_millisecond_differences_are_not_latency_outliers():
    d = detector(latency_factor=5.0)
    answer(d, 1, 100.0, MIN_LATENCY_SAMPLES)
    answer(d, 0, 900.0, 10 * MIN_LATENCY_SAMPLES)  # 9x, but 0.8 ms: noise
    assert d.ejected_ids() == []


def test_a_zero_factor_turns_the_latency_rule_off():
    d = detector(latency_factor=0.0)
    answer(d, 1, 1_000.0, MIN_LATENCY_SAMPLES)
    answer(d, 0, 1e6, 5 * MIN_LATENCY_SAMPLES)
    assert d.ejected_ids() == []


@pytest.mark.parametrize(
    ("instances", "percent", "most"),
    [(4, 50, 2), (5, 50, 2), (2, 50, 1), (2, 100, 1), (3, 10, 0), (10, 0, 0), (1, 100, 0)],
)
def test_at_most_the_max_ejection_percent_and_never_every_instance(instances, percent, most):
    d = detector(n=instances, max_ejection_percent=percent)
    for index in range(instances):
        fail(d, index, 5)
    assert d.ejected_count == most == len(d.ejected_ids())
    assert balancer_of(d).skipped_count == most


def test_an_ejection_blocked_by_the_cap_happens_once_there_is_room():
    clock = Clock()
    d = detector(n=2, clock=clock)
    fail(d, 0, 5)
    fail(d, 1, 5)
    assert d.ejected_ids() == ["i0"]
    clock.now += 10.0
    d.refresh()
    d.picked(0)
    d.succeeded(0, 1_000.0)  # i0's probe answers: back in rotation
    d.failed(1)  # i1 still fails: now it may go
    assert d.ejected_ids() == ["i1"]


def test_back_off_grows_with_each_ejection_in_a_row_and_is_capped():
    clock = Clock()
    d = detector(clock=clock, ejection_s=10.0)
    fail(d, 0, 5)
    back_offs = []
    for _ in range(MAX_BACKOFF_MULTIPLIER + 2):
        health = d.health(0)
        back_offs.append(health.back_off_until - clock.now)
        clock.now = health.back_off_until - 0.001
        d.refresh()
        assert d.state_name(0) == "ejected"  # not a moment early
        clock.now += 0.001
        d.refresh()
        assert d.state_name(0) == "probing"
        d.picked(0)
        d.failed(0)  # the probe fails: ejected again, for longer
    assert back_offs == pytest.approx([10.0 * k for k in range(1, 11)] + [100.0, 100.0])
    assert d._ejections[("ep", "v", PROBE_FAILED)] == MAX_BACKOFF_MULTIPLIER + 2


def test_the_row_ends_after_a_stay_in_rotation_as_long_as_the_longest_back_off():
    clock = Clock()
    d = detector(clock=clock, ejection_s=1.0)
    fail(d, 0, 5)
    clock.now += 1.0
    d.refresh()
    d.picked(0)
    d.failed(0)  # second in a row: 2 s
    assert d.health(0).back_off_until - clock.now == pytest.approx(2.0)
    clock.now += 2.0
    d.refresh()
    d.picked(0)
    d.succeeded(0, 500.0)
    clock.now += 5.0
    fail(d, 0, 5)  # soon after its return: third in a row
    assert d.health(0).back_off_until - clock.now == pytest.approx(3.0)
    clock.now += 3.0
    d.refresh()
    d.picked(0)
    d.succeeded(0, 500.0)
    clock.now += 1.0 * MAX_BACKOFF_MULTIPLIER
    fail(d, 0, 5)  # it served 10 s (the longest back-off): a new row
    assert d.health(0).back_off_until - clock.now == pytest.approx(1.0)


def test_a_probe_takes_one_request_at_a_time_and_its_answer_restores_the_instance(caplog):
    clock = Clock()
    d = detector(clock=clock, ejection_s=10.0)
    balancer = balancer_of(d)
    fail(d, 0, 5)
    for _ in range(3):
        assert balancer.acquire() == 1  # ejected: skipped
    clock.now += 10.0
    d.refresh()
    assert d.state_name(0) == "probing" and not balancer.skipped(0)
    assert balancer.acquire() == 0  # least outstanding: the probe goes at once
    d.picked(0)
    assert balancer.skipped(0)
    assert {balancer.acquire() for _ in range(5)} == {1}  # one probe at a time
    assert d.ejected_ids() == ["i0"]  # still out until the probe answers
    with caplog.at_level(logging.INFO, logger="mve.proxy.routing.outliers"):
        d.succeeded(0, 800.0)
    assert d.state_name(0) == "in_rotation" and not balancer.skipped(0) and d.ejected_ids() == []
    health = d.health(0)
    assert health.consecutive_failures == 0 and health.samples == 0
    assert any("event=instance_restored endpoint=ep variant=v instance=i0 out_for_s=10.000" in r.getMessage()
               for r in caplog.records)
    assert not d.active


def test_a_slow_probe_ejects_again_for_longer():
    clock = Clock()
    d = detector(clock=clock, latency_factor=5.0, ejection_s=10.0)
    answer(d, 1, 2_000.0, MIN_LATENCY_SAMPLES)
    fail(d, 0, 5)
    clock.now += 10.0
    d.refresh()
    d.picked(0)
    d.succeeded(0, 50_000.0)  # 25x the sibling
    assert d.state_name(0) == "ejected"
    assert d.health(0).back_off_until - clock.now == pytest.approx(20.0)
    assert d._ejections[("ep", "v", PROBE_SLOW)] == 1


def test_a_probe_with_no_verdict_leaves_room_for_the_next_probe():
    clock = Clock()
    d = detector(clock=clock)
    fail(d, 0, 5)
    clock.now += 10.0
    d.refresh()
    d.picked(0)
    assert balancer_of(d).skipped(0)
    d.settled(0)  # e.g. the caller's bad input, or a cancelled call
    assert d.state_name(0) == "probing" and not balancer_of(d).skipped(0)


def test_the_caller_s_bad_input_never_counts_against_an_instance():
    d = detector()
    for _ in range(50):
        d.settled(0)
    assert d.health(0).consecutive_failures == 0 and d.ejected_ids() == []


def test_a_refused_connection_skips_for_a_moment_without_an_ejection():
    clock = Clock()
    d = detector(clock=clock)
    assert d.refused(0) and not d.refused(0)
    assert balancer_of(d).skipped(0) and d.ejected_ids() == [] and d.out_of_rotation() == 1
    clock.now += 2.0
    d.refresh()
    assert not balancer_of(d).skipped(0) and d.out_of_rotation() == 0 and not d.active


def test_a_new_instance_list_carries_each_instances_state_by_id():
    clock = Clock()
    old = detector(n=2, clock=clock)
    fail(old, 0, 5)
    balancer = InstanceBalancer(3, seed=2)
    new = OutlierDetector("ep", "v", ["i1", "i0", "i9"], balancer, old.policy, clock, previous=old)
    assert new.ejected_ids() == ["i0"] and balancer.skipped(1) and not balancer.skipped(0)
    assert new.health(1).back_off_until == old.health(0).back_off_until
    old.failed(1)  # an answer to a call sent on the old table: ignored
    fail(old, 1, 10)
    assert new.ejected_ids() == ["i0"]
