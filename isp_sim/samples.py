"""The embedded default data: real photographs that ship with scikit-image (no download needed)."""
from __future__ import annotations

import numpy as np

SAMPLE_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def sample_images(names=SAMPLE_NAMES, max_side: int = 512) -> dict[str, np.ndarray]:
    """Name -> uint8 (H, W, 3) sRGB, downscaled so the longer side is at most ``max_side`` and sizes are even."""
    from PIL import Image
    from skimage import data

    out = {}
    for n in names:
        im = getattr(data, n)()
        if im.ndim == 2:
            im = np.stack([im] * 3, -1)
        im = im[..., :3]
        h, w = im.shape[:2]
        s = min(1.0, max_side / max(h, w))
        nh, nw = int(h * s) // 2 * 2, int(w * s) // 2 * 2
        if (nh, nw) != (h, w):
            im = np.asarray(Image.fromarray(im).resize((nw, nh), Image.BICUBIC))
        out[n] = np.ascontiguousarray(im)
    return out
