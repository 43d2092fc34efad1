"""KServe v2 ModelStreamInfer (Triton's bidirectional stream) against a real server: one answer per request,
in request order, with its id; per-request errors that leave the stream open; requests batched like unary
ones, at most STREAM_IN_FLIGHT at a time per stream; a stream is one caller for fair queuing; cancellation,
deadlines and the bearer token."""
import queue
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc

from client.channel import ClientSecurity
from client.spawn import SpawnedServer
from server.kserve import STREAM_IN_FLIGHT
from server.metrics import sample_value

METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"


@pytest.fixture(scope="module")
def server(committed_repository, tmp_path_factory):
    process = SpawnedServer(committed_repository, log_path=tmp_path_factory.mktemp("logs") / "server.log",
                            with_metrics=True)
    yield process
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log()


@pytest.fixture(scope="module")
def small_runs_server(committed_repository, tmp_path_factory):
    """Runs of 8 images: a flood of googlenet requests lasts seconds while one run takes a fraction of one."""
    process = SpawnedServer(committed_repository, ["--models", "googlenet", "--max-run-images", "8"],
                            log_path=tmp_path_factory.mktemp("logs") / "server.log", with_metrics=True)
    yield process
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log()


def infer_request(model: str, images: np.ndarray, request_id: str = "", outputs=(),
                  classification: int = 0) -> kpb.ModelInferRequest:
    request = kpb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="image", datatype="UINT8", shape=images.shape)
    request.raw_input_contents.append(images.tobytes())
    for name in outputs:
        output = request.outputs.add(name=name)
        if name == "logits" and classification:
            output.parameters["classification"].int64_param = classification
    return request


def raw_stream(channel: grpc.Channel):
    """ModelStreamInfer taking requests as bytes, so a test can send one that is not a message."""
    return channel.stream_stream(METHOD, request_serializer=lambda raw: raw,
                                 response_deserializer=kpb.ModelStreamInferResponse.FromString)


def in_flight(server, model: str) -> float:
    return sample_value(server.metrics(), "cnnserve_in_flight_requests", model=model)


