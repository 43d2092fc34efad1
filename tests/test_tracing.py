"""OpenTelemetry tracing (server/tracing.py) against a real server in this process, so that an in-memory exporter
receives its spans: a W3C traceparent sent in gRPC metadata (cnnserve.v1, KServe v2 unary and streaming) or in an
HTTP header is the parent of the request span, whose stages nest inside it; an unsampled one yields no span, a
malformed one a new trace; an error is the span's status; and with tracing off no span is made at all.

The server runs on an event loop of this module's own, in the main thread (it installs signal handlers), and runs
only while a test awaits a call: the gRPC clients are grpc.aio on the same loop, the HTTP one urllib on a thread."""
import asyncio
import gc
import json
import os
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc

from client.spawn import free_port
from cnnserve.proto import classifier_pb2 as pb
from cnnserve.proto import classifier_pb2_grpc
from server import tracing
from server.__main__ import parse_args
from server.app import ServerConfig, serve_async
from server.runtime import RuntimeOptions
from server.tracing import TraceOptions
from server.workers import worker_configs

MODEL = "lenet_bn"
STAGES = ("decode", "queue", "compute", "response")       # children of the request span, in this order


class InProcessServer:
    def __init__(self, repository):
        self.loop = asyncio.new_event_loop()
        self.config = ServerConfig(model_repository=repository, models=[MODEL], port=free_port(),
                                   http_port=free_port(), runtime=RuntimeOptions(warmup_runs=1))
        self.stopping = asyncio.Event()
        self.task = self.loop.create_task(serve_async(self.config, self.stopping))
        self.run(self.wait_serving())
        gc.unfreeze()       # the server's start-up froze this whole test process's objects (set_aside_startup_objects)

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    async def wait_serving(self, timeout: float = 60) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.config.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(int(timeout / 0.05)):
                if self.task.done():
                    self.task.result()          # the server's start-up error
                try:
                    if (await health.Check(health_pb2.HealthCheckRequest(), timeout=1)).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(f"the in-process server was not SERVING after {timeout} s")

    def stop(self) -> None:
        self.stopping.set()
        self.run(self.task)
        self.loop.close()


@pytest.fixture(scope="module")
def server(committed_repository):
    process = InProcessServer(committed_repository)
    yield process
    process.stop()


@pytest.fixture
def spans():
    """Tracing on, every trace that starts here sampled, spans to memory; off again after the test."""
    exporter = InMemorySpanExporter()
    tracing.configure(TraceOptions(mode="console"), exporter)
    yield exporter
    tracing.shut_down()


def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (1, 1, 28, 28), dtype=np.uint8)


async def classify(server, metadata: tuple) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.config.port}") as channel:
        image = pb.Image(tensor=pb.Tensor(shape=[28, 28], dtype="uint8", data=pixels().tobytes()))
        response = await classifier_pb2_grpc.ClassifierStub(channel).Classify(
            pb.ClassifyRequest(model=MODEL, images=[image], top_k=1), metadata=metadata)
        assert len(response.results) == 1


def model_infer_request(model: str = MODEL) -> kpb.ModelInferRequest:
    request = kpb.ModelInferRequest(model_name=model)
    request.inputs.add(name="image", datatype="UINT8", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(pixels().tobytes())
    return request


async def model_infer(server, metadata: tuple) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.config.port}") as channel:
        response = await service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(model_infer_request(),
                                                                                       metadata=metadata)
        assert response.outputs[0].shape == [1, 10]


async def model_stream_infer(server, metadata: tuple) -> None:
    """Two requests on one stream: each a request span of its own, both children of the stream's traceparent."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.config.port}") as channel:
        stream = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            iter([model_infer_request(), model_infer_request()]), metadata=metadata)
        answers = [answer async for answer in stream]
        assert [a.error_message for a in answers] == ["", ""]


async def http_infer(server, metadata: tuple, model: str = MODEL) -> int:
    """The HTTP status of a KServe v2 infer call, made by urllib on a thread while the server's loop runs."""
    body = json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 28, 28],
                                   "data": pixels().reshape(-1).tolist()}]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{server.config.http_port}/v2/models/{model}/infer", body,
                                     {"Content-Type": "application/json", **dict(metadata)})

    def post() -> int:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
    return await asyncio.get_running_loop().run_in_executor(None, post)


async def http_infer_ok(server, metadata: tuple) -> None:
    assert await http_infer(server, metadata) == 200


CALLS = {"cnnserve.v1": (classify, "cnnserve.v1.Classifier/Classify", 1),
         "kserve-grpc": (model_infer, "inference.GRPCInferenceService/ModelInfer", 1),
         "kserve-grpc-stream": (model_stream_infer, "inference.GRPCInferenceService/ModelStreamInfer", 2),
         "kserve-http": (http_infer_ok, "POST /v2/models/{name}/infer", 1)}


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    """(header value, trace id, parent span id), both ids in hex as W3C writes them."""
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def by_parent(spans) -> dict:
    children = {}
    for span in spans:
        children.setdefault(span.parent.span_id if span.parent else None, []).append(span)
    return children


