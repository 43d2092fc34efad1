"""OpenTelemetry tracing of inference requests (`--trace off|console|otlp`), off by default.

Each inference request gets a span (kind SERVER, named and described by OpenTelemetry's RPC and HTTP
conventions) whose parent is the W3C trace context (`traceparent`, `tracestate`) the caller sent in
its gRPC metadata or HTTP headers; without one, or with a malformed one, it starts a trace of its
own. Once the data plane has answered, the request span gets four child spans laid out from its
`StageTimes` (server/metrics.py), end to end from the moment the adapter handed the request over:
`decode` (checks and decoding), `queue` (waiting in the batcher), `compute` (gathering the run's
input, ONNX Runtime, splitting its outputs) and `response` (the adapter building the protocol's
answer). Four, not one per StageTimes field: each span costs the SDK tens of microseconds, and a
lenet_bn request only a few hundred (`python bench/tracing_cost.py`). The data plane itself knows
nothing of tracing; the adapters call `request_span` around their inference.

Sampling is parent-based: a caller's sampled traceparent is traced, an unsampled one is not, and a
trace that starts here is traced with probability `--trace-sample-ratio`. Spans go to the console
(one JSON object a line on stdout) or to an OTLP/HTTP collector at $OTEL_EXPORTER_OTLP_ENDPOINT
(the `otlp` extra: `pip install 'cnnserve[otlp]'`), in batches from a background thread. Each
server process, each of `--workers` too, sets up its own exporter (`configure`, from `server.app.serve`).

Off, `request_span` returns one shared `NO_TRACE` after a single check: no span, no context read.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from cnnserve.spec import LOGITS
from server.dataplane import DataPlane, InferRequest, InferResult
from server.errors import ServiceError
from server.startup import StartupError

log = logging.getLogger(__name__)
MODES = ("off", "console", "otlp")
W3C = TraceContextTextMapPropagator()       # `traceparent` and `tracestate`, whatever $OTEL_PROPAGATORS says
# Attributes of ours (OpenTelemetry has no convention for a model server's requests)
MODEL, VERSION, IMAGES, BATCH_SIZE, STATUS = ("cnnserve.model", "cnnserve.model_version", "cnnserve.images",
                                              "cnnserve.batch_size", "cnnserve.status")


@dataclass(frozen=True)
class TraceOptions:
    mode: str = "off"                       # off, console or otlp
    sample_ratio: float = 1.0               # of the traces that start here (a caller's traceparent decides its own)


@dataclass(frozen=True)
class Endpoint:
    """How an adapter's inference call is named in a request span, and what the span says of it."""
    name: str
    attributes: dict[str, str]


def grpc_method(service: str, method: str) -> Endpoint:
    return Endpoint(f"{service}/{method}", {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})


def http_route(method: str, route: str) -> Endpoint:
    return Endpoint(f"{method} {route}", {"http.request.method": method, "http.route": route})


_tracer: trace.Tracer | None = None         # None: tracing is off
_provider: TracerProvider | None = None


def configure(options: TraceOptions, exporter: SpanExporter | None = None) -> None:
    """Set up this process's tracing as `options` say, replacing any earlier setup. `exporter`, when given, takes
    the spans in place of the mode's own, each as it ends (tests: an InMemorySpanExporter)."""
    global _tracer, _provider
    shut_down()
    if options.mode == "off":
        return
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", "cnnserve")})
    _provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(options.sample_ratio)), resource=resource)
    _provider.add_span_processor(SimpleSpanProcessor(exporter) if exporter else
                                 BatchSpanProcessor(mode_exporter(options.mode)))
    _tracer = _provider.get_tracer("cnnserve.server")
    log.info("tracing: %s, %g of the traces that start here sampled", where_to(options.mode), options.sample_ratio)


def mode_exporter(mode: str) -> SpanExporter:
    if mode == "console":
        return ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise StartupError("--trace otlp needs the OTLP exporter: pip install 'cnnserve[otlp]'") from None
    return OTLPSpanExporter()       # $OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _HEADERS, ... as the SDK reads them


