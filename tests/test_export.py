"""Export every architecture, verify the files, and refuse bad input without leaving debris."""
import json
import subprocess
import sys

import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from cnnserve.spec import CLASSES
from export.onnx import export
from models import create_model, list_models


@pytest.fixture(scope="module")
def random_repository(tmp_path_factory, data_dir):
    """All eight architectures exported untrained, once; export itself runs the checker and parity."""
    repository = tmp_path_factory.mktemp("random_repository")
    for arch in list_models():
        export(arch, repository, random_init=True, data_dir=str(data_dir))
    return repository


@pytest.mark.slow
@pytest.mark.parametrize("arch", list_models())
def test_export_layout_metadata_and_batches(random_repository, fashion, arch):
    model_dir = random_repository / arch
    metadata = json.loads((model_dir / "1" / "metadata.json").read_text())
    model = create_model(arch)
    expected_outputs = {"logits": [-1, 10], **{t.name: [-1, *t.shape] for t in model.feature_info}}
    assert {o["name"]: o["shape"] for o in metadata["outputs"]} == expected_outputs
    assert metadata["trained"] is False and metadata["checkpoint"] is None and metadata["test_acc"] is None
    assert metadata["parity"]["passed"] and set(metadata["parity"]["outputs"]) == set(expected_outputs)
    assert metadata["labels"] == list(CLASSES) == (model_dir / "labels.txt").read_text().split("\n")[:-1]
    assert not list(model_dir.glob("1/*.data")), "the model must be one self-contained file"
    onnx.checker.check_model(str(model_dir / "1" / "model.onnx"), full_check=True)

    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    for batch in (1, 7):
        outputs = session.run(None, {"image": fashion.test_images[:batch, None]})
        assert [o.shape for o in outputs] == [(batch, *shape[1:]) for shape in expected_outputs.values()]

    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == arch and config.platform == "onnxruntime_onnx" and config.max_batch_size > 0
    assert config.HasField("dynamic_batching") and list(config.input[0].dims) == [1, 28, 28]
    assert [o.name for o in config.output] == list(expected_outputs)
    assert config.output[0].label_filename == "labels.txt"


def test_features_subset_and_versions(tmp_path, data_dir):
    first = export("lenet", tmp_path, random_init=True, features="pool2,conv1", data_dir=str(data_dir))
    second = export("lenet", tmp_path, random_init=True, features="none", data_dir=str(data_dir))
    assert (first.name, second.name) == ("1", "2")
    names = lambda d: [o["name"] for o in json.loads((d / "metadata.json").read_text())["outputs"]]
    assert names(first) == ["logits", "conv1", "pool2"] and names(second) == ["logits"]


def test_exports_after_the_first_reuse_the_onnx_function_table_and_write_the_same_file(tmp_path, data_dir):
    from torch.onnx._internal._lazy_import import onnxscript_apis

    from export.graph import build_onnx_function_table_once
    first = export("lenet", tmp_path, random_init=True, features="none", data_dir=str(data_dir))
    assert build_onnx_function_table_once(), "the torch this project pins keeps the table where export/graph.py looks"
    built = onnxscript_apis.get_torchlib_ops.cache_info()
    second = export("lenet", tmp_path, random_init=True, features="none", data_dir=str(data_dir))
    assert onnxscript_apis.get_torchlib_ops.cache_info().hits == built.hits + 1 and built.currsize == 1
    assert (first / "model.onnx").read_bytes() == (second / "model.onnx").read_bytes()


def test_trained_export_evaluates_to_the_checkpoint_accuracy(trained_repository, data_dir):
    result = run_cli("export.evaluate", str(trained_repository / "lenet_bn"), "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    metadata = json.loads((trained_repository / "lenet_bn" / "1" / "metadata.json").read_text())
    assert metadata["trained"] and metadata["checkpoint"]["recipe"] == "modern"
    assert f"test accuracy {metadata['test_acc']:.4f}" in result.stdout or "difference +0.0" in result.stdout


def run_cli(module, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("case", ["unknown_arch", "missing_checkpoint", "other_arch", "unwritable_out"])
def test_bad_input_fails_cleanly(case, tmp_path, lenet_bn_checkpoint, data_dir, capsys, monkeypatch):
    """The command's own main() in this process (a subprocess per case would import torch four times more):
    it ends with a one-line error, and no exception escapes it."""
    from export.onnx import main
    out = tmp_path / "repo"
    args = {
        "unknown_arch": (["--arch", "lenet7", "--random-init"], "unknown architecture 'lenet7'"),
        "missing_checkpoint": (["--arch", "nin", "--checkpoints", str(tmp_path / "none")], "no shipped weights"),
        "other_arch": (["--arch", "lenet", "--checkpoint", str(lenet_bn_checkpoint)], "checkpoint of 'lenet_bn'"),
        "unwritable_out": (["--arch", "lenet", "--random-init"], "cannot write the model repository"),
    }
    cli_args, message = args[case]
    if case == "unwritable_out":
        out = tmp_path / "a-file"
        out.write_text("not a directory")
    if case == "missing_checkpoint":        # every architecture ships weights now: as if nin did not
        from models import pretrained
        shipped = pretrained.read_index()
        monkeypatch.setattr(pretrained, "read_index", lambda *_: {a: w for a, w in shipped.items() if a != "nin"})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([*cli_args, "--out", str(out), "--data-dir", str(data_dir)])
    stderr = capsys.readouterr().err
    assert exit_info.value.code not in (0, None)
    assert message in stderr and len([line for line in stderr.splitlines() if line.startswith("error")]) == 1, stderr
    if out.is_dir():
        assert not [p for p in out.rglob("*") if p.is_dir() and (p.name.isdigit() or p.name.startswith(".staging"))]


def test_failed_check_leaves_no_version_directory(tmp_path, data_dir, monkeypatch):
    """A parity failure after the file was written must remove the staged version."""
    import export.onnx as exporter
    from export.parity import ParityError

    def failing_parity(*args):
        raise ParityError("injected mismatch")
    monkeypatch.setattr(exporter, "check_parity", failing_parity)
    with pytest.raises(ParityError):
        export("lenet", tmp_path, random_init=True, data_dir=str(data_dir))
    assert not (tmp_path / "lenet").exists(), "nothing left behind, not even the model directory"
