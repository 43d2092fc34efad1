"""Dynamic batching through a real server: merged runs seen in its metrics, same results, a
bounded queue, and expired requests dropped before compute."""
import threading
import time

import grpc
import numpy as np
import pytest

from client.cli import raw_image
from client.spawn import SpawnedServer
from cnnserve.proto import classifier_pb2 as pb
from cnnserve.proto import classifier_pb2_grpc as pb_grpc
from server.metrics import sample_value

# Real servers under load; the batcher alone is tested fast in test_batcher_unit.py.
pytestmark = pytest.mark.slow


def metric(text: str, name: str, model: str) -> float:
    return sample_value(text, name, model=model)


def images(n: int) -> list[pb.Image]:
    rng = np.random.default_rng(0)
    return [raw_image(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(n)]


def test_concurrent_requests_merge_into_fewer_larger_runs_with_equal_results(server):
    singles = images(48)
    alone = [server.stub.Classify(pb.ClassifyRequest(model="googlenet", images=[im], top_k=10), timeout=30)
             for im in singles]
    before = server.metrics()
    futures = [server.stub.Classify.future(pb.ClassifyRequest(model="googlenet", images=[im], top_k=10), timeout=30)
               for im in singles]
    together = [f.result() for f in futures]
    after = server.metrics()
    runs = metric(after, "cnnserve_batch_size_count", "googlenet") - metric(before, "cnnserve_batch_size_count", "googlenet")
    batched = metric(after, "cnnserve_batch_size_sum", "googlenet") - metric(before, "cnnserve_batch_size_sum", "googlenet")
    assert batched == 48 and runs < 48 / 2, f"{runs} runs for 48 images"
    assert max(r.timings.batch_size for r in together) > 1
    for a, b in zip(alone, together):
        assert [p.class_index for p in a.results[0].predictions] == [p.class_index for p in b.results[0].predictions]
        np.testing.assert_allclose([p.logit for p in a.results[0].predictions],
                                   [p.logit for p in b.results[0].predictions], rtol=1e-5, atol=1e-6)


def wait_in_flight(server, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while sample_value(server.metrics(), "cnnserve_in_flight_requests", model="googlenet") < count:
        assert time.monotonic() < deadline, f"{count} requests never reached the server"
        time.sleep(0.005)


def runs_between(before: str, after: str) -> float:
    return metric(after, "cnnserve_batch_size_count", "googlenet") - metric(before, "cnnserve_batch_size_count", "googlenet")


@pytest.fixture
def slow_server(serving_repository, tmp_path):
    """googlenet on one ONNX Runtime thread: a 64-image request keeps it busy for about 0.4 s,
    long enough to queue requests behind it deterministically."""
    server = SpawnedServer(serving_repository, ["--models", "googlenet", "--threads", "1", "--max-queue-images", "64"],
                           log_path=tmp_path / "server.log", with_metrics=True)
    yield server
    assert server.stop() == 0


def start_busy_run(server):
    """Send 64 images and return once the server is working on them."""
    busy = server.stub.Classify.future(pb.ClassifyRequest(model="googlenet", images=images(64)), timeout=60)
    wait_in_flight(server, 1)
    time.sleep(0.02)   # let it finish decoding and start its run
    return busy


def test_full_queue_answers_resource_exhausted_quickly(slow_server):
    running = start_busy_run(slow_server)
    queued = slow_server.stub.Classify.future(pb.ClassifyRequest(model="googlenet", images=images(64)), timeout=60)
    wait_in_flight(slow_server, 2)
    time.sleep(0.05)   # let the second request finish decoding and join the queue
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as error:
        slow_server.stub.Classify(pb.ClassifyRequest(model="googlenet", images=images(1)), timeout=60)
    refused_in = time.monotonic() - start
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue holds 64 images and its limit is 64" in error.value.details()
    assert refused_in < 0.25 and not running.done(), "refused at once, while the queue was still full"
    assert len(running.result().results) == 64 and len(queued.result().results) == 64


def test_expired_deadline_is_dropped_before_compute(slow_server):
    before = slow_server.metrics()
    busy = start_busy_run(slow_server)
    with pytest.raises(grpc.RpcError) as error:
        slow_server.stub.Classify(pb.ClassifyRequest(model="googlenet", images=images(1)), timeout=0.1)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(busy.result().results) == 64
    time.sleep(0.2)
    after = slow_server.metrics()
    assert runs_between(before, after) == 1, "only the 64-image request ran; the expired one was dropped"
    assert sample_value(after, "cnnserve_requests_total", model="googlenet", code="DEADLINE_EXCEEDED") == 1


def test_cancelled_request_is_dropped_before_compute(slow_server):
    before = slow_server.metrics()
    busy = start_busy_run(slow_server)
    queued = slow_server.stub.Classify.future(pb.ClassifyRequest(model="googlenet", images=images(1)), timeout=60)
    wait_in_flight(slow_server, 2)
    assert queued.cancel()
    assert len(busy.result().results) == 64
    time.sleep(0.3)
    after = slow_server.metrics()
    assert runs_between(before, after) == 1, "only the 64-image request ran; the cancelled one was dropped"
    assert sample_value(after, "cnnserve_requests_total", model="googlenet", code="CANCELLED") == 1


def test_callers_on_their_own_connections_form_batches_on_a_model_that_runs_on_the_loop(server):
    """lenet_bn runs on the event loop itself (a run is tens of microseconds). gRPC hands the loop one new call at
    a time, so before the batcher waited for recently active callers every run had one image at any load."""
    from client.channel import connect
    callers, seconds = 12, 2.0
    channels = [connect(server.target, own_connection=True) for _ in range(callers)]
    stubs = [pb_grpc.ClassifierStub(channel) for channel in channels]
    request = pb.ClassifyRequest(model="lenet_bn", images=images(1))
    for stub in stubs:
        stub.Classify(request, timeout=30)                     # connected, and known to the batcher
    before, answered = server.metrics(), []

    def caller(stub):
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            answered.append(stub.Classify(request, timeout=30).results[0].predictions[0].class_index)

    threads = [threading.Thread(target=caller, args=(stub,)) for stub in stubs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = server.metrics()
    for channel in channels:
        channel.close()
    runs = metric(after, "cnnserve_batch_size_count", "lenet_bn") - metric(before, "cnnserve_batch_size_count", "lenet_bn")
    batched = metric(after, "cnnserve_batch_size_sum", "lenet_bn") - metric(before, "cnnserve_batch_size_sum", "lenet_bn")
    assert batched == len(answered) and len(set(answered)) == 1
    assert batched / runs >= 2, f"mean batch {batched / runs:.2f} from {callers} closed-loop callers ({runs:.0f} runs)"
