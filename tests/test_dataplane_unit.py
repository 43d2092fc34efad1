"""The data plane alone, over a fake runtime (tests/fakes.py): no server, no sockets, no ONNX Runtime, no files.
What every protocol adapter relies on: lookup, checks and their messages, feature selection,
the response budget, top-k, and the statistics."""
import asyncio
import multiprocessing

import numpy as np
import pytest
from fakes import FakeRuntime, logits_of
from prometheus_client import generate_latest
from tritonclient.grpc import model_config_pb2 as mc

from cnnserve.metadata import ModelMetadata
from cnnserve.repository import ModelVersion
from cnnserve.spec import CLASSES
from server.batcher import Batcher, BatchingOptions
from server.core_share import CoreShare
from server.dataplane import DataPlane, EncodedImage, InferRequest, PixelBatch, PixelImage, check_batch, decode_images
from server.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from server.metrics import Metrics, sample_value
from server.model_store import ModelStore, ServedModel, ServedVersion


def served(name: str, runtime: FakeRuntime, metrics: Metrics, max_batch: int = 8, run_images: int = 0) -> ServedModel:
    metadata = ModelMetadata.from_json({
        "input": {"name": "image", "dtype": "uint8", "shape": [-1, 1, 28, 28]}, "labels": list(CLASSES),
        "outputs": [{"name": "logits", "shape": [-1, 10]}, {"name": "conv1", "shape": [-1, 2, 3, 3]}],
        "trained": True, "test_acc": 0.9, "model_file": "model.onnx", "sha256": "0" * 64})
    version = ModelVersion(name, 1, None, metadata, mc.ModelConfig(name=name))
    batcher = Batcher(name, runtime, BatchingOptions(max_batch_size=max_batch, max_run_images=run_images),
                      metrics.batch_observer(name, 1))
    return ServedModel(name, {1: ServedVersion(name, version, runtime, batcher)})


@pytest.fixture
def runtime():
    return FakeRuntime()


@pytest.fixture
def plane(runtime):
    store = ModelStore.__new__(ModelStore)          # no repository: the models are given
    metrics = Metrics()
    store.models = {"m": served("m", runtime, metrics), "broken": ServedModel("broken", error="bad sha256")}
    return DataPlane(store, metrics, max_response_bytes=2048)   # 8 images with every output: about 2.4 kB


@pytest.fixture
def infer(plane):
    """plane.infer on one event loop for the whole test (the batchers' scheduler lives on it)."""
    loop = asyncio.new_event_loop()
    yield lambda request: loop.run_until_complete(plane.infer(request))
    loop.close()


def pixels(value: int) -> PixelImage:
    return PixelImage([28, 28], "uint8", bytes([value]) * 784)


def test_top_k_features_and_rows_per_image(infer):
    result = infer(InferRequest("m", images=[pixels(0), pixels(1)], top_k=3, features=["all"]))
    assert result.features == ["conv1"] and result.outputs["conv1"].shape == (2, 2, 3, 3)
    assert result.top_indices.tolist() == [[9, 8, 7], [9, 8, 7]]
    assert result.top_probabilities[0, 0] > result.top_probabilities[0, 1] > 0
    assert (result.outputs["logits"][1] == logits_of(1)).all() and result.labels[9] == "Ankle boot"


def test_a_whole_batch_tensor_equals_per_image_tensors(infer):
    batch = np.stack([np.full((1, 28, 28), v, dtype=np.uint8) for v in (3, 5)])
    one = infer(InferRequest("m", batch=PixelBatch("batch", "uint8", batch.shape, batch.tobytes()))).outputs["logits"]
    many = infer(InferRequest("m", images=[pixels(3), pixels(5)])).outputs["logits"]
    assert np.array_equal(one, many)


