"""Write the sample images under examples/ from the Fashion-MNIST test split.

    python examples/make_examples.py [--data-dir DIR]

- `<class>-<label>.png`: the first test image of each class, as it is (28×28 grayscale).
- `photo-ankle-boot.jpg`: a photo-like version of a test image: 10× larger, RGB, a dark garment
  on a light, unevenly lit, noisy background, as a phone picture would be. The server's
  Fashion-MNIST fitting (invert, crop, resize, centre) has to undo all of that.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cnnserve.fashion_mnist import CLASSES, load_split  # noqa: E402

PHOTO_SOURCE_INDEX = 0   # test image 0 is an ankle boot


def slug(label: str) -> str:
    return label.lower().replace("/", "-").replace(" ", "-")


def photo_like(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    big = Image.fromarray(pixels).resize((280, 280), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(1.5))
    garment = np.asarray(big, dtype=np.float32) / 255.0
    h, w = garment.shape
    canvas_h, canvas_w = 360, 420
    y, x = np.mgrid[0:canvas_h, 0:canvas_w]
    background = 0.92 - 0.12 * (x / canvas_w) - 0.05 * (y / canvas_h)      # uneven light
    top, left = 50, 90
    image = np.repeat(background[..., None], 3, axis=2)
    tint = np.array([0.35, 0.22, 0.15])                                       # a brown boot
    region = image[top:top + h, left:left + w]
    image[top:top + h, left:left + w] = region * (1 - garment[..., None]) + tint * garment[..., None]
    image += rng.normal(0, 0.02, image.shape)
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8), "RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    images, labels = load_split(args.data_dir, "test")
    for c, label in enumerate(CLASSES):
        index = int(np.flatnonzero(labels == c)[0])
        Image.fromarray(images[index]).save(HERE / f"{c}-{slug(label)}.png")
    photo_like(images[PHOTO_SOURCE_INDEX], np.random.default_rng(0)).save(HERE / "photo-ankle-boot.jpg", quality=90)
    print(f"wrote {len(CLASSES) + 1} images to {HERE}")


if __name__ == "__main__":
    main()
