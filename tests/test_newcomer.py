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
def server(trained_repository, tmp_path_factory):
    process = SpawnedServer(trained_repository, log_path=tmp_path_factory.mktemp("logs") / "server.log")
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
def test_a_busy_port_is_a_one_line_error(trained_repository, flag):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        other = ["--port", str(free_port())] if flag == "--metrics-port" else []
        result = run("server", "--model-repository", str(trained_repository), flag, str(port), *other)
    one_line_error(result, "cannot listen", str(port))


def test_unknown_model_names_and_empty_repositories(trained_repository, tmp_path):
    one_line_error(run("server", "--model-repository", str(trained_repository), "--models", "resnet50"),
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


@pytest.mark.slow     # end to end, several seconds: in the full run (docs/development.md)
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
    quarters = [columns[f"p50_q{i}_ms"] for i in range(1, 5)]     # empty when the run answered fewer than 4
    assert columns["failed"] == "0" and "{" not in row and all(q == "" or float(q) > 0 for q in quarters)


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


@pytest.mark.parametrize("command,usage", [
    ([BIN / "cnnserve", "client"], "cnnserve client"),
    ([BIN / "cnnserve", "loadtest"], "cnnserve loadtest"),
    ([sys.executable, "-m", "server.client"], "python -m server.client"),
    ([sys.executable, "-m", "server.loadtest"], "python -m server.loadtest"),
    ([sys.executable, "-m", "client.cli"], "python -m client.cli"),
    ([sys.executable, "-m", "client.loadtest"], "python -m client.loadtest"),
    ([BIN / "cnnserve", "train"], "cnnserve train"),
    ([BIN / "cnnserve", "client", "classify"], "cnnserve client classify"),
])
def test_usage_names_the_command_as_it_was_typed(command, usage):
    result = subprocess.run([*command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {usage} ["), result.stdout[:200]


def every_parser(parser):
    """The parser and its subcommands' parsers."""
    import argparse
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                yield from every_parser(subparser)


@pytest.mark.parametrize("module", ["client.cli", "client.loadtest"])
def test_every_option_has_help_that_shows_its_default(module):
    import argparse
    import importlib
    for parser in every_parser(importlib.import_module(module).build_parser()):
        text = " ".join(parser.format_help().split())      # one line: argparse wraps at the terminal's width
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{parser.prog} {action.dest}: no help text"
            if action.default not in (None, False, "") and not action.required:
                assert f"(default: {action.default})" in text, f"{parser.prog} {action.dest}: default not shown"


def test_a_reader_that_stops_early_ends_the_client_quietly(server):
    """`cnnserve client classify --json ... | head -c 600`: the client's output (over 64 KiB, more than a pipe
    holds) meets a closed pipe; it exits with 141, as SIGPIPE ends other tools, and prints no traceback."""
    image = str(ROOT / "examples" / "9-ankle-boot.png")
    client = subprocess.Popen([sys.executable, "-m", "client.cli", "--target", server.target, "classify", "--model",
                               "lenet_bn", "--json", "--top-k", "10", *[image] * 64],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-c", "600"], stdin=client.stdout, stdout=subprocess.PIPE)
    client.stdout.close()        # head holds the only reading end now
    shown, _ = head.communicate(timeout=120)
    stderr = client.communicate(timeout=120)[1].decode()
    assert len(shown) == 600 and shown.startswith(b"{")
    assert client.returncode == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_a_file_that_is_not_an_image_is_named_by_its_file(server, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n" * 100)
    image = str(ROOT / "examples" / "9-ankle-boot.png")
    line = one_line_error(run("client.cli", "--target", server.target, "classify", "--model", "lenet_bn", image,
                              str(notes)), "INVALID_ARGUMENT", f"{notes}: not a PNG or JPEG image (1,300 bytes)")
    assert "images[" not in line


def python_without_dependencies() -> list[str]:
    """An interpreter that has none of cnnserve's dependencies, as a user meets one with the venv not activated:
    the system python when it lacks grpc, else this one without site-packages (-S). Not -I: it implies -P, which
    drops the working directory from sys.path, and then not even the project imports."""
    system = Path("/usr/bin/python3")
    if system.is_file() and subprocess.run([system, "-E", "-s", "-c", "import grpc"], capture_output=True).returncode:
        return [str(system), "-E", "-s"]
    return [sys.executable, "-E", "-S"]


@pytest.mark.parametrize("module,extra", [
    ("client.cli", "client"), ("server.client", "client"), ("client.loadtest", "client"),
    ("server.loadtest", "client"), ("models.train", "train"), ("models.pretrained", "train"),
    ("cnnserve.cli client", "client"), ("cnnserve.cli serve", "serve"), ("cnnserve.cli train", "train"),
])
def test_a_missing_dependency_is_one_line_naming_the_interpreter_and_the_fix(module, extra):
    python = python_without_dependencies()
    result = subprocess.run([*python, "-m", *module.split(), "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and result.stdout == "", result.stdout
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: ") and "cannot import '" in line and f"pip install 'cnnserve[{extra}]'" in line, line
    assert python[0] in line or Path(python[0]).resolve().as_posix() in line, line


def test_a_missing_module_of_the_project_itself_keeps_its_traceback():
    """Not an install problem but a bug (or a broken checkout): the traceback is what finds it."""
    code = "from cnnserve.entry import exit_if_missing\nwith exit_if_missing('client'):\n    import client.nosuch"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" in result.stderr and "client.nosuch" in result.stderr
