"""Size and accuracy of a checkpoint's weights in each way of storing them, measured side by side.

    python bench/weights_storage.py CHECKPOINT [--images 10000] [--data-dir DIR]

Each option is written as a real safetensors file (sizes in MB = 1e6 bytes) and loaded back as
float32, as `models.pretrained` does; the test accuracy (fp32 compute, on the first --images test
images) is compared with the checkpoint's own weights: the change in points and the top-1
agreement. Options: float16 everywhere; `int8-per-channel` (every Linear and Conv weight int8,
the rest float16: what `publish --dtype int8-per-channel` ships); int8 for the large Linear weights
only (two dimensions, at least 2^20 values) with float16 for the rest, whose file may need shards
to stay under the 50 MB a file.
"""
import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cnnserve.fashion_mnist import load_fashion_mnist  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from models.data import to_model_input  # noqa: E402
from models.pretrained import INT8_PER_CHANNEL, SCALE_SUFFIX, from_storage, quantize_per_channel, to_storage  # noqa: E402
from models.recipes import TrainConfig  # noqa: E402

MAX_FILE_MB = 50
LARGE = 1 << 20


def large_linear_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    stored = to_storage(state, "float16")
    for name, t in state.items():
        if t.is_floating_point() and t.dim() == 2 and t.numel() >= LARGE:
            stored[name], stored[name + SCALE_SUFFIX] = quantize_per_channel(t)
    return stored


OPTIONS = {   # name: (stored tensors from the state dict, the dtype that loads them back)
    "float16": (lambda state: to_storage(state, "float16"), "float16"),
    "int8-per-channel (every Linear and Conv weight)": (lambda state: to_storage(state, INT8_PER_CHANNEL), INT8_PER_CHANNEL),
    "int8 large Linear only, float16 rest": (large_linear_only, INT8_PER_CHANNEL),
}


@torch.no_grad()
def predictions(model, images: torch.Tensor, config: TrainConfig, batch: int = 250) -> torch.Tensor:
    p = config.preprocessing
    return torch.cat([model(to_model_input(images[i:i + batch].unsqueeze(1), p.side, p.mean, p.std)).argmax(1)
                      for i in range(0, len(images), batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--images", type=int, default=10_000, help="test images to score (the first N)")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    model, checkpoint = load_checkpoint(args.checkpoint)
    config = TrainConfig(**checkpoint["config"])
    data = load_fashion_mnist(args.data_dir)
    images = torch.from_numpy(data.test_images[:args.images])
    labels = torch.from_numpy(data.test_labels[:args.images]).long()
    state = {name: t.clone() for name, t in model.state_dict().items()}
    reference = predictions(model, images, config)
    fp32_acc = (reference == labels).float().mean().item()
    fp32_mb = sum(t.numel() * t.element_size() for t in state.values()) / 1e6
    print(f"{config.arch}: {args.checkpoint}, accuracy on {len(images):,} test images, fp32 compute\n")
    print("| storage | file MB | files of < 50 MB | test acc | change (points) | top-1 agreement with fp32 |")
    print("|---|---|---|---|---|---|")
    print(f"| float32 (the checkpoint) | {fp32_mb:.1f} | {math.ceil(fp32_mb / MAX_FILE_MB)} | {fp32_acc:.4f} | | |")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (store, dtype) in OPTIONS.items():
            path = Path(tmp) / "weights.safetensors"
            save_file(store(state), path)
            model.load_state_dict(from_storage(load_file(path), dtype))
            predicted = predictions(model, images, config)
            acc = (predicted == labels).float().mean().item()
            mb = path.stat().st_size / 1e6
            print(f"| {name} | {mb:.1f} | {math.ceil(mb / MAX_FILE_MB)} | {acc:.4f} | {100 * (acc - fp32_acc):+.2f} | "
                  f"{(predicted == reference).float().mean().item():.2%} |", flush=True)


if __name__ == "__main__":
    main()
