"""KServe v2 / Open Inference Protocol over gRPC, driven by Triton's own client (tritonclient.grpc)
against a real server: health, metadata, config, inference of raw uint8 images on every served
model, feature maps by name, the classification extension, statistics and the error cases."""
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

from client.cli import raw_image
from client.spawn import ROOT, SpawnedServer
from cnnserve.proto import classifier_pb2 as pb
from cnnserve.spec import CLASSES

# The models the fast tests serve (tests/conftest.py `committed_repository`): those git ships as ONNX files.
COMMITTED = sorted(p.parts[1] for p in map(Path, subprocess.run(
    ["git", "ls-files", "model_repository/*/1/model.onnx"], cwd=ROOT, capture_output=True, text=True).stdout.split()))


@pytest.fixture(scope="module")
def server(committed_repository, tmp_path_factory):
    process = SpawnedServer(committed_repository, log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def client(server):
    return tgrpc.InferenceServerClient(server.target)


def infer(client, model, images, outputs=(), **kwargs):
    tensor = tgrpc.InferInput("image", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    requested = [tgrpc.InferRequestedOutput(name, **kwargs.pop(name, {})) for name in outputs]
    return client.infer(model, [tensor], outputs=requested or None, **kwargs)


def test_health_metadata_config_and_index(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("lenet_bn") and not client.is_model_ready("nosuch")
    assert not client.is_model_ready("lenet_bn", "7")
    server = client.get_server_metadata()
    assert server.name == "cnnserve" and "classification" in server.extensions
    meta = client.get_model_metadata("lenet_bn")
    assert meta.versions == ["1"] and meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("image", "UINT8", [-1, 1, 28, 28])]
    assert [t.name for t in meta.outputs][:3] == ["logits", "conv1", "pool1"]
    config = client.get_model_config("lenet_bn").config
    assert config.name == "lenet_bn" and config.max_batch_size == 64 and config.input[0].name == "image"
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert set(index) == set(COMMITTED) and index["lenet_bn"].state == "READY"


@pytest.mark.parametrize("model", COMMITTED)
def test_infer_raw_uint8_equals_cnnserve_v1_bit_for_bit(server, client, fashion, model):
    images = fashion.test_images[:5, None]
    result = infer(client, model, images, outputs=["logits"])
    logits = result.as_numpy("logits")
    assert logits.shape == (5, 10) and logits.dtype == np.float32
    v1 = server.stub.Classify(pb.ClassifyRequest(model=model, images=[raw_image(x) for x in fashion.test_images[:5]],
                                                 top_k=10), timeout=30)
    for row, answer in zip(logits, v1.results):
        assert [row[p.class_index] for p in answer.predictions] == [p.logit for p in answer.predictions]
    assert (logits.argmax(1) == fashion.test_labels[:5]).mean() >= 0.6


def test_feature_maps_by_name_and_classification(client, fashion):
    images = fashion.test_images[:3, None]
    result = infer(client, "lenet_bn", images, outputs=["conv1", "fc1", "logits"])
    assert result.as_numpy("conv1").shape == (3, 6, 24, 24) and result.as_numpy("fc1").shape == (3, 120)
    classified = infer(client, "lenet_bn", images, outputs=["logits"], logits={"class_count": 3})
    labels = classified.as_numpy("logits")
    assert labels.shape == (3, 3)
    score, index, label = labels[0, 0].decode().split(":")
    assert int(index) == result.as_numpy("logits")[0].argmax() and label == CLASSES[int(index)]
    assert float(score) == pytest.approx(float(result.as_numpy("logits")[0].max()), abs=1e-5)
    only_logits = infer(client, "lenet_bn", images)        # no outputs requested: the logits
    assert only_logits.as_numpy("logits").shape == (3, 10) and only_logits.as_numpy("conv1") is None


def test_statistics_count_inferences(client, fashion):
    before = client.get_inference_statistics("lenet_bn").model_stats[0]
    infer(client, "lenet_bn", fashion.test_images[:4, None])
    after = client.get_inference_statistics("lenet_bn").model_stats[0]
    assert after.inference_count - before.inference_count == 4
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.execution_count > before.execution_count and after.last_inference > 0


@pytest.mark.parametrize("case, status, fragment", [
    ("unknown_model", "StatusCode.NOT_FOUND", "'nosuch' is not served"),
    ("wrong_shape", "StatusCode.INVALID_ARGUMENT", "must be [N, 1, 28, 28]"),
    ("wrong_datatype", "StatusCode.INVALID_ARGUMENT", "must be UINT8"),
    ("unknown_output", "StatusCode.NOT_FOUND", "no output 'nosuch'"),
    ("too_many_classes", "StatusCode.INVALID_ARGUMENT", "between 1 and 10"),
])
def test_errors_map_to_the_same_status_as_cnnserve_v1(client, case, status, fragment):
    good = np.zeros((1, 1, 28, 28), dtype=np.uint8)
    with pytest.raises(InferenceServerException) as error:
        if case == "unknown_model":
            infer(client, "nosuch", good)
        elif case == "wrong_shape":
            infer(client, "lenet_bn", np.zeros((1, 1, 27, 28), dtype=np.uint8))
        elif case == "wrong_datatype":
            tensor = tgrpc.InferInput("image", [1, 1, 28, 28], "FP32")
            tensor.set_data_from_numpy(good.astype(np.float32))
            client.infer("lenet_bn", [tensor])
        elif case == "unknown_output":
            infer(client, "lenet_bn", good, outputs=["nosuch"])
        else:
            infer(client, "lenet_bn", good, outputs=["logits"], logits={"class_count": 11})
    assert error.value.status() == status and fragment in error.value.message()


# ---- KServe v2 over HTTP/REST (--http-port), with tritonclient.http and plain JSON ----

@pytest.fixture(scope="module")
def http_server(committed_repository, tmp_path_factory):
    process = SpawnedServer(committed_repository, ["--models", "lenet,lenet_bn"], with_http=True,
                            log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def http_client(http_server):
    import tritonclient.http as thttp
    return thttp.InferenceServerClient(http_server.http_target)


def post_json(server, path, body):
    import json
    import urllib.error
    import urllib.request
    request = urllib.request.Request(f"http://{server.http_target}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_http_health_metadata_config(http_client):
    assert http_client.is_server_live() and http_client.is_server_ready()
    assert http_client.is_model_ready("lenet_bn") and not http_client.is_model_ready("nosuch")
    assert "binary_tensor_data" in http_client.get_server_metadata()["extensions"]
    meta = http_client.get_model_metadata("lenet_bn")
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}]
    assert http_client.get_model_config("lenet_bn")["max_batch_size"] == 64
    assert {m["name"] for m in http_client.get_model_repository_index()} == {"lenet", "lenet_bn"}


def test_http_binary_data_equals_grpc_bit_for_bit(http_server, http_client, fashion):
    import tritonclient.http as thttp
    images = fashion.test_images[:6, None]
    tensor = thttp.InferInput("image", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=True)
    outputs = [thttp.InferRequestedOutput("logits", binary_data=True), thttp.InferRequestedOutput("conv1")]
    result = http_client.infer("lenet_bn", [tensor], outputs=outputs)
    grpc_result = infer(tgrpc.InferenceServerClient(http_server.target), "lenet_bn", images, outputs=["logits", "conv1"])
    assert np.array_equal(result.as_numpy("logits"), grpc_result.as_numpy("logits"))
    assert result.as_numpy("conv1").shape == (6, 6, 24, 24)
    classified = http_client.infer("lenet_bn", [tensor], outputs=[thttp.InferRequestedOutput("logits", class_count=2)])
    assert classified.as_numpy("logits").shape == (6, 2)
    assert classified.as_numpy("logits")[0, 0].decode().endswith(":" + CLASSES[fashion.test_labels[0]])


def test_http_json_tensors_and_errors(http_server, fashion):
    image = fashion.test_images[0][None, None]
    body = {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": image.tolist()}],
            "outputs": [{"name": "logits"}, {"name": "logits", "parameters": {"classification": 1}}]}
    status, answer = post_json(http_server, "/v2/models/lenet_bn/infer", body)
    assert status == 200 and answer["model_name"] == "lenet_bn"
    logits, top = answer["outputs"]
    assert logits["shape"] == [1, 10] and len(logits["data"]) == 10 and top["datatype"] == "BYTES"
    assert top["data"][0].split(":")[1] == str(int(np.argmax(logits["data"])))
    cases = {
        "/v2/models/nosuch/infer": (body, 404, "'nosuch' is not served"),
        "/v2/models/lenet_bn/versions/x/infer": (body, 400, "not a version number"),
        "/v2/models/lenet_bn/infer": ({**body, "inputs": [{**body["inputs"][0], "shape": [1, 1, 28, 27]}]}, 400,
                                      "needs 756 values"),
        "/v2/models/lenet_bn/infer#classes": ({**body, "outputs": [{"name": "logits", "parameters": {
            "classification": 11}}]}, 400, "classification 11 is out of range: it must be between 1 and 10"),
    }
    for path, (request, code, fragment) in cases.items():
        status, answer = post_json(http_server, path.split("#")[0], request)
        assert status == code and fragment in answer["error"], answer
    wrong_type = {"inputs": [{**body["inputs"][0], "datatype": "FP32"}]}
    status, answer = post_json(http_server, "/v2/models/lenet_bn/infer", wrong_type)
    assert status == 400 and "must be UINT8" in answer["error"]


@pytest.mark.parametrize("case, grpc_status, http_status", [
    ("unknown_model", "NOT_FOUND", 404), ("wrong_shape", "INVALID_ARGUMENT", 400)])
def test_errors_map_to_the_same_status_in_every_protocol(http_server, case, grpc_status, http_status):
    import grpc
    model, side = ("nosuch", 28) if case == "unknown_model" else ("lenet_bn", 27)
    v1 = pb.ClassifyRequest(model=model, images=[pb.Image(tensor=pb.Tensor(shape=[28, side], dtype="uint8",
                                                                            data=bytes(28 * side)))])
    with pytest.raises(grpc.RpcError) as v1_error:
        http_server.stub.Classify(v1, timeout=10)
    with pytest.raises(InferenceServerException) as kserve_error:
        infer(tgrpc.InferenceServerClient(http_server.target), model, np.zeros((1, 1, 28, side), np.uint8))
    body = {"inputs": [{"name": "image", "shape": [1, 1, 28, side], "datatype": "UINT8", "data": [0] * 28 * side}]}
    status, _ = post_json(http_server, f"/v2/models/{model}/infer", body)
    assert v1_error.value.code().name == grpc_status and kserve_error.value.status() == f"StatusCode.{grpc_status}"
    assert status == http_status


@pytest.mark.parametrize("protocol", ["cnnserve", "kserve-grpc", "kserve-http"])
@pytest.mark.slow
def test_the_load_generator_speaks_every_protocol(http_server, protocol):
    from client.loadtest import Level, Workload, run_level
    target = http_server.http_target if protocol == "kserve-http" else http_server.target
    row = run_level(Workload(target, "lenet_bn", batch=2, features=("conv1",), warmup_s=0.3, duration_s=1,
                             processes=1, protocol=protocol), Level(concurrency=2), live=False)
    assert row["ok"] > 10 and not row["failed"] and row["protocol"] == protocol, row["first_errors"]


def test_http_statistics_count_inferences(http_server, http_client, fashion):
    import tritonclient.http as thttp
    before = http_client.get_inference_statistics("lenet_bn")["model_stats"][0]
    tensor = thttp.InferInput("image", [2, 1, 28, 28], "UINT8")
    tensor.set_data_from_numpy(fashion.test_images[:2, None])
    http_client.infer("lenet_bn", [tensor])
    after = http_client.get_inference_statistics("lenet_bn")["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 2
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1


def test_statistics_add_up_and_every_protocol_reads_the_same(committed_repository, tmp_path, fashion):
    """Known requests on a server of its own (gRPC and HTTP, 1, 3 and 64 images each, one at a time, and one that
    fails), then Triton's statistics as perf_analyzer reads them: counts per request, per run and per image."""
    import time

    import tritonclient.http as thttp
    from google.protobuf import json_format
    from tritonclient.grpc import service_pb2 as kpb

    process = SpawnedServer(committed_repository, ["--models", "lenet"], with_http=True, log_path=tmp_path / "s.log")
    try:
        grpc_client, http_client = tgrpc.InferenceServerClient(process.target), \
            thttp.InferenceServerClient(process.http_target)
        sizes = (1, 3, 64)
        started_ms = int(time.time() * 1000)
        for n in sizes:
            infer(grpc_client, "lenet", fashion.test_images[:n, None])
            tensor = thttp.InferInput("image", [n, 1, 28, 28], "UINT8")
            tensor.set_data_from_numpy(fashion.test_images[:n, None], binary_data=True)
            http_client.infer("lenet", [tensor])
        finished_ms = int(time.time() * 1000)
        with pytest.raises(InferenceServerException):
            infer(grpc_client, "lenet", np.zeros((1, 1, 27, 28), np.uint8))

        answer = grpc_client.get_inference_statistics("lenet")
        http_answer = http_client.get_inference_statistics("lenet")
        assert json_format.ParseDict(http_answer, kpb.ModelStatisticsResponse()) == answer
        for name, version in (("lenet", "1"), ("", "")):        # one version, every model: the same entry
            assert grpc_client.get_inference_statistics(name, version) == answer
            assert http_client.get_inference_statistics(name, version) == http_answer
        with pytest.raises(InferenceServerException) as error:
            grpc_client.get_inference_statistics("lenet", "7")
        assert error.value.status() == "StatusCode.NOT_FOUND"
    finally:
        assert process.stop() == 0, process.log()

    (stats,) = answer.model_stats
    inference, requests = stats.inference_stats, 2 * len(sizes)
    assert stats.name == "lenet" and stats.version == "1"
    assert (inference.success.count, inference.fail.count) == (requests, 1)
    stages = [inference.queue, inference.compute_input, inference.compute_infer, inference.compute_output]
    assert [stage.count for stage in stages] == [requests] * 4 and all(stage.ns > 0 for stage in stages)
    assert stats.inference_count == 2 * sum(sizes)
    # one request at a time, so each ran alone: one run per request, of its own size
    assert {b.batch_size: b.compute_infer.count for b in stats.batch_stats} == {n: 2 for n in sizes}
    assert sum(b.compute_infer.count for b in stats.batch_stats) == stats.execution_count == requests
    for b in stats.batch_stats:
        assert b.compute_input.count == b.compute_infer.count == b.compute_output.count
    # A request's stages are perf_counter differences that nest inside its total; each is truncated to whole ns,
    # and floating-point rounding of the differences (hundredths of a ns) can at most tip their sum 1 ns over.
    assert sum(stage.ns for stage in stages) <= inference.success.ns + requests
    # each run counts in full for its request, which adds its own decoding and top-k around the run
    for stage in ("compute_input", "compute_infer", "compute_output"):
        assert sum(getattr(b, stage).ns for b in stats.batch_stats) <= getattr(inference, stage).ns
    assert started_ms <= stats.last_inference <= finished_ms


def test_shared_memory_is_refused_with_what_to_do_instead(client, http_client, http_server):
    """cnnserve offers no shared memory; a client that asks learns why on either protocol, and the server goes on."""
    calls = [lambda c: c.register_system_shared_memory("region", "/cnnserve-test", 64),
             lambda c: c.unregister_system_shared_memory(), lambda c: c.get_system_shared_memory_status(),
             lambda c: c.unregister_cuda_shared_memory()]
    for protocol_client, status in ((client, "StatusCode.UNIMPLEMENTED"), (http_client, "501")):
        for call in calls:
            with pytest.raises(InferenceServerException) as error:
                call(protocol_client)
            assert "does not offer shared memory" in error.value.message(), error.value
            assert str(error.value.status()) == status, error.value.status()
    assert client.is_server_ready() and http_client.is_server_ready()


def test_a_generic_client_gets_the_logits_alone_from_the_logits_view(http_server, http_client, fashion):
    """NAME.logits: metadata and config list the logits alone, so a client that asks for every advertised output
    (perf_analyzer) measures the classify path; same answers as NAME; a feature map asked of it is refused by name;
    its statistics count apart; it is no repository model."""
    import tritonclient.http as thttp
    grpc_client = tgrpc.InferenceServerClient(http_server.target)
    images = fashion.test_images[:4, None]
    full = infer(grpc_client, "lenet_bn", images, outputs=["logits"]).as_numpy("logits")
    for client, http in ((grpc_client, False), (http_client, True)):
        meta = client.get_model_metadata("lenet_bn.logits")
        outputs = [o["name"] for o in meta["outputs"]] if http else [o.name for o in meta.outputs]
        assert outputs == ["logits"] and (meta["name"] if http else meta.name) == "lenet_bn.logits"
        config = client.get_model_config("lenet_bn.logits")
        config = config if http else json_format.MessageToDict(config.config)
        assert [o["name"] for o in config["output"]] == ["logits"] and config["name"] == "lenet_bn.logits"
        assert client.is_model_ready("lenet_bn.logits") and not client.is_model_ready("nosuch.logits")
        before = client.get_inference_statistics("lenet_bn.logits")
        before = (before if http else json_format.MessageToDict(before, preserving_proto_field_name=True))["model_stats"][0]
        module = thttp if http else tgrpc
        tensor = module.InferInput("image", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        every_output = [module.InferRequestedOutput(name) for name in outputs]
        answer = client.infer("lenet_bn.logits", [tensor], outputs=every_output)
        assert np.array_equal(answer.as_numpy("logits"), full)
        assert (answer.get_response()["model_name"] if http else answer.get_response().model_name) == "lenet_bn.logits"
        after = client.get_inference_statistics("lenet_bn.logits")
        after = (after if http else json_format.MessageToDict(after, preserving_proto_field_name=True))["model_stats"][0]
        assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 4
        with pytest.raises(InferenceServerException, match=r"has no output 'conv1'; it has: logits$"):
            client.infer("lenet_bn.logits", [tensor], outputs=[module.InferRequestedOutput("conv1")])
    assert "lenet_bn.logits" not in {m.name for m in grpc_client.get_model_repository_index().models}
