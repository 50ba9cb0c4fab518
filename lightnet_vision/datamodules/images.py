"""Reading images from disk into the `H × W × C` uint8 arrays that albumentations expects."""

from pathlib import Path

import numpy as np
from PIL import Image


def load_image(path: str | Path, in_chans: int) -> np.ndarray:
    """Decode any PIL-readable image into `[H, W, in_chans]` uint8 (grayscale, RGB, RGBA, palette, 16-bit)."""
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
        elif in_chans == 3:
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                # Composite transparent pixels on black rather than keeping whatever colour they hide.
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            array = np.asarray(image.convert("RGB"))
        else:
            raise ValueError(f"in_chans must be 1 or 3 to read image files, got {in_chans} for {path}")
    return np.ascontiguousarray(array)
