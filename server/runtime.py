"""ONNX Runtime sessions: provider choice, session options, warm-up.

The provider in use is read back from the session, never assumed: ONNX Runtime silently falls
back to the CPU when the CUDA provider cannot start.
"""
from __future__ import annotations

import ctypes
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from server.core_share import CoreShare

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
GRAPH_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ProviderUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class RuntimeOptions:
    device: str = "auto"              # auto: CUDA when available, else CPU; cuda: CUDA or fail; cpu
    intra_op_threads: int = 0         # 0: ONNX Runtime's default (one per physical core)
    graph_optimization: str = "all"
    warmup_runs: int = 3
    solo_threads: int = 0             # with --workers: a second session with this many threads, for a long run
                                      # while no other worker is busy (0: none; see server/core_share.py)


def providers_for(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in available:
            raise ProviderUnavailable(
                f"--device cuda: this onnxruntime build ({ort.__version__}) has no CUDA execution provider "
                f"(available: {', '.join(available)}). Install onnxruntime-gpu on a machine with an NVIDIA GPU, "
                f"or use --device auto / cpu")
        return [CUDA, CPU]
    return [CUDA, CPU] if CUDA in available else [CPU]


# glibc's malloc_trim, where there is one (None elsewhere: musl and other C libraries unmap large blocks when freed)
_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None) if sys.platform.startswith("linux") else None


def release_freed_memory() -> None:
    """Give the operating system the pages that released sessions freed. glibc keeps freed memory for reuse: a
    session's weights and arena leave holes in its heaps, and without this the server's RSS would stay near its
    peak after an unload, and creep up over many loads and unloads. It walks every heap: call it off the loop."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def preload_cuda_libraries() -> None:
    """Let onnxruntime-gpu find CUDA and cuDNN from the NVIDIA pip packages (a no-op elsewhere)."""
    if CUDA in ort.get_available_providers() and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()


class ModelRuntime:
    """An ONNX Runtime session for one model file (and with `solo_threads`, a second one with more threads)."""

    def __init__(self, model_path: Path, options: RuntimeOptions, cores: CoreShare | None = None):
        self.session = _session(model_path, options, options.intra_op_threads)
        self.provider = self.session.get_providers()[0]
        # (on CUDA the intra-op threads hardly matter, and a second session would hold the weights twice)
        self.solo_session = (_session(model_path, options, options.solo_threads)
                             if options.solo_threads > options.intra_op_threads and self.provider == CPU else None)
        self.cores = cores or CoreShare()
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = tuple(self.session.get_inputs()[0].shape[1:])   # [1, side, side]; the batch is dynamic
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, images: np.ndarray, outputs: list[str], may_use_all_cores: bool = False) -> dict[str, np.ndarray]:
        """uint8 images [N, 1, side, side] -> the named outputs, each [N, ...]. A run that `may_use_all_cores`
        (one long enough for the compute thread) takes the solo session while no other worker is busy."""
        session = self.session_for(may_use_all_cores)
        return dict(zip(outputs, session.run(outputs, {self.input_name: images})))

    def session_for(self, may_use_all_cores: bool) -> ort.InferenceSession:
        if may_use_all_cores and self.solo_session is not None and self.cores.alone():
            return self.solo_session
        return self.session

    def warm_up(self, runs: int, batch_sizes: tuple[int, ...] = (1, 8), pace: float = 0.0) -> float:
        """Run every output at a few batch sizes so the first real request pays no set-up; return seconds. With
        `pace`, rest `pace` times each run's duration after it: a model loaded while others serve leaves them
        most of the cores (its runs use all the session's threads)."""
        start = time.perf_counter()
        for session in filter(None, (self.session, self.solo_session)):
            for _ in range(runs):
                for n in batch_sizes:
                    began = time.perf_counter()
                    session.run(self.output_names, {self.input_name: np.zeros((n, *self.input_shape), dtype=np.uint8)})
                    time.sleep(pace * (time.perf_counter() - began))
        return time.perf_counter() - start


def _session(model_path: Path, options: RuntimeOptions, threads: int) -> ort.InferenceSession:
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = threads
    session_options.inter_op_num_threads = 1
    session_options.graph_optimization_level = GRAPH_OPTIMIZATION[options.graph_optimization]
    # ONNX Runtime's pool threads spin while they wait for work. Within a run that saves a thread wake-up
    # per operator; between runs it would take the cores from the event loop, so spinning stops as each
    # run returns (measurements: bench/HISTORY.md, 6808c44; tests/test_server.py checks both halves).
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    session_options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(model_path), session_options, providers=providers_for(options.device))
