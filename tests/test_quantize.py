"""int8 export (ONNX Runtime static quantization, QDQ): lenet_bn from its shipped weights, its parity
record and thresholds, a real server serving `lenet_bn_int8` with its feature maps, and a missed
threshold failing the export with a one-line error and nothing written."""
import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from client.cli import encoded_image, feature_array, raw_image
from client.spawn import ROOT, SpawnedServer
from cnnserve.proto import classifier_pb2 as pb
from export.onnx import export, main
from export.quantize import CALIBRATION_IMAGES, QUANTIZED_OPS, float_concats


@pytest.fixture(scope="module")
def int8_repository(tmp_path_factory, data_dir):
    repository = tmp_path_factory.mktemp("int8_repository")
    export("lenet_bn", repository, shipped=True, quantize="int8", data_dir=str(data_dir))
    return repository


@pytest.fixture(scope="module")
def metadata(int8_repository):
    return json.loads((int8_repository / "lenet_bn_int8" / "1" / "metadata.json").read_text())


@pytest.fixture(scope="module")
def server(int8_repository, tmp_path_factory):
    process = SpawnedServer(int8_repository, log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield process
    assert process.stop() == 0, process.log()


def test_parity_is_recorded_and_meets_the_thresholds(metadata):
    parity, quantization = metadata["parity"], metadata["quantization"]
    assert parity["test_images"] == 10_000 and parity["gated"] and parity["passed"]
    assert parity["top1_agreement"] >= 0.99
    assert abs(parity["int8_accuracy"] - parity["fp32_accuracy"]) <= 0.003
    assert parity["fp32_accuracy"] == pytest.approx(metadata["checkpoint"]["metrics"]["test_acc"], abs=1e-4)
    assert metadata["test_acc"] == parity["int8_accuracy"] and metadata["trained"]
    assert parity["thresholds"] == {"min_agreement": 0.99, "max_accuracy_change": 0.003}
    assert parity["fp32_vs_pytorch"]["passed"]                    # the fp32 graph it came from was verified first
    assert set(parity["outputs"]) == {o["name"] for o in metadata["outputs"]}
    assert quantization["format"] == "QDQ" and quantization["calibration"]["images"] == CALIBRATION_IMAGES
    assert quantization["calibration"]["split"] == "train"


def test_the_file_is_quantized_per_channel_and_keeps_the_served_interface(int8_repository, metadata):
    path = int8_repository / "lenet_bn_int8" / "1" / "model.onnx"
    model = onnx.load(str(path))
    ops = Counter(node.op_type for node in model.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert int8_weights, "the convolution and Gemm weights are stored as int8"
    scales = {node.input[1] for node in model.graph.node if node.op_type == "DequantizeLinear"
              and node.input[0] in {w.name for w in int8_weights}}
    assert any(len(i.dims) == 1 and i.dims[0] > 1 for i in model.graph.initializer if i.name in scales), "per channel"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("image", "tensor(uint8)")]
    assert [(o.name, o.type) for o in session.get_outputs()] == [(o["name"], "tensor(float)") for o in metadata["outputs"]]
    config = (int8_repository / "lenet_bn_int8" / "config.pbtxt").read_text()
    assert 'name: "lenet_bn_int8"' in config
    assert "Conv" in QUANTIZED_OPS and "BatchNormalization" not in QUANTIZED_OPS


def test_only_a_concat_that_feeds_a_batchnorm_stays_float():
    """DenseNet's Concat -> BatchNorm stays float (one scale over channels of many layers); GoogLeNet's
    Concat -> Conv is quantized."""
    h = onnx.helper
    nodes = [h.make_node("Concat", ["a", "b"], ["ab"], name="to_bn", axis=1),
             h.make_node("BatchNormalization", ["ab", "s", "o", "m", "v"], ["n"], name="bn"),
             h.make_node("Concat", ["a", "n"], ["an"], name="to_conv", axis=1),
             h.make_node("Conv", ["an", "w"], ["y"], name="conv")]
    graph = h.make_graph(nodes, "g", [], [])
    assert float_concats(h.make_model(graph)) == ["to_bn"]


def test_the_server_serves_it_with_its_feature_maps(server, metadata, fashion):
    info = server.stub.GetModel(pb.GetModelRequest(name="lenet_bn_int8"), timeout=10)
    assert info.ready and info.trained and info.test_acc == pytest.approx(metadata["test_acc"])
    boot = server.stub.Classify(pb.ClassifyRequest(
        model="lenet_bn_int8", images=[encoded_image(ROOT / "examples" / "9-ankle-boot.png")], top_k=3,
        features=["all"]), timeout=30)
    result = boot.results[0]
    assert result.predictions[0].label == "Ankle boot"
    declared = [(o["name"], o["shape"][1:]) for o in metadata["outputs"][1:]]
    assert [(f.name, list(f.shape)) for f in result.features] == declared
    assert all(f.dtype == "float32" and np.isfinite(feature_array(f)).all() for f in result.features)
    images, labels = fashion.test_images[:64], fashion.test_labels[:64]
    response = server.stub.Classify(pb.ClassifyRequest(model="lenet_bn_int8", images=[raw_image(x) for x in images]),
                                    timeout=30)
    assert np.mean([r.predictions[0].class_index for r in response.results] == labels) >= 0.8


def test_a_missed_threshold_fails_the_export_with_one_line_and_writes_nothing(tmp_path, data_dir, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--arch", "lenet_bn", "--weights", "fashion-mnist", "--quantize", "int8", "--out", str(tmp_path),
              "--data-dir", str(data_dir), "--min-agreement", "1.01"])
    assert exit_.value.code == 1
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]   # not tqdm's bars
    assert len(error) == 1, error
    assert error[0].startswith("error: lenet_bn_int8 failed int8 parity on 10000 test images: top-1 agreement with fp32 ")
    assert "< 101.00%" in error[0] and error[0].endswith("nothing was written")
    assert not (tmp_path / "lenet_bn_int8").exists()