def check_request_tree(request, children: dict) -> None:
    """The stages under the request span, nested inside it in time, each naming the model."""
    assert request.attributes["cnnserve.model"] == MODEL and request.attributes["cnnserve.status"] == "OK"
    assert request.attributes["cnnserve.images"] == 1 and request.attributes["cnnserve.model_version"] == 1
    stages = sorted(children[request.context.span_id], key=lambda span: span.start_time)
    assert tuple(span.name for span in stages) == STAGES
    for span in stages:
        assert request.start_time <= span.start_time <= span.end_time <= request.end_time, span.name
        assert span.attributes["cnnserve.model"] == MODEL and span.context.trace_id == request.context.trace_id
        assert span.kind == SpanKind.INTERNAL and span.context.span_id not in children     # no deeper spans
    assert all(a.end_time <= b.start_time for a, b in zip(stages, stages[1:]))
    assert stages[2].attributes["cnnserve.batch_size"] >= 1


@pytest.mark.parametrize("protocol", CALLS)
def test_a_traceparent_sent_in_is_the_parent_of_the_request_span(server, spans, protocol):
    call, name, requests = CALLS[protocol]
    header, trace_id, parent_id = traceparent()
    server.run(call(server, (("traceparent", header),)))
    finished = spans.get_finished_spans()
    assert len(finished) == requests * (1 + len(STAGES))
    assert {span.context.trace_id for span in finished} == {int(trace_id, 16)}
    children = by_parent(finished)
    roots = children[int(parent_id, 16)]
    assert len(roots) == requests and all(span.parent.is_remote for span in roots)
    for request in roots:
        assert request.name == name and request.kind == SpanKind.SERVER
        check_request_tree(request, children)


def test_an_unsampled_traceparent_yields_no_span_and_a_sampled_one_is_honoured_at_ratio_0(server):
    exporter = InMemorySpanExporter()
    tracing.configure(TraceOptions(mode="console", sample_ratio=0.0), exporter)
    try:
        unsampled, _, _ = traceparent(sampled=False)
        server.run(classify(server, (("traceparent", unsampled),)))
        server.run(http_infer_ok(server, (("traceparent", unsampled),)))
        server.run(classify(server, ()))                   # a trace that starts here, at ratio 0
        assert exporter.get_finished_spans() == ()
        sampled, trace_id, _ = traceparent()
        server.run(model_infer(server, (("traceparent", sampled),)))
        assert {span.context.trace_id for span in exporter.get_finished_spans()} == {int(trace_id, 16)}
    finally:
        tracing.shut_down()


@pytest.mark.parametrize("header", ["00-not-a-trace-context-01", "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
                                    "ff-" + "a" * 32 + "-" + "b" * 16 + "-01"])
def test_a_malformed_traceparent_is_ignored_and_the_request_starts_a_new_trace(server, spans, header):
    server.run(classify(server, (("traceparent", header),)))
    server.run(http_infer_ok(server, (("traceparent", header),)))
    finished = spans.get_finished_spans()
    roots = by_parent(finished)[None]
    assert len(roots) == 2 and len({span.context.trace_id for span in roots}) == 2
    for request in roots:
        check_request_tree(request, by_parent(finished))


def test_a_refused_request_is_an_error_span_with_its_status_and_no_stages(server, spans):
    assert server.run(http_infer(server, (), model="no_such_model")) == 404
    [request] = spans.get_finished_spans()
    assert request.status.status_code == StatusCode.ERROR and "no_such_model" in request.status.description
    assert request.attributes["cnnserve.status"] == "NOT_FOUND"
    assert request.attributes["cnnserve.model"] == "no_such_model"


def test_tracing_is_off_by_default_and_then_makes_no_span(server, monkeypatch):
    assert ServerConfig().trace == TraceOptions(mode="off") and parse_args([])[0].trace.mode == "off"
    tracing.configure(ServerConfig().trace)

    def no_span(*args, **kwargs):
        raise AssertionError("a span was started with tracing off")
    monkeypatch.setattr(tracing, "Trace", no_span)
    header, _, _ = traceparent()
    for call, _, _ in CALLS.values():
        server.run(call(server, (("traceparent", header),)))


def test_the_flags_reach_every_worker(tmp_path):
    config, _ = parse_args(["--trace", "otlp", "--trace-sample-ratio", "0.25"])
    assert config.trace == TraceOptions(mode="otlp", sample_ratio=0.25)
    assert all(c.trace == config.trace for c in worker_configs(config, 2, tmp_path, 2))
    with pytest.raises(SystemExit):
        parse_args(["--trace-sample-ratio", "1.5"])


def test_otlp_mode_sends_over_http_to_the_standard_endpoint(monkeypatch):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    assert isinstance(tracing.mode_exporter("otlp"), OTLPSpanExporter)
    assert tracing.where_to("otlp") == "spans to OTLP/HTTP http://127.0.0.1:9/v1/traces"
