"""Execution providers for a device string, and an explanation when CUDA cannot be used."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d{1,3}))?$")
MAX_CUDA_DEVICE = 63


def parse_device(device: str) -> tuple[str, int]:
    """``"cpu"`` -> ("cpu", 0); ``"cuda"`` -> ("cuda", 0); ``"cuda:N"`` -> ("cuda", N)."""
    match = _DEVICE.match(device.strip().lower())
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise ValueError(f"device must be cpu, cuda or cuda:N, not {device!r}")
    index = int(match.group(2) or 0)
    if index > MAX_CUDA_DEVICE:
        raise ValueError(f"CUDA device index must be 0..{MAX_CUDA_DEVICE}, not {index}")
    return match.group(1), index


def providers_for(kind: str, device_id: int) -> list:
    """The ONNX Runtime providers list for a parsed device."""
    if kind == "cuda":
        return [("CUDAExecutionProvider", {"device_id": str(device_id)}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _cuda_device_count() -> tuple[int | None, str]:
    """Number of CUDA devices the driver reports, or None and why it could not tell."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError as error:
        return None, f"no NVIDIA driver: {error}"
    status = driver.cuInit(0)
    if status != 0:
        return None, f"the NVIDIA driver failed to initialise (cuInit returned {status}; no GPU visible?)"
    count = ctypes.c_int(0)
    status = driver.cuDeviceGetCount(ctypes.byref(count))
    if status != 0:
        return None, f"cuDeviceGetCount returned {status}"
    return count.value, ""


def cuda_unavailable_reason(device_id: int) -> str:
    """Why ONNX Runtime could not run on CUDA device `device_id` here, as precisely as can be told."""
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return (
            f"this onnxruntime build ({onnxruntime.__version__}) has no CUDAExecutionProvider; "
            "install onnxruntime-gpu"
        )
    capi = Path(onnxruntime.__file__).parent / "capi"
    try:
        ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(capi / "libonnxruntime_providers_cuda.so"))
    except OSError as error:
        return f"ONNX Runtime's CUDA provider cannot be loaded (missing CUDA/cuDNN libraries?): {error}"
    count, why = _cuda_device_count()
    if count is None:
        return why
    if device_id >= count:
        return f"CUDA device {device_id} requested but {count} device(s) visible"
    return "ONNX Runtime did not enable CUDAExecutionProvider (see its log above)"