def test_a_worker_is_busy_for_the_others_while_it_has_requests_in_flight(plane, runtime, infer):
    busy = multiprocessing.get_context("spawn").RawArray("B", 2)
    plane.cores = CoreShare(busy, worker=1)
    other = CoreShare(busy, worker=0)
    during = []
    runtime.on_run = lambda: during.append((list(busy), other.alone()))
    infer(InferRequest("m", images=[pixels(0)]))
    assert during == [([0, 1], False)]          # worker 0 would have kept to its share of the cores
    assert list(busy) == [0, 0] and other.alone()

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(5)]
    raw = [PixelImage([28, 28] if i % 2 else [1, 28, 28], "uint8", a.tobytes()) for i, a in enumerate(arrays)]
    expected = np.stack(arrays)[:, None]
    assert np.array_equal(decode_images(raw, 8, 28), expected)            # all raw uint8: joined
    as_float = PixelImage([28, 28], "float32", (arrays[4] / 255).astype("<f4").tobytes())
    assert np.array_equal(decode_images([*raw[:4], as_float], 8, 28), expected)   # mixed: one at a time
    with pytest.raises(InvalidArgument, match=r"images\[3\]\.tensor\.data has 783 bytes"):
        decode_images([*raw[:3], PixelImage([28, 28], "uint8", bytes(783))], 8, 28)


@pytest.mark.parametrize("request_, error, fragment", [
    (InferRequest("x" * 1_000_000), NotFound, "(1,000,000 characters)"),
    (InferRequest("broken", images=[pixels(0)]), Unavailable, "bad sha256"),
    (InferRequest("m", version=2, images=[pixels(0)]), NotFound, "no version 2 served; it serves version 1"),
    (InferRequest("m"), InvalidArgument, "images is empty"),
    (InferRequest("m", images=[pixels(0)] * 9), InvalidArgument, "the limit for one request is 8"),
    (InferRequest("m", images=[pixels(0)], top_k=11), InvalidArgument, "between 1 and 10"),
    (InferRequest("m", images=[pixels(0)], features=["fc9"]), NotFound, "no feature map 'fc9'"),
    (InferRequest("m", images=[pixels(0)] * 8, features=["all"]), ResourceExhausted, "over the server's message limit"),
    (InferRequest("m", images=[EncodedImage(b"not an image")]), InvalidArgument, "images[0].encoded"),
    (InferRequest("m", images=[PixelImage([28, 27], "uint8", b"")]), InvalidArgument, "images[0].tensor.shape"),
    (InferRequest("m", batch=PixelBatch("batch", "float32", [1, 1, 28, 28], bytes(4 * 784))), InvalidArgument,
     "must be uint8"),
    (InferRequest("m", batch=PixelBatch("batch", "uint8", [1, 2, 28, 28], bytes(2 * 784))), InvalidArgument,
     "[N, 1, 28, 28]"),
])
def test_refusals_name_the_field_and_the_limit_before_compute(infer, runtime, request_, error, fragment):
    with pytest.raises(error) as raised:
        infer(request_)
    assert fragment in raised.value.message and len(raised.value.message) < 400
    assert runtime.batches == []


def test_statistics_and_metrics_count_every_outcome(plane, infer):
    infer(InferRequest("m", images=[pixels(0)] * 3))
    with pytest.raises(InvalidArgument):
        infer(InferRequest("m", images=[pixels(0)], top_k=99))
    totals = plane.metrics.totals("m", served=1)[1]
    assert (totals.success_count, totals.fail_count, totals.inference_count, totals.execution_count) == (1, 1, 3, 1)
    exposition = generate_latest(plane.metrics.registry).decode()     # what a scrape of /metrics gets
    assert sample_value(exposition, "cnnserve_requests_total", model="m", code="INVALID_ARGUMENT") == 1
    assert sample_value(exposition, "cnnserve_requests_total", model="m", code="OK") == 1
    assert sample_value(exposition, "cnnserve_batch_size_sum", model="m") == 3
    assert sample_value(exposition, "cnnserve_request_latency_seconds_count", model="m") == 1


