"""Shared fixtures: the real Fashion-MNIST files, found as the command-line tools find them."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Where every command-line tool looks too: FASHION_MNIST_DIR, else data/fashion-mnist or the
    shared copy beside the project, whichever holds the files (else the loader downloads them)."""
    from models.data import resolve_data_dir
    return resolve_data_dir().resolve()


@pytest.fixture(scope="session")
def fashion(data_dir):
    from models.data import load_fashion_mnist
    return load_fashion_mnist(data_dir)


@pytest.fixture(scope="session")
def lenet_bn_checkpoint(tmp_path_factory, fashion) -> Path:
    """A lenet_bn trained for one epoch of the modern recipe on the CPU, made once per session."""
    from models.recipes import make_config
    from models.train import run
    config = make_config("lenet_bn", "modern", epochs=1, device="cpu")
    return run(config, fashion, tmp_path_factory.mktemp("checkpoints"), progress=False)


@pytest.fixture(scope="session")
def trained_repository(tmp_path_factory, lenet_bn_checkpoint, data_dir) -> Path:
    """A model repository holding the trained lenet_bn above, with all its feature maps."""
    from export.onnx import export
    repository = tmp_path_factory.mktemp("trained_repository")
    export("lenet_bn", repository, checkpoint=str(lenet_bn_checkpoint), data_dir=str(data_dir))
    return repository


@pytest.fixture(scope="session")
def serving_repository(tmp_path_factory, trained_repository, data_dir) -> Path:
    """The trained lenet_bn, an untrained resnet18, and `broken`: a lenet_bn whose model file was altered."""
    import shutil

    from export.onnx import export
    repository = tmp_path_factory.mktemp("serving_repository")
    shutil.copytree(trained_repository / "lenet_bn", repository / "lenet_bn")
    export("resnet18", repository, random_init=True, data_dir=str(data_dir))
    shutil.copytree(trained_repository / "lenet_bn", repository / "broken")
    with open(repository / "broken" / "1" / "model.onnx", "ab") as f:
        f.write(b"tampered")
    return repository


@pytest.fixture(scope="module")
def server(serving_repository, tmp_path_factory):
    """One real server for a test module, with a 4 MiB message limit so size errors are cheap to provoke."""
    from client.spawn import SpawnedServer
    process = SpawnedServer(serving_repository, ["--max-message-mb", "4"],
                            log_path=tmp_path_factory.mktemp("logs") / "server.log", with_metrics=True)
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="session")
def shipped_repository(tmp_path_factory) -> Path:
    """A copy of the default repository as `python -m server` serves it on a fresh clone: each model's
    version 1 as git holds it, and the models that ship as weights only built from them as the first
    start builds them (copied when this checkout has built them already), so no test depends on what
    an earlier command wrote into `model_repository/`."""
    import shutil

    from cnnserve.default_repository import LOCK_FILE
    from export.defaults import build_missing
    from models import list_models
    copy = tmp_path_factory.mktemp("shipped_repository")
    for model_dir in sorted((ROOT / "model_repository").iterdir()):
        if model_dir.is_dir() and (model_dir / "1").is_dir():
            shutil.copytree(model_dir / "1", copy / model_dir.name / "1")
            for name in ("config.pbtxt", "labels.txt"):
                shutil.copy(model_dir / name, copy / model_dir.name / name)
    build_missing(copy, list_models(trained=True))
    (copy / LOCK_FILE).unlink()
    return copy
