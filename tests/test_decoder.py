"""The image decoder against hostile bytes: only PNG and JPEG, sizes checked from the header before
decoding, every decoder failure INVALID_ARGUMENT naming the field, and a fuzz test that keeps it so."""
import io
import re
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from client.spawn import ROOT
from server.errors import InvalidArgument
from server.images import MAX_IMAGE_SIDE, DecodeBudget, decode_encoded

# An object repr's heap address ("at 0x7f3a..."): "0x" alone also matches a size such as "420x4456".
HEAP_ADDRESS = re.compile(r"\b0x[0-9a-f]+")

BOOT_PNG = (ROOT / "examples" / "9-ankle-boot.png").read_bytes()
PHOTO_JPEG = (ROOT / "examples" / "photo-ankle-boot.jpg").read_bytes()


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def bomb_png(side: int) -> bytes:
    """An all-zero RGBA PNG of side×side, written chunk by chunk (tiny on the wire, huge decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(b"\0" * (side * 4 + 1) * side, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_a_huge_png_is_refused_from_its_header_before_decoding():
    data = bomb_png(6300)
    assert len(data) < 200_000
    start = time.perf_counter()
    limit = rf"images\[0\].encoded: 6300x6300 pixels; each side must be at most {MAX_IMAGE_SIDE}"
    with pytest.raises(InvalidArgument, match=limit):
        decode_encoded(data, "images[0].encoded")
    assert time.perf_counter() - start < 0.5, "refused from the header, not after decoding"


def test_the_request_budget_bounds_the_decoded_pixels_of_all_images():
    budget = DecodeBudget(pixels=3 * 28 * 28)
    for i in range(3):
        decode_encoded(BOOT_PNG, f"images[{i}].encoded", budget=budget)
    with pytest.raises(InvalidArgument, match=r"images\[3\].encoded: 28x28 pixels would pass the limit"):
        decode_encoded(BOOT_PNG, "images[3].encoded", budget=budget)


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "GIF", "WEBP", "PPM", "ICO"])
def test_only_png_and_jpeg_are_opened(fmt):
    data = encoded(Image.open(io.BytesIO(BOOT_PNG)).convert("RGB"), fmt)
    with pytest.raises(InvalidArgument, match="only PNG and JPEG are accepted") as error:
        decode_encoded(data, "images[0].encoded")
    assert not HEAP_ADDRESS.search(error.value.message), "no object reprs or heap addresses"


def test_a_damaged_png_is_invalid_argument_not_a_decoder_exception():
    """The fuzzer's simplest case: the IDAT chunk's length reduced by 8."""
    start = BOOT_PNG.index(b"IDAT") - 4
    length = struct.unpack(">I", BOOT_PNG[start:start + 4])[0]
    damaged = BOOT_PNG[:start] + struct.pack(">I", length - 8) + BOOT_PNG[start + 4:]
    with pytest.raises(InvalidArgument, match=r"images\[0\].encoded: a damaged or unsupported PNG/JPEG"):
        decode_encoded(damaged, "images[0].encoded")


def test_the_shipped_examples_still_decode():
    assert decode_encoded(BOOT_PNG, "x").shape == (28, 28)
    assert decode_encoded(PHOTO_JPEG, "x").shape == (28, 28)


def test_fuzzed_images_decode_or_are_refused_cleanly():
    """Byte flips, truncations and insertions: a 28×28 uint8 image or InvalidArgument, nothing else."""
    # Imported here, not at the top: every pytest worker imports every test file, and Hypothesis costs about as
    # much to import as torch; only the worker that runs this test pays for it.
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(source=st.sampled_from([BOOT_PNG, PHOTO_JPEG]), data=st.data())
    def decodes_or_refuses(source, data):
        mutated = bytearray(source)
        for _ in range(data.draw(st.integers(1, 8))):
            action = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
            position = data.draw(st.integers(0, max(len(mutated) - 1, 0)))
            if action == "flip" and mutated:
                mutated[position] ^= data.draw(st.integers(1, 255))
            elif action == "truncate":
                del mutated[position:]
            else:
                mutated[position:position] = data.draw(st.binary(min_size=1, max_size=16))
        try:
            pixels = decode_encoded(bytes(mutated), "images[0].encoded")
        except InvalidArgument as error:
            assert error.message.startswith("images[0].encoded") and not HEAP_ADDRESS.search(error.message)
        else:
            assert pixels.shape == (28, 28) and pixels.dtype == np.uint8

    decodes_or_refuses()
