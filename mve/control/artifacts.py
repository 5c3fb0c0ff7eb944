"""The content-addressed artifact store: ``<data-dir>/artifacts/sha256/<hex>.onnx``.

CreateModel copies the model file here, so that a later change to the source file cannot change
a deployed endpoint, and inspects it with ONNX Runtime to record its inputs and outputs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mve.control.records import TensorSpec
from mve.errors import ValidationError

# ONNX Runtime's type strings -> V2 datatypes.
_ORT_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

MAX_ARTIFACT_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class StoredArtifact:
    """An artifact in the store, with the model's declared inputs and outputs."""

    path: Path
    sha256: str
    size_bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


def _spec(node) -> TensorSpec:
    datatype = _ORT_TO_V2.get(node.type)
    if datatype is None:
        raise ValidationError(f"Model input/output {node.name!r} has type {node.type}, which mve cannot serve.")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or ()))
    return TensorSpec(name=node.name, datatype=datatype, shape=shape)


def inspect_model(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Load `path` with ONNX Runtime on the CPU; its inputs and outputs, or ValidationError."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - ORT raises several types for a bad model
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValidationError(f"Could not load the model at {path} with ONNX Runtime: {first_line[:500]}") from None
    return [_spec(i) for i in session.get_inputs()], [_spec(o) for o in session.get_outputs()]


class ArtifactStore:
    """Copies model files into ``<root>/sha256/<hex>.onnx`` (idempotent, atomic)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)

    def put(self, source: Path) -> StoredArtifact:
        """Copy `source` in (hashing while copying), inspect it, and return where it lies."""
        source = Path(source)
        if not source.is_file():
            raise ValidationError(f"ModelDataUrl points to {source}, which does not exist or is not a file.")
        size = source.stat().st_size
        if size > MAX_ARTIFACT_BYTES:
            raise ValidationError(f"The model at {source} is {size} bytes; at most {MAX_ARTIFACT_BYTES} are allowed.")
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".incoming-", suffix=".onnx")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
            inputs, outputs = inspect_model(tmp)
            hexdigest = digest.hexdigest()
            final = self.root / "sha256" / f"{hexdigest}.onnx"
            if final.exists():
                tmp.unlink()
            else:
                os.chmod(tmp, 0o444)
                os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredArtifact(path=final, sha256=hexdigest, size_bytes=size, inputs=inputs, outputs=outputs)

    def remove_unused(self, sha256: str, still_used: bool) -> None:
        """Delete an artifact no model refers to any more."""
        if not still_used:
            (self.root / "sha256" / f"{sha256}.onnx").unlink(missing_ok=True)

