"""The installs fit their jobs: `cnnserve[serve]`, `cnnserve[client]` and `cnnserve[train]`, each into its own
fresh virtual environment from this checkout. The server install holds no torch and serves; the client
install holds no ONNX Runtime and classifies against a real server; the training install starts its
commands. Slow: each is a pip install (from pip's cache once it is warm)."""
import os
import shutil
import subprocess
import venv

import pytest

from client.spawn import ROOT, SpawnedServer

pytestmark = pytest.mark.slow
TORCH = "torch==2.13.0"        # the CPU wheel on this machine's disk (an unpinned torch is a CUDA build)


def install(tmp_path, extra: str, pre: tuple[str, ...] = ()) -> str:
    """A fresh venv with `cnnserve[extra]` installed from a copy of this checkout; its python."""
    env_dir = tmp_path / f"venv-{extra}"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    source = tmp_path / "source"
    if not source.exists():   # a copy, so the build leaves nothing (build/, *.egg-info) in the checkout
        shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
            ".venv", ".git", "data", "checkpoints", "exports", "build", "*.egg-info", "__pycache__", ".pytest_cache",
            "test-artifacts", ".hypothesis", "bench"))
    for requirement in (*pre, f"{source}[{extra}]"):
        result = subprocess.run([python, "-m", "pip", "install", "-q", requirement], capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
    return python


def finds(python: str, module: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    return subprocess.run([python, "-c", code], cwd="/", timeout=60).returncode == 0


def starts(python: str, *module_and_args: str) -> None:
    result = subprocess.run([python, "-m", *module_and_args, "--help"], capture_output=True, text=True, cwd="/",
                            timeout=120)
    assert result.returncode == 0 and "usage" in result.stdout, result.stdout + result.stderr


def test_the_serving_install_has_no_torch_and_serves(tmp_path, shipped_repository):
    python = install(tmp_path, "serve")
    assert not finds(python, "torch") and not finds(python, "matplotlib") and finds(python, "onnxruntime")
    starts(python, "server")
    cli = subprocess.run([os.path.join(os.path.dirname(python), "cnnserve"), "--help"], capture_output=True, text=True,
                         timeout=60, cwd="/")
    assert cli.returncode == 0 and "serve" in cli.stdout, cli.stdout + cli.stderr
    server = SpawnedServer(shipped_repository, ["--models", "lenet_bn,resnet18"], log_path=tmp_path / "s.log",
                           command=[python, "-m", "server"])
    try:
        assert server.health_status("resnet18") == 1
    finally:
        assert server.stop() == 0, server.log()


def test_the_client_install_has_no_onnx_runtime_and_classifies(tmp_path, shipped_repository):
    python = install(tmp_path, "client")
    assert not finds(python, "onnxruntime") and not finds(python, "torch")
    starts(python, "server.client")
    starts(python, "server.loadtest")
    server = SpawnedServer(shipped_repository, ["--models", "lenet_bn"], log_path=tmp_path / "s.log")
    try:
        result = subprocess.run([python, "-m", "server.client", "--target", server.target, "classify", "--model",
                                 "lenet_bn", str(ROOT / "examples" / "9-ankle-boot.png")],
                                capture_output=True, text=True, timeout=120, cwd="/")
        assert result.returncode == 0 and "Ankle boot" in result.stdout, result.stdout + result.stderr
    finally:
        assert server.stop() == 0, server.log()


def test_the_training_install_starts_its_commands(tmp_path):
    python = install(tmp_path, "train", pre=(TORCH,))
    for module in ("models.train", "export.onnx", "models.pretrained"):
        starts(python, module)
    assert finds(python, "onnxruntime") and not finds(python, "httpx")
