"""Data capture in the proxy: the record format, encodings, files, rotation, bounds and flushing."""

from __future__ import annotations

import base64
import calendar
import json
import threading
import time
import uuid
from pathlib import Path

import pytest

from mve._proto import control_pb2
from mve.errors import ValidationError
from mve.proxy.capture import (
    MODEL_INFER_REQUEST_TYPE,
    CapturePolicy,
    CaptureRecord,
    destination_path,
    inference_time,
    record_line,
)
from mve.proxy.capture_writer import CaptureWriter
from mve.proxy.inference_ids import InferenceIds

WHEN = calendar.timegm((2026, 11, 30, 1, 2, 3)) + 0.456  # 2026-11-30T01:02:03.456Z


def policy(tmp_path=Path("/tmp/capture"), *, modes=(), percentage=100, csv=("text/csv",), json_types=("application/json",)):
    return CapturePolicy.from_config(control_pb2.DataCaptureConfig(
        enable_capture=True, initial_sampling_percentage=percentage, destination_s3_uri=str(tmp_path),
        capture_modes=list(modes), csv_content_types=list(csv), json_content_types=list(json_types),
    ))


def record(capture, *, variant="v1", when=WHEN, inference_id="id-1", body=b"1,2,3", content_type="text/csv",
           output=b'{"predictions": {"label": [1]}}', output_type="application/json"):
    return CaptureRecord(capture, "ep", variant, inference_id, when, body, content_type, output, output_type)


def lines_under(root: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(root.rglob("*.jsonl")) for line in path.read_text().splitlines()]


def test_a_record_is_sagemakers_capture_format_one_line_per_invocation():
    line = record_line(record(policy()))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    parsed = json.loads(line)
    assert parsed == {
        "captureData": {
            "endpointInput": {"observedContentType": "text/csv", "mode": "INPUT", "data": "1,2,3", "encoding": "CSV"},
            "endpointOutput": {
                "observedContentType": "application/json", "mode": "OUTPUT",
                "data": '{"predictions": {"label": [1]}}', "encoding": "JSON",
            },
        },
        "eventMetadata": {
            "eventId": parsed["eventMetadata"]["eventId"], "inferenceId": "id-1",
            "inferenceTime": "2026-11-30T01:02:03.456Z",
        },
        "eventVersion": "0",
    }
    assert uuid.UUID(parsed["eventMetadata"]["eventId"]).version == 4


def test_encodings_follow_the_content_type_lists_without_parameters_or_case():
    capture = policy(csv=("Text/CSV; charset=utf-8",), json_types=("application/json",))
    assert capture.encoding("text/csv") == "CSV"
    assert capture.encoding("TEXT/csv; header=present") == "CSV"
    assert capture.encoding("Application/JSON") == "JSON"
    assert capture.encoding("application/x-npy") == "BASE64"
    npy = b"\x93NUMPY\x01\x00"
    part = json.loads(record_line(record(capture, body=npy, content_type="application/x-npy")))["captureData"]["endpointInput"]
    assert part == {"observedContentType": "application/x-npy", "mode": "INPUT",
                    "data": base64.b64encode(npy).decode(), "encoding": "BASE64"}


def test_without_content_type_lists_every_body_is_base64_as_in_sagemaker():
    capture = policy(csv=(), json_types=())
    part = json.loads(record_line(record(capture)))["captureData"]["endpointInput"]
    assert part["encoding"] == "BASE64" and base64.b64decode(part["data"]) == b"1,2,3"


def test_a_text_body_that_is_not_utf8_is_base64():
    part = json.loads(record_line(record(policy(), body=b"\xff\xfe")))["captureData"]["endpointInput"]
    assert part["encoding"] == "BASE64" and base64.b64decode(part["data"]) == b"\xff\xfe"


