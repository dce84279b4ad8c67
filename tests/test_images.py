"""`keras_lossal.images`: the header reader behind every decompression-bomb guard."""

import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf

from keras_lossal import images


def _image(height, width, channels=3, seed=6):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, channels), dtype=np.uint8)


def _png_header_only(height, width) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return images.PNG_MAGIC + chunk + b"\x00" * 16


def test_reads_every_accepted_format():
    image = _image(7, 5)
    assert images.image_header_size(tf.io.encode_png(image).numpy()) == ("png", 7, 5)
    assert images.image_header_size(tf.io.encode_jpeg(image).numpy()) == ("jpeg", 7, 5)
    assert images.image_header_size(_png_header_only(100_000, 3)) == ("png", 100_000, 3)
    bmp = b"BM" + b"\x00" * 16 + struct.pack("<ii", 6, -11) + b"\x00" * 30  # top-down BMP: negative height
    assert images.image_header_size(bmp) == ("bmp", 11, 6)


def test_jpeg_size_found_after_large_metadata_segments():
    jpeg = tf.io.encode_jpeg(_image(9, 4)).numpy()
    comment = b"\xff\xfe" + struct.pack(">H", 2 + 60_000) + b"x" * 60_000  # a COM segment before the frame
    padded = jpeg[:2] + comment + jpeg[2:]
    assert images.image_header_size(padded) == ("jpeg", 9, 4)


def test_refuses_gif_unknown_and_corrupt_headers():
    gif = b"GIF89a" + struct.pack("<HH", 1, 1) + b"\x00" * 20  # a 1x1 canvas says nothing of its frames
    with pytest.raises(ValueError, match="GIF images are not accepted"):
        images.image_header_size(gif)
    with pytest.raises(ValueError, match="Unsupported image format"):
        images.image_header_size(b"RIFF....WEBP")
    with pytest.raises(ValueError, match="Corrupt PNG"):
        images.image_header_size(images.PNG_MAGIC + b"\x00" * 8)
    with pytest.raises(ValueError, match="Corrupt BMP"):
        images.image_header_size(b"BM\x00\x00")
    with pytest.raises(ValueError, match="Corrupt JPEG"):
        images.image_header_size(images.JPEG_MAGIC + b"\x00" * 10)


def test_limits_bound_a_labeling_image_not_a_bomb():
    assert 4096 * 4096 < images.DEFAULT_MAX_IMAGE_PIXELS < 100_000 * 100_000
    assert images.DEFAULT_MAX_IMAGE_BYTES == 32 * 1024 * 1024
