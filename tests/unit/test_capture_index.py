"""The capture index reads capture files in SageMaker's record format, every body encoding, exactly once."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest

from mve._proto import grpc_predict_v2_pb2 as v2
from mve.control.capture_index import CaptureIndex, CaptureTarget, capture_directory, malformed_counts
from mve.control.capture_records import parse_line, positive_scores, predicted_labels, unpack_outputs
from mve.control.experiments_db import ExperimentsDb

EP = "ab"
WHEN = 1_795_000_000.25  # 2026-11-18T...: an hour directory of its own
PROTOBUF = "application/x-protobuf; messageType=inference.ModelInferResponse"


def record(inference_id: str, output: dict | None, when: float = WHEN) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when * 1000) % 1000:03d}Z"
    capture = {"endpointInput": {"observedContentType": "text/csv", "mode": "INPUT", "data": "1,2", "encoding": "CSV"}}
    if output is not None:
        capture["endpointOutput"] = {"mode": "OUTPUT", **output}
    line = {
        "captureData": capture,
        "eventMetadata": {"eventId": f"e-{inference_id}", "inferenceId": inference_id, "inferenceTime": stamp},
        "eventVersion": "0",
    }
    return (json.dumps(line, separators=(",", ":")) + "\n").encode()


def json_output(predictions: dict, encoding: str = "JSON") -> dict:
    text = json.dumps({"predictions": predictions})
    data = text if encoding == "JSON" else base64.b64encode(text.encode()).decode()
    return {"observedContentType": "application/json", "data": data, "encoding": encoding}


def npy_output(array: np.ndarray) -> dict:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return {"observedContentType": "application/x-npy", "data": base64.b64encode(buffer.getvalue()).decode(), "encoding": "BASE64"}


def csv_output(text: str) -> dict:
    return {"observedContentType": "text/csv", "data": text, "encoding": "CSV"}


def model_infer_output(label: np.ndarray, probabilities: np.ndarray) -> dict:
    response = v2.ModelInferResponse(model_name=EP, id="x")
    for name, array, datatype in (("label", label, "INT64"), ("probabilities", probabilities, "FP32")):
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    return {"observedContentType": PROTOBUF, "data": base64.b64encode(response.SerializeToString()).decode(), "encoding": "BASE64"}


def capture_file(root, variant: str, name: str = "00-00-000-test.jsonl", when: float = WHEN):
    hour = time.gmtime(when)
    folder = root / EP / variant / f"{hour.tm_year:04d}" / f"{hour.tm_mon:02d}" / f"{hour.tm_mday:02d}" / f"{hour.tm_hour:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def rows(db: ExperimentsDb):
    return db.connection().execute(
        "SELECT variant, inference_id, time, rows, labels, scores, outputs FROM captured ORDER BY id"
    ).fetchall()


@pytest.fixture
def setup(tmp_path):
    db = ExperimentsDb(tmp_path / "experiments.db")
    index = CaptureIndex(db, clock=lambda: WHEN + 10)
    target = CaptureTarget(EP, capture_directory(f"file://{tmp_path / 'capture'}", EP))
    yield tmp_path / "capture", db, index, target
    index.close()
    db.close()


def test_every_encoding_and_answer_type(setup):
    root, db, index, target = setup
    lines = [
        record("json", json_output({"label": [1, 0], "probabilities": [[0.2, 0.8], [0.9, 0.1]]})),
        record("json-b64", json_output({"label": [0], "probabilities": [[0.7, 0.3]]}, encoding="BASE64")),
        record("npy-label", npy_output(np.array([1, 1, 0], np.int64))),
        record("npy-probabilities", npy_output(np.array([[0.4, 0.6]], np.float32))),
        record("csv-label", csv_output("1\n0\n")),
        record("csv-score", csv_output("0.25\n0.75\n")),
        record("infer", model_infer_output(np.array([0, 1], np.int64), np.array([[0.6, 0.4], [0.1, 0.9]], np.float32))),
        record("input-only", None),
    ]
    capture_file(root, "A").write_bytes(b"".join(lines))
    result = index.scan([target])
    assert result.records == 8 and result.malformed == 0
    by_id = {r[1]: r for r in rows(db)}
    assert {r[0] for r in by_id.values()} == {"A"}
    assert by_id["json"][2] == pytest.approx(WHEN, abs=1e-3)
    expect = {
        "json": (2, ["1", "0"], [0.8, 0.1]),
        "json-b64": (1, ["0"], [0.3]),
        "npy-label": (3, ["1", "1", "0"], None),
        "npy-probabilities": (1, None, None),  # a float output with 2 columns and no name: no label, no score
        "csv-label": (2, ["1", "0"], None),
        "csv-score": (2, None, [0.25, 0.75]),
        "infer": (2, ["0", "1"], [pytest.approx(0.4), pytest.approx(0.9)]),
        "input-only": (0, None, None),
    }
    for inference_id, (n, labels, scores) in expect.items():
        _, _, _, stored_rows, stored_labels, stored_scores, _ = by_id[inference_id]
        assert stored_rows == n, inference_id
        assert (json.loads(stored_labels) if stored_labels else None) == labels, inference_id
        assert (json.loads(stored_scores) if stored_scores else None) == scores, inference_id


def test_stored_outputs_answer_other_output_choices(setup):
    root, db, index, target = setup
    predictions = {"label": [1, 0], "probabilities": [[0.2, 0.8], [0.9, 0.1]], "class_name": ["benign", "malignant"]}
    capture_file(root, "A").write_bytes(record("x", json_output(predictions)))
    index.scan([target])
    outputs = unpack_outputs(rows(db)[0][6])
    assert predicted_labels(outputs, "class_name") == ["benign", "malignant"]
    assert positive_scores(outputs, "probabilities", positive_label="0") == pytest.approx([0.2, 0.9])
    assert predicted_labels(outputs, "missing") is None


def test_an_incomplete_last_line_is_read_once_it_is_whole(setup):
    root, db, index, target = setup
    path = capture_file(root, "B")
    first, second = record("one", csv_output("1\n")), record("two", csv_output("0\n"))
    path.write_bytes(first + second[:40])
    assert index.scan([target]).records == 1
    assert index.scan([target]).records == 0  # still incomplete: left for later
    with open(path, "ab") as file:
        file.write(second[40:])
    assert index.scan([target]).records == 1
    assert [r[1] for r in rows(db)] == ["one", "two"]


def test_offsets_survive_a_restart(setup, tmp_path):
    root, db, index, target = setup
    path = capture_file(root, "A")
    path.write_bytes(record("one", csv_output("1\n")))
    index.scan([target])
    index.close()
    db.close()
    db2 = ExperimentsDb(tmp_path / "experiments.db")
    restarted = CaptureIndex(db2, clock=lambda: WHEN + 10)
    try:
        with open(path, "ab") as file:
            file.write(record("two", csv_output("0\n")))
        assert restarted.scan([target]).records == 1  # the new line only
        assert [r[1] for r in rows(db2)] == ["one", "two"]
    finally:
        restarted.close()
        db2.close()


def test_malformed_lines_are_counted_and_skipped(setup):
    root, db, index, target = setup
    capture_file(root, "A").write_bytes(
        b"not json\n" + b'{"eventMetadata": {"inferenceId": "x"}}\n' + record("good", csv_output("1\n")) + b"\n"
    )
    result = index.scan([target])
    assert (result.records, result.malformed) == (1, 2)
    count, error = malformed_counts(db, EP)["A"]
    assert count == 2 and "inferenceTime" in error


def test_an_unreadable_output_keeps_the_record_without_labels():
    invocation = parse_line(record("x", {"observedContentType": "application/json", "data": "{nope", "encoding": "JSON"}))
    assert invocation.outputs is None and "not readable" in invocation.output_problem


def test_a_quick_pass_reads_recent_hours_and_a_full_pass_reads_every_file(tmp_path):
    db = ExperimentsDb(tmp_path / "experiments.db")
    now = [WHEN]
    index = CaptureIndex(db, clock=lambda: now[0])
    target = CaptureTarget(EP, tmp_path / "capture" / EP)
    try:
        index.scan([target])  # the first pass is a full one
        capture_file(tmp_path / "capture", "A", when=WHEN).write_bytes(record("recent", csv_output("1\n")))
        old = WHEN - 5 * 3600
        capture_file(tmp_path / "capture", "A", when=old).write_bytes(record("old", csv_output("1\n"), when=old))
        assert index.scan([target], full=False).records == 1
        assert index.scan([target], full=True).records == 1
        assert sorted(r[1] for r in rows(db)) == ["old", "recent"]
    finally:
        index.close()
        db.close()


def test_retention_deletes_old_rows_and_feedback(tmp_path):
    db = ExperimentsDb(tmp_path / "experiments.db")
    index = CaptureIndex(db, retention_s=3600, clock=lambda: WHEN)
    try:
        with db.transaction() as c:
            c.execute("INSERT INTO captured (endpoint, variant, inference_id, time, rows) VALUES ('e', 'A', 'old', ?, 1)", (WHEN - 7200,))
            c.execute("INSERT INTO captured (endpoint, variant, inference_id, time, rows) VALUES ('e', 'A', 'new', ?, 1)", (WHEN - 60,))
            c.execute("INSERT INTO feedback VALUES ('e', 'old', NULL, 1.0, ?, ?)", (WHEN - 7200, WHEN - 7200))
        assert index.expire() == (1, 1)
        assert [r[1] for r in rows(db)] == ["new"]
    finally:
        index.close()
        db.close()


def test_a_backlog_larger_than_one_read_is_indexed_in_one_pass(setup, monkeypatch):
    import mve.control.capture_index as capture_index

    root, db, index, target = setup
    lines = [record(f"r{i}", csv_output(f"{i % 2}\n")) for i in range(50)]
    monkeypatch.setattr(capture_index, "MAX_READ_BYTES", len(lines[0]) * 3 + 7)  # a read ends mid-line
    capture_file(root, "A").write_bytes(b"".join(lines))
    result = index.scan([target])
    assert (result.records, result.files_read) == (50, 1)
    assert [r[1] for r in rows(db)] == [f"r{i}" for i in range(50)]
