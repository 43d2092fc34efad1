"""Multi-process mode: N server processes share the gRPC and HTTP ports with SO_REUSEPORT, so a
many-core host is not limited by one Python process. The parent supervises them (`Supervisor`:
a worker that dies is replaced) and forwards SIGTERM/SIGINT. Each worker's metrics port is
`--metrics-port` + its index; KServe ModelStatistics answers count all workers (they share their
totals through a private temporary directory, `server/metrics.py`). In explicit model control, a load or
unload that reaches one worker reaches all of them through a log of commands in the same directory
(`server/control_log.py`).

The workers share the cores: unless `--threads` says otherwise, each worker's ONNX Runtime sessions
get cores / workers intra-op threads (at least one), not one per core each, because busy workers
with a thread per core each oversubscribe the cores, which costs both throughput and latency
(measured by `python bench/side_by_side.py --a "--workers 2 --threads 2" --b "--workers 2
--threads 1" --model resnet18 --concurrency 32`). So that a lone request still gets all the cores,
each model also has a session with one thread per core, which a long run takes while the other
workers are idle (`server/core_share.py`)."""
from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import tempfile
import time
from collections.abc import MutableSequence
from dataclasses import replace
from pathlib import Path

from server.app import ServerConfig, WorkerSlot, configure_logging, serve
from server.cpu_limit import cpu_limit
from server.metrics import RESTARTS_FILE
from server.startup import exit_on_startup_error

log = logging.getLogger("server")
RESTART_BACKOFF_S = 0.5         # before replacing a worker that died after serving a while
MAX_RESTART_BACKOFF_S = 30.0    # doubling from RESTART_BACKOFF_S while replacements die within HEALTHY_S
HEALTHY_S = 30.0
STARTUP_S = 60.0                # a worker failing with an error this soon after the start is a start-up error


def _worker(config: ServerConfig) -> None:
    configure_logging()
    exit_on_startup_error(lambda: serve(config))


def run_workers(config: ServerConfig, workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cnnserve-statistics-") as shared:
        _run_workers(config, workers, Path(shared))


def available_cpus() -> int:
    """The CPUs this process may use: its cgroup CPU quota (a container's limit), else its affinity mask."""
    return cpu_limit().cpus


def worker_configs(config: ServerConfig, workers: int, shared: Path, cpus: int,
                   busy: MutableSequence[int] | None = None) -> list[ServerConfig]:
    """Each worker's config: its index, metrics port and share of the cores (see the module's docstring)."""
    runtime = config.runtime
    if runtime.intra_op_threads == 0:
        share = max(1, cpus // workers)
        runtime = replace(runtime, intra_op_threads=share, solo_threads=cpus if cpus > share else 0)
    return [replace(config, runtime=runtime,
                    slot=WorkerSlot(index, workers, reuse_port=True, shared_statistics=shared, busy_workers=busy),
                    metrics_port=None if config.metrics_port is None else config.metrics_port + index)
            for index in range(workers)]


class Supervisor:
    """Starts the workers, replaces one that dies, and stops them all on SIGTERM/SIGINT.

    A worker that dies (killed, or crashed) is replaced under the same index, port and share of the
    cores, after a back-off that doubles while replacements keep dying young (RESTART_BACKOFF_S up to
    MAX_RESTART_BACKOFF_S); each replacement is a log line, and the count is the Prometheus series
    `cnnserve_worker_restarts_total`, which every worker serves (server/metrics.py). A worker that exits
    with an error within STARTUP_S of the start is a start-up error (a busy port, an unreadable file): the
    parent stops the others and exits with it, rather than retrying a mistake forever.
    """

    def __init__(self, configs: list[ServerConfig], shared: Path, busy: MutableSequence[int], context):
        self.configs, self.shared, self.busy, self.context = configs, shared, busy, context
        self.processes: dict[int, multiprocessing.Process] = {}
        self.started_at: dict[int, float] = {}
        self.restarts: dict[int, int] = {index: 0 for index in range(len(configs))}
        self.backoff = {index: RESTART_BACKOFF_S for index in range(len(configs))}
        self.stopping = False
        self.startup_error: str | None = None
        self.began = time.monotonic()

    def start(self, index: int) -> None:
        self.busy[index] = 0                 # a killed worker may have left its byte set
        process = self.context.Process(target=_worker, args=(self.configs[index],), name=f"worker-{index}")
        process.start()
        self.processes[index], self.started_at[index] = process, time.monotonic()

    def stop(self, signum=None, frame=None) -> None:
        self.stopping = True
        for process in self.processes.values():
            if process.is_alive():
                process.terminate()          # SIGTERM: each worker drains and stops gracefully

    def run(self) -> None:
        self.publish_restarts()              # every worker's series, from 0
        for index in range(len(self.configs)):
            self.start(index)
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        while not self.stopping:
            multiprocessing.connection.wait([p.sentinel for p in self.processes.values()], timeout=1.0)
            for index, process in list(self.processes.items()):
                if process.exitcode is not None and not self.stopping:
                    self.replace(index, process)
        for process in self.processes.values():
            process.join()
        if self.startup_error:
            raise SystemExit(self.startup_error)
        failed = [f"{p.name} ({describe_exit(p.exitcode)})" for p in self.processes.values()
                  if p.exitcode not in (0, -signal.SIGTERM)]
        if failed:
            raise SystemExit(f"workers exited with an error on shutdown: {', '.join(failed)}")

    def replace(self, index: int, process: multiprocessing.Process) -> None:
        lived = time.monotonic() - self.started_at[index]
        if time.monotonic() - self.began < STARTUP_S and process.exitcode > 0:
            self.startup_error = f"{process.name} failed at start-up ({describe_exit(process.exitcode)}); " \
                                 f"its log above says why"
            self.stop()
            return
        young = lived < HEALTHY_S and self.restarts[index] > 0      # its replacement died young too
        self.backoff[index] = min(self.backoff[index] * 2, MAX_RESTART_BACKOFF_S) if young else RESTART_BACKOFF_S
        self.restarts[index] += 1
        self.publish_restarts()
        log.warning("%s (pid %d) %s after %.0f s; starting a replacement in %.1f s (restart %d of this worker)",
                    process.name, process.pid, describe_exit(process.exitcode), lived, self.backoff[index],
                    self.restarts[index])
        deadline = time.monotonic() + self.backoff[index]
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.stopping:
            self.start(index)

    def publish_restarts(self) -> None:
        """Written whole, then renamed, as the workers share their statistics (server/metrics.py)."""
        path = self.shared / RESTARTS_FILE
        path.with_suffix(".partial").write_text(json.dumps({str(k): v for k, v in self.restarts.items()}))
        os.replace(path.with_suffix(".partial"), path)


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _run_workers(config: ServerConfig, workers: int, shared: Path) -> None:
    context = multiprocessing.get_context("spawn")
    busy = context.RawArray("B", workers)     # server/core_share.py: which workers have requests in flight
    configs = worker_configs(config, workers, shared, available_cpus(), busy)
    supervisor = Supervisor(configs, shared, busy, context)
    runtime = configs[0].runtime
    log.info("started %d workers on port %d, %d ONNX Runtime intra-op thread(s) per model each%s", workers,
             config.port, runtime.intra_op_threads,
             f", {runtime.solo_threads} for a long run while the other workers are idle" if runtime.solo_threads else "")
    supervisor.run()
