"""Which instances the proxies report as ejected outliers, and since when.

Each proxy's ``ReportStats`` names, per variant, the instances it holds out of rotation
(``VariantStats.ejected_instance_ids``; see `mve.proxy.routing.outliers`). `EjectionWatch` keeps one
sighting per named instance: when a report first named it, when one last did. A report on the
variant that does not name it clears it (so with several proxies every one that reports the
variant must agree), as does silence: no report naming it for `STALE_INTERVALS` reporting
intervals (a proxy that stopped, or an instance that left the table; the interval is the longest
gap seen between two sightings, at least `DEFAULT_INTERVAL_S`). An instance named
continuously for `replace_after_s` (0: never) is due for replacement: each report that names it
from then on says so again, and the reconciler acts once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

STALE_INTERVALS = 3
DEFAULT_INTERVAL_S = 1.0  # a proxy's --stats-interval (its default), the least interval assumed


@dataclass
class Sighting:
    """One instance reported as ejected: since when, last when, and how often reports come."""

    first_seen: float
    last_seen: float
    interval_s: float = DEFAULT_INTERVAL_S


class EjectionWatch:
    """Instance sightings in proxies' reports; `observe` returns the instances due for replacement."""

    def __init__(self, replace_after_s: float, clock: Callable[[], float] = time.time):
        self.replace_after_s = replace_after_s
        self._clock = clock
        self._sightings: dict[tuple[str, str], dict[str, Sighting]] = {}

    def observe(self, endpoint: str, variant: str, ejected_ids: Iterable[str]) -> list[tuple[str, float]]:
        """One report on one variant; (instance id, seconds ejected) of those due for replacement."""
        now = self._clock()
        named = set(ejected_ids)
        key = (endpoint, variant)
        known = self._sightings.get(key, {})
        current: dict[str, Sighting] = {}
        for instance_id in named:
            sighting = known.get(instance_id)
            if sighting is None:
                sighting = Sighting(first_seen=now, last_seen=now)
            elif now > sighting.last_seen:
                # The longest gap between two sightings (at least DEFAULT_INTERVAL_S): with several
                # proxies reporting, a short gap says nothing about when the next report comes.
                sighting.interval_s = max(sighting.interval_s, now - sighting.last_seen)
                sighting.last_seen = now
            current[instance_id] = sighting
        if current:
            self._sightings[key] = current
        else:
            self._sightings.pop(key, None)
        self._forget_stale(now)
        due = []
        if self.replace_after_s > 0:
            for instance_id, sighting in current.items():
                ejected_for = now - sighting.first_seen
                if ejected_for >= self.replace_after_s:
                    due.append((instance_id, ejected_for))
        return sorted(due)

    def ejected(self) -> dict[tuple[str, str], dict[str, float]]:
        """(endpoint, variant) -> instance id -> when it was first reported ejected."""
        return {key: {i: s.first_seen for i, s in found.items()} for key, found in self._sightings.items()}

    def _forget_stale(self, now: float) -> None:
        for key in list(self._sightings):
            found = self._sightings[key]
            for instance_id in [i for i, s in found.items() if now - s.last_seen > STALE_INTERVALS * s.interval_s]:
                del found[instance_id]
            if not found:
                del self._sightings[key]
