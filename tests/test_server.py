"""The gRPC service end to end: a real server process, real gRPC clients, real ONNX Runtime."""
import json
import multiprocessing
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from PIL import Image

from client.channel import connect
from client.cli import feature_array, raw_image
from client.spawn import ROOT, SpawnedServer
from cnnserve.proto import classifier_pb2 as pb
from cnnserve.proto import classifier_pb2_grpc as pb_grpc
from cnnserve.spec import CLASSES
from server.app import ServerConfig
from server.core_share import CoreShare
from server.metrics import PUBLISH_S, sample_value
from server.runtime import ModelRuntime, RuntimeOptions
from server.workers import available_cpus, worker_configs

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def in_process(serving_repository):
    """The same lenet_bn file run directly with ONNX Runtime: what the server must reproduce."""
    session = ort.InferenceSession(str(serving_repository / "lenet_bn" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda images: dict(zip(names, session.run(None, {"image": images[:, None]})))


def classify(server, images, **fields):
    return server.stub.Classify(pb.ClassifyRequest(model="lenet_bn", images=[raw_image(x) for x in images], **fields),
                                timeout=30)


def test_top_k_equals_in_process_onnx_runtime(server, fashion, in_process):
    images, labels = fashion.test_images[:32], fashion.test_labels[:32]
    response = classify(server, images, top_k=3)
    logits = in_process(images)["logits"]
    assert response.model == "lenet_bn" and response.version == 1 and len(response.results) == 32
    correct = 0
    for result, row, label in zip(response.results, logits, labels):
        expected = np.argsort(-row)[:3]
        assert [p.class_index for p in result.predictions] == expected.tolist()
        np.testing.assert_allclose([p.logit for p in result.predictions], row[expected], rtol=1e-6)
        probabilities = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        np.testing.assert_allclose([p.probability for p in result.predictions], probabilities[expected], rtol=1e-5)
        assert result.predictions[0].label == CLASSES[expected[0]]
        correct += expected[0] == label
    assert correct >= 24, "a trained lenet_bn gets most of 32 test images right"


def test_png_images_equal_raw_pixels(server, fashion, tmp_path):
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(fashion.test_images[i]).save(paths[-1])
    encoded = server.stub.Classify(pb.ClassifyRequest(model="lenet_bn", top_k=10, images=[
        pb.Image(encoded=p.read_bytes()) for p in paths]), timeout=30)
    raw = classify(server, fashion.test_images[:4], top_k=10)
    assert [[p.logit for p in r.predictions] for r in encoded.results] == \
           [[p.logit for p in r.predictions] for r in raw.results]


def test_feature_maps_match_in_process_and_float16_halves_the_bytes(server, serving_repository, fashion, in_process):
    images = fashion.test_images[:3]
    expected = in_process(images)
    full = classify(server, images, features=["all"])
    half = classify(server, images, features=["all"], feature_encoding=pb.FEATURE_ENCODING_FLOAT16)
    declared = [(o["name"], o["shape"][1:]) for o in json.loads(
        (serving_repository / "lenet_bn" / "1" / "metadata.json").read_text())["outputs"][1:]]
    for i in range(len(images)):
        assert [(f.name, list(f.shape)) for f in full.results[i].features] == declared
        for f32, f16 in zip(full.results[i].features, half.results[i].features):
            assert f32.dtype == "float32" and f16.dtype == "float16"
            assert len(f16.data) * 2 == len(f32.data)
            np.testing.assert_allclose(feature_array(f32), expected[f32.name][i], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(feature_array(f16), expected[f32.name][i], rtol=1e-3, atol=1e-3)
    some = classify(server, images[:1], features=["fc2", "conv1"])
    assert [f.name for f in some.results[0].features] == ["conv1", "fc2"]

def test_a_batch_tensor_equals_per_image_tensors(server, fashion):
    images = fashion.test_images[:8]
    batch = pb.Tensor(shape=[8, 28, 28], dtype="uint8", data=images.tobytes())
    one = server.stub.Classify(pb.ClassifyRequest(model="lenet_bn", batch=batch, top_k=10), timeout=30)
    many = classify(server, images, top_k=10)
    assert [[p.logit for p in r.predictions] for r in one.results] == \
           [[p.logit for p in r.predictions] for r in many.results]


def bad_requests():
    image = np.zeros((28, 28), np.uint8)
    good = raw_image(image)
    nan = np.zeros((28, 28), np.float32)
    nan[3, 3] = np.nan
    req = lambda **f: pb.ClassifyRequest(**{"model": "lenet_bn", "images": [good], **f})
    return {
        "unknown_model": (req(model="lenet9"), grpc.StatusCode.NOT_FOUND, "googlenet, lenet_bn"),
        "unknown_feature": (req(features=["conv9"]), grpc.StatusCode.NOT_FOUND, "conv1, pool1"),
        "unknown_version": (req(version=7), grpc.StatusCode.NOT_FOUND, "version 1"),
        "empty_batch": (req(images=[]), grpc.StatusCode.INVALID_ARGUMENT, "images is empty"),
        "undecodable": (req(images=[pb.Image(encoded=b"\x89PNG broken")]), grpc.StatusCode.INVALID_ARGUMENT,
                        "images[0].encoded: not a PNG or JPEG image"),
        "no_source": (req(images=[good, pb.Image()]), grpc.StatusCode.INVALID_ARGUMENT, "images[1] has neither"),
        "wrong_shape": (req(images=[pb.Image(tensor=pb.Tensor(shape=[32, 32], dtype="uint8", data=bytes(1024)))]),
                        grpc.StatusCode.INVALID_ARGUMENT, "images[0].tensor.shape [32, 32]"),
        "wrong_dtype": (req(images=[pb.Image(tensor=pb.Tensor(shape=[28, 28], dtype="int64", data=bytes(6272)))]),
                        grpc.StatusCode.INVALID_ARGUMENT, "images[0].tensor.dtype 'int64'"),
        "short_data": (req(images=[pb.Image(tensor=pb.Tensor(shape=[28, 28], dtype="uint8", data=bytes(100)))]),
                       grpc.StatusCode.INVALID_ARGUMENT, "has 100 bytes"),
        "nan": (req(images=[pb.Image(tensor=pb.Tensor(shape=[28, 28], dtype="float32", data=nan.tobytes()))]),
                grpc.StatusCode.INVALID_ARGUMENT, "NaN or Inf"),
        "top_k_too_large": (req(top_k=11), grpc.StatusCode.INVALID_ARGUMENT, "between 1 and 10"),
        "top_k_negative": (req(top_k=-1), grpc.StatusCode.INVALID_ARGUMENT, "top_k -1"),
        "too_many_images": (req(images=[good] * 65), grpc.StatusCode.INVALID_ARGUMENT, "the limit for one request is 64"),
        "response_too_big": (pb.ClassifyRequest(model="googlenet", images=[good] * 64, features=["all"]),
                             grpc.StatusCode.RESOURCE_EXHAUSTED, "over the server's message limit of 4 MiB"),
        "model_not_serving": (req(model="broken"), grpc.StatusCode.UNAVAILABLE, "sha256"),
        "images_and_batch": (req(batch=pb.Tensor(shape=[1, 28, 28], dtype="uint8", data=bytes(784))),
                             grpc.StatusCode.INVALID_ARGUMENT, "not both"),
        "batch_dtype": (req(images=[], batch=pb.Tensor(shape=[1, 28, 28], dtype="float32", data=bytes(3136))),
                        grpc.StatusCode.INVALID_ARGUMENT, "batch.dtype 'float32'"),
        "batch_size": (req(images=[], batch=pb.Tensor(shape=[10**9, 28, 28], dtype="uint8", data=bytes(784))),
                       grpc.StatusCode.INVALID_ARGUMENT, "batch.data has 784"),
        "batch_side": (req(images=[], batch=pb.Tensor(shape=[1, 32, 32], dtype="uint8", data=bytes(1024))),
                       grpc.StatusCode.INVALID_ARGUMENT, "[N, 1, 28, 28]"),
    }


@pytest.mark.parametrize("case", list(bad_requests()))
def test_bad_requests_get_a_clear_status_and_the_server_keeps_serving(server, case, fashion):
    request, code, message = bad_requests()[case]
    with pytest.raises(grpc.RpcError) as error:
        server.stub.Classify(request, timeout=30)
    assert error.value.code() == code
    assert message in error.value.details() and "Traceback" not in error.value.details()
    assert f"Classify refused ({code.name}): {error.value.details()}" in server.log()
    assert len(classify(server, fashion.test_images[:1]).results) == 1


def test_models_health_and_reflection(server):
    models = {m.name: m for m in server.stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert set(models) == {"lenet_bn", "googlenet", "broken"}
    lenet = models["lenet_bn"]
    assert lenet.ready and lenet.provider == "CPUExecutionProvider" and lenet.trained and lenet.test_acc >= 0.8
    assert [f.name for f in lenet.features] == ["conv1", "pool1", "conv2", "pool2", "fc1", "fc2"]
    assert list(lenet.input.shape) == [1, 28, 28] and lenet.input.dtype == "uint8" and len(lenet.labels) == 10
    assert not models["broken"].ready and "sha256" in models["broken"].reason
    assert server.stub.GetModel(pb.GetModelRequest(name="googlenet"), timeout=10).features[0].name == "b1"
    with pytest.raises(grpc.RpcError) as error:
        server.stub.GetModel(pb.GetModelRequest(name="nope"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND

    assert server.health_status() == SERVING and server.health_status("cnnserve.v1.Classifier") == SERVING
    assert server.health_status("lenet_bn") == SERVING and server.health_status("broken") == NOT_SERVING
    services = ProtoReflectionDescriptorDatabase(server.channel).get_services()
    assert "cnnserve.v1.Classifier" in services and "grpc.health.v1.Health" in services
    assert "inference.GRPCInferenceService" in services


def run_client(server, *args):
    return subprocess.run([sys.executable, "-m", "server.client", "--target", server.target, *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_client_cli(server, fashion, in_process, tmp_path):
    path = tmp_path / "coat.png"
    Image.fromarray(fashion.test_images[5]).save(path)
    expected = int(np.argmax(in_process(fashion.test_images[5:6])["logits"][0]))
    result = run_client(server, "classify", "--model", "lenet_bn", str(path), "--top-k", "2",
                        "--features", "conv1,fc1", "--save-features", str(tmp_path / "maps"))
    assert result.returncode == 0, result.stderr
    first = next(line for line in result.stdout.splitlines() if line.startswith(str(path)))
    assert first.split()[1:3] == ["1", str(expected)]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["coat_conv1.png", "coat_fc1.png"]
    assert Image.open(tmp_path / "maps" / "coat_conv1.png").size[0] > 300

    listing = run_client(server, "models")
    assert listing.returncode == 0 and "lenet_bn v1: CPUExecutionProvider" in listing.stdout
    assert "broken: NOT SERVING" in listing.stdout and "conv1" in listing.stdout
    assert run_client(server, "health").stdout.strip() == "server: SERVING"
    failed = run_client(server, "classify", "--model", "nope", str(path))
    assert failed.returncode == 1 and "NOT_FOUND" in failed.stderr and "Traceback" not in failed.stderr


@pytest.mark.slow
def test_health_turns_serving_only_after_warm_up(serving_repository, tmp_path):
    """...and the objects start-up made are set aside from garbage collection before it (see server/app.py)."""
    process = SpawnedServer(serving_repository, ["--models", "googlenet", "--warmup-runs", "100"],
                            log_path=tmp_path / "server.log", wait=False)
    try:
        seen = []
        while not seen or seen[-1] != SERVING:
            assert process.process.poll() is None, process.log()
            status = process.health_status()
            if status is not None:
                seen.append(status)
            time.sleep(0.02)
        assert seen[0] == NOT_SERVING, "the port opens before the models are ready"
        log = process.log()
        assert log.index("warmed up in") < log.index("set aside from garbage") < log.index("SERVING: 1 of 1")
        frozen = int(re.search(r"start-up done: (\d+) objects set aside from garbage collection", log)[1])
        assert frozen > 10_000, "modules and sessions are many objects"
    finally:
        assert process.stop() == 0


def in_flight(process, model):
    """The server's own count of Classify calls in progress for `model`, from its Prometheus endpoint."""
    return sample_value(process.metrics(), "cnnserve_in_flight_requests", model=model)


@pytest.mark.slow
def test_sigterm_lets_the_request_in_flight_finish(serving_repository, tmp_path):
    process = SpawnedServer(serving_repository, ["--models", "googlenet", "--grace", "30"],
                            log_path=tmp_path / "server.log", with_metrics=True)
    images = [raw_image(np.full((28, 28), i, np.uint8)) for i in range(64)]
    request = pb.ClassifyRequest(model="googlenet", images=images, features=["inception5b"])
    outcome = {}

    def slow_call():
        outcome["response"] = process.stub.Classify(request, timeout=120)
        outcome["finished"] = time.monotonic()
    callers = [threading.Thread(target=slow_call) for _ in range(4)]   # four calls queue behind each other
    for caller in callers:
        caller.start()
    deadline = time.monotonic() + 30
    while in_flight(process, "googlenet") < 4:
        assert time.monotonic() < deadline, "the calls never reached the server"
        time.sleep(0.005)
    process.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    for caller in callers:
        caller.join(120)
    assert len(outcome["response"].results) == 64
    assert outcome["finished"] > signalled, "the last call finished after SIGTERM, not before"
    assert process.process.wait(30) == 0 and "stopped" in process.log()
    process.stop()


def test_device_cuda_fails_clearly_and_auto_falls_back(serving_repository, server):
    result = subprocess.run([sys.executable, "-m", "server", "--model-repository", str(serving_repository),
                             "--device", "cuda", "--port", "0"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode != 0
    assert "no CUDA execution provider" in result.stderr and "Traceback" not in result.stderr
    models = server.stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    assert {m.provider for m in models if m.ready} == {"CPUExecutionProvider"}


@pytest.mark.slow
def test_workers_share_the_port_and_their_statistics_and_stop_together(serving_repository, tmp_path):
    """Connections spread over the workers; a ModelStatistics call reaches one of them and counts them all."""
    process = SpawnedServer(serving_repository, ["--models", "lenet_bn", "--workers", "2"], log_path=tmp_path / "s.log")
    try:
        deadline = time.monotonic() + 60
        while process.log().count("SERVING: 1 of 1 models ready") < 2:
            assert time.monotonic() < deadline, process.log()
            time.sleep(0.1)
        cpus = available_cpus()
        threads = max(1, cpus // 2)
        assert f"started 2 workers on port {process.port}, {threads} ONNX Runtime intra-op thread(s)" in process.log()
        assert (f"{cpus} for a long run while the other workers are idle" in process.log()) == (cpus > threads)
        # SO_REUSEPORT hashes each connection to a worker, so both serve some of these (all 16 on one worker, where
        # one worker's own counts would pass too, has odds 2**-15)
        callers = 16
        request = pb.ClassifyRequest(model="lenet_bn", images=[raw_image(np.zeros((28, 28), np.uint8))] * 2)
        for _ in range(callers):
            with connect(process.target, own_connection=True) as channel:
                assert len(pb_grpc.ClassifierStub(channel).Classify(request, timeout=30).results) == 2
        time.sleep(3 * PUBLISH_S)
        client = tgrpc.InferenceServerClient(process.target)
        statistics = client.get_inference_statistics("lenet_bn").model_stats[0]
        client.close()
        assert (statistics.inference_count, statistics.inference_stats.success.count) == (2 * callers, callers)
    finally:
        assert process.stop() == 0, process.log()


def test_workers_split_the_cores_between_their_onnx_runtime_sessions(tmp_path):
    """Each worker's sessions get cores / workers intra-op threads (at least one), not one per core each, and
    a second session with every core for when the others are idle; an explicit --threads is kept as it is,
    and each worker has its own index and metrics port."""
    config = ServerConfig(metrics_port=9000)

    def threads(workers: int, cpus: int, conf: ServerConfig = config) -> list[tuple[int, int]]:
        return [(c.runtime.intra_op_threads, c.runtime.solo_threads)
                for c in worker_configs(conf, workers, tmp_path, cpus)]

    assert threads(2, cpus=2) == [(1, 2)] * 2
    assert threads(3, cpus=8) == [(2, 8)] * 3
    assert threads(4, cpus=2) == [(1, 2)] * 4
    assert threads(2, cpus=1) == [(1, 0)] * 2
    assert threads(2, 2, ServerConfig(runtime=RuntimeOptions(intra_op_threads=3))) == [(3, 0)] * 2
    busy = multiprocessing.get_context("spawn").RawArray("B", 2)
    configs = worker_configs(config, 2, tmp_path, cpus=2, busy=busy)
    assert [(c.slot.index, c.metrics_port, c.slot.shared_statistics, c.slot.busy_workers) for c in configs] == [
        (0, 9000, tmp_path, busy), (1, 9001, tmp_path, busy)]


def test_a_long_run_takes_every_core_while_the_other_workers_are_idle(serving_repository):
    """A worker's model has a session on its share of the cores and one on all of them; a run long enough for
    the compute thread takes the latter only while no other worker has a request in flight."""
    busy = multiprocessing.get_context("spawn").RawArray("B", 2)
    runtime = ModelRuntime(serving_repository / "lenet_bn" / "1" / "model.onnx",
                           RuntimeOptions(intra_op_threads=1, solo_threads=2), CoreShare(busy, worker=0))
    assert runtime.session.get_session_options().intra_op_num_threads == 1
    assert runtime.solo_session.get_session_options().intra_op_num_threads == 2
    assert runtime.session_for(may_use_all_cores=True) is runtime.solo_session
    assert runtime.session_for(may_use_all_cores=False) is runtime.session       # an inline run stays on its share
    CoreShare(busy, worker=1).set_busy(True)                                      # the other worker takes a request
    assert runtime.session_for(may_use_all_cores=True) is runtime.session
    CoreShare(busy, worker=0).set_busy(True)                                      # this worker's own flag is no obstacle
    CoreShare(busy, worker=1).set_busy(False)
    assert runtime.session_for(may_use_all_cores=True) is runtime.solo_session
    images = np.random.default_rng(0).integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(runtime.run(images, ["logits"], may_use_all_cores=True)["logits"],
                                  runtime.run(images, ["logits"])["logits"])
    one_process = ModelRuntime(serving_repository / "lenet_bn" / "1" / "model.onnx", RuntimeOptions())
    assert one_process.solo_session is None and one_process.session_for(may_use_all_cores=True) is one_process.session


def test_onnx_runtime_threads_spin_within_a_run_but_leave_the_cores_alone_between_runs(serving_repository):
    """Spinning saves a wake-up per operator inside a run; after it the cores belong to the event loop (with
    spinning between runs, ONNX Runtime's pool thread burns every idle millisecond)."""
    runtime = ModelRuntime(serving_repository / "lenet_bn" / "1" / "model.onnx", RuntimeOptions(intra_op_threads=2))
    assert runtime.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"
    images = np.random.default_rng(0).integers(0, 256, (64, 1, 28, 28), dtype=np.uint8)
    idle_cpu_s = []
    for _ in range(5):
        runtime.run(images, ["logits"])
        before = time.process_time()
        time.sleep(0.03)
        idle_cpu_s.append(time.process_time() - before)
    assert sorted(idle_cpu_s)[2] < 0.005, f"CPU seconds burnt in 30 ms idle after a run: {idle_cpu_s}"


@pytest.mark.parametrize("method", ["/cnnserve.v1.Classifier/Classify", "/inference.GRPCInferenceService/ModelInfer"])
def test_bytes_that_are_no_message_are_invalid_argument_with_one_log_line(server, method):
    call = server.channel.unary_unary(method)          # no serializers: the bytes go out as they are
    with pytest.raises(grpc.RpcError) as error:
        call(b"\xff\xff\xff\xff not a protobuf", timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "is not a valid" in error.value.details()
    log = server.log()
    assert "Exception deserializing" not in log and "Traceback" not in log
    assert server.health_status() == 1, "still serving"


@pytest.mark.slow
def test_sigterm_under_load_answers_new_calls_unavailable_not_cancelled(serving_repository, tmp_path):
    """50 callers in a loop; SIGTERM: the calls in flight finish, new ones get UNAVAILABLE (retried by
    clients); at most a handful racing the final transport stop may see CANCELLED."""
    process = SpawnedServer(serving_repository, ["--models", "lenet_bn", "--grace", "10"],
                            log_path=tmp_path / "server.log")
    request = pb.ClassifyRequest(model="lenet_bn", images=[raw_image(np.zeros((28, 28), np.uint8))] * 8)
    codes, stop = [], threading.Event()

    def caller():
        while not stop.is_set():
            try:
                process.stub.Classify(request, timeout=10)
                codes.append("OK")
            except grpc.RpcError as error:
                codes.append(error.code().name)
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    return
    callers = [threading.Thread(target=caller) for _ in range(50)]
    for thread in callers:
        thread.start()
    time.sleep(1.5)
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(30) == 0
    stop.set()
    for thread in callers:
        thread.join(30)
    print("SIGTERM under load:", {c: codes.count(c) for c in set(codes)})
    assert codes.count("OK") > 50 and codes.count("CANCELLED") <= 5, {c: codes.count(c) for c in set(codes)}
    assert "shutting down" in process.log() or codes.count("UNAVAILABLE") > 0
    process.stop()


@pytest.mark.slow
def test_the_concurrent_call_cap_refuses_at_once(serving_repository, tmp_path):
    """Idle streams count against --max-concurrent-rpcs; beyond it a call is refused at once, not queued."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    process = SpawnedServer(serving_repository, ["--models", "lenet_bn", "--max-concurrent-rpcs", "3"],
                            log_path=tmp_path / "server.log")
    try:
        stub = reflection_pb2_grpc.ServerReflectionStub(process.channel)
        hold = threading.Event()

        def idle_requests():
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            hold.wait(30)
        streams = [stub.ServerReflectionInfo(idle_requests()) for _ in range(3)]
        for stream in streams:
            next(stream)                                    # each stream is open and answered once
        request = pb.ClassifyRequest(model="lenet_bn", images=[raw_image(np.zeros((28, 28), np.uint8))])
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as error:
            process.stub.Classify(request, timeout=10)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() - started < 2
        hold.set()
        for stream in streams:
            stream.cancel()
    finally:
        process.stop()


class RecordingServer:
    """Records how services are registered with it (the one fake here: what matters is the calls made)."""

    def __init__(self):
        self.generic, self.registered = [], []

    def add_generic_rpc_handlers(self, handlers):
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service, handlers):
        self.registered.append(service)


def test_services_are_registered_with_generic_handlers_only():
    """grpc.aio re-waits on one pending call per registered method for every call it accepts: with cnnserve's
    ~18 methods that cost each Classify about 15% of the event loop's time."""
    from server.app import add_services
    from server.health import HealthServicer
    recorder = RecordingServer()
    add_services(recorder, None, HealthServicer([""]))
    assert recorder.registered == [] and len(recorder.generic) == 5   # cnnserve.v1, KServe, health, reflection x2
