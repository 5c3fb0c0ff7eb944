"""Outlier detection: a variant's instances that keep failing, or answer far slower than their
siblings, leave its rotation for a back-off and are probed before they come back.

This is Envoy's outlier detection (consecutive 5xx, base ejection time x ejections in a row,
max ejection percent) with a latency rule in place of its success-rate sweep, run inline on each
call's outcome so that nothing ticks in the background:

- a call that timed out, found the instance UNAVAILABLE, or failed with a 5xx-class status is a
  failure; `OutlierPolicy.consecutive_failures` of them in a row eject the instance. A caller's
  own bad input (INVALID_ARGUMENT), a 4xx-class answer or a cancelled call is no verdict on it.
- an answered call feeds an EWMA of the instance's latency; once it has `MIN_LATENCY_SAMPLES`
  and the variant has at least two instances, an EWMA above `latency_factor` x the median EWMA
  of its siblings in rotation (and at least `LATENCY_FLOOR_US` above it) ejects it.
- an ejection lasts `ejection_s` x the number of times the instance was ejected in a row (at
  most `MAX_BACKOFF_MULTIPLIER` x); the row ends once it stays in rotation for the longest
  back-off. At most `max_ejection_percent` of a variant's instances, and never all of them,
  are out at once: the rest keep serving.
- when the back-off ends the instance is *probed* (half-open, as a circuit breaker): it takes one
  live request at a time. An answer within the latency bound restores it with its counts reset;
  a failure or a slow answer ejects it again for longer.

The detector marks instances out of rotation in the variant's `_fastroute.InstanceBalancer`
(``set_skipped``), so choosing an instance stays one C call. Per call it does O(1) work on plain
numbers; back-offs end lazily, checked against one deadline when an instance is chosen (the
clock is injected, so tests drive it without sleeping). The latency rule compares with the
siblings every `LATENCY_CHECK_EVERY` answers, not on each one.

It also keeps the proxy's older, shorter skip: an instance that refused a connection is passed
over for `REFUSED_SKIP_S` (the control plane takes a dead instance out of the table soon after);
that skip is not an ejection and is not reported.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

MIN_LATENCY_SAMPLES = 20  # answers an instance needs before its latency can make it an outlier
MIN_LATENCY_INSTANCES = 2  # a latency outlier needs a sibling to be compared with
# Within LATENCY_FLOOR_US of its siblings an instance is not slow, whatever the ratio: for answers of
# a few hundred microseconds a factor is scheduling noise, not a slow instance.
LATENCY_FLOOR_US = 1000.0
LATENCY_EWMA_WEIGHT = 0.1  # the newest answer's weight once the EWMA is warm (a plain mean before)
LATENCY_CHECK_EVERY = 8  # answers between two comparisons with the siblings
MAX_BACKOFF_MULTIPLIER = 10
REFUSED_SKIP_S = 2.0  # an instance that refused a connection is passed over this long

# Where an instance stands.
IN_ROTATION, EJECTED, PROBING = 0, 1, 2
_STATE_NAMES = ("in_rotation", "ejected", "probing")

# Why it was ejected: the `reason` of the log line and of mve_proxy_outlier_ejections_total.
CONSECUTIVE_FAILURES = "consecutive_failures"
LATENCY = "latency"
PROBE_FAILED = "probe_failed"
PROBE_SLOW = "probe_slow"
REASONS = (CONSECUTIVE_FAILURES, LATENCY, PROBE_FAILED, PROBE_SLOW)

_NEVER = math.inf


@dataclass(frozen=True)
class OutlierPolicy:
    """The proxy's outlier detection settings (``--outlier-*``); 0 turns a rule off."""

    consecutive_failures: int = 5
    latency_factor: float = 5.0
    ejection_s: float = 10.0
    max_ejection_percent: float = 50.0

    def max_ejected(self, instances: int) -> int:
        """How many of `instances` may be out at once: the percentage, rounded down, never all."""
        allowed = math.floor(instances * self.max_ejection_percent / 100.0 + 1e-9)
        return max(0, min(allowed, instances - 1))


OUTLIERS_OFF = OutlierPolicy(consecutive_failures=0, latency_factor=0.0)


class InstanceHealth:
    """What the detector knows of one instance: plain numbers, updated in place."""

    __slots__ = (
        "consecutive_failures", "samples", "latency_ewma_us", "state", "back_off_until",
        "ejections_in_a_row", "ejected_at", "restored_at", "probe_in_flight", "refused_until",
    )

    def __init__(self):
        self.consecutive_failures = 0
        self.samples = 0
        self.latency_ewma_us = 0.0
        self.state = IN_ROTATION
        self.back_off_until = 0.0
        self.ejections_in_a_row = 0
        self.ejected_at = 0.0
        self.restored_at = 0.0
        self.probe_in_flight = False
        self.refused_until = 0.0  # 0: not skipped for a refused connection

    def copy(self) -> "InstanceHealth":
        """An independent copy, with no probe in flight (a probe belongs to the table it was sent on)."""
        twin = InstanceHealth()
        for name in self.__slots__:
            setattr(twin, name, getattr(self, name))
        twin.probe_in_flight = False
        return twin

    @property
    def skipped(self) -> bool:
        """Whether the balancer should pass this instance over now."""
        return self.refused_until > 0.0 or self.state == EJECTED or (self.state == PROBING and self.probe_in_flight)


