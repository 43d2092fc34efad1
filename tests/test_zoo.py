"""The trained zoo: shipped weights load, match their sha256 and reproduce their recorded accuracy
(a subset here, all 10,000 test images through the server); `python -m export.onnx --arch resnet18`
works on a fresh copy of the project; untrained exports never pass for trained ones."""
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from cnnserve.spawn import ROOT, SpawnedServer
from cnnserve.spec import sha256_file
from models import create_model, list_models
from models.pretrained import WEIGHTS_DIR, WeightsError, get_weights, load_state_dict
from models.recipes import BOOK_PRINTED, TrainConfig
from models.train import evaluate
from server.client import raw_image
from server.proto import classifier_pb2 as pb
from server.repository import load_version

SHIPPED = list_models(trained=True)
MB = 1e6


def test_the_zoo_ships_its_trained_models_within_the_size_budget():
    assert {"lenet", "lenet_bn", "resnet18", "densenet"} <= set(SHIPPED)
    binaries = [*WEIGHTS_DIR.glob("*.safetensors"), *(ROOT / "model_repository").glob("*/1/model.onnx")]
    assert sum(p.stat().st_size for p in binaries) < 100 * MB
    assert max(p.stat().st_size for p in binaries) < 50 * MB


def test_the_default_repository_serves_exactly_the_shipped_weights(shipped_repository):
    assert sorted(p.name for p in shipped_repository.iterdir()) == sorted(SHIPPED)
    for arch in SHIPPED:
        metadata = load_version(shipped_repository / arch, 1).metadata     # raises on a sha256 mismatch
        assert metadata["trained"] and metadata["parity"]["passed"]
        assert metadata["checkpoint"]["sha256"] == get_weights(arch).sha256
        assert metadata["test_acc"] == get_weights(arch).test_acc_stored


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if create_model(a).input_side > 28 else a
                                  for a in SHIPPED])
def test_shipped_weights_load_and_reproduce_their_accuracy_on_a_subset(arch, fashion):
    weights = get_weights(arch)
    model = create_model(arch, weights="fashion-mnist")       # checks the sha256
    assert not model.training and weights.params == sum(p.numel() for p in model.parameters())
    assert weights.dtype in ("float16", "float32") and weights.recipe.startswith("modern")
    assert weights.test_acc_stored >= BOOK_PRINTED[arch][2], "at least the book's best printed build"
    assert abs(weights.test_acc_stored - weights.test_acc) <= 0.001, "the fp16 round trip costs at most 0.1 point"
    n = 1000    # binomial noise of a 1,000-image subset: σ ≈ 0.01 at 90 %, so 4σ below the full-set accuracy
    images, labels = torch.from_numpy(fashion.test_images[:n]), torch.from_numpy(fashion.test_labels[:n]).long()
    assert evaluate(model, images, labels, TrainConfig(**weights.config)) >= weights.test_acc_stored - 0.04


def test_a_damaged_weights_file_is_refused(tmp_path):
    for name in ("lenet_bn.safetensors", "index.json"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    data = bytearray((tmp_path / "lenet_bn.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "lenet_bn.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_state_dict(get_weights("lenet_bn", tmp_path), tmp_path)
    with pytest.raises(ValueError, match="unknown weights"):
        create_model("lenet_bn", weights="imagenet")
    with pytest.raises(WeightsError, match="no shipped"):
        get_weights("nin", tmp_path)


@pytest.fixture(scope="module")
def shipped_server(shipped_repository, tmp_path_factory):
    server = SpawnedServer(shipped_repository, log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield server
    assert server.stop() == 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", SHIPPED)
def test_full_test_set_through_the_server_reproduces_the_recorded_accuracy(shipped_server, arch, fashion):
    info = shipped_server.stub.GetModel(pb.GetModelRequest(name=arch), timeout=10)
    assert info.trained and info.test_acc == get_weights(arch).test_acc_stored
    correct = 0
    for start in range(0, len(fashion.test_images), 64):
        images = fashion.test_images[start:start + 64]
        response = shipped_server.stub.Classify(
            pb.ClassifyRequest(model=arch, images=[raw_image(x) for x in images]), timeout=120)
        predicted = np.array([r.predictions[0].class_index for r in response.results])
        correct += int((predicted == fashion.test_labels[start:start + 64]).sum())
    assert abs(correct / len(fashion.test_images) - info.test_acc) <= 0.001


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory):
    """The project's files as a fresh clone has them (tracked, or new and not ignored): no checkpoints."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    copy = tmp_path_factory.mktemp("fresh") / "cnnserve"
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    return copy


def run_module(cwd, data_dir, *args):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "FASHION_MNIST_DIR": str(data_dir)})


def tree_digest(directory) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_export_resnet18_with_no_flags_exports_the_shipped_weights(fresh_copy, data_dir):
    assert not (fresh_copy / "checkpoints").exists()
    result = run_module(fresh_copy, data_dir, "export.onnx", "--arch", "resnet18")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "parity ok" in result.stdout and "models/weights/resnet18.safetensors" in result.stdout
    model = load_version(fresh_copy / "model_repository" / "resnet18")          # the newest: the one just written
    assert model.version == 2 and model.metadata["trained"]
    assert model.metadata["checkpoint"]["sha256"] == sha256_file(WEIGHTS_DIR / "resnet18.safetensors")


@pytest.mark.slow
def test_random_init_exports_never_land_beside_trained_versions(fresh_copy, data_dir):
    repository = fresh_copy / "model_repository"
    before = tree_digest(repository)
    result = run_module(fresh_copy, data_dir, "export.onnx", "--arch", "all", "--random-init")
    assert result.returncode == 0, result.stderr[-2000:]
    assert tree_digest(repository) == before
    for arch in list_models():
        assert load_version(fresh_copy / "exports" / "untrained" / arch, 1).metadata["trained"] is False
    refused = run_module(fresh_copy, data_dir, "export.onnx", "--arch", "lenet_bn", "--random-init",
                         "--out", "model_repository")
    assert refused.returncode == 1 and "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert tree_digest(repository) == before
    evaluated = run_module(fresh_copy, data_dir, "export.evaluate", "exports/untrained/lenet_bn")
    assert evaluated.returncode == 1 and "UNTRAINED" in evaluated.stderr
