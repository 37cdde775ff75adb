"""onnxruntime sessions, opened one way by export's parity check, the benchmarks and the embedded gateway.

    session = open_session(fused_model(encoder_path, head_path))   # one graph: uint8 images -> head outputs
    outputs = session.run(None, {IMAGES: images})
    settings_of(session)   # threads, spinning, optimisation level, execution mode, arena, providers really used
    pool = SessionPool(fused_model(encoder_path, head_path))      # what the gateway runs: 2 batches at once on CPU

Why these settings (measured with bench/export_speed.py on a shared 2-core machine, README "Benchmarks"):
- intra-op threads: the CPUs this process may run on (os.sched_getaffinity), not onnxruntime's count of
  the machine's physical cores, which oversubscribes a container or a `taskset` limited to fewer CPUs.
- no spinning: onnxruntime's pool threads otherwise busy-wait between and after ops, taking the cores
  the gateway's HTTP and image-decoding threads need; a spinning thread that loses its core stalls
  every parallel op (measured: batch 1 about 2x slower under load, against 5-20% faster at batch 8
  and 64 when the process has the cores to itself).
- one inter-op thread, sequential execution: the graphs are chains (a ResNet, then an MLP), there are
  no parallel branches for a second pool to run.
- ORT_ENABLE_ALL: constant folding, Conv+BatchNorm+ReLU(+Add) fusion and the NCHWc layout of the CPU
  provider, which is where onnxruntime gains over PyTorch eager (batch norm, ReLU and the residual
  add are separate passes over memory there); BASIC or EXTENDED run slower than eager.
- one fused graph (encoder and head joined with onnx.compose): one run per batch instead of two, the
  features never leave onnxruntime. The exported files stay two (Triton runs them as an ensemble).
- the CPU memory arena on (onnxruntime's default): buffers are reused across runs of any batch size.
- two sessions ("instances", as Triton's instance groups) with half the threads each on a CPU with two
  or more cores, each running its own batch: a batch on two threads stalls at every op's barrier
  whenever the gateway's HTTP or decode work takes one of the cores, two single-thread batches do not
  (measured with bench/gateway_load.py on 2 cores: the gateway at 1.2x its throughput with one
  two-thread session). A single batch then runs on half the threads: `instances=1` for the lowest
  latency of one request at a time.
- CUDA when this onnxruntime build has it (CPU as the fallback), with TF32 off so GPU results stay
  within the fp32 parity tolerance.

onnxruntime and onnx are imported on use: importing this module costs nothing.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contract.names import FEATURES

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_SPINNING = "session.intra_op.allow_spinning"


def default_threads() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def choose_providers(available: Sequence[str]) -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always as the fallback."""
    return [*([CUDA] if CUDA in available else []), CPU]


def session_options(threads: int = 0, spinning: bool = False):
    """onnxruntime.SessionOptions as above; threads 0: default_threads()."""
    import onnxruntime as ort

    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: one per available CPU), got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = True
    options.add_session_config_entry(_SPINNING, "1" if spinning else "0")
    return options


def open_session(model: str | Path | bytes, threads: int = 0, providers: Sequence[str] | None = None,
                 spinning: bool = False):
    """An onnxruntime.InferenceSession of an ONNX file or serialised model with the settings above.

    providers: None picks choose_providers(available); check settings_of(session)["providers"] for
    what onnxruntime really runs with (CPU only if CUDA failed to initialise)."""
    import onnxruntime as ort

    if providers is None:
        providers = choose_providers(ort.get_available_providers())
    provider_options = [{"use_tf32": "0"} if p == CUDA else {} for p in providers]
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, session_options(threads, spinning), providers=list(providers),
                                provider_options=provider_options)


def fused_model(encoder: str | Path, head: str | Path) -> bytes:
    """The encoder and head ONNX files joined into one graph (encoder's `features` feeding the head),
    serialised: input `images`, the head's outputs, each part's internal names prefixed so they cannot clash."""
    import onnx
    from onnx import compose

    parts = [compose.add_prefix(onnx.load(str(path)), prefix, rename_inputs=False, rename_outputs=False)
             for path, prefix in ((encoder, "encoder/"), (head, "head/"))]
    return compose.merge_models(*parts, io_map=[(FEATURES, FEATURES)]).SerializeToString()


def default_instances(providers: Sequence[str], threads: int = 0) -> int:
    """Sessions per model that run batches at once: 2 on a CPU with two or more threads, 1 on CUDA."""
    return 1 if CUDA in providers or (threads or default_threads()) < 2 else 2


class SessionPool:
    """`instances` sessions of one model, each with threads // instances intra-op threads; `run` takes a
    free one, so up to `instances` threads can run batches at once (more wait for a free session).

    instances 0: default_instances(providers, threads); providers None: choose_providers(available)."""

    def __init__(self, model: str | Path | bytes, instances: int = 0, threads: int = 0,
                 providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        if instances < 0:
            raise ValueError(f"instances must be >= 0 (0: {default_instances.__doc__}), got {instances}")
        providers = list(providers or choose_providers(ort.get_available_providers()))
        threads = threads or default_threads()
        self.instances = instances or default_instances(providers, threads)
        per_session = max(1, threads // self.instances)
        self.sessions = [open_session(model, per_session, providers) for _ in range(self.instances)]
        self.outputs = [o.name for o in self.sessions[0].get_outputs()]
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for session in self.sessions:
            self._free.put(session)

    def run(self, feeds: dict[str, Any]) -> list[Any]:
        """The model's outputs (self.outputs order) on `feeds`, on the first free session."""
        session = self._free.get()
        try:
            return session.run(self.outputs, feeds)
        finally:
            self._free.put(session)

    def warm_up(self, feeds: dict[str, Any]) -> None:
        """Run `feeds` once on every session: onnxruntime plans and allocates on a session's first run."""
        for session in self.sessions:
            session.run(self.outputs, feeds)

    def settings(self) -> dict[str, Any]:
        """settings_of one session, with the number of instances."""
        return {"instances": self.instances, **settings_of(self.sessions[0])}


def settings_of(session) -> dict[str, Any]:
    """The settings a session really runs with (for benchmarks, logs and the gateway's /models)."""
    options = session.get_session_options()
    try:
        spinning = options.get_session_config_entry(_SPINNING) == "1"
    except RuntimeError:  # not set: onnxruntime's default, spinning
        spinning = True
    return {
        "intra_op_threads": options.intra_op_num_threads,
        "inter_op_threads": options.inter_op_num_threads,
        "spinning": spinning,
        "graph_optimization": options.graph_optimization_level.name,
        "execution_mode": options.execution_mode.name,
        "cpu_memory_arena": options.enable_cpu_mem_arena,
        "providers": session.get_providers(),
    }
