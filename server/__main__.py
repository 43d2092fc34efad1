"""Serve a model repository over gRPC and HTTP: `python -m server [--model-repository model_repository]`.

Every start-up failure the user can fix (a flag, a busy port, an unreadable file, a model that cannot
load under --strict) is a `StartupError` (or a repository/provider error) raised where it is found,
and becomes one line: `error: ...`, exit status 1 (server/startup.py).
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace
from pathlib import Path

from cnnserve.entry import DefaultsHelpFormatter, exit_if_missing, program_name

with exit_if_missing("serve"):
    from cnnserve.default_repository import build_missing
    from server.app import ServerConfig, configure_logging, serve
    from server.cpu_limit import affinity_cpus, cpu_limit
    from server.model_control import ALL_MODELS, MODES
    from server.runtime import GRAPH_OPTIMIZATION, RuntimeOptions
    from server.security import DEFAULT_OPEN, SecurityOptions
    from server.startup import exit_on_startup_error
    from server.tracing import MODES as TRACE_MODES
    from server.tracing import TraceOptions
    from server.workers import available_cpus, run_workers

log = logging.getLogger("server")


def parse_args(argv: list[str] | None = None) -> tuple[ServerConfig, int]:
    """Flags over `ServerConfig` and `RuntimeOptions`, whose fields are the one home of every default."""
    d, r = ServerConfig, RuntimeOptions
    parser = argparse.ArgumentParser(prog=program_name(), description=__doc__.split(":")[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=d.model_repository,
                        help="Triton-layout model repository to serve (the default one builds its weights-only "
                             "models on first start)")
    parser.add_argument("--models", help="comma-separated model names to serve (default: all in the repository)")
    parser.add_argument("--host", default=d.host, help="address to listen on, gRPC and metrics (0.0.0.0: all interfaces)")
    parser.add_argument("--port", type=int, default=d.port, help="gRPC port (cnnserve.v1 and KServe v2)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=r.device,
                        help="auto: CUDA execution provider when available, else CPU; cuda: fail without it")
    parser.add_argument("--threads", type=int, default=r.intra_op_threads,
                        help="ONNX Runtime intra-op threads per model (0: one per core; with --workers, "
                        "the cores divided among the workers, and all of them for a long run while the other "
                        "workers are idle)")
    parser.add_argument("--graph-optimization", choices=list(GRAPH_OPTIMIZATION), default=r.graph_optimization,
                        help="ONNX Runtime graph optimization level")
    parser.add_argument("--warmup-runs", type=int, default=r.warmup_runs,
                        help="runs per model before it turns SERVING, so the first request is not the slow one")
    parser.add_argument("--max-message-mb", type=int, default=d.max_message_mb, help="gRPC message size limit, both directions")
    parser.add_argument("--max-batch-size", type=int, help="dynamic batching: most images per run "
                        "(default: max_batch_size of the model's config.pbtxt); also the per-request limit")
    parser.add_argument("--max-queue-delay-ms", type=float, help="dynamic batching: longest wait for requests on "
                        "their way (default: the config.pbtxt's max_queue_delay_microseconds)")
    parser.add_argument("--max-run-images", type=int, help="dynamic batching: most images per ONNX Runtime run; "
                        "larger requests run in slices, so a caller that overtakes a flood waits at most one run "
                        "(default: the config.pbtxt's parameter max_run_images, else the max batch size)")
    parser.add_argument("--max-queue-images", type=int, help="queued images per model before RESOURCE_EXHAUSTED "
                        "(default: 16 × max batch size)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this HTTP port")
    parser.add_argument("--metrics-host", help="address of the metrics port (default: --host, but loopback when "
                        "TLS or a token is configured, as the metrics port has neither)")
    parser.add_argument("--http-port", type=int, help="serve KServe v2 over HTTP/REST on this port (gRPC, "
                        "cnnserve.v1 and KServe v2, is always on --port)")
    parser.add_argument("--http-header-timeout", type=float, default=d.http_header_timeout_s,
                        help="seconds an HTTP client has to send a request's headers before it is disconnected")
    parser.add_argument("--http-max-connections", type=int, default=d.http_max_connections,
                        help="open HTTP connections per server process; more are closed at once")
    parser.add_argument("--grace", type=float, default=d.grace_s, help="seconds in-flight calls get on SIGTERM")
    parser.add_argument("--max-concurrent-rpcs", type=int, default=d.max_concurrent_rpcs,
                        help="calls in progress (streams too) beyond which new ones get RESOURCE_EXHAUSTED")
    parser.add_argument("--keepalive", type=float, default=d.keepalive_s, help="seconds between keepalive pings")
    parser.add_argument("--max-connection-idle", type=float, default=d.max_connection_idle_s,
                        help="seconds after which an idle connection is closed")
    parser.add_argument("--max-connection-age", type=float, default=d.max_connection_age_s,
                        help="seconds after which a connection is asked to reconnect (GOAWAY)")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve gRPC and HTTP over TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--tls-client-ca", type=Path, help="PEM CA: require client certificates it signed (mTLS)")
    parser.add_argument("--auth-token-file", type=Path, help="require 'authorization: Bearer <token>' (the "
                        "file's first line) on every call")
    parser.add_argument("--auth-open", default=",".join(DEFAULT_OPEN), help="what answers without the token, on "
                        "every protocol: health (gRPC health, KServe ServerLive/ServerReady, /v2/health/*), reflection, "
                        "explorer (the page and sample images), a comma-separated list of them, or none "
                        "(default: %(default)s)")
    parser.add_argument("--strict", action="store_true", help="exit when any model fails to load (default: it "
                        "stays NOT_SERVING with its reason and the others serve)")
    parser.add_argument("--model-control-mode", choices=MODES, default=d.model_control_mode,
                        help="none: read the repository once, at start; poll: read it again every "
                        "--repository-poll-secs and roll out new, changed and removed versions without dropping a "
                        "request; explicit: load only --load-model at start, then what RepositoryModelLoad and "
                        "RepositoryModelUnload say (refused in the other modes)")
    parser.add_argument("--repository-poll-secs", type=positive_seconds, default=d.repository_poll_s,
                        help="poll mode: seconds between reads of the model repository")
    parser.add_argument("--load-model", action=Repeated, metavar="NAME",
                        help=f"explicit mode: a model to load at start (repeatable, or comma-separated; "
                        f"'{ALL_MODELS}': every one)")
    parser.add_argument("--trace", choices=TRACE_MODES, default=TraceOptions.mode,
                        help="OpenTelemetry spans of each inference request, a child of the caller's W3C traceparent: "
                        "console (JSON lines on stdout) or otlp (OTLP/HTTP to $OTEL_EXPORTER_OTLP_ENDPOINT, default "
                        "http://localhost:4318; needs the otlp extra)")
    parser.add_argument("--trace-sample-ratio", type=ratio, default=TraceOptions.sample_ratio,
                        help="share of the traces that start here to record (a caller's traceparent says for its own)")
    parser.add_argument("--workers", type=workers_count, default=1, help="server processes sharing the ports "
                        "(SO_REUSEPORT), or auto: one per CPU this process may use (its cgroup quota, else affinity)")
    defaults_from_environment(parser, os.environ)
    args = parser.parse_args(argv)
    load_models = tuple(name for item in args.load_model or () for name in item.split(",") if name)
    if load_models and args.model_control_mode != "explicit":
        parser.error("--load-model needs --model-control-mode explicit (in the other modes every model loads)")
    runtime = RuntimeOptions(device=args.device, intra_op_threads=args.threads,
                             graph_optimization=args.graph_optimization, warmup_runs=args.warmup_runs)
    config = ServerConfig(
        model_repository=args.model_repository, models=args.models.split(",") if args.models else None,
        host=args.host, port=args.port, runtime=runtime, max_message_mb=args.max_message_mb,
        grace_s=args.grace, metrics_port=args.metrics_port, metrics_host=args.metrics_host, http_port=args.http_port,
        http_header_timeout_s=args.http_header_timeout, http_max_connections=args.http_max_connections,
        max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
        max_queue_images=args.max_queue_images, max_run_images=args.max_run_images,
        strict=args.strict, model_control_mode=args.model_control_mode,
        repository_poll_s=args.repository_poll_secs, load_models=load_models,
        max_concurrent_rpcs=args.max_concurrent_rpcs, keepalive_s=args.keepalive,
        max_connection_idle_s=args.max_connection_idle, max_connection_age_s=args.max_connection_age,
        security=SecurityOptions(tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
                                 auth_token_file=args.auth_token_file,
                                 open_without_token=tuple(n for n in args.auth_open.split(",") if n and n != "none")),
        trace=TraceOptions(mode=args.trace, sample_ratio=args.trace_sample_ratio))
    return config, args.workers


class Repeated(argparse.Action):
    """A repeatable flag whose values on the command line replace its default (from the environment), as every
    other flag's do, rather than add to it as argparse's "append" would."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, self.dest)
        setattr(namespace, self.dest, [*(given if given is not self.default else ()), values])


