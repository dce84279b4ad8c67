"""Image headers read without decoding: the decompression-bomb guard shared by export, triage and Beam.

Every path that decodes a user's image first reads its size from the header
and refuses it above a pixel limit; this module is that header reader, in
pure Python (the in-graph twin lives with the serving signatures).
"""

from __future__ import annotations

import struct

from keras_lossal.contracts import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS

__all__ = ["DEFAULT_MAX_IMAGE_BYTES", "DEFAULT_MAX_IMAGE_PIXELS", "checked_image_size", "image_header_size"]


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
GIF_MAGIC = b"GIF8"
BMP_MAGIC = b"BM"


def image_header_size(data: bytes) -> tuple[str, int, int]:
    """Reads `(format, height, width)` from an encoded image's header without decoding it.

    Used to refuse decompression bombs before any pixel is decoded.

    Args:
        data: the encoded file's bytes (the first few KiB suffice, except for
            JPEG, whose size marker can come after large metadata segments).

    Example:

    >>> import tensorflow as tf
    >>> image_header_size(tf.io.encode_png(tf.zeros((3, 5, 1), tf.uint8)).numpy())
    ('png', 3, 5)
    """
    if data.startswith(PNG_MAGIC):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ValueError("Corrupt PNG: missing IHDR chunk")
        width, height = struct.unpack(">II", data[16:24])
        return "png", height, width
    if data.startswith(GIF_MAGIC):
        # A GIF frame may be far larger than the canvas its header declares, and decoders use the frame.
        raise ValueError(
            "GIF images are not accepted: their frames can be larger than the header's canvas size, so "
            "the decompression-bomb guard cannot bound them. Convert them to PNG."
        )
    if data.startswith(BMP_MAGIC):
        if len(data) < 26:
            raise ValueError("Corrupt BMP: truncated header")
        width, height = struct.unpack("<ii", data[18:26])
        return "bmp", abs(height), abs(width)
    if data.startswith(JPEG_MAGIC):
        return ("jpeg", *_jpeg_size(data))
    raise ValueError(f"Unsupported image format (expected JPEG, PNG or BMP); first bytes: {data[:8]!r}")


def checked_image_size(data: bytes, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """The `(height, width)` an encoded image's header declares, after the decompression-bomb guard.

    Raises `ValueError` (`"corrupt image: ..."` or `"image too large: ..."`) for
    an unreadable header, a zero size, or more than `max_image_pixels`; the
    reason triage records and the training readers report.

    Example:

    >>> checked_image_size(b"not an image")
    Traceback (most recent call last):
    ...
    ValueError: corrupt image: Unsupported image format (expected JPEG, PNG or BMP); first bytes: b'not an i'
    """
    try:
        _, height, width = image_header_size(data)
    except ValueError as error:
        raise ValueError(f"corrupt image: {error}") from None
    if height * width > max_image_pixels:
        raise ValueError(
            f"image too large: header says {height}x{width} = {height * width} pixels > "
            f"max_image_pixels={max_image_pixels} (decompression-bomb guard; not decoded)"
        )
    if height == 0 or width == 0:
        raise ValueError(f"corrupt image: header says {height}x{width}")
    return height, width


def _jpeg_size(data: bytes) -> tuple[int, int]:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ValueError(f"Corrupt JPEG: expected a marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        # Start-of-frame markers (baseline, progressive, ...) carry the size; C4/C8/CC do not.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if position + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return height, width
        position += 2 + length
    raise ValueError("Corrupt JPEG: no start-of-frame marker found")
