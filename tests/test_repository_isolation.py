"""One model's broken files never take down the others: each failure is that model's NOT_SERVING
reason, naming the file and the field (relative to the repository), and ListModels never fails."""
import json
import shutil
import subprocess
import sys

import grpc
import numpy as np
import pytest

from client.cli import raw_image
from client.spawn import ROOT, SpawnedServer
from cnnserve.proto import classifier_pb2 as pb

BREAKAGES = {   # model name: (what to change, the reason's expected words)
    "no_trained": (lambda m, c: m.pop("trained"), "no_trained/1/metadata.json: trained is missing"),
    "no_labels": (lambda m, c: m.pop("labels"), "no_labels/1/metadata.json: labels is missing"),
    "no_input": (lambda m, c: m.pop("input"), "no_input/1/metadata.json: input is missing"),
    "extra_output": (lambda m, c: m["outputs"].append({"name": "fc9", "shape": [-1, 3]}),
                     "extra_output/1/metadata.json: outputs lists 'fc9'"),
    "escaping_file": (lambda m, c: m.update(model_file="../../lenet_bn/1/model.onnx"),
                      "escaping_file/1/metadata.json: model_file must be a file name"),
    "negative_batch": (lambda m, c: c.replace("max_batch_size: 64", "max_batch_size: -1"),
                       "negative_batch/config.pbtxt: max_batch_size -1 must be in 1..4096"),
    "huge_batch": (lambda m, c: c.replace("max_batch_size: 64", "max_batch_size: 1000000"),
                   "huge_batch/config.pbtxt: max_batch_size 1000000 must be in 1..4096"),
}


@pytest.fixture(scope="module")
def repository(committed_repository, tmp_path_factory):
    repo = tmp_path_factory.mktemp("isolation")
    shutil.copytree(committed_repository / "lenet_bn", repo / "lenet_bn")
    for name, (change, _) in BREAKAGES.items():
        shutil.copytree(committed_repository / "lenet", repo / name)
        metadata_path, config_path = repo / name / "1" / "metadata.json", repo / name / "config.pbtxt"
        metadata, config = json.loads(metadata_path.read_text()), config_path.read_text()
        changed = change(metadata, config)
        if isinstance(changed, str):
            config_path.write_text(changed)
        metadata_path.write_text(json.dumps(metadata))
    return repo


def test_broken_models_are_not_serving_with_a_reason_and_the_others_serve(repository, tmp_path):
    server = SpawnedServer(repository, log_path=tmp_path / "server.log")
    try:
        models = {m.name: m for m in server.stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
        assert models["lenet_bn"].ready
        for name, (_, reason) in BREAKAGES.items():
            assert not models[name].ready and reason in models[name].reason, models[name].reason
            assert str(repository) not in models[name].reason, "no server paths in what clients see"
            with pytest.raises(grpc.RpcError) as error:
                server.stub.Classify(pb.ClassifyRequest(model=name, images=[raw_image(np.zeros((28, 28), np.uint8))]), timeout=10)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        blank = raw_image(np.zeros((28, 28), np.uint8))
        answer = server.stub.Classify(pb.ClassifyRequest(model="lenet_bn", images=[blank]), timeout=10)
        assert len(answer.results) == 1
    finally:
        assert server.stop() == 0


def test_strict_exits_on_the_first_broken_model_in_one_line(repository):
    result = subprocess.run([sys.executable, "-m", "server", "--model-repository", str(repository), "--strict",
                             "--port", "0"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: --strict: 7 model(s) failed to load" in result.stderr
