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

from cnnserve.spec import IMAGE_SIDE
from server.errors import InvalidArgument

# Untrusted input: only PNG and JPEG are opened (Pillow knows dozens of formats, some with buggy
# or external decoders: EPS runs Ghostscript), and sizes are checked from the header, before any
# pixel is decoded: a 154 KB PNG can claim 6300×6300 and cost seconds and gigabytes to decode.
ALLOWED_FORMATS = ("PNG", "JPEG")
MAX_IMAGE_SIDE = 4096                      # per side of one encoded image
MAX_REQUEST_PIXELS = 2 * 4096 * 4096       # decoded pixels over all the encoded images of one request
BACKGROUND_THRESHOLD = 24                  # grey levels above the background that count as object


class DecodeBudget:
    """The pixels one request may still decode; each image's header is charged before it is decoded."""

    def __init__(self, pixels: int = MAX_REQUEST_PIXELS):
        self.remaining = pixels

    def charge(self, width: int, height: int, field: str) -> None:
        if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
            raise InvalidArgument(f"{field}: {width}x{height} pixels; each side must be at most {MAX_IMAGE_SIDE}")
        if width * height > self.remaining:
            raise InvalidArgument(f"{field}: {width}x{height} pixels would pass the limit of "
                                  f"{MAX_REQUEST_PIXELS:,} decoded pixels for one request")
        self.remaining -= width * height


def preload_decoders() -> None:
    """Register Pillow's file-format plugins now, not during the first request (about 10 ms)."""
    Image.init()


def decode_encoded(data: bytes, field: str, side: int = IMAGE_SIDE, budget: DecodeBudget | None = None) -> np.ndarray:
    budget = budget or DecodeBudget()
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            budget.charge(image.width, image.height, field)
            image.load()
            gray = to_grayscale(image)
    except InvalidArgument:
        raise
    except UnidentifiedImageError:
        raise InvalidArgument(f"{field}: not a PNG or JPEG image ({len(data):,} bytes); only PNG and JPEG "
                              f"are accepted") from None
    except Exception as error:  # untrusted bytes: whatever a decoder raises, the input is at fault
        raise InvalidArgument(f"{field}: a damaged or unsupported PNG/JPEG ({type(error).__name__})") from None
    return gray if gray.shape == (side, side) else fit_like_fashion_mnist(gray, side)


def to_grayscale(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)   # transparent -> white, a light background
    return np.asarray(image.convert("L"), dtype=np.uint8)


def fit_like_fashion_mnist(gray: np.ndarray, side: int = IMAGE_SIDE) -> np.ndarray:
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
    scale = side / max(object_.size)
    size = (max(1, round(object_.width * scale)), max(1, round(object_.height * scale)))
    object_ = object_.resize(size, Image.Resampling.LANCZOS)
    canvas = Image.new("L", (side, side), 0)
    canvas.paste(object_, ((side - size[0]) // 2, (side - size[1]) // 2))
    return np.asarray(ImageOps.autocontrast(canvas), dtype=np.uint8)


def decode_tensor(shape: list[int], dtype: str, data: bytes, field: str, side: int = IMAGE_SIDE) -> np.ndarray:
    if list(shape) not in ([side, side], [1, side, side]):
        raise InvalidArgument(f"{field}.shape {list(shape)[:8]} must be [{side}, {side}] or [1, {side}, {side}]")
    if dtype not in ("uint8", "float32"):
        raise InvalidArgument(f"{field}.dtype {dtype!r} must be 'uint8' (0..255) or 'float32' (0..1)")
    itemsize = np.dtype(dtype).itemsize
    if len(data) != side * side * itemsize:
        raise InvalidArgument(f"{field}.data has {len(data)} bytes; a {dtype} {side}x{side} tensor has "
                              f"{side * side * itemsize}")
    pixels = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(side, side)
    if dtype == "uint8":
        return pixels
    if not np.isfinite(pixels).all():
        raise InvalidArgument(f"{field}.data holds NaN or Inf; float32 pixels must be finite, in [0, 1]")
    if pixels.min() < 0 or pixels.max() > 1:
        raise InvalidArgument(f"{field}.data ranges over [{pixels.min():g}, {pixels.max():g}]; float32 pixels must be in [0, 1]")
    return np.round(pixels * 255).astype(np.uint8)