def stages_ns(totals) -> int:
    return totals.queue_ns + totals.compute_input_ns + totals.compute_infer_ns + totals.compute_output_ns


def test_a_requests_stages_fit_in_its_time_and_its_run_counts_once(plane, infer, runtime):
    runtime.delay = 0.005
    infer(InferRequest("m", images=[pixels(0)] * 3, top_k=2))
    totals = plane.metrics.totals("m", served=1)[1]
    assert totals.success_count == 1 and totals.execution_count == 1 and list(totals.batches) == [3]
    assert stages_ns(totals) <= totals.success_ns
    assert totals.compute_infer_ns >= 5_000_000 and totals.queue_ns > 0
    assert totals.compute_input_ns > 0 and totals.compute_output_ns > 0        # decoding; ranking and top-k
    run = totals.batches[3]
    assert run.count == 1 and run.compute_infer_ns == totals.compute_infer_ns      # the request ran alone
    assert run.compute_input_ns <= totals.compute_input_ns and run.compute_output_ns <= totals.compute_output_ns


def test_a_request_split_over_runs_counts_once_and_each_run_once(runtime):
    runtime.delay = 0.002
    metrics = Metrics()
    store = ModelStore.__new__(ModelStore)
    store.models = {"m": served("m", runtime, metrics, run_images=2)}
    plane = DataPlane(store, metrics, max_response_bytes=2**20)
    asyncio.run(plane.infer(InferRequest("m", images=[pixels(i) for i in range(5)])))
    totals = metrics.totals("m", served=1)[1]
    assert (totals.success_count, totals.inference_count, totals.execution_count) == (1, 5, 3)
    assert {size: run.count for size, run in totals.batches.items()} == {2: 2, 1: 1}
    assert totals.compute_infer_ns >= sum(run.compute_infer_ns for run in totals.batches.values()) >= 6_000_000
    assert stages_ns(totals) <= totals.success_ns


@pytest.mark.parametrize("batch, fragment", [
    (PixelBatch("batch", "float32", [1, 28, 28], bytes(3136)), "batch.dtype 'float32' must be uint8"),
    (PixelBatch("batch", "uint8", [1, 28], bytes(784)), "batch.shape [1, 28] must be [N, 1, 28, 28]"),
    (PixelBatch("batch", "uint8", [10**9, 28, 28], bytes(784)), "batch.data has 784"),
    (PixelBatch("input 'image'", "UINT8", [10**30, 1, 28, 28], None, [0] * 784, "UINT8"), "over 2^63"),
    (PixelBatch("input 'image'", "UINT8", [1, 1, 28, 27], None, [0] * 784, "UINT8"), "needs 756 values"),
    (PixelBatch("input 'image'", "UINT8", [1, 1, 28, 28], None, [256] * 784, "UINT8"), "values must be in 0..255"),
    (PixelBatch("batch", "uint8", [65, 28, 28], bytes(65 * 784)), "batch has 65 images; the limit for one request is 64"),
])
def test_one_batch_rule_for_every_protocol(batch, fragment):
    """cnnserve.v1's `batch` and KServe's `image` input are checked by the one rule, before any allocation."""
    with pytest.raises(InvalidArgument) as error:
        check_batch(batch, 64, 28)
    assert fragment in error.value.message


def test_a_batch_from_values_or_bytes_is_the_same_pixels():
    pixels = np.arange(2 * 784, dtype=np.int64) % 256
    from_values = check_batch(PixelBatch("input 'image'", "UINT8", [2, 28, 28], None, pixels, "UINT8"), 64, 28)
    from_bytes = check_batch(PixelBatch("batch", "uint8", [2, 1, 28, 28], pixels.astype(np.uint8).tobytes()), 64, 28)
    assert from_values.shape == from_bytes.shape == (2, 1, 28, 28) and np.array_equal(from_values, from_bytes)
