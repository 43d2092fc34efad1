"""Accuracy of an exported model on all 10,000 Fashion-MNIST test images, with ONNX Runtime.

    python -m export.evaluate model_repository/lenet_bn [--version N]

It compares with the test accuracy recorded for the weights and exits non-zero when they differ
by more than 0.1 point, or when the export is untrained.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cnnserve.entry import DefaultsHelpFormatter, exit_if_missing, program_name

with exit_if_missing("serve"):      # ONNX Runtime and the dataset reader: no torch
    import numpy as np
    import onnxruntime as ort
    from tqdm import tqdm

    from cnnserve.fashion_mnist import DataError, load_split
    from cnnserve.repository import RepositoryError, load_version
    from cnnserve.spec import INPUT_NAME, LOGITS

TOLERANCE = 0.001   # 0.1 percentage point


def accuracy(model_path: Path, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    correct = 0
    for start in tqdm(range(0, len(images), batch_size), desc=f"evaluate {model_path.parent.parent.name}", leave=False):
        batch = images[start:start + batch_size, None]
        (logits,) = session.run([LOGITS], {INPUT_NAME: batch})
        correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    return correct / len(images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=program_name(), description=__doc__.splitlines()[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="<repository>/<arch>")
    parser.add_argument("--version", type=int, help="default: the newest")
    parser.add_argument("--data-dir", help="Fashion-MNIST directory")
    args = parser.parse_args(argv)
    try:
        model = load_version(args.model_dir, args.version)
        images, labels = load_split(args.data_dir, "test")
    except (RepositoryError, DataError) as error:
        parser.exit(1, f"error: {error}\n")
    measured = accuracy(model.model_path, images, labels)
    recorded = model.metadata.test_acc
    print(f"{model.name} v{model.version}: test accuracy {measured:.4f} on {len(images)} images (ONNX Runtime CPU)")
    if recorded is None:
        parser.exit(1, "error: an UNTRAINED export (random weights); its accuracy is chance and there is no "
                       "recorded accuracy to compare with\n")
    difference = measured - recorded
    print(f"recorded at training: {recorded:.4f}  difference {difference * 100:+.2f} points")
    if abs(difference) > TOLERANCE:
        parser.exit(1, f"error: differs from the checkpoint's accuracy by more than {TOLERANCE * 100:.1f} point\n")


if __name__ == "__main__":
    main()