class OutlierDetector:
    """The outlier state of one variant's instances, kept in step with its balancer's skip marks.

    One detector lives as long as its balancer: a weight-only routing table keeps both. A table
    that changes the instance list makes a new detector from the `previous` one, carrying each
    surviving instance's health by instance id, and retires the old one (outcomes of calls sent
    on the old table are then ignored). `ejections` (shared by the proxy's detectors) counts
    ejections by (endpoint, variant, reason).
    """

    def __init__(
        self,
        endpoint_name: str,
        variant_name: str,
        instance_ids: Sequence[str],
        balancer,
        policy: OutlierPolicy,
        clock: Callable[[], float],
        *,
        ejections: Counter | None = None,
        previous: "OutlierDetector | None" = None,
    ):
        self.endpoint_name = endpoint_name
        self.variant_name = variant_name
        self.instance_ids = tuple(instance_ids)
        self.policy = policy
        self._balancer = balancer
        self._clock = clock
        self._ejections = ejections
        self._max_ejected = policy.max_ejected(len(self.instance_ids))
        self._check_latency = policy.latency_factor > 0 and len(self.instance_ids) >= MIN_LATENCY_INSTANCES
        self._retired = False
        carried = previous._by_id() if previous is not None else {}
        self._health = [carried[i].copy() if i in carried else InstanceHealth() for i in self.instance_ids]
        if previous is not None:
            previous._retired = True
        self.ejected_count = sum(h.state != IN_ROTATION for h in self._health)
        self._refusing = sum(h.refused_until > 0.0 for h in self._health)
        # True while any instance is out of rotation or skipped: only then does choosing an
        # instance consult the detector.
        self.active = bool(self.ejected_count or self._refusing)
        self._next_change = min(
            [h.back_off_until for h in self._health if h.state == EJECTED]
            + [h.refused_until for h in self._health if h.refused_until > 0.0],
            default=_NEVER,
        )
        for index, health in enumerate(self._health):
            if health.skipped:
                balancer.set_skipped(index, True)

    def _by_id(self) -> dict[str, InstanceHealth]:
        return dict(zip(self.instance_ids, self._health))

    # ------------------------------------------------------------ choosing an instance

    def refresh(self) -> None:
        """End the back-offs and refusal skips that are over (probing starts); O(1) until one is."""
        now = self._clock()
        if now < self._next_change:
            return
        next_change = _NEVER
        for index, health in enumerate(self._health):
            if health.refused_until > 0.0:
                if health.refused_until <= now:
                    health.refused_until = 0.0
                    self._refusing -= 1
                else:
                    next_change = min(next_change, health.refused_until)
            if health.state == EJECTED:
                if health.back_off_until <= now:
                    health.state = PROBING
                    health.probe_in_flight = False
                    log.info(
                        "event=instance_probing endpoint=%s variant=%s instance=%s",
                        self.endpoint_name, self.variant_name, self.instance_ids[index],
                    )
                else:
                    next_change = min(next_change, health.back_off_until)
            self._balancer.set_skipped(index, health.skipped)
        self._next_change = next_change
        self._update_active()

    def picked(self, index: int) -> None:
        """Instance `index` takes a request: for a probing instance that request is its probe."""
        health = self._health[index]
        if health.state == PROBING and not health.probe_in_flight:
            health.probe_in_flight = True
            self._balancer.set_skipped(index, True)

    # ------------------------------------------------------------ outcomes

    def succeeded(self, index: int, latency_us: float) -> None:
        """Instance `index` answered in `latency_us` microseconds."""
        if self._retired:
            return
        health = self._health[index]
        health.consecutive_failures = 0
        if health.state == PROBING:
            if self._slow(index, latency_us):
                self._eject(index, PROBE_SLOW, f"answered in {latency_us / 1000:.1f} ms")
            else:
                self._restore(index)
            return
        if health.state != IN_ROTATION:
            return  # an answer to a call sent before the ejection: the probe decides
        health.samples += 1
        weight = max(LATENCY_EWMA_WEIGHT, 1.0 / health.samples)
        health.latency_ewma_us += weight * (latency_us - health.latency_ewma_us)
        if (
            self._check_latency
            and health.samples >= MIN_LATENCY_SAMPLES
            and (health.samples - MIN_LATENCY_SAMPLES) % LATENCY_CHECK_EVERY == 0
            and self._slow(index, health.latency_ewma_us)
        ):
            self._eject(index, LATENCY, f"latency EWMA {health.latency_ewma_us / 1000:.1f} ms")

    def failed(self, index: int) -> None:
        """A call to instance `index` timed out, found it unavailable, or failed with a 5xx-class status."""
        if self._retired:
            return
        health = self._health[index]
        health.consecutive_failures += 1
        if health.state == PROBING:
            self._eject(index, PROBE_FAILED, "the probe failed")
        elif (
            health.state == IN_ROTATION
            and self.policy.consecutive_failures
            and health.consecutive_failures >= self.policy.consecutive_failures
        ):
            self._eject(index, CONSECUTIVE_FAILURES, f"{health.consecutive_failures} failures in a row")

    def settled(self, index: int) -> None:
        """A call to instance `index` ended with no verdict on it (bad input, cancelled): a probe
        that ends so leaves room for the next one."""
        if self._retired:
            return
        health = self._health[index]
        if health.state == PROBING and health.probe_in_flight:
            health.probe_in_flight = False
            self._balancer.set_skipped(index, health.skipped)

    def refused(self, index: int) -> bool:
        """Instance `index` refused a connection: pass it over for REFUSED_SKIP_S; False if it already was."""
        if self._retired:
            return False
        now = self._clock()
        health = self._health[index]
        fresh = health.refused_until <= now
        if health.refused_until == 0.0:
            self._refusing += 1
        health.refused_until = now + REFUSED_SKIP_S
        self._next_change = min(self._next_change, health.refused_until)
        self._balancer.set_skipped(index, True)
        self.active = True
        return fresh

    # ------------------------------------------------------------ reading

    def ejected_ids(self) -> list[str]:
        """The ids of the instances out of rotation (ejected or being probed)."""
        if not self.ejected_count:
            return []
        return [self.instance_ids[i] for i, h in enumerate(self._health) if h.state != IN_ROTATION]

    def out_of_rotation(self) -> int:
        """Instances not taking requests now: ejected, probing or skipped for a refused connection."""
        now = self._clock()
        return sum(1 for h in self._health if h.state != IN_ROTATION or h.refused_until > now)

    def health(self, index: int) -> InstanceHealth:
        """Instance `index`'s health (read it, do not change it)."""
        return self._health[index]

    def state_name(self, index: int) -> str:
        """``in_rotation``, ``ejected`` or ``probing``."""
        return _STATE_NAMES[self._health[index].state]

    # ------------------------------------------------------------ transitions

    def _slow(self, index: int, latency_us: float) -> bool:
        """Whether `latency_us` is far above the median latency EWMA of the instance's siblings."""
        if not self._check_latency:
            return False
        siblings = [
            h.latency_ewma_us for i, h in enumerate(self._health)
            if i != index and h.state == IN_ROTATION and h.samples >= MIN_LATENCY_SAMPLES
        ]
        if not siblings:
            return False
        reference = statistics.median(siblings)
        return latency_us > self.policy.latency_factor * reference and latency_us - reference > LATENCY_FLOOR_US

    def _eject(self, index: int, reason: str, why: str) -> None:
        health = self._health[index]
        now = self._clock()
        if health.state == IN_ROTATION:
            if self.ejected_count >= self._max_ejected:
                return  # the rest must keep serving: it stays in, and is ejected once there is room
            self.ejected_count += 1
            if health.restored_at and now - health.restored_at >= self._longest_back_off():
                health.ejections_in_a_row = 0  # it served long enough since its last return
            health.ejected_at = now
        health.ejections_in_a_row = min(health.ejections_in_a_row + 1, MAX_BACKOFF_MULTIPLIER)
        back_off = self.policy.ejection_s * health.ejections_in_a_row
        health.state = EJECTED
        health.back_off_until = now + back_off
        health.probe_in_flight = False
        self._balancer.set_skipped(index, True)
        self._next_change = min(self._next_change, health.back_off_until)
        self.active = True
        if self._ejections is not None:
            self._ejections[(self.endpoint_name, self.variant_name, reason)] += 1
        log.warning(
            "event=instance_ejected endpoint=%s variant=%s instance=%s reason=%s back_off_s=%g ejections_in_a_row=%d "
            "why=%r",
            self.endpoint_name, self.variant_name, self.instance_ids[index], reason, back_off,
            health.ejections_in_a_row, why,
        )

    def _restore(self, index: int) -> None:
        health = self._health[index]
        now = self._clock()
        log.info(
            "event=instance_restored endpoint=%s variant=%s instance=%s out_for_s=%.3f",
            self.endpoint_name, self.variant_name, self.instance_ids[index], now - health.ejected_at,
        )
        health.state = IN_ROTATION
        health.probe_in_flight = False
        health.consecutive_failures = 0
        health.samples = 0
        health.latency_ewma_us = 0.0
        health.restored_at = now
        self.ejected_count -= 1
        self._balancer.set_skipped(index, health.skipped)
        self._update_active()

    def _longest_back_off(self) -> float:
        return self.policy.ejection_s * MAX_BACKOFF_MULTIPLIER

    def _update_active(self) -> None:
        self.active = bool(self.ejected_count or self._refusing)
