"""The server process: model store, gRPC server with health and reflection, the HTTP port (KServe v2
and the explorer page), metrics, signals.

One asyncio event loop runs the gRPC server (`grpc.aio`) and the HTTP front, so a waiting call
or an open stream (health Watch, reflection) costs a suspended coroutine, not a thread; the
batcher decides where ONNX Runtime runs (`server/batcher.py`, docs/batching.md).

Start-up order matters: the gRPC port opens first with every health status NOT_SERVING, then
the models load and warm up, and only then do they (and the server as a whole) turn SERVING.
After that, model control (`server/model_control.py`: repository polling, or load and unload calls)
may change the versions served; each model's health follows what it serves.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import MutableSequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2_grpc

from cnnserve.proto import classifier_pb2
from cnnserve.spec import DEFAULT_MAX_MESSAGE_MB, message_limits
from server import tracing
from server.control_log import ControlLog
from server.core_share import CoreShare
from server.dataplane import DataPlane
from server.explorer import explorer_routes
from server.grpc_common import GenericHandlersOnly, add_servicer
from server.health import NOT_SERVING, SERVING, HealthServicer
from server.health import SERVICE_NAME as HEALTH_SERVICE_NAME
from server.http import HttpFront, KServeHttp
from server.http_guard import HEADER_TIMEOUT_S, MAX_CONNECTIONS
from server.images import preload_decoders
from server.kserve import SERVICE_DESCRIPTOR as KSERVE_DESCRIPTOR
from server.kserve import KServeGrpcService
from server.metrics import Metrics
from server.model_control import ModelControl
from server.model_store import ModelStore, ServedModel
from server.reflection import enable as enable_reflection
from server.runtime import RuntimeOptions, preload_cuda_libraries, providers_for
from server.security import SecurityOptions, TokenInterceptor, server_credentials
from server.security import load as load_security
from server.service import ClassifierService
from server.startup import StartupError
from server.tracing import TraceOptions

log = logging.getLogger("server")
SERVICE_NAME = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name


@dataclass(frozen=True)
class WorkerSlot:
    """The plumbing the supervisor hands each of `--workers` processes (server/workers.py), apart from the
    user's settings; a lone server has the default."""
    index: int = 0
    workers: int = 1                        # how many share the ports
    reuse_port: bool = False                # the workers share the ports
    shared_statistics: Path | None = None   # the directory where the workers share their totals and model control
    busy_workers: MutableSequence[int] | None = None   # one shared byte per worker (server/core_share.py)


@dataclass(frozen=True)
class ServerConfig:
    """The user's settings (the flags of `python -m server`), and the worker slot this process fills."""
    model_repository: Path = Path("model_repository")
    models: list[str] | None = None
    host: str = "127.0.0.1"
    port: int = 50051
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    max_message_mb: int = DEFAULT_MAX_MESSAGE_MB
    grace_s: float = 10.0
    metrics_port: int | None = None
    metrics_host: str | None = None         # None: `host`, or loopback with TLS or a token (server/security.py)
    http_port: int | None = None            # KServe v2 over HTTP/REST (and the explorer page) on this port
    http_header_timeout_s: float = HEADER_TIMEOUT_S
    http_max_connections: int = MAX_CONNECTIONS
    max_batch_size: int | None = None       # None: from each model's config.pbtxt
    max_queue_delay_ms: float | None = None
    max_queue_images: int | None = None
    max_run_images: int | None = None
    strict: bool = False                    # exit when any model fails to load (Triton's default)
    model_control_mode: str = "none"        # none, poll or explicit (server/model_control.py)
    repository_poll_s: float = 15.0         # poll mode: seconds between reads of the repository
    load_models: tuple[str, ...] = ()       # explicit mode: the models loaded at start ("*": every one)
    # Connection hygiene: one client must not hold the server's threads or sockets forever.
    max_concurrent_rpcs: int = 256          # beyond this, RESOURCE_EXHAUSTED at once (streams count too)
    keepalive_s: float = 60.0               # ping idle connections this often; drop those that do not answer
    max_connection_idle_s: float = 300.0
    max_connection_age_s: float = 3600.0    # then a GOAWAY, so clients reconnect (and rebalance)
    security: SecurityOptions = field(default_factory=SecurityOptions)   # TLS, mTLS, bearer token
    trace: TraceOptions = field(default_factory=TraceOptions)           # OpenTelemetry (server/tracing.py)
    slot: WorkerSlot = field(default_factory=WorkerSlot)


