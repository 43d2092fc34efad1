"""The shipped default model repository (a copy of it): sample images classified through the server,
the models that ship as weights only built on the server's first start (cached, and without torch
in the server process), and the rebuild commands that still work."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from client.cli import encoded_image
from client.spawn import ROOT, SpawnedServer
from cnnserve.default_repository import WEIGHTS_INDEX, models_to_build, shipped_weights
from cnnserve.proto import classifier_pb2 as pb
from cnnserve.repository import load_version
from cnnserve.spec import CLASSES
from export.defaults import build_missing
from models import list_models
from models.pretrained import INDEX_FILE, WEIGHTS_DIR, get_weights

SHIPPED = list_models(trained=True)
EXAMPLES = sorted((ROOT / "examples").glob("[0-9]-*.png"))


@pytest.fixture(scope="module")
def default_server(shipped_repository, tmp_path_factory):
    server = SpawnedServer(shipped_repository, log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield server
    assert server.stop() == 0


@pytest.mark.slow     # the default repository as a fresh clone serves it: the first start's build included
@pytest.mark.parametrize("arch", SHIPPED)
def test_sample_images_classify_to_their_class_through_the_server(default_server, arch):
    assert len(EXAMPLES) == len(CLASSES)
    request = pb.ClassifyRequest(model=arch, images=[encoded_image(p) for p in EXAMPLES],
                                 features=["all"], top_k=1)
    response = default_server.stub.Classify(request, timeout=30)
    predicted = [r.predictions[0].class_index for r in response.results]
    expected = [int(p.name.split("-")[0]) for p in EXAMPLES]
    # models of 88-95 % test accuracy: one miss in ten is allowed (googlenet calls the shirt a dress)
    assert sum(p == e for p, e in zip(predicted, expected)) >= 9, predicted


@pytest.mark.slow
def test_photo_like_image_is_fitted_and_classified(default_server):
    request = pb.ClassifyRequest(model="lenet_bn", images=[encoded_image(ROOT / "examples" / "photo-ankle-boot.jpg")])
    response = default_server.stub.Classify(request, timeout=30)
    assert response.results[0].predictions[0].label == "Ankle boot"


def test_what_the_first_start_builds_and_what_it_leaves_alone(committed_repository, tmp_path):
    assert WEIGHTS_INDEX == WEIGHTS_DIR / INDEX_FILE and list(shipped_weights()) == SHIPPED
    assert list(models_to_build(tmp_path / "model_repository")) == SHIPPED                # a repository not there yet
    repository = tmp_path / "model_repository"
    for arch in ("lenet", "lenet_bn"):
        shutil.copytree(committed_repository / arch, repository / arch)
    archs = ["lenet", "lenet_bn"]
    assert models_to_build(repository, archs) == {}
    metadata_path = repository / "lenet" / "1" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    user_export = {**metadata, "checkpoint": {**metadata["checkpoint"], "path": "checkpoints/lenet/mine.pt",
                                              "sha256": "0" * 64}}
    metadata_path.write_text(json.dumps(user_export))
    assert models_to_build(repository, archs) == {}, "an export of the user's own checkpoint is theirs"
    metadata_path.write_text("{")
    assert models_to_build(repository, archs) == {"lenet": "its metadata.json is unreadable"}
    older = {**metadata, "checkpoint": {**metadata["checkpoint"], "sha256": "0" * 64}}
    metadata_path.write_text(json.dumps(older))
    assert models_to_build(repository, archs)["lenet"].startswith("built from older shipped weights (sha256 000000000000")
    build_missing(repository, archs)                 # what the server runs (as `python -m export.defaults --missing`)
    assert models_to_build(repository, archs) == {}
    assert load_version(repository / "lenet", 1).metadata.checkpoint["sha256"] == get_weights("lenet").sha256
    (repository / "lenet" / "1" / "model.onnx").unlink()
    assert models_to_build(repository, archs) == {"lenet": "not built yet"}


@pytest.fixture
def first_start(committed_repository, tmp_path) -> Path:
    """A directory to start `python -m server` in: its default repository, `model_repository/`, holds
    lenet_bn and not lenet, as a fresh clone holds the committed models and not those shipped as weights only."""
    shutil.copytree(committed_repository / "lenet_bn", tmp_path / "model_repository" / "lenet_bn")
    return tmp_path


def imported_torch(pid: int) -> bool:
    return "/torch/" in Path(f"/proc/{pid}/maps").read_text()


def classify_examples(server: SpawnedServer, arch: str) -> list[int]:
    response = server.stub.Classify(pb.ClassifyRequest(model=arch, images=[encoded_image(p) for p in EXAMPLES]),
                                    timeout=30)
    return [r.predictions[0].class_index for r in response.results]


@pytest.mark.slow     # end to end, several seconds: in the full run (docs/development.md)
def test_the_server_builds_a_missing_default_model_on_first_start_once_without_importing_torch(first_start):
    built = first_start / "model_repository" / "lenet"
    server = SpawnedServer(None, ["--models", "lenet,lenet_bn"], cwd=first_start, log_path=first_start / "first.log",
                           timeout=600)     # the first start includes an export with PyTorch
    try:
        assert not imported_torch(server.process.pid)
        predicted = classify_examples(server, "lenet")
        assert sum(p == int(e.name.split("-")[0]) for p, e in zip(predicted, EXAMPLES)) >= 9, predicted
    finally:
        assert server.stop() == 0
    log = server.log()
    assert "building lenet into model_repository from the shipped weights" in log          # the server's line
    assert "[1/1] lenet: not built yet; building model_repository/lenet/1 from models/weights/lenet.safetensors" in log
    assert "parity ok" in log and "lenet: rebuilt in" in log and "lenet_bn: rebuilt" not in log   # the build's progress
    assert load_version(built, 1).metadata.checkpoint["sha256"] == get_weights("lenet").sha256
    stamp = (built / "1" / "model.onnx").stat()

    again = SpawnedServer(None, ["--models", "lenet,lenet_bn"], cwd=first_start, log_path=first_start / "again.log")
    assert again.stop() == 0
    assert "building" not in again.log() and "2 of 2 models ready" in again.log()
    assert (built / "1" / "model.onnx").stat().st_mtime_ns == stamp.st_mtime_ns, "cached: not built again"


def test_without_torch_the_server_names_the_models_it_cannot_build_and_serves_the_others(first_start, monkeypatch):
    no_torch = first_start / "no-torch"
    no_torch.mkdir()
    (no_torch / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None   # as if not installed\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(no_torch), *filter(None, [os.environ.get("PYTHONPATH")])]))
    server = SpawnedServer(None, cwd=first_start, log_path=first_start / "server.log")
    try:
        assert classify_examples(server, "lenet_bn")[9] == 9
    finally:
        assert server.stop() == 0
    warning = next(line for line in server.log().splitlines() if "WARNING" in line)
    missing = [arch for arch in SHIPPED if arch != "lenet_bn"]
    assert f"not serving {', '.join(missing)}: not built yet, and building them from the shipped weights needs " \
           "PyTorch, which this installation does not have" in warning
    assert "1 of 1 models ready (lenet_bn)" in server.log()
    assert sorted(p.name for p in (first_start / "model_repository").iterdir()) == ["lenet_bn"]


@pytest.mark.slow
def test_rebuild_commands_run_end_to_end(tmp_path, data_dir):
    """The documented rebuild from the shipped weights, and one short epoch of the retrain, so neither can rot."""
    out = tmp_path / "repository"
    for extra in ([], ["--retrain", "--epochs", "1"]):
        result = subprocess.run([sys.executable, "-m", "export.defaults", "--archs", "lenet,lenet_bn", "--out", str(out),
                                 "--checkpoints", str(tmp_path / "checkpoints"), "--data-dir", str(data_dir), *extra],
                                capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        for arch in ("lenet", "lenet_bn"):
            model = load_version(out / arch, 1)
            assert model.metadata.trained and model.metadata.checkpoint["config"]["epochs"] == (1 if extra else 10)
            evaluated = subprocess.run([sys.executable, "-m", "export.evaluate", str(out / arch), "--data-dir", str(data_dir)],
                                       capture_output=True, text=True, cwd=ROOT, timeout=300)
            assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no staging directory left behind"
