"""Shared fixtures: the real Fashion-MNIST files (FASHION_MNIST_DIR, else the shared copy beside the project)."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "datasets" / "fashion-mnist"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """FASHION_MNIST_DIR, else the shared copy beside the project, else the loader's default
    (which downloads the official files when they are missing)."""
    from models.data import resolve_data_dir
    if os.environ.get("FASHION_MNIST_DIR") or not SHARED_DATA.is_dir():
        return resolve_data_dir().resolve()
    return SHARED_DATA.resolve()


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
    from server.spawn import SpawnedServer
    process = SpawnedServer(serving_repository, ["--max-message-mb", "4"],
                            log_path=tmp_path_factory.mktemp("logs") / "server.log", with_metrics=True)
    yield process
    assert process.stop() == 0, process.log()
