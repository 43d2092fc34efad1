"""int8 for the CPU: ONNX Runtime's static quantization of an exported serving graph, and its parity check.

    python -m export.onnx --arch resnet18 --quantize int8      # -> exports/int8/resnet18_int8/<version>/

QDQ format: weights int8, symmetric, one scale per output channel; activations uint8, one scale
and zero point per tensor, calibrated (MinMax) on Fashion-MNIST training images. ONNX Runtime
fuses each DequantizeLinear → Conv/Gemm → QuantizeLinear into one integer kernel, which VNNI
(AVX-512 VNNI on this project's CPU, or AVX-VNNI) makes fast. The graph's input, preprocessing and outputs stay as they
were: uint8 pixels in, float32 logits and feature maps out (each feature map leaves through a
DequantizeLinear), so clients and the server see no difference but the numbers.

Parity: on all 10,000 test images the int8 model's top-1 class must agree with the fp32 export's
on at least 99 % of the images, and its accuracy must stay within 0.3 points of fp32's; otherwise
the export fails. An untrained (random-init) model's top-1 is noise, so for it the agreement is
measured on the first 1,000 test images and recorded, not required.
"""
from __future__ import annotations

import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from cnnserve.fashion_mnist import DataError, load_split
from cnnserve.spec import INPUT_NAME, LOGITS

CALIBRATION_IMAGES = 512
CALIBRATION_BATCH = 64
CALIBRATION_SEED = 0
UNTRAINED_PARITY_IMAGES = 1000
FEATURE_SAMPLE = 64          # test images over which each output's int8 error is recorded
# What is quantized: the operators with integer kernels in ONNX Runtime's CPU provider (Relu and
# Clip fold into the Q/DQ around them; Reshape, Flatten and Concat pass int8 through). Left in
# float: the preprocessing (Cast, Div, Resize, Sub), BatchNormalization (no integer kernel:
# quantizing it only costs precision), Sigmoid (LeNet), ReduceMean (global pooling), and any Concat
# that feeds a BatchNormalization (`float_concats`).
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "Relu", "Clip", "MaxPool", "AveragePool", "Reshape", "Flatten", "Concat")


class QuantizationError(RuntimeError):
    """The int8 model missed a parity threshold, or could not be made; a one-line message."""


@dataclass(frozen=True)
class Thresholds:
    min_agreement: float = 0.99         # top-1 agreement with fp32, fraction of the test images
    max_accuracy_change: float = 0.003  # |int8 accuracy - fp32 accuracy|, 0.003 = 0.3 points


DEFAULT_THRESHOLDS = Thresholds()


