"""The control plane replaces an instance the proxies keep reporting as an ejected outlier.

`EjectionWatch` alone with an injected clock, then the control service and reconciler together on
a real store with the fake instance provider of test_control_service (no processes, no sleeping).
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from test_control_service import FakeProvider, variant, write_model

from mve._proto import control_pb2
from mve.control.artifacts import ArtifactStore
from mve.control.ejections import EjectionWatch
from mve.control.reconciler import Reconciler
from mve.control.routes import RoutePublisher
from mve.control.service import ControlService
from mve.control.settings import SettingsError, load_settings
from mve.control.store import SqliteStore
from mve.errors import ValidationError


class Clock:
    def __init__(self, now: float = 10_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_an_instance_named_continuously_for_the_threshold_is_due():
    clock = Clock()
    watch = EjectionWatch(5.0, clock=clock)
    for _ in range(5):
        assert watch.observe("e", "A", ["A-1"]) == []
        clock.now += 1.0
    assert watch.observe("e", "A", ["A-1"]) == [("A-1", 5.0)]
    assert watch.ejected() == {("e", "A"): {"A-1": 10_000.0}}


def test_a_report_that_no_longer_names_the_instance_starts_it_over():
    clock = Clock()
    watch = EjectionWatch(5.0, clock=clock)
    watch.observe("e", "A", ["A-1", "A-2"])
    clock.now += 4.0
    watch.observe("e", "A", ["A-2"])  # a proxy that sees A-1 in rotation
    clock.now += 1.0
    assert watch.observe("e", "A", ["A-1", "A-2"]) == [("A-2", 5.0)]
    clock.now += 4.0
    assert watch.observe("e", "A", ["A-1"]) == []  # A-1's 5 s started over at the last report
    clock.now += 1.0
    assert watch.observe("e", "A", ["A-1"]) == [("A-1", 5.0)]
    watch.observe("e", "B", [])  # another variant's report changes nothing of A's
    assert set(watch.ejected()[("e", "A")]) == {"A-1"}


def test_an_instance_no_report_names_for_three_intervals_is_forgotten():
    clock = Clock()
    watch = EjectionWatch(60.0, clock=clock)
    watch.observe("e", "A", ["A-1"])
    clock.now += 2.0
    watch.observe("e", "A", ["A-1"])  # reports every 2 s
    clock.now += 6.0
    watch.observe("e", "B", ["B-1"])  # 6 s of silence on A-1: three of its intervals, still known
    assert ("e", "A") in watch.ejected()
    clock.now += 0.5
    watch.observe("e", "B", ["B-1"])
    assert ("e", "A") not in watch.ejected()


def test_zero_never_replaces():
    clock = Clock()
    watch = EjectionWatch(0.0, clock=clock)
    watch.observe("e", "A", ["A-1"])
    clock.now += 10_000
    assert watch.observe("e", "A", ["A-1"]) == []


class Plane:
    """Control service and reconciler on `data_dir`, the fake provider, and a clock for ejections."""

    def __init__(self, data_dir, replace_after_s: float):
        self.clock = Clock()
        self.store = SqliteStore(data_dir / "mve.db")
        self.routes = RoutePublisher(self.store)
        self.provider = FakeProvider()
        self.reconciler = Reconciler(
            self.store, self.provider, self.routes, drain_s=0, cores=8, replace_ejected_after_s=replace_after_s
        )
        self.reconciler.ejections._clock = self.clock
        self.service = ControlService(self.store, ArtifactStore(data_dir / "artifacts"), self.routes, self.reconciler)
        self.sequence = 0

    def report(self, ejected: list[str], variant_name: str = "A") -> None:
        self.sequence += 1
        stats = control_pb2.VariantStats(endpoint_name="e", variant_name=variant_name, ejected_instance_ids=ejected)
        assert self.service.report_stats("proxy-1", "inc-1", self.sequence, self.clock(), [stats])

    def instance_ids(self) -> list[str]:
        table = self.routes.current
        return sorted(i.instance_id for e in table.endpoints for v in e.variants for i in v.instances)


async def in_service(plane: Plane, model_path) -> list[str]:
    await plane.service.create_model("m", "", str(model_path), {}, {})
    plane.service.create_endpoint_config("c", [variant("A", count=2)], {}, {})
    plane.service.create_endpoint("e", "c", {})
    await plane.reconciler.idle()
    return plane.instance_ids()


def test_an_instance_reported_ejected_long_enough_is_replaced_make_before_break(tmp_path, caplog):
    async def scenario():
        plane = Plane(tmp_path, replace_after_s=5.0)
        first = await in_service(plane, write_model(tmp_path / "m.onnx"))
        outlier, sibling = first
        with caplog.at_level(logging.INFO, logger="mve.control.reconciler"):
            for _ in range(5):
                plane.report([outlier])
                plane.clock.now += 1.0
                await plane.reconciler.idle()
            assert plane.instance_ids() == first  # 4 s: not yet
            assert plane.provider.stopped == []
            plane.report([outlier])  # 5 s
            await plane.reconciler.idle()
        now = plane.instance_ids()
        assert outlier not in now and sibling in now and len(now) == 2
        assert plane.provider.stopped == [outlier]
        assert plane.service.describe_endpoint("e")[0].status == "InService"
        events = [r.getMessage() for r in caplog.records if "event=instance_repl" in r.getMessage()]
        assert events[0].startswith(f"event=instance_replacing endpoint=e variant=A instance={outlier}")
        assert "reported it ejected as an outlier for 5.0 s" in events[0]
        assert events[1].startswith(f"event=instance_replaced endpoint=e variant=A instance={outlier}")
        # The new instance started before the outlier stopped: it was ready while the outlier still served.
        ready = [r.getMessage() for r in caplog.records if "event=instance_ready" in r.getMessage()]
        assert len(ready) == 1 and caplog.text.index(ready[0]) < caplog.text.index("event=instance_replaced")
        # Proxies still naming the gone outlier change nothing more.
        plane.report([outlier])
        await plane.reconciler.idle()
        assert plane.instance_ids() == now and plane.provider.stopped == [outlier]

    asyncio.run(scenario())


def test_no_replacement_when_reports_stop_naming_it_or_with_zero(tmp_path):
    async def scenario():
        plane = Plane(tmp_path / "a", replace_after_s=5.0)
        first = await in_service(plane, write_model(tmp_path / "m.onnx"))
        for seconds in range(12):
            plane.report([first[0]] if seconds % 4 else [])  # back in rotation every 4 s
            plane.clock.now += 1.0
            await plane.reconciler.idle()
        assert plane.instance_ids() == first

        never = Plane(tmp_path / "b", replace_after_s=0.0)
        first = await in_service(never, tmp_path / "m.onnx")
        for _ in range(100):
            never.report([first[0]])
            never.clock.now += 1.0
        await never.reconciler.idle()
        assert never.instance_ids() == first

    asyncio.run(scenario())


def test_a_report_naming_bad_instance_ids_is_refused(tmp_path):
    plane = Plane(tmp_path, replace_after_s=5.0)
    with pytest.raises(ValidationError, match="ejected_instance_ids"):
        plane.report(["x" * 257])
    with pytest.raises(ValidationError, match="ejected_instance_ids"):
        plane.report([f"A-{i}" for i in range(1001)])


@pytest.mark.parametrize("value", ["4.9", "3601", "-1"])
def test_replace_ejected_after_is_range_checked(tmp_path, value):
    with pytest.raises(SettingsError, match="--replace-ejected-after"):
        load_settings({"data_dir": tmp_path}, {"MVE_REPLACE_EJECTED_AFTER_S": value})


def test_replace_ejected_after_defaults_to_a_minute_and_zero_is_never(tmp_path):
    assert load_settings({"data_dir": tmp_path}, {}).replace_ejected_after_s == 60.0
    assert load_settings({"data_dir": tmp_path, "replace_ejected_after_s": 0.0}, {}).replace_ejected_after_s == 0.0
    assert load_settings({"data_dir": tmp_path, "replace_ejected_after_s": 5.0}, {}).replace_ejected_after_s == 5.0