@pytest.mark.parametrize("modes, sides", [
    ((), {"endpointInput", "endpointOutput"}),
    (("InputAndOutput",), {"endpointInput", "endpointOutput"}),
    (("Input",), {"endpointInput"}),
    (("Output",), {"endpointOutput"}),
    (("Input", "Output"), {"endpointInput", "endpointOutput"}),
])
def test_capture_modes_pick_the_sides(modes, sides):
    assert set(json.loads(record_line(record(policy(modes=modes))))["captureData"]) == sides


def test_a_model_infer_record_is_base64_of_the_messages_with_their_protobuf_types():
    capture = policy()
    line = json.loads(record_line(CaptureRecord(
        capture, "ep", "v1", "id-2", WHEN, b"\x0a\x02ep", MODEL_INFER_REQUEST_TYPE, lambda: b"\x0a\x02ep\x1a\x01x",
        "application/x-protobuf; messageType=inference.ModelInferResponse",
    )))
    assert line["captureData"]["endpointInput"]["observedContentType"] == (
        "application/x-protobuf; messageType=inference.ModelInferRequest"
    )
    assert line["captureData"]["endpointInput"]["encoding"] == "BASE64"
    assert base64.b64decode(line["captureData"]["endpointOutput"]["data"]) == b"\x0a\x02ep\x1a\x01x"


def test_policy_from_config():
    assert CapturePolicy.from_config(control_pb2.DataCaptureConfig(enable_capture=False)) is None
    capture = policy(Path("/data/capture"), percentage=25, modes=("Output",))
    assert (capture.destination, capture.fraction, capture.capture_input, capture.capture_output) == (
        "/data/capture", 0.25, False, True
    )
    for bad in (dict(initial_sampling_percentage=101), dict(capture_modes=["Everything"]),
                dict(destination_s3_uri="s3://bucket/prefix")):
        config = dict(enable_capture=True, initial_sampling_percentage=10, destination_s3_uri="/tmp/x") | bad
        with pytest.raises(ValidationError):
            CapturePolicy.from_config(control_pb2.DataCaptureConfig(**config))


def test_destinations_are_local_paths_or_file_uris():
    assert destination_path("file:///var/capture%20data") == "/var/capture data"
    assert destination_path("file://localhost/var/capture") == "/var/capture"
    assert destination_path("/var/capture/") == "/var/capture"
    for bad in ("s3://bucket/x", "file://otherhost/x", "  "):
        with pytest.raises(ValidationError):
            destination_path(bad)


def test_inference_time_is_utc_with_milliseconds():
    assert inference_time(WHEN) == "2026-11-30T01:02:03.456Z"
    assert inference_time(calendar.timegm((2026, 1, 2, 23, 59, 59)) + 0.9999) == "2026-01-02T23:59:59.999Z"


def test_files_are_per_endpoint_variant_and_hour_named_after_their_first_record(tmp_path):
    writer = CaptureWriter(incarnation="inc1", flush_interval_s=60)
    capture = policy(tmp_path)
    writer.submit(record(capture, when=WHEN, inference_id="a"))
    writer.submit(record(capture, when=WHEN + 10, inference_id="b"))
    writer.submit(record(capture, when=WHEN + 3600, inference_id="c"))  # the next hour: a new file
    writer.submit(record(capture, variant="shadow", when=WHEN + 1, inference_id="d"))
    writer.close()
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.jsonl"))
    assert files == [
        "ep/shadow/2026/11/30/01/02-04-456-inc1.jsonl",
        "ep/v1/2026/11/30/01/02-03-456-inc1.jsonl",
        "ep/v1/2026/11/30/02/02-03-456-inc1.jsonl",
    ]
    first = [json.loads(line)["eventMetadata"]["inferenceId"]
             for line in (tmp_path / files[1]).read_text().splitlines()]
    assert first == ["a", "b"]
    assert writer.written() == {("ep", "v1"): 3, ("ep", "shadow"): 1} and writer.dropped() == {}