def connection_options(config: ServerConfig) -> list[tuple[str, int]]:
    ms = lambda seconds: int(seconds * 1000)
    return [("grpc.keepalive_time_ms", ms(config.keepalive_s)), ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.max_connection_idle_ms", ms(config.max_connection_idle_s)),
            ("grpc.max_connection_age_ms", ms(config.max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", ms(config.grace_s)),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000)]


def configure_logging() -> None:
    """One format and level for the server and its worker processes: $CNNSERVE_LOG_LEVEL, default INFO."""
    logging.basicConfig(level=os.environ.get("CNNSERVE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s")


def add_services(server: grpc.aio.Server, dataplane: DataPlane, health_servicer: HealthServicer,
                 control: ModelControl | None = None) -> None:
    """cnnserve.v1, KServe v2, health and reflection, all as generic handlers (see GenericHandlersOnly)."""
    add_servicer(server, ClassifierService(dataplane), classifier_pb2.DESCRIPTOR.services_by_name["Classifier"])
    add_servicer(server, KServeGrpcService(dataplane, control), KSERVE_DESCRIPTOR)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, GenericHandlersOnly(server))
    enable_reflection(server, (SERVICE_NAME, KSERVE_DESCRIPTOR.full_name, HEALTH_SERVICE_NAME))


def serve(config: ServerConfig) -> None:
    """Run until SIGTERM/SIGINT; then stop accepting, let in-flight calls finish within the grace period. Each
    server process (each of --workers) comes here, and sets up its own tracing."""
    tracing.configure(config.trace)
    try:
        asyncio.run(serve_async(config))
    finally:
        tracing.shut_down()      # the spans still batched go out


async def serve_async(config: ServerConfig, stopping: asyncio.Event | None = None) -> None:
    """`stopping`: an event that stops the server as SIGTERM does (a server in a test's own process)."""
    providers_for(config.runtime.device)   # `--device cuda` without CUDA fails here, before anything starts
    security = load_security(config.security)
    preload_cuda_libraries()
    metrics = start_metrics(config, security)
    cores = CoreShare(config.slot.busy_workers, config.slot.index)
    store = ModelStore(config.model_repository, config.models, config.runtime, {
        "max_batch_size": config.max_batch_size,
        "max_queue_delay_s": None if config.max_queue_delay_ms is None else config.max_queue_delay_ms / 1e3,
        "max_queue_images": config.max_queue_images, "max_run_images": config.max_run_images}, metrics, cores)
    dataplane = DataPlane(store, metrics, max_response_bytes=config.max_message_mb * 2**20, cores=cores)
    control = ModelControl(store, config.model_control_mode, config.repository_poll_s, config.load_models,
                           control_log(config))
    initial = control.initial_models()
    health = HealthServicer(["", SERVICE_NAME, KSERVE_DESCRIPTOR.full_name,
                             *(initial if initial is not None else store.model_names())])
    http = None if config.http_port is None else HttpFront(config, security, http_routes(dataplane, config, control))
    server = await start_grpc(config, security, dataplane, health, control)
    if http:
        http.start()
        log.info("KServe v2 HTTP on http://%s:%d/v2, the explorer page on http://%s:%d/", config.host,
                 config.http_port, config.host, config.http_port)
    publisher = asyncio.create_task(metrics.publish_forever()) if config.slot.shared_statistics else None
    stopping = stopping or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stopping.set)

    await control.start(initial)      # models built off the loop: health answers NOT_SERVING meanwhile
    if config.strict and store.failures():
        await server.stop(0)
        failures = "; ".join(f"{name}: {reason}" for name, reason in store.failures().items())
        raise StartupError(f"--strict: {len(store.failures())} model(s) failed to load: {failures}")
    preload_decoders()
    set_aside_startup_objects()
    announce_serving(store, health, config)
    store.on_change = lambda model: follow_model(store, health, model)

    await stopping.wait()
    await shut_down(config, dataplane, health, http, server)
    await control.close()
    if publisher:
        publisher.cancel()
        metrics.publish()           # the last of this worker's counts stay in the other workers' answers
    dataplane.close()
    store.close()
    log.info("stopped")


def control_log(config: ServerConfig) -> ControlLog | None:
    """With --workers in explicit mode: the log of load and unload commands that every worker follows."""
    slot = config.slot
    if config.model_control_mode != "explicit" or slot.workers < 2 or slot.shared_statistics is None:
        return None
    return ControlLog(slot.shared_statistics / "model-control", slot.index, slot.workers)


def start_metrics(config: ServerConfig, security) -> Metrics:
    """The Prometheus endpoint, when asked for: loopback by default once TLS or a token guards the rest."""
    metrics = Metrics(config.slot.shared_statistics, config.slot.index)
    if config.metrics_port is not None:
        host = config.metrics_host or ("127.0.0.1" if security.tls or security.token else config.host)
        try:
            metrics.serve(config.metrics_port, host)
        except OSError as error:
            raise StartupError(f"--metrics-port {config.metrics_port}: cannot listen on {host}:{config.metrics_port} "
                               f"({error.strerror or error})") from None
        log.info("metrics on http://%s:%d/metrics", host, config.metrics_port)
    return metrics


def http_routes(dataplane: DataPlane, config: ServerConfig, control: ModelControl) -> list:
    """What the HTTP port serves: KServe v2 under /v2, and the explorer page (which calls it) at /."""
    return [*KServeHttp(dataplane, config.max_message_mb * 2**20, control).routes, *explorer_routes()]


async def start_grpc(config: ServerConfig, security, dataplane: DataPlane, health: HealthServicer,
                     control: ModelControl) -> grpc.aio.Server:
    """The gRPC server on its port, every health status NOT_SERVING until the models are in."""
    # gRPC turns SO_REUSEPORT on by default; only --workers wants it, elsewhere a busy port must be an error.
    server = grpc.aio.server(options=[*message_limits(config.max_message_mb),
                                      ("grpc.so_reuseport", int(config.slot.reuse_port)), *connection_options(config)],
                             maximum_concurrent_rpcs=config.max_concurrent_rpcs,
                             interceptors=[TokenInterceptor(security.token, security.open_without_token)]
                             if security.token else [])
    add_services(server, dataplane, health, control)
    address = f"{config.host}:{config.port}"
    if not port_is_free(config.host, config.port, config.slot.reuse_port):
        raise StartupError(f"cannot listen on {address}: the port is in use or the address is not this machine's "
                           f"(choose another with --port / --host)")
    try:
        bound = (server.add_secure_port(address, server_credentials(security)) if security.tls
                 else server.add_insecure_port(address))
    except RuntimeError:      # grpcio raises "Failed to bind" when the port was taken since the check
        bound = 0
    if bound == 0:
        raise StartupError(f"cannot listen on {address}: the port is in use or the address is not this machine's "
                           f"(choose another with --port / --host)")
    await server.start()
    log.info("gRPC on %s (NOT_SERVING while models load)", address)
    return server


def port_is_free(host: str, port: int, reuse_port: bool) -> bool:
    """Whether the port can be bound, tried with a plain socket first: grpcio logs its own error line
    (`add_port.cc ... Failed to add port`) before it reports a busy port, and the user should see one line."""
    if port == 0:
        return True
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def set_aside_startup_objects() -> None:
    """What start-up made (modules, sessions, configs) lives as long as the server: take it out of the garbage
    collector's full collections, which stop the event loop while they walk every tracked object (measured by
    `python bench/gc_pauses.py`). Collect first, so that start-up's own garbage is freed rather than kept."""
    gc.collect()
    gc.freeze()
    log.info("start-up done: %d objects set aside from garbage collection", gc.get_freeze_count())


def announce_serving(store: ModelStore, health: HealthServicer, config: ServerConfig) -> None:
    """Each ready model SERVING, and the server as a whole once any model is."""
    for name, model in store.models.items():
        health.add(name)
        health.set(name, SERVING if model.ready else NOT_SERVING)
    ready = [name for name, model in store.models.items() if model.ready]
    for name in ("", SERVICE_NAME, KSERVE_DESCRIPTOR.full_name):
        health.set(name, SERVING if ready else NOT_SERVING)
    log.info("%s: %d of %d models ready (%s)", "SERVING" if ready else "NOT_SERVING", len(ready),
             len(store.models), ", ".join(ready) or "none")
    if not store.models and config.model_control_mode != "explicit":
        log.warning("the model repository %s holds no model directories: nothing to serve", config.model_repository)


def follow_model(store: ModelStore, health: HealthServicer, model: ServedModel) -> None:
    """After start-up, a model's health follows what it serves (SERVING while any version does, through a swap
    too); the server as a whole is SERVING while any model is."""
    health.add(model.name)
    health.set(model.name, SERVING if model.ready else NOT_SERVING)
    serving = SERVING if any(m.ready for m in store.models.values()) else NOT_SERVING
    for name in ("", SERVICE_NAME, KSERVE_DESCRIPTOR.full_name):
        health.set(name, serving)


async def shut_down(config: ServerConfig, dataplane: DataPlane, health: HealthServicer, http: HttpFront | None,
                    server: grpc.aio.Server) -> None:
    """Drain at the application level first: NOT_SERVING at once, new requests UNAVAILABLE (which clients
    retry), the ones in flight finish; only then do the transports stop, so almost no call sees the bare
    CANCELLED that stopping a busy grpcio server gives."""
    log.info("stopping: health NOT_SERVING, new requests UNAVAILABLE; in-flight requests get %.0f s", config.grace_s)
    started = time.monotonic()
    health.enter_graceful_shutdown()
    drained = await dataplane.drain(config.grace_s)
    remaining = max(config.grace_s - (time.monotonic() - started), 0.5)
    log.info("stopping: %s; closing the transports", "no request in flight" if drained else "grace period over")
    if http:
        await http.stop(remaining)
    await server.stop(remaining)
