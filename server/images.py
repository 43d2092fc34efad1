"""Turning a request's images into the model input: uint8 [N, 1, 28, 28], Fashion-MNIST style.

Fashion-MNIST images are light garments on a black background, the object trimmed and scaled so
its longer side spans the 28-pixel frame, centred. An encoded image (PNG/JPEG, any size or mode)
is made to look the same way:
  1. converted to 8-bit grayscale (transparent pixels count as background);
  2. inverted when its border is lighter than its centre (a photo of a garment on a light background);
  3. cropped to the bounding box of the pixels that differ from the background;
  4. resized (Lanczos) so the longer side is 28, and centred on a black 28×28 canvas.
A file that already is 28×28 is taken as it is after step 1, so a Fashion-MNIST image saved as
PNG round-trips exactly.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from server.errors import InvalidArgument

SIDE = 28
MAX_ENCODED_PIXELS = 40_000_000   # refuse decompression bombs before decoding them
BACKGROUND_THRESHOLD = 24          # grey levels above the background that count as object


def preload_decoders() -> None:
    """Register Pillow's file-format plugins now, not during the first request (about 10 ms)."""
    Image.init()


def decode_encoded(data: bytes, field: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_ENCODED_PIXELS:
                raise InvalidArgument(f"{field}: {image.width}x{image.height} pixels is over the limit of "
                                      f"{MAX_ENCODED_PIXELS:,} pixels")
            image.load()
            gray = to_grayscale(image)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidArgument(f"{field}: not a decodable PNG or JPEG image ({error})") from None
    return gray if gray.shape == (SIDE, SIDE) else fit_like_fashion_mnist(gray)


def to_grayscale(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)   # transparent -> white, a light background
    return np.asarray(image.convert("L"), dtype=np.uint8)


def fit_like_fashion_mnist(gray: np.ndarray) -> np.ndarray:
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    h, w = gray.shape
    centre = gray[h // 4: h - h // 4 or None, w // 4: w - w // 4 or None]
    if np.median(border) > np.median(centre):
        gray = 255 - gray
        border = 255 - border
    background = int(np.median(border))
    rows, cols = np.nonzero(gray.astype(np.int16) - background > BACKGROUND_THRESHOLD)
    if len(rows):
        gray = gray[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    object_ = Image.fromarray(np.clip(gray.astype(np.int16) - background, 0, 255).astype(np.uint8))
    scale = SIDE / max(object_.size)
    size = (max(1, round(object_.width * scale)), max(1, round(object_.height * scale)))
    object_ = object_.resize(size, Image.Resampling.LANCZOS)
    canvas = Image.new("L", (SIDE, SIDE), 0)
    canvas.paste(object_, ((SIDE - size[0]) // 2, (SIDE - size[1]) // 2))
    return np.asarray(ImageOps.autocontrast(canvas), dtype=np.uint8)


def decode_tensor(shape: list[int], dtype: str, data: bytes, field: str) -> np.ndarray:
    if list(shape) not in ([SIDE, SIDE], [1, SIDE, SIDE]):
        raise InvalidArgument(f"{field}.shape {list(shape)} must be [28, 28] or [1, 28, 28]")
    if dtype not in ("uint8", "float32"):
        raise InvalidArgument(f"{field}.dtype {dtype!r} must be 'uint8' (0..255) or 'float32' (0..1)")
    itemsize = np.dtype(dtype).itemsize
    if len(data) != SIDE * SIDE * itemsize:
        raise InvalidArgument(f"{field}.data has {len(data)} bytes; a {dtype} 28x28 tensor has {SIDE * SIDE * itemsize}")
    pixels = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(SIDE, SIDE)
    if dtype == "uint8":
        return pixels
    if not np.isfinite(pixels).all():
        raise InvalidArgument(f"{field}.data holds NaN or Inf; float32 pixels must be finite, in [0, 1]")
    if pixels.min() < 0 or pixels.max() > 1:
        raise InvalidArgument(f"{field}.data ranges over [{pixels.min():g}, {pixels.max():g}]; float32 pixels must be in [0, 1]")
    return np.round(pixels * 255).astype(np.uint8)
