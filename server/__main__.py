"""Serve a model repository over gRPC: `python -m server [--model-repository model_repository]`."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from server.app import ServerConfig, serve
from server.runtime import GRAPH_OPTIMIZATION, ProviderUnavailable, RuntimeOptions
from server.repository import RepositoryError
from server.workers import run_workers


def parse_args(argv: list[str] | None = None) -> tuple[ServerConfig, int]:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__.split(":")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--models", help="comma-separated model names to serve (default: all in the repository)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all interfaces)")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA execution provider when available, else CPU; cuda: fail without it")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads per model (0: one per core)")
    parser.add_argument("--graph-optimization", choices=list(GRAPH_OPTIMIZATION), default="all")
    parser.add_argument("--warmup-runs", type=int, default=3)
    parser.add_argument("--max-message-mb", type=int, default=64, help="gRPC message size limit, both directions")
    parser.add_argument("--grpc-threads", type=int, default=64, help="threads handling gRPC calls (each waits while its request is queued)")
    parser.add_argument("--max-batch-size", type=int, help="dynamic batching: most images per run "
                        "(default: max_batch_size of the model's config.pbtxt); also the per-request limit")
    parser.add_argument("--max-queue-delay-ms", type=float, help="dynamic batching: longest wait for requests on "
                        "their way (default: the config.pbtxt's max_queue_delay_microseconds)")
    parser.add_argument("--max-queue-images", type=int, help="queued images per model before RESOURCE_EXHAUSTED "
                        "(default: 16 × max batch size)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this HTTP port")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds in-flight calls get on SIGTERM")
    parser.add_argument("--workers", type=int, default=1, help="server processes sharing the port (SO_REUSEPORT)")
    args = parser.parse_args(argv)
    runtime = RuntimeOptions(device=args.device, intra_op_threads=args.threads,
                             graph_optimization=args.graph_optimization, warmup_runs=args.warmup_runs)
    config = ServerConfig(
        model_repository=args.model_repository, models=args.models.split(",") if args.models else None,
        host=args.host, port=args.port, runtime=runtime, max_message_mb=args.max_message_mb,
        grpc_threads=args.grpc_threads, grace_s=args.grace, metrics_port=args.metrics_port,
        max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
        max_queue_images=args.max_queue_images, reuse_port=args.workers > 1)
    return config, args.workers


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=os.environ.get("CNNSERVE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s")
    config, workers = parse_args(argv)
    try:
        if workers > 1:
            run_workers(config, workers)
        else:
            serve(config)
    except (ProviderUnavailable, RepositoryError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
