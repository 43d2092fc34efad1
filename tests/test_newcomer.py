"""A newcomer's first hour: every command works as typed, or says why in one line without a traceback."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.spawn import ROOT, SpawnedServer, free_port

BIN = Path(sys.executable).parent


def run(*args, cwd=ROOT, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def one_line_error(result, *fragments):
    """Failed, said so in one line naming the problem, and printed no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(error_lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]
    return error_lines[0]


@pytest.fixture(scope="module")
def lenet_repository(shipped_repository, tmp_path_factory):
    import shutil
    repository = tmp_path_factory.mktemp("lenet_repository")
    shutil.copytree(shipped_repository / "lenet_bn", repository / "lenet_bn")
    return repository


@pytest.fixture(scope="module")
def server(lenet_repository, tmp_path_factory):
    process = SpawnedServer(lenet_repository, log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield process
    assert process.stop() == 0


def test_console_script_lists_and_runs_every_tool():
    assert (BIN / "cnnserve").exists(), "pip install -e . makes the cnnserve command"
    listing = subprocess.run([BIN / "cnnserve", "--help"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0
    for command in ("serve", "client", "loadtest", "train", "export", "evaluate", "defaults", "weights"):
        assert command in listing.stdout
    weights = subprocess.run([BIN / "cnnserve", "weights", "list"], capture_output=True, text=True, timeout=60)
    assert weights.returncode == 0 and "resnet18" in weights.stdout


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_a_busy_port_is_a_one_line_error(lenet_repository, flag):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        other = ["--port", str(free_port())] if flag == "--metrics-port" else []
        result = run("server", "--model-repository", str(lenet_repository), flag, str(port), *other)
    one_line_error(result, "cannot listen", str(port))


def test_unknown_model_names_and_empty_repositories(lenet_repository, tmp_path):
    one_line_error(run("server", "--model-repository", str(lenet_repository), "--models", "resnet50"),
                   "resnet50", "lenet_bn")
    empty = SpawnedServer(tmp_path, wait=False, log_path=tmp_path / "empty.log")
    deadline = time.monotonic() + 60
    while "holds no model directories" not in empty.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert empty.stop() == 0 and "WARNING" in empty.log() and "holds no model directories" in empty.log()


def test_client_errors_are_one_line(server, tmp_path):
    client = ("server.client", "--target", server.target)
    one_line_error(run(*client, "classify", "--model", "lenet_bn", "nosuch.png"), "nosuch.png", "no such file")
    one_line_error(run(*client, "classify", "--model", "lenet_bn", str(tmp_path)), "not a file")
    one_line_error(run(*client, "health", "--service", "nosuch"), "nosuch")
    one_line_error(run("server.client", "--target", f"127.0.0.1:{free_port()}", "models"),
                   "UNAVAILABLE", "is a server running")


def test_client_version_json_and_raw_feature_maps(server, tmp_path):
    import json

    import numpy as np
    image = str(ROOT / "examples" / "9-ankle-boot.png")
    result = run("server.client", "--target", server.target, "classify", "--model", "lenet_bn", "--version", "1",
                 "--json", "--features", "conv1,fc1", "--save-raw", str(tmp_path), image)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["version"] == 1 and answer["trained"] and answer["results"][0]["predictions"][0]["label"] == "Ankle boot"
    assert np.load(tmp_path / "9-ankle-boot_conv1.npy").shape == (6, 24, 24)
    assert np.load(tmp_path / "9-ankle-boot_fc1.npy").shape == (120,)
    wrong = run("server.client", "--target", server.target, "classify", "--model", "lenet_bn", "--version", "7", image)
    one_line_error(wrong, "NOT_FOUND")


def test_loadtest_checks_its_target_first_and_writes_plain_csv(server, tmp_path):
    started = time.monotonic()
    unknown = run("server.loadtest", "--target", server.target, "--model", "resnet50", "--duration", "30")
    one_line_error(unknown, "NOT_FOUND", "resnet50")
    absent = run("server.loadtest", "--target", f"127.0.0.1:{free_port()}", "--model", "lenet_bn", "--duration", "30")
    one_line_error(absent, "no cnnserve server answers")
    one_line_error(run("server.loadtest", "--spawn-server", str(tmp_path / "nope"), "--model", "lenet_bn"),
                   "no such model repository")
    assert time.monotonic() - started < 30, "errors come before the run, not after its duration"

    csv_path = tmp_path / "run.csv"
    ok = run("server.loadtest", "--target", server.target, "--model", "lenet_bn", "--concurrency", "2",
             "--duration", "1", "--warmup", "0.5", "--processes", "1", "--csv", str(csv_path))
    assert ok.returncode == 0, ok.stderr
    assert "p50 per quarter" in ok.stdout
    header, row = csv_path.read_text().splitlines()[:2]
    columns = dict(zip(header.split(","), row.split(",")))
    assert columns["failed"] == "0" and float(columns["p50_q4_ms"]) > 0 and "{" not in row


def test_evaluate_names_a_missing_model_directory(tmp_path):
    one_line_error(run("export.evaluate", str(tmp_path / "resnet50")), "does not exist")


@pytest.mark.slow
def test_export_without_the_dataset_uses_the_examples_and_a_failure_leaves_nothing(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    env = {"FASHION_MNIST_DIR": ""}
    ok = run("export.onnx", "--arch", "lenet", "--random-init", cwd=project, env=env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (project / "exports" / "untrained" / "lenet" / "1" / "model.onnx").is_file()
    assert not (project / "data").exists(), "no dataset directory created"
    failed = run("export.onnx", "--arch", "resnet18", "--random-init", "--data-dir", str(tmp_path / "none"),
                 cwd=project, env=env)
    one_line_error(failed, "parity needs")
    assert not (project / "exports" / "untrained" / "resnet18").exists()
    assert not (tmp_path / "none").exists()


def test_client_and_loadtest_import_no_runtime():
    code = ("import sys, server.client, server.loadtest; "
            "heavy = [m for m in ('onnxruntime', 'PIL', 'torch', 'server.model_store', 'server.app') if m in sys.modules]; "
            "sys.exit(f'imported {heavy}' if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
