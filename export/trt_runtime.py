"""TensorRT and CUDA at run time: is TensorRT usable here, and a runner for serialized plans.

Imports neither torch nor onnx; the CUDA runtime is called through ctypes (cudaMalloc, cudaMemcpy,
cudaDeviceSynchronize), so this runs inside NVIDIA's Triton container with only the tensorrt bindings.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

HOW_TO_GET_IT = (
    "TensorRT plans are built on the GPU that serves them: export ONNX here with `python -m export --engine onnx`, "
    "then inside NVIDIA's Triton container (docker/; it has TensorRT) run "
    "`python -m export.tensorrt --repository /models [--fp16]` (that image's python needs the `tensorrt` bindings "
    "of its own TensorRT version, `pip install tensorrt-cu12==<that version>`, and `tritonclient[grpc]`). "
    "Elsewhere: an NVIDIA GPU with its driver and `pip install tensorrt`."
)


class TensorRTUnavailable(RuntimeError):
    """tensorrt cannot be imported or no CUDA GPU is visible."""


def _libcuda():
    for name in ("libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda")):
        if name:
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
    return None


def cuda_gpu() -> tuple[str | None, str]:
    """(name of CUDA device 0, "") or (None, why not), from the driver API (no torch needed)."""
    lib = _libcuda()
    if lib is None:
        return None, "no NVIDIA driver (libcuda.so.1 not found)"
    if lib.cuInit(0) != 0:
        return None, "the NVIDIA driver found no usable GPU (cuInit failed)"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return None, "no CUDA GPU visible (check CUDA_VISIBLE_DEVICES / --gpus)"
    device, name = ctypes.c_int(0), ctypes.create_string_buffer(256)
    lib.cuDeviceGet(ctypes.byref(device), 0)
    lib.cuDeviceGetName(name, 256, device)
    return name.value.decode(errors="replace"), ""


def missing_requirements() -> str | None:
    """None when engines can be built here, else what is missing and how to get it."""
    problems = []
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        problems.append(f"the tensorrt Python package is not importable ({exc})")
    gpu, why = cuda_gpu()
    if gpu is None:
        problems.append(why)
    if not problems:
        return None
    return "cannot build TensorRT engines: " + "; ".join(problems) + ". " + HOW_TO_GET_IT


def require_tensorrt():
    problem = missing_requirements()
    if problem:
        raise TensorRTUnavailable(problem)
    import tensorrt as trt

    return trt


def numpy_dtype(trt, dtype) -> np.dtype:
    if hasattr(trt, "nptype"):
        return np.dtype(trt.nptype(dtype))
    return np.dtype({"FLOAT": "float32", "HALF": "float16", "INT32": "int32", "INT64": "int64", "INT8": "int8",
                     "UINT8": "uint8", "BOOL": "bool"}[str(dtype).split(".")[-1]])


def _cudart() -> ctypes.CDLL:
    """libcudart, for the few calls needed to run a plan on host arrays (no torch or cuda-python needed)."""
    try:
        import torch  # noqa: F401 - loads its bundled libcudart where there is one
    except ImportError:
        pass
    for name in ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0",
                 ctypes.util.find_library("cudart")):
        if name:
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
    raise TensorRTUnavailable("libcudart not found: cannot run a TensorRT plan")


class PlanRunner:
    """Runs a serialized plan on host numpy arrays: runner({"images": x}) -> {"features": y}.

    Engine and context are made once; each call allocates device buffers, copies in, executes on the
    default stream, synchronises and copies out (what a benchmark of the plan then includes).
    """

    def __init__(self, plan: bytes) -> None:
        self.trt = require_tensorrt()
        self.cuda = _cudart()
        self.engine = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING)).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the plan (built for another GPU or version?)")
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]

    def _ok(self, code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"{what} failed with CUDA error {code}")

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, array in feeds.items():
            self.context.set_input_shape(name, array.shape)
        pointers, outputs = [], {}
        try:
            for name in self.names:
                dtype = numpy_dtype(self.trt, self.engine.get_tensor_dtype(name))
                host = (np.ascontiguousarray(feeds[name].astype(dtype, copy=False)) if name in feeds
                        else np.empty(tuple(self.context.get_tensor_shape(name)), dtype))
                ptr = ctypes.c_void_p()
                self._ok(self.cuda.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(1, host.nbytes))), "cudaMalloc")
                pointers.append(ptr)
                if name in feeds:
                    self._ok(self.cuda.cudaMemcpy(ptr, ctypes.c_void_p(host.ctypes.data),
                                                  ctypes.c_size_t(host.nbytes), 1), "cudaMemcpy host->device")
                else:
                    outputs[name] = (host, ptr)
                self.context.set_tensor_address(name, ptr.value)
            if not self.context.execute_async_v3(0):
                raise RuntimeError("TensorRT execution failed")
            self._ok(self.cuda.cudaDeviceSynchronize(), "cudaDeviceSynchronize")
            for host, ptr in outputs.values():
                self._ok(self.cuda.cudaMemcpy(ctypes.c_void_p(host.ctypes.data), ptr,
                                              ctypes.c_size_t(host.nbytes), 2), "cudaMemcpy device->host")
        finally:
            for ptr in pointers:
                self.cuda.cudaFree(ptr)
        return {name: host for name, (host, _) in outputs.items()}