def where_to(mode: str) -> str:
    if mode == "console":
        return "spans to stdout"
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or \
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318").rstrip("/") + "/v1/traces"
    return f"spans to OTLP/HTTP {endpoint}"


def shut_down() -> None:
    """Send the spans still waiting in the exporter's batch, and turn tracing off."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def request_span(endpoint: Endpoint, model: str, carrier) -> Trace | NoTrace:
    """A context manager around one inference request: `carrier` holds the caller's trace context, the HTTP
    request's headers or the gRPC call's ServicerContext (its invocation metadata). Call the data plane through
    its `infer`, and build the answer inside the block."""
    if _tracer is None:
        return NO_TRACE
    return Trace(_tracer, endpoint, model, carrier)


class NoTrace:
    """Tracing off."""

    def __enter__(self) -> NoTrace:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        return None

    @staticmethod
    def infer(dataplane: DataPlane, request: InferRequest):
        return dataplane.infer(request)


NO_TRACE = NoTrace()


class Trace:
    """One request's span and, once the data plane has answered, its stages'."""

    def __init__(self, tracer: trace.Tracer, endpoint: Endpoint, model: str, carrier):
        metadata = getattr(carrier, "invocation_metadata", None)
        headers = carrier if metadata is None else {k: v for k, v in metadata() if k in W3C.fields}
        self.tracer = tracer
        self.attributes = {MODEL: model}   # what every span of the request says
        self.span = tracer.start_span(endpoint.name, W3C.extract(headers), SpanKind.SERVER,
                                      {**endpoint.attributes, MODEL: model})
        self.handed_over_ns = self.answered_ns = 0
        self.result: InferResult | None = None

    def __enter__(self) -> Trace:
        return self

    async def infer(self, dataplane: DataPlane, request: InferRequest) -> InferResult:
        self.handed_over_ns = time.time_ns()
        self.result = await dataplane.infer(request)
        self.answered_ns = time.time_ns()
        return self.result

    def __exit__(self, kind, error, traceback) -> None:
        end, span = time.time_ns(), self.span
        if span.is_recording():
            if self.result is not None:
                self.stages(end)
            span.set_attribute(STATUS, status_of(error))
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error.message if isinstance(error, ServiceError)
                                       else type(error).__name__))
        span.end(end)

    def stages(self, end: int) -> None:
        """The stages as child spans, end to end from the hand-over; the time no stage covers (handing the request
        to the batcher and the answer back across the event loop) falls between `compute` and `response`."""
        result, times, span = self.result, self.result.times, self.span
        span.set_attributes({VERSION: result.version, IMAGES: len(result.outputs[LOGITS]),
                             BATCH_SIZE: result.batch_size})
        parent = trace.set_span_in_context(span)
        start = self.child("decode", parent, self.handed_over_ns, self.after(self.handed_over_ns, result.decode_s))
        start = self.child("queue", parent, start, self.after(start, times.queue_s))
        compute_s = times.compute_input_s - result.decode_s + times.compute_infer_s + times.compute_output_s
        self.child("compute", parent, start, self.after(start, compute_s),
                   {**self.attributes, BATCH_SIZE: result.batch_size})
        self.child("response", parent, self.answered_ns, end)

    def after(self, start: int, seconds: float) -> int:
        """`seconds` after `start`, no later than the data plane's answer (the stages were timed on another clock)."""
        return min(start + int(seconds * 1e9), self.answered_ns)

    def child(self, name: str, parent, start: int, end: int, attributes: dict | None = None) -> int:
        self.tracer.start_span(name, parent, attributes=attributes or self.attributes, start_time=start).end(end)
        return end


def status_of(error: BaseException | None) -> str:
    """The gRPC status name the request ended with, as the metrics count them."""
    if error is None:
        return "OK"
    if isinstance(error, ServiceError):
        return error.status
    return "CANCELLED" if isinstance(error, asyncio.CancelledError) else "INTERNAL"
