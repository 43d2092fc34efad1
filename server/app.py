"""The server process: model store, gRPC server with health and reflection, metrics, signals.

Start-up order matters: the gRPC port opens first with every health status NOT_SERVING, then
the models load and warm up, and only then do they (and the server as a whole) turn SERVING.
"""
from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.images import preload_decoders
from server.metrics import Metrics
from server.model_store import ModelStore
from server.proto import classifier_pb2, classifier_pb2_grpc
from server.runtime import RuntimeOptions, preload_cuda_libraries, providers_for
from server.service import ClassifierService

log = logging.getLogger("server")
SERVICE_NAME = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class ServerConfig:
    model_repository: Path = Path("model_repository")
    models: list[str] | None = None
    host: str = "127.0.0.1"
    port: int = 50051
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    max_message_mb: int = 64
    grpc_threads: int = 64
    grace_s: float = 10.0
    metrics_port: int | None = None
    max_batch_size: int | None = None       # None: from each model's config.pbtxt
    max_queue_delay_ms: float | None = None
    max_queue_images: int | None = None
    reuse_port: bool = False                # several worker processes share one port


def message_limits(max_message_mb: int) -> list[tuple[str, int]]:
    """gRPC options that set the message size limit both ways; servers and clients use the same."""
    limit = max_message_mb * 2**20
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


def serve(config: ServerConfig) -> None:
    """Run until SIGTERM/SIGINT; then stop accepting, let in-flight calls finish within the grace period."""
    providers_for(config.runtime.device)   # `--device cuda` without CUDA fails here, before anything starts
    preload_cuda_libraries()
    metrics = Metrics()
    if config.metrics_port is not None:
        metrics.serve(config.metrics_port)
        log.info("metrics on http://%s:%d/metrics", config.host, config.metrics_port)
    store = ModelStore(config.model_repository, config.models, config.runtime, {
        "max_batch_size": config.max_batch_size,
        "max_queue_delay_s": None if config.max_queue_delay_ms is None else config.max_queue_delay_ms / 1e3,
        "max_queue_images": config.max_queue_images}, metrics)

    # gRPC turns SO_REUSEPORT on by default; only --workers wants it, elsewhere a busy port must be an error.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.grpc_threads, thread_name_prefix="grpc"),
                         options=[*message_limits(config.max_message_mb), ("grpc.so_reuseport", int(config.reuse_port))])
    max_message_bytes = config.max_message_mb * 2**20
    classifier_pb2_grpc.add_ClassifierServicer_to_server(ClassifierService(store, metrics, max_message_bytes), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    for name in ("", SERVICE_NAME, *store.models):
        health_servicer.set(name, NOT_SERVING)
    address = f"{config.host}:{config.port}"
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"cannot listen on {address}")
    server.start()
    log.info("listening on %s (NOT_SERVING while models load)", address)

    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopping.set())

    store.load_all()
    preload_decoders()
    for name, model in store.models.items():
        health_servicer.set(name, SERVING if model.ready else NOT_SERVING)
    ready = [name for name, model in store.models.items() if model.ready]
    overall = SERVING if ready else NOT_SERVING
    health_servicer.set("", overall)
    health_servicer.set(SERVICE_NAME, overall)
    log.info("%s: %d of %d models ready (%s)", "SERVING" if ready else "NOT_SERVING", len(ready),
             len(store.models), ", ".join(ready) or "none")

    stopping.wait()
    log.info("stopping: no new calls; in-flight calls get %.0f s", config.grace_s)
    health_servicer.enter_graceful_shutdown()
    server.stop(config.grace_s).wait()
    store.close()
    log.info("stopped")