def test_a_file_past_its_size_is_followed_by_a_new_one_and_lines_stay_whole(tmp_path):
    capture = policy(tmp_path)
    line_bytes = len(record_line(record(capture)))
    writer = CaptureWriter(incarnation="inc1", file_max_bytes=3 * line_bytes + 10, flush_interval_s=60)
    for i in range(10):
        writer.submit(record(capture, when=WHEN, inference_id=f"id-{i:03d}"))  # same millisecond: names must differ
    writer.close()
    files = sorted(tmp_path.rglob("*.jsonl"))
    assert [len(p.read_text().splitlines()) for p in files] == [3, 3, 3, 1]
    assert all(p.stat().st_size <= 3 * line_bytes + 10 and p.read_bytes().endswith(b"\n") for p in files)
    assert [line["eventMetadata"]["inferenceId"] for line in lines_under(tmp_path)] == [f"id-{i:03d}" for i in range(10)]


def test_records_reach_their_file_within_the_flush_interval_without_closing(tmp_path):
    writer = CaptureWriter(flush_interval_s=0.05)
    writer.submit(record(policy(tmp_path)))
    deadline = time.monotonic() + 5
    while not lines_under(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(lines_under(tmp_path)) == 1
    writer.close()


def test_close_writes_and_flushes_everything_queued(tmp_path):
    writer = CaptureWriter(flush_interval_s=60)  # no timed flush before close
    capture = policy(tmp_path)
    for i in range(500):
        assert writer.submit(record(capture, inference_id=str(i)))
    writer.close()
    assert [line["eventMetadata"]["inferenceId"] for line in lines_under(tmp_path)] == [str(i) for i in range(500)]
    assert writer.written() == {("ep", "v1"): 500}
    assert not writer.submit(record(capture)) and writer.dropped() == {("ep", "v1"): 1}  # closed


def test_a_blocked_writer_drops_past_the_queue_bound_and_the_caller_never_waits(tmp_path):
    release = threading.Event()
    opened = threading.Event()

    def slow_disk(path):
        opened.set()
        release.wait(10)
        return open(path, "ab", buffering=0)

    writer = CaptureWriter(max_records=100, flush_interval_s=0.05, open_file=lambda p: _mkdir_then(p, slow_disk))
    capture = policy(tmp_path)
    assert writer.submit(record(capture, inference_id="first"))
    assert opened.wait(5)  # the writer took the first record and is stuck on the disk
    started = time.perf_counter()
    accepted = sum(writer.submit(record(capture, inference_id=str(i))) for i in range(1000))
    elapsed = time.perf_counter() - started
    assert accepted == 100 and writer.dropped() == {("ep", "v1"): 900}
    assert elapsed < 0.5  # 1,000 submits against a stuck disk: no waiting (about 1 us each)
    release.set()
    writer.close()
    assert writer.written() == {("ep", "v1"): 101}
    assert len(lines_under(tmp_path)) == 101


def test_the_queue_is_bounded_in_bytes_too(tmp_path):
    release = threading.Event()
    writer = CaptureWriter(max_bytes=10_000, open_file=lambda p: (release.wait(10), _mkdir_then(p, _append))[1])
    capture = policy(tmp_path)
    body = b"x" * 1000
    results = [writer.submit(record(capture, body=body, output=b"")) for _ in range(20)]
    assert 7 <= sum(results) <= 10 and not results[-1]  # ~1,256 bytes each against 10,000 (+1 the writer holds)
    release.set()
    writer.close()


def test_a_failing_disk_drops_and_counts_and_the_writer_goes_on(tmp_path):
    failures = {"left": 1}

    def flaky(path):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(28, "No space left on device")
        return _mkdir_then(path, _append)

    writer = CaptureWriter(open_file=flaky, flush_interval_s=60)
    capture = policy(tmp_path)
    writer.submit(record(capture, inference_id="lost"))
    writer.submit(record(capture, inference_id="kept", when=WHEN + 1))
    writer.close()
    assert [line["eventMetadata"]["inferenceId"] for line in lines_under(tmp_path)] == ["kept"]
    assert writer.dropped() == {("ep", "v1"): 1} and writer.written() == {("ep", "v1"): 1}


def test_a_file_that_failed_a_write_is_never_appended_to_again(tmp_path):
    class BrokenOnce:
        """The first file's first write tears after 10 bytes and fails; every other write works."""

        torn = False

        def __init__(self, path):
            self.file = _mkdir_then(path, _append)

        def write(self, data):
            if not BrokenOnce.torn:
                BrokenOnce.torn = True
                self.file.write(bytes(data[:10]))
                raise OSError(5, "I/O error")
            return self.file.write(data)

        def close(self):
            self.file.close()

    writer = CaptureWriter(open_file=BrokenOnce, flush_interval_s=0.05, incarnation="i")
    capture = policy(tmp_path)
    writer.submit(record(capture, inference_id="torn"))
    deadline = time.monotonic() + 5
    while not writer.dropped() and time.monotonic() < deadline:  # the first flush tears the line
        time.sleep(0.01)
    writer.submit(record(capture, inference_id="next"))  # the same millisecond as the torn file's name
    writer.close()
    torn, fresh = sorted(tmp_path.rglob("*.jsonl"))
    assert (torn.name, fresh.name) == ("02-03-456-i.jsonl", "02-03-457-i.jsonl")
    assert len(torn.read_bytes()) == 10 and not torn.read_bytes().endswith(b"\n")  # a reader skips it
    assert json.loads(fresh.read_text())["eventMetadata"]["inferenceId"] == "next"
    assert writer.dropped() == {("ep", "v1"): 1} and writer.written() == {("ep", "v1"): 1}


def test_inference_ids_are_uuid_shaped_and_unique():
    ids = InferenceIds()
    made = [ids.new() for _ in range(10_000)]
    assert len(set(made)) == 10_000
    for value in made[:3] + made[-3:]:
        parsed = uuid.UUID(value)
        assert str(parsed) == value and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert made[0].rsplit("-", 1)[1] == "000000000001"
    assert len({InferenceIds().prefix for _ in range(100)}) == 100  # a process's random part


def _append(path):
    return open(path, "ab", buffering=0)


def _mkdir_then(path, opener):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return opener(path)


@pytest.mark.parametrize("field, bad", [
    ("capture_queue_records", 0), ("capture_queue_mb", 0), ("capture_queue_mb", 70_000),
    ("capture_file_max_mb", 0), ("capture_flush_interval_s", 0.0), ("capture_flush_interval_s", 61.0),
    ("shadow_max_in_flight", 0), ("shadow_max_in_flight", 100_001),
])
def test_capture_and_shadow_flags_have_validated_ranges(field, bad):
    from mve.proxy.settings import ProxySettings

    with pytest.raises(ValidationError, match="must be between"):
        ProxySettings(**{field: bad}).validate()


def test_capture_and_shadow_flags_and_environment(monkeypatch):
    import argparse

    from mve.proxy import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    monkeypatch.setenv("MVE_PROXY_SHADOW_MAX_IN_FLIGHT", "32")
    settings = cli.settings_from_args(parser.parse_args([
        "proxy", "--capture-queue-records", "5", "--capture-queue-mb", "2", "--capture-file-max-mb", "3",
        "--capture-flush-interval", "0.5",
    ]))
    assert (settings.capture_queue_records, settings.capture_queue_mb, settings.capture_file_max_mb,
            settings.capture_flush_interval_s, settings.shadow_max_in_flight) == (5, 2, 3, 0.5, 32)
    defaults = cli.settings_from_args(parser.parse_args(["proxy"]))
    assert (defaults.capture_queue_records, defaults.capture_queue_mb, defaults.capture_file_max_mb,
            defaults.capture_flush_interval_s) == (10_000, 64, 64, 1.0)