def positive_seconds(text: str) -> float:
    seconds = float(text)
    if not seconds > 0:
        raise ValueError(text)
    return seconds


def ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError(text)
    return value


def workers_count(text: str) -> int:
    if text == "auto":
        return available_cpus()
    count = int(text)
    if count < 1:
        raise ValueError(text)
    return count


def defaults_from_environment(parser: argparse.ArgumentParser, environ) -> None:
    """Every flag may also come from the environment, as CNNSERVE_<FLAG> (`--http-port` from CNNSERVE_HTTP_PORT),
    for container images and Kubernetes; a flag on the command line wins."""
    for action in parser._actions:
        flags = [o for o in action.option_strings if o.startswith("--")]
        name = "CNNSERVE_" + flags[0][2:].upper().replace("-", "_") if flags else None
        if name not in environ or action.dest == "help":
            continue
        text = environ[name]
        try:
            if isinstance(action, argparse._StoreTrueAction):
                value = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}[text.lower()]
            elif isinstance(action, Repeated):      # CNNSERVE_LOAD_MODEL=a,b
                value = [text]
            else:
                value = action.type(text) if action.type else text
            if action.choices and value not in action.choices:
                raise ValueError(text)
        except (ValueError, KeyError):
            parser.error(f"environment variable {name}={text[:50]!r} is not a valid value for {flags[0]}")
        parser.set_defaults(**{action.dest: value})


def build_default_models(config: ServerConfig) -> None:
    """Serving the default repository (a checkout's): first build its models that ship as weights only and
    are not built yet (a subprocess: this process never imports torch; cnnserve/default_repository.py)."""
    if config.model_repository == ServerConfig.model_repository and config.model_repository.is_dir():
        build_missing(config.model_repository, config.models)


def size_threads_to_cpu_limit(config: ServerConfig, workers: int) -> ServerConfig:
    """Without --threads, ONNX Runtime would size its pool to the node's cores; under a CPU quota (a container's
    limit) that pool would be throttled, so it gets the quota's CPUs instead. (With --workers, the workers
    divide the same CPUs among themselves: server/workers.py.)"""
    limit = cpu_limit()
    log.info("CPUs: %s", limit.description)
    if workers == 1 and config.runtime.intra_op_threads == 0 and limit.cpus < affinity_cpus():
        return replace(config, runtime=replace(config.runtime, intra_op_threads=limit.cpus))
    return config


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    config, workers = parse_args(argv)
    config = size_threads_to_cpu_limit(config, workers)
    build_default_models(config)
    exit_on_startup_error(lambda: run_workers(config, workers) if workers > 1 else serve(config))


if __name__ == "__main__":
    main()
