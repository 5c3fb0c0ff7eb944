"""One ONNX Runtime session and the Open Inference Protocol view of its inputs and outputs."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mve.errors import ModelError
from mve.modelserver.devices import cuda_unavailable_reason, providers_for
from mve.tensors import DTYPE_TO_DATATYPE

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"
MODEL_VERSION = "1"

# ONNX Runtime type strings of tensors -> V2 datatypes (names from mve.tensors).
_ORT_NUMPY = {
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(float16)": np.float16,
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
}
ORT_TO_DATATYPE = {ort: DTYPE_TO_DATATYPE[np.dtype(np_type)] for ort, np_type in _ORT_NUMPY.items()}
ORT_TO_DATATYPE["tensor(string)"] = "BYTES"


class ModelLoadError(Exception):
    """The model cannot be served: unreadable file, unsupported signature, or device not usable."""


@dataclass(frozen=True)
class TensorSpec:
    """An input or output of the model: name, V2 datatype and shape (-1 for a dynamic dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def accepts(self, shape) -> bool:
        """Whether a concrete request shape fits: same rank, fixed dimensions equal, no negatives."""
        if len(shape) != len(self.shape):
            return False
        return all(dim >= 0 and (want == -1 or dim == want) for dim, want in zip(shape, self.shape))


def _spec(node_arg, role: str) -> TensorSpec:
    datatype = ORT_TO_DATATYPE.get(node_arg.type)
    if datatype is None:
        raise ModelLoadError(
            f"{role} '{node_arg.name}' is {node_arg.type}; only tensors can be served "
            "(for scikit-learn classifiers convert with skl2onnx option zipmap=False)"
        )
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node_arg.shape)
    return TensorSpec(node_arg.name, datatype, shape)


class OnnxModel:
    """A loaded ONNX model: its tensor specs and a thread-safe `run` that can be cancelled.

    `threads` is ONNX Runtime's intra-op thread count (inter-op is 1); the server calls `run` from
    one worker thread, so one run at a time uses them all.
    """

    def __init__(self, path: Path, *, device: tuple[str, int] = ("cpu", 0), threads: int = 1):
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"model file {self.path} does not exist")
        kind, device_id = device
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._session = onnxruntime.InferenceSession(
                str(self.path), sess_options=options, providers=providers_for(kind, device_id)
            )
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... types
            if kind == "cuda":
                raise ModelLoadError(
                    f"CUDA is not available for device cuda:{device_id}, or the model cannot be loaded: "
                    f"{error} ({cuda_unavailable_reason(device_id)})"
                ) from error
            raise ModelLoadError(f"cannot load model {self.path}: {error}") from error
        self.providers = tuple(self._session.get_providers())
        if kind == "cuda" and "CUDAExecutionProvider" not in self.providers:
            raise ModelLoadError(
                f"CUDA is not available for device cuda:{device_id}: {cuda_unavailable_reason(device_id)}"
            )
        self.inputs = tuple(_spec(arg, "input") for arg in self._session.get_inputs())
        self.outputs = tuple(_spec(arg, "output") for arg in self._session.get_outputs())
        self._run_options_type = onnxruntime.RunOptions
        self._active: set = set()
        self._lock = threading.Lock()

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the session (blocking; ONNX Runtime releases the GIL). Failures raise ModelError."""
        run_options = self._run_options_type()
        with self._lock:
            self._active.add(run_options)
        try:
            return self._session.run(output_names, feeds, run_options)
        except Exception as error:  # any onnxruntime failure at run time is the model's error
            raise ModelError(f"model failed: {error}", original_message=str(error)[:1024]) from error
        finally:
            with self._lock:
                self._active.discard(run_options)

    def cancel_all(self) -> int:
        """Ask every run in progress to stop (used when the shutdown grace period is over)."""
        with self._lock:
            for run_options in self._active:
                run_options.terminate = True
            return len(self._active)
