"""A minimal PNG encoder (8-bit grey or RGB) so the report needs no plotting library.

PNG is zlib-compressed scanlines, each prefixed with a filter byte, in IHDR/IDAT/IEND chunks with a CRC-32
each (PNG specification, ISO/IEC 15948). That is all a browser needs to show an image. Every scanline uses
filter 2 ("Up": each byte minus the byte above it, modulo 256; the row above the first is zeros), which
makes smooth CT slices about a third smaller than unfiltered rows.
"""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image: (h, w) grey or (h, w, 3) RGB."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim == 2:
        colour_type, channels = 0, 1
    elif image.ndim == 3 and image.shape[2] == 3:
        colour_type, channels = 2, 3
    else:
        raise ValueError(f"encode_png needs (h, w) or (h, w, 3) uint8, got shape {image.shape}")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise ValueError("encode_png needs a non-empty image")
    rows = image.reshape(height, width * channels)
    up = rows.copy()
    up[1:] -= rows[:-1]  # uint8 arithmetic wraps modulo 256, as the filter asks
    raw = np.concatenate([np.full((height, 1), 2, dtype=np.uint8), up], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6))
            + _chunk(b"IEND", b""))


def png_data_uri(image: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI for embedding in a self-contained HTML page."""
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


def window_to_uint8(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """Display HU in a window (e.g. lung W1500/L-600, mediastinal W350/L40) as 8-bit grey."""
    lo = level - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - lo) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
