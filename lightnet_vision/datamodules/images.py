"""Reading images from disk into the `H × W × C` uint8 arrays that albumentations expects."""

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# What PIL and the file system raise for a file that cannot be decoded: missing or unreadable, not an image,
# truncated, a broken data stream or chunk, a decompression bomb.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)


class UnreadableImageError(OSError):
    """An image file that could not be decoded; the message names the file and what PIL reported."""


def load_image(path: str | Path, in_chans: int) -> np.ndarray:
    """Decode any PIL-readable image into `[H, W, in_chans]` uint8 (grayscale, RGB, RGBA, palette, 16-bit).

    A file that cannot be decoded raises `UnreadableImageError` naming it. A truncated file is such a file unless
    `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` has been switched on, in which case PIL fills the missing part with grey.
    """
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3 to read image files, got {in_chans} for {path}")
    try:
        return _decode(path, in_chans)
    except _DECODE_ERRORS as error:
        raise UnreadableImageError(f"cannot read image {path}: {error}") from error


def _decode(path: str | Path, in_chans: int) -> np.ndarray:
    with Image.open(path) as image:
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
            # 16-bit grayscale: scale the 16-bit range down to 8 bits. Mode "I" (32-bit integers) is 16-bit data
            # only when its values say so.
            array = np.asarray(image, dtype=np.float64)
            peak = 255.0 if image.mode == "I" and array.max() <= 255 else 65535.0
            image = Image.fromarray((array / peak * 255).round().astype(np.uint8), mode="L")
        elif image.mode == "F":
            image = Image.fromarray(np.asarray(image).clip(0, 255).astype(np.uint8), mode="L")
        if in_chans == 1:
            array = np.asarray(image.convert("L"))[:, :, None]
        else:
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                # Composite transparent pixels on black rather than keeping whatever colour they hide.
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            array = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(array)
