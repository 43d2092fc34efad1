"""Multi-process mode: N server processes share one port with SO_REUSEPORT, so a many-core host is
not limited by one Python process. The parent forwards SIGTERM/SIGINT and waits for all workers.
Each worker's metrics port is `--metrics-port` + its index; KServe ModelStatistics answers count all
workers (they share their totals through a private temporary directory, `server/metrics.py`).

The workers share the cores: unless `--threads` says otherwise, each worker's ONNX Runtime sessions
get cores / workers intra-op threads (at least one), not one per core each. On 2 cores,
`python bench/side_by_side.py --a "--workers 2 --threads 2" --b "--workers 2 --threads 1" --model resnet18
--concurrency 32` (4 interleaved rounds of 8 s): 275.5 images/s (263-281) with one thread per worker
against 228.0 (212-237) with two each, p99 157 (138-184) against 202 (168-218) ms. And so that a lone
request still gets all the cores, each model has a second session with one thread per core, which a
long run takes while the other workers are idle (`server/core_share.py`)."""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import tempfile
from collections.abc import MutableSequence
from dataclasses import replace
from pathlib import Path

from server.app import ServerConfig, configure_logging, serve

log = logging.getLogger("server")


def _worker(config: ServerConfig) -> None:
    configure_logging()
    serve(config)


def run_workers(config: ServerConfig, workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cnnserve-statistics-") as shared:
        _run_workers(config, workers, Path(shared))


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or taskset's limit, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_configs(config: ServerConfig, workers: int, shared: Path, cpus: int,
                   busy: MutableSequence[int] | None = None) -> list[ServerConfig]:
    """Each worker's config: its index, metrics port and share of the cores (see the module's docstring)."""
    runtime = config.runtime
    if runtime.intra_op_threads == 0:
        share = max(1, cpus // workers)
        runtime = replace(runtime, intra_op_threads=share, solo_threads=cpus if cpus > share else 0)
    return [replace(config, runtime=runtime, worker=index, shared_statistics=shared, busy_workers=busy,
                    metrics_port=None if config.metrics_port is None else config.metrics_port + index)
            for index in range(workers)]


def _run_workers(config: ServerConfig, workers: int, shared: Path) -> None:
    context = multiprocessing.get_context("spawn")
    processes = []
    busy = context.RawArray("B", workers)     # server/core_share.py: which workers have requests in flight
    configs = worker_configs(config, workers, shared, available_cpus(), busy)
    for index, worker_config in enumerate(configs):
        process = context.Process(target=_worker, args=(worker_config,), name=f"worker-{index}")
        process.start()
        processes.append(process)
    runtime = configs[0].runtime
    log.info("started %d workers on port %d, %d ONNX Runtime intra-op thread(s) per model each%s", workers,
             config.port, runtime.intra_op_threads,
             f", {runtime.solo_threads} for a long run while the other workers are idle" if runtime.solo_threads else "")

    def forward(signum, frame):
        for process in processes:
            if process.is_alive():
                process.terminate()   # SIGTERM: each worker stops gracefully
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in processes:
        process.join()
    failed = [p.name for p in processes if p.exitcode not in (0, -signal.SIGTERM)]
    if failed:
        raise SystemExit(f"workers exited with an error: {', '.join(failed)}")
