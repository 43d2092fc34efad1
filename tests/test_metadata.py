"""The model-metadata record (cnnserve/metadata.py): the one parser of metadata.json, the exporter's writer."""
import copy
import json

import pytest

from client.spawn import ROOT
from cnnserve.metadata import MetadataError, ModelMetadata

SHIPPED = sorted((ROOT / "model_repository").glob("*/1/metadata.json"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.parent.parent.name)
def test_every_shipped_record_parses_and_round_trips(path):
    record = json.loads(path.read_text())
    metadata = ModelMetadata.from_json(record, str(path))
    assert metadata.trained and metadata.outputs[0].name == "logits" and metadata.input_side == 28
    assert metadata.checkpoint["sha256"] and metadata.recipe in ("modern", "modern-cpu")
    assert metadata.to_json() == {k: v for k, v in record.items() if v is not None or k in ("test_acc", "checkpoint")}
    assert ModelMetadata.from_json(metadata.to_json()) == metadata


@pytest.fixture
def record():
    return json.loads(SHIPPED[0].read_text())


@pytest.mark.parametrize("change, fragment", [
    (lambda r: r.pop("sha256"), "sha256 is missing"),
    (lambda r: r.update(trained="yes"), "trained must be a JSON boolean"),
    (lambda r: r.update(labels=[]), "labels must be strings"),
    (lambda r: r["input"].update(dtype="float32"), "input.dtype must be 'uint8'"),
    (lambda r: r["input"].update(shape=[-1, 3, 28, 28]), "input.shape must be [-1, 1, side, side]"),
    (lambda r: r["outputs"][0].update(name="probabilities"), "outputs[0] must be 'logits'"),
    (lambda r: r["outputs"][1].update(shape=[-1, 0]), "outputs[1].shape must be [-1, positive integers...]"),
    (lambda r: r["outputs"].append(dict(r["outputs"][1])), "outputs must have distinct names"),
    (lambda r: r.update(model_file="../other/model.onnx"), "model_file must be a file name"),
    (lambda r: r.update(sha256="xyz"), "sha256 must be 64 hexadecimal digits"),
    (lambda r: r.update(test_acc=1.5), "test_acc must be null or a number in [0, 1]"),
    (lambda r: r.update(version="1"), "version must be null or a JSON integer"),
    (lambda r: r.update(preprocessing={"size": 28}), "preprocessing must have side, mean and std"),
])
def test_each_wrong_field_is_named(record, change, fragment):
    broken = copy.deepcopy(record)
    change(broken)
    with pytest.raises(MetadataError, match=r"^lenet/1/metadata.json: ") as error:
        ModelMetadata.from_json(broken, "lenet/1/metadata.json")
    assert fragment in str(error.value)


def test_not_an_object():
    with pytest.raises(MetadataError, match="must hold a JSON object"):
        ModelMetadata.from_json([1, 2, 3])
