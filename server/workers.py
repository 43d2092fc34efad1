"""Multi-process mode: N server processes share one port with SO_REUSEPORT, so a many-core host is
not limited by one Python process. The parent forwards SIGTERM/SIGINT and waits for all workers.
Each worker's metrics port is `--metrics-port` + its index; KServe ModelStatistics answers count all
workers (they share their totals through a private temporary directory, `server/metrics.py`)."""
from __future__ import annotations

import logging
import multiprocessing
import signal
import tempfile
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


def _run_workers(config: ServerConfig, workers: int, shared: Path) -> None:
    context = multiprocessing.get_context("spawn")
    processes = []
    for index in range(workers):
        metrics_port = None if config.metrics_port is None else config.metrics_port + index
        worker_config = replace(config, metrics_port=metrics_port, worker=index, shared_statistics=shared)
        process = context.Process(target=_worker, args=(worker_config,), name=f"worker-{index}")
        process.start()
        processes.append(process)
    log.info("started %d workers on port %d", workers, config.port)

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