class TrainingImages(CalibrationDataReader):
    """Raw uint8 training images [B, 1, 28, 28], the input the served graph takes: the graph does
    its own preprocessing (the function training used), so calibration sees what serving computes."""

    def __init__(self, images: np.ndarray, batch_size: int = CALIBRATION_BATCH):
        self.batches = iter([images[i:i + batch_size, None] for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def calibration_sample(train_images: np.ndarray, count: int, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """`count` training images drawn at random without replacement (reproducible by `seed`)."""
    if not 1 <= count <= len(train_images):
        raise QuantizationError(f"--calibration-images {count} must be in 1..{len(train_images)}")
    return train_images[np.random.default_rng(seed).choice(len(train_images), count, replace=False)]


def float_concats(model: onnx.ModelProto) -> list[str]:
    """The Concat nodes whose output feeds a BatchNormalization (DenseNet's): they stay float.

    Their channels come from different layers with different ranges, and the BatchNorm rescales each
    channel on its own, so one uint8 scale for the whole tensor drowns the narrow channels: quantized,
    DenseNet's top-1 agreed with fp32 on 98.97 % of the test images, a miss; left float, on 99.48 %.
    GoogLeNet's Concats (into convolutions and pooling) quantize well (99.73 %) and spare it a float
    round trip per inception block (int8 at batch 1: 1.7 ms, 2.3 ms with them float).
    """
    consumers = defaultdict(set)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].add(node.op_type)
    return [node.name for node in model.graph.node
            if node.op_type == "Concat" and "BatchNormalization" in consumers[node.output[0]]]


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray) -> dict:
    """Write the int8 (QDQ) version of the fp32 serving graph at `fp32_path`; return its record for the metadata.

    The export stores weights as fp16 plus a Cast (`export.graph.store_exact_fp16`); ONNX Runtime's
    pre-processing constant-folds those casts back into fp32 initializers (and folds each BatchNorm
    that follows a convolution into it), which the quantizer needs: it quantizes initializers only.
    Its symbolic shape inference is skipped: it fails on the exporter's Constant nodes (ONNX's own
    shape inference still runs).
    """
    with tempfile.TemporaryDirectory(prefix="cnnserve-quantize-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        leftover = [i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
        if leftover:
            raise QuantizationError(f"pre-processing left fp16 weights the quantizer cannot read: {', '.join(leftover[:5])}")
        float_nodes = float_concats(model)
        quantize_static(str(prepared), str(int8_path), TrainingImages(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(QUANTIZED_OPS),
                        nodes_to_exclude=float_nodes)
    return {"dtype": "int8", "tool": f"onnxruntime.quantization.quantize_static (onnxruntime {ort.__version__})",
            "format": "QDQ", "weights": "int8, symmetric, per output channel",
            "activations": "uint8, asymmetric, per tensor", "quantized_ops": list(QUANTIZED_OPS),
            "float_nodes": float_nodes,
            "calibration": {"method": "MinMax", "images": len(calibration), "split": "train", "seed": CALIBRATION_SEED,
                            "batch_size": CALIBRATION_BATCH}}


def predictions(session: ort.InferenceSession, images: np.ndarray, label: str, batch_size: int = 250) -> np.ndarray:
    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc=f"parity {label}", leave=False):
        (logits,) = session.run([LOGITS], {INPUT_NAME: images[start:start + batch_size, None]})
        chunks.append(logits.argmax(1))
    return np.concatenate(chunks)


def output_errors(fp32: ort.InferenceSession, int8: ort.InferenceSession, images: np.ndarray) -> dict:
    """Per output (logits and every feature map): max abs difference and RMS error relative to fp32's RMS."""
    names = [o.name for o in fp32.get_outputs()]
    want = fp32.run(names, {INPUT_NAME: images[:, None]})
    got = int8.run(names, {INPUT_NAME: images[:, None]})
    errors = {}
    for name, a, b in zip(names, want, got):
        diff = b.astype(np.float64) - a
        errors[name] = {"max_abs": float(np.abs(diff).max()),
                        "rel_rms": float(np.sqrt((diff ** 2).mean() / max((a.astype(np.float64) ** 2).mean(), 1e-30)))}
    return errors


def check_int8_parity(name: str, fp32: ort.InferenceSession, int8: ort.InferenceSession, images: np.ndarray,
                      labels: np.ndarray, *, trained: bool, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> dict:
    """Top-1 agreement and accuracies of `int8` against `fp32` on the test images; raise when a threshold is missed.

    Untrained: only the first UNTRAINED_PARITY_IMAGES, and nothing is required."""
    if [o.name for o in int8.get_outputs()] != [o.name for o in fp32.get_outputs()]:
        raise QuantizationError(f"{name}: the int8 outputs {[o.name for o in int8.get_outputs()]} differ from fp32's")
    if not trained:
        images, labels = images[:UNTRAINED_PARITY_IMAGES], labels[:UNTRAINED_PARITY_IMAGES]
    want, got = predictions(fp32, images, f"{name} fp32"), predictions(int8, images, f"{name} int8")
    agreement = float((want == got).mean())
    fp32_acc, int8_acc = float((want == labels).mean()), float((got == labels).mean())
    change = int8_acc - fp32_acc
    parity = {"reference": "the fp32 export of the same weights, ONNX Runtime CPU", "test_images": len(images),
              "top1_agreement": agreement, "fp32_accuracy": fp32_acc, "int8_accuracy": int8_acc,
              "accuracy_change_points": round(change * 100, 2), "thresholds": asdict(thresholds), "gated": trained,
              "outputs": output_errors(fp32, int8, images[:FEATURE_SAMPLE])}
    if trained:
        missed = []
        if agreement < thresholds.min_agreement:
            missed.append(f"top-1 agreement with fp32 {agreement:.2%} < {thresholds.min_agreement:.2%}")
        if abs(change) > thresholds.max_accuracy_change:
            missed.append(f"accuracy {int8_acc:.4f} vs fp32 {fp32_acc:.4f} ({change * 100:+.2f} points, "
                          f"allowed ±{thresholds.max_accuracy_change * 100:.2f})")
        if missed:
            raise QuantizationError(f"{name} failed int8 parity on {len(images)} test images: {'; '.join(missed)}; "
                                    f"nothing was written")
    parity["passed"] = True if trained else None
    return parity


def quantize_and_check(name: str, fp32: ort.InferenceSession, fp32_path: Path, int8_path: Path, *, data_dir: str | None,
                       calibration_images: int = CALIBRATION_IMAGES, thresholds: Thresholds = DEFAULT_THRESHOLDS,
                       trained: bool = True) -> tuple[dict, dict]:
    """Quantize the verified fp32 graph (`fp32_path`, open as `fp32`) into `int8_path`, check it; return
    (the quantization record, the parity record) for the metadata, or raise QuantizationError."""
    try:
        train_images, _ = load_split(data_dir, "train")
        test_images, test_labels = load_split(data_dir, "test")
    except DataError as error:
        raise QuantizationError(f"int8 calibration and parity need Fashion-MNIST: {error}") from None
    quantization = quantize_int8(fp32_path, int8_path, calibration_sample(train_images, calibration_images))
    onnx.checker.check_model(str(int8_path), full_check=True)
    int8 = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    parity = check_int8_parity(name, fp32, int8, test_images, test_labels, trained=trained, thresholds=thresholds)
    return quantization, parity
