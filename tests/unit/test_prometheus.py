"""Prometheus text from the proxy's StatsBook and router and from the control plane's store.

Each collector's output is parsed back with prometheus_client's own parser and compared with
counts made here from the raw recorded values (numpy), not with the collector's arithmetic.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from mve._fastroute import LatencyHistogram
from mve._proto import control_pb2
from mve.control.prometheus import ControlPlaneCollector
from mve.control.records import EndpointRecord, InstanceRecord, VariantState
from mve.control.settings import SettingsError, load_settings
from mve.errors import ModelError, ValidationError
from mve.prometheus import MetricsServer, loop_reader
from mve.proxy.prometheus import BATCH_BOUNDS, LATENCY_BOUNDS, ProxyCollector
from mve.proxy.routing.router import Router
from mve.proxy.settings import ProxySettings
from mve.proxy.stats import StatsBook


def scrape(collector) -> dict:
    """{family name: family} from the collector's text, parsed by prometheus_client."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family, suffix: str = "", **labels) -> list:
    return [
        s for s in family.samples
        if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def value(family, suffix: str = "", **labels) -> float:
    (sample,) = samples(family, suffix, **labels)
    return sample.value


def table(version: int = 3) -> control_pb2.RoutingTable:
    def variant(name, weight, n):
        return control_pb2.VariantRoute(
            variant_name=name, model_name="m", weight=weight, routing_strategy="LEAST_OUTSTANDING_REQUESTS",
            instances=[control_pb2.InstanceRoute(instance_id=f"{name}-{i}", address=f"127.0.0.1:{9000 + i}")
                       for i in range(n)],
            inputs=[control_pb2.TensorSpec(name="input", datatype="FP32", shape=[-1, 30])],
        )

    return control_pb2.RoutingTable(
        version=version, control_plane_id="cp",
        endpoints=[control_pb2.EndpointRoute(endpoint_name="ep", variants=[variant("a", 0.7, 2), variant("b", 0.3, 1)])],
    )


@pytest.fixture
def recorded():
    """A StatsBook with known traffic (part of it drained, as the reporter does) and the raw values."""
    rng = np.random.default_rng(13)
    book = StatsBook()
    raw = {"a": {"model": [], "overhead": []}, "b": {"model": [], "overhead": []}}
    fine_edges = LatencyHistogram().bucket_bounds()
    edges_us = [float(fine_edges[i]) for i, _ in LATENCY_BOUNDS]  # values exactly on an exported edge
    for variant, n in (("a", 400), ("b", 150)):
        model = np.concatenate([rng.lognormal(8.0, 2.0, n), edges_us, [0.0, 0.5, 9e7, 2.0e9]])  # 2e9 us: past the top
        overhead = rng.uniform(0, 3000, len(model))
        for i, (m, o) in enumerate(zip(model, overhead)):
            book.record_success("ep", variant, float(m), float(o), instances=2 if variant == "a" else 1)
            if i == len(model) // 2:
                book.drain()
        raw[variant]["model"], raw[variant]["overhead"] = model, overhead
    book.record_error("ep", "a", ValidationError("bad"))
    book.record_error("ep", "a", ModelError("boom", original_status_code=500))
    rows = np.array([1, 1, 2, 3, 4, 4, 8, 8, 8, 16, 64, 65, 128, 129, 130, 1024, 1039, 1040, 5000])
    for r in rows:
        book.record_batch("ep", "b", int(r), 1, [float(r) * 10.0])
    raw["b"]["rows"] = rows
    return book, raw


def test_counters_match_the_statsbook_exactly(recorded):
    book, _ = recorded
    router = Router(seed=1)
    families = scrape(ProxyCollector(book, router))
    totals = book.snapshot()
    for (endpoint, variant), c in totals.items():
        labels = {"endpoint": endpoint, "variant": variant}
        assert value(families["mve_invocations"], "_total", **labels) == c.invocations
        assert value(families["mve_invocation_4xx_errors"], "_total", **labels) == c.invocation_4xx_errors
        assert value(families["mve_invocation_5xx_errors"], "_total", **labels) == c.invocation_5xx_errors
        assert value(families["mve_invocation_model_errors"], "_total", **labels) == c.invocation_model_errors
        assert value(families["mve_invocations_per_instance"], "_total", **labels) == c.per_instance_sum
    assert value(families["mve_invocations"], "_total", endpoint="ep", variant="a") == 400 + 21 + 4 + 2
    assert value(families["mve_invocation_4xx_errors"], "_total", endpoint="ep", variant="a") == 1
    assert value(families["mve_invocation_5xx_errors"], "_total", endpoint="ep", variant="a") == 1
    assert value(families["mve_invocation_model_errors"], "_total", endpoint="ep", variant="a") == 1
    assert families["mve_invocations"].type == "counter"


@pytest.mark.parametrize("variant", ["a", "b"])
def test_latency_buckets_are_exact_cumulative_counts_in_seconds(recorded, variant):
    book, raw = recorded
    families = scrape(ProxyCollector(book, Router(seed=1)))
    for name, key in (("mve_model_latency_seconds", "model"), ("mve_overhead_latency_seconds", "overhead")):
        family = families[name]
        assert family.type == "histogram"
        values_us = np.asarray(raw[variant][key])
        buckets = samples(family, "_bucket", endpoint="ep", variant=variant)
        assert len(buckets) == len(LATENCY_BOUNDS) + 1
        assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == len(values_us)
        counts = [b.value for b in buckets]
        assert counts == sorted(counts)
        for bucket in buckets[:-1]:
            edge_us = float(bucket.labels["le"]) * 1e6
            # A fine bucket is [lower, upper): the count at an edge is of the values strictly below it.
            assert bucket.value == np.count_nonzero(values_us < round(edge_us)), bucket.labels["le"]
        assert value(family, "_count", endpoint="ep", variant=variant) == len(values_us)
        total = book.snapshot()[("ep", variant)]
        expected_sum = getattr(total, "model_latency" if key == "model" else "overhead_latency").sum * 1e-6
        assert value(family, "_sum", endpoint="ep", variant=variant) == expected_sum
        assert math.isclose(expected_sum, values_us.sum() * 1e-6, rel_tol=1e-9)


def test_latency_bounds_cover_10us_to_a_minute_in_about_twenty_buckets():
    bounds = [float(label) for _, label in LATENCY_BOUNDS]
    assert 20 <= len(bounds) <= 30 and bounds == sorted(bounds)
    assert bounds[0] == 10e-6 and bounds[2] == 50e-6 and bounds[6] == 1e-3
    assert 59 < bounds[-1] < 61
    for target, bound in zip([2.5e-3, 1.0, 60.0], [bounds[7], bounds[15], bounds[-1]]):
        assert abs(bound - target) / target < 1 / 64


def test_batch_size_buckets_count_integers_at_or_below_le_exactly(recorded):
    book, raw = recorded
    family = scrape(ProxyCollector(book, Router(seed=1)))["mve_batch_size_rows"]
    rows = raw["b"]["rows"]
    buckets = samples(family, "_bucket", endpoint="ep", variant="b")
    labels = [b.labels["le"] for b in buckets]
    assert labels == ["1", "2", "4", "8", "16", "32", "64", "129", "259", "519", "1039", "+Inf"]
    for bucket in buckets[:-1]:
        assert bucket.value == np.count_nonzero(rows <= int(bucket.labels["le"])), bucket.labels["le"]
    assert buckets[-1].value == len(rows) == value(family, "_count", endpoint="ep", variant="b")
    assert value(family, "_sum", endpoint="ep", variant="b") == rows.sum()
    # Variant a sends no batches: no batch-size or queue-time series for it.
    assert not samples(family, "_count", variant="a")
    assert not samples(scrape(ProxyCollector(book, Router(seed=1)))["mve_queue_time_seconds"], "_count", variant="a")
    assert len(BATCH_BOUNDS) == 11


def test_routing_table_gauges():
    router = Router(seed=1)
    assert router.apply(table(version=5))
    families = scrape(ProxyCollector(StatsBook(), router))
    assert value(families["mve_proxy_routing_table_version"]) == 5
    assert value(families["mve_proxy_variant_instances"], endpoint="ep", variant="a") == 2
    assert value(families["mve_proxy_variant_instances"], endpoint="ep", variant="b") == 1
    assert value(families["mve_proxy_variant_weight"], endpoint="ep", variant="a") == pytest.approx(0.7)
    # An instance ejected for refusing a connection is not counted while it is skipped.
    router.state.endpoints["ep"].by_name["a"].eject(0)
    families = scrape(ProxyCollector(StatsBook(), router))
    assert value(families["mve_proxy_variant_instances"], endpoint="ep", variant="a") == 1


def test_an_empty_proxy_scrapes_cleanly():
    families = scrape(ProxyCollector(StatsBook(), Router(seed=1)))
    assert value(families["mve_proxy_routing_table_version"]) == 0
    assert families["mve_invocations"].samples == []


def test_loop_reader_runs_on_the_loop_thread_and_times_out_when_the_loop_is_stuck():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        read = loop_reader(loop, timeout_s=0.3)
        assert read(threading.get_ident) == thread.ident
        with pytest.raises(ZeroDivisionError):
            read(lambda: 1 / 0)
        loop.call_soon_threadsafe(time.sleep, 0.6)  # the loop is busy for longer than the timeout
        time.sleep(0.05)
        with pytest.raises(TimeoutError, match="did not answer"):
            read(lambda: 1)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_metrics_server_serves_text_on_a_free_port_and_stops():
    book = StatsBook()
    book.record_success("ep", "a", 120.0, 30.0)
    server = MetricsServer(ProxyCollector(book, Router(seed=1)), "proxy")
    address = server.start("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert 'mve_invocations_total{endpoint="ep",variant="a"} 1.0' in text
    finally:
        server.stop()
    server.stop()  # twice is fine
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://{address}/metrics", timeout=2)


def test_metrics_server_on_a_busy_port_says_so():
    first = MetricsServer(ProxyCollector(StatsBook(), Router(seed=1)), "proxy")
    address = first.start("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match="cannot bind the metrics port"):
            MetricsServer(ProxyCollector(StatsBook(), Router(seed=1)), "proxy").start("127.0.0.1", int(address.split(":")[1]))
    finally:
        first.stop()


# ------------------------------------------------------------------ control plane


class FakeStore:
    def __init__(self, endpoints, instances):
        self.endpoints, self.instances = endpoints, instances

    def list_endpoints(self):
        return self.endpoints

    def list_instances(self):
        return self.instances


class FakeAlarms:
    def __init__(self, alarms):
        self.alarms = alarms

    def list_alarms(self):
        return self.alarms


def control_state():
    endpoint = EndpointRecord(
        name="ep", arn="arn", config_name="cfg", status="InService", failure_reason="", creation_time=0.0,
        last_modified_time=0.0,
        variants=[VariantState("a", 0.5, 0.25, 2), VariantState("b", 0.5, 0.75, 1)],
    )
    failed = EndpointRecord(
        name="bad", arn="arn", config_name="cfg", status="Failed", failure_reason="x", creation_time=0.0,
        last_modified_time=0.0, variants=[VariantState("a", 1.0, 1.0, 1)],
    )

    def instance(endpoint, variant, i, status):
        return InstanceRecord(endpoint, variant, f"{variant}-{i}", 100 + i, f"127.0.0.1:{9000 + i}", status, 0.0)

    instances = [
        instance("ep", "a", 0, "InService"), instance("ep", "a", 1, "Starting"),
        instance("ep", "b", 2, "InService"), instance("ep", "b", 3, "Stopping"),
    ]
    routes = SimpleNamespace(current=control_pb2.RoutingTable(version=42), subscriber_count=3)
    return FakeStore([endpoint, failed], instances), routes


def test_control_plane_gauges_from_the_store():
    store, routes = control_state()
    families = scrape(ControlPlaneCollector(store, routes))
    status = families["mve_endpoint_status"]
    assert value(status, endpoint="ep", status="InService") == 1
    assert value(status, endpoint="ep", status="Creating") == 0
    assert value(status, endpoint="bad", status="Failed") == 1
    assert sum(s.value for s in samples(status, endpoint="ep")) == 1
    assert value(families["mve_variant_desired_instances"], endpoint="ep", variant="a") == 2
    assert value(families["mve_variant_instances"], endpoint="ep", variant="a") == 1
    assert value(families["mve_variant_instances"], endpoint="ep", variant="b") == 1
    assert value(families["mve_variant_instances"], endpoint="bad", variant="a") == 0
    assert value(families["mve_variant_current_weight"], endpoint="ep", variant="b") == 0.75
    assert value(families["mve_variant_desired_weight"], endpoint="ep", variant="b") == 0.5
    assert value(families["mve_routing_table_version"]) == 42
    assert value(families["mve_proxies_subscribed"]) == 3
    assert families["mve_alarm_state"].samples == []  # no alarm store


def test_control_plane_alarm_states_are_a_state_set():
    store, routes = control_state()
    alarms = FakeAlarms([SimpleNamespace(name="p99-high", state="ALARM"), SimpleNamespace(name="errors", state="OK"),
                         SimpleNamespace(name="new", state="INSUFFICIENT_DATA")])
    family = scrape(ControlPlaneCollector(store, routes, alarms))["mve_alarm_state"]
    assert value(family, alarm="p99-high", state="ALARM") == 1
    assert value(family, alarm="p99-high", state="OK") == 0
    assert value(family, alarm="errors", state="OK") == 1
    assert value(family, alarm="new", state="INSUFFICIENT_DATA") == 1
    assert len(family.samples) == 9


def test_alarm_state_objects_with_a_value_are_read_too():
    store, routes = control_state()
    alarms = FakeAlarms([SimpleNamespace(name="p99-high", state=SimpleNamespace(value="ALARM", reason="x"))])
    family = scrape(ControlPlaneCollector(store, routes, alarms))["mve_alarm_state"]
    assert value(family, alarm="p99-high", state="ALARM") == 1
    assert value(family, alarm="p99-high", state="OK") == 0


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize("port", [-2, 65536])
def test_proxy_metrics_port_out_of_range_is_refused(port):
    with pytest.raises(ValidationError, match="--metrics-port must be 0-65535"):
        ProxySettings(metrics_port=port).validate()


def test_proxy_metrics_settings():
    assert ProxySettings().metrics_port == 9464
    assert not ProxySettings(metrics_port=-1).validate().metrics_enabled
    assert ProxySettings(host="0.0.0.0").effective_metrics_host == "0.0.0.0"
    assert ProxySettings(metrics_host="127.0.0.2").effective_metrics_host == "127.0.0.2"
    with pytest.raises(ValidationError, match="must differ from --port"):
        ProxySettings(port=9000, metrics_port=9000).validate()


def test_control_plane_metrics_settings(tmp_path):
    assert load_settings({"data_dir": tmp_path}, env={}).metrics_port == 9465
    assert load_settings({"data_dir": tmp_path}, env={"MVE_CONTROL_PLANE_METRICS_PORT": "0"}).metrics_port == 0
    assert not load_settings({"data_dir": tmp_path, "metrics_port": -1}, env={}).metrics_enabled
    with pytest.raises(SettingsError, match="--metrics-port must be 0-65535"):
        load_settings({"data_dir": tmp_path, "metrics_port": 70000}, env={})


def test_scrapes_from_another_thread_never_see_a_counter_go_back_while_the_loop_records_and_drains():
    book, router = StatsBook(), Router(seed=1)
    loop = asyncio.new_event_loop()

    async def traffic(stop: asyncio.Event):
        i = 0
        while not stop.is_set():
            book.record_success("ep", "a", 100.0, 10.0)
            i += 1
            if i % 50 == 0:
                book.drain()  # what the reporter does every interval
            if i % 10 == 0:
                await asyncio.sleep(0)

    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(traffic(stop),), daemon=True)
    thread.start()
    try:
        collector = ProxyCollector(book, router, read=loop_reader(loop))
        seen = []
        for _ in range(30):
            families = scrape(collector)
            count = value(families["mve_invocations"], "_total", endpoint="ep", variant="a") if samples(
                families["mve_invocations"], "_total") else 0
            if count:
                assert value(families["mve_model_latency_seconds"], "_count", endpoint="ep", variant="a") == count
            seen.append(count)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(5)
        loop.close()
    assert seen == sorted(seen) and seen[-1] > 0
