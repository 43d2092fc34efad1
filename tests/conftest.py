"""Shared fixtures: the real Fashion-MNIST files, found as the command-line tools find them; the shipped
trained lenet_bn (no test trains a model unless training is what it tests); and one real server per module.

With CNNSERVE_NO_SKIPS=1 (CI sets it) a skipped test fails the run: CI installs everything every test needs,
so a skip there means a check silently did not run."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_skipped: list[str] = []

# A run starts some eighty Python processes (test workers, servers, command-line tools), each importing the same
# modules: they are compiled once and cached, even where the environment turns Python's bytecode cache off
# (PYTHONDONTWRITEBYTECODE, as some containers set it), which would have every process compile them again.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


# The longest test files of the fast subset, started first: pytest-xdist hands out whole files in collection
# order, and a long file handed out last keeps one worker busy while the other has nothing left to run.
LONGEST_FIRST = ("test_zoo.py", "test_newcomer.py", "test_model_control.py", "test_export.py", "test_streaming.py")


def pytest_configure(config):
    # The test processes share the cores (pyproject's `-n 2`): each one's PyTorch gets its share of threads, so
    # that two models evaluated at once do not each spin-wait for cores the other holds.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        import torch
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))      # stable: the order within a file stays


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CNNSERVE_NO_SKIPS") == "1" and _skipped and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("CNNSERVE_NO_SKIPS") == "1" and _skipped:
        terminalreporter.write_line(f"CNNSERVE_NO_SKIPS: {len(_skipped)} test(s) skipped, which CI does not allow: "
                                    + ", ".join(_skipped[:20]), red=True)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Where every command-line tool looks too: FASHION_MNIST_DIR, else data/fashion-mnist or the
    shared copy beside the project, whichever holds the files (else the loader downloads them)."""
    from cnnserve.fashion_mnist import resolve_data_dir
    return resolve_data_dir().resolve()


@pytest.fixture(scope="session")
def fashion(data_dir):
    from cnnserve.fashion_mnist import load_fashion_mnist
    return load_fashion_mnist(data_dir)


@pytest.fixture(scope="session")
def lenet_bn_checkpoint(tmp_path_factory) -> Path:
    """The shipped lenet_bn weights written as a training checkpoint, as `python -m models.train` writes
    one: the export tests start from a checkpoint without training one (tests/test_train.py trains)."""
    from models import create_model
    from models.checkpoint import save_checkpoint
    from models.pretrained import get_weights
    from models.recipes import TrainConfig
    weights = get_weights("lenet_bn")
    path = tmp_path_factory.mktemp("checkpoints") / "lenet_bn" / "shipped.pt"
    save_checkpoint(path, create_model("lenet_bn", weights="fashion-mnist"), TrainConfig(**weights.config),
                    {"test_acc": weights.test_acc, "device": weights.device})
    return path


@pytest.fixture(scope="session")
def trained_repository(tmp_path_factory) -> Path:
    """A model repository holding the shipped, trained lenet_bn (version 1 as git holds it, with all
    its feature maps), copied so no test depends on what an earlier command wrote beside it."""
    return copy_shipped_model("lenet_bn", tmp_path_factory.mktemp("trained_repository"))


def copy_shipped_model(name: str, repository: Path) -> Path:
    """Version 1 of a model the default repository ships as an ONNX file, with its config and labels."""
    import shutil
    shipped = ROOT / "model_repository" / name
    shutil.copytree(shipped / "1", repository / name / "1")
    for file in ("config.pbtxt", "labels.txt"):
        shutil.copy(shipped / file, repository / name / file)
    return repository


@pytest.fixture(scope="session")
def serving_repository(tmp_path_factory) -> Path:
    """The trained lenet_bn, the shipped googlenet (a model large enough to keep the server busy), and `broken`: a
    lenet_bn whose model file was altered. All copied from the shipped repository: no export, no torch."""
    import shutil

    def build(repository: Path) -> None:
        copy_shipped_model("lenet_bn", repository)
        copy_shipped_model("googlenet", repository)
        shutil.copytree(repository / "lenet_bn", repository / "broken")
        with open(repository / "broken" / "1" / "model.onnx", "ab") as f:
            f.write(b"tampered")
    return built_once_per_run(tmp_path_factory, "serving_repository", build)


@pytest.fixture(scope="module")
def server(serving_repository, tmp_path_factory):
    """One real server for a test module, with a 4 MiB message limit so size errors are cheap to provoke."""
    from client.spawn import SpawnedServer
    process = SpawnedServer(serving_repository, ["--max-message-mb", "4"],
                            log_path=tmp_path_factory.mktemp("logs") / "server.log", with_metrics=True)
    yield process
    assert process.stop() == 0, process.log()


def copy_committed_models(destination: Path) -> Path:
    """Each model of `model_repository/` that git ships as an ONNX file, version 1 as git holds it."""
    import subprocess
    tracked = subprocess.run(["git", "ls-files", "model_repository"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    for name in sorted({path.split("/")[1] for path in tracked if path.endswith("/1/model.onnx")}):
        copy_shipped_model(name, destination)
    return destination


@pytest.fixture(scope="session")
def committed_repository(tmp_path_factory) -> Path:
    """The models the default repository ships as ONNX files (lenet, lenet_bn, googlenet, densenet), as git
    holds them: what the fast tests serve, with nothing built."""
    return copy_committed_models(tmp_path_factory.mktemp("committed_repository"))


@pytest.fixture(scope="session")
def shipped_repository(tmp_path_factory) -> Path:
    """A copy of the default repository as `python -m server` serves it on a fresh clone: the committed
    models, and the models that ship as weights only built from them as the first start builds them
    (copied when this checkout has built them already), so no test depends on what an earlier command
    wrote into `model_repository/`. Building takes minutes on a fresh clone: slow tests only."""
    import shutil

    from cnnserve.default_repository import LOCK_FILE
    from export.defaults import build_missing
    from models import list_models

    def build(copy: Path) -> None:
        copy_committed_models(copy)
        for model_dir in sorted((ROOT / "model_repository").iterdir()):     # built here already: rebuilt if stale
            if (model_dir / "1").is_dir() and not (copy / model_dir.name).exists():
                shutil.copytree(model_dir / "1", copy / model_dir.name / "1")
                for name in ("config.pbtxt", "labels.txt"):
                    shutil.copy(model_dir / name, copy / model_dir.name / name)
        build_missing(copy, list_models(trained=True))
        (copy / LOCK_FILE).unlink()
    return built_once_per_run(tmp_path_factory, "shipped_repository", build)


def built_once_per_run(tmp_path_factory, name: str, build) -> Path:
    """`build(directory)` once per test run, however many pytest-xdist workers ask: they share the folder
    above their own temporary ones, and the run's id keeps an earlier run's directory out. Tests only read it."""
    import shutil

    from filelock import FileLock
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    shared = tmp_path_factory.getbasetemp().parent / f"run-{run_id}" if run_id else tmp_path_factory.getbasetemp()
    shared.mkdir(exist_ok=True)
    directory, done = shared / name, shared / f"{name}.done"
    with FileLock(shared / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            build(directory)
            done.touch()
    return directory