def wait_idle(server, model: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while in_flight(server, model):
        assert time.monotonic() < deadline, f"{model}: requests still in flight {timeout} s after the stream ended"
        time.sleep(0.05)


class HeldOpen:
    """A request iterator that sends `requests`, then keeps the stream open until `release()`."""

    def __init__(self, requests):
        self.requests, self.released = list(requests), threading.Event()

    def __iter__(self):
        yield from self.requests
        self.released.wait(60)

    def release(self):
        self.released.set()


def test_answers_come_in_request_order_with_their_ids_and_equal_unary_bit_for_bit(server, fashion):
    """Through Triton's own streaming client. Bit for bit although the stream's requests share runs: ONNX
    Runtime's CPU kernels compute each image's outputs the same whatever else is in the run."""
    client = tgrpc.InferenceServerClient(server.target)
    cases = [(model, n, outputs, classification)
             for model in ("lenet", "lenet_bn", "googlenet", "densenet")
             for n, outputs, classification in ((1, (), 0), (3, ("logits",), 3), (2, ("logits", "conv1"), 0))
             if "conv1" not in outputs or model.startswith("lenet")]
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = []
    for i, (model, n, outputs, classification) in enumerate(cases * 3):
        images = fashion.test_images[i:i + n, None]
        tensor = tgrpc.InferInput("image", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        requested = [tgrpc.InferRequestedOutput(name, class_count=classification if name == "logits" else 0)
                     for name in outputs] or None
        client.async_stream_infer(model, [tensor], request_id=f"request-{i}", outputs=requested)
        sent.append((f"request-{i}", model, [tensor], requested))
    received = [answers.get(timeout=60) for _ in sent]
    client.stop_stream()
    assert [error for _, error in received] == [None] * len(sent)
    assert [result.get_response().id for result, _ in received] == [request_id for request_id, *_ in sent]
    for (result, _), (request_id, model, inputs, requested) in zip(received, sent):
        assert result.get_response() == client.infer(model, inputs, outputs=requested, request_id=request_id)\
            .get_response(), request_id


def test_one_streams_requests_share_runs(server, fashion):
    client = tgrpc.InferenceServerClient(server.target)
    before = client.get_inference_statistics("googlenet").model_stats[0]
    requests = [infer_request("googlenet", fashion.test_images[i:i + 1, None], f"{i}") for i in range(32)]
    stub = service_pb2_grpc.GRPCInferenceServiceStub(server.channel)
    answers = list(stub.ModelStreamInfer(iter(requests), timeout=60))
    after = client.get_inference_statistics("googlenet").model_stats[0]
    assert [a.infer_response.id for a in answers] == [str(i) for i in range(32)]
    assert after.inference_count - before.inference_count == 32
    assert after.execution_count - before.execution_count < 32, "every request of the stream ran alone"


def test_a_bad_request_mid_stream_gets_its_error_and_the_stream_goes_on(server, fashion):
    good = lambda request_id: infer_request("lenet_bn", fashion.test_images[:2, None], request_id).SerializeToString()
    requests = [good("first"),
                infer_request("lenet_bn", np.zeros((1, 1, 27, 28), np.uint8), "wrong-shape").SerializeToString(),
                infer_request("nosuch", fashion.test_images[:1, None], "unknown-model").SerializeToString(),
                infer_request("lenet_bn", np.zeros((65, 1, 28, 28), np.uint8), "too-many").SerializeToString(),
                infer_request("lenet_bn", fashion.test_images[:1, None], "bad-output", ["nosuch"]).SerializeToString(),
                b"\xff\xff\xff not a message",
                good("last")]
    answers = list(raw_stream(server.channel)(iter(requests), timeout=60))
    assert [a.infer_response.id for a in answers] == ["first", "wrong-shape", "unknown-model", "too-many",
                                                     "bad-output", "", "last"]
    errors = [a.error_message for a in answers]
    assert errors[0] == errors[-1] == ""
    assert "input 'image'.shape [1, 1, 27, 28] must be [N, 1, 28, 28]" in errors[1]
    assert "model 'nosuch' is not served" in errors[2]
    assert "has 65 images; the limit for one request is 64" in errors[3]
    assert "no output 'nosuch'" in errors[4]
    assert "the request (17 bytes) is not a valid inference.ModelInferRequest message" in errors[5]
    assert not any("Traceback" in e or "/server/" in e for e in errors)
    assert answers[-1].infer_response.outputs[0].shape == [2, 10] and not answers[1].infer_response.outputs


def test_cancelling_a_stream_drops_its_requests_and_the_server_keeps_serving(server, fashion):
    client = tgrpc.InferenceServerClient(server.target)
    images = fashion.test_images[:8, None]
    before = client.get_inference_statistics("googlenet").model_stats[0].inference_count
    cancelled_before = sample_value(server.metrics(), "cnnserve_requests_total", model="googlenet", code="CANCELLED")
    requests = HeldOpen(infer_request("googlenet", images, f"{i}") for i in range(STREAM_IN_FLIGHT))
    call = service_pb2_grpc.GRPCInferenceServiceStub(server.channel).ModelStreamInfer(iter(requests), timeout=120)
    try:
        assert next(call).infer_response.id == "0"
        call.cancel()
        wait_idle(server, "googlenet")
    finally:
        requests.release()
    computed = client.get_inference_statistics("googlenet").model_stats[0].inference_count - before
    # the cancel comes after the first answer: at most a run or two were under way, the rest was queued
    assert computed <= STREAM_IN_FLIGHT * len(images) // 2, f"{computed} images of the cancelled stream computed"
    assert sample_value(server.metrics(), "cnnserve_requests_total", model="googlenet", code="CANCELLED") \
        > cancelled_before
    tensor = tgrpc.InferInput("image", [1, 1, 28, 28], "UINT8")
    tensor.set_data_from_numpy(images[:1])
    assert client.infer("googlenet", [tensor]).as_numpy("logits").shape == (1, 10)


def test_the_streams_deadline_ends_it_and_drops_its_requests(server, fashion):
    requests = HeldOpen(infer_request("googlenet", fashion.test_images[:8, None], f"{i}")
                        for i in range(STREAM_IN_FLIGHT))
    call = service_pb2_grpc.GRPCInferenceServiceStub(server.channel).ModelStreamInfer(iter(requests), timeout=0.5)
    try:
        with pytest.raises(grpc.RpcError) as error:
            list(call)
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_idle(server, "googlenet")
    finally:
        requests.release()
    unary = service_pb2_grpc.GRPCInferenceServiceStub(server.channel).ModelInfer(
        infer_request("googlenet", fashion.test_images[:1, None], "after"), timeout=30)
    assert unary.id == "after"


def test_one_stream_holds_at_most_its_in_flight_limit(small_runs_server, fashion):
    """Three times the limit sent at once: the server reads no more than the limit ahead of its answers."""
    server, count = small_runs_server, 3 * STREAM_IN_FLIGHT
    requests = [infer_request("googlenet", fashion.test_images[i:i + 1, None], f"{i}") for i in range(count)]
    answers, peak = [], 0
    reader = threading.Thread(target=lambda: answers.extend(
        service_pb2_grpc.GRPCInferenceServiceStub(server.channel).ModelStreamInfer(iter(requests), timeout=120)))
    reader.start()
    while reader.is_alive():
        peak = max(peak, in_flight(server, "googlenet"))
        time.sleep(0.02)
    reader.join()
    assert [a.infer_response.id for a in answers] == [str(i) for i in range(count)]
    assert not any(a.error_message for a in answers)
    assert STREAM_IN_FLIGHT // 2 < peak <= STREAM_IN_FLIGHT


@pytest.mark.slow     # end to end, several seconds: in the full run (docs/development.md)
def test_a_flood_on_one_stream_does_not_starve_a_unary_caller_on_the_same_connection(small_runs_server, fashion):
    """Hundreds of requests on one stream; unary calls on the same channel (the same connection) meanwhile. The
    stream is a caller of its own, so each unary call waits about a run, not behind the flood's queue."""
    server, flood_size = small_runs_server, 300
    stub = service_pb2_grpc.GRPCInferenceServiceStub(server.channel)
    requests = [infer_request("googlenet", fashion.test_images[:2, None], f"{i}") for i in range(flood_size)]
    answers, first_answer = [], threading.Event()

    def flood():
        for answer in stub.ModelStreamInfer(iter(requests), timeout=300):
            answers.append(answer)
            first_answer.set()

    started = time.monotonic()
    flooding = threading.Thread(target=flood)
    flooding.start()
    assert first_answer.wait(60)
    latencies = []
    for i in range(5):
        start = time.monotonic()
        stub.ModelInfer(infer_request("googlenet", fashion.test_images[i:i + 1, None], "polite"), timeout=60)
        latencies.append(time.monotonic() - start)
    polite_done = time.monotonic()
    flooding.join()
    flood_s = time.monotonic() - started
    print(f"unary latencies {[round(s, 3) for s in latencies]} s beside a flood that took {flood_s:.1f} s")
    assert len(answers) == flood_size and not any(a.error_message for a in answers)
    assert polite_done < started + flood_s, "the unary calls waited for the flood to end"
    assert max(latencies) < flood_s / 5


def test_the_bearer_token_guards_the_stream(committed_repository, tmp_path, fashion):
    (tmp_path / "token").write_text("a-token-of-at-least-16-characters\n")
    security = ClientSecurity(token_file=tmp_path / "token")
    server = SpawnedServer(committed_repository, ["--models", "lenet_bn", "--auth-token-file", str(tmp_path / "token")],
                           security=security, log_path=tmp_path / "server.log")
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(server.channel)
        request = infer_request("lenet_bn", fashion.test_images[:1, None], "with-token")
        with pytest.raises(grpc.RpcError) as error:
            list(stub.ModelStreamInfer(iter([request]), timeout=30))
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answers = list(stub.ModelStreamInfer(iter([request]), timeout=30, metadata=security.metadata()))
        assert [a.infer_response.id for a in answers] == ["with-token"] and not answers[0].error_message
    finally:
        assert server.stop() == 0
