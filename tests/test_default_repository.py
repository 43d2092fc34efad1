"""The shipped default model repository: accuracy as recorded, intact files, sample images
classified by the server it starts with no arguments, and a rebuild command that still works."""
import subprocess
import sys

import pytest

from export.evaluate import accuracy
from models.data import CLASSES, load_split
from server.client import encoded_image
from server.proto import classifier_pb2 as pb
from server.repository import load_version
from server.spawn import ROOT, SpawnedServer

REPOSITORY = ROOT / "model_repository"
SHIPPED = {"lenet": 0.85, "lenet_bn": 0.90}     # the modern recipe's promise for each model
EXAMPLES = sorted((ROOT / "examples").glob("[0-9]-*.png"))


@pytest.mark.parametrize("arch", list(SHIPPED))
def test_shipped_model_accuracy_equals_its_metadata(arch, data_dir):
    model = load_version(REPOSITORY / arch)          # raises when the sha256 does not match
    images, labels = load_split(data_dir, "test")
    measured = accuracy(model.model_path, images, labels)
    assert abs(measured - model.metadata["test_acc"]) <= 0.001
    assert measured >= SHIPPED[arch]
    assert model.metadata["trained"] and model.metadata["checkpoint"]["recipe"] == "modern"
    assert model.metadata["parity"]["passed"]


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    server = SpawnedServer(None, log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield server
    assert server.stop() == 0


@pytest.mark.parametrize("arch", list(SHIPPED))
def test_sample_images_classify_to_their_class_through_the_server(default_server, arch):
    assert len(EXAMPLES) == len(CLASSES)
    request = pb.ClassifyRequest(model=arch, images=[encoded_image(p) for p in EXAMPLES],
                                 features=["all"], top_k=1)
    response = default_server.stub.Classify(request, timeout=30)
    predicted = [r.predictions[0].class_index for r in response.results]
    assert predicted == [int(p.name.split("-")[0]) for p in EXAMPLES]


def test_photo_like_image_is_fitted_and_classified(default_server):
    request = pb.ClassifyRequest(model="lenet_bn", images=[encoded_image(ROOT / "examples" / "photo-ankle-boot.jpg")])
    response = default_server.stub.Classify(request, timeout=30)
    assert response.results[0].predictions[0].label == "Ankle boot"


def test_rebuild_command_runs_end_to_end(tmp_path, data_dir):
    """One short epoch of the documented rebuild, so the command cannot rot."""
    out = tmp_path / "repository"
    result = subprocess.run([sys.executable, "-m", "export.defaults", "--epochs", "1", "--out", str(out),
                             "--checkpoints", str(tmp_path / "checkpoints"), "--data-dir", str(data_dir)],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for arch in SHIPPED:
        model = load_version(out / arch, 1)
        assert model.metadata["trained"] and model.metadata["checkpoint"]["config"]["epochs"] == 1
        evaluated = subprocess.run([sys.executable, "-m", "export.evaluate", str(out / arch), "--data-dir", str(data_dir)],
                                   capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no staging directory left behind"
